//! Demo `chat`: relays a client's publish, byte for byte, to the broadcast or the
//! groups / users it names in its distribution — ONE publish, with `CC` when there
//! are several targets — with the sender in headers. No distribution means broadcast.
//! A request gets `{"relayed_to": [keys], "message_id": id}` back.

use serde_json::json;
use tracing::warn;
use warren_protocol::ErrorCode;

use crate::handler::{Context, HandlerError, Outcome};
use crate::incoming::Incoming;
use crate::publisher::Outgoing;
use crate::target::Targets;

/// The chat handler.
///
/// # Errors
/// When the relay cannot be published (the message is then handed back and retried).
pub async fn relay(ctx: Context, message: Incoming) -> Result<Outcome, HandlerError> {
    let targets = if message.distribution.is_empty() {
        Targets::broadcast(message.channel.as_str())
    } else {
        Targets::from_distribution(message.channel.as_str(), &message.distribution)
    };
    let is_request = message.is_request();
    let keys = match targets.routing_keys() {
        Ok(keys) => keys,
        Err(e) => {
            warn!(error = %e, "chat message with unusable targets dropped");
            return Ok(if is_request {
                Outcome::refuse(ErrorCode::Invalid, e.to_string())
            } else {
                Outcome::Done
            });
        }
    };
    let message_id = ctx.send(&Outgoing::relay(message, targets)).await?;
    if is_request {
        Ok(
            Outcome::json(&json!({ "relayed_to": keys, "message_id": message_id }))
                .map_err(|e| HandlerError::Failed(e.to_string()))?,
        )
    } else {
        Ok(Outcome::Done)
    }
}
