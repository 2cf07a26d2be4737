/**
 * @file React bindings for the Warren SDK (`warren-sdk/react`): a provider that owns one
 * client per configuration, and hooks for the client, subscriptions and connection state.
 *
 * Safe under `React.StrictMode`: clients and subscriptions live in module-level caches,
 * reference-counted, and are closed a little after the last user unmounts, so the
 * mount → unmount → mount sequence of development mode reuses the same connection and
 * the same subscription instead of opening two.
 *
 * Plain ES module, no build step; types in `react.d.ts`.
 */
import * as sdk from "./warren_sdk.js";
import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";

/** How long a client (or subscription) with no users is kept before it is closed. */
const DEFAULT_CLOSE_DELAY_MS = 200;

/** The wasm module is initialised once per page, whoever asks first. */
let initPromise = null;

/**
 * Initialises the wasm module once; later calls return the same promise.
 * @returns {Promise<void>}
 */
export function initWarren() {
  if (initPromise === null) {
    const init = sdk.default;
    initPromise = Promise.resolve(typeof init === "function" ? init() : undefined).then(
      () => undefined,
    );
    initPromise.catch(() => {
      initPromise = null;
    });
  }
  return initPromise;
}

/** Normalises whatever the SDK rejects or emits into `{ code, message, at }`. */
function toErrorInfo(err) {
  const at = Date.now();
  if (err === null || err === undefined) return { code: "unknown", message: "unknown error", at };
  if (typeof err === "string") return { code: "unknown", message: err, at };
  const code = typeof err.code === "string" ? err.code : "unknown";
  const message =
    typeof err.message === "string" && err.message !== "" ? err.message : String(code);
  return { code, message, at };
}

function readField(obj, ...names) {
  if (obj === null || obj === undefined) return undefined;
  for (const name of names) {
    const value = obj instanceof Map ? obj.get(name) : obj[name];
    if (value !== undefined) return value;
  }
  return undefined;
}

/** Calls `client.on(event, fn)` and returns a function that removes the listener. */
function listen(client, event, fn) {
  if (typeof client.on !== "function") return () => {};
  const off = client.on(event, fn);
  return () => {
    if (typeof off === "function") off();
    else if (off && typeof off.dispose === "function") off.dispose();
    else if (typeof client.off === "function") client.off(event, fn);
  };
}

// ---------------------------------------------------------------------------------------
// Client cache
// ---------------------------------------------------------------------------------------

/** Entries by configuration key (JSON of the options, and which `getToken`). */
const clients = new Map();

const INITIAL_STATUS = Object.freeze({
  client: null,
  state: "idle",
  url: null,
  reconnects: 0,
  lastError: null,
  since: 0,
});

/**
 * One cached client and the connection status the hooks read.
 * Lifecycle: created on first render → started on first mount (init wasm, construct,
 * connect) → closed `closeDelayMs` after its reference count drops to zero.
 */
class ClientEntry {
  constructor(key, options, closeDelayMs, external) {
    this.key = key;
    this.options = options;
    this.closeDelayMs = closeDelayMs;
    this.external = external;
    this.refs = 0;
    this.started = false;
    this.disposed = false;
    this.closeTimer = null;
    this.everConnected = false;
    this.offs = [];
    this.listeners = new Set();
    this.status = { ...INITIAL_STATUS, since: Date.now() };
    this.subscribe = (listener) => {
      this.listeners.add(listener);
      return () => this.listeners.delete(listener);
    };
    this.getSnapshot = () => this.status;
  }

  update(patch) {
    this.status = { ...this.status, ...patch };
    for (const listener of this.listeners) listener();
  }

  acquire() {
    this.refs += 1;
    if (this.closeTimer !== null) {
      clearTimeout(this.closeTimer);
      this.closeTimer = null;
    }
    if (!this.started) {
      this.started = true;
      this.start();
    }
  }

  release() {
    this.refs -= 1;
    if (this.refs > 0 || this.closeTimer !== null) return;
    this.closeTimer = setTimeout(() => {
      this.closeTimer = null;
      if (this.refs === 0) this.dispose();
    }, this.closeDelayMs);
  }

