// Turning SDK rejections into something a person can read.

/** An error as the page shows it. */
export interface ShownError {
  code: string;
  message: string;
}

const EXPLANATIONS: Record<string, string> = {
  timeout: "No answer in time. Is the demo service running?",
  no_route: "Nothing is listening for this channel right now.",
  no_service: "No service is consuming this channel.",
  disconnected: "The connection dropped before an answer came.",
  broker_unavailable: "The gateway has lost RabbitMQ for a moment.",
  overloaded: "Too much in flight; slow down a little.",
  rejected: "The service refused the request.",
  forbidden: "You are not allowed to do that.",
  unauthorized: "The gateway refused the sign-in.",
  invalid: "The request was not valid.",
  nacked: "RabbitMQ refused the message.",
  closed: "The client is closed.",
};

/** Reads `code` and `message` from whatever was thrown. */
export function toShownError(err: unknown): ShownError {
  if (err && typeof err === "object") {
    const e = err as { code?: unknown; message?: unknown };
    const code = typeof e.code === "string" ? e.code : "unknown";
    const message = typeof e.message === "string" && e.message !== "" ? e.message : "";
    return { code, message: message || EXPLANATIONS[code] || code };
  }
  return { code: "unknown", message: String(err) };
}

/** A sentence explaining an error code, for hints under an error. */
export function explain(code: string): string | null {
  return EXPLANATIONS[code] ?? null;
}
