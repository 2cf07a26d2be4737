//! Warren's browser SDK: a sans-IO client core, compiled to WebAssembly under a thin
//! wasm-bindgen facade and shipped as the npm package `warren-sdk`.
//!
//! # Layout
//!
//! The core (plain Rust, runs and is unit-tested natively; time is passed in):
//!
//! - [`client`]: [`ClientCore`], the connection state machine. Inputs are the app's
//!   calls and the socket's events; outputs are [`Action`]s the driver performs.
//! - [`action`]: the actions and the public connection [`State`].
//! - [`config`]: [`Config`] and its defaults.
//! - [`deadlines`]: pending operations with deadlines (request correlation).
//! - [`backoff`]: full-jitter exponential backoff; [`rng`]: its seeded generator.
//! - [`id_map`]: a small sorted-`Vec` map (smaller wasm than `BTreeMap`).
//! - [`outbox`]: unanswered writes, re-sent in order with the same ids after reconnect;
//!   a write rejected for any reason (`too_large` before sending, an `error` frame, its
//!   deadline) leaves it.
//! - [`duplicate_filter`]: drops deliveries whose `message_id` was already seen.
//! - [`subscription`]: subscriptions, their bindings and delivery routing.
//! - [`envelope`]: what the app writes; [`error`]: [`ClientError`] (registry code,
//!   message, the failed operation's frame id); [`codec`]: text ⇄ frame, `serde_json`
//!   natively.
//! - [`text`]: strings and decimals built without `core::fmt` (wasm size).
//! - [`token`]: a token's `exp`, read to renew it ahead of time (`getToken`).
//!
//! The facade (`wasm32` only, module `browser`): the JS `Client` class over the
//! browser `WebSocket`, `setTimeout` and promises, with the browser's `JSON` as codec.
//! It holds no logic of its own: it feeds events into the core and performs its actions.
//!
//! Tests: unit tests beside each module (`client_tests.rs` drives the core like the
//! facade does, `client_fuzz_tests.rs` drives it with any input); `tests/browser.rs` runs in headless Chromium against a real stack and
//! `tests/node/` imports the built npm package; `test.sh` runs them all.

pub mod action;
pub mod backoff;
pub mod client;
pub mod codec;
pub mod config;
pub mod deadlines;
pub mod duplicate_filter;
pub mod envelope;
pub mod error;
pub mod id_map;
pub mod outbox;
pub mod rng;
pub mod subscription;
pub mod text;
pub mod token;

#[cfg(target_arch = "wasm32")]
pub mod browser;

// A 1 KB free-list allocator instead of std's dlmalloc (about 8 KB of wasm): the size
// budget of the package is 30 KB gzipped. It coalesces freed blocks.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
// SAFETY: without the `atomics` target feature the wasm module runs on one thread only.
static ALLOCATOR: lol_alloc::AssumeSingleThreaded<lol_alloc::FreeListAllocator> =
    unsafe { lol_alloc::AssumeSingleThreaded::new(lol_alloc::FreeListAllocator::new()) };

pub use action::{Action, State, StateChange};
pub use backoff::Backoff;
pub use client::ClientCore;
pub use codec::{Codec, JsonCodec};
pub use config::Config;
pub use envelope::Envelope;
pub use error::ClientError;
pub use subscription::SubscribeOptions;
