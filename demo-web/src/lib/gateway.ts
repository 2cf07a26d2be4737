// The gateways' HTTP side, beside /ws: the service registry (GET /services) and who is
// online (GET /presence, which wants the user's token). Tried in the page's URL order,
// as the SDK tries the WebSocket URLs.
import { useEffect, useState } from "react";
import { readConfig } from "./config";
import { fetchToken } from "./token";

const config = readConfig();

/** `ws://host:4000/ws` → `http://host:4000`. */
export function httpBase(wsUrl: string): string {
  return wsUrl.replace(/^ws(s?):/, "http$1:").replace(/\/ws\/?$/, "");
}

let cachedToken: { user: string; token: string; until: number } | null = null;

/** When a JWT's `exp` passes, in ms since the epoch; `Infinity` when it has none. */
function expiresAt(token: string): number {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof claims.exp === "number" ? claims.exp * 1000 : Infinity;
  } catch {
    return Infinity;
  }
}

/**
 * The user's token for the HTTP side: from the stack's token endpoint, else the name.
 * Kept for a minute, and never past 5 s before it expires (the stack may issue tokens
 * that live 20 s): an expired one made every presence poll answer 401.
 */
async function tokenFor(user: string): Promise<string> {
  if (!config.control) return user;
  if (cachedToken && cachedToken.user === user && Date.now() < cachedToken.until) return cachedToken.token;
  const token = await fetchToken(config.control, user);
  cachedToken = { user, token, until: Math.min(Date.now() + 60_000, expiresAt(token) - 5_000) };
  return token;
}

/** GET `path` as `user` from the first gateway that answers. */
export async function gatewayGet(path: string, user: string): Promise<unknown> {
  let last: unknown = new Error("no gateway URL");
  for (const url of config.urls) {
    try {
      const res = await fetch(httpBase(url) + path, {
        headers: { authorization: `Bearer ${await tokenFor(user)}` },
      });
      if (res.ok) return await res.json();
      last = new Error(`HTTP ${res.status} from ${httpBase(url)}${path}`);
      // Refused as this user: another gateway would answer the same. A token that
      // was refused is not used again.
      if (res.status === 401) cachedToken = null;
      if (res.status === 401 || res.status === 403) break;
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

/** Polls `path` every `everyMs` while mounted; the last answer (null until one came). */
export function usePolled<T>(path: string | null, user: string, everyMs: number): T | null {
  const [value, setValue] = useState<T | null>(null);
  useEffect(() => {
    setValue(null);
    if (path === null) return undefined;
    let alive = true;
    const poll = async () => {
      try {
        const v = (await gatewayGet(path, user)) as T;
        if (alive) setValue(v);
      } catch {
        // The next poll tries again; the panel keeps the last answer.
      }
    };
    void poll();
    const t = setInterval(() => void poll(), everyMs);
    return () => {
      alive = false;
      clearInterval(t);
    };
  }, [path, user, everyMs]);
  return value;
}
