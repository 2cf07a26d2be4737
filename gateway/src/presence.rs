//! Presence that survives crashes: which sessions are online, on which gateway, with
//! which subscriptions — kept by every gateway from the presence events on
//! `warren.presence`, the takeover requests and the gateway announcements on
//! `warren.gateways` — and the decision of who publishes a session's
//! `client.disconnected`, so that one gateway publishes it, once:
//!
//! - a client that closes its WebSocket (a close frame, not after a `drain`): its
//!   gateway, at once;
//! - a connection lost otherwise (network, heartbeat, drain): its gateway, when the
//!   session was not resumed anywhere within `session_expires_ms` (the session
//!   expired);
//! - a gateway that died (three missed announcements, or its `down`): the live gateway
//!   with the smallest node name publishes, for each session it held that was not
//!   resumed elsewhere within `session_expires_ms`.
//!
//! A resume does not publish `client.connected` again — unless the session had been
//! announced gone (it came back after its `client.disconnected`, or that event reached
//! the gateway it came back to only after it: [`PresenceView::on_event`]), so the
//! events of a session always alternate.
//!
//! Also here: the [`Outbox`] that keeps a gateway's presence events, in order, until
//! RabbitMQ confirmed them (at least once, also across a broker outage), and the
//! resync of a gateway whose presence listener was away ([`PresenceView::asking`],
//! [`PresenceView::answer`]): it missed its peers' events meanwhile, and asks each
//! for what it holds. Pure: time is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Announcement periods a gateway may miss before its peers count it as dead.
pub const MISSED_ANNOUNCEMENTS: u32 = 3;

/// How long past the grace period a session announced gone is remembered
/// ([`PresenceView::merge`] skips it): a snapshot a peer took before it heard the
/// leave arrives within a moment, this bounds a slow one.
pub const TOMBSTONE_MARGIN: Duration = Duration::from_secs(30);

/// The most sessions announced gone a view remembers (the oldest are forgotten
/// first): a storm of leaves does not grow it without bound.
pub const TOMBSTONES_MAX: usize = 100_000;

/// The `reason` of a snapshot entry whose session is away (its connection was lost,
/// its leave is due after the grace period unless it is resumed).
const AWAY: &str = "away";

/// A presence event as published on `warren.presence` (routing key = `event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// `client.connected`, `client.disconnected` or `client.subscriptions`.
    pub event: String,
    /// The session.
    pub session: String,
    /// Its user.
    pub user: String,
    /// The gateway holding the session (for a disconnect: the one that held it last).
    pub node: String,
    /// The channel of the listener it connected to (`None`: all channels).
    #[serde(default)]
    pub channel: Option<String>,
    /// `client.disconnected`: `closed` (by the client), `expired` (not resumed in
    /// time) or `gateway_lost` (its gateway died and it was not resumed elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `client.disconnected` for a dead gateway: the node that published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `client.subscriptions`: the session's subscription keys (`chat.group.lobby`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// In tenant mode, the session's tenant (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A session as the presence view holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The user.
    pub user: String,
    /// The gateway holding it.
    pub node: String,
    /// The channel of its listener.
    pub channel: Option<String>,
    /// Its subscription keys.
    pub keys: BTreeSet<String>,
    /// Its tenant (tenant mode).
    pub tenant: Option<String>,
    /// The gateways it was resumed away from (the latest [`LEFT_MAX`]): their
    /// `client.subscriptions` for it are older than its keys.
    pub left: Vec<String>,
    /// The last `client.subscriptions` ignored as from a gateway of `left`, since the
    /// holder's last keys: the session's, if that gateway's takeover request comes
    /// next (resumed back there, its keys travel apart from its takeover request and
    /// often come first).
    parked: Option<(String, BTreeSet<String>)>,
    /// When `node` names an earlier process of a gateway that restarted under its name
    /// (`a#previous`, `a#<instance>`: dead, apart from the live `a`): that gateway's
    /// node name, which its `client.disconnected` names.
    restarted: Option<String>,
}

/// Gateways a session was resumed away from that the view remembers.
const LEFT_MAX: usize = 4;

impl Held {
    /// The session is on `node` now (a takeover, a resume here, or its new gateway's
    /// `client.subscriptions` seen before the takeover request).
    fn moved_to(&mut self, node: &str) {
        if self.node == node {
            return;
        }
        if let Some((parked_by, keys)) = self.parked.take() {
            if parked_by == node {
                self.keys = keys;
            }
        }
        self.restarted = None;
        let from = std::mem::replace(&mut self.node, node.to_string());
        self.left.retain(|n| n != node && *n != from);
        self.left.push(from);
        if self.left.len() > LEFT_MAX {
            self.left.remove(0);
        }
    }

    /// The node name of the gateway that holds it (held it last): `node`, or, when
    /// that names an earlier process of a restarted gateway, the gateway's name.
    pub fn node_name(&self) -> &str {
        self.restarted.as_deref().unwrap_or(&self.node)
    }

    /// Its `client.disconnected` (`reason`), published by gateway `me`: `by` it when
    /// another gateway (or an earlier process of `me`) held it.
    pub fn disconnected(self, session: &str, reason: &str, me: &str) -> PresenceEvent {
        let by = (self.node != me).then(|| me.to_string());
        PresenceEvent {
            event: "client.disconnected".into(),
            session: session.to_string(),
            node: self.node_name().to_string(),
            user: self.user,
            channel: self.channel,
            reason: Some(reason.to_string()),
            by,
            keys: None,
            tenant: self.tenant,
        }
    }

    /// `node` is a gateway the session was resumed away from (or never served it):
    /// its `client.subscriptions` for the session are older than its keys.
    fn left_by(&mut self, node: &str) {
        self.left.retain(|n| n != node);
        self.left.push(node.to_string());
        if self.left.len() > LEFT_MAX {
            self.left.remove(0);
        }
    }
}

#[derive(Debug, Clone)]
struct Peer {
    last_seen: Instant,
    lifetime: Duration,
    down: bool,
    /// The process behind the node name: a new one means the node restarted.
    instance: String,
    /// Whether the node announced itself. One known only from a peer's snapshot
    /// (it holds sessions there) counts as alive for a grace period, then as dead;
    /// it takes no part in the election.
    heard: bool,
}

/// The cluster's sessions and gateways as one gateway sees them.
#[derive(Debug)]
pub struct PresenceView {
    me: String,
    grace: Duration,
    /// How long a node this gateway has not heard from yet counts as alive: the grace
    /// period, or this gateway's own announcement lifetime when longer
    /// ([`PresenceView::expecting_announcements`]).
    unheard_lifetime: Duration,
    sessions: HashMap<String, Held>,
    /// Sessions whose connection ended without a goodbye: when their
    /// `client.disconnected` is due unless they are resumed first.
    away: HashMap<String, Instant>,
    /// Those of `away` made away because their gateway was found dead, with the same
    /// deadline (an entry whose deadline no longer matches `away`'s is stale): when
    /// their gateway is heard again (it was late, not dead) they are online again.
    away_with_node: HashMap<String, Instant>,
    peers: HashMap<String, Peer>,
    /// The last resync request ([`PresenceView::asking`]): its id and the sessions
    /// the view held when it was made, each with the node it held it on then.
    asked: Option<(u64, HashMap<String, String>)>,
    /// Sessions announced gone recently, until when they are remembered
    /// ([`TOMBSTONE_MARGIN`]), and the same oldest first (at most
    /// [`TOMBSTONES_MAX`]): a peer's snapshot taken before it heard the leave does not
    /// bring them back.
    gone: HashMap<String, Instant>,
    gone_order: VecDeque<(String, Instant)>,
    /// Sessions announced `gateway_lost` (by this view's gateway or a peer), each with
    /// the node that held them, and the same oldest first (at most
    /// [`TOMBSTONES_MAX`]), until they connect again or end otherwise: a gateway cut
    /// off from RabbitMQ for longer than its lifetime and the grace, whose sessions
    /// stayed open, is told which of them its peers announced gone while it was away
    /// ([`PresenceView::lost_of`]); its listening queue did not outlive its connection.
    lost: HashMap<String, (String, u64)>,
    lost_order: VecDeque<(String, u64)>,
    lost_seq: u64,
    /// This gateway's sessions announced connected again (or forgotten, away) since
    /// its last outage ([`PresenceView::answer`]): each peer's answer may name them,
    /// and each is dealt with once, also when its connection is lost or it is resumed
    /// between two answers. Cleared at the next outage ([`PresenceView::deaf`]); each
    /// forgotten after the grace period and [`TOMBSTONE_MARGIN`] (the value: until
    /// when), by then the resync that may name it is over: a session announced
    /// again because a peer's leave raced its resume here (no outage) was otherwise
    /// kept until the next outage, however many there were meanwhile.
    announced_again: HashMap<String, Instant>,
    /// Whether a peer's snapshot was taken in ([`PresenceView::merge`]).
    merged: bool,
}

/// One online session in a presence answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Online {
    /// The session.
    pub session: String,
    /// Its user.
    pub user: String,
    /// Its gateway.
    pub node: String,
}

impl PresenceView {
    /// The view of gateway `me`; sessions not resumed within `grace` are gone.
    pub fn new(me: &str, grace: Duration) -> Self {
        PresenceView {
            me: me.to_string(),
            grace,
            unheard_lifetime: grace,
            sessions: HashMap::new(),
            away: HashMap::new(),
            away_with_node: HashMap::new(),
            peers: HashMap::new(),
            asked: None,
            gone: HashMap::new(),
            gone_order: VecDeque::new(),
            lost: HashMap::new(),
            lost_order: VecDeque::new(),
            lost_seq: 0,
            announced_again: HashMap::new(),
            merged: false,
        }
    }

    /// `session`, held by `node`, was announced `gateway_lost`.
    fn lose(&mut self, session: &str, node: &str) {
        self.lost_seq += 1;
        let seq = self.lost_seq;
        self.lost
            .insert(session.to_string(), (node.to_string(), seq));
        self.lost_order.push_back((session.to_string(), seq));
        while self.lost_order.len() > TOMBSTONES_MAX {
            if let Some((oldest, seq)) = self.lost_order.pop_front() {
                // Unless it was announced lost again since (queued twice).
                if self.lost.get(&oldest).is_some_and(|(_, s)| *s == seq) {
                    self.lost.remove(&oldest);
                }
            }
        }
    }

