//! Demo `echo`: answers a request with the very bytes it carried (used by
//! benchmarks); plain publishes are acknowledged and ignored.

use crate::handler::{Answer, Context, HandlerError, Outcome};
use crate::incoming::Incoming;

/// The echo handler.
///
/// # Errors
/// Never; the signature is the handler's.
pub async fn echo(_ctx: Context, message: Incoming) -> Result<Outcome, HandlerError> {
    if message.is_request() {
        Ok(Outcome::Reply(Answer::raw(message.body)))
    } else {
        Ok(Outcome::Done)
    }
}
