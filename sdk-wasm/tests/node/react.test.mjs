// warren-sdk/react as a Node app (or Vitest) uses it, imported by import.test.mjs before
// anything else initialises the wasm:
// - `initWarren(bytes)` initialises the wasm from what it is given, as
//   `init({ module_or_path })` does (before: it took no argument and fetched the .wasm
//   next to the module, which Node cannot, so the bindings were unusable there);
// - react.js starts with the "use client" directive (Next.js server components import it);
// - warren_sdk_bg.wasm.d.ts declares no export the module lacks (the build renames them).
// The package is installed as a link (file:../../pkg), so react.js would look for `react`
// from sdk-wasm/pkg: a resolve hook hands it this folder's `react` instead.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { register } from "node:module";

register(
  "data:text/javascript," +
    encodeURIComponent(`export async function resolve(spec, ctx, next) {
      return next(spec, spec === "react" ? { ...ctx, parentURL: ${JSON.stringify(import.meta.url)} } : ctx);
    }`),
);
const { initWarren } = await import("warren-sdk/react");
const { Client } = await import("warren-sdk");
const wasmUrl = new URL(import.meta.resolve("warren-sdk/warren_sdk_bg.wasm"));
const wasm = await readFile(wasmUrl);

// First, before any other init: what the wasm is initialised with is what is passed here.
const first = initWarren(wasm);
const initError = await first.then(
  () => null,
  (e) => e,
);

test("initWarren(bytes) initialises the wasm in Node, once: later calls share the promise", async () => {
  assert.equal(initError, null, `initWarren(bytes) failed: ${initError}`);
  assert.equal(initWarren(), first);
  assert.equal(initWarren(wasm), first);
  const client = new Client({ urls: ["ws://127.0.0.1:9/ws"] });
  assert.equal(client.state, "disconnected");
  client.close();
});

