//! Precise TypeScript types for the option, envelope and event objects, emitted into
//! the package's `.d.ts` next to the generated classes. Generic methods (`on`, `off`,
//! `writeAndWait`, `subscribe`) are declared here and merged into `class Client`.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** The connection state: `connecting` (opening, greeting or waiting to retry), `connected`, `disconnected`. */
export type ConnectionState = "connecting" | "connected" | "disconnected";

/**
 * Stable error codes from Warren's registry (`protocol/src/registry.rs`; a unit test of
 * the SDK fails when this list and the registry differ). `retry` on the error says
 * whether the same operation can succeed later. `unknown`: a code from a newer gateway.
 */
export type ErrorCode =
  | "malformed" | "unknown_type" | "invalid" | "too_large" | "unknown_channel"
  | "forbidden" | "unauthorized" | "auth_unavailable" | "no_route" | "no_service" | "timeout"
  | "broker_unavailable" | "overloaded" | "session_expired" | "rejected"
  | "unsupported" | "nacked" | "internal" | "disconnected" | "closed" | "unknown";

/**
 * Every promise rejection, every `error` event and every exception of the SDK is a
 * `WarrenError`: an `Error` with a registry `code`, `retry`, and the failed operation's
 * `id`. The SDK creates them; apps only test for them (`instanceof` or `isWarrenError`).
 */
export declare class WarrenError extends Error {
  private constructor();
  readonly name: "WarrenError";
  /** Registry code, stable across versions. */
  readonly code: ErrorCode;
  /** Whether retrying the same operation later can succeed (from the registry). */
  readonly retry: boolean;
  /** The frame id of the failed `write` / `writeAndWait` (absent for errors not tied to one). */
  readonly id?: string;
  /**
   * On a `session_expired` error event after a resume: the channel whose own stream
   * (`[channel_options]` with a retention of its own) no longer held what this session
   * missed there. Absent when the outbound stream's retention is the cause, and on
   * every other error. The message starts with how many positions were missed.
   */
  readonly stream?: string;
}

/** Whether `e` is a `WarrenError` (narrows `unknown` in a `catch`). */
export declare function isWarrenError(e: unknown): e is WarrenError;

/** Options of `new Client(...)`. */
export interface ClientOptions {
  /** Gateway WebSocket URLs (`ws://host:port/ws`), tried in order and rotated on failure. */
  urls: string[];
  /** Credential sent in `hello` (with the gateway's `auth.mode = "none"`, it is the user id). */
  token?: string;
  /**
   * Fetches a fresh token (e.g. a JWT from your backend). Called before the first
   * connection attempt, before every reconnect, and ahead of expiry: at 75 % of the
   * remaining lifetime of a token whose payload names its `exp`, the new token is sent
   * on the live connection (`refresh`), without reconnecting. A rejection is an `error`
   * event; the SDK tries again with the reconnect backoff. Used instead of `token`.
   */
  getToken?: () => Promise<string>;
  /**
   * Reconnection (and failed `getToken`) delays: full-jitter exponential backoff, retry n
   * waits min … min(max, min + base·2ⁿ) ms with base = max(minDelayMs, 100), so 0 still
   * backs off. Defaults: 250 ms / 10 000 ms.
   */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number };
  /** Deadline of `write` acks and default deadline of `writeAndWait`. Default: 10 000 ms. */
  requestTimeoutMs?: number;
  /**
   * How long `connect()` keeps trying the URL list before it gives up: the client stops,
   * and `connect()`, `ready()` and waiting writes reject with `timeout`. Default: never
   * (it keeps trying; each failed attempt is an `error` event naming the URL).
   */
  connectTimeoutMs?: number;
  /** Deadline of one attempt, from its start: `getToken` answers (when given), the socket opens and the gateway says `welcome`; then the next URL. Default: 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Channels this client may use (e.g. one client per channel port); others are refused
   *  locally with `unknown_channel`. Default: any. */
  channels?: string[];
  /** Most writes that may wait while disconnected; more are refused with `disconnected`. Default: 1000. */
  outboxLimit?: number;
}

/** Who the service should relay a message to. */
export interface Distribution {
  broadcast?: boolean;
  groups?: string[];
  direct?: string[];
}

/** A message to send on a channel. */
export interface Envelope<M = unknown> {
  /** Channel, e.g. `"chat"`. */
  channel: string;
  /** Optional subject: routed with key `<channel>.<subject>`. */
  subject?: string;
  /** Who the service should relay this to. */
  distribution?: Distribution;
  /** Extra string headers passed to the service. */
  headers?: Record<string, string>;
  /** The application message (any JSON value). */
  message: M;
}

/** Options of `writeAndWait`. */
export interface WaitOptions {
  /** How long to wait for the reply. Default: the client's `requestTimeoutMs`. */
  timeoutMs?: number;
}

/** What to receive on one channel. With none of `broadcast`, `groups`, `direct`, `topic`: the broadcast. */
export interface SubscribeOptions {
  channel: string;
  broadcast?: boolean;
  groups?: string[];
  /** Messages sent directly to this session's user. */
  direct?: boolean;
  /** Events matching this AMQP topic pattern (`order.*`, `a.#`). */
  topic?: string;
}

