//! Who a message to clients goes to: the broadcast, groups, users or events of one
//! channel, turned into routing keys on `warren.out`. Several targets become ONE
//! publish: the first key is the routing key, the others go in the `CC` header
//! (RabbitMQ's sender-selected distribution), so a session bound to several of them
//! still receives the message once.

use lapin::types::{AMQPValue, FieldArray, LongString};
use warren_protocol::amqp::{keys, validate_segment, validate_short};
use warren_protocol::Distribution;

use crate::error::{Result, ServiceError};

/// The AMQP header that carries the extra routing keys of a sender-selected
/// distribution.
pub const CC_HEADER: &str = "CC";

/// The targets of one message on one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    channel: String,
    broadcast: bool,
    groups: Vec<String>,
    users: Vec<String>,
    events: Vec<String>,
}

impl Targets {
    /// No target yet on `channel`; add some with the `with_*` methods.
    pub fn on(channel: impl Into<String>) -> Self {
        Targets {
            channel: channel.into(),
            ..Targets::default()
        }
    }

    /// Whether the targets name users (direct messages).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Everyone subscribed to the broadcast of `channel` (`<channel>.all`).
    pub fn broadcast(channel: impl Into<String>) -> Self {
        Targets::on(channel).with_broadcast()
    }

    /// The members of one group (`<channel>.group.<g>`).
    pub fn group(channel: impl Into<String>, group: impl Into<String>) -> Self {
        Targets::on(channel).with_group(group)
    }

    /// The members of several groups, in one publish.
    pub fn groups<I, S>(channel: impl Into<String>, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        groups
            .into_iter()
            .fold(Targets::on(channel), Targets::with_group)
    }

    /// One user (`<channel>.user.<u>`).
    pub fn user(channel: impl Into<String>, user: impl Into<String>) -> Self {
        Targets::on(channel).with_user(user)
    }

    /// Several users, in one publish.
    pub fn users<I, S>(channel: impl Into<String>, users: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        users
            .into_iter()
            .fold(Targets::on(channel), Targets::with_user)
    }

    /// A topic event (`<channel>.event.<name>`): `name` is dotted, e.g.
    /// `ticket.created`; clients subscribed with a matching `topic` pattern
    /// (`ticket.*`, `#`, `*.created`) receive it, and the SDK hands them the last
    /// segment (`created`) as the event name.
    pub fn event(channel: impl Into<String>, name: impl Into<String>) -> Self {
        Targets::on(channel).with_event(name)
    }

    /// The targets a client named in its distribution (broadcast, groups, direct).
    pub fn from_distribution(channel: impl Into<String>, distribution: &Distribution) -> Self {
        let mut t = Targets::on(channel);
        t.broadcast = distribution.broadcast;
        t.groups = distribution.groups.clone();
        t.users = distribution.direct.clone();
        t
    }

    /// Adds the broadcast.
    pub fn with_broadcast(mut self) -> Self {
        self.broadcast = true;
        self
    }

    /// Adds a group.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Adds a user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.users.push(user.into());
        self
    }

    /// Adds an event (`<channel>.event.<name>`; `name` may be dotted).
    pub fn with_event(mut self, name: impl Into<String>) -> Self {
        self.events.push(name.into());
        self
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// True when no target is named.
    pub fn is_empty(&self) -> bool {
        !self.broadcast && self.groups.is_empty() && self.users.is_empty() && self.events.is_empty()
    }

    /// The routing keys on `warren.out`, without duplicates, broadcast first.
    ///
    /// # Errors
    /// [`ServiceError::NoTargets`] when none is named, [`ServiceError::InvalidTarget`]
    /// when the channel, a group, a user or an event name would change routing
    /// (dots, wildcards, spaces...), or a routing key would be longer than an AMQP
    /// short string (255 bytes: e.g. a 128-byte user on a 128-byte channel).
    pub fn routing_keys(&self) -> Result<Vec<String>> {
        validate_segment("channel", &self.channel)?;
        if self.is_empty() {
            return Err(ServiceError::NoTargets);
        }
        let keys = keys::outbound(
            &self.channel,
            self.broadcast,
            &self.groups,
            &self.users,
            &self.events,
        )?;
        for key in &keys {
            validate_short("routing key", key)?;
        }
        Ok(keys)
    }

    /// The routing key of the one publish and the `CC` header value carrying the
    /// others (`None` for a single target).
    ///
    /// # Errors
    /// As [`Targets::routing_keys`].
    pub fn routing(&self) -> Result<(String, Option<AMQPValue>)> {
        let mut keys = self.routing_keys()?;
        let first = keys.remove(0);
        Ok((first, cc_value(&keys)))
    }
}

