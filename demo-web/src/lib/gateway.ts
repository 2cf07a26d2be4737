// The gateways' HTTP side, beside /ws: the service registry (GET /services) and who is
// online (GET /presence, which wants the user's token). Tried in the page's URL order,
// as the SDK tries the WebSocket URLs.
import { useEffect, useState } from "react";
import { readConfig } from "./config";
import type { ShownError } from "./errors";
import { fetchToken } from "./token";

const config = readConfig();

/** `ws://host:4000/ws` → `http://host:4000`. */
export function httpBase(wsUrl: string): string {
  return wsUrl.replace(/^ws(s?):/, "http$1:").replace(/\/ws\/?$/, "");
}

let cachedToken: { user: string; token: string; until: number } | null = null;
let pendingToken: { user: string; token: Promise<string> } | null = null;

/** A JWT's claims; `{}` when the token is not a JWT (a user name in auth mode none). */
function claimsOf(token: string): Record<string, unknown> {
  try {
    const claims: unknown = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return claims && typeof claims === "object" ? (claims as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** When a JWT's `exp` passes, in ms since the epoch; `Infinity` when it has none. */
function expiresAt(token: string): number {
  const { exp } = claimsOf(token);
  return typeof exp === "number" ? exp * 1000 : Infinity;
}

/**
 * The user's token for the HTTP side: from the stack's token endpoint, else the name.
 * Kept for a minute, and never past 5 s before it expires (the stack may issue tokens
 * that live 20 s): an expired one made every presence poll answer 401.
 */
async function tokenFor(user: string): Promise<string> {
  if (!config.control) return user;
  if (cachedToken && cachedToken.user === user && Date.now() < cachedToken.until) return cachedToken.token;
  // Callers asking at the same moment (the panels mount together) share one fetch.
  if (pendingToken && pendingToken.user === user) return pendingToken.token;
  const pending = fetchToken(config.control, user).then(
    (token) => {
      cachedToken = { user, token, until: Math.min(Date.now() + 60_000, expiresAt(token) - 5_000) };
      return token;
    },
  );
  pendingToken = { user, token: pending };
  try {
    return await pending;
  } finally {
    if (pendingToken?.token === pending) pendingToken = null;
  }
}

/**
 * The groups the user's token grants (its `groups` claim), or null when the page does
 * not know: no token endpoint (the name is the token; a gateway in auth mode none
 * grants every group), or a token without the claim.
 */
export function useGrantedGroups(user: string): string[] | null {
  const [groups, setGroups] = useState<string[] | null>(null);
  useEffect(() => {
    let alive = true;
    if (!config.control) return undefined;
    tokenFor(user).then(
      (token) => {
        const { groups: claim } = claimsOf(token);
        if (alive && Array.isArray(claim)) setGroups(claim.filter((g): g is string => typeof g === "string"));
      },
      () => {
        // No token, no hint: the gateway's answer to a join still says why.
      },
    );
    return () => {
      alive = false;
    };
  }, [user]);
  return groups;
}

/** A gateway's refusal of an HTTP call: the status and the body's registry code and message. */
export class GatewayRefusal extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The refusal a non-2xx answer carries (`{"code", "message"}`), else one made of its status. */
async function refusalOf(res: Response, where: string): Promise<GatewayRefusal> {
  let code = `http_${res.status}`;
  let message = `HTTP ${res.status} from ${where}`;
  try {
    const body = (await res.json()) as { code?: unknown; message?: unknown } | null;
    if (typeof body?.code === "string") code = body.code;
    if (typeof body?.message === "string" && body.message !== "") message = body.message;
  } catch {
    // Not JSON: the status says enough.
  }
  return new GatewayRefusal(res.status, code, message);
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
      last = await refusalOf(res, `${httpBase(url)}${path}`);
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

/** What {@link usePolledAnswer} returns. */
export interface Polled<T> {
  /** The last answer; null until one came. */
  value: T | null;
  /**
   * The gateway's 403 for `path` (`forbidden`: the token does not grant it). Polling
   * stops then: the same token gets the same answer every time.
   */
  refused: ShownError | null;
}

/** Polls `path` every `everyMs` while mounted, until the gateway refuses it with 403. */
export function usePolledAnswer<T>(path: string | null, user: string, everyMs: number): Polled<T> {
  const [answer, setAnswer] = useState<Polled<T>>({ value: null, refused: null });
  useEffect(() => {
    setAnswer({ value: null, refused: null });
    if (path === null) return undefined;
    let alive = true;
    let t: ReturnType<typeof setInterval> | undefined;
    const poll = async () => {
      try {
        const v = (await gatewayGet(path, user)) as T;
        if (alive) setAnswer({ value: v, refused: null });
      } catch (err) {
        if (alive && err instanceof GatewayRefusal && err.status === 403) {
          clearInterval(t);
          alive = false;
          setAnswer({ value: null, refused: { code: err.code, message: err.message } });
        }
        // Anything else: the next poll tries again; the panel keeps the last answer.
      }
    };
    void poll();
    t = setInterval(() => void poll(), everyMs);
    return () => {
      alive = false;
      clearInterval(t);
    };
  }, [path, user, everyMs]);
  return answer;
}

/** Polls `path` every `everyMs` while mounted; the last answer (null until one came). */
export function usePolled<T>(path: string | null, user: string, everyMs: number): T | null {
  return usePolledAnswer<T>(path, user, everyMs).value;
}
