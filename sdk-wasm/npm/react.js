"use client";
/**
 * @file React bindings for the Warren SDK (`warren-sdk/react`): a provider that owns one
 * client per configuration, and hooks for the client, subscriptions and connection state.
 *
 * Safe under `React.StrictMode`: clients and subscriptions live in module-level caches,
 * reference-counted, and are closed a little after the last user unmounts, so the
 * mount → unmount → mount sequence of development mode reuses the same connection and
 * the same subscription instead of opening two.
 *
 * Plain ES module, no build step; types in `react.d.ts`. Written to stay small: it is
 * bundled into every app that uses it (measured by sdk-wasm/tests/install/run.sh).
 */
import init, { Client } from "./warren_sdk.js";
import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useInsertionEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";

/** How long a client (or subscription) with no users is kept before it is closed. */
const DEFAULT_CLOSE_DELAY_MS = 200;

/** The wasm module is initialised once per page, whoever asks first. */
let initPromise = null;

/**
 * Initialises the wasm module once; later calls return the same promise, whatever they
 * pass (a failure lets the next call try again). `moduleOrPath`: where the wasm is, as
 * `init({ module_or_path })` takes it (a URL, a `Response`, the bytes, a
 * `WebAssembly.Module`); by default the .wasm next to the module.
 * @returns {Promise<void>}
 */
export function initWarren(moduleOrPath) {
  if (!initPromise) {
    initPromise = init({ module_or_path: moduleOrPath }).then(() => {});
    initPromise.catch(() => (initPromise = null));
  }
  return initPromise;
}

/** Whatever the SDK rejects or emits (a `WarrenError`, or anything thrown) as `{ code, message, at }`. */
const toErrorInfo = (err) => ({
  code: err?.code ?? "unknown",
  message: err?.message || String(err?.code ?? err ?? "unknown error"),
  at: Date.now(),
});

// ---------------------------------------------------------------------------------------
// Client cache
// ---------------------------------------------------------------------------------------

/** Entries by configuration key (JSON of the options, and which `getToken`). */
const clients = new Map();

/**
 * One cached client and the connection status the hooks read (`entry.status`, replaced
 * on every change, so it is a `useSyncExternalStore` snapshot).
 * Lifecycle: created on first render → started on first mount (init wasm, construct,
 * connect) → closed `closeDelayMs` after its reference count drops to zero.
 */
function createEntry(key, options, closeDelayMs, external) {
  const listeners = new Set();
  let refs = 0;
  let timer = null;
  let everConnected = false;
  let started = false;
  let client = null;
  const e = {
    closeDelayMs,
    disposed: false,
    // A client passed in is there from the first render (its events from the mount on).
    status: {
      client: external,
      state: external ? external.state : "idle",
      url: external?.url ?? null,
      reconnects: 0,
      lastError: null,
      since: Date.now(),
    },
    subscribe: (l) => (listeners.add(l), () => listeners.delete(l)),
    getSnapshot: () => e.status,
  };
  const update = (patch) => {
    // `since`: when `state` last changed, by the client's `state` event or the bindings.
    if (patch.state && patch.state != e.status.state) patch.since = Date.now();
    e.status = { ...e.status, ...patch };
    for (const l of listeners) l();
  };
  const onState = (ev) => {
    const patch = { state: ev.newState };
    if (ev.url) patch.url = ev.url;
    if (ev.newState == "connected") {
      if (everConnected) patch.reconnects = e.status.reconnects + 1;
      everConnected = true;
    }
    update(patch);
  };
  const onError = (err) => update({ lastError: toErrorInfo(err) });
  const onDrain = () => update({ lastError: { code: "drain", message: "gateway asked us to move", at: Date.now() } });
  const start = async () => {
    started = true;
    client = external;
    if (!client) {
      update({ state: "loading" });
      try {
        await initWarren();
        if (e.disposed) return;
        client = new Client(options);
      } catch (err) {
        update({ state: "failed", lastError: toErrorInfo(err) });
        return;
      }
    }
    client.on("state", onState);
    client.on("error", onError);
    client.on("drain", onDrain);
    // A client passed in may already be connected: start from what it says.
    everConnected = client.state == "connected";
    update({ client, state: external ? client.state : "connecting", url: client.url ?? null });
    // A give-up rejects connect() with the error its `error` event recorded already.
    const recorded = ({ code, message }, last = e.status.lastError) => code == last?.code && message == last.message;
    if (!external) client.connect().catch((err) => e.disposed || recorded(toErrorInfo(err)) || onError(err));
  };
  const dispose = () => {
    e.disposed = true;
    if (clients.get(key) === e) clients.delete(key);
    try {
      client?.off("state", onState);
      client?.off("error", onError);
      client?.off("drain", onDrain);
      if (!external) client?.close();
    } catch {
      // An app that freed its own client already released everything.
    }
    update({ state: "closed" });
  };
  e.acquire = () => {
    refs++;
    clearTimeout(timer);
    timer = null;
    if (refs == 1 && !started) {
      // Committed after the sweep below dropped it (a long-suspended render): back in.
      e.disposed = false;
      if (!clients.get(key) || clients.get(key).disposed) clients.set(key, e);
      start();
    }
  };
  e.release = () => {
    if (--refs > 0 || timer) return;
    timer = setTimeout(() => {
      timer = null;
      if (!refs) dispose();
    }, closeDelayMs);
  };
  // Created during a render: one that never commits (SSR, a discarded Suspense or
  // transition render) never acquires it, so it leaves the cache after `closeDelayMs`.
  refs++;
  e.release();
  timer?.unref?.();
  return e;
}

