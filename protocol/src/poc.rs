//! The proof-of-concept packet, accepted as-is so a POC client keeps working:
//!
//! ```json
//! { "distribution": { "broadcast": false, "multicast": ["a"], "direct": ["b"] },
//!   "channel": { "voice": true, "chat": false, "tickets": false },
//!   "packet_action": "publish", "publish_target": "exchange_name",
//!   "consume_target": [], "message": {} }
//! ```
//!
//! `publish` becomes a [`Publish`](crate::Publish) on every channel flagged `true`;
//! `consume` becomes a [`Subscribe`](crate::Subscribe) on them (`consume_target: []`
//! means everything of that channel). The packet has no `type` field; an optional `id`
//! (a Warren extension) is echoed in the answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::frame::{Distribution, Raw};

/// What the POC packet asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PocAction {
    /// Send `message` on the flagged channels.
    Publish,
    /// Receive the flagged channels.
    Consume,
}

/// The POC packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PocPacket<M = Raw> {
    /// Optional id echoed in `ack`/`error` (not part of the original POC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Targets: broadcast, multicast (groups) and direct (users).
    #[serde(default)]
    pub distribution: Distribution,
    /// Channel flags, e.g. `{"voice": true, "chat": false}`.
    pub channel: BTreeMap<String, bool>,
    /// `publish` or `consume`.
    pub packet_action: PocAction,
    /// Exchange the POC published to. A gateway publishes only to its inbound
    /// exchange: naming that one (or nothing) is accepted and recorded in a header,
    /// any other is refused with `unsupported`. Ignored by `consume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_target: Option<String>,
    /// Topics to consume; empty means the channel's broadcast, groups and direct
    /// messages (no topic events).
    #[serde(default)]
    pub consume_target: Vec<String>,
    /// The application message (required for `publish`): any JSON, `null` too
    /// (`None` only when the field is absent).
    #[serde(
        default = "Option::default",
        deserialize_with = "present",
        bound(deserialize = "M: Deserialize<'de>"),
        skip_serializing_if = "Option::is_none"
    )]
    pub message: Option<M>,
}

/// A field that is there, whatever its value: `null` is `M`'s `null`, not `None`
/// (serde's `Option` takes `null` for absent).
fn present<'de, D, M>(de: D) -> Result<Option<M>, D::Error>
where
    D: serde::Deserializer<'de>,
    M: Deserialize<'de>,
{
    M::deserialize(de).map(Some)
}

impl<M> PocPacket<M> {
    /// The channels flagged `true`, in name order.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channel
            .iter()
            .filter(|(_, on)| **on)
            .map(|(name, _)| name.as_str())
    }
}
