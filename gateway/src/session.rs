//! Sessions: ids (and the owner each carries), and the pure bookkeeping a connection
//! keeps for its session — sequence numbers of unacknowledged deliveries and
//! ref-counted subscriptions — plus the gateway-local registry used to hand a session
//! over when a client reconnects before its previous connection noticed it was gone.
//! Nothing is declared on the broker per session: what a session receives comes from
//! the outbound stream (`hub.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A fresh session id for `owner` (the verified user id; empty for anonymous
/// development sessions): 32 random lower-case hex digits, `-`, and 16 hex digits of
/// the owner's digest ([`owned_by`]). A valid routing-key segment.
pub fn new_session_id(owner: &str) -> String {
    format!("{}-{}", uuid::Uuid::new_v4().simple(), owner_tag(owner))
}

/// Whether session id `id` was opened by `owner`: only its owner may resume a session,
/// so a session id seen elsewhere is no key to another user's messages. The check
/// needs no state: the id carries a digest of its owner's user id.
pub fn owned_by(id: &str, owner: &str) -> bool {
    id.rsplit_once('-')
        .is_some_and(|(random, tag)| random.len() == 32 && tag == owner_tag(owner))
}

/// The owner a session id carries for `user` of `tenant` (tenant mode): user ids need
/// be unique only within a tenant, so the same user id of two tenants is two owners.
/// Without a tenant the owner is the user id alone, as before tenants.
pub fn owner_of(user: &str, tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("{t}\0{user}"),
        None => user.to_string(),
    }
}

/// Whether `id` has the shape of an id [`new_session_id`] issues.
pub fn well_formed(id: &str) -> bool {
    id.split_once('-').is_some_and(|(random, tag)| {
        random.len() == 32
            && tag.len() == 16
            && (random.bytes().chain(tag.bytes())).all(|b| b.is_ascii_hexdigit())
    })
}

fn owner_tag(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"warren-session-owner\0")
        .chain_update(owner.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Unacknowledged deliveries of one connection, by sequence number (1, 2, 3, ...).
/// `T` is whatever is kept per delivery until the client acknowledges it.
#[derive(Debug)]
pub struct Inflight<T> {
    last_seq: u64,
    pending: BTreeMap<u64, T>,
}

impl<T> Default for Inflight<T> {
    fn default() -> Self {
        Inflight {
            last_seq: 0,
            pending: BTreeMap::new(),
        }
    }
}

impl<T> Inflight<T> {
    /// Records a delivery and gives it the next sequence number.
    pub fn push(&mut self, item: T) -> u64 {
        self.last_seq += 1;
        self.pending.insert(self.last_seq, item);
        self.last_seq
    }

    /// Takes out every delivery with sequence number ≤ `seq` (cumulative ack), in order.
    pub fn ack_upto(&mut self, seq: u64) -> Vec<T> {
        let rest = self.pending.split_off(&seq.saturating_add(1));
        std::mem::replace(&mut self.pending, rest)
            .into_values()
            .collect()
    }

    /// Takes out everything not acknowledged (on disconnect), in order.
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.pending).into_values().collect()
    }

    /// How many deliveries await acknowledgement.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing awaits acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest delivery not acknowledged.
    pub fn first_seq(&self) -> Option<u64> {
        self.pending.keys().next().copied()
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// The binding keys a session holds: a set. `subscribe` adds the keys it names and
/// `unsubscribe` removes them, whichever frames named them before, so that a frame
/// sent again (a `hello` naming the subscriptions of a resumed session, and the
/// `subscribe` frames the client sends after it) changes nothing. A client that keeps
/// several subscriptions sharing a key unbinds it when the last of them goes, as the
/// SDK does.
#[derive(Debug, Default)]
pub struct Subscriptions {
    keys: HashSet<String>,
}

impl Subscriptions {
    /// Adds `key`; true when the key must now be bound (it was not held).
    pub fn add(&mut self, key: &str) -> bool {
        !self.keys.contains(key) && self.keys.insert(key.to_string())
    }

    /// Removes `key`; true when the key must now be unbound (also when it was not
    /// known here: unbinding a key nobody bound is harmless).
    pub fn remove(&mut self, key: &str) -> bool {
        self.keys.remove(key);
        true
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Whether a message with routing key `key` is one of these subscriptions': `key`
    /// is held, or a held topic pattern matches it.
    pub fn receives(&self, key: &str) -> bool {
        self.keys.contains(key)
            || self
                .keys
                .iter()
                .any(|p| crate::hub::is_pattern(p) && warren_protocol::amqp::topic_matches(p, key))
    }

    /// How many distinct keys are held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys held.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.keys.iter()
    }
}

/// A request to a connection to give its session up (a newer connection resumed it).
#[derive(Debug)]
pub struct Takeover;

/// Where a connection is asked to give its session up: at most one request is held
/// (a second one, while the first is pending, is refused, as the connection is leaving
/// anyway). Much smaller than a channel, which matters with one per idle connection.
#[derive(Debug, Default)]
pub struct TakeoverSignal {
    asked: Mutex<Option<Takeover>>,
    notify: Notify,
}

impl TakeoverSignal {
    /// Asks the connection to give the session up; false when it was asked already.
    pub fn ask(&self, takeover: Takeover) -> bool {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.is_some() {
            return false;
        }
        *asked = Some(takeover);
        self.notify.notify_one();
        true
    }

    /// Resolves with the request once the connection is asked.
    pub async fn asked(&self) -> Takeover {
        loop {
            if let Some(t) = self.asked.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return t;
            }
            // notify_one() stores a permit when nobody waits, so a request made
            // between the check above and this await is not missed.
            self.notify.notified().await;
        }
    }
}

