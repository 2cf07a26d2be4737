// Small id helpers.

/** A short unique id for correlating a message with its echo. */
export function newId(prefix = ""): string {
  const rand =
    typeof crypto !== "undefined" && "randomUUID" in crypto
      ? crypto.randomUUID().replace(/-/g, "").slice(0, 12)
      : Math.random().toString(36).slice(2, 14);
  return `${prefix}${rand}`;
}

/** Reads a header whether the SDK hands over a plain object or a Map. */
export function header(
  headers: Record<string, unknown> | Map<string, unknown> | null | undefined,
  name: string,
): string | undefined {
  if (!headers) return undefined;
  const value = headers instanceof Map ? headers.get(name) : headers[name];
  return value === undefined || value === null ? undefined : String(value);
}

/** "14:03:22" */
export function clock(at: number): string {
  return new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
