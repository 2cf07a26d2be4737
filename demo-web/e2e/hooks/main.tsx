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
import { StrictMode, useEffect, useLayoutEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { WarrenProvider, useClient, useSubscription } from "warren-sdk/react";

type Page = {
  __token?: string;
  __client?: unknown;
  __statuses: string[];
  __received: { render: number; message: unknown }[];
  __bump?: () => void;
  __gate: { hold: boolean; queue: (() => void)[]; frames: string[]; sockets: WebSocket[]; release(): void };
};
const w = window as unknown as Page;
w.__statuses = [];
w.__received = [];

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

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