/// Sessions served by this gateway: session id → the connection serving it.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Held>>,
}

/// The connection serving a session here.
#[derive(Debug)]
struct Held {
    conn: u64,
    signal: Arc<TakeoverSignal>,
    /// When its client asked for the session (its `hello` was taken up), in ms since
    /// the epoch: a takeover request from another gateway is compared with it.
    since_ms: u64,
    /// The same, on this gateway's monotonic clock: another claim here is compared
    /// with it (a wall clock set back must not make a new resume look older).
    asked: std::time::Instant,
}

/// A session claim refused: a connection of this gateway asked for the session later
/// serves it ([`Registry::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newer;

/// When a client asked for a session (its `hello` was taken up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskedAt {
    /// On this gateway's monotonic clock.
    pub at: std::time::Instant,
    /// In ms since the epoch, as takeovers between gateways date it.
    pub epoch_ms: u64,
}

impl AskedAt {
    /// Now.
    pub fn now() -> AskedAt {
        AskedAt {
            at: std::time::Instant::now(),
            epoch_ms: crate::inbound::now_ms_epoch(),
        }
    }
}

/// What a takeover request from another gateway did here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// No connection here serves the session.
    NotHere,
    /// The connection serving it was asked to give it up (or had been already).
    Asked,
    /// The connection serving it claimed it after the other gateway's resume: the
    /// request is older than the connection it would close, which keeps the session.
    /// `since_ms`: when that connection's client asked for it.
    Newer { since_ms: u64 },
}

impl Registry {
    /// Records that connection `conn`, whose client asked for `session` at `asked`,
    /// serves it; returns the takeover signal of the connection
    /// that served it before, if any.
    ///
    /// # Errors
    /// [`Newer`] when the connection serving it here was asked for later (or in the
    /// same millisecond), which keeps it: this one's `hello` waited (for the auth
    /// service, a look at a stream's tail) while its client gave it up and resumed
    /// the session again here. Replacing it closed the client's live connection with
    /// `4502`, which clients do not reconnect from.
    pub fn claim(
        &self,
        session: &str,
        conn: u64,
        signal: Arc<TakeoverSignal>,
        asked: AskedAt,
    ) -> Result<Option<Arc<TakeoverSignal>>, Newer> {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(session).is_some_and(|h| h.asked >= asked.at) {
            return Err(Newer);
        }
        let held = Held {
            conn,
            signal,
            since_ms: asked.epoch_ms,
            asked: asked.at,
        };
        Ok(map.insert(session.to_string(), held).map(|h| h.signal))
    }

