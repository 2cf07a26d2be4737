// An app's use of the package, compiled by sdk-wasm/test.sh with tsc (strict,
// skipLibCheck false, lib ES2023 + DOM). Every `@ts-expect-error` is a check that the
// types are precise: when a type loosens (e.g. `code` becomes `string`), tsc fails.
import init, {
  Client,
  WarrenError,
  isWarrenError,
  type ErrorCode,
  type StateEvent,
  type Delivery,
} from "warren-sdk";
import {
  initWarren,
  useSubscription,
  type WarrenDelivery,
  type WarrenProviderProps,
} from "warren-sdk/react";

// What init() resolves with is the wasm's exports, renamed by the build: opaque.
const initOutput = await init();
// @ts-expect-error: InitOutput lists no export names (`memory` is renamed at build time)
void initOutput.memory;
// The React bindings' init, with where the wasm is (as init({ module_or_path })).
await initWarren(new URL("warren_sdk_bg.wasm", import.meta.url));
await initWarren();

const client = new Client({ urls: ["ws://localhost:4000/ws"], connectTimeoutMs: 10_000 });

// Tokens from the app's backend, renewed by the SDK; getToken returns a promise of a string.
const renewing = new Client({
  urls: ["ws://localhost:4000/ws"],
  getToken: () => fetch("/api/warren-token").then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`)))),
});
void renewing;
// @ts-expect-error getToken must return a promise of a string, not a string
new Client({ urls: ["ws://localhost:4000/ws"], getToken: () => "plain" });

// client.url and StateEvent.url: the same type, string | null.
const url: string | null = client.url;
client.on("state", (e: StateEvent) => {
  const same: typeof url = e.url;
  void same;
});
const session: string | null = client.session;
const last: WarrenError | null = client.lastError;
void session;
void last;

client.on("error", (e) => {
  const code: ErrorCode = e.code;
  const retry: boolean = e.retry;
  const id: string | undefined = e.id;
  // The channel whose own stream a `session_expired` notice is about.
  const stream: string | undefined = e.code === "session_expired" ? e.stream : undefined;
  void code;
  void retry;
  void id;
  void stream;
});

// A request goes to the service alone: it has no distribution.
// @ts-expect-error: `distribution` is not part of a request
void client.writeAndWait({ channel: "tickets", distribution: { broadcast: true }, message: {} });
void client.write({ channel: "chat", distribution: { broadcast: true }, message: {} });

// exactOptionalPropertyTypes: an optional field the SDK reads as absent takes `undefined`.
const maybe: string | undefined = undefined;
const loose = new Client({
  urls: ["ws://localhost:4000/ws"],
  token: maybe,
  getToken: undefined,
  reconnect: { minDelayMs: undefined, maxDelayMs: 500 },
  connectTimeoutMs: undefined,
  channels: undefined,
});
void loose.write({ channel: "chat", subject: maybe, headers: undefined, distribution: { groups: undefined }, message: 1 });
void loose.writeAndWait({ channel: "tickets", subject: maybe, message: 1 }, { timeoutMs: undefined });
loose.subscribe({ channel: "chat", topic: maybe, groups: undefined }, () => {});
const providerProps: WarrenProviderProps = { options: undefined, client: undefined, closeDelayMs: undefined, fallback: undefined };
void providerProps;

// `using` (explicit resource management) disposes of the client at the end of the block,
// also under a lib without esnext.disposable (the package declares Symbol.dispose).
{
  using scoped = new Client({ urls: ["ws://localhost:4000/ws"] });
  void scoped.state;
}

try {
  await client.writeAndWait<{ id: number }>({ channel: "tickets", message: { op: "create" } });
} catch (e: unknown) {
  if (isWarrenError(e)) {
    if (e.code === "too_large" || e.code === "timeout") console.log(e.retry, e.id, e.message);
    // @ts-expect-error: not a registry code
    if (e.code === "no_such_code") console.log("unreachable");
  }
  if (e instanceof WarrenError) {
    const code: ErrorCode = e.code;
    void code;
  }
}

// @ts-expect-error: apps do not construct WarrenError
new WarrenError();

// @ts-expect-error: not a registry code
const wrong: ErrorCode = "nope";
void wrong;

// subscribe's onStatus: where the subscription stands, on every change.
const watched = client.subscribe({ channel: "chat" }, () => {}, (status, error) => {
  const known: "pending" | "active" | "error" = status;
  const why: ErrorCode | undefined = error?.code;
  void known;
  void why;
  // @ts-expect-error: not a subscription status
  void (status === "idle");
});
watched.unsubscribe();

// React: useSubscription is generic over the message type.
interface Chat {
  text: string;
}
export function useChat(onText: (text: string) => void) {
  return useSubscription<Chat>({ channel: "chat" }, (d) => onText(d.message.text));
}
// With no spec nothing is subscribed: the status says `idle` (a comparison with a
// status the type lacks would not compile).
export function useMaybeChat(on: boolean): boolean {
  return useSubscription<Chat>(on ? { channel: "chat" } : null, () => {}).status === "idle";
}
export function useChatLoose() {
  // @ts-expect-error: `d.message` is `Chat`, which has no `nope`
  return useSubscription<Chat>({ channel: "chat" }, (d) => d.message.nope);
}
const delivery: WarrenDelivery<Chat> | Delivery<Chat> | null = null;
void delivery;
// Topic events: the event name (optional: only events have one) and the full key.
export function useTicketEvents(onEvent: (name: string, key: string) => void) {
  return useSubscription({ channel: "tickets", topic: "ticket.*" }, (d) => {
    const name: string | undefined = d.event;
    onEvent(name ?? "", d.routingKey);
  });
}

// Disposal: close() releases everything; free() calls it.
client.close();
client.free();