test('react.js begins with the "use client" directive', async () => {
  const js = await readFile(new URL(import.meta.resolve("warren-sdk/react")), "utf8");
  assert.match(js, /^\s*["']use client["'];/);
});

test("warren_sdk_bg.wasm.d.ts declares only exports the .wasm has", async () => {
  const dts = await readFile(new URL("warren_sdk_bg.wasm.d.ts", wasmUrl), "utf8");
  const exported = new Set(WebAssembly.Module.exports(new WebAssembly.Module(wasm)).map((e) => e.name));
  const declared = [...dts.matchAll(/^export (?:const|function|let|var) ([\w$]+)/gm)].map((m) => m[1]);
  const missing = declared.filter((n) => !exported.has(n));
  assert.deepEqual(missing, [], `declared but not exported: ${missing.join(", ")}`);
});

// ---------------------------------------------------------------------------------------
// The bindings' own logic against a stub client (no wasm, no gateway): react.js from the
// source folder, loaded as `react.js?stub`, sees a stub `./warren_sdk.js` whose Client the
// tests drive, and a stand-in for `react` that runs hooks without a renderer (this folder
// has `react` but no renderer). The stand-in renders synchronously: an update re-renders
// its component, then runs the effects whose dependencies changed.
// ---------------------------------------------------------------------------------------

/** The SDK's Client as react.js uses it: events, `connect()` settled by the test, subscriptions. */
class StubClient {
  static made = [];
  /** Thrown by the next constructor call (a client that cannot be created). */
  static failNext = null;
  constructor(options) {
    if (StubClient.failNext) {
      const err = StubClient.failNext;
      StubClient.failNext = null;
      throw err;
    }
    this.state = "disconnected";
    this.url = options.urls[0];
    this.listeners = new Map();
    this.subs = [];
    this.connecting = new Promise((resolve, reject) => (this.connectSettles = { resolve, reject }));
    StubClient.made.push(this);
  }
  on(event, f) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(f);
  }
  off(event, f) {
    this.listeners.get(event)?.delete(f);
  }
  emit(event, arg) {
    for (const f of this.listeners.get(event) ?? []) f(arg);
  }
  /** A `state` event, as the SDK emits it. */
  to(newState) {
    const oldState = this.state;
    this.state = newState;
    this.emit("state", { oldState, newState, url: this.url });
  }
  connect() {
    return this.connecting;
  }
  close() {}
  subscribe(spec, handler, onStatus) {
    const sub = { spec, handler, onStatus, unsubscribe() {} };
    this.subs.push(sub);
    return sub;
  }
}

const fakeReact = (() => {
  let current = null;
  const dirty = new Set();
  let flushing = false;
  const schedule = (c) => {
    dirty.add(c);
    if (flushing) return;
    flushing = true;
    try {
      for (const next of dirty) {
        dirty.delete(next);
        if (!next.dead) next.render();
      }
    } finally {
      flushing = false;
    }
  };
  const slot = (make) => {
    const c = current;
    const i = c.i++;
    if (!(i in c.hooks)) c.hooks[i] = make(c);
    return c.hooks[i];
  };
  const effect = (run, deps) => {
    const h = slot(() => ({}));
    if (!deps || !h.deps || deps.some((d, i) => !Object.is(d, h.deps[i]))) {
      h.deps = deps;
      h.run = run;
      current.effects.push(h);
    }
  };
  return {
    createContext: () => ({ Provider: "Provider" }),
    createElement: (type, props, ...children) => ({ type, props: { ...props, children } }),
    useContext: () => current.context,
    useRef: (value) => slot(() => ({ current: value })),
    useState: (init) => {
      const h = slot((c) => {
        const h = { value: typeof init == "function" ? init() : init };
        h.set = (v) => {
          v = typeof v == "function" ? v(h.value) : v;
          if (!Object.is(v, h.value)) (h.value = v), schedule(c);
        };
        return h;
      });
      return [h.value, h.set];
    },
    useEffect: effect,
    useInsertionEffect: effect,
    useSyncExternalStore: (subscribe, getSnapshot) => {
      const h = slot(() => ({}));
      if (h.subscribe !== subscribe) {
        h.cleanup?.();
        h.subscribe = subscribe;
        const c = current;
        h.cleanup = subscribe(() => schedule(c));
      }
      return getSnapshot();
    },
    /** A component rendering `fn`; `update()` renders it, `unmount()` runs its cleanups. */
    component(fn) {
      const c = { hooks: [], context: null, dead: false };
      c.render = () => {
        current = c;
        c.i = 0;
        c.effects = [];
        try {
          c.out = fn();
        } finally {
          current = null;
        }
        for (const h of c.effects) {
          if (typeof h.cleanup == "function") h.cleanup();
          h.cleanup = h.run();
        }
        c.rendered?.();
      };
      c.update = () => schedule(c);
      c.unmount = () => {
        c.dead = true;
        for (const h of c.hooks) if (typeof h.cleanup == "function") h.cleanup();
      };
      return c;
    },
  };
})();
globalThis.warrenTestStubs = { react: fakeReact, init: async () => {}, Client: StubClient };

const stubModule = (names) =>
  "data:text/javascript," +
  encodeURIComponent(`const s = globalThis.warrenTestStubs; ${names}`);
register(
  "data:text/javascript," +
    encodeURIComponent(`const stubs = {
      react: ${JSON.stringify(
        stubModule(
          "export const { createContext, createElement, useContext, useEffect, useInsertionEffect, useRef, useState, useSyncExternalStore } = s.react;",
        ),
      )},
      "./warren_sdk.js": ${JSON.stringify(stubModule("export default s.init; export const Client = s.Client;"))},
    };
    export async function resolve(spec, ctx, next) {
      return ctx.parentURL?.endsWith("react.js?stub") && stubs[spec]
        ? { url: stubs[spec], shortCircuit: true }
        : next(spec, ctx);
    }`),
);
const stubbed = await import(new URL("../../npm/react.js?stub", import.meta.url).href);

/**
 * Renders `hook` in a child of `<WarrenProvider {...props}>` (the child renders once the
 * provider provides a client, as its children do). `seen`: what every render of the
 * child returned; `fallbacks`: the status of every call to `fallback`.
 */
function mount(props, hook) {
  const seen = [];
  const fallbacks = [];
  const child = fakeReact.component(() => {
    const value = hook();
    seen.push(value);
    return value;
  });
  const provider = fakeReact.component(() =>
    stubbed.WarrenProvider({ closeDelayMs: 0, fallback: (status) => (fallbacks.push(status), null), ...props }),
  );
  provider.rendered = () => {
    const entry = provider.out?.type == "Provider" ? provider.out.props.value : null;
    if (entry && entry !== child.context) {
      child.context = entry;
      child.update();
    }
  };
  provider.update();
  return {
    seen,
    fallbacks,
    child,
    unmount() {
      child.unmount();
      provider.unmount();
    },
  };
}

/** Lets promises settle and timers of 0 ms run. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 5));

test("useConnectionState().since changes with every state, the bindings' own (loading, failed, closed) included", async () => {
  const realNow = Date.now;
  let t = 0;
  Date.now = () => (t += 1000);
  try {
    const m = mount({ options: { urls: ["ws://since.test/ws"] } }, () => stubbed.useConnectionState());
    await settle();
    StubClient.made.at(-1).to("connecting");
    StubClient.made.at(-1).to("connected");
    m.unmount();
    await settle();
    const log = [...m.fallbacks, ...m.seen, m.child.context.getSnapshot()];
    const changes = log.filter((s, i) => i == 0 || s.state != log[i - 1].state);
    assert.deepEqual(
      changes.map((s) => s.state),
      ["idle", "loading", "connecting", "connected", "closed"],
    );
    for (let i = 1; i < changes.length; i++) {
      assert.ok(changes[i].since > changes[i - 1].since, `since of ${changes[i].state} after ${changes[i - 1].state}`);
    }
    // The same state again is no change: `since` stays.
    const connecting = log.filter((s) => s.state == "connecting");
    assert.ok(connecting.every((s) => s.since == connecting[0].since));

    StubClient.failNext = new Error("no wasm here");
    const failed = mount({ options: { urls: ["ws://since-failed.test/ws"] } }, () => null);
    await settle();
    const [idle, loading, last] = [failed.fallbacks[0], failed.fallbacks[1], failed.fallbacks.at(-1)];
    assert.deepEqual([idle.state, loading.state, last.state], ["idle", "loading", "failed"]);
    assert.ok(idle.since < loading.since && loading.since < last.since);
    failed.unmount();
  } finally {
    Date.now = realNow;
  }
});

test("useSubscription says pending, not active, from a drop of the connection until the subscription is acknowledged again", async () => {
  const m = mount({ options: { urls: ["ws://drop.test/ws"] } }, () => ({
    connection: stubbed.useConnectionState().state,
    subscription: stubbed.useSubscription({ channel: "chat" }, () => {}).status,
  }));
  await settle();
  const client = StubClient.made.at(-1);
  const [sub] = client.subs;
  assert.deepEqual(m.seen.at(-1), { connection: "connecting", subscription: "pending" });
  client.to("connected");
  sub.onStatus("active");
  assert.deepEqual(m.seen.at(-1), { connection: "connected", subscription: "active" });
  // The connection drops: the SDK reports the state, and nothing for the subscription.
  client.to("connecting");
  assert.deepEqual(m.seen.at(-1), { connection: "connecting", subscription: "pending" });
  client.to("connected");
  sub.onStatus("pending");
  assert.deepEqual(m.seen.at(-1), { connection: "connected", subscription: "pending" });
  sub.onStatus("active");
  assert.deepEqual(m.seen.at(-1), { connection: "connected", subscription: "active" });
  m.unmount();
  await settle();
});

test("a give-up is recorded once: connect()'s rejection repeats the error event's error", async () => {
  const m = mount({ options: { urls: ["ws://give-up.test/ws"] } }, () => stubbed.useConnectionState().lastError);
  await settle();
  const client = StubClient.made.at(-1);
  // As the SDK does: an `error` event, then connect() rejects with an equal WarrenError.
  const giveUp = () => Object.assign(new Error("gave up after 100 ms (connectTimeoutMs); last: none"), { code: "timeout" });
  client.emit("error", giveUp());
  client.connectSettles.reject(giveUp());
  await settle();
  const recorded = [...new Set(m.seen.filter(Boolean))];
  assert.equal(recorded.length, 1);
  assert.equal(recorded[0].code, "timeout");
  m.unmount();

  // A rejection that no `error` event reported is recorded.
  const other = mount({ options: { urls: ["ws://reject.test/ws"] } }, () => stubbed.useConnectionState().lastError);
  await settle();
  StubClient.made.at(-1).connectSettles.reject(Object.assign(new Error("closed"), { code: "closed" }));
  await settle();
  assert.equal(other.seen.at(-1)?.code, "closed");
  other.unmount();
  await settle();
});