    /// Forgets `session` if connection `conn` still holds it.
    ///
    /// Returns false when another connection of this gateway holds the session now (the
    /// client resumed it here before `conn` ended): the session lives on.
    pub fn release(&self, session: &str, conn: u64) -> bool {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(session) {
            Some(h) if h.conn == conn => {
                map.remove(session);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Asks the connection serving `session` here, if any, to give it up: a client
    /// resumed it on another gateway at `resumed_ms` (ms since the epoch; `None` from
    /// a gateway that does not say). A connection that claimed the session later than
    /// that is the client's newer one, and keeps it: the request was on its way while
    /// the client moved again (within the gateways' clock skew, the order is a guess).
    /// So does one that claimed it in the same millisecond: closing it would end the
    /// client (`4502` is not reconnected), while keeping a connection the client left
    /// costs only until its heartbeat times out.
    pub fn ask_to_release(&self, session: &str, resumed_ms: Option<u64>) -> Release {
        let map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(session) {
            None => Release::NotHere,
            Some(h) if resumed_ms.is_some_and(|at| h.since_ms >= at) => Release::Newer {
                since_ms: h.since_ms,
            },
            Some(h) => {
                h.signal.ask(Takeover);
                Release::Asked
            }
        }
    }

    /// Whether a connection of this gateway serves `session`.
    pub fn holds(&self, session: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(session)
    }

    /// How many sessions this gateway serves.
    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether this gateway serves no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sequence_numbers_start_at_one_and_increase() {
        let mut f = Inflight::default();
        assert_eq!(f.push('a'), 1);
        assert_eq!(f.push('b'), 2);
        assert_eq!(f.last_seq(), 2);
    }

    #[test]
    fn cumulative_ack_takes_exactly_the_deliveries_up_to_seq() {
        let mut f = Inflight::default();
        for c in ['a', 'b', 'c', 'd'] {
            f.push(c);
        }
        assert_eq!(f.ack_upto(2), vec!['a', 'b']);
        assert_eq!(f.ack_upto(2), Vec::<char>::new());
        assert_eq!(f.len(), 2);
        assert_eq!(f.drain(), vec!['c', 'd']);
        assert!(f.is_empty());
        assert_eq!(f.push('e'), 5, "sequence numbers are never reused");
    }

    #[test]
    fn ack_beyond_the_last_seq_takes_everything_and_ack_of_zero_nothing() {
        let mut f = Inflight::default();
        f.push(1);
        assert!(f.ack_upto(0).is_empty());
        assert_eq!(f.ack_upto(u64::MAX), vec![1]);
    }

    #[test]
    fn a_key_is_bound_once_and_unbound_by_one_removal_however_often_it_was_added() {
        let mut s = Subscriptions::default();
        assert!(s.add("chat.all"));
        assert!(!s.add("chat.all"));
        assert_eq!(s.len(), 1);
        assert!(s.remove("chat.all"));
        assert!(!s.contains("chat.all"));
        assert!(s.is_empty());
        assert!(s.remove("chat.group.x"), "unknown keys are unbound anyway");
        s.add("chat.group.a");
        s.add("tickets.event.ticket.*");
        assert!(s.receives("chat.group.a") && !s.receives("chat.group.b"));
        assert!(s.receives("tickets.event.ticket.created"));
        assert!(!s.receives("tickets.event.order.created"));
    }

    #[test]
    fn the_registry_hands_back_the_previous_holder_and_releases_only_its_own() {
        let r = Registry::default();
        assert!(r
            .claim("s", 1, Arc::default(), AskedAt::now())
            .unwrap()
            .is_none());
        assert!(r
            .claim("s", 2, Arc::default(), AskedAt::now())
            .unwrap()
            .is_some());
        assert!(
            !r.release("s", 1),
            "connection 1 ended after 2 resumed the session here: it lives on"
        );
        assert_eq!(r.len(), 1);
        assert!(r.release("s", 2));
        assert!(r.is_empty());
    }

    /// A `hello` that waited claims the session after the client resumed it again
    /// here: the newer connection keeps it and is not asked to give it up.
    #[tokio::test]
    async fn a_claim_asked_for_before_the_connection_holding_the_session_is_refused() {
        let r = Registry::default();
        let waited = AskedAt::now();
        let live = Arc::new(TakeoverSignal::default());
        let resumed = AskedAt {
            at: waited.at + Duration::from_millis(1),
            // A wall clock set back meanwhile changes nothing here.
            epoch_ms: waited.epoch_ms - 5_000,
        };
        r.claim("s", 2, live.clone(), resumed).unwrap();
        assert_eq!(r.claim("s", 1, Arc::default(), waited).err(), Some(Newer));
        assert_eq!(r.claim("s", 1, Arc::default(), resumed).err(), Some(Newer));
        let none = tokio::time::timeout(Duration::from_millis(20), live.asked()).await;
        assert!(none.is_err(), "the live connection was not asked");
        assert!(!r.release("s", 1) && r.holds("s"), "still the live one's");
        // A later one takes it over, as ever.
        let later = AskedAt {
            at: resumed.at + Duration::from_millis(1),
            ..resumed
        };
        assert!(r.claim("s", 3, Arc::default(), later).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_takeover_request_older_than_the_connection_here_leaves_it_the_session() {
        let r = Registry::default();
        let signal = Arc::new(TakeoverSignal::default());
        let before = crate::inbound::now_ms_epoch();
        r.claim("s", 1, signal.clone(), AskedAt::now()).unwrap();
        assert_eq!(r.ask_to_release("t", Some(before)), Release::NotHere);
        let since = r.sessions.lock().unwrap().get("s").unwrap().since_ms;
        // Resumed elsewhere before this connection claimed it: a stale request, told
        // when the connection here was asked for.
        assert_eq!(
            r.ask_to_release("s", Some(before - 1)),
            Release::Newer { since_ms: since }
        );
        // In the same millisecond: which came first cannot be told; the connection
        // here keeps the session rather than be closed for good.
        assert_eq!(
            r.ask_to_release("s", Some(since)),
            Release::Newer { since_ms: since }
        );
        let none = tokio::time::timeout(Duration::from_millis(20), signal.asked()).await;
        assert!(none.is_err(), "the connection was not asked");
        // Resumed elsewhere later, or by a gateway that does not say when: released.
        let later = crate::inbound::now_ms_epoch() + 1;
        assert_eq!(r.ask_to_release("s", Some(later)), Release::Asked);
        assert!(tokio::time::timeout(Duration::from_secs(1), signal.asked())
            .await
            .is_ok());
        assert_eq!(r.ask_to_release("s", None), Release::Asked);
    }

    #[tokio::test]
    async fn a_takeover_signal_holds_one_request_until_the_connection_takes_it() {
        let signal = TakeoverSignal::default();
        assert!(signal.ask(Takeover));
        assert!(
            !signal.ask(Takeover),
            "a second request while one is pending is refused"
        );
        // Asked before anyone waited: the request is still there.
        let t = tokio::time::timeout(Duration::from_secs(1), signal.asked()).await;
        assert!(t.is_ok());
        // Nothing pending now: waiting does not resolve.
        let none = tokio::time::timeout(Duration::from_millis(50), signal.asked()).await;
        assert!(none.is_err());
        // Asked while waiting: resolves.
        let signal = Arc::new(signal);
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.asked().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(signal.ask(Takeover));
        let got = tokio::time::timeout(Duration::from_secs(1), waiter).await;
        assert!(got.is_ok_and(|r| r.is_ok()));
    }

    #[test]
    fn session_ids_are_valid_routing_segments() {
        let id = new_session_id("ada");
        assert!(warren_protocol::amqp::validate_segment("session", &id).is_ok());
        assert_ne!(id, new_session_id("ada"));
    }

    #[test]
    fn issued_ids_are_well_formed_and_others_are_not() {
        assert!(well_formed(&new_session_id("bob")));
        assert!(well_formed(&new_session_id("")));
        for bad in ["gone0000", "", "-", "x-y", &"a".repeat(49)] {
            assert!(!well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn a_session_id_is_owned_by_the_user_that_opened_it_and_no_other() {
        let id = new_session_id("ada");
        assert!(owned_by(&id, "ada"));
        assert!(!owned_by(&id, "bob"));
        assert!(!owned_by(&id, ""));
        let acme = new_session_id(&owner_of("ada", Some("acme")));
        assert!(owned_by(&acme, &owner_of("ada", Some("acme"))));
        assert!(!owned_by(&acme, &owner_of("ada", Some("globex"))));
        assert!(!owned_by(&acme, &owner_of("ada", None)));
        assert_eq!(owner_of("ada", None), "ada");
        let anonymous = new_session_id("");
        assert!(owned_by(&anonymous, ""));
        assert!(!owned_by(&anonymous, "ada"));
        // Forged or older-format ids belong to nobody.
        assert!(!owned_by("0123456789abcdef0123456789abcdef", "ada"));
        let (random, _) = id.rsplit_once('-').unwrap();
        assert!(!owned_by(&format!("{random}-0000000000000000"), "ada"));
    }
}