/** A message delivered to a subscription (duplicates already removed). */
export interface Delivery<M = unknown> {
  message: M;
  channel: string;
  /**
   * The full routing key, e.g. `tickets.event.ticket.created`. A message a service sent
   * to several targets this session receives (a group and the user, say) arrives once,
   * by one of their keys: it reaches every subscription of any of them, once each, all
   * with this same `routingKey` and `messageId`.
   */
  routingKey: string;
  /** For a topic event (`<channel>.event.<a>.<b>…`): its name, the key's last segment (`created`); `undefined` otherwise. */
  event?: string;
  /** Stable id: a redelivered message carries the same id. */
  messageId: string;
  headers: Record<string, string>;
  /** The broker delivered this message before (the SDK already dropped exact repeats). */
  redelivered: boolean;
}

/** The `state` event. */
export interface StateEvent {
  oldState: ConnectionState;
  newState: ConnectionState;
  /** The gateway URL being tried or used (same value as `client.url`). */
  url: string | null;
  /** The session id (once connected). */
  session: string | null;
  /** Whether the session was resumed; `false` on a fresh session (e.g. after `session_expired`). */
  resumed: boolean;
}

/** The `drain` event: the gateway is going away; the client already moves to the next URL. */
export interface DrainEvent {
  reason: string;
  deadlineMs: number | null;
}

/**
 * Where a subscription stands, as `subscribe`'s `onStatus` hears it on every change
 * (unlike `ready`, which settles once). It starts `pending`. `pending`: its `subscribe`
 * is on its way (the first time, again after every reconnect, and when `connect()`
 * restarts a stopped client). `active`: the gateway acknowledged it. `error` (with the
 * error): the gateway refused it (for good, e.g. `forbidden` when a new token no
 * longer grants it: nothing more is heard; or for now, e.g. `overloaded`: sent again
 * after the next reconnect), or the client stopped (`closed`, a close code that
 * forbids reconnecting, `connectTimeoutMs` passed).
 */
export type SubscriptionStatus = "pending" | "active" | "error";

/** Events of `client.on(...)`. */
export interface ClientEvents {
  state: StateEvent;
  error: WarrenError;
  drain: DrainEvent;
}

/* Merged into the generated `class Client`. */
export interface Client {
  /**
   * Sends a request and resolves with the service's reply message. Rejects with a
   * `WarrenError` whose `id` is the frame id: `too_large` at once (nothing sent),
   * `timeout` when `timeoutMs` passes (the pending entry is removed), `rejected` when
   * the service refused, `no_route`, `closed`, ...
   */
  writeAndWait<R = unknown, M = unknown>(envelope: Envelope<M>, options?: WaitOptions): Promise<R>;
  /**
   * Receives messages of a channel. The subscription survives reconnects (it is sent
   * again after every reconnect); `ready` resolves once the gateway acknowledged it the
   * first time; `onStatus`, when given, is called on every change of where it stands,
   * including after reconnects (see `SubscriptionStatus`); call `unsubscribe()` to stop.
   * `handler` gets the channel's messages its options match (a message to several
   * targets, once for each subscription that holds one of them; see `Delivery.routingKey`).
   */
  subscribe<M = unknown>(
    options: SubscribeOptions,
    handler: (delivery: Delivery<M>) => void,
    onStatus?: (status: SubscriptionStatus, error: WarrenError | null) => void,
  ): Subscription;
  /** Listens to `state`, `error` or `drain`. */
  on<K extends keyof ClientEvents>(event: K, handler: (event: ClientEvents[K]) => void): void;
  /** Removes a listener added with `on`. */
  off<K extends keyof ClientEvents>(event: K, handler: (event: ClientEvents[K]) => void): void;
}

/* Merged into the generated `class Subscription`. */
export interface Subscription {
  /**
   * Resolves once the gateway acknowledged the subscription (it is in force; deliveries
   * from then on reach the handler). Stays pending while the client is not connected.
   * Rejects with the gateway's refusal when retrying cannot help (`forbidden`,
   * `unknown_channel`, `invalid`, ...; the subscription is then dropped), with
   * `closed` when the client closes first, and with the stop's error when the client
   * stops trying (a close code that forbids reconnecting, `connectTimeoutMs` passed;
   * at once for a subscription made after that; the subscription still stands and
   * `connect()` sends it again). Never settles
   * after `unsubscribe()`. A
   * rejection nobody awaits is not reported as unhandled (the `error` event has it too).
   */
  readonly ready: Promise<void>;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// `ClientOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "ClientOptions")]
    pub type ClientOptions;

    /// `Envelope` in TypeScript.
    #[wasm_bindgen(typescript_type = "Envelope")]
    pub type EnvelopeJs;

    /// `SubscribeOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "SubscribeOptions")]
    pub type SubscribeOptionsJs;

    /// `WaitOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "WaitOptions")]
    pub type WaitOptionsJs;
}
