// The status bar: connection state, current gateway, reconnects, last error, and the
// demo controls (kill the gateway the page is on, restart gateways, stop the service)
// when warren-stack's control API is available.
import { useCallback, useEffect, useState } from "react";
import { useConnectionState } from "warren-sdk/react";
import type { PageConfig } from "../lib/config";
import { clock } from "../lib/ids";
import { ServicesStatus } from "./Services";

interface StackGateway {
  name: string;
  urls: Record<string, string>;
  pid?: number | null;
  alive: boolean;
}

interface StackState {
  gateways: StackGateway[];
  service?: { alive?: boolean; pid?: number | null } | null;
}

const STATE_LABELS: Record<string, string> = {
  idle: "Starting",
  loading: "Loading",
  connecting: "Connecting",
  connected: "Connected",
  disconnected: "Offline",
  failed: "Failed",
  closed: "Closed",
};

/** Whether the client has been connected at least once (so "connecting" means "reconnecting"). */
export function useEverConnected(state: string): boolean {
  const [ever, setEver] = useState(state === "connected");
  useEffect(() => {
    if (state === "connected") setEver(true);
  }, [state]);
  return ever || state === "connected";
}

function portOf(url: string): string | null {
  try {
    const u = new URL(url);
    return u.port || (u.protocol === "wss:" ? "443" : "80");
  } catch {
    return null;
  }
}

function gatewayFor(url: string | null, state: StackState | null): StackGateway | null {
  if (!url || !state) return null;
  const port = portOf(url);
  return (
    state.gateways.find((g) => Object.values(g.urls ?? {}).some((u) => u === url || (port !== null && portOf(u) === port))) ??
    null
  );
}