    /// The sessions of `node` announced `gateway_lost` that have not connected again
    /// since, for `node`'s resync ([`PresenceView::answer`]).
    pub fn lost_of(&self, node: &str) -> Vec<String> {
        let mut sessions: Vec<String> = self
            .lost
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(s, _)| s.clone())
            .collect();
        sessions.sort();
        sessions
    }

    /// The events that announce `session`, held here, connected again after a peer
    /// announced it gone: `client.connected`, and `client.subscriptions` when it has
    /// any.
    fn connected_again(&mut self, session: &str, now: Instant) -> Vec<PresenceEvent> {
        let Some(h) = self.sessions.get(session) else {
            return Vec::new();
        };
        let until = now + self.grace + TOMBSTONE_MARGIN;
        self.announced_again.insert(session.to_string(), until);
        let event = |event: &str, keys| PresenceEvent {
            event: event.into(),
            session: session.to_string(),
            user: h.user.clone(),
            node: self.me.clone(),
            channel: h.channel.clone(),
            reason: None,
            by: None,
            keys,
            tenant: h.tenant.clone(),
        };
        let mut again = vec![event("client.connected", None)];
        if !h.keys.is_empty() {
            let keys = h.keys.iter().cloned().collect();
            again.push(event("client.subscriptions", Some(keys)));
        }
        again
    }

    /// Gateways announce themselves every `interval` (this one's
    /// `announce_interval_ms`, which its peers are expected to share): a node a peer's
    /// snapshot names, not heard from yet, counts as alive for three intervals when
    /// that is longer than the grace period. With the grace alone, a gateway that
    /// started beside peers announcing less often than every half grace took them for
    /// dead before their first announcement, and published `gateway_lost` for every
    /// session they held.
    pub fn expecting_announcements(mut self, interval: Duration) -> Self {
        self.unheard_lifetime = self.grace.max(interval * MISSED_ANNOUNCEMENTS);
        self
    }

    /// `session` was announced gone at `now`: remembered until the grace period and
    /// [`TOMBSTONE_MARGIN`] passed.
    fn bury(&mut self, session: &str, now: Instant) {
        let until = now + self.grace + TOMBSTONE_MARGIN;
        self.gone.insert(session.to_string(), until);
        self.gone_order.push_back((session.to_string(), until));
        self.forget_gone(now);
    }

    /// Forgets the sessions announced gone whose time passed, and the oldest past
    /// [`TOMBSTONES_MAX`].
    fn forget_gone(&mut self, now: Instant) {
        while let Some((session, until)) = self.gone_order.front() {
            if *until > now && self.gone_order.len() <= TOMBSTONES_MAX {
                break;
            }
            if self.gone.get(session) == Some(until) {
                self.gone.remove(session);
            }
            self.gone_order.pop_front();
        }
    }

    /// Whether `session` was announced gone recently ([`PresenceView::bury`]).
    fn buried(&self, session: &str, now: Instant) -> bool {
        self.gone.get(session).is_some_and(|until| *until > now)
    }

    /// A session opened or was resumed here. Returns whether `client.connected` is to
    /// be published: for a new session, or one the view counts as gone.
    pub fn opened(
        &mut self,
        session: &str,
        user: &str,
        channel: Option<&str>,
        tenant: Option<&str>,
    ) -> bool {
        self.away.remove(session);
        self.gone.remove(session);
        self.lost.remove(session);
        match self.sessions.get_mut(session) {
            Some(h) => {
                h.moved_to(&self.me);
                false
            }
            None => {
                self.sessions.insert(
                    session.to_string(),
                    Held {
                        user: user.to_string(),
                        node: self.me.clone(),
                        channel: channel.map(str::to_string),
                        keys: BTreeSet::new(),
                        tenant: tenant.map(str::to_string),
                        left: Vec::new(),
                        parked: None,
                        restarted: None,
                    },
                );
                true
            }
        }
    }

    /// The connection of a session held here ended. `goodbye`: the client closed it
    /// (publish `client.disconnected` now: returns it). Otherwise the session is away
    /// until resumed or `grace` passed ([`PresenceView::due`]).
    pub fn ended(&mut self, session: &str, goodbye: bool, now: Instant) -> Option<Held> {
        let held = self.sessions.get(session)?;
        if held.node != self.me {
            return None; // resumed elsewhere already
        }
        if goodbye {
            self.away.remove(session);
            self.bury(session, now);
            return self.sessions.remove(session);
        }
        self.away.insert(session.to_string(), now + self.grace);
        None
    }

    /// The session's subscription keys (here or from a peer). Returns whether they
    /// differ from what the view had (also for a session it does not know).
    pub fn subscriptions(&mut self, session: &str, keys: BTreeSet<String>) -> bool {
        match self.sessions.get_mut(session) {
            Some(h) if h.keys == keys => {
                h.parked = None;
                false
            }
            Some(h) => {
                h.parked = None;
                h.keys = keys;
                true
            }
            None => true,
        }
    }

    /// A takeover request: `node` resumed `session`. This gateway's own requests come
    /// back too, and are nothing new: [`PresenceView::opened`] placed the session here
    /// already, and a connection of it that ended since (away: its `expired` is due)
    /// must stay away.
    pub fn taken_over(&mut self, session: &str, node: &str) {
        if node == self.me {
            return;
        }
        self.away.remove(session);
        if let Some(h) = self.sessions.get_mut(session) {
            h.moved_to(node);
        }
    }

    /// A takeover request of `node` for `session`, held here, refused: this gateway's
    /// connection of it was asked for later (`node`'s `hello` waited while its client
    /// gave it up and resumed here) and keeps it; `node`'s connection ends when it
    /// hears this gateway's takeover request. `node`'s `client.subscriptions` for it
    /// are older than its keys here: ignored, as those of a gateway the session was
    /// resumed away from; one that came first (they travel apart) moved the session
    /// to `node`, which it is taken back from. Without this, such an event placed the
    /// session on `node` for good: this gateway's own takeover request changes
    /// nothing here, and when its connection ended here nothing was published (not
    /// held here), its user listed online for good, here on `node`, elsewhere here.
    pub fn refused(&mut self, session: &str, node: &str) {
        if node == self.me {
            return;
        }
        let me = self.me.clone();
        if let Some(h) = self.sessions.get_mut(session) {
            if h.parked.as_ref().is_some_and(|(n, _)| n == node) {
                h.parked = None;
            }
            if h.node == node {
                h.moved_to(&me);
            } else {
                h.left_by(node);
            }
        }
    }

    /// A presence event from the bus (this gateway's own included). Returns the events
    /// this gateway is to publish in answer: when a peer announces gone a session that
    /// was resumed here before the event arrived (the resume published nothing, as the
    /// view still held it), services would count its user offline while it is online:
    /// its `client.connected` (and `client.subscriptions`) go out again, so the events
    /// still alternate and end where the session is. A leave is remembered for a while
    /// (taken in at `now`), so that a peer's snapshot older than it does not bring the
    /// session back ([`PresenceView::merge`]).
    pub fn on_event(&mut self, e: PresenceEvent, now: Instant) -> Vec<PresenceEvent> {
        let mut again = Vec::new();
        match (e.event.as_str(), e.reason.as_deref()) {
            ("client.connected", _) => {
                self.lost.remove(&e.session);
            }
            // Its own, echoed: [`PresenceView::due`] remembered it when publishing.
            ("client.disconnected", Some("gateway_lost"))
                if e.by.as_deref() != Some(self.me.as_str()) =>
            {
                self.lose(&e.session, &e.node)
            }
            ("client.disconnected", Some("gateway_lost")) => {}
            ("client.disconnected", _) => {
                self.lost.remove(&e.session);
            }
            _ => {}
        }
        match e.event.as_str() {
            // This gateway's own: [`PresenceView::opened`] knew it first, and the
            // session may have ended here since (its `client.disconnected` on its way).
            "client.connected" if e.node == self.me => {}
            "client.connected" => {
                // A new connect (a session's events alternate): no longer gone.
                self.gone.remove(&e.session);
                // What the view knows already (a resume seen first) is newer.
                self.sessions.entry(e.session).or_insert_with(|| Held {
                    user: e.user,
                    node: e.node,
                    channel: e.channel,
                    keys: BTreeSet::new(),
                    tenant: e.tenant,
                    left: Vec::new(),
                    parked: None,
                    restarted: None,
                });
            }
            "client.disconnected" => {
                // Unless it is back here already (a resume raced the event).
                let held_here = self
                    .sessions
                    .get(&e.session)
                    .is_some_and(|h| h.node == self.me);
                let here = held_here && !self.away.contains_key(&e.session);
                // This gateway's own event (its `closed` and `expired`, or a
                // `gateway_lost` it published for a peer: `by` it) removed the session
                // from the view already when published (`due`, `ended`): whatever the
                // view holds of it now came later — a resume here, announced anew,
                // even if that connection is lost again by now (away: its own
                // `expired` is due), or a resume on a peer (its takeover). Removing
                // it again hid a live session: from this gateway's presence answers,
                // and when it ended here nothing was published (services saw it online
                // for good), or when its peer died nobody published `gateway_lost`.
                let own = e.by.as_deref().unwrap_or(&e.node) == self.me;
                if own {
                    // Left as it is.
                } else if !here {
                    self.sessions.remove(&e.session);
                    self.away.remove(&e.session);
                    self.bury(&e.session, now);
                } else {
                    again = self.connected_again(&e.session, now);
                }
            }
            // Not from a gateway the session was resumed away from (here or on a
            // peer): a late one of those is older than its keys. One from a gateway
            // not known to hold it is from where it was resumed, before that gateway's
            // takeover request (they travel apart): it holds the session now.
            "client.subscriptions" if e.node != self.me => {
                if let Some(h) = self.sessions.get_mut(&e.session) {
                    let keys = e.keys.unwrap_or_default().into_iter().collect();
                    if h.left.contains(&e.node) {
                        // Late, or its own resume back there before its takeover
                        // request: kept for the latter (it dropped the session's new
                        // keys, and the view kept those of the gateway it left).
                        h.parked = Some((e.node, keys));
                    } else {
                        let from = h.node.clone();
                        h.moved_to(&e.node);
                        let old = std::mem::replace(&mut h.keys, keys);
                        // The keys of the gateway it moved from, kept should it come
                        // back next ([`PresenceView::refused`]: an older resume's keys
                        // came before this gateway refused its takeover).
                        h.parked = (from != e.node).then_some((from, old));
                    }
                }
            }
            _ => {}
        }
        again
    }

    /// A gateway announcement: `node` (process `instance`) is up (next one due within
    /// `interval`) or down. When the node name comes back as another process (a
    /// restart), the sessions the earlier process held are that process's, and it is
    /// dead: they are treated as a lost gateway's.
    pub fn on_gateway(
        &mut self,
        node: &str,
        instance: &str,
        up: bool,
        interval: Duration,
        now: Instant,
    ) {
        if node == self.me {
            return;
        }
        if let Some(old) = self.peers.get(node) {
            if !old.instance.is_empty() && old.instance != instance {
                // The earlier process's sessions died with it: none is announced
                // connected again.
                let earlier = format!("{node}#");
                self.lost
                    .retain(|_, (n, _)| n != node && !n.starts_with(&earlier));
                let gone = format!("{node}#{}", old.instance);
                for h in self.sessions.values_mut().filter(|h| h.node == node) {
                    h.node = gone.clone();
                    h.restarted = Some(node.to_string());
                }
                self.peers.insert(
                    gone,
                    Peer {
                        down: true,
                        ..old.clone()
                    },
                );
            }
        }
        self.peers.insert(
            node.to_string(),
            Peer {
                last_seen: now,
                lifetime: interval * MISSED_ANNOUNCEMENTS,
                down: !up,
                instance: instance.to_string(),
                heard: true,
            },
        );
    }

    /// The tenant of `session`, as far as the view knows.
    pub fn tenant_of(&self, session: &str) -> Option<String> {
        self.sessions.get(session).and_then(|h| h.tenant.clone())
    }

    /// What this view knows of the cluster's sessions, for a gateway that just started
    /// ([`PresenceView::merge`]): also those away (`reason: "away"`), whose leave is
    /// still to be published — perhaps by the gateway that starts, when it is the
    /// smallest live node name.
    pub fn snapshot(&self) -> Vec<PresenceEvent> {
        self.sessions
            .iter()
            .map(|(session, h)| PresenceEvent {
                event: "client.connected".into(),
                session: session.clone(),
                user: h.user.clone(),
                node: h.node.clone(),
                channel: h.channel.clone(),
                reason: self.away.contains_key(session).then(|| AWAY.to_string()),
                by: None,
                keys: Some(h.keys.iter().cloned().collect()),
                tenant: h.tenant.clone(),
            })
            .collect()
    }

    /// Takes in a peer's [`PresenceView::snapshot`] at `now`: sessions this view does
    /// not know yet (what it knows is as new or newer), but not those it saw announced
    /// gone within the grace period and [`TOMBSTONE_MARGIN`]: the peer took its
    /// snapshot before it heard the leave, and the session, added back, stayed online
    /// here for good (its user never offline, and a `gateway_lost` for it later).
    ///
    /// A session the snapshot gives this node was held by this node's previous process
    /// (it restarted before the peer noticed): that process is dead. A node that holds
    /// sessions but has not announced itself here counts as alive for a grace period,
    /// then as dead, so that the leaves of a gateway that died before this one started
    /// are published (by the smallest live node name) and not kept for ever. Both only
    /// with `liveness` (gateways announce themselves): without announcements no node is
    /// ever heard, and every gateway would count every other one dead.
    pub fn merge(&mut self, snapshot: Vec<PresenceEvent>, now: Instant, liveness: bool) {
        let previous = format!("{}#previous", self.me);
        self.forget_gone(now);
        self.merged = true;
        for e in snapshot {
            // Known already, or announced gone since the peer took its snapshot.
            if self.sessions.contains_key(&e.session) || self.buried(&e.session, now) {
                continue;
            }
            if e.reason.as_deref() == Some(AWAY) {
                self.away.insert(e.session.clone(), now + self.grace);
            }
            let (node, restarted) = if liveness && e.node == self.me {
                (previous.clone(), Some(self.me.clone()))
            } else {
                (e.node, None)
            };
            self.sessions.insert(
                e.session,
                Held {
                    user: e.user,
                    node,
                    channel: e.channel,
                    keys: e.keys.unwrap_or_default().into_iter().collect(),
                    tenant: e.tenant,
                    left: Vec::new(),
                    parked: None,
                    restarted,
                },
            );
        }
        if !liveness {
            return;
        }
        let unheard: BTreeSet<String> = self
            .sessions
            .values()
            .map(|h| &h.node)
            .filter(|n| **n != self.me && !self.peers.contains_key(*n))
            .cloned()
            .collect();
        for node in unheard {
            let down = node == previous;
            self.peers.insert(
                node,
                Peer {
                    last_seen: now,
                    lifetime: self.unheard_lifetime,
                    down,
                    instance: String::new(),
                    heard: false,
                },
            );
        }
    }

    /// Whether a peer's snapshot was taken in: the view knows the sessions opened
    /// before this gateway started.
    pub fn merged(&self) -> bool {
        self.merged
    }

    /// This gateway asks its peers for their views (request `id`) because its
    /// presence listener was away (a broker reconnect) and missed their events. Each
    /// peer's [`PresenceView::answer`] to it is the truth about the sessions that peer
    /// holds.
    pub fn asking(&mut self, id: u64) {
        let known = self
            .sessions
            .iter()
            .map(|(s, h)| (s.clone(), h.node.clone()))
            .collect();
        self.asked = Some((id, known));
    }

    /// The sessions this view saw announced gone that a gateway asking for a resync
    /// may still hold ([`PresenceView::told_gone`]): those announced gone within the
    /// grace period and [`TOMBSTONE_MARGIN`], and those announced `gateway_lost` that
    /// have not connected again since (at most [`TOMBSTONES_MAX`] each), sorted.
    pub fn tombstones(&self, now: Instant) -> Vec<String> {
        let recent = self
            .gone
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(s, _)| s);
        let sessions: BTreeSet<&String> = recent.chain(self.lost.keys()).collect();
        sessions.into_iter().cloned().collect()
    }

    /// Peer's [`PresenceView::tombstones`], answering request `asked`
    /// ([`PresenceView::asking`]), taken in at `now` before its snapshot
    /// ([`PresenceView::answer`]): the sessions this view held for a peer when it asked,
    /// and still holds there, that the peer saw announced gone are gone (their
    /// `client.disconnected` went out while this gateway was not listening). An answer
    /// only removes those it gives to the answering peer: without this, a dead
    /// gateway's session whose `gateway_lost` went out meanwhile stayed here — its
    /// user online, listed by `GET /presence` — and once this gateway judged that
    /// gateway dead, being the smallest live node, it published `gateway_lost` a second
    /// time. This gateway's own sessions are its own to know (`lost`, in
    /// [`PresenceView::answer`]); one it learnt of after asking is kept.
    pub fn told_gone(&mut self, asked: u64, gone: &[String], now: Instant) {
        let Some((id, known)) = &self.asked else {
            return;
        };
        if *id != asked {
            return;
        }
        let gone: Vec<String> = gone
            .iter()
            .filter(|s| {
                let then = known.get(*s);
                self.sessions
                    .get(*s)
                    .is_some_and(|h| h.node != self.me && then == Some(&h.node))
            })
            .cloned()
            .collect();
        for session in gone {
            self.sessions.remove(&session);
            self.away.remove(&session);
            self.away_with_node.remove(&session);
            self.bury(&session, now);
        }
    }

    /// Peer `from`'s view, answering request `asked` ([`PresenceView::asking`]), taken
    /// in at `now`: the sessions this view held when it asked that the view gives to
    /// `from` and `from` no longer knows are gone (their `client.disconnected` went
    /// out while this gateway was not listening); the sessions it does not know are
    /// added ([`PresenceView::merge`]; those the peer saw announced gone are taken out
    /// first, [`PresenceView::told_gone`]). A session it held when it asked that the
    /// answer gives to another node was resumed there meanwhile (its takeover went out
    /// while this gateway was not listening): it takes that node, and the keys and
    /// channel the answer gives it, as what this view knew is older than the outage
    /// (left on the node it had left, a live session was announced `gateway_lost`
    /// when that node died). A session learnt after the request is kept, and so is one that moved
    /// since: the answer may be older than its `client.connected` or its takeover; nor
    /// is one taken back to a node it was resumed away from, unless that node's own
    /// answer says it holds it (resumed back there). This gateway's own
    /// sessions are its own to know: what the peer says of them is ignored, except `lost`
    /// ([`PresenceView::lost_of`]): those of them announced `gateway_lost` while this
    /// gateway was cut off (its peers counted it dead) and not connected again since.
    /// Returns the events to publish for them: `client.connected` (and
    /// `client.subscriptions`) for each still open here, once however many peers name
    /// it, so that services count its user online again. One whose connection was lost
    /// meanwhile (away) is forgotten instead: its leave went out, and its `expired`
    /// would be a second one; resumed here, it is a new connect.
    pub fn answer(
        &mut self,
        from: &str,
        asked: u64,
        snapshot: Vec<PresenceEvent>,
        lost: &[String],
        now: Instant,
        liveness: bool,
    ) -> Vec<PresenceEvent> {
        let mut again = Vec::new();
        for session in lost {
            // Each peer names it, perhaps before it heard what this gateway did.
            let mine = self
                .sessions
                .get(session)
                .is_some_and(|h| h.node == self.me);
            if !mine || self.announced_again.contains_key(session) {
                continue;
            }
            if self.away.remove(session).is_some() {
                self.sessions.remove(session);
                self.bury(session, now);
                let until = now + self.grace + TOMBSTONE_MARGIN;
                self.announced_again.insert(session.clone(), until);
                continue;
            }
            again.extend(self.connected_again(session, now));
        }
        let snapshot: Vec<PresenceEvent> =
            snapshot.into_iter().filter(|e| e.node != self.me).collect();
        if let Some((id, known)) = &self.asked {
            if *id == asked {
                let listed: HashSet<&str> = snapshot.iter().map(|e| e.session.as_str()).collect();
                let gone: Vec<String> = known
                    .keys()
                    .filter(|s| !listed.contains(s.as_str()))
                    .filter(|s| self.sessions.get(*s).is_some_and(|h| h.node == from))
                    .cloned()
                    .collect();
                for e in &snapshot {
                    let Some(h) = self.sessions.get_mut(&e.session) else {
                        continue;
                    };
                    let then = known.get(&e.session);
                    // A gateway the session left that reports holding it was
                    // resumed again (its answer is newer than what this view knew).
                    if h.node == e.node
                        || h.node == self.me
                        || then != Some(&h.node)
                        || (h.left.contains(&e.node) && e.node != from)
                    {
                        continue;
                    }
                    h.moved_to(&e.node);
                    h.user.clone_from(&e.user);
                    h.channel.clone_from(&e.channel);
                    h.keys = e.keys.iter().flatten().cloned().collect();
                    h.tenant.clone_from(&e.tenant);
                    self.away_with_node.remove(&e.session);
                    if e.reason.as_deref() == Some(AWAY) {
                        self.away.insert(e.session.clone(), now + self.grace);
                    } else {
                        self.away.remove(&e.session);
                    }
                }
                for session in gone {
                    self.sessions.remove(&session);
                    self.away.remove(&session);
                    self.bury(&session, now);
                }
            }
        }
        self.merge(snapshot, now, liveness);
        again
    }

    fn peer_alive(&self, node: &str, now: Instant) -> bool {
        node == self.me
            || self
                .peers
                .get(node)
                .is_some_and(|p| !p.down && now.duration_since(p.last_seen) < p.lifetime)
    }

    /// Whether this gateway is the live one with the smallest node name: the one that
    /// speaks for the cluster (leaves of dead gateways, undelivered reports).
    pub fn elected(&self, now: Instant) -> bool {
        self.peers
            .iter()
            .filter(|(n, p)| p.heard && self.peer_alive(n, now))
            .all(|(n, _)| *n > self.me)
    }

    /// Whether `user` has a session anywhere (one whose connection was lost but may
    /// still be resumed counts: it gets what it missed on resume); in tenant mode
    /// (`tenant` is `Some`), a session of that tenant (`Some(None)`: without one), as
    /// a message of that tenant reaches only those.
    pub fn user_online(&self, user: &str, tenant: Option<Option<&str>>) -> bool {
        self.sessions
            .values()
            .any(|h| h.user == user && tenant.is_none_or(|t| h.tenant.as_deref() == t))
    }

    /// Those of `users` with no session anywhere ([`PresenceView::user_online`]), in
    /// one pass over the sessions whatever their number: a message to 5,000 users
    /// does not look at every session 5,000 times under the view's lock (every
    /// `hello` waits for it).
    pub fn offline_users<'a>(
        &self,
        users: &'a [String],
        tenant: Option<Option<&str>>,
    ) -> Vec<&'a String> {
        let mut offline: std::collections::HashSet<&str> =
            users.iter().map(String::as_str).collect();
        for h in self.sessions.values() {
            if offline.is_empty() {
                break;
            }
            if tenant.is_none_or(|t| h.tenant.as_deref() == t) {
                offline.remove(h.user.as_str());
            }
        }
        users
            .iter()
            .filter(|u| offline.remove(u.as_str()))
            .collect()
    }

    /// At a graceful shutdown, its connections closed: this gateway's sessions, taken
    /// out of the view (remembered gone) at `now`, when no peer it heard was alive at
    /// `heard_until`: the last moment it could hear them (its peers' silence since
    /// says nothing of them; after a drain longer than their lifetime during which it
    /// did not hear them, a gateway beside live peers took itself for alone and
    /// announced every session gone, those its clients resumed on a peer too). A peer
    /// that announced `down` (the whole deployment stopping) is not alive. A live peer publishes their `gateway_lost` after the
    /// grace unless they resume there; with none, nobody did, and services counted
    /// their users online for good (a lone gateway's restart: those that resume on the
    /// new process are announced connected again, so the events still alternate).
    pub fn left_alone(&mut self, heard_until: Instant, now: Instant) -> Vec<(String, Held)> {
        if self
            .peers
            .iter()
            .any(|(n, p)| *n != self.me && p.heard && self.peer_alive(n, heard_until))
        {
            return Vec::new();
        }
        let own: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, h)| h.node == self.me)
            .map(|(s, _)| s.clone())
            .collect();
        own.into_iter()
            .filter_map(|s| {
                self.away.remove(&s);
                self.bury(&s, now);
                self.sessions.remove(&s).map(|h| (s, h))
            })
            .collect()
    }

    /// This gateway hears nothing at `now` (its broker link is down, or its listeners
    /// are not bound again yet, or a resource alarm blocks publishing — its peers'
    /// too): its peers' announcements cannot reach it, so their silence says nothing
    /// of them. The peers it heard do not age meanwhile; without this, an outage (or
    /// an alarm) longer than their lifetime and the grace made the elected gateway
    /// publish `gateway_lost` for every session of its live peers once RabbitMQ was
    /// back.
    pub fn deaf(&mut self, now: Instant) {
        // A new outage: what was announced again may be announced gone again.
        self.announced_again.clear();
        for p in self.peers.values_mut().filter(|p| p.heard && !p.down) {
            p.last_seen = p.last_seen.max(now);
        }
    }

    /// Moves on to `now`: sessions of gateways found dead become away (gone after
    /// `grace` unless resumed), and returns the `client.disconnected` events this
    /// gateway is to publish — its own sessions not resumed in time, and a dead
    /// gateway's when this gateway is the live one with the smallest node name — as
    /// (session, what was held, reason). Dead gateways with nothing left are forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<(String, Held, &'static str)> {
        let dead: BTreeSet<String> = self
            .peers
            .keys()
            .filter(|n| !self.peer_alive(n, now))
            .cloned()
            .collect();
        // Away only because their gateway was found dead, which is heard again (late
        // announcements, a broker link that flapped): online again. Otherwise they
        // stayed out of `/presence` until the grace ran out, and were announced
        // `gateway_lost` if it looked dead again just then.
        let mut back = Vec::new();
        self.away_with_node.retain(|session, at| {
            if self.away.get(session) != Some(at) {
                return false;
            }
            let held_alive = self
                .sessions
                .get(session)
                .is_some_and(|h| !dead.contains(&h.node));
            if held_alive {
                back.push(session.clone());
            }
            !held_alive
        });
        for session in back {
            self.away.remove(&session);
        }
        for (session, h) in &self.sessions {
            if dead.contains(&h.node) && !self.away.contains_key(session) {
                let at = now + self.grace;
                self.away.insert(session.clone(), at);
                self.away_with_node.insert(session.clone(), at);
            }
        }
        let elected = self.elected(now);
        let mut out = Vec::new();
        let due: Vec<(String, Instant)> = self
            .away
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(s, at)| (s.clone(), *at))
            .collect();
        for (session, at) in due {
            let Some(h) = self.sessions.get(&session) else {
                self.away.remove(&session);
                continue;
            };
            let reason = if h.node == self.me {
                "expired"
            } else if dead.contains(&h.node) {
                "gateway_lost"
            } else {
                // Held by a live peer now (resumed there): not ours.
                self.away.remove(&session);
                continue;
            };
            let published_elsewhere = reason == "gateway_lost" && !elected;
            if published_elsewhere && now < at + self.unheard_lifetime * 2 {
                // The elected peer publishes; the event removes it here too.
                continue;
            }
            self.away.remove(&session);
            if let Some(h) = self.sessions.remove(&session) {
                self.bury(&session, now);
                // Not recorded as announced lost when nobody announced it here: a
                // resync's answer would tell its gateway (alive, cut off meanwhile) so.
                if reason == "gateway_lost" && !published_elsewhere {
                    self.lose(&session, h.node_name());
                }
                if published_elsewhere {
                    // Its event never came (this gateway's listener was away when it
                    // went out, or no peer lived to publish it): forgotten here, not
                    // listed online for good. Two lifetimes leave time for a peer
                    // elected after the first one died to publish it.
                    tracing::info!(session = %session, node = %h.node, "a dead gateway's session forgotten: its gateway_lost never came");
                } else {
                    out.push((session, h, reason));
                }
            }
        }
        self.forget_gone(now);
        self.announced_again.retain(|_, until| *until > now);
        let holding: BTreeSet<&String> = self.sessions.values().map(|h| &h.node).collect();
        self.peers.retain(|n, p| {
            holding.contains(n) || !p.down && now.duration_since(p.last_seen) < p.lifetime * 4
        });
        out
    }

    /// The online sessions of `tenant` (sessions without a tenant for `None`: with
    /// tenant mode off, every session), filtered by `channel` (subscribed to anything
    /// on it, or connected to its listener) and `group` (subscribed to
    /// `<channel>.group.<g>`, on any channel when no channel is given), sorted by user.
    pub fn online(
        &self,
        channel: Option<&str>,
        group: Option<&str>,
        tenant: Option<&str>,
    ) -> Vec<Online> {
        let mut out: Vec<Online> = self
            .sessions
            .iter()
            .filter(|(s, _)| !self.away.contains_key(*s))
            .filter(|(_, h)| h.tenant.as_deref() == tenant)
            .filter(|(_, h)| {
                let on_channel = |c: &str| {
                    h.channel.as_deref() == Some(c)
                        || h.keys
                            .iter()
                            .any(|k| warren_protocol::amqp::keys::channel_of(k) == c)
                };
                let in_group = |g: &str| {
                    h.keys.iter().any(|k| {
                        let c = warren_protocol::amqp::keys::channel_of(k);
                        channel.is_none_or(|want| want == c)
                            && k.strip_prefix(c).and_then(|r| r.strip_prefix(".group.")) == Some(g)
                    })
                };
                channel.is_none_or(on_channel) && group.is_none_or(in_group)
            })
            .map(|(s, h)| Online {
                session: s.clone(),
                user: h.user.clone(),
                node: h.node.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.user, &a.session).cmp(&(&b.user, &b.session)));
        out
    }

    /// Online sessions per gateway (for `GET /presence`; those [`PresenceView::online`]
    /// lists, not those away): of one tenant (`Some(None)`: sessions without a
    /// tenant), or of all (`None`, tenant mode off).
    pub fn per_node(&self, tenant: Option<Option<&str>>) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        let sessions = self
            .sessions
            .iter()
            .filter(|(s, _)| !self.away.contains_key(*s))
            .map(|(_, h)| h);
        for h in sessions.filter(|h| tenant.is_none_or(|t| h.tenant.as_deref() == t)) {
            *m.entry(h.node.clone()).or_default() += 1;
        }
        m
    }
}

