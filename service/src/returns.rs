//! The service's returns queue: gateways report there the messages to users that none
//! of their users received (no session anywhere); the service hands each report to
//! whoever listens on [`Service::undelivered`](crate::Service::undelivered).
//!
//! The queue (`<ns>.warren.returns.<instance>`) is the `reply_to` of every message the
//! service publishes to users. It outlives a reconnect (it expires 10 minutes after
//! its consumer is gone), so reports in flight across a broker loss are not lost.
//!
//! Reports are at least once (a gateway that starts may report again a message of
//! the stream's last chunk, read as it starts): a report of a message reported
//! already (by `message_id`, the last [`REPORTS_REMEMBERED`] within
//! [`REPORTS_REMEMBERED_FOR`]) is not handed on again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};
use warren_protocol::services::Undelivered;

use crate::duplicate_window::{DuplicateWindow, Seen};
use crate::link::Link;
use crate::short_string::{exact, fitted};

/// How long the returns queue lives without a consumer.
const RETURNS_EXPIRE_MS: i64 = 600_000;

/// Reported messages remembered, so that a report of one of them again is dropped.
pub(crate) const REPORTS_REMEMBERED: usize = 10_000;
/// How long a reported message is remembered.
pub(crate) const REPORTS_REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// The returns queue name of `instance` under `prefix` (the namespace prefix).
pub(crate) fn queue_name(prefix: &str, instance: &str) -> String {
    // The instance id starts with the configured `app_id`: shortened past 255 bytes,
    // the same way for the declaration and the `reply_to` of messages to users.
    fitted(&format!("{prefix}warren.returns.{instance}")).to_string()
}

/// Consumes `queue` (declaring it again after every reconnect) and sends each report
/// to `out`, until `stop` turns true.
pub(crate) async fn run(
    link: Arc<Link>,
    queue: String,
    out: broadcast::Sender<Undelivered>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported = DuplicateWindow::new(REPORTS_REMEMBERED_FOR, REPORTS_REMEMBERED);
    loop {
        let consume = async {
            let epoch = link.up(0, None).await?;
            let ch = epoch.connection.create_channel().await?;
            let mut args = FieldTable::default();
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(RETURNS_EXPIRE_MS),
            );
            let name = exact("queue name", &queue)?;
            ch.queue_declare(
                name.clone(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
            let mut consumer = ch
                .basic_consume(
                    name,
                    ShortString::from(""),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            while let Some(Ok(d)) = consumer.next().await {
                match serde_json::from_slice::<Undelivered>(&d.data) {
                    Ok(report) => {
                        if let Some(id) = report.message_id.as_deref() {
                            let now = std::time::Instant::now();
                            if !matches!(reported.begin(id, now), Seen::New { .. }) {
                                debug!(message_id = id, "reported already; ignored");
                                continue;
                            }
                            reported.finish(id, None, now);
                        }
                        warn!(users = ?report.users, message_id = ?report.message_id, "a message to users reached none of them");
                        let _ = out.send(report);
                    }
                    Err(e) => debug!(error = %e, "not an undelivered report; ignored"),
                }
            }
            Ok::<(), crate::ServiceError>(())
        };
        tokio::select! {
            res = consume => {
                if let Err(e) = res {
                    debug!(error = %e, "returns queue consumer stopped; starting again");
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
