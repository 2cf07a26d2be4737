// The page: sign-in, then the workspace (chat, tickets, voice) inside one Warren client.
import { useCallback, useMemo, useState } from "react";
import { WarrenProvider, type WarrenProviderStatus } from "warren-sdk/react";
import { readConfig } from "./lib/config";
import { SignIn } from "./components/SignIn";
import { Workspace } from "./components/Workspace";
import { fetchToken } from "./lib/token";

const config = readConfig();
const USER_KEY = "warren.demo.user";

function initialUser(): string | null {
  if (config.user) return config.user;
  try {
    return sessionStorage.getItem(USER_KEY);
  } catch {
    return null;
  }
}

function Loading({ status }: { status: WarrenProviderStatus }) {
  const failed = status.state === "failed";
  return (
    <div className="splash" data-testid="sdk-loading" data-state={status.state}>
      <div className="splash-card">
        <Logo />
        {failed ? (
          <>
            <h2>Could not start the Warren client</h2>
            <p className="error-text" data-testid="sdk-error" data-code={status.lastError?.code ?? "unknown"}>
              {status.lastError ? `${status.lastError.code}: ${status.lastError.message}` : "unknown: no error was reported"}
            </p>
            <button className="btn" onClick={() => window.location.reload()}>
              Reload
            </button>
          </>
        ) : (
          <p className="muted">
            <span className="spinner" /> Loading the Warren client…
          </p>
        )}
      </div>
    </div>
  );
}

/** The Warren mark. */
export function Logo() {
  return (
    <span className="logo" aria-hidden="true">
      <svg viewBox="0 0 32 32" width="28" height="28">
        <rect width="32" height="32" rx="8" fill="#3358d4" />
        <path
          d="M7 10l4 13 5-9 5 9 4-13"
          stroke="white"
          strokeWidth="3"
          fill="none"
          strokeLinejoin="round"
          strokeLinecap="round"
        />
      </svg>
    </span>
  );
}

export function App() {
  const [user, setUser] = useState<string | null>(initialUser);
  const options = useMemo(() => {
    if (!user) return null;
    // Reconnect quickly in the demo (SDK defaults: 250 ms to 10 s).
    const reconnect = { minDelayMs: 100, maxDelayMs: 2000 };
    const control = config.control;
    // With the stack's control API, tokens come from its development endpoint: the SDK
    // calls getToken before connecting, on every reconnect and ahead of expiry.
    // Without it, the name is the token (a gateway in auth mode none).
    return control
      ? { urls: config.urls, getToken: () => fetchToken(control, user), reconnect }
      : { urls: config.urls, token: user, reconnect };
  }, [user]);
  const signIn = useCallback(async (name: string) => {
    // Sign-in asks for a token first, so a refusal shows on the form.
    if (config.control) await fetchToken(config.control, name);
    try {
      sessionStorage.setItem(USER_KEY, name);
    } catch {
      // Private mode: the name just does not survive a reload.
    }
    setUser(name);
  }, []);
  const signOut = useCallback(() => {
    try {
      sessionStorage.removeItem(USER_KEY);
    } catch {
      // Nothing stored.
    }
    setUser(null);
  }, []);

  if (!user || !options) return <SignIn urls={config.urls} control={config.control} onSignIn={signIn} />;
  return (
    <WarrenProvider key={user} options={options} fallback={(s) => <Loading status={s} />}>
      <Workspace user={user} config={config} onSignOut={signOut} />
    </WarrenProvider>
  );
}
