//! The service registry's announcement: what a service instance publishes on the
//! `warren.services` fanout exchange so gateways know who can answer on which
//! channel (the source system's `kite.join` / `kite.leave`).
//!
//! An instance publishes a `join` at start (and whenever the channels it consumes
//! change), a `heartbeat` every `interval_ms`, and a `leave` on a clean stop, each as
//! a JSON [`Announcement`] with the routing key `service.<event>`. A gateway counts
//! the instance as live from its first announcement until its `leave`, or until
//! [`MISSED_HEARTBEATS`] intervals passed without one. Any AMQP client can announce
//! (see PROTOCOL.md, "Service registry"). [`Undelivered`] is the gateways' report of
//! a message to users none of whom has a session.

use serde::{Deserialize, Serialize};

/// Heartbeat intervals an instance may miss before gateways count it as gone.
pub const MISSED_HEARTBEATS: u64 = 3;

/// What an announcement says about its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnounceEvent {
    /// The instance started, or changed the channels it consumes.
    Join,
    /// The instance is still there.
    Heartbeat,
    /// The instance stops: count it as gone now.
    Leave,
}

impl AnnounceEvent {
    /// The routing key of an announcement: `service.join`, `service.heartbeat`,
    /// `service.leave`.
    pub fn routing_key(self) -> &'static str {
        match self {
            AnnounceEvent::Join => "service.join",
            AnnounceEvent::Heartbeat => "service.heartbeat",
            AnnounceEvent::Leave => "service.leave",
        }
    }
}

/// One announcement of a service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// `join`, `heartbeat` or `leave`.
    pub event: AnnounceEvent,
    /// The service's name (its `app_id`), e.g. `demo-service`.
    pub name: String,
    /// This instance, unique among running instances (e.g. `<name>-<uuid>`).
    pub instance: String,
    /// The channels whose `IN_<CHANNEL>` queue the instance consumes.
    #[serde(default)]
    pub channels: Vec<String>,
    /// The queues the instance consumes, when it names them: then it answers only
    /// for those (a tenant's `IN_<CHANNEL>.<tenant>[.<type>]`, for one), not for every
    /// queue of its channels. Absent (older libraries, hand-written announcements):
    /// the channels alone say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// The service's version, free text.
    #[serde(default)]
    pub version: String,
    /// The period of the instance's heartbeats, in ms.
    pub interval_ms: u64,
}

impl Announcement {
    /// How long after this announcement the instance counts as gone without another
    /// one: [`MISSED_HEARTBEATS`] intervals (at least one second).
    pub fn lifetime_ms(&self) -> u64 {
        self.interval_ms
            .saturating_mul(MISSED_HEARTBEATS)
            .max(1_000)
    }
}

/// A gateway's report that a message to users reached none of them: no session of
/// those users anywhere. Sent to the message's `reply_to` (the service library's
/// returns queue) through the default exchange, `correlation_id` = the message's
/// `message_id`, header [`H_UNDELIVERED`](crate::amqp::H_UNDELIVERED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undelivered {
    /// Always `true` (tells the report from other messages).
    pub undelivered: bool,
    /// The message's `message_id`.
    #[serde(default)]
    pub message_id: Option<String>,
    /// The addressed users that have no session.
    pub users: Vec<String>,
    /// The message's routing keys to users.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The message's position in the outbound stream.
    #[serde(default)]
    pub position: Option<u64>,
    /// The gateway that reported it.
    #[serde(default)]
    pub node: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_reads_and_writes_the_documented_json() {
        let text = r#"{"event":"join","name":"tickets","instance":"tickets-1",
            "channels":["tickets"],"version":"1.2.0","interval_ms":2000}"#;
        let a: Announcement = serde_json::from_str(text).unwrap();
        assert_eq!(a.event, AnnounceEvent::Join);
        assert_eq!(a.channels, ["tickets"]);
        assert_eq!(a.lifetime_ms(), 6_000);
        assert_eq!(a.event.routing_key(), "service.join");
        let back: Announcement = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        // A minimal announcement from another language.
        let min: Announcement = serde_json::from_str(
            r#"{"event":"leave","name":"x","instance":"x-1","interval_ms":0}"#,
        )
        .unwrap();
        assert!(min.channels.is_empty());
        assert_eq!(min.lifetime_ms(), 1_000);
    }
}
