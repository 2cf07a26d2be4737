// Chat: the broadcast room, group rooms to join and leave, and direct messages.
//
// Sending uses `client.write`; a message shows "sending…" until the gateway's ack
// (RabbitMQ confirmed it), then "sent". Incoming messages arrive through subscriptions:
// the broadcast (`chat.all`), one per joined group (`chat.group.<g>`) and the user's
// direct messages (`chat.user.<me>`). Our own broadcast and group messages come back to
// us too; they are matched to the local copy by the `cid` the page puts in each message.
import { useCallback, useEffect, useReducer, useRef, useState, type FormEvent, type ReactNode } from "react";
import { useClient, useSubscription, type WarrenDelivery } from "warren-sdk/react";
import { OnlineList } from "./Online";
import { PrivateGroup } from "./PrivateGroup";
import { checkName } from "../lib/config";
import { useGrantedGroups } from "../lib/gateway";
import { clock, header, newId } from "../lib/ids";
import { toShownError, type ShownError } from "../lib/errors";

type SendStatus = "sending" | "sent" | "failed";

interface ChatMessage {
  /** React key, unique on the page. */
  uid: number;
  /** Client-side id carried in the message, to match our own echoes. */
  cid: string | null;
  from: string;
  text: string;
  at: number;
  mine: boolean;
  status?: SendStatus;
  error?: ShownError;
  /** Our own message came back from the service. */
  echoed?: boolean;
}

type ConvKind = "all" | "group" | "dm";

interface Conversation {
  id: string;
  kind: ConvKind;
  name: string;
  messages: ChatMessage[];
  unread: number;
}

interface ChatState {
  convs: Record<string, Conversation>;
  groups: string[];
  dms: string[];
  active: string;
}

type Action =
  | { type: "append"; conv: string; msg: Omit<ChatMessage, "uid"> }
  | { type: "status"; conv: string; cid: string; status: SendStatus; error?: ShownError }
  | { type: "open"; conv: string }
  | { type: "join"; group: string }
  | { type: "leave"; group: string }
  | { type: "dm"; peer: string; open: boolean };

let nextUid = 1;

function convOf(id: string): Pick<Conversation, "kind" | "name"> {
  if (id === "all") return { kind: "all", name: "everyone" };
  if (id.startsWith("group:")) return { kind: "group", name: id.slice(6) };
  return { kind: "dm", name: id.slice(3) };
}

function ensure(state: ChatState, id: string): ChatState {
  if (state.convs[id]) return state;
  const conv: Conversation = { id, ...convOf(id), messages: [], unread: 0 };
  return { ...state, convs: { ...state.convs, [id]: conv } };
}

function reducer(state: ChatState, action: Action): ChatState {
  switch (action.type) {
    case "append": {
      let s = ensure(state, action.conv);
      if (action.conv.startsWith("dm:") && !s.dms.includes(action.conv.slice(3))) {
        s = { ...s, dms: [...s.dms, action.conv.slice(3)] };
      }
      const conv = s.convs[action.conv];
      const { msg } = action;
      // Our own message coming back: mark the local copy instead of showing it twice.
      if (msg.mine && msg.cid) {
        const i = conv.messages.findIndex((m) => m.mine && m.cid === msg.cid);
        if (i >= 0) {
          const messages = conv.messages.slice();
          const local = messages[i];
          messages[i] = {
            ...local,
            echoed: true,
            status: local.status === "sending" ? "sent" : local.status,
          };
          return { ...s, convs: { ...s.convs, [conv.id]: { ...conv, messages } } };
        }
      }
      const unread = s.active === conv.id || msg.mine ? conv.unread : conv.unread + 1;
      const messages = [...conv.messages, { ...msg, uid: nextUid++ }];
      return { ...s, convs: { ...s.convs, [conv.id]: { ...conv, messages, unread } } };
    }
    case "status": {
      const conv = state.convs[action.conv];
      if (!conv) return state;
      const messages = conv.messages.map((m) =>
        m.mine && m.cid === action.cid
          ? {
              ...m,
              // An echo may have beaten the ack; "failed" after an echo is impossible.
              status: m.echoed && action.status !== "sent" ? m.status : action.status,
              error: action.error,
            }
          : m,
      );
      return { ...state, convs: { ...state.convs, [conv.id]: { ...conv, messages } } };
    }
    case "open": {
      const s = ensure(state, action.conv);
      const conv = s.convs[action.conv];
      return { ...s, active: action.conv, convs: { ...s.convs, [conv.id]: { ...conv, unread: 0 } } };
    }
    case "join": {
      if (state.groups.includes(action.group)) return reducer(state, { type: "open", conv: `group:${action.group}` });
      const s = { ...state, groups: [...state.groups, action.group] };
      return reducer(s, { type: "open", conv: `group:${action.group}` });
    }
    case "leave": {
      const s = { ...state, groups: state.groups.filter((g) => g !== action.group) };
      return s.active === `group:${action.group}` ? reducer(s, { type: "open", conv: "all" }) : s;
    }
    case "dm": {
      let s = ensure(state, `dm:${action.peer}`);
      if (!s.dms.includes(action.peer)) s = { ...s, dms: [...s.dms, action.peer] };
      return action.open ? reducer(s, { type: "open", conv: `dm:${action.peer}` }) : s;
    }
  }
}