  async start() {
    let client = this.external;
    if (!client) {
      this.update({ state: "loading" });
      try {
        await initWarren();
      } catch (err) {
        this.update({ state: "failed", lastError: toErrorInfo(err) });
        return;
      }
      if (this.disposed) return;
      try {
        client = new sdk.Client(this.options);
      } catch (err) {
        this.update({ state: "failed", lastError: toErrorInfo(err) });
        return;
      }
    }
    this.client = client;
    this.offs.push(
      listen(client, "state", (ev) => this.onState(ev)),
      listen(client, "error", (err) => this.update({ lastError: toErrorInfo(err) })),
      listen(client, "drain", () =>
        this.update({
          lastError: { code: "drain", message: "gateway asked us to move", at: Date.now() },
        }),
      ),
    );
    // A client passed in may already be connected: start from what it says.
    const initial = readField(client, "state");
    const url = readField(client, "url");
    this.everConnected = initial === "connected";
    this.update({
      client,
      state: this.external && typeof initial === "string" ? initial : "connecting",
      url: typeof url === "string" && url !== "" ? url : this.status.url,
    });
    if (!this.external) {
      try {
        await client.connect();
      } catch (err) {
        if (!this.disposed) this.update({ lastError: toErrorInfo(err) });
      }
    }
  }

  onState(ev) {
    const newState = readField(ev, "newState", "new_state", "state");
    const url = readField(ev, "url");
    if (typeof newState !== "string") return;
    const patch = { state: newState, since: Date.now() };
    if (typeof url === "string" && url !== "") patch.url = url;
    if (newState === "connected") {
      if (this.everConnected) patch.reconnects = this.status.reconnects + 1;
      this.everConnected = true;
    }
    this.update(patch);
  }

  dispose() {
    this.disposed = true;
    if (clients.get(this.key) === this) clients.delete(this.key);
    for (const off of this.offs) {
      try {
        off();
      } catch {
        // The client may already be gone; nothing to undo.
      }
    }
    this.offs = [];
    if (this.client && !this.external) {
      try {
        const closing = this.client.close();
        if (closing && typeof closing.catch === "function") closing.catch(() => {});
      } catch {
        // Closing twice is harmless.
      }
    }
    this.update({ state: "closed" });
  }
}

const externalIds = new WeakMap();
let nextExternalId = 1;

function keyOf(options, client) {
  if (client) {
    if (!externalIds.has(client)) externalIds.set(client, nextExternalId++);
    return `external:${externalIds.get(client)}`;
  }
  // JSON drops functions: `getToken` counts by identity, so a provider for another
  // user (another getToken) never shares a client with the previous one.
  const getToken = options?.getToken;
  let fn = "";
  if (typeof getToken === "function") {
    if (!externalIds.has(getToken)) externalIds.set(getToken, nextExternalId++);
    fn = `getToken:${externalIds.get(getToken)}:`;
  }
  return `options:${fn}${JSON.stringify(options ?? {})}`;
}

function entryFor(options, client, closeDelayMs) {
  const key = keyOf(options, client);
  let entry = clients.get(key);
  if (!entry || entry.disposed) {
    entry = new ClientEntry(key, options, closeDelayMs, client ?? null);
    clients.set(key, entry);
  }
  return entry;
}

// ---------------------------------------------------------------------------------------
// Provider and hooks
// ---------------------------------------------------------------------------------------

const WarrenContext = createContext(null);

/**
 * Owns one client for `options` (or wraps the given `client`) and connects it.
 * Children render once the client exists (before it is connected: writes made while
 * connecting are queued by the SDK); until then `fallback` renders.
 */
export function WarrenProvider({ options, client, closeDelayMs, fallback, children }) {
  const entry = entryFor(options, client, closeDelayMs ?? DEFAULT_CLOSE_DELAY_MS);
  useEffect(() => {
    entry.acquire();
    return () => entry.release();
  }, [entry]);
  const status = useSyncExternalStore(entry.subscribe, entry.getSnapshot, entry.getSnapshot);
  if (!status.client) {
    const view = typeof fallback === "function" ? fallback(status) : fallback;
    return view === undefined ? null : view;
  }
  return createElement(WarrenContext.Provider, { value: entry }, children);
}

