//! Demo `voice`: relays signalling messages (`call`, `ring`, `answer`, `hangup`...,
//! opaque to the service) to the users named as direct targets, in one publish. A
//! message naming no direct target is dropped (a request is refused with `invalid`).

use serde_json::json;
use tracing::warn;
use warren_protocol::ErrorCode;

use crate::handler::{Context, HandlerError, Outcome};
use crate::incoming::Incoming;
use crate::publisher::Outgoing;
use crate::target::Targets;

/// The voice handler.
///
/// # Errors
/// When the relay cannot be published (the message is then handed back and retried).
pub async fn relay(ctx: Context, message: Incoming) -> Result<Outcome, HandlerError> {
    let is_request = message.is_request();
    let targets = Targets::users(
        message.channel.as_str(),
        message.distribution.direct.clone(),
    );
    let refuse = |why: String| {
        warn!(reason = %why, "voice message dropped");
        Ok(if is_request {
            Outcome::refuse(ErrorCode::Invalid, why)
        } else {
            Outcome::Done
        })
    };
    if targets.is_empty() {
        return refuse("voice messages need direct targets".into());
    }
    let keys = match targets.routing_keys() {
        Ok(keys) => keys,
        Err(e) => return refuse(e.to_string()),
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
