// Where the page finds its gateways and the demo control API.
//
// Query parameters win over Vite env, which wins over the demo layout defaults:
//   ?urls=ws://127.0.0.1:4000/ws,ws://127.0.0.1:5000/ws   (or VITE_WARREN_URLS)
//   ?control=http://127.0.0.1:7000                         (or VITE_WARREN_CONTROL)
//   ?user=ada                                              (sign in straight away)

/** Runtime configuration of the page. */
export interface PageConfig {
  /** Gateway URLs in failover order. */
  urls: string[];
  /** Control API of warren-stack, when the page may use it. */
  control: string | null;
  /** A user name to sign in with immediately. */
  user: string | null;
}

function splitList(value: string | null | undefined): string[] {
  return (value ?? "")
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** Reads the configuration from `location` and Vite env. */
export function readConfig(): PageConfig {
  const params = new URLSearchParams(window.location.search);
  const host = window.location.hostname || "127.0.0.1";
  const defaults = [`ws://${host}:4000/ws`, `ws://${host}:5000/ws`];
  const fromQuery = splitList(params.getAll("urls").join(",") || params.getAll("url").join(","));
  const fromEnv = splitList(import.meta.env.VITE_WARREN_URLS);
  const urls = fromQuery.length > 0 ? fromQuery : fromEnv.length > 0 ? fromEnv : defaults;
  const control =
    params.get("control")?.trim() || import.meta.env.VITE_WARREN_CONTROL?.trim() || null;
  const user = params.get("user")?.trim() || null;
  return { urls, control: control ? control.replace(/\/+$/, "") : null, user };
}

/** The rule the gateway applies to user ids (an AMQP routing-key segment). */
export const USER_NAME_PATTERN = /^[A-Za-z0-9_\-:@]{1,64}$/;

/** Validates a user or room name; returns a message or null when fine. */
export function checkName(kind: string, value: string): string | null {
  if (value === "") return `Enter a ${kind}.`;
  if (value.length > 64) return `A ${kind} has at most 64 characters.`;
  if (!USER_NAME_PATTERN.test(value))
    return `Use letters, digits, "-", "_", ":" or "@" (no spaces or dots).`;
  return null;
}
