// The sign-in screen: the stack's development endpoint signs a token for the name (with
// no control API, the name itself is the token, for a gateway in auth mode none).
import { useState, type FormEvent } from "react";
import { checkName } from "../lib/config";
import { Logo } from "../App";

export function SignIn({
  urls,
  control,
  onSignIn,
}: {
  urls: string[];
  control: string | null;
  onSignIn: (name: string) => Promise<void>;
}) {
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const value = name.trim();
    const problem = checkName("name", value);
    if (problem) {
      setError(problem);
      return;
    }
    setBusy(true);
    onSignIn(value).catch((err: unknown) => {
      setBusy(false);
      setError(err instanceof Error ? err.message : String(err));
    });
  };
  return (
    <div className="splash">
      <form className="splash-card signin" onSubmit={submit} data-testid="signin-form">
        <div className="brand-row">
          <Logo />
          <h1>Warren</h1>
        </div>
        <p className="muted">
          Chat, tickets and call signalling over WebSockets and RabbitMQ. Pick a name to sign
          in; open a second window with another name to talk to yourself.
        </p>
        <label htmlFor="signin-name">Your name</label>
        <input
          id="signin-name"
          data-testid="signin-name"
          autoFocus
          autoComplete="username"
          placeholder="e.g. ada"
          value={name}
          onChange={(e) => {
            setName(e.target.value);
            setError(null);
          }}
          aria-invalid={error !== null}
        />
        {error && (
          <p className="error-text" data-testid="signin-error" role="alert">
            {error}
          </p>
        )}
        <button className="btn btn-primary btn-block" type="submit" data-testid="signin-submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        {control && (
          <p className="fineprint" data-testid="signin-token-note">
            Signing in fetches a short-lived token from the demo's development endpoint{" "}
            <code>{control}/token</code> (a development secret, never for production); the
            client renews it before it expires.
          </p>
        )}
        <p className="fineprint">
          Gateways: {urls.map((u, i) => (
            <code key={u}>
              {i > 0 ? ", " : ""}
              {u}
            </code>
          ))}
        </p>
      </form>
    </div>
  );
}