const ids = new WeakMap();
let nextId = 1;
const idOf = (o) => (ids.has(o) || ids.set(o, nextId++), ids.get(o));

function entryFor(options, client, closeDelayMs) {
  // JSON drops functions: `getToken` counts by identity, so a provider for another
  // user (another getToken) never shares a client with the previous one.
  const getToken = options?.getToken;
  const key = client
    ? "external:" + idOf(client)
    : "options:" + (typeof getToken == "function" ? idOf(getToken) : "") + ":" + JSON.stringify(options ?? {});
  let entry = clients.get(key);
  if (!entry || entry.disposed) {
    entry = createEntry(key, options, closeDelayMs, client ?? null);
    clients.set(key, entry);
  }
  return entry;
}

// ---------------------------------------------------------------------------------------
// Provider and hooks
// ---------------------------------------------------------------------------------------

const WarrenContext = createContext(null);

const useStatus = (entry) => useSyncExternalStore(entry.subscribe, entry.getSnapshot, entry.getSnapshot);

/**
 * Owns one client for `options` (or wraps the given `client`) and connects it.
 * Children render once the client exists (before it is connected: writes made while
 * connecting are queued by the SDK); until then `fallback` renders. When `options`
 * (or `client`) change, the children stay mounted with the previous client, kept open,
 * until the new one exists; then they get the new one and the previous one is closed.
 * `fallback` renders again only when the new client could not be created (`failed`).
 */
export function WarrenProvider({ options, client, closeDelayMs, fallback, children }) {
  const entry = entryFor(options, client, closeDelayMs ?? DEFAULT_CLOSE_DELAY_MS);
  useEffect(() => (entry.acquire(), entry.release), [entry]);
  const status = useStatus(entry);
  // The entry the children were last committed with (set in an effect: a render that
  // never commits changes nothing).
  const shown = useRef(null);
  const ready = status.client ? entry : status.state == "failed" ? null : shown.current;
  // Holds the shown entry (its client stays open) until the children move on.
  useEffect(() => {
    shown.current = ready;
    if (!ready) return undefined;
    ready.acquire();
    return ready.release;
  }, [ready]);
  if (!ready) return (typeof fallback == "function" ? fallback(status) : fallback) ?? null;
  return createElement(WarrenContext.Provider, { value: ready }, children);
}

function useEntry(hook) {
  const entry = useContext(WarrenContext);
  if (!entry) throw new Error(hook + "() must be used inside <WarrenProvider>");
  return entry;
}

/** The provider's client. */
export function useClient() {
  return useStatus(useEntry("useClient")).client;
}

