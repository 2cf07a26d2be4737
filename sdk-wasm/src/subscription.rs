//! Subscriptions: what the app asked to receive, the gateway bindings that serves, and
//! which subscription a delivery belongs to. Two subscriptions may share a binding (two
//! components listening to the same room): unsubscribing one unbinds only what no other
//! subscription still needs.

use warren_protocol::Subscribe;

use crate::id_map::IdMap;
use crate::text::concat;

/// What to receive on one channel (the JS `subscribe({ channel, groups?, direct?, topic? })`).
///
/// When none of `broadcast`, `groups`, `direct` and `topic` is given, the subscription
/// is to the channel's broadcast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Channel, e.g. `chat`.
    pub channel: String,
    /// Receive the channel's broadcast (default: only when nothing else is asked).
    pub broadcast: Option<bool>,
    /// Receive these groups' messages.
    pub groups: Vec<String>,
    /// Receive messages sent directly to this session's user.
    pub direct: bool,
    /// Receive events matching this AMQP topic pattern (`order.*`, `a.#`).
    pub topic: Option<String>,
}

/// One gateway binding of a channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Binding {
    /// `<channel>.all`.
    Broadcast,
    /// `<channel>.group.<g>`.
    Group(String),
    /// `<channel>.user.<this user>`.
    Direct,
    /// `<channel>.event.<pattern>`.
    Topic(String),
}

impl SubscribeOptions {
    /// The bindings this subscription needs.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut out = Vec::new();
        if self.wants_broadcast() {
            out.push(Binding::Broadcast);
        }
        out.extend(self.groups.iter().cloned().map(Binding::Group));
        if self.direct {
            out.push(Binding::Direct);
        }
        out.extend(self.topic.iter().cloned().map(Binding::Topic));
        out
    }

    /// Whether the broadcast is part of this subscription, applying the default (as
    /// `Subscribe::wants_broadcast`).
    fn wants_broadcast(&self) -> bool {
        self.broadcast
            .unwrap_or(self.groups.is_empty() && !self.direct && self.topic.is_none())
    }

    /// The `subscribe` frame body with frame id `id`.
    pub fn frame(&self, id: String) -> Subscribe {
        Subscribe {
            id,
            channel: self.channel.clone(),
            broadcast: self.broadcast,
            groups: self.groups.clone(),
            direct: self.direct,
            topic: self.topic.clone(),
        }
    }

    /// Whether a delivery with `routing_key` matches one of this subscription's bindings
    /// (`user` is this session's user id, for direct messages).
    ///
    /// The keys are those of `warren_protocol::amqp::keys` (`<channel>.all`,
    /// `<channel>.group.<g>`, `<channel>.user.<u>`, `<channel>.event.<p>`), compared
    /// piece by piece instead of formatted (no `core::fmt` in the wasm).
    pub fn matches(&self, routing_key: &str, user: &str) -> bool {
        let ch = self.channel.as_str();
        let rest = routing_key
            .strip_prefix(ch)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or_default();
        (rest == "all" && self.wants_broadcast())
            || rest
                .strip_prefix("group.")
                .is_some_and(|g| self.groups.iter().any(|x| x == g))
            || (self.direct && rest.strip_prefix("user.") == Some(user))
            || self
                .topic
                .as_ref()
                .is_some_and(|p| topic_matches(&concat(&[ch, ".event.", p]), routing_key))
    }
}

pub use warren_protocol::amqp::topic_matches;

/// The app's live subscriptions, by id.
#[derive(Debug, Default)]
pub struct Subscriptions {
    by_id: IdMap<SubscribeOptions>,
}

impl Subscriptions {
    /// Adds subscription `id`.
    pub fn insert(&mut self, id: u64, options: SubscribeOptions) {
        self.by_id.insert(id, options);
    }

    /// Forgets subscription `id` without computing what to unbind (the gateway refused
    /// it, so nothing is bound for it).
    pub fn forget(&mut self, id: u64) {
        self.by_id.remove(id);
    }

    /// Removes subscription `id`, returning the `unsubscribe` options that drop only the
    /// bindings no remaining subscription needs (`None` when nothing is to unbind).
    pub fn remove(&mut self, id: u64) -> Option<SubscribeOptions> {
        let gone = self.by_id.remove(id)?;
        // Whether another subscription of the channel still needs what `needs` names.
        // Asked per binding, without collecting the bindings: smaller in the wasm.
        let held = |needs: &dyn Fn(&SubscribeOptions) -> bool| {
            self.by_id
                .iter()
                .any(|(_, s)| s.channel == gone.channel && needs(s))
        };
        let mut out = SubscribeOptions {
            channel: gone.channel.clone(),
            broadcast: Some(gone.wants_broadcast() && !held(&|s| s.wants_broadcast())),
            direct: gone.direct && !held(&|s| s.direct),
            ..SubscribeOptions::default()
        };
        for g in &gone.groups {
            if !held(&|s| s.groups.contains(g)) {
                out.groups.push(g.clone());
            }
        }
        if let Some(t) = &gone.topic {
            if !held(&|s| s.topic.as_ref() == Some(t)) {
                out.topic = Some(t.clone());
            }
        }
        let any = out.broadcast == Some(true)
            || !out.groups.is_empty()
            || out.direct
            || out.topic.is_some();
        any.then_some(out)
    }

