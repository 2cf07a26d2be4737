// A tiny page for the e2e tests of warren-sdk/react's useSubscription (e2e/hooks.mjs),
// built from the package as an app uses it. Query: `urls` (gateways), `spec` (JSON of
// the subscription). The token is whatever the test put in `window.__token` (getToken
// reads it before every connection). It exposes to the test:
//   __client     the provider's client (to call connect())
//   __statuses   every status the hook returned, in order, without repeats
//   __received   every delivery the handler got, with the render the handler is from
//   __bump()     renders again with a new handler (render number + 1)
//   __gate       holds the page's incoming WebSocket frames while `hold` is true;
//                `release()` hands them to the SDK, synchronously
// With `mode=keep`, a page for the provider's options change instead: a counter (state
// of its own) under a WarrenProvider whose options carry `token`, and
//   __setToken(t)  gives the provider new options (another token)
//   __clients      every client the counter was rendered with, in order
//   __fallbacks    how many times the provider's fallback was mounted
// With `mode=external`, the counter under a provider given a client the page made.
import { StrictMode, useEffect, useLayoutEffect, useMemo, useState } from "react";
import { createRoot } from "react-dom/client";
import { Client } from "warren-sdk";
import { WarrenProvider, initWarren, useClient, useSubscription } from "warren-sdk/react";

type Page = {
  __token?: string;
  __setToken?: (token: string) => void;
  __clients: unknown[];
  __fallbacks: number;
  __client?: unknown;
  __statuses: string[];
  __received: { render: number; message: unknown }[];
  __bump?: () => void;
  __gate: { hold: boolean; queue: (() => void)[]; frames: string[]; sockets: WebSocket[]; release(): void };
};
const w = window as unknown as Page;
w.__statuses = [];
w.__received = [];
w.__clients = [];
w.__fallbacks = 0;

// Every WebSocket of the page, with its `onmessage` behind the gate (the SDK sets
// `onmessage`; frames held while `hold` reach it in order on `release()`).
const gate: Page["__gate"] = {
  hold: false,
  queue: [],
  frames: [],
  sockets: [],
  release() {
    this.hold = false;
    for (const deliver of this.queue.splice(0)) deliver();
  },
};
w.__gate = gate;
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(url: string | URL, protocols?: string | string[]) {
    super(url, protocols);
    gate.sockets.push(this);
  }
  set onmessage(f: ((e: MessageEvent) => void) | null) {
    super.onmessage = f
      ? (e: MessageEvent) => {
          if (!gate.hold) return f.call(this, e);
          gate.frames.push(String(e.data));
          gate.queue.push(() => f.call(this, e));
        }
      : null;
  }
  get onmessage() {
    return super.onmessage;
  }
} as typeof WebSocket;

const query = new URLSearchParams(location.search);
const options = {
  urls: (query.get("urls") ?? "").split(","),
  getToken: async () => w.__token ?? "",
  reconnect: { minDelayMs: 50, maxDelayMs: 500 },
};
const spec = JSON.parse(query.get("spec") ?? '{"channel":"chat"}');

function Subscriber({ render }: { render: number }) {
  w.__client = useClient();
  // A new handler on every render, closing over this render's number.
  const sub = useSubscription(spec, (d) => {
    w.__received.push({ render, message: d.message });
  });
  const label = sub.status + (sub.error ? `:${sub.error.code}` : "");
  useEffect(() => {
    if (w.__statuses[w.__statuses.length - 1] !== label) w.__statuses.push(label);
  }, [label]);
  return (
    <p data-testid="sub" data-status={sub.status} data-code={sub.error?.code ?? ""} data-render={render}>
      {label}
    </p>
  );
}

// Rendered after the subscriber: its layout effect runs in the same commit, before any
// passive effect, and hands the held frames to the SDK there when `render` changed.
function Release({ render }: { render: number }) {
  useLayoutEffect(() => {
    if (render > 0) gate.release();
  }, [render]);
  return null;
}

function App() {
  const [render, setRender] = useState(0);
  useEffect(() => {
    w.__bump = () => setRender((r) => r + 1);
  }, []);
  return (
    <WarrenProvider options={options} fallback={<p>loading</p>}>
      <Subscriber render={render} />
      <Release render={render} />
    </WarrenProvider>
  );
}

function Counter() {
  const client = useClient();
  const [count, setCount] = useState(0);
  useEffect(() => {
    w.__client = client;
    if (!w.__clients.includes(client)) w.__clients.push(client);
  }, [client]);
  return (
    <button data-testid="counter" data-count={count} onClick={() => setCount((c) => c + 1)}>
      {count}
    </button>
  );
}

function Fallback() {
  useEffect(() => {
    w.__fallbacks++;
  }, []);
  return <p data-testid="fallback">loading</p>;
}

function KeepApp() {
  const [token, setToken] = useState(w.__token ?? "");
  useEffect(() => {
    w.__setToken = setToken;
  }, []);
  const keepOptions = useMemo(
    () => ({ urls: options.urls, token, reconnect: options.reconnect }),
    [token],
  );
  return (
    <WarrenProvider options={keepOptions} fallback={<Fallback />}>
      <Counter />
    </WarrenProvider>
  );
}

const mode = query.get("mode");
let external: Client | null = null;
if (mode === "external") {
  await initWarren();
  external = new Client({ urls: options.urls, token: w.__token ?? "" });
  void external.connect();
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    {mode === "keep" ? (
      <KeepApp />
    ) : external ? (
      <WarrenProvider client={external} fallback={<Fallback />}>
        <Counter />
      </WarrenProvider>
    ) : (
      <App />
    )}
  </StrictMode>,
);