/// The most presence events a gateway keeps waiting for RabbitMQ ([`Outbox`]), besides
/// the few being published.
pub const OUTBOX_MAX: usize = 100_000;

/// A presence event waiting in the [`Outbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    seq: u64,
    /// Its routing key: the event's name.
    pub key: String,
    /// Its session.
    pub session: String,
    /// Its `message_id`, the same in every copy published.
    pub message_id: String,
    /// The event (JSON).
    pub body: String,
}

/// This gateway's presence events on their way to `warren.presence`, oldest first,
/// until RabbitMQ confirmed them. One task publishes them ([`Outbox::take`] a few at a
/// time, in order); what it could not get confirmed it gives back
/// ([`Outbox::settle`]) and publishes again later, first and in the same order — so
/// each event goes out at least once and a session's events never overtake each other.
///
/// A session's `client.subscriptions` waiting here is replaced by a newer one (newest
/// wins, so at most one waits behind the one being published). Bounded: past `max`
/// waiting, the oldest `client.subscriptions` is dropped first, else the oldest event.
#[derive(Debug)]
pub struct Outbox {
    max: usize,
    next: u64,
    waiting: BTreeMap<u64, Outgoing>,
    /// Session → its newest waiting event (taken for a newer `client.subscriptions`).
    newest: HashMap<String, u64>,
    /// The waiting `client.subscriptions` events (dropped first when full).
    subscriptions: BTreeSet<u64>,
    /// Taken and not yet settled.
    publishing: usize,
}

