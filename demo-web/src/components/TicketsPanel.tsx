// Tickets: create, list, open and close tickets with `client.writeAndWait`.
//
// Every request shows a spinner while it is in flight, then its result or its error
// (e.g. `timeout` when the demo service is stopped), and how long the round trip took.
// The list stays current for everyone: the desk announces each change as a topic event
// (`tickets.event.ticket.created`, `...closed`, the ticket as the message), which the
// panel receives with a `ticket.*` subscription and applies in place.
import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { useClient, useConnectionState, useSubscription, type WarrenDelivery } from "warren-sdk/react";
import { explain, toShownError, type ShownError } from "../lib/errors";
import { clock } from "../lib/ids";

interface Ticket {
  id: string;
  title: string;
  status: string;
  by: string | null;
  at: number | null;
  raw: unknown;
}

type Op<T = unknown> =
  | { status: "idle" }
  | { status: "pending"; started: number }
  | { status: "ok"; took: number; value: T }
  | { status: "error"; took: number; error: ShownError };

/** The reply body: the SDK may hand over the message itself or a `{ message, headers }`. */
function replyBody(reply: unknown): unknown {
  if (reply && typeof reply === "object" && !Array.isArray(reply)) {
    const r = reply as Record<string, unknown>;
    if ("message" in r && ("headers" in r || "id" in r || "seq" in r)) return r.message;
  }
  return reply;
}

function toTicket(raw: unknown): Ticket | null {
  if (!raw || typeof raw !== "object") return null;
  const t = raw as Record<string, unknown>;
  const inner = t.ticket && typeof t.ticket === "object" ? (t.ticket as Record<string, unknown>) : t;
  const id = inner.id ?? inner.ticket_id ?? inner.ticketId;
  if (id === undefined || id === null) return null;
  const str = (v: unknown) => (typeof v === "string" ? v : typeof v === "number" ? String(v) : null);
  const status =
    str(inner.status) ?? str(inner.state) ?? (inner.closed === true ? "closed" : "open");
  const atRaw = inner.createdAt ?? inner.created_at ?? inner.created ?? null;
  const at =
    typeof atRaw === "number" ? (atRaw < 1e12 ? atRaw * 1000 : atRaw) : typeof atRaw === "string" ? Date.parse(atRaw) || null : null;
  return {
    id: String(id),
    title: str(inner.title) ?? "(untitled)",
    status,
    by: str(inner.createdBy) ?? str(inner.created_by) ?? str(inner.owner) ?? str(inner.user) ?? str(inner.by),
    at,
    raw: inner,
  };
}

function toTicketList(body: unknown): Ticket[] {
  const list = Array.isArray(body)
    ? body
    : body && typeof body === "object" && Array.isArray((body as { tickets?: unknown }).tickets)
      ? (body as { tickets: unknown[] }).tickets
      : [];
  return list.map(toTicket).filter((t): t is Ticket => t !== null);
}

/** `list` with `ticket` in it (replaced when its id is there, else added), by id. */
function upsert(list: Ticket[], ticket: Ticket): Ticket[] {
  const others = list.filter((t) => t.id !== ticket.id);
  return [...others, ticket].sort((a, b) => Number(a.id) - Number(b.id) || a.id.localeCompare(b.id));
}

/** The last ticket event this page received. */
interface LiveEvent {
  /** The event name, e.g. `created` (the last segment of the key). */
  name: string;
  /** The full routing key, e.g. `tickets.event.ticket.created`. */
  key: string;
  ticket: string;
}

/**
 * One kind of request (create, list, open, close) and where its latest run stands.
 * `run` resolves with the reply, or `undefined` when the request failed, the panel
 * unmounted, or a later run of the same kind started meanwhile: replies come back in
 * any order (open #1, then #2, #1's reply slower), and only the latest request's
 * answer may show (its spinner, its error, its ticket).
 */
function useOp<T>() {
  const [op, setOp] = useState<Op<T>>({ status: "idle" });
  const mounted = useRef(true);
  const latest = useRef(0);
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);
  const run = useCallback(async (work: () => Promise<T>): Promise<T | undefined> => {
    const seq = ++latest.current;
    const current = () => mounted.current && latest.current === seq;
    const started = performance.now();
    setOp({ status: "pending", started });
    try {
      const value = await work();
      if (!current()) return undefined;
      setOp({ status: "ok", took: Math.round(performance.now() - started), value });
      return value;
    } catch (err) {
      if (current())
        setOp({ status: "error", took: Math.round(performance.now() - started), error: toShownError(err) });
      return undefined;
    }
  }, []);
  return [op, run] as const;
}