const initialState: ChatState = {
  convs: { all: { id: "all", kind: "all", name: "everyone", messages: [], unread: 0 } },
  groups: [],
  dms: [],
  active: "all",
};

interface WireChat {
  text?: unknown;
  cid?: unknown;
  from?: unknown;
}

function parseDelivery(d: WarrenDelivery, user: string): Omit<ChatMessage, "uid"> {
  const body = (d as { message?: unknown }).message;
  const m: WireChat = body && typeof body === "object" ? (body as WireChat) : { text: body };
  const from =
    header((d as { headers?: Record<string, unknown> }).headers, "x-warren-user") ??
    (typeof m.from === "string" ? m.from : "someone");
  const text = typeof m.text === "string" ? m.text : JSON.stringify(body);
  return {
    cid: typeof m.cid === "string" ? m.cid : null,
    from,
    text,
    at: Date.now(),
    mine: from === user,
  };
}

/** A joined group: owns the group's subscription while it is listed. */
function GroupRoom({
  group,
  active,
  unread,
  onOpen,
  onMessage,
}: {
  group: string;
  active: boolean;
  unread: number;
  onOpen: () => void;
  onMessage: (d: WarrenDelivery) => void;
}) {
  const sub = useSubscription({ channel: "chat", groups: [group] }, onMessage);
  return (
    <RoomButton
      testId={`room-group-${group}`}
      active={active}
      unread={unread}
      onClick={onOpen}
      icon="#"
      label={group}
      note={sub.status === "pending" ? "joining…" : sub.status === "error" ? "refused" : null}
      subStatus={sub.status}
    >
      {sub.status === "error" && sub.error && (
        // The gateway's answer, as the private group example shows it (`forbidden`
        // for a group the token does not grant).
        <p
          className="error-text fineprint"
          role="alert"
          data-testid={`room-group-${group}-refusal`}
          data-code={sub.error.code}
        >
          {sub.error.code}: {sub.error.message}
        </p>
      )}
    </RoomButton>
  );
}

function RoomButton({
  testId,
  active,
  unread,
  onClick,
  icon,
  label,
  note,
  subStatus,
  children,
}: {
  testId: string;
  active: boolean;
  unread: number;
  onClick: () => void;
  icon: string;
  label: string;
  note?: string | null;
  subStatus?: string;
  /** Shown under the button (a refusal). */
  children?: ReactNode;
}) {
  return (
    <li>
      <button
        className={`room ${active ? "room-active" : ""}`}
        onClick={onClick}
        data-testid={testId}
        data-sub-status={subStatus}
        aria-current={active}
      >
        <span className="room-icon" aria-hidden="true">
          {icon}
        </span>
        <span className="room-label">{label}</span>
        {note && <span className="room-note">{note}</span>}
        {unread > 0 && (
          <span className="badge" data-testid={`${testId}-unread`}>
            {unread}
          </span>
        )}
      </button>
      {children}
    </li>
  );
}