/// The `CC` header value for extra routing keys: an array of long strings, or `None`
/// when there are none.
pub fn cc_value(extra_keys: &[String]) -> Option<AMQPValue> {
    if extra_keys.is_empty() {
        return None;
    }
    let array: Vec<AMQPValue> = extra_keys
        .iter()
        .map(|k| AMQPValue::LongString(LongString::from(k.as_str())))
        .collect();
    Some(AMQPValue::FieldArray(FieldArray::from(array)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc_keys(value: Option<AMQPValue>) -> Vec<String> {
        match value {
            None => vec![],
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|v| match v {
                    AMQPValue::LongString(s) => s.to_string(),
                    other => panic!("not a string: {other:?}"),
                })
                .collect(),
            Some(other) => panic!("not an array: {other:?}"),
        }
    }

    #[test]
    fn a_single_target_needs_no_cc_header() {
        let (key, cc) = Targets::broadcast("chat").routing().unwrap();
        assert_eq!(key, "chat.all");
        assert!(cc.is_none());
    }

    #[test]
    fn two_groups_become_one_routing_key_and_one_cc_entry() {
        let (key, cc) = Targets::groups("chat", ["a", "b"]).routing().unwrap();
        assert_eq!(key, "chat.group.a");
        assert_eq!(cc_keys(cc), vec!["chat.group.b".to_string()]);
    }

    #[test]
    fn a_distribution_maps_to_broadcast_group_and_user_keys_without_duplicates() {
        let d = Distribution {
            broadcast: true,
            groups: vec!["g1".into(), "g1".into()],
            direct: vec!["bob".into()],
        };
        let keys = Targets::from_distribution("chat", &d)
            .routing_keys()
            .unwrap();
        assert_eq!(keys, vec!["chat.all", "chat.group.g1", "chat.user.bob"]);
    }

    #[test]
    fn events_may_be_dotted() {
        let keys = Targets::event("tickets", "ticket.created")
            .routing_keys()
            .unwrap();
        assert_eq!(keys, vec!["tickets.event.ticket.created"]);
        assert!(matches!(
            Targets::event("tickets", "ticket.*").routing_keys(),
            Err(ServiceError::InvalidTarget(_))
        ));
    }

    #[test]
    fn names_that_would_change_routing_are_refused() {
        assert!(matches!(
            Targets::group("chat", "a.b").routing_keys(),
            Err(ServiceError::InvalidTarget(_))
        ));
        assert!(matches!(
            Targets::user("chat", "#").routing_keys(),
            Err(ServiceError::InvalidTarget(_))
        ));
        assert!(matches!(
            Targets::broadcast("ch*t").routing_keys(),
            Err(ServiceError::InvalidTarget(_))
        ));
    }

    #[test]
    fn a_routing_key_longer_than_an_amqp_short_string_is_refused() {
        let channel = "c".repeat(128);
        let user = "u".repeat(128);
        assert!(matches!(
            Targets::user(channel.as_str(), user.as_str()).routing_keys(),
            Err(ServiceError::InvalidTarget(_))
        ));
        assert!(Targets::user(channel.as_str(), "u".repeat(121))
            .routing_keys()
            .is_ok());
    }

    #[test]
    fn no_target_is_an_error() {
        assert!(matches!(
            Targets::on("chat").routing_keys(),
            Err(ServiceError::NoTargets)
        ));
    }
}