const SUBSCRIPTIONS: &str = "client.subscriptions";

impl Outbox {
    /// An empty outbox keeping at most `max` events waiting.
    pub fn new(max: usize) -> Self {
        Outbox {
            max: max.max(1),
            next: 0,
            waiting: BTreeMap::new(),
            newest: HashMap::new(),
            subscriptions: BTreeSet::new(),
            publishing: 0,
        }
    }

    /// Queues event `key` of `session` (`message_id`, `body`). Returns the event
    /// dropped to make room, if the outbox was full.
    pub fn push(
        &mut self,
        key: &str,
        session: &str,
        message_id: String,
        body: String,
    ) -> Option<Outgoing> {
        if key == SUBSCRIPTIONS {
            if let Some(seq) = self.newest.get(session) {
                if let Some(waiting) = self.waiting.get_mut(seq).filter(|e| e.key == key) {
                    waiting.body = body;
                    waiting.message_id = message_id;
                    return None;
                }
            }
        }
        let dropped = (self.waiting.len() >= self.max)
            .then(|| self.drop_one())
            .flatten();
        let seq = self.next;
        self.next += 1;
        if key == SUBSCRIPTIONS {
            self.subscriptions.insert(seq);
        }
        self.newest.insert(session.to_string(), seq);
        self.waiting.insert(
            seq,
            Outgoing {
                seq,
                key: key.to_string(),
                session: session.to_string(),
                message_id,
                body,
            },
        );
        dropped
    }

    /// Drops the oldest waiting `client.subscriptions`, or else the oldest event.
    fn drop_one(&mut self) -> Option<Outgoing> {
        let seq = match self.subscriptions.first() {
            Some(seq) => *seq,
            None => *self.waiting.keys().next()?,
        };
        self.remove(seq)
    }

    fn remove(&mut self, seq: u64) -> Option<Outgoing> {
        let e = self.waiting.remove(&seq)?;
        self.subscriptions.remove(&seq);
        if self.newest.get(&e.session) == Some(&seq) {
            self.newest.remove(&e.session);
        }
        Some(e)
    }

    /// The oldest `n` events waiting, to publish in this order; they are no longer
    /// waiting until [`Outbox::settle`] gives back what was not confirmed.
    pub fn take(&mut self, n: usize) -> Vec<Outgoing> {
        let seqs: Vec<u64> = self.waiting.keys().take(n).copied().collect();
        let taken: Vec<Outgoing> = seqs.into_iter().filter_map(|s| self.remove(s)).collect();
        self.publishing += taken.len();
        taken
    }

    /// The publish of what [`Outbox::take`] gave ended; `unconfirmed` (in their order)
    /// wait again, before every event queued since.
    pub fn settle(&mut self, unconfirmed: Vec<Outgoing>) {
        self.publishing = 0;
        for e in unconfirmed {
            if e.key == SUBSCRIPTIONS {
                self.subscriptions.insert(e.seq);
            }
            self.waiting.insert(e.seq, e);
        }
    }

