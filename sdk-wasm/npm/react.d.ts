/**
 * React bindings for the Warren SDK (`warren-sdk/react`).
 *
 * ```tsx
 * import { WarrenProvider, useClient, useSubscription, useConnectionState } from "warren-sdk/react";
 *
 * <WarrenProvider options={{ urls: ["ws://localhost:4000/ws", "ws://localhost:5000/ws"], token: "ada" }}
 *                 fallback={<p>Loading…</p>}>
 * // or, with tokens from your backend (renewed before they expire):
 * const getToken = useCallback(() => fetch("/api/warren-token").then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`)))), []);
 * <WarrenProvider options={{ urls, getToken }}>
 *   <Chat />
 * </WarrenProvider>
 * ```
 *
 * Safe under `React.StrictMode`: one client per configuration and one SDK subscription
 * per spec, shared and reference-counted, closed shortly after the last user unmounts.
 */
/// <reference types="react" />
// `React` below is @types/react's global namespace, found through the app's type roots
// (node_modules/@types): an `import ... from "react"` would be resolved from this file's
// real folder, which has no node_modules when the package is installed as a link
// (`npm install ./sdk-wasm/pkg`), and the types would fail with TS2307.
import type { Client, Delivery, ErrorCode, InitInput } from "./warren_sdk.js";

/** The options `new Client(options)` takes. */
export type WarrenClientOptions = ConstructorParameters<typeof Client>[0];
/** What `client.subscribe(spec, handler)` takes as `spec`. */
export type WarrenSubscriptionSpec = Parameters<Client["subscribe"]>[0];
/** The handler `client.subscribe(spec, handler)` calls for each delivery. */
export type WarrenDeliveryHandler<M = unknown> = (delivery: Delivery<M>) => void;
/** One delivery as the SDK hands it to a subscription handler (`M`: the message type). */
export type WarrenDelivery<M = unknown> = Delivery<M>;

/**
 * Connection state as the hooks report it. `connecting | connected | disconnected` come
 * from the SDK's `state` event; `idle` (not mounted yet), `loading` (wasm initialising),
 * `failed` (the client could not be created) and `closed` (disposed) are added by the
 * bindings.
 */
export type WarrenConnectionState =
  | "idle"
  | "loading"
  | "connecting"
  | "connected"
  | "disconnected"
  | "failed"
  | "closed";

/** An error as the bindings record it. */
export interface WarrenErrorInfo {
  /** Registry code (`timeout`, `no_route`, `disconnected`, ...), or `drain` for a gateway's drain notice. */
  code: ErrorCode | "drain";
  /** Human-readable message. */
  message: string;
  /** When it happened (ms since the epoch). */
  at: number;
}

/** What `useConnectionState()` returns. */
export interface WarrenConnectionStatus {
  /** Current state. */
  state: WarrenConnectionState;
  /** The gateway in use, or the one tried next (as `client.url`): after a drop, the next URL. `null` until known. */
  url: string | null;
  /** How many times the client connected again after its first connection. */
  reconnects: number;
  /** The last error the client reported, if any. */
  lastError: WarrenErrorInfo | null;
  /** When `state` last changed (ms since the epoch), by the SDK's `state` event or the bindings (`loading`, `failed`, `closed`). */
  since: number;
}

/** Status of the client before children render, passed to a `fallback` function. */
export interface WarrenProviderStatus extends WarrenConnectionStatus {
  /** The client, once created. */
  client: Client | null;
}

