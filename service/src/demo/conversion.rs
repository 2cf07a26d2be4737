//! Demo priority worker (`warren-demo-service --queue-priority "a b c"`): takes
//! messages from an ordered list of work queues, highest-priority non-empty queue
//! first ([`Service::consume_queues`](crate::Service::consume_queues)), logs each, and
//! answers a request with the queue it came from, its tenant (tenant mode) and its
//! size.

use serde_json::json;
use tracing::info;

use crate::handler::{Context, HandlerError, Outcome};
use crate::incoming::Incoming;

/// The conversion handler: logs the message; a request gets
/// `{"queue": "<queue>", "tenant": "<tenant>"|null, "bytes": <size>}`.
///
/// # Errors
/// Never; the signature is the handler's.
pub async fn convert(_ctx: Context, message: Incoming) -> Result<Outcome, HandlerError> {
    info!(
        queue = %message.queue,
        tenant = message.tenant().unwrap_or(""),
        message_id = message.message_id.as_deref().unwrap_or(""),
        bytes = message.body.len(),
        "converted"
    );
    if message.is_request() {
        Outcome::json(&json!({
            "queue": message.queue,
            "tenant": message.tenant(),
            "bytes": message.body.len()
        }))
        .map_err(|e| HandlerError::Failed(e.to_string()))
    } else {
        Ok(Outcome::Done)
    }
}