/** Connection state, gateway URL (in use, or tried next), reconnect count and last error. */
export function useConnectionState() {
  const { state, url, reconnects, lastError, since } = useStatus(useEntry("useConnectionState"));
  return { state, url, reconnects, lastError, since };
}

const IDLE = { status: "idle", error: null };
const PENDING = { status: "pending", error: null };
const ACTIVE = { status: "active", error: null };

// Subscriptions are shared per client and spec: components asking for the same spec
// get one SDK subscription; it is unsubscribed a little after its last user unmounts.
const subscriptionsByClient = new WeakMap();

function acquireSubscription(client, key, handler, onStatus, closeDelayMs) {
  let byKey = subscriptionsByClient.get(client);
  if (!byKey) subscriptionsByClient.set(client, (byKey = new Map()));
  let shared = byKey.get(key);
  if (!shared) {
    shared = { handlers: new Set(), listeners: new Set(), status: PENDING, timer: null, sub: null };
    try {
      shared.sub = client.subscribe(
        JSON.parse(key),
        (msg) => {
          for (const h of shared.handlers) {
            try {
              h(msg);
            } catch (err) {
              console.error("warren-sdk/react: subscription handler threw", err);
            }
          }
        },
        // Every change, not only the first acknowledgement (`ready` settles once): a
        // subscription refused after a reconnect, or back after `connect()`.
        (status, err) => {
          shared.status = err ? { status, error: toErrorInfo(err) } : status == "active" ? ACTIVE : PENDING;
          for (const l of shared.listeners) l(shared.status);
        },
      );
    } catch (err) {
      shared.status = { status: "error", error: toErrorInfo(err) };
    }
    byKey.set(key, shared);
  }
  clearTimeout(shared.timer);
  shared.timer = null;
  shared.handlers.add(handler);
  shared.listeners.add(onStatus);
  onStatus(shared.status);
  return () => {
    shared.handlers.delete(handler);
    shared.listeners.delete(onStatus);
    if (shared.handlers.size || shared.timer) return;
    shared.timer = setTimeout(() => {
      shared.timer = null;
      if (shared.handlers.size) return;
      byKey.delete(key);
      shared.sub?.unsubscribe();
    }, closeDelayMs);
  };
}

/**
 * Subscribes while the component is mounted; `handler` may change on every render (the
 * latest committed one is called). Pass `null` as `spec` to not subscribe (the status is
 * then `idle`). The status follows the SDK's `onStatus`: `pending` while (re)subscribing,
 * `active` once the gateway acknowledged it, `error` when refused or the client stopped,
 * and `active` again when acknowledged after a reconnect or `connect()`; `active` only
 * while connected (`pending` from a drop on, which `onStatus` does not report).
 */
export function useSubscription(spec, handler) {
  const entry = useEntry("useSubscription");
  const { client, state: connection } = useStatus(entry);
  const handlerRef = useRef(handler);
  const key = spec == null ? null : JSON.stringify(spec);
  // The status with the spec and client it is about: a render after `spec` (or the
  // client) changed returns `idle` / `pending`, never the previous spec's status (the
  // effect that subscribes runs only after that render).
  const [state, setState] = useState(null);
  // Before any effect of this commit, and in the same task as the commit: a delivery
  // never reaches the handler of an older render (a passive effect ran a task later).
  useInsertionEffect(() => {
    handlerRef.current = handler;
  });
  useEffect(() => {
    if (key === null || !client) return undefined;
    const onStatus = (status) =>
      setState((s) => (s?.key === key && s.client === client && s.status === status ? s : { key, client, status }));
    return acquireSubscription(client, key, (msg) => handlerRef.current(msg), onStatus, entry.closeDelayMs);
  }, [client, key, entry]);
  const status = key === null ? IDLE : state?.key === key && state.client === client ? state.status : PENDING;
  // The SDK reports nothing for a subscription when the connection drops, only `pending`
  // again at the resubscribe after the reconnect: until then its `active` is stale.
  return status === ACTIVE && connection != "connected" ? PENDING : status;
}
