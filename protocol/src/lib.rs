//! Warren's wire protocol (v1): the one contract between the browser SDK, the gateway
//! and backend services.
//!
//! # Layout
//!
//! - [`frame`]: every JSON frame of the WebSocket protocol, generic over the opaque
//!   application payload `M` (raw JSON bytes natively, a `JsValue` in the browser).
//! - [`poc`]: the proof-of-concept packet (`packet_action: publish | consume`), accepted
//!   as-is so POC clients keep working.
//! - [`codec`]: text ⇄ frame, in two passes so the payload is never parsed or
//!   re-serialised; decoding errors carry a registry code.
//! - [`registry`]: the one table of error codes and WebSocket close codes, each saying
//!   whether to retry and whether to reconnect.
//! - [`correlator`]: sans-IO request correlation with deadlines (time is passed in).
//! - [`auth`]: the auth worker's `client.auth` request and reply (gateway
//!   `auth.mode = "service"`).
//! - [`services`]: the service registry's announcement (`warren.services`).
//! - [`amqp`]: how Warren maps onto AMQP: exchange, queue and routing-key names and the
//!   headers the gateway and services exchange.
//! - [`tenants`]: the multi-tenant topology (root headers exchange, per-tenant
//!   exchanges, general and per-type queues) as plain data, declared alike by the
//!   gateway and the service library.
//!
//! This crate depends on serde only (no tokio, lapin or web-sys) and builds for the host
//! and for `wasm32-unknown-unknown`.

pub mod amqp;
pub mod auth;
pub mod codec;
pub mod correlator;
pub mod frame;
pub mod poc;
pub mod positions;
pub mod registry;
pub mod services;
pub mod tenants;

pub use codec::{decode_client, decode_server, encode, DecodeError};
pub use correlator::Correlator;
pub use frame::*;
pub use poc::{PocAction, PocPacket};
pub use positions::Positions;
pub use registry::{CloseCode, ErrorCode};

/// The WebSocket subprotocol every Warren connection negotiates.
pub const SUBPROTOCOL: &str = "warren.v1";

/// The protocol version carried in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