function InlineForm({
  placeholder,
  button,
  testId,
  kind,
  onSubmit,
  hint,
}: {
  placeholder: string;
  button: string;
  testId: string;
  kind: string;
  onSubmit: (value: string) => void;
  /** A line under the form. */
  hint?: ReactNode;
}) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(null);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const v = value.trim();
    const problem = checkName(kind, v);
    if (problem) {
      setError(problem);
      return;
    }
    onSubmit(v);
    setValue("");
    setError(null);
  };
  return (
    <form className="inline-form" onSubmit={submit}>
      <div className="inline-form-row">
        <input
          value={value}
          placeholder={placeholder}
          onChange={(e) => {
            setValue(e.target.value);
            setError(null);
          }}
          data-testid={`${testId}-input`}
          aria-label={placeholder}
        />
        <button className="btn btn-small" type="submit" data-testid={`${testId}-submit`}>
          {button}
        </button>
      </div>
      {error && <p className="error-text small">{error}</p>}
      {hint}
    </form>
  );
}

function MessageRow({ msg, onRetry }: { msg: ChatMessage; onRetry: () => void }) {
  return (
    <li
      className={`msg ${msg.mine ? "msg-mine" : ""}`}
      data-testid="chat-message"
      data-from={msg.from}
      data-cid={msg.cid ?? ""}
      data-status={msg.status ?? "received"}
      data-echoed={msg.echoed ? "true" : "false"}
    >
      <div className="msg-meta">
        <span className="msg-from">{msg.mine ? "you" : msg.from}</span>
        <span className="msg-time">{clock(msg.at)}</span>
      </div>
      <div className="msg-bubble">
        <span className="msg-text" data-testid="chat-message-text">
          {msg.text}
        </span>
      </div>
      {msg.mine && (
        <div className={`msg-status msg-status-${msg.status}`} data-testid="msg-status">
          {msg.status === "sending" && (
            <>
              <span className="spinner spinner-tiny" /> sending…
            </>
          )}
          {msg.status === "sent" && "sent ✓"}
          {msg.status === "failed" && (
            <>
              not sent: {msg.error?.code ?? "error"}{" "}
              <button className="link" onClick={onRetry} data-testid="msg-retry">
                retry
              </button>
            </>
          )}
        </div>
      )}
    </li>
  );
}

