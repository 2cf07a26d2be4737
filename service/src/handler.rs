//! What a service implements: a [`Handler`] gets each [`Incoming`] message with a
//! [`Context`] to publish to clients, and returns an [`Outcome`]: done, or a reply
//! (an answer or a refusal) that the library sends before acknowledging the message.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::Serialize;
use warren_protocol::amqp::{Names, H_ERROR, H_TENANT};
use warren_protocol::ErrorCode;

use crate::error::ServiceError;
use crate::incoming::Incoming;
use crate::publisher::{Outgoing, Publisher};
use crate::target::Targets;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The body and headers of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The reply message: JSON bytes.
    pub body: Bytes,
    /// String headers of the reply (`x-warren-error` for a refusal).
    pub headers: BTreeMap<String, String>,
}

impl Answer {
    /// An answer whose body is these JSON bytes, sent as they are.
    pub fn raw(body: impl Into<Bytes>) -> Self {
        Answer {
            body: body.into(),
            headers: BTreeMap::new(),
        }
    }

    /// An answer whose body is `value` serialised to JSON.
    ///
    /// # Errors
    /// When `value` cannot be serialised.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Answer::raw(serde_json::to_vec(value)?))
    }

    /// A refusal: header `x-warren-error` = the code's wire name and body
    /// `{"message": ...}`. The gateway turns it into an `error` frame.
    pub fn refusal(code: ErrorCode, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "message": message.into() });
        Answer::raw(body.to_string()).with_header(H_ERROR, code.as_str())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The refusal code, when this answer is a refusal.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.headers.get(H_ERROR).map(|c| ErrorCode::parse(c))
    }
}

/// What became of a message; the library acts on it, then acknowledges the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled; nothing to answer (for a request, no reply is sent: the client times
    /// out, so handlers should answer requests).
    Done,
    /// Send this answer to the requester (ignored, with a log line, when the message
    /// is not a request).
    Reply(Answer),
}

impl Outcome {
    /// A reply with `value` serialised to JSON.
    ///
    /// # Errors
    /// When `value` cannot be serialised.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Outcome::Reply(Answer::json(value)?))
    }

    /// A refusal with a registry code (usually `rejected` or `invalid`) and a reason.
    pub fn refuse(code: ErrorCode, message: impl Into<String>) -> Self {
        Outcome::Reply(Answer::refusal(code, message))
    }
}

/// Why a handler failed. Any error makes the library hand the message back to
/// RabbitMQ (nack with requeue) so it is tried again, until
/// [`ServiceConfig::max_attempts`](crate::ServiceConfig::max_attempts); then it is
/// dead-lettered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The library failed on the handler's behalf (e.g. publishing to clients).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The handler failed for its own reason; worth trying again.
    #[error("{0}")]
    Failed(String),
    /// The handler panicked.
    #[error("the handler panicked: {0}")]
    Panicked(String),
}

/// What a handler can use while handling a message.
#[derive(Debug, Clone)]
pub struct Context {
    publisher: Publisher,
    names: Names,
    /// The tenant of the message being handled (its `x-warren-tenant`), if any.
    tenant: Option<String>,
    /// The `message_id` of the message being handled, if it has one: what the
    /// handler publishes without an id of its own is numbered from it.
    origin: Option<String>,
    /// How many messages the handler published so far (without an id of their own).
    published: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Context {
    pub(crate) fn new(publisher: Publisher, names: Names) -> Self {
        Context {
            publisher,
            names,
            tenant: None,
            origin: None,
            published: Default::default(),
        }
    }

    /// This context while handling `message` (once; a fresh one for each attempt):
    /// what it publishes carries the message's tenant, and without an id of its own
    /// the `message_id` `<handled message_id>/<n>` (the n-th publish of the handler).
    pub(crate) fn for_message(&self, message: &Incoming) -> Self {
        Context {
            publisher: self.publisher.clone(),
            names: self.names.clone(),
            tenant: message.tenant().map(str::to_string),
            origin: message.message_id.clone(),
            published: Default::default(),
        }
    }

    /// The tenant of the message being handled (tenant mode: `x-warren-tenant`, set by
    /// the gateway from the sender's verified identity), if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// `message` with the handled message's tenant in `x-warren-tenant`, unless it
    /// names one already: in tenant mode the gateways deliver it only to that
    /// tenant's clients.
    fn confined(&self, message: &Outgoing) -> Option<Outgoing> {
        let tenant = self.tenant.as_ref()?;
        if message.headers.contains_key(H_TENANT) {
            return None;
        }
        Some(message.clone().with_header(H_TENANT, tenant.clone()))
    }

    /// The publisher, for messages to clients.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The AMQP names of this deployment.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Publishes `body` (JSON bytes) to `targets` in one publish and waits for the
    /// broker's confirm. Returns the `message_id` it carries. In tenant mode it carries
    /// the handled message's tenant, so only that tenant's clients receive it.
    ///
    /// Its `message_id` is `<handled message's message_id>/<n>` for the handler's n-th
    /// publish (from 0), or a fresh one when the handled message has none: a handler
    /// run again (a retry after an error, a redelivery to another worker after a
    /// crash) publishes the same ids, and clients drop the copies. A handler whose
    /// publishes differ from one attempt to the next sets its own ids
    /// ([`Context::send`] with [`Outgoing::with_message_id`]).
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish(
        &self,
        targets: &Targets,
        body: impl Into<bytes::Bytes>,
    ) -> Result<String, ServiceError> {
        self.send(&Outgoing::new(targets.clone(), body)).await
    }

    /// Publishes a fully described message and waits for the confirm; with the handled
    /// message's tenant in `x-warren-tenant` unless `message` names one, and without a
    /// `message_id` of its own one numbered from the handled message's
    /// ([`Context::publish`]).
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn send(&self, message: &Outgoing) -> Result<String, ServiceError> {
        let numbered = match (&message.message_id, &self.origin) {
            (None, Some(origin)) => {
                let n = self
                    .published
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(message.clone().with_message_id(format!("{origin}/{n}")))
            }
            _ => None,
        };
        let message = numbered.as_ref().unwrap_or(message);
        match self.confined(message) {
            Some(confined) => self.publisher.publish(&confined).await,
            None => self.publisher.publish(message).await,
        }
    }
}

/// A message handler. Implemented for every
/// `Fn(Context, Incoming) -> impl Future<Output = Result<Outcome, HandlerError>>`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. The message is acknowledged after the returned future
    /// resolves (and after the reply, if any, was confirmed by the broker).
    fn handle(
        &self,
        ctx: Context,
        message: Incoming,
    ) -> BoxFuture<'static, Result<Outcome, HandlerError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Context, Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        ctx: Context,
        message: Incoming,
    ) -> BoxFuture<'static, Result<Outcome, HandlerError>> {
        Box::pin(self(ctx, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_error_header_and_a_message_body() {
        let a = Answer::refusal(ErrorCode::Rejected, "no such ticket");
        assert_eq!(a.error_code(), Some(ErrorCode::Rejected));
        assert_eq!(a.headers.get(H_ERROR).map(String::as_str), Some("rejected"));
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["message"], "no such ticket");
    }

    #[test]
    fn a_raw_answer_keeps_its_bytes() {
        let a = Answer::raw(&b"{ \"x\" :1 }"[..]);
        assert_eq!(&a.body[..], b"{ \"x\" :1 }");
        assert_eq!(a.error_code(), None);
    }
}