function OpLine({ op, what, testId }: { op: Op<unknown>; what: string; testId: string }) {
  if (op.status === "idle") return null;
  if (op.status === "pending")
    return (
      <p className="op op-pending" data-testid={`${testId}-pending`}>
        <span className="spinner" data-testid="ticket-spinner" /> {what}…
      </p>
    );
  if (op.status === "error") {
    const hint = explain(op.error.code);
    return (
      <div className="op op-error" role="alert" data-testid={`${testId}-error`} data-code={op.error.code}>
        <strong>{op.error.code}</strong>: {op.error.message}
        {hint && hint !== op.error.message && <div className="small">{hint}</div>}
        <div className="small muted">after {op.took} ms</div>
      </div>
    );
  }
  return null;
}

function StatusPill({ status }: { status: string }) {
  return (
    <span className={`pill pill-${status === "open" ? "open" : status === "closed" ? "closed" : "muted"}`} data-testid="ticket-status">
      {status}
    </span>
  );
}

const TIMEOUTS = [1000, 3000, 10000];

export function TicketsPanel() {
  const client = useClient();
  const { state } = useConnectionState();
  const [title, setTitle] = useState("");
  const [timeoutMs, setTimeoutMs] = useState(3000);
  const [tickets, setTickets] = useState<Ticket[] | null>(null);
  const [created, setCreated] = useState<Ticket | null>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [detail, setDetail] = useState<Ticket | null>(null);
  const [createOp, runCreate] = useOp<unknown>();
  const [listOp, runList] = useOp<unknown>();
  const [detailOp, runDetail] = useOp<unknown>();
  const [closeOp, runClose] = useOp<unknown>();
  const [live, setLive] = useState<LiveEvent | null>(null);

  const ask = useCallback(
    async (message: Record<string, unknown>) =>
      replyBody(await client.writeAndWait({ channel: "tickets", message }, { timeoutMs })),
    [client, timeoutMs],
  );

  // An older list reply (e.g. one asked for on focus, answered after the one asked for
  // after a create) is dropped by runList: it could lack a ticket added since.
  const refresh = useCallback(async () => {
    const body = await runList(() => ask({ op: "list" }));
    if (body !== undefined) setTickets(toTicketList(body));
  }, [ask, runList]);

  // Load the list whenever a connection comes up (first connect and every reconnect),
  // and when the window gets the focus back: other people change the desk too.
  const refreshRef = useRef(refresh);
  refreshRef.current = refresh;
  useEffect(() => {
    if (state === "connected") void refreshRef.current();
  }, [state]);
  useEffect(() => {
    const onFocus = () => {
      if (document.visibilityState === "visible") void refreshRef.current();
    };
    window.addEventListener("focus", onFocus);
    document.addEventListener("visibilitychange", onFocus);
    return () => {
      window.removeEventListener("focus", onFocus);
      document.removeEventListener("visibilitychange", onFocus);
    };
  }, []);

  // Someone (maybe this page) changed a ticket: apply it to the list and the open
  // detail. Before the list is loaded there is nothing to patch: the load brings it.
  const onTicketEvent = useCallback((d: WarrenDelivery) => {
    const t = toTicket(d.message);
    if (!t) return;
    setTickets((list) => (list === null ? list : upsert(list, t)));
    setDetail((shown) => (shown && shown.id === t.id ? t : shown));
    setLive({ name: d.event ?? d.routingKey, key: d.routingKey, ticket: t.id });
  }, []);
  const liveSub = useSubscription({ channel: "tickets", topic: "ticket.*" }, onTicketEvent);

  // The ticket selected now, for replies that come back later.
  const selectedRef = useRef(selected);
  selectedRef.current = selected;

  // Only the reply to the latest `get` shows (runDetail drops the others): opening #1
  // and then #2 while #1's reply is slower shows #2, not #1 under #2's highlighted row.
  const open = useCallback(
    async (id: string) => {
      setSelected(id);
      setDetail(null);
      const body = await runDetail(() => ask({ op: "get", id }));
      if (body !== undefined) setDetail(toTicket(body));
    },
    [ask, runDetail],
  );

  const create = async (e: FormEvent) => {
    e.preventDefault();
    const t = title.trim();
    if (t === "") return;
    setCreated(null);
    const body = await runCreate(() => ask({ op: "create", title: t }));
    if (body !== undefined) {
      setTitle("");
      setCreated(toTicket(body));
      void refresh();
    }
  };

  const close = async (id: string) => {
    const body = await runClose(() => ask({ op: "close", id }));
    if (body !== undefined) {
      // Shown only if this ticket is still the one open: another may be by now.
      const t = toTicket(body);
      if (t) setDetail((shown) => (shown && shown.id === t.id ? t : shown));
      else if (selectedRef.current === id) void open(id);
      void refresh();
    }
  };

  const creating = createOp.status === "pending";
  return (
    <div className="tickets card" data-testid="tickets-panel">
      <div className="card-head">
        <h2>Ticket desk</h2>
        <label className="small muted timeout-select">
          timeout{" "}
          <select
            value={timeoutMs}
            onChange={(e) => setTimeoutMs(Number(e.target.value))}
            data-testid="ticket-timeout"
          >
            {TIMEOUTS.map((t) => (
              <option key={t} value={t}>
                {t / 1000} s
              </option>
            ))}
          </select>
        </label>
      </div>
      <form className="inline-form-row" onSubmit={create}>
        <input
          value={title}
          onChange={(e) => setTitle(e.target.value)}
          placeholder="Describe the problem"
          data-testid="ticket-title"
          aria-label="Ticket title"
          maxLength={200}
        />
        <button className="btn btn-primary" type="submit" disabled={creating || title.trim() === ""} data-testid="ticket-create">
          {creating ? <span className="spinner spinner-light" /> : null} Create
        </button>
      </form>
      <OpLine op={createOp} what="Creating ticket" testId="ticket-create" />
      {createOp.status === "ok" && created && (
        <p className="op op-ok" data-testid="ticket-result" data-ticket-id={created.id}>
          Ticket <strong>#{created.id}</strong> created: “{created.title}” <span className="muted small">({createOp.took} ms)</span>
        </p>
      )}

      <div className="card-subhead">
        <h3>Tickets {tickets && <span className="muted">({tickets.length})</span>}</h3>
        <button className="btn btn-ghost btn-small" onClick={() => void refresh()} disabled={listOp.status === "pending"} data-testid="ticket-refresh">
          {listOp.status === "pending" ? <span className="spinner" /> : "↻"} Refresh
        </button>
      </div>
      <p className="small muted" data-testid="ticket-live" data-status={liveSub.status} data-event={live?.name ?? ""} data-key={live?.key ?? ""}>
        {liveSub.status === "error"
          ? `live updates off: ${liveSub.error?.code ?? "refused"}`
          : live
            ? `live: #${live.ticket} ${live.name} (${live.key})`
            : liveSub.status === "active"
              ? "live: waiting for changes"
              : "live: subscribing…"}
      </p>
      <OpLine op={listOp} what="Loading tickets" testId="ticket-list" />
      {tickets && tickets.length === 0 && <p className="empty">No tickets yet.</p>}
      {tickets && tickets.length > 0 && (
        <ul className="ticket-list" data-testid="ticket-list">
          {tickets.map((t) => (
            <li key={t.id} className={`ticket-row ${selected === t.id ? "ticket-row-active" : ""}`} data-testid="ticket-row" data-ticket-id={t.id}>
              <button className="ticket-open" onClick={() => void open(t.id)} data-testid="ticket-open">
                <span className="ticket-id">#{t.id}</span>
                <span className="ticket-title" data-testid="ticket-row-title">{t.title}</span>
                <StatusPill status={t.status} />
              </button>
            </li>
          ))}
        </ul>
      )}

      {selected && (
        <div className="ticket-detail" data-testid="ticket-detail" data-ticket-id={selected}>
          <OpLine op={detailOp} what={`Opening #${selected}`} testId="ticket-detail" />
          {detail && (
            <>
              <div className="card-subhead">
                <h3>
                  #{detail.id} {detail.title}
                </h3>
                <StatusPill status={detail.status} />
              </div>
              <p className="small muted">
                {detail.by ? `opened by ${detail.by}` : ""}
                {detail.at ? ` at ${clock(detail.at)}` : ""}
              </p>
              <details className="raw">
                <summary>Reply</summary>
                <pre>{JSON.stringify(detail.raw, null, 2)}</pre>
              </details>
              <div className="row-gap">
                {detail.status !== "closed" && (
                  <button className="btn" onClick={() => void close(detail.id)} disabled={closeOp.status === "pending"} data-testid="ticket-close">
                    {closeOp.status === "pending" ? <span className="spinner" /> : null} Close ticket
                  </button>
                )}
                <button className="btn btn-ghost" onClick={() => setSelected(null)}>
                  Done
                </button>
              </div>
              <OpLine op={closeOp} what="Closing" testId="ticket-close" />
            </>
          )}
        </div>
      )}
    </div>
  );
}
