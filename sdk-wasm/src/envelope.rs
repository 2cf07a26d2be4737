//! What the app writes: the JS envelope `{ channel, subject?, distribution?, headers?, message }`.
//! The core reads only `channel` and `subject`; the rest travels to the codec (in the
//! browser, the whole JS envelope object is the payload and `distribution`/`headers`
//! stay empty here).

use warren_protocol::{Distribution, Headers};

/// A message to send on a channel, with optional routing hints for the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<M> {
    /// Channel, e.g. `chat`.
    pub channel: String,
    /// Optional subject: routed with key `<channel>.<subject>`.
    pub subject: Option<String>,
    /// Who the service should relay this to.
    pub distribution: Option<Distribution>,
    /// Extra string headers passed to the service.
    pub headers: Headers,
    /// The application message.
    pub message: M,
}
