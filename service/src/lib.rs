//! The Warren service library: what a backend service needs to serve browser clients
//! through RabbitMQ — consume a channel's `IN_<CHANNEL>` queue, reply to requests,
//! publish to clients by broadcast, group or user — plus the demo service.
//!
//! # Layout
//!
//! - [`service`]: [`Service`]: `consume(channel, handler)` per channel,
//!   `consume_queues(queues, handler)` by priority over an ordered list; graceful
//!   `stop`; its state (running, reconnecting, failed, stopped).
//! - [`link`]: the link to RabbitMQ: one connection at a time from a list of URIs,
//!   watched, re-established with backoff, exchanges re-declared.
//! - [`handler`]: the [`Handler`] trait (any async `Fn(Context, Incoming)`), the
//!   [`Outcome`] it returns ([`Answer`] or refusal) and [`HandlerError`].
//! - [`incoming`]: [`Incoming`], a received message: sender and distribution from the
//!   `x-warren-*` headers, request addressing, the raw JSON bytes.
//! - [`publisher`]: [`Publisher`] and [`Outgoing`]: publish to clients (one publish
//!   with `CC` for many targets), reply through the default exchange; confirms.
//! - [`target`]: [`Targets`] — broadcast, groups, users, events → routing keys + `CC`.
//! - [`duplicate_window`]: [`DuplicateWindow`], suppression of duplicates by
//!   `message_id` (time- and count-bounded, sans-IO).
//! - [`consumer`]: the consume loop: duplicates, handler, reply, ack; retries and
//!   dead-lettering.
//! - [`ladder`]: [`Ladder`], the sans-IO core of priority consumption: which queues of
//!   an ordered list to consume, which delivery to handle next.
//! - [`priority`]: the IO loop of [`Service::consume_queues`] around the ladder.
//! - `announce`: the instance's announcements on `warren.services` (the service
//!   registry gateways answer `no_service` from).
//! - `returns`: the returns queue where gateways report messages to users that
//!   none of them received ([`Service::undelivered`]).
//! - [`short_string`]: AMQP short strings (ids, tags, names) built from outside data
//!   without panicking on more than 255 bytes.
//! - [`topology`]: idempotent declarations of what a service consumes.
//! - [`config`]: [`ServiceConfig`] and its defaults.
//! - [`error`]: the error type, [`ServiceError`].
//! - [`demo`]: the demo service (chat, tickets, voice, echo), run by the
//!   `warren-demo-service` binary and in-process by tests.
//!
//! # Example
//!
//! ```no_run
//! use warren_protocol::amqp::Names;
//! use warren_service::{Context, HandlerError, Incoming, Outcome, Outgoing, Service, Targets};
//!
//! # async fn run() -> Result<(), warren_service::ServiceError> {
//! let service = Service::connect("amqp://127.0.0.1:5672/%2f", Names::default()).await?;
//! // Relay every chat message to whoever its sender named, in one publish.
//! service
//!     .consume("chat", |ctx: Context, msg: Incoming| async move {
//!         let targets = Targets::from_distribution(msg.channel.as_str(), &msg.distribution);
//!         ctx.send(&Outgoing::relay(msg, targets)).await?;
//!         Ok::<_, HandlerError>(Outcome::Done)
//!     })
//!     .await?;
//! // Answer requests on `tickets`.
//! service
//!     .consume("tickets", |_ctx: Context, msg: Incoming| async move {
//!         if msg.body.is_empty() {
//!             return Ok(Outcome::refuse(warren_protocol::ErrorCode::Invalid, "empty"));
//!         }
//!         Ok::<_, HandlerError>(Outcome::json(&serde_json::json!({ "ok": true })).unwrap())
//!     })
//!     .await?;
//! service.closed().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery semantics
//!
//! At least once from RabbitMQ, effectively once for the handler: a message is
//! acknowledged only after the handler returned and its reply was confirmed; a
//! redelivered or re-sent message whose `message_id` was handled within the window is
//! acknowledged without calling the handler again, and a request gets its remembered
//! reply again. A handler error hands the message back (nack with requeue, after a
//! backoff) until `max_attempts`, then it is published to `warren.dead` and a request
//! is refused with `internal` (on the queue of [`Service::authenticate`], whose
//! requests carry clients' tokens, it is dropped instead).
//!
//! No message content makes the library panic. Ids it derives or builds that would
//! pass AMQP's 255-byte short strings (a relay's or an event's `message_id`, a
//! consumer tag) are shortened deterministically ([`short_string::fitted`]); a request
//! whose correlation id is longer (possible only through the `x-warren-request-id`
//! header) cannot be answered, so it is parked in `warren.dead` unhandled.
//!
//! # Broker loss
//!
//! A service is given one AMQP URI or several (the nodes of a cluster). When its
//! connection dies (or the broker keeps it blocked), it reconnects to the next URI
//! with backoff, declares the exchanges and its `IN_<CHANNEL>` queues again and
//! consumes again, keeping its duplicate window. Meanwhile publishes wait (at most
//! `publish_timeout`), and a publish whose confirm was lost with the connection is
//! published again with the same `message_id`; past the timeout it fails with
//! [`ServiceError::BrokerUnavailable`] — never silently.

mod announce;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod duplicate_window;
pub mod error;
pub mod handler;
pub mod incoming;
pub mod ladder;
pub mod link;
pub mod priority;
pub mod publisher;
mod returns;
pub mod service;
pub mod short_string;
pub mod target;
pub mod topology;

pub use config::ServiceConfig;
pub use duplicate_window::DuplicateWindow;
pub use error::{Result, ServiceError};
pub use handler::{Answer, Context, Handler, HandlerError, Outcome};
pub use incoming::Incoming;
pub use ladder::Ladder;
pub use link::split_uris;
pub use publisher::{Outgoing, Publisher};
pub use service::{Service, ServiceState};
pub use target::Targets;