    /// Events waiting or being published.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.publishing
    }

    /// Whether nothing waits or is being published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    /// Each event's name, session and node, in order.
    fn event_session_node(events: &[PresenceEvent]) -> Vec<(&str, &str, &str)> {
        events
            .iter()
            .map(|e| (e.event.as_str(), e.session.as_str(), e.node.as_str()))
            .collect()
    }

    fn connected(session: &str, user: &str, node: &str) -> PresenceEvent {
        PresenceEvent {
            event: "client.connected".into(),
            session: session.into(),
            user: user.into(),
            node: node.into(),
            channel: None,
            reason: None,
            by: None,
            keys: None,
            tenant: None,
        }
    }

    #[test]
    fn a_user_is_online_for_the_messages_of_its_own_tenant_only() {
        let mut v = PresenceView::new("a", GRACE);
        v.opened("s1", "admin", None, Some("globex"));
        assert!(v.user_online("admin", Some(Some("globex"))));
        assert!(
            !v.user_online("admin", Some(Some("acme"))),
            "acme's admin is not globex's"
        );
        assert!(!v.user_online("admin", Some(None)));
        assert!(v.user_online("admin", None), "tenant mode off: any session");
        // Many users at once, each once, in their order: the same answers.
        let users: Vec<String> = ["nobody", "admin", "nobody", "ghost"]
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            v.offline_users(&users, Some(Some("acme"))),
            ["nobody", "admin", "ghost"]
        );
        assert_eq!(
            v.offline_users(&users, Some(Some("globex"))),
            ["nobody", "ghost"]
        );
        assert_eq!(v.offline_users(&users, None), ["nobody", "ghost"]);
    }

    #[test]
    fn a_goodbye_is_published_at_once_and_a_lost_connection_after_the_grace() {
        let t0 = Instant::now();
        let mut v = PresenceView::new("a", GRACE);
        assert!(v.opened("s1", "ada", None, None));
        assert!(v.opened("s2", "bob", None, None));
        assert_eq!(v.ended("s1", true, t0).unwrap().user, "ada");
        assert!(v.ended("s2", false, t0).is_none());
        assert!(v.due(t0 + GRACE - Duration::from_millis(1)).is_empty());
        let due = v.due(t0 + GRACE);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].0.as_str(), due[0].2), ("s2", "expired"));
        assert!(v.due(t0 + GRACE * 2).is_empty(), "once");
    }

    #[test]
    fn a_resume_here_lost_before_its_own_takeover_request_came_back_is_still_announced_gone() {
        let t0 = Instant::now();
        let mut v = PresenceView::new("a", GRACE);
        v.on_event(connected("s1", "ada", "b"), Instant::now());
        assert!(!v.opened("s1", "ada", None, None), "resumed here from b");
        v.ended("s1", false, t0);
        // The takeover request this gateway sent for the resume comes back.
        v.taken_over("s1", "a");
        let due = v.due(t0 + GRACE);
        assert_eq!(due.len(), 1, "still away: {due:?}");
        assert_eq!((due[0].0.as_str(), due[0].2), ("s1", "expired"));
        assert!(!v.user_online("ada", None));
    }

    #[test]
    fn a_session_closed_before_its_own_connected_event_came_back_is_not_held_again() {
        let t0 = Instant::now();
        let mut v = PresenceView::new("a", GRACE);
        assert!(v.opened("s1", "ada", None, None));
        assert!(
            v.ended("s1", true, t0).is_some(),
            "closed: published at once"
        );
        assert!(v
            .on_event(connected("s1", "ada", "a"), Instant::now())
            .is_empty());
        let closed = PresenceEvent {
            event: "client.disconnected".into(),
            reason: Some("closed".into()),
            ..connected("s1", "ada", "a")
        };
        assert!(v.on_event(closed, Instant::now()).is_empty());
        assert!(!v.user_online("ada", None), "gone");
        assert!(v.online(None, None, None).is_empty());
        // A peer's is learned as before.
        v.on_event(connected("s2", "bob", "b"), Instant::now());
        assert!(v.user_online("bob", None));
    }

    #[test]
    fn an_own_expired_event_echoed_after_a_resume_here_leaves_the_session_in_the_view() {
        // s1's connection to a was lost; a published `expired` after the grace, and
        // the client resumed on a (from its positions) before the echo came back.
        let t0 = Instant::now();
        let mut v = PresenceView::new("a", GRACE);
        assert!(v.opened("s1", "ada", None, None));
        v.ended("s1", false, t0);
        let due = v.due(t0 + GRACE);
        assert_eq!((due[0].0.as_str(), due[0].2), ("s1", "expired"));
        assert!(v.opened("s1", "ada", None, None), "announced anew");
        let echo = PresenceEvent {
            event: "client.disconnected".into(),
            reason: Some("expired".into()),
            ..connected("s1", "ada", "a")
        };
        assert!(
            v.on_event(echo.clone(), Instant::now()).is_empty(),
            "no event again: its own"
        );
        assert!(v.user_online("ada", None));
        assert_eq!(v.online(None, None, None).len(), 1);
        // And its end is published.
        v.ended("s1", false, t0 + GRACE);
        let due = v.due(t0 + GRACE * 2);
        assert_eq!((due[0].0.as_str(), due[0].2), ("s1", "expired"));

        // A resume on a peer (its takeover seen) before the echo came back: the view
        // keeps the session where it is now.
        assert!(v.opened("s1", "ada", None, None), "announced anew");
        v.taken_over("s1", "b");
        assert!(v.on_event(echo.clone(), Instant::now()).is_empty());
        assert!(v.user_online("ada", None), "still held, by b");
        assert_eq!(v.online(None, None, None)[0].node, "b");
        v.on_event(
            PresenceEvent {
                event: "client.disconnected".into(),
                node: "b".into(),
                reason: Some("closed".into()),
                ..connected("s1", "ada", "b")
            },
            Instant::now(),
        );
        assert!(!v.user_online("ada", None), "b's own event removes it");

        // The same, but the resumed connection is lost again (away) before the echo
        // of the first `expired` comes back: its own `expired` is still published.
        assert!(v.opened("s1", "ada", None, None), "announced anew");
        v.ended("s1", false, t0 + GRACE * 2);
        assert!(v.on_event(echo, Instant::now()).is_empty());
        let due = v.due(t0 + GRACE * 3);
        assert_eq!(due.len(), 1, "its end is still due");
        assert_eq!((due[0].0.as_str(), due[0].2), ("s1", "expired"));
    }

    #[test]
    fn a_resume_within_the_grace_publishes_nothing_here_or_there() {
        let t0 = Instant::now();
        let mut v = PresenceView::new("a", GRACE);
        assert!(v.opened("s1", "ada", None, None));
        v.ended("s1", false, t0);
        assert!(
            !v.opened("s1", "ada", None, None),
            "a resume here is no new connect"
        );
        v.ended("s1", false, t0);
        v.taken_over("s1", "b");
        v.on_gateway("b", "1", true, Duration::from_secs(5), t0);
        assert!(v.due(t0 + GRACE).is_empty());
        // The client closes on b: b's event removes it everywhere.
        v.on_event(
            PresenceEvent {
                event: "client.disconnected".into(),
                node: "b".into(),
                ..connected("s1", "ada", "b")
            },
            Instant::now(),
        );
        assert!(v.online(None, None, None).is_empty());
        // It comes back after that: a new connect.
        assert!(v.opened("s1", "ada", None, None));
    }

    /// A session announced connected again (a peer's leave raced its resume here) is
    /// remembered as such only while a resync may still name it: without an outage
    /// in between, every such race was kept, and the record grew without bound.
    #[test]
    fn sessions_announced_again_are_forgotten_after_a_while() {
        let t0 = Instant::now();
        let mut c = PresenceView::new("c", GRACE);
        for i in 0..100 {
            let s = format!("s{i}");
            c.on_event(connected(&s, "ada", "b"), t0);
            assert!(!c.opened(&s, "ada", None, None));
            let again = c.on_event(
                PresenceEvent {
                    event: "client.disconnected".into(),
                    by: Some("a".into()),
                    reason: Some("gateway_lost".into()),
                    ..connected(&s, "ada", "b")
                },
                t0,
            );
            assert_eq!(again.len(), 1, "announced again");
            assert!(c.ended(&s, true, t0).is_some(), "and closed");
        }
        assert_eq!(c.announced_again.len(), 100);
        c.due(t0 + GRACE);
        assert_eq!(c.announced_again.len(), 100, "a resync may still name them");
        c.due(t0 + GRACE + TOMBSTONE_MARGIN);
        assert_eq!(c.announced_again.len(), 0);
    }

    #[test]
    fn a_session_resumed_here_before_a_peer_announced_it_gone_is_announced_again() {
        // s1 was b's; b died and a (elected) announces s1 gone, while the client has
        // just resumed it on c: c's resume published nothing (c's view still held s1),
        // and a's event arrives at c after it.
        let mut c = PresenceView::new("c", GRACE);
        c.on_event(connected("s1", "ada", "b"), Instant::now());
        assert!(
            !c.opened("s1", "ada", None, None),
            "a resume: no new connect"
        );
        let keys: BTreeSet<String> = ["chat.all".to_string()].into();
        assert!(c.subscriptions("s1", keys.clone()));
        let again = c.on_event(
            PresenceEvent {
                event: "client.disconnected".into(),
                node: "b".into(),
                by: Some("a".into()),
                reason: Some("gateway_lost".into()),
                ..connected("s1", "ada", "b")
            },
            Instant::now(),
        );
        // Services saw connected (b), disconnected (a): c says where it is again.
        let events = event_session_node(&again);
        assert_eq!(
            events,
            [
                ("client.connected", "s1", "c"),
                ("client.subscriptions", "s1", "c")
            ]
        );
        assert_eq!(again[1].keys, Some(vec!["chat.all".to_string()]));
        assert!(c.user_online("ada", None), "still online here");
        // Its own client's goodbye, published by c, is no race: nothing again.
        let closed = PresenceEvent {
            event: "client.disconnected".into(),
            node: "c".into(),
            reason: Some("closed".into()),
            ..connected("s1", "ada", "c")
        };
        assert!(c.ended("s1", true, Instant::now()).is_some(), "published");
        assert!(c.on_event(closed.clone(), Instant::now()).is_empty());
        assert!(!c.user_online("ada", None));
        // Nor when the client opened it again here before the echo came back: its
        // `client.connected` went out after the `closed`, and the view keeps it.
        assert!(c.opened("s1", "ada", None, None), "announced anew");
        assert!(c.on_event(closed, Instant::now()).is_empty());
        assert!(c.user_online("ada", None), "the echo leaves it");

        // The elected gateway's own gateway_lost, echoed after the client resumed there
        // (its resume announced the session anew: the view had dropped it): nothing
        // again.
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut a = PresenceView::new("a", GRACE);
        a.on_gateway("b", "1", true, period, t0);
        a.on_event(connected("s2", "bob", "b"), Instant::now());
        // b dies: away, then a publishes its gateway_lost (and drops it).
        assert!(a.due(t0 + period * 3).is_empty());
        let lost = a.due(t0 + period * 3 + GRACE);
        assert_eq!((lost[0].0.as_str(), lost[0].2), ("s2", "gateway_lost"));
        assert!(a.opened("s2", "bob", None, None), "announced anew");
        assert!(a
            .on_event(
                PresenceEvent {
                    event: "client.disconnected".into(),
                    node: "b".into(),
                    by: Some("a".into()),
                    reason: Some("gateway_lost".into()),
                    ..connected("s2", "bob", "b")
                },
                Instant::now()
            )
            .is_empty());
        assert!(a.user_online("bob", None));
    }

    #[test]
    fn the_sessions_of_a_dead_gateway_are_published_once_by_the_smallest_live_peer() {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut a = PresenceView::new("a", GRACE);
        let mut c = PresenceView::new("c", GRACE);
        for v in [&mut a, &mut c] {
            v.on_gateway("b", "1", true, period, t0);
            v.on_event(connected("s1", "ada", "b"), Instant::now());
            v.on_event(connected("s2", "bob", "b"), Instant::now());
        }
        a.on_gateway("c", "1", true, Duration::from_secs(60), t0);
        c.on_gateway("a", "1", true, Duration::from_secs(60), t0);
        // b misses three announcements; s2 is resumed on c meanwhile.
        let dead_at = t0 + period * 3;
        assert!(a.due(dead_at).is_empty() && c.due(dead_at).is_empty());
        a.taken_over("s2", "c");
        // c resumed it (its own takeover request, coming back, changes nothing).
        assert!(!c.opened("s2", "bob", None, None));
        c.taken_over("s2", "c");
        let later = dead_at + GRACE;
        let from_a = a.due(later);
        let from_c = c.due(later);
        assert_eq!(from_a.len(), 1, "a (smallest live node) publishes s1");
        assert_eq!((from_a[0].0.as_str(), from_a[0].2), ("s1", "gateway_lost"));
        assert!(from_c.is_empty(), "c leaves it to a");
        assert!(a.elected(later) && !c.elected(later));
        assert!(c.user_online("bob", None) && !a.user_online("cyd", None));
        assert!(
            c.online(None, None, None).iter().all(|o| o.session == "s2"),
            "s1 is away"
        );
        assert_eq!(
            c.per_node(None),
            BTreeMap::from([("c".to_string(), 1)]),
            "the counts leave out what the list leaves out"
        );
    }

    #[test]
    fn a_gateway_heard_again_after_it_was_found_dead_has_its_sessions_online_again() {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut a = PresenceView::new("a", GRACE);
        a.on_gateway("b", "1", true, period, t0);
        a.on_event(connected("s1", "ada", "b"), t0);
        // b misses three announcements: s1 is away.
        assert!(a.due(t0 + period * 3).is_empty());
        assert!(
            a.online(None, None, None).is_empty(),
            "away while b looks dead"
        );
        // b announces itself again: it was late, not dead.
        let back = t0 + period * 4;
        a.on_gateway("b", "1", true, period, back);
        assert!(a.due(back).is_empty());
        assert_eq!(a.online(None, None, None).len(), 1, "s1 online again");
        assert_eq!(a.per_node(None), BTreeMap::from([("b".to_string(), 1)]));
        assert!(
            a.snapshot().iter().all(|e| e.reason.is_none()),
            "not sent as away"
        );
        // b announcing on time, the grace passes: nothing is published for s1.
        let mut now = back;
        while now < back + GRACE + period * 2 {
            now += period;
            a.on_gateway("b", "1", true, period, now);
            assert!(a.due(now).is_empty(), "s1 is b's and b lives");
        }
        // A session whose connection was lost on a live peer (away from a snapshot)
        // stays away when its gateway is heard: only the dead gateway's are back.
        let mut c = PresenceView::new("c", GRACE);
        c.on_gateway("b", "1", true, period, t0);
        let mut away = connected("s2", "bob", "b");
        away.reason = Some(AWAY.into());
        c.merge(vec![away], t0, true);
        c.on_gateway("b", "1", true, period, t0 + period);
        assert!(c.due(t0 + period).is_empty());
        assert!(c.online(None, None, None).is_empty(), "s2 still away");
    }

    #[test]
    fn a_peer_is_not_judged_dead_while_this_gateway_hears_nothing() {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut a = PresenceView::new("a", GRACE);
        a.on_gateway("b", "1", true, period, t0);
        a.on_event(connected("s1", "ada", "b"), Instant::now());
        // A broker outage of three lifetimes and the grace: a is deaf all along.
        let mut now = t0;
        while now < t0 + period * 9 + GRACE * 2 {
            now += period;
            a.deaf(now);
            assert!(
                a.due(now).is_empty(),
                "s1 is not lost while a hears nothing"
            );
        }
        assert!(a.user_online("ada", None));
        // Heard again: b announces itself, and s1 stays.
        a.on_gateway("b", "1", true, period, now);
        assert!(a.due(now + period).is_empty());
        // b really gone: three missed announcements and the grace, then published.
        let later = now + period * 3 + GRACE + period;
        assert!(a.due(now + period * 3).is_empty(), "away first");
        let lost = a.due(later);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!((lost[0].0.as_str(), lost[0].2), ("s1", "gateway_lost"));
    }

    #[test]
    fn a_restarted_gateways_old_sessions_are_lost_and_a_new_gateway_learns_from_a_snapshot() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut a = PresenceView::new("a", GRACE);
        a.on_gateway("b", "first", true, minute, t0);
        a.on_event(connected("s1", "ada", "b"), Instant::now());
        // b restarts under the same name: s1 was the first process's.
        a.on_gateway("b", "second", true, minute, t0);
        assert!(a.due(t0).is_empty(), "not resumed within the grace yet");
        let due = a.due(t0 + GRACE);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].0.as_str(), due[0].2), ("s1", "gateway_lost"));
        // Its event names the gateway that held it, b, not its earlier process.
        let (s, held, reason) = due.into_iter().next().unwrap();
        let e = held.disconnected(&s, reason, "a");
        assert_eq!((e.node.as_str(), e.by.as_deref()), ("b", Some("a")));
        // A gateway that starts learns the sessions its peers know.
        a.opened("s2", "bob", None, None);
        let mut fresh = PresenceView::new("c", GRACE);
        fresh.merge(a.snapshot(), t0, true);
        assert!(
            !fresh.opened("s2", "bob", None, None),
            "s2 resumed on c is no new connect"
        );
    }

    /// Exactly one leave for each session of a dead gateway also when the gateway
    /// with the smallest node name restarts: the restarted process learns the
    /// sessions the others keep away (its own earlier process's, or those of a
    /// gateway that died before it started) and publishes them, and a session given
    /// back to it under its own name is its previous process's.
    #[test]
    fn a_restarted_smallest_gateway_publishes_the_leaves_the_others_wait_for() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let leaves = |due: Vec<(String, Held, &'static str)>| -> Vec<(String, &'static str)> {
            due.into_iter().map(|(s, _, r)| (s, r)).collect()
        };
        // c knows a (first process) holding s1, and b holding s2. b dies; a restarts.
        let mut c = PresenceView::new("c", GRACE);
        c.on_gateway("a", "first", true, minute, t0);
        c.on_gateway("b", "first", true, minute, t0);
        c.on_event(connected("s1", "ada", "a"), Instant::now());
        c.on_event(connected("s2", "bob", "b"), Instant::now());
        c.on_gateway("b", "first", false, minute, t0);
        // The restarted a asks for a snapshot before c heard its new process: s1 still
        // says node a.
        let snapshot = c.snapshot();
        c.on_gateway("a", "second", true, minute, t0);
        assert!(c.due(t0).is_empty());
        let mut a = PresenceView::new("a", GRACE);
        a.on_gateway("c", "first", true, minute, t0);
        a.merge(snapshot, t0, true);
        assert!(a.online(None, None, None).len() == 2, "not away on a yet");
        // c leaves them to a, the live gateway with the smallest name.
        let later = t0 + GRACE * 3;
        a.on_gateway("c", "first", true, minute, later);
        c.on_gateway("a", "second", true, minute, later);
        assert!(leaves(c.due(later)).is_empty(), "a is elected, not c");
        let mut due = a.due(t0 + GRACE);
        due.extend(a.due(later));
        let mut events: Vec<PresenceEvent> = due
            .into_iter()
            .map(|(s, held, reason)| held.disconnected(&s, reason, "a"))
            .collect();
        events.sort_by(|x, y| x.session.cmp(&y.session));
        let published: Vec<(&str, &str, &str, Option<&str>)> = events
            .iter()
            .map(|e| {
                let reason = e.reason.as_deref().unwrap_or_default();
                (e.session.as_str(), reason, e.node.as_str(), e.by.as_deref())
            })
            .collect();
        // Each names the gateway that held it last: s1 a (its earlier process), not a
        // node that never was ("a#previous").
        assert_eq!(
            published,
            [
                ("s1", "gateway_lost", "a", Some("a")),
                ("s2", "gateway_lost", "b", Some("a"))
            ],
            "a publishes both, once"
        );
        // The events reach c, which forgets them: nothing left to publish anywhere.
        for e in events {
            c.on_event(e, Instant::now());
        }
        assert!(c.due(later + GRACE).is_empty() && a.due(later + GRACE).is_empty());
        assert!(c.online(None, None, None).is_empty());
    }

    /// A gateway that is not elected waits for the elected one's `gateway_lost` for
    /// a dead peer's sessions, counting their users as having a session meanwhile.
    /// When the event never comes (this gateway's listener was away when it went
    /// out), the sessions are forgotten two lifetimes later, unpublished: kept, their
    /// users counted online for good, and published late (after the session was
    /// resumed, or never reported undelivered to) once this gateway is elected.
    #[test]
    fn a_dead_gateways_session_whose_event_never_came_is_forgotten_unpublished() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut c = PresenceView::new("c", GRACE);
        c.on_gateway("a", "first", true, minute, t0);
        c.on_gateway("b", "first", true, minute, t0);
        c.on_event(connected("s2", "bob", "b"), t0);
        c.on_gateway("b", "first", false, minute, t0);
        let mut at = t0;
        while at < t0 + GRACE * 3 {
            c.on_gateway("a", "first", true, minute, at);
            assert!(c.due(at).is_empty(), "a is elected, not c");
            assert!(c.user_online("bob", None), "waiting for a's event");
            at += GRACE / 2;
        }
        c.on_gateway("a", "first", true, minute, at);
        assert!(c.due(at).is_empty(), "never published by c");
        assert!(!c.user_online("bob", None), "forgotten");
        assert!(c.sessions.is_empty() && c.away.is_empty());
        // Nobody announced it here: a resync's answer to b (alive after all, cut off
        // meanwhile) does not tell it so.
        assert!(c.lost_of("b").is_empty());
        // a's event, late after all, changes nothing.
        c.on_event(
            PresenceEvent {
                event: "client.disconnected".into(),
                reason: Some("gateway_lost".into()),
                ..connected("s2", "bob", "b")
            },
            at,
        );
        assert!(c.sessions.is_empty() && c.due(at + GRACE).is_empty());
        // Were a to die now, c, elected, has nothing of b's left to publish.
        c.on_gateway("a", "first", false, minute, at);
        assert!(c.due(at + minute).is_empty());
    }

    #[test]
    fn a_node_named_by_a_snapshot_lives_for_three_announcements_before_it_is_heard() {
        // Peers announce every 10 s, sessions are kept 1 s: c starts, takes in a's
        // sessions from b's snapshot, and has not heard a yet.
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        let grace = Duration::from_secs(1);
        let mut b = PresenceView::new("b", grace);
        b.on_event(connected("s1", "ada", "a"), t0);
        let mut c = PresenceView::new("c", grace).expecting_announcements(interval);
        c.merge(b.snapshot(), t0, true);
        for later in [t0 + grace * 3, t0 + interval * 2] {
            assert!(c.due(later).is_empty(), "a may announce itself yet");
            assert_eq!(c.online(None, None, None).len(), 1);
        }
        // Silent for three intervals, then the grace: dead, its session gone.
        let dead = t0 + interval * MISSED_ANNOUNCEMENTS + Duration::from_millis(1);
        assert!(c.due(dead).is_empty(), "away first");
        let gone = c.due(dead + grace);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].2, "gateway_lost");
    }

    #[test]
    fn without_announcements_a_snapshot_makes_no_node_dead() {
        let t0 = Instant::now();
        let mut c = PresenceView::new("c", GRACE);
        c.on_event(connected("s1", "ada", "a"), Instant::now());
        c.on_event(connected("s2", "bob", "b"), Instant::now());
        let mut b = PresenceView::new("b", GRACE);
        b.merge(c.snapshot(), t0, false);
        assert!(
            b.due(t0 + GRACE * 5).is_empty(),
            "a is never heard, and not dead"
        );
        assert_eq!(b.online(None, None, None).len(), 2);
    }

    #[test]
    fn a_session_resumed_on_the_restarted_gateway_is_not_left() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut c = PresenceView::new("c", GRACE);
        c.on_gateway("a", "first", true, minute, t0);
        c.on_event(connected("s1", "ada", "a"), Instant::now());
        let mut a = PresenceView::new("a", GRACE);
        a.on_gateway("c", "first", true, minute, t0);
        a.merge(c.snapshot(), t0, true);
        assert!(
            !a.opened("s1", "ada", None, None),
            "a resume, no new connect"
        );
        assert!(a.due(t0 + GRACE * 3).is_empty());
        assert_eq!(a.online(None, None, None).len(), 1);
    }

    fn left(session: &str, user: &str, node: &str, reason: &str) -> PresenceEvent {
        PresenceEvent {
            event: "client.disconnected".into(),
            reason: Some(reason.into()),
            ..connected(session, user, node)
        }
    }

    #[test]
    fn a_snapshot_taken_before_its_peer_heard_a_leave_does_not_bring_the_session_back() {
        let t0 = Instant::now();
        let a_moment = Duration::from_millis(300);
        // b answers with what it holds before the leave of s1 reached it.
        let mut b = PresenceView::new("b", GRACE);
        b.on_event(connected("s1", "ada", "a"), t0);
        b.on_event(connected("s2", "bob", "a"), t0);
        let stale = b.snapshot();
        let mut c = PresenceView::new("c", GRACE);
        c.on_event(connected("s1", "ada", "a"), t0);
        c.on_event(left("s1", "ada", "a", "closed"), t0);
        c.merge(stale.clone(), t0 + a_moment, true);
        assert!(
            !c.user_online("ada", None),
            "s1 left; the snapshot is older"
        );
        assert!(c.user_online("bob", None), "the rest is taken in");
        // The same through a resync answer.
        c.asking(1);
        c.answer("b", 1, stale.clone(), &[], t0 + a_moment, true);
        assert!(!c.user_online("ada", None), "nor through an answer");
        // Its own leaves too: a goodbye here, an expiry here.
        let mut d = PresenceView::new("a", GRACE);
        d.opened("s1", "ada", None, None);
        d.opened("s2", "bob", None, None);
        assert!(d.ended("s1", true, t0).is_some());
        d.ended("s2", false, t0);
        assert_eq!(d.due(t0 + GRACE).len(), 1, "s2 expired");
        d.merge(stale.clone(), t0 + GRACE + a_moment, false);
        assert!(d.online(None, None, None).is_empty(), "neither comes back");
        // A session that connects again after its leave is online again.
        c.on_event(connected("s1", "ada", "a"), t0 + a_moment);
        assert!(c.user_online("ada", None));
        assert!(d.opened("s1", "ada", None, None), "announced anew");
        // A leave is remembered for the grace period and the margin only.
        let mut e = PresenceView::new("c", GRACE);
        e.on_event(left("s1", "ada", "a", "closed"), t0);
        e.merge(stale, t0 + GRACE + TOMBSTONE_MARGIN, true);
        assert!(e.user_online("ada", None), "forgotten by then");
    }

    #[test]
    fn the_sessions_remembered_gone_are_bounded() {
        let t0 = Instant::now();
        let mut v = PresenceView::new("c", GRACE);
        for i in 0..TOMBSTONES_MAX + 10 {
            v.on_event(left(&format!("s{i}"), "ada", "a", "closed"), t0);
        }
        assert_eq!(v.gone.len(), TOMBSTONES_MAX, "the oldest forgotten");
        assert!(!v.buried("s0", t0) && v.buried("s10", t0));
        v.due(t0 + GRACE + TOMBSTONE_MARGIN);
        assert!(v.gone.is_empty() && v.gone_order.is_empty(), "all expired");
    }

    #[test]
    fn a_late_client_subscriptions_from_a_sessions_previous_gateway_is_ignored() {
        let t0 = Instant::now();
        let lobby: BTreeSet<String> = ["chat.group.lobby".to_string()].into();
        let kitchen = vec!["chat.group.kitchen".to_string()];
        let subscriptions = |node: &str, keys: &[String]| PresenceEvent {
            event: "client.subscriptions".into(),
            keys: Some(keys.to_vec()),
            ..connected("s1", "ada", node)
        };
        // s1 moved from b to c; b's last keys arrive after.
        let mut a = PresenceView::new("a", GRACE);
        a.on_event(connected("s1", "ada", "b"), t0);
        a.taken_over("s1", "c");
        a.on_event(subscriptions("c", &["chat.group.lobby".to_string()]), t0);
        a.on_event(subscriptions("b", &kitchen), t0);
        let groups = |v: &PresenceView, g| v.online(None, Some(g), None).len();
        assert_eq!(
            (groups(&a, "lobby"), groups(&a, "kitchen")),
            (1, 0),
            "c's keys stay"
        );
        // Resumed here from b: b's late keys do not overwrite this gateway's.
        let mut c = PresenceView::new("c", GRACE);
        c.on_event(connected("s1", "ada", "b"), t0);
        assert!(!c.opened("s1", "ada", None, None));
        c.subscriptions("s1", lobby);
        c.on_event(subscriptions("b", &kitchen), t0);
        assert_eq!((groups(&c, "lobby"), groups(&c, "kitchen")), (1, 0));
        // The holder's own change is taken.
        a.on_event(subscriptions("c", &kitchen), t0);
        assert_eq!((groups(&a, "lobby"), groups(&a, "kitchen")), (0, 1));
        // The new gateway's keys before its takeover request (they travel apart):
        // taken, and the session is on that gateway; the takeover then changes
        // nothing, and the old gateway's late keys are ignored. (They were dropped as
        // not the holder's, and the view kept b's keys.)
        let mut d = PresenceView::new("d", GRACE);
        d.on_event(connected("s1", "ada", "b"), t0);
        d.on_event(subscriptions("b", &kitchen), t0);
        d.on_event(subscriptions("c", &["chat.group.lobby".to_string()]), t0);
        d.taken_over("s1", "c");
        d.on_event(subscriptions("b", &kitchen), t0);
        assert_eq!((groups(&d, "lobby"), groups(&d, "kitchen")), (1, 0));
        assert_eq!(d.online(None, Some("lobby"), None)[0].node, "c");
    }

    /// A gateway whose `hello` for a session waited (slow auth) while its client
    /// resumed the session here claims it after, and announces its takeover and keys:
    /// its request is refused here as older, and its keys do not move the session
    /// there, before or after the refusal, so that the session's end here is
    /// announced. (They moved it to `n` for good: `ended` found it not held here and
    /// published nothing.)
    #[test]
    fn a_refused_takeovers_subscriptions_leave_the_session_here() {
        let t0 = Instant::now();
        let subscriptions = |node: &str| PresenceEvent {
            event: "client.subscriptions".into(),
            keys: Some(vec!["chat.group.lobby".to_string()]),
            ..connected("s1", "ada", node)
        };
        for keys_first in [false, true] {
            let mut g = PresenceView::new("g", GRACE);
            g.on_event(connected("s1", "ada", "a"), t0);
            assert!(!g.opened("s1", "ada", None, None));
            g.subscriptions("s1", ["chat.group.kitchen".to_string()].into());
            if keys_first {
                g.on_event(subscriptions("n"), t0);
                g.refused("s1", "n");
            } else {
                g.refused("s1", "n");
                g.on_event(subscriptions("n"), t0);
            }
            assert_eq!(
                g.online(None, None, None)[0].node,
                "g",
                "keys first: {keys_first}"
            );
            // With its own keys, not the refused resume's.
            assert_eq!(g.online(None, Some("kitchen"), None).len(), 1);
            assert!(
                g.online(None, Some("lobby"), None).is_empty(),
                "keys first: {keys_first}"
            );
            assert!(g.ended("s1", false, t0).is_none());
            let due: Vec<(String, &str)> = g
                .due(t0 + GRACE)
                .into_iter()
                .map(|(s, _, r)| (s, r))
                .collect();
            assert_eq!(
                due,
                [("s1".to_string(), "expired")],
                "keys first: {keys_first}"
            );
        }
    }

    /// A session resumed back on a gateway it left, with other subscriptions: that
    /// gateway's keys often come before its takeover request (they travel apart), and
    /// they are the session's once the takeover comes; after a resync, the gateway's
    /// own answer places the session there. (The keys were dropped as late, the view
    /// kept the other gateway's; and every answer naming the gateway was skipped.)
    #[test]
    fn a_session_resumed_back_on_a_gateway_it_left_takes_that_gateways_keys_and_node() {
        let t0 = Instant::now();
        let subscriptions = |node: &str, group: &str| PresenceEvent {
            event: "client.subscriptions".into(),
            keys: Some(vec![format!("chat.group.{group}")]),
            ..connected("s1", "ada", node)
        };
        let groups = |v: &PresenceView, g| v.online(None, Some(g), None).len();
        let mut c = PresenceView::new("c", GRACE);
        c.on_event(connected("s1", "ada", "a"), t0);
        c.taken_over("s1", "b");
        c.on_event(subscriptions("b", "kitchen"), t0);
        c.on_event(subscriptions("a", "lobby"), t0);
        assert_eq!((groups(&c, "lobby"), groups(&c, "kitchen")), (0, 1));
        c.taken_over("s1", "a");
        assert_eq!((groups(&c, "lobby"), groups(&c, "kitchen")), (1, 0));
        assert_eq!(c.online(None, None, None)[0].node, "a");
        // A late one from the gateway it left, then the holder's keys: the holder's.
        let mut d = PresenceView::new("d", GRACE);
        d.on_event(connected("s1", "ada", "a"), t0);
        d.taken_over("s1", "b");
        d.on_event(subscriptions("a", "lobby"), t0);
        d.on_event(subscriptions("b", "kitchen"), t0);
        d.taken_over("s1", "a");
        assert_eq!((groups(&d, "lobby"), groups(&d, "kitchen")), (0, 1));

        // g missed the resume back on a (its listener was away): a and b both say a.
        let snapshot = |node: &str| {
            vec![PresenceEvent {
                keys: Some(vec!["chat.group.lobby".into()]),
                ..connected("s1", "ada", node)
            }]
        };
        for a_first in [false, true] {
            let mut g = PresenceView::new("g", GRACE);
            g.on_event(connected("s1", "ada", "a"), t0);
            g.taken_over("s1", "b");
            g.asking(1);
            let mut answers = [("b", snapshot("a")), ("a", snapshot("a"))];
            if a_first {
                answers.reverse();
            }
            for (from, snap) in answers {
                g.answer(from, 1, snap, &[], t0, false);
            }
            let online = g.online(None, Some("lobby"), None);
            assert_eq!(online.len(), 1, "a first: {a_first}");
            assert_eq!(online[0].node, "a", "a first: {a_first}");
        }
    }

    #[test]
    fn a_gateway_that_stops_announces_its_sessions_only_with_no_live_peer() {
        let t0 = Instant::now();
        let period = Duration::from_secs(5);
        let mut a = PresenceView::new("a", GRACE);
        a.opened("s1", "ada", None, None);
        a.on_event(connected("s2", "bob", "b"), t0);
        a.on_gateway("b", "1", true, period, t0);
        assert!(
            a.left_alone(t0, t0).is_empty(),
            "b announces them after the grace"
        );
        // A drain longer than b's lifetime: a stopped hearing b when it began, and
        // b's silence since says nothing of it.
        let later = t0 + period * 10;
        assert!(a.left_alone(t0, later).is_empty());
        // b stopped announcing long before the shutdown: only a's own session, once.
        let gone = a.left_alone(later, later);
        assert_eq!(
            gone.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            ["s1"]
        );
        assert!(a.left_alone(later, later).is_empty());
        assert!(!a.user_online("ada", None));
    }

    #[test]
    fn subscriptions_say_whether_they_changed() {
        let mut v = PresenceView::new("a", GRACE);
        v.opened("s1", "ada", None, None);
        let lobby: BTreeSet<String> = ["chat.group.lobby".to_string()].into();
        assert!(v.subscriptions("s1", lobby.clone()), "new keys");
        assert!(!v.subscriptions("s1", lobby.clone()), "the same keys again");
        assert!(v.subscriptions("s1", BTreeSet::new()), "all dropped");
        assert!(
            v.subscriptions("s9", lobby),
            "a session the view does not know"
        );
    }

    #[test]
    fn presence_by_channel_and_group_follows_subscriptions() {
        let mut v = PresenceView::new("a", GRACE);
        v.opened("s1", "ada", None, None);
        v.opened("s2", "bob", Some("voice"), None);
        v.subscriptions(
            "s1",
            ["chat.group.lobby".to_string(), "chat.all".to_string()].into(),
        );
        v.subscriptions("s2", ["chat.group.kitchen".to_string()].into());
        let users = |o: Vec<Online>| o.into_iter().map(|o| o.user).collect::<Vec<_>>();
        assert_eq!(users(v.online(Some("chat"), None, None)), ["ada", "bob"]);
        assert_eq!(users(v.online(Some("chat"), Some("lobby"), None)), ["ada"]);
        assert_eq!(users(v.online(None, Some("kitchen"), None)), ["bob"]);
        assert_eq!(users(v.online(Some("voice"), None, None)), ["bob"]);
        assert!(v.online(Some("tickets"), None, None).is_empty());
    }

    #[test]
    fn a_tenant_sees_only_its_own_sessions_also_through_events_and_snapshots() {
        let mut v = PresenceView::new("gw-a", Duration::from_secs(60));
        assert!(v.opened("s1", "anna", None, Some("acme")));
        assert!(v.opened("s2", "gus", None, Some("globex")));
        v.on_event(
            PresenceEvent {
                tenant: Some("acme".into()),
                ..connected("s3", "arne", "gw-b")
            },
            Instant::now(),
        );
        let users = |o: Vec<Online>| o.into_iter().map(|o| o.user).collect::<Vec<_>>();
        assert_eq!(users(v.online(None, None, Some("acme"))), ["anna", "arne"]);
        assert_eq!(users(v.online(None, None, Some("globex"))), ["gus"]);
        assert!(
            v.online(None, None, None).is_empty(),
            "no session without a tenant"
        );
        // A gateway that starts learns the tenants from the snapshot.
        let mut fresh = PresenceView::new("gw-c", Duration::from_secs(60));
        fresh.merge(v.snapshot(), Instant::now(), true);
        assert_eq!(users(fresh.online(None, None, Some("globex"))), ["gus"]);
        assert_eq!(fresh.tenant_of("s3").as_deref(), Some("acme"));
    }

    fn keys_of(batch: &[Outgoing]) -> Vec<(String, String, String)> {
        batch
            .iter()
            .map(|e| (e.key.clone(), e.session.clone(), e.body.clone()))
            .collect()
    }

    fn ev(key: &str, session: &str, body: &str) -> (String, String, String) {
        (key.into(), session.into(), body.into())
    }

    #[test]
    fn the_outbox_publishes_again_what_was_not_confirmed_first_and_in_order() {
        let mut o = Outbox::new(100);
        o.push("client.connected", "s1", "m1".into(), "c1".into());
        o.push("client.connected", "s2", "m2".into(), "c2".into());
        o.push("client.disconnected", "s1", "m3".into(), "d1".into());
        let batch = o.take(2);
        assert_eq!(o.len(), 3, "taken ones count until settled");
        o.push("client.disconnected", "s2", "m4".into(), "d2".into());
        // The first was confirmed, the second not.
        o.settle(batch.into_iter().skip(1).collect());
        assert_eq!(
            keys_of(&o.take(10)),
            vec![
                ev("client.connected", "s2", "c2"),
                ev("client.disconnected", "s1", "d1"),
                ev("client.disconnected", "s2", "d2"),
            ]
        );
        o.settle(Vec::new());
        assert!(o.is_empty());
    }

    #[test]
    fn a_waiting_client_subscriptions_is_replaced_by_its_sessions_newer_one_and_never_overtakes() {
        let mut o = Outbox::new(100);
        o.push("client.connected", "s1", "m1".into(), "c1".into());
        o.push("client.subscriptions", "s1", "m2".into(), "k1".into());
        o.push("client.subscriptions", "s1", "m3".into(), "k2".into());
        assert_eq!(o.len(), 2, "the newer keys replace the waiting ones");
        let first = o.take(10);
        // One in flight, the next one waits behind it.
        o.push("client.subscriptions", "s1", "m4".into(), "k3".into());
        o.push("client.subscriptions", "s1", "m5".into(), "k4".into());
        o.push("client.disconnected", "s1", "m6".into(), "d1".into());
        // After a leave, a later subscriptions event does not jump ahead of it.
        o.push("client.subscriptions", "s1", "m7".into(), "k5".into());
        o.settle(first);
        assert_eq!(
            keys_of(&o.take(10)),
            vec![
                ev("client.connected", "s1", "c1"),
                ev("client.subscriptions", "s1", "k2"),
                ev("client.subscriptions", "s1", "k4"),
                ev("client.disconnected", "s1", "d1"),
                ev("client.subscriptions", "s1", "k5"),
            ]
        );
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_client_subscriptions_first_then_the_oldest_event() {
        let mut o = Outbox::new(3);
        o.push("client.connected", "s1", "m1".into(), "c1".into());
        o.push("client.subscriptions", "s1", "m2".into(), "k1".into());
        o.push("client.connected", "s2", "m3".into(), "c2".into());
        let dropped = o.push("client.connected", "s3", "m4".into(), "c3".into());
        assert_eq!(dropped.map(|d| d.body), Some("k1".into()));
        let dropped = o.push("client.connected", "s4", "m5".into(), "c4".into());
        assert_eq!(dropped.map(|d| d.body), Some("c1".into()));
        assert_eq!(o.len(), 3);
        // s1's keys were dropped: new ones are queued afresh, at the end.
        o.push("client.subscriptions", "s1", "m6".into(), "k2".into());
        assert_eq!(
            keys_of(&o.take(10)),
            vec![
                ev("client.connected", "s3", "c3"),
                ev("client.connected", "s4", "c4"),
                ev("client.subscriptions", "s1", "k2"),
            ]
        );
    }

    #[test]
    fn a_resync_answer_removes_the_sessions_its_peer_no_longer_holds_and_keeps_those_learnt_since()
    {
        let mut v = PresenceView::new("b", GRACE);
        let now = Instant::now();
        v.on_event(connected("gone", "ada", "a"), Instant::now());
        v.on_event(connected("kept", "bob", "a"), Instant::now());
        v.on_event(connected("other", "cy", "c"), Instant::now());
        v.opened("mine", "dan", None, None);
        v.asking(7);
        // Opened on a after a took its snapshot, and heard of first.
        v.on_event(connected("new", "eve", "a"), Instant::now());
        // a no longer holds "gone"; it says "mine" is still with b (b knows better).
        let mut mine_there = connected("mine", "dan", "b");
        mine_there.reason = None;
        v.answer(
            "a",
            7,
            vec![
                connected("kept", "bob", "a"),
                connected("fresh", "fay", "a"),
                connected("mine-closed", "gus", "b"),
                mine_there,
            ],
            &[],
            now,
            true,
        );
        let sessions: BTreeSet<String> = v
            .online(None, None, None)
            .into_iter()
            .map(|o| o.session)
            .collect();
        assert_eq!(
            sessions,
            ["fresh", "kept", "mine", "new", "other"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        assert!(!v.user_online("ada", None));
        // An answer to an older request removes nothing.
        v.asking(8);
        v.answer("a", 7, Vec::new(), &[], now, true);
        assert!(v.user_online("bob", None));
    }

    #[test]
    fn a_gateway_cut_off_is_told_which_of_its_sessions_were_announced_lost() {
        // n holds s1 (open, subscribed) and s2; n is cut off from RabbitMQ. a, elected,
        // counts it dead and announces both gone; b hears that.
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut a = PresenceView::new("a", GRACE);
        let mut b = PresenceView::new("b", GRACE);
        for v in [&mut a, &mut b] {
            v.on_gateway("n", "1", true, period, t0);
            v.on_event(connected("s1", "ada", "n"), t0);
            v.on_event(connected("s2", "bob", "n"), t0);
        }
        assert!(a.due(t0 + period * 3).is_empty());
        let lost = a.due(t0 + period * 3 + GRACE);
        assert_eq!(lost.len(), 2);
        assert_eq!(a.lost_of("n"), ["s1", "s2"]);
        for (session, h, reason) in lost {
            let e = PresenceEvent {
                event: "client.disconnected".into(),
                reason: Some(reason.into()),
                by: Some("a".into()),
                ..connected(&session, &h.user, &h.node)
            };
            b.on_event(e, t0 + period * 3 + GRACE);
        }
        assert_eq!(b.lost_of("n"), ["s1", "s2"]);
        assert!(b.lost_of("a").is_empty());

        // n kept both open; s2's connection was lost meanwhile (its `expired` due).
        let mut n = PresenceView::new("n", GRACE);
        assert!(n.opened("s1", "ada", None, None));
        assert!(n.subscriptions("s1", ["chat.all".to_string()].into()));
        assert!(n.opened("s2", "bob", None, None));
        let back = t0 + period * 3 + GRACE * 2;
        n.deaf(back);
        assert!(n.ended("s2", false, back).is_none(), "away");
        n.asking(1);
        let again = n.answer("a", 1, a.snapshot(), &a.lost_of("n"), back, true);
        let events = event_session_node(&again);
        assert_eq!(
            events,
            [
                ("client.connected", "s1", "n"),
                ("client.subscriptions", "s1", "n")
            ]
        );
        assert_eq!(again[1].keys, Some(vec!["chat.all".to_string()]));
        // s2's leave went out: its own `expired` would be a second one.
        assert!(n.due(back + GRACE).is_empty(), "no second leave for s2");
        assert!(n.opened("s2", "bob", None, None), "resumed: a new connect");
        // b answers the same: announced once.
        assert!(n
            .answer("b", 1, b.snapshot(), &b.lost_of("n"), back, true)
            .is_empty());
        // s1's connection is lost after it was announced again, and a later answer
        // (sent before its peer heard the announcement) names it once more: it stays
        // away, and its `expired` is due after the grace, not forgotten.
        assert!(n.ended("s1", false, back).is_none(), "away");
        assert!(n
            .answer("b", 2, Vec::new(), &["s1".into()], back, true)
            .is_empty());
        let expired = n.due(back + GRACE);
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!((expired[0].0.as_str(), expired[0].2), ("s1", "expired"));
        assert!(n.opened("s1", "ada", None, None), "back: a new connect");
        assert!(n.subscriptions("s1", ["chat.all".to_string()].into()));
        // The peers hear s1 again: no longer lost.
        for v in [&mut a, &mut b] {
            v.on_event(connected("s1", "ada", "n"), back);
            assert_eq!(v.lost_of("n"), ["s2"]);
            v.on_event(connected("s2", "bob", "n"), back);
            assert!(v.lost_of("n").is_empty());
        }
        // Cut off again later and announced lost again: announced again.
        n.deaf(back + GRACE * 4);
        let again = n.answer("a", 2, Vec::new(), &["s1".into()], back + GRACE * 4, true);
        assert_eq!(again.len(), 2);

        // A node that comes back as another process: its earlier sessions are dead.
        // (a's own gateway_lost, echoed, was remembered when a published it.)
        a.on_event(
            PresenceEvent {
                event: "client.disconnected".into(),
                reason: Some("gateway_lost".into()),
                by: Some("b".into()),
                ..connected("s3", "cy", "n")
            },
            back,
        );
        assert_eq!(a.lost_of("n"), ["s3"]);
        a.on_gateway("n", "1", true, period, back);
        assert_eq!(a.lost_of("n"), ["s3"], "the same process: kept");
        a.on_gateway("n", "2", true, period, back);
        assert!(a.lost_of("n").is_empty());
    }

    #[test]
    fn a_dead_peers_session_announced_gone_while_this_gateway_was_cut_off_is_not_announced_again() {
        // a < b < d; d holds s1. a's broker link is down while d dies: b, elected (a
        // looks dead to it), announces s1 gateway_lost, which a never hears.
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut a = PresenceView::new("a", GRACE);
        let mut b = PresenceView::new("b", GRACE);
        a.on_gateway("b", "1", true, period, t0);
        a.on_gateway("d", "1", true, period, t0);
        b.on_gateway("d", "1", true, period, t0);
        a.on_event(connected("s1", "ada", "d"), t0);
        b.on_event(connected("s1", "ada", "d"), t0);
        let mut now = t0;
        let mut from_b = Vec::new();
        while now < t0 + period * 9 + GRACE {
            now += period;
            a.deaf(now);
            assert!(a.due(now).is_empty(), "a hears nothing");
            from_b.extend(b.due(now));
        }
        assert_eq!(from_b.len(), 1, "{from_b:?}");
        assert_eq!((from_b[0].0.as_str(), from_b[0].2), ("s1", "gateway_lost"));
        // a is back and resyncs: b no longer lists s1, and says it saw it gone.
        a.asking(1);
        a.told_gone(1, &b.tombstones(now), now);
        a.answer("b", 1, b.snapshot(), &b.lost_of("a"), now, true);
        assert!(!a.user_online("ada", None), "s1 is gone");
        assert!(a.online(None, None, None).is_empty());
        // b announcing, d silent: a, the smallest live node, publishes nothing for s1.
        let back = now;
        while now < back + period * 3 + GRACE * 2 {
            now += period;
            a.on_gateway("b", "1", true, period, now);
            assert!(a.due(now).is_empty(), "s1's leave went out already");
            assert!(!a.user_online("ada", None));
        }
        // A gateway_lost that is no longer recent enough to be remembered gone is
        // still told: it has not connected again since.
        assert_eq!(b.tombstones(now + GRACE * 10), ["s1"]);
    }

    #[test]
    fn a_session_resumed_elsewhere_while_this_gateway_was_cut_off_is_not_announced_lost_with_its_old_gateway(
    ) {
        // a < b < c < d; d holds s1. a's broker link is down while s1 is resumed on c
        // (its takeover never reaches a) and d dies.
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut a = PresenceView::new("a", GRACE);
        let mut b = PresenceView::new("b", GRACE);
        let mut c = PresenceView::new("c", GRACE);
        for v in [&mut a, &mut b, &mut c] {
            for n in ["b", "c", "d"] {
                v.on_gateway(n, "1", true, period, t0);
            }
            v.on_event(connected("s1", "ada", "d"), t0);
        }
        assert!(!c.opened("s1", "ada", Some("chat"), None), "a resume");
        assert!(c.subscriptions("s1", ["chat.all".to_string()].into()));
        for v in [&mut b, &mut c] {
            v.taken_over("s1", "c");
            v.on_event(
                PresenceEvent {
                    event: "client.subscriptions".into(),
                    keys: Some(vec!["chat.all".into()]),
                    ..connected("s1", "ada", "c")
                },
                t0,
            );
        }
        let mut now = t0;
        while now < t0 + period * 9 + GRACE {
            now += period;
            a.deaf(now);
            assert!(a.due(now).is_empty(), "a hears nothing");
            for v in [&mut b, &mut c] {
                for n in ["b", "c"] {
                    v.on_gateway(n, "1", true, period, now);
                }
                assert!(v.due(now).is_empty(), "s1 lives on c");
            }
        }
        // a is back and resyncs: b and c give s1 to c.
        a.asking(1);
        for (from, v) in [("b", &b), ("c", &c)] {
            a.told_gone(1, &v.tombstones(now), now);
            a.answer(from, 1, v.snapshot(), &v.lost_of("a"), now, true);
        }
        let online = a.online(Some("chat"), None, None);
        assert_eq!(online.len(), 1, "{online:?}");
        assert_eq!(
            (online[0].session.as_str(), online[0].node.as_str()),
            ("s1", "c")
        );
        // b and c announcing, d silent: nobody's session is lost.
        let back = now;
        while now < back + period * 3 + GRACE * 2 {
            now += period;
            for n in ["b", "c"] {
                a.on_gateway(n, "1", true, period, now);
            }
            assert!(a.due(now).is_empty(), "s1 lives on c");
            assert!(a.user_online("ada", None));
        }
        // An answer older than what this gateway learnt since does not move it back.
        a.asking(2);
        a.taken_over("s1", "b");
        a.answer("c", 2, c.snapshot(), &[], now, true);
        assert_eq!(a.online(None, None, None)[0].node, "b");
    }
}
