// The signed-in page: top bar, connection banner, tabs and panels, status bar.
import { useEffect, useState } from "react";
import { useConnectionState } from "warren-sdk/react";
import type { PageConfig } from "../lib/config";
import { Logo } from "../App";
import { ChatPanel } from "./ChatPanel";
import { TicketsPanel } from "./TicketsPanel";
import { VoicePanel } from "./VoicePanel";
import { StatusBar, useEverConnected } from "./StatusBar";

type Tab = "chat" | "tickets" | "voice";

function ConnectionBanner() {
  const { state, lastError } = useConnectionState();
  const everConnected = useEverConnected(state);
  // After a few seconds without any connection, say so plainly.
  const [slow, setSlow] = useState(false);
  useEffect(() => {
    if (state === "connected" || everConnected) return undefined;
    const t = setTimeout(() => setSlow(true), 5000);
    return () => clearTimeout(t);
  }, [state, everConnected]);
  if (state === "connected") return null;
  let tone = "info";
  let text = "Connecting to a gateway…";
  if (state === "connecting" && !everConnected && slow) {
    tone = "warn";
    text = "Cannot reach any gateway yet; still trying. Is the stack running?";
  } else if (state === "disconnected") {
    // The SDK stopped (a close code that forbids reconnecting, e.g. a refused token or
    // the session taken by another tab, or no gateway answered in time): it does not
    // reconnect by itself, and what you send now is refused at once.
    tone = "error";
    text = "Disconnected: the client stopped.";
  } else if (state === "connecting" && everConnected) {
    tone = "warn";
    text = "Connection lost: reconnecting. What you send now is queued and goes out on reconnect.";
  } else if (state === "closed" || state === "failed") {
    tone = "error";
    text = "The client is closed.";
  }
  // Stopped for good: say why (the SDK's last error, as the status bar has it).
  const why = tone === "error" ? lastError : null;
  return (
    <div
      className={`banner banner-${tone}`}
      role="status"
      data-testid="connection-banner"
      data-state={state}
      data-code={why?.code ?? ""}
    >
      {tone !== "error" && <span className="spinner" />}
      {/* One inline run: the banner is a flex row, and loose pieces got gaps between them. */}
      <span>
        {text}
        {why && (
          <>
            {" "}
            <span data-testid="connection-banner-error">
              {why.code}: {why.message}
            </span>
            {/[.!?]$/.test(why.message) ? "" : "."}
          </>
        )}
        {tone === "error" && " Reload the page to connect again."}
      </span>
    </div>
  );
}

export function Workspace({
  user,
  config,
  onSignOut,
}: {
  user: string;
  config: PageConfig;
  onSignOut: () => void;
}) {
  const [tab, setTab] = useState<Tab>("chat");
  const [chatUnread, setChatUnread] = useState(0);
  const [voiceAlert, setVoiceAlert] = useState(false);
  const tabs: { id: Tab; label: string; badge?: string | null }[] = [
    { id: "chat", label: "Chat", badge: chatUnread > 0 ? String(chatUnread) : null },
    { id: "tickets", label: "Tickets" },
    { id: "voice", label: "Voice", badge: voiceAlert ? "!" : null },
  ];
  return (
    <div className="app" data-testid="workspace" data-user={user}>
      <header className="topbar">
        <div className="brand-row">
          <Logo />
          <span className="brand">Warren</span>
          <span className="brand-sub">demo</span>
        </div>
        <nav className="tabs" role="tablist">
          {tabs.map((t) => (
            <button
              key={t.id}
              role="tab"
              aria-selected={tab === t.id}
              className={`tab ${tab === t.id ? "tab-active" : ""}`}
              data-testid={`tab-${t.id}`}
              onClick={() => setTab(t.id)}
            >
              {t.label}
              {t.badge && <span className="badge">{t.badge}</span>}
            </button>
          ))}
        </nav>
        <div className="user-chip" data-testid="current-user">
          <span className="avatar" aria-hidden="true">
            {user.slice(0, 1).toUpperCase()}
          </span>
          <span className="user-name">{user}</span>
          <button className="btn btn-ghost btn-small" onClick={onSignOut} data-testid="signout">
            Sign out
          </button>
        </div>
      </header>
      <ConnectionBanner />
      <main className="panels" data-tab={tab}>
        <section className="panel panel-chat" data-active={tab === "chat"} aria-label="Chat">
          <ChatPanel user={user} onUnread={setChatUnread} />
        </section>
        <div className="side-column">
          <section className="panel panel-voice" data-active={tab === "voice"} aria-label="Voice">
            <VoicePanel user={user} onAlert={setVoiceAlert} />
          </section>
          <section className="panel panel-tickets" data-active={tab === "tickets"} aria-label="Tickets">
            <TicketsPanel />
          </section>
        </div>
      </main>
      <StatusBar config={config} user={user} />
    </div>
  );
}