/** Props of {@link WarrenProvider}. */
export interface WarrenProviderProps {
  /**
   * Options for `new Client(options)`. Providers with equal options (compared as JSON)
   * share one client, so an inline object literal is fine. `getToken` (passed through
   * to the client: called before every connection and ahead of expiry) is compared by
   * identity: keep it stable (module scope, `useCallback` or `useMemo`), since another
   * function means another client.
   */
  options?: WarrenClientOptions | undefined;
  /**
   * Use this client instead of creating one (from the first render); the provider
   * neither connects nor closes it.
   */
  client?: Client | undefined;
  /** How long an unused client is kept before it is closed; default 200 ms. */
  closeDelayMs?: number | undefined;
  /**
   * Rendered until the first client exists (wasm loading), and when a client could not
   * be created (`failed`). When `options` change, the children stay mounted with the
   * previous client until the new one exists: the fallback does not come back.
   */
  fallback?: React.ReactNode | ((status: WarrenProviderStatus) => React.ReactNode) | undefined;
  children?: React.ReactNode | undefined;
}

/**
 * Creates (or reuses) one client for `options`, connects it, and provides it to the
 * hooks below. Children render once the client exists; when `options` (or `client`)
 * change they stay mounted, with the previous client (kept open) until the new one
 * exists, which then replaces it (the previous one is closed).
 */
export declare function WarrenProvider(props: WarrenProviderProps): React.ReactNode;

/**
 * The provider's client.
 *
 * # Errors
 * Throws when used outside a `<WarrenProvider>`.
 */
export declare function useClient(): Client;

/**
 * Connection state, gateway URL, reconnect count and last error; re-renders on
 * every change.
 *
 * # Errors
 * Throws when used outside a `<WarrenProvider>`.
 */
export declare function useConnectionState(): WarrenConnectionStatus;

/** What `useSubscription()` returns. */
export interface WarrenSubscriptionStatus {
  /**
   * Where the subscription stands now (the SDK's `onStatus` of `client.subscribe`, on
   * every change, not only the first acknowledgement): `pending` while its subscribe
   * is on its way (before the first connection, from every drop of the connection until
   * the reconnect's resubscribe is acknowledged, and after `connect()` restarts a
   * stopped client; `onStatus` itself says nothing at a drop, only `pending` at the
   * resubscribe, so the hook turns `active` into `pending` while the client is not
   * `connected`), `active` once the gateway acknowledged it, `error` when the gateway
   * refused it (`forbidden`, `unknown_channel`, ...; also on a later reconnect, e.g.
   * when a new token no longer grants it; a retryable refusal such as `overloaded` is
   * tried again after the next reconnect) or the client stopped (`closed`,
   * `unauthorized` after close code 4501, `timeout` after `connectTimeoutMs`), and
   * `active` again once acknowledged after `connect()`; `idle` while `spec` is `null`
   * (nothing subscribed).
   */
  status: "idle" | "pending" | "active" | "error";
  /** Why it is `error` (`null` otherwise). */
  error: WarrenErrorInfo | null;
}

/**
 * Subscribes while the component is mounted and calls `handler` for each delivery;
 * `M` is the type of `delivery.message` (the SDK does not check it at run time).
 * `handler` may change on every render (the latest committed one is called, also for a
 * delivery right after a commit, before passive effects ran); `spec` is compared as
 * JSON; pass `null` to not subscribe.
 *
 * # Errors
 * Throws when used outside a `<WarrenProvider>`.
 */
export declare function useSubscription<M = unknown>(
  spec: WarrenSubscriptionSpec | null | undefined,
  handler: (delivery: WarrenDelivery<M>) => void,
): WarrenSubscriptionStatus;

/**
 * Initialises the wasm module once per page; later calls return the same promise,
 * whatever they pass (a failure lets the next call try again). The provider calls it
 * without an argument (the .wasm next to the module); where the wasm must be given
 * (Node, Vitest, a custom URL), call it first, before rendering the provider, and
 * instead of `init()`:
 *
 * ```ts
 * await initWarren(await readFile(new URL(import.meta.resolve("warren-sdk/warren_sdk_bg.wasm"))));
 * ```
 *
 * @param moduleOrPath Where the wasm is, as `init({ module_or_path })` takes it: a URL,
 * a `Response`, the bytes, a `WebAssembly.Module` (or a promise of one).
 */
export declare function initWarren(moduleOrPath?: InitInput | Promise<InitInput>): Promise<void>;
