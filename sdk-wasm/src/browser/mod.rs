//! The wasm-bindgen facade (compiled for `wasm32` only): the JS `Client` over the
//! browser `WebSocket`, `setTimeout` and promises. It holds no logic of its own.
//!
//! - [`client`]: the `Client` and `Subscription` classes and the action pump; the
//!   delivery object handlers get is built by `delivery.js` (with a topic event's name).
//! - [`socket`]: `WebSocket`, `setTimeout` and promise helpers (a small JS snippet), all
//!   reporting to one dispatch closure per client.
//! - [`codec`]: frames ⇄ text with the browser's `JSON` (no serde, no `serde_json` in
//!   the wasm).
//! - [`error`]: `WarrenError` instances (the class is `warren_error.js`, which the
//!   package entry re-exports with `isWarrenError`).
//! - [`object`]: typed reads and writes of plain JS objects.
//! - [`types`]: TypeScript declarations of options, envelopes and events.

pub mod client;
pub mod codec;
pub mod error;
pub mod object;
pub mod socket;
pub mod types;

pub use client::{Client, Subscription};