function useEntry(hook) {
  const entry = useContext(WarrenContext);
  if (entry === null) throw new Error(`${hook}() must be used inside <WarrenProvider>`);
  return entry;
}

/** The provider's client. */
export function useClient() {
  const entry = useEntry("useClient");
  const status = useSyncExternalStore(entry.subscribe, entry.getSnapshot, entry.getSnapshot);
  return status.client;
}

/** Connection state, current gateway URL, reconnect count and last error. */
export function useConnectionState() {
  const entry = useEntry("useConnectionState");
  const status = useSyncExternalStore(entry.subscribe, entry.getSnapshot, entry.getSnapshot);
  return {
    state: status.state,
    url: status.url,
    reconnects: status.reconnects,
    lastError: status.lastError,
    since: status.since,
  };
}

// Subscriptions are shared per client and spec: components asking for the same spec
// get one SDK subscription; it is unsubscribed a little after its last user unmounts.
const subscriptionsByClient = new WeakMap();

function acquireSubscription(client, spec, key, handler, onStatus, closeDelayMs) {
  let byKey = subscriptionsByClient.get(client);
  if (!byKey) {
    byKey = new Map();
    subscriptionsByClient.set(client, byKey);
  }
  let shared = byKey.get(key);
  if (!shared) {
    shared = {
      handlers: new Set(),
      statusListeners: new Set(),
      status: { status: "pending", error: null },
      timer: null,
      sub: null,
    };
    const dispatch = (msg) => {
      for (const h of shared.handlers) {
        try {
          h(msg);
        } catch (err) {
          console.error("warren-sdk/react: subscription handler threw", err);
        }
      }
    };
    const setStatus = (status) => {
      shared.status = status;
      for (const l of shared.statusListeners) l(status);
    };
    try {
      const result = client.subscribe(spec, dispatch);
      shared.sub = result;
      if (result && typeof result.then === "function") {
        result.then(
          (sub) => {
            shared.sub = sub;
            setStatus({ status: "active", error: null });
          },
          (err) => {
            shared.sub = null;
            setStatus({ status: "error", error: toErrorInfo(err) });
          },
        );
      } else {
        setStatus({ status: "active", error: null });
      }
    } catch (err) {
      setStatus({ status: "error", error: toErrorInfo(err) });
    }
    byKey.set(key, shared);
  }
  if (shared.timer !== null) {
    clearTimeout(shared.timer);
    shared.timer = null;
  }
  shared.handlers.add(handler);
  shared.statusListeners.add(onStatus);
  onStatus(shared.status);
  return () => {
    shared.handlers.delete(handler);
    shared.statusListeners.delete(onStatus);
    if (shared.handlers.size > 0 || shared.timer !== null) return;
    shared.timer = setTimeout(() => {
      shared.timer = null;
      if (shared.handlers.size > 0) return;
      byKey.delete(key);
      Promise.resolve(shared.sub)
        .then((sub) => {
          if (sub && typeof sub.unsubscribe === "function") return sub.unsubscribe();
          return undefined;
        })
        .catch(() => {});
    }, closeDelayMs);
  };
}

/**
 * Subscribes while the component is mounted; `handler` may change on every render (the
 * latest one is called). Pass `null` as `spec` to not subscribe.
 */
export function useSubscription(spec, handler) {
  const entry = useEntry("useSubscription");
  const status = useSyncExternalStore(entry.subscribe, entry.getSnapshot, entry.getSnapshot);
  const client = status.client;
  const handlerRef = useRef(handler);
  const [subStatus, setSubStatus] = useState({ status: "pending", error: null });
  useEffect(() => {
    handlerRef.current = handler;
  });
  const key = spec === null || spec === undefined ? null : JSON.stringify(spec);
  useEffect(() => {
    if (key === null || !client) return undefined;
    const forward = (msg) => handlerRef.current(msg);
    return acquireSubscription(
      client,
      JSON.parse(key),
      key,
      forward,
      setSubStatus,
      entry.closeDelayMs,
    );
  }, [client, key, entry]);
  return subStatus;
}
