// Voice: call signalling between two users over direct distribution (no audio).
//
// call → (callee rings) ring → answer → … → hangup, each a `write` on channel `voice`
// with `distribution: { direct: [peer] }`; the service relays it to `voice.user.<peer>`.
import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { useClient, useSubscription, type WarrenDelivery } from "warren-sdk/react";
import { checkName } from "../lib/config";
import { clock, header, newId } from "../lib/ids";
import { toShownError } from "../lib/errors";

type Kind = "call" | "ring" | "answer" | "hangup";

type Phase =
  | { phase: "idle" }
  | { phase: "calling"; peer: string; callId: string }
  | { phase: "ringing"; peer: string; callId: string }
  | { phase: "incoming"; peer: string; callId: string }
  | { phase: "active"; peer: string; callId: string; since: number }
  | { phase: "ended"; peer: string; reason: string };

interface LogEntry {
  uid: number;
  dir: "out" | "in";
  kind: Kind;
  peer: string;
  at: number;
  status: "sending" | "sent" | "failed" | "received";
  note?: string;
}

let nextUid = 1;

function describe(p: Phase, now: number): string {
  switch (p.phase) {
    case "idle":
      return "No call. Enter a user name and press Call.";
    case "calling":
      return `Calling ${p.peer}…`;
    case "ringing":
      return `Ringing ${p.peer}…`;
    case "incoming":
      return `Incoming call from ${p.peer}`;
    case "active": {
      const s = Math.max(0, Math.floor((now - p.since) / 1000));
      return `In call with ${p.peer} · ${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
    }
    case "ended":
      return `Call with ${p.peer} ended: ${p.reason}`;
  }
}

export function VoicePanel({ user, onAlert }: { user: string; onAlert: (on: boolean) => void }) {
  const client = useClient();
  const [peerInput, setPeerInput] = useState("");
  const [inputError, setInputError] = useState<string | null>(null);
  const [phase, setPhaseState] = useState<Phase>({ phase: "idle" });
  const [log, setLog] = useState<LogEntry[]>([]);
  const [now, setNow] = useState(() => Date.now());
  // Signals can arrive faster than React renders: the handler reads the latest phase here.
  const phaseRef = useRef<Phase>(phase);
  const setPhase = useCallback((p: Phase) => {
    phaseRef.current = p;
    setPhaseState(p);
  }, []);

  useEffect(() => onAlert(phase.phase === "incoming"), [phase.phase, onAlert]);
  useEffect(() => {
    if (phase.phase !== "active") return undefined;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [phase.phase]);

  const signal = useCallback(
    async (peer: string, kind: Kind, callId: string, reason?: string) => {
      const uid = nextUid++;
      const entry: LogEntry = { uid, dir: "out", kind, peer, at: Date.now(), status: "sending", note: reason };
      setLog((l) => [entry, ...l].slice(0, 50));
      try {
        await client.write({
          channel: "voice",
          distribution: { direct: [peer] },
          message: { kind, callId, from: user, ...(reason ? { reason } : {}) },
        });
        setLog((l) => l.map((e) => (e.uid === uid ? { ...e, status: "sent" } : e)));
      } catch (err) {
        const e = toShownError(err);
        setLog((l) => l.map((x) => (x.uid === uid ? { ...x, status: "failed", note: e.code } : x)));
        if (kind === "call") setPhase({ phase: "ended", peer, reason: `could not reach ${peer} (${e.code})` });
      }
    },
    [client, user, setPhase],
  );

  const onSignal = useCallback(
    (d: WarrenDelivery) => {
      const body = (d as { message?: unknown }).message as
        | { kind?: unknown; callId?: unknown; from?: unknown; reason?: unknown }
        | undefined;
      if (!body || typeof body !== "object") return;
      const kind = body.kind as Kind;
      if (!["call", "ring", "answer", "hangup"].includes(kind)) return;
      const peer =
        header((d as { headers?: Record<string, unknown> }).headers, "x-warren-user") ??
        (typeof body.from === "string" ? body.from : "someone");
      const callId = typeof body.callId === "string" ? body.callId : "";
      const reason = typeof body.reason === "string" ? body.reason : undefined;
      setLog((l) => [{ uid: nextUid++, dir: "in" as const, kind, peer, at: Date.now(), status: "received" as const, note: reason }, ...l].slice(0, 50));
      const p = phaseRef.current;
      const same = "callId" in p && p.callId === callId && p.peer === peer;
      switch (kind) {
        case "call":
          if (p.phase === "idle" || p.phase === "ended") {
            setPhase({ phase: "incoming", peer, callId });
            void signal(peer, "ring", callId);
          } else if (!same) {
            void signal(peer, "hangup", callId, "busy");
          }
          break;
        case "ring":
          if (same && p.phase === "calling") setPhase({ phase: "ringing", peer, callId });
          break;
        case "answer":
          if (same && (p.phase === "calling" || p.phase === "ringing"))
            setPhase({ phase: "active", peer, callId, since: Date.now() });
          break;
        case "hangup":
          if (same)
            setPhase({
              phase: "ended",
              peer,
              reason: reason ?? (p.phase === "active" ? `${peer} hung up` : `${peer} declined`),
            });
          break;
      }
    },
    [signal, setPhase],
  );
  const sub = useSubscription({ channel: "voice", direct: true }, onSignal);

  const call = (e: FormEvent) => {
    e.preventDefault();
    const peer = peerInput.trim();
    const problem = checkName("user name", peer);
    if (problem) {
      setInputError(problem);
      return;
    }
    if (peer === user) {
      setInputError("Call someone else: open a second window with another name.");
      return;
    }
    const callId = newId("c-");
    setPhase({ phase: "calling", peer, callId });
    void signal(peer, "call", callId);
  };

  const answer = () => {
    if (phase.phase !== "incoming") return;
    setPhase({ phase: "active", peer: phase.peer, callId: phase.callId, since: Date.now() });
    void signal(phase.peer, "answer", phase.callId);
  };

  const hangup = () => {
    if (!("callId" in phase)) return;
    const reason = phase.phase === "incoming" ? "declined" : phase.phase === "active" ? "hung up" : "cancelled";
    setPhase({ phase: "ended", peer: phase.peer, reason: `you ${reason}` });
    void signal(phase.peer, "hangup", phase.callId, `${user} ${reason}`);
  };

  const inCall = phase.phase === "calling" || phase.phase === "ringing" || phase.phase === "incoming" || phase.phase === "active";
  return (
    <div className="voice card" data-testid="voice-panel">
      <div className="card-head">
        <h2>Voice signalling</h2>
        <span className="muted small">{sub.status === "pending" ? "subscribing…" : "no audio: signalling only"}</span>
      </div>
      <form className="inline-form-row" onSubmit={call}>
        <input
          value={peerInput}
          onChange={(e) => {
            setPeerInput(e.target.value);
            setInputError(null);
          }}
          placeholder="user to call"
          data-testid="voice-peer"
          aria-label="User to call"
          disabled={inCall}
        />
        <button className="btn btn-primary" type="submit" disabled={inCall} data-testid="voice-call">
          Call
        </button>
      </form>
      {inputError && <p className="error-text small">{inputError}</p>}
      <div className={`call-card call-${phase.phase}`} data-testid="voice-call-card" data-phase={phase.phase}>
        <div className="call-status" data-testid="voice-status">
          {(phase.phase === "calling" || phase.phase === "ringing" || phase.phase === "incoming") && <span className="pulse" />}
          {describe(phase, now)}
        </div>
        <div className="row-gap">
          {phase.phase === "incoming" && (
            <button className="btn btn-success" onClick={answer} data-testid="voice-answer">
              Answer
            </button>
          )}
          {inCall && (
            <button className="btn btn-danger" onClick={hangup} data-testid="voice-hangup">
              {phase.phase === "incoming" ? "Decline" : phase.phase === "active" ? "Hang up" : "Cancel"}
            </button>
          )}
          {phase.phase === "ended" && (
            <button className="btn btn-ghost btn-small" onClick={() => setPhase({ phase: "idle" })} data-testid="voice-dismiss">
              Dismiss
            </button>
          )}
        </div>
      </div>
      <h3 className="card-subhead">Signalling log</h3>
      {log.length === 0 ? (
        <p className="empty small">Signals you send and receive appear here.</p>
      ) : (
        <ol className="voice-log" data-testid="voice-log">
          {log.map((e) => (
            <li key={e.uid} data-testid="voice-log-entry" data-dir={e.dir} data-kind={e.kind} data-status={e.status}>
              <span className="voice-dir">{e.dir === "out" ? "→" : "←"}</span>
              <code>{e.kind}</code>
              <span>{e.dir === "out" ? `to ${e.peer}` : `from ${e.peer}`}</span>
              {e.note && <span className="muted small">({e.note})</span>}
              <span className="muted small voice-time">
                {clock(e.at)} · {e.status === "sending" ? "sending…" : e.status}
              </span>
            </li>
          ))}
        </ol>
      )}
    </div>
  );
}