    /// Every subscription, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &SubscribeOptions)> {
        self.by_id.iter()
    }

    /// The subscriptions a delivery is for, each once, in creation order: those whose
    /// bindings match its routing key or one of its other `keys` (a message a service
    /// sent to several targets the session holds, e.g. a group and its user, arrives
    /// once, by one key, naming the others). None for a delivery of a binding no
    /// subscription needs any more (it was on its way when the app unsubscribed): it
    /// goes to no other subscription.
    pub fn targets(
        &self,
        channel: &str,
        routing_key: &str,
        keys: &[String],
        user: &str,
    ) -> Vec<u64> {
        self.iter()
            .filter(|(_, s)| {
                s.channel == channel
                    && (s.matches(routing_key, user) || keys.iter().any(|k| s.matches(k, user)))
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// Forgets every subscription.
    pub fn clear(&mut self) {
        self.by_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(channel: &str, groups: &[&str]) -> SubscribeOptions {
        SubscribeOptions {
            channel: channel.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..SubscribeOptions::default()
        }
    }

    #[test]
    fn topic_patterns_follow_amqp_wildcards() {
        assert!(topic_matches(
            "chat.event.order.*",
            "chat.event.order.created"
        ));
        assert!(!topic_matches("chat.event.order.*", "chat.event.order.a.b"));
        assert!(topic_matches("chat.event.#", "chat.event"));
        assert!(topic_matches("chat.event.#", "chat.event.a.b.c"));
        assert!(topic_matches("a.#.z", "a.z"));
        assert!(!topic_matches("a.b", "a.c"));
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*", "a"));
        assert!(!topic_matches("a", "a.b"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("a..b", "a..b"));
    }

    #[test]
    fn a_delivery_goes_to_the_subscription_whose_binding_matches() {
        let mut subs = Subscriptions::default();
        subs.insert(1, sub("chat", &[]));
        subs.insert(2, sub("chat", &["room-1"]));
        subs.insert(
            3,
            SubscribeOptions {
                direct: true,
                ..sub("chat", &[])
            },
        );
        assert_eq!(subs.targets("chat", "chat.all", &[], "u"), vec![1]);
        assert_eq!(subs.targets("chat", "chat.group.room-1", &[], "u"), vec![2]);
        assert_eq!(subs.targets("chat", "chat.user.u", &[], "u"), vec![3]);
        assert!(
            subs.targets("chat", "chat.group.room-9", &[], "u")
                .is_empty(),
            "a room no subscription holds reaches none (it reached every one)"
        );
        assert!(subs.targets("voice", "voice.all", &[], "u").is_empty());
    }

    #[test]
    fn matching_agrees_with_the_protocol_routing_keys() {
        use warren_protocol::amqp::keys;
        let s = SubscribeOptions {
            groups: vec!["room-1".into()],
            direct: true,
            topic: Some("order.*".into()),
            broadcast: Some(true),
            ..sub("chat", &[])
        };
        assert!(s.matches(&keys::broadcast("chat"), "u"));
        assert!(s.matches(&keys::group("chat", "room-1"), "u"));
        assert!(s.matches(&keys::user("chat", "u"), "u"));
        assert!(s.matches(&keys::event("chat", "order.created"), "u"));
        assert!(!s.matches(&keys::group("chat", "room-2"), "u"));
        assert!(!s.matches(&keys::user("chat", "v"), "u"));
        assert!(!s.matches(&keys::broadcast("chatter"), "u"));
        assert!(!s.matches(&keys::broadcast("voice"), "u"));
    }

    #[test]
    fn unsubscribing_keeps_bindings_another_subscription_still_needs() {
        let mut subs = Subscriptions::default();
        subs.insert(1, sub("chat", &["a", "b"]));
        subs.insert(2, sub("chat", &["b"]));
        let un = subs.remove(1).unwrap();
        assert_eq!(un.groups, vec!["a".to_string()]);
        assert_eq!(un.broadcast, Some(false));
        assert!(subs.remove(2).is_some());
        subs.insert(3, sub("chat", &[]));
        subs.insert(4, sub("chat", &[]));
        assert_eq!(subs.remove(3), None, "the broadcast is still needed by 4");
    }

    #[test]
    fn another_channels_identical_bindings_do_not_keep_a_binding() {
        let mut subs = Subscriptions::default();
        subs.insert(1, sub("chat", &["a"]));
        subs.insert(2, sub("voice", &["a"]));
        subs.insert(3, sub("chat", &[]));
        let un = subs.remove(1).unwrap();
        assert_eq!(un.channel, "chat");
        assert_eq!(
            un.groups,
            vec!["a".to_string()],
            "voice's `a` is not chat's"
        );
        assert_eq!(un.broadcast, Some(false), "3 still needs chat's broadcast");
    }
}