export function ChatPanel({ user, onUnread }: { user: string; onUnread: (n: number) => void }) {
  const client = useClient();
  const granted = useGrantedGroups(user);
  const [state, dispatch] = useReducer(reducer, initialState);
  const [draft, setDraft] = useState("");
  const listRef = useRef<HTMLOListElement>(null);
  const inputRef = useRef<HTMLInputElement>(null);

  const receive = useCallback(
    (conv: string | ((m: Omit<ChatMessage, "uid">) => string)) => (d: WarrenDelivery) => {
      const msg = parseDelivery(d, user);
      dispatch({ type: "append", conv: typeof conv === "string" ? conv : conv(msg), msg });
    },
    [user],
  );
  const broadcast = useSubscription({ channel: "chat" }, receive("all"));
  const direct = useSubscription(
    { channel: "chat", direct: true },
    receive((m) => `dm:${m.from}`),
  );

  const active = state.convs[state.active];
  const totalUnread = Object.values(state.convs).reduce((n, c) => n + c.unread, 0);
  useEffect(() => onUnread(totalUnread), [totalUnread, onUnread]);

  // Keep the newest message in view.
  const count = active.messages.length;
  useEffect(() => {
    const el = listRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [count, state.active]);

  const send = useCallback(
    async (conv: string, text: string, cid: string, retry: boolean) => {
      const { kind, name } = convOf(conv);
      const distribution =
        kind === "all" ? { broadcast: true } : kind === "group" ? { groups: [name] } : { direct: [name] };
      if (retry) dispatch({ type: "status", conv, cid, status: "sending" });
      else
        dispatch({
          type: "append",
          conv,
          msg: { cid, from: user, text, at: Date.now(), mine: true, status: "sending" },
        });
      try {
        await client.write({
          channel: "chat",
          distribution,
          message: { text, cid, from: user, sentAt: Date.now() },
        });
        dispatch({ type: "status", conv, cid, status: "sent" });
      } catch (err) {
        dispatch({ type: "status", conv, cid, status: "failed", error: toShownError(err) });
      }
    },
    [client, user],
  );

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const text = draft.trim();
    if (text === "") return;
    setDraft("");
    void send(state.active, text, newId("m-"), false);
    inputRef.current?.focus();
  };

  const subtitle =
    active.kind === "all"
      ? "Broadcast room: everyone signed in receives these messages."
      : active.kind === "group"
        ? "Group room: only members who joined receive these messages."
        : `Direct messages with ${active.name}: only the two of you see them.`;
  const liveNote =
    active.kind === "all"
      ? broadcast.status
      : active.kind === "dm"
        ? direct.status
        : state.groups.includes(active.name)
          ? null
          : "left";

  return (
    <div className="chat" data-testid="chat-panel">
      <aside className="chat-sidebar" aria-label="Rooms">
        <h3 className="side-title">Rooms</h3>
        <ul className="rooms">
          <RoomButton
            testId="room-all"
            active={state.active === "all"}
            unread={state.convs.all.unread}
            onClick={() => dispatch({ type: "open", conv: "all" })}
            icon="◎"
            label="everyone"
            subStatus={broadcast.status}
          />
        </ul>
        <h3 className="side-title">Groups</h3>
        <ul className="rooms">
          {state.groups.map((g) => (
            <GroupRoom
              key={g}
              group={g}
              active={state.active === `group:${g}`}
              unread={state.convs[`group:${g}`]?.unread ?? 0}
              onOpen={() => dispatch({ type: "open", conv: `group:${g}` })}
              onMessage={receive(`group:${g}`)}
            />
          ))}
        </ul>
        <InlineForm
          placeholder="room name"
          button="Join"
          testId="group-join"
          kind="room name"
          onSubmit={(g) => dispatch({ type: "join", group: g })}
          hint={
            granted && (
              <p className="muted fineprint" data-testid="group-join-hint" data-groups={granted.join(",")}>
                {granted.length > 0
                  ? `Your token grants ${granted.join(", ")}; the gateway refuses other rooms.`
                  : "Your token grants no room; the gateway refuses every one."}
              </p>
            )
          }
        />
        <h3 className="side-title">Private group</h3>
        <PrivateGroup />
        <h3 className="side-title">Direct messages</h3>
        <ul className="rooms">
          {state.dms.map((u) => (
            <RoomButton
              key={u}
              testId={`room-dm-${u}`}
              active={state.active === `dm:${u}`}
              unread={state.convs[`dm:${u}`]?.unread ?? 0}
              onClick={() => dispatch({ type: "open", conv: `dm:${u}` })}
              icon="@"
              label={u}
            />
          ))}
        </ul>
        <InlineForm
          placeholder="user name"
          button="Message"
          testId="dm-start"
          kind="user name"
          onSubmit={(u) => dispatch({ type: "dm", peer: u, open: true })}
        />
      </aside>
      <div className="conversation" data-testid="conversation" data-conv={state.active}>
        <header className="conversation-head">
          <div>
            <h2 data-testid="conversation-title">
              {active.kind === "all" ? "◎ everyone" : active.kind === "group" ? `# ${active.name}` : `@ ${active.name}`}
              {liveNote === "pending" && <span className="pill pill-muted">subscribing…</span>}
              {liveNote === "left" && <span className="pill pill-muted">not a member</span>}
            </h2>
            <p className="muted small">{subtitle}</p>
            {active.kind !== "dm" && (
              <OnlineList user={user} channel="chat" group={active.kind === "group" ? active.name : undefined} />
            )}
          </div>
          {active.kind === "group" && state.groups.includes(active.name) && (
            <button
              className="btn btn-ghost btn-small"
              onClick={() => dispatch({ type: "leave", group: active.name })}
              data-testid="group-leave"
            >
              Leave room
            </button>
          )}
          {active.kind === "group" && !state.groups.includes(active.name) && (
            <button
              className="btn btn-small"
              onClick={() => dispatch({ type: "join", group: active.name })}
              data-testid="group-rejoin"
            >
              Join again
            </button>
          )}
        </header>
        <ol className="messages" ref={listRef} data-testid="chat-messages">
          {active.messages.length === 0 && (
            <li className="empty" data-testid="chat-empty">
              No messages yet. Say hello!
            </li>
          )}
          {active.messages.map((m) => (
            <MessageRow
              key={m.uid}
              msg={m}
              onRetry={() => m.cid && void send(active.id, m.text, m.cid, true)}
            />
          ))}
        </ol>
        <form className="composer" onSubmit={submit}>
          <input
            ref={inputRef}
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            placeholder={`Message ${active.kind === "all" ? "everyone" : active.name}`}
            data-testid="chat-input"
            aria-label="Message"
            maxLength={2000}
          />
          <button className="btn btn-primary" type="submit" data-testid="chat-send" disabled={draft.trim() === ""}>
            Send
          </button>
        </form>
      </div>
    </div>
  );
}