function useStack(control: string | null) {
  const [stack, setStack] = useState<StackState | null>(null);
  const [error, setError] = useState<string | null>(null);
  const refresh = useCallback(async () => {
    if (!control) return;
    try {
      const res = await fetch(`${control}/state`);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      setStack((await res.json()) as StackState);
      setError(null);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }, [control]);
  useEffect(() => {
    if (!control) return undefined;
    void refresh();
    const t = setInterval(() => void refresh(), 2000);
    return () => clearInterval(t);
  }, [control, refresh]);
  const post = useCallback(
    async (path: string) => {
      const res = await fetch(`${control}${path}`, { method: "POST" });
      if (!res.ok) {
        // The stack says why (e.g. a gateway that did not print READY in time).
        const why = (await res.text().catch(() => "")).trim();
        throw new Error(`${path}: HTTP ${res.status}${why ? `: ${why}` : ""}`);
      }
      await refresh();
    },
    [control, refresh],
  );
  return { stack, error, post };
}

export function StatusBar({ config, user }: { config: PageConfig; user: string }) {
  const { state, url, reconnects, lastError } = useConnectionState();
  const everConnected = useEverConnected(state);
  const { stack, error: controlError, post } = useStack(config.control);
  const [busy, setBusy] = useState<string | null>(null);
  const [notice, setNotice] = useState<{ text: string; failed: boolean } | null>(null);
  const index = url ? config.urls.indexOf(url) : -1;
  const role = index === 0 ? "primary" : index > 0 ? `failover ${index}` : null;
  const current = gatewayFor(url, stack);
  const target = current ?? stack?.gateways.find((g) => g.alive) ?? null;

  const act = async (label: string, path: string) => {
    setBusy(label);
    setNotice(null);
    try {
      await post(path);
      setNotice({ text: `${label}: done`, failed: false });
    } catch (err) {
      setNotice({ text: `${label} failed: ${err instanceof Error ? err.message : String(err)}`, failed: true });
    } finally {
      setBusy(null);
    }
  };

  return (
    <footer className="statusbar" data-testid="status-bar">
      <div className="status-item">
        <span className={`dot dot-${state}`} aria-hidden="true" />
        <span data-testid="status-state" data-state={state}>
          {state === "connecting" && everConnected ? "Reconnecting" : (STATE_LABELS[state] ?? state)}
        </span>
      </div>
      <div className="status-item status-url-item" title="Gateway this page is connected to">
        <span className="muted">gateway</span>{" "}
        <code data-testid="status-url">{url ?? "—"}</code>
        {role && (
          <span className={`pill ${index === 0 ? "pill-muted" : "pill-warn"}`} data-testid="status-gateway-role">
            {role}
          </span>
        )}
      </div>
      <ServicesStatus user={user} />
      <div className="status-item">
        <span className="muted">reconnects</span> <strong data-testid="status-reconnects">{reconnects}</strong>
      </div>
      <div className="status-item status-error-item" title={lastError ? lastError.message : "No error so far"}>
        <span className="muted">last error</span>{" "}
        <span data-testid="status-error" data-code={lastError?.code ?? ""} className={lastError ? "error-text" : ""}>
          {lastError ? `${lastError.code} · ${clock(lastError.at)}` : "none"}
        </span>
      </div>
      <div className="status-controls">
        {config.control ? (
          <>
            <button
              className="btn btn-danger btn-small"
              disabled={busy !== null || !target || !target.alive}
              onClick={() => target && void act(`Kill ${target.name}`, `/gateways/${encodeURIComponent(target.name)}/kill`)}
              data-testid="kill-gateway"
              title="SIGKILL the gateway this page is connected to; the page moves to the next URL"
            >
              {busy?.startsWith("Kill") ? <span className="spinner spinner-light" /> : null}
              Kill {target ? `${target.name} ` : ""}gateway
            </button>
            {notice?.failed && (
              <span className="error-text small" role="alert" data-testid="control-failure">
                {notice.text}
              </span>
            )}
            <details className="controls-menu">
              <summary data-testid="demo-controls">Demo controls</summary>
              <div className="controls-popover">
                {controlError && <p className="error-text small">control API: {controlError}</p>}
                {stack?.gateways.map((g) => (
                  <div key={g.name} className="control-row" data-testid={`control-gateway-${g.name}`} data-alive={g.alive}>
                    <span className={`dot ${g.alive ? "dot-connected" : "dot-disconnected"}`} /> {g.name}{" "}
                    <span className="muted small">{g.alive ? "running" : "stopped"}</span>
                    {g.alive ? (
                      <button className="btn btn-small btn-ghost" onClick={() => void act(`Kill ${g.name}`, `/gateways/${encodeURIComponent(g.name)}/kill`)}>
                        Kill
                      </button>
                    ) : (
                      <button className="btn btn-small" onClick={() => void act(`Start ${g.name}`, `/gateways/${encodeURIComponent(g.name)}/start`)} data-testid={`start-gateway-${g.name}`}>
                        Start
                      </button>
                    )}
                  </div>
                ))}
                {stack?.service && (
                  <div className="control-row" data-testid="control-service" data-alive={stack.service.alive ? "true" : "false"}>
                    <span className={`dot ${stack.service.alive ? "dot-connected" : "dot-disconnected"}`} /> demo service{" "}
                    {stack.service.alive ? (
                      <>
                        <button
                          className="btn btn-small btn-ghost"
                          onClick={() => void act("Stop service", "/service/stop")}
                          data-testid="stop-service"
                          title="SIGTERM: the service leaves the gateways' registry and exits; requests get no_service at once"
                        >
                          Stop
                        </button>
                        <button
                          className="btn btn-small btn-ghost"
                          onClick={() => void act("Kill service", "/service/kill")}
                          data-testid="kill-service"
                          title="SIGKILL: no goodbye; requests time out until the registry forgets the service, and its in-memory tickets are lost"
                        >
                          Kill
                        </button>
                      </>
                    ) : (
                      <button className="btn btn-small" onClick={() => void act("Start service", "/service/start")} data-testid="start-service">
                        Start
                      </button>
                    )}
                  </div>
                )}
                {notice && !notice.failed && <p className="small muted">{notice.text}</p>}
              </div>
            </details>
          </>
        ) : (
          <span className="muted small" title="Open the page with ?control=http://127.0.0.1:PORT to get a kill button">
            failover: kill a gateway from the terminal
          </span>
        )}
      </div>
    </footer>
  );
}
