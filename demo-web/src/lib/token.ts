// Tokens for the demo: warren-stack's development endpoint `POST /token` signs a short-
// lived JWT for a name (HS256 with the published DEVELOPMENT secret; a real app's backend
// signs them after its own sign-in). With the stack's `--auth none` it answers the name.

/** Fetches a token for `user` from the control API at `control`. */
export async function fetchToken(control: string, user: string): Promise<string> {
  let res: Response;
  try {
    res = await fetch(`${control}/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user }),
    });
  } catch (err) {
    throw new Error(`cannot reach the token endpoint ${control}/token (${String(err)})`);
  }
  if (!res.ok) throw new Error(`the token endpoint refused: HTTP ${res.status} ${(await res.text()).trim()}`);
  const body: unknown = await res.json();
  const token = (body as { token?: unknown } | null)?.token;
  if (typeof token !== "string") throw new Error("the token endpoint answered without a token");
  return token;
}
