//! Fault injection for tests (feature `fault-injection`): delays named by environment
//! variables, read where the fault applies. Builds without the feature have none.

use std::time::Duration;

/// [`crate::hub::Reader::open`] takes this many milliseconds longer.
pub const READER_OPEN_DELAY_MS: &str = "WARREN_FAULT_READER_OPEN_DELAY_MS";

/// The outbound stream's hub reader takes this many milliseconds longer over each
/// message it reads (so the hub lags the stream).
pub const HUB_READ_DELAY_MS: &str = "WARREN_FAULT_HUB_READ_DELAY_MS";

/// A stream's hub reader, starting again after its consumer ended, waits this many
/// milliseconds before it looks at the stream.
pub const HUB_RESTART_DELAY_MS: &str = "WARREN_FAULT_HUB_RESTART_DELAY_MS";

/// A `hello` that opens a new session with subscriptions waits this many milliseconds
/// after joining the streams, before its subscriptions are applied.
pub const HELLO_SUBSCRIPTIONS_DELAY_MS: &str = "WARREN_FAULT_HELLO_SUBSCRIPTIONS_DELAY_MS";

/// The gateway acts on RabbitMQ's `connection.blocked` this many milliseconds after
/// lapin received it (so publishes meet a connection lapin already holds).
pub const BLOCKED_NOTICE_DELAY_MS: &str = "WARREN_FAULT_BLOCKED_NOTICE_DELAY_MS";

/// A client publish's confirm is taken this many milliseconds late (as under a
/// resource alarm, RabbitMQ holding confirms back).
pub const CONFIRM_DELAY_MS: &str = "WARREN_FAULT_CONFIRM_DELAY_MS";

/// Sleeps for the milliseconds environment variable `var` holds, if any.
pub async fn delay(var: &str) {
    if let Some(ms) = std::env::var(var).ok().and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
