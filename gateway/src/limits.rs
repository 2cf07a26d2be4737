//! Limits against abuse: connections per IP address and per user, new connections per
//! IP address per second, and frames per connection per second, so that one abusive
//! client cannot exhaust the gateway or the broker while everyone else is unaffected.
//!
//! [`TokenBucket`] is pure (time is passed in) and unit-tested; [`Limiter`] keeps the
//! per-IP and per-user counts, released by RAII [`Slot`]s when a connection ends;
//! [`CallLimiter`] holds the HTTP API calls made with a user's token to what one
//! session of that user may do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token, or says how long until one is there (the token is then
    /// already spoken for: the caller waits that long and goes on).
    pub fn take_or_wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            return None;
        }
        if self.rate <= 0.0 {
            return Some(Duration::from_secs(1));
        }
        Some(Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// Whether a token is there now (none is taken).
    fn has_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Whether the bucket is full (nothing to remember about it).
    fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// The address per-IP limits count a peer under: an IPv4-mapped IPv6 address
/// (`::ffff:127.0.0.1`, what a dual-stack `[::]` listener sees of an IPv4 peer) as its
/// IPv4 address, and an IPv6 address by its /64 — one subscriber's network, from
/// which a client can take any of 2^64 addresses at will. The loopback `::1` stays
/// itself, so that it is still known as loopback (cut to `::`, it was not).
pub fn client_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if !v6.is_loopback() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        other => other,
    }
}

/// What the limiter is configured with (from [`crate::Config`]); 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Open connections per client IP address.
    pub connections_per_ip: u32,
    /// New connections per client IP address per second (bursts of twice this).
    pub new_connections_per_ip_per_s: u32,
    /// Open sessions per user.
    pub connections_per_user: u32,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many open connections from this IP address.
    ConnectionsPerIp,
    /// Too many new connections from this IP address in the last second.
    NewConnectionsPerIp,
    /// Too many open sessions of this user.
    ConnectionsPerUser,
}

impl Refused {
    /// A sentence for logs and error frames.
    pub fn message(self, limit: u32) -> String {
        match self {
            Refused::ConnectionsPerIp => {
                format!("at most {limit} connections from one address (max_connections_per_ip)")
            }
            Refused::NewConnectionsPerIp => format!(
                "at most {limit} new connections per second from one address \
                 (max_new_connections_per_ip_per_s)"
            ),
            Refused::ConnectionsPerUser => {
                format!("at most {limit} sessions of one user (max_connections_per_user)")
            }
        }
    }
}

#[derive(Debug)]
struct IpState {
    open: u32,
    bucket: TokenBucket,
    /// Credentials refused to this address (the HTTP API's keys and tokens), at the
    /// new-connection rate: guessing is as slow as connecting.
    refused: TokenBucket,
}

/// A map from which idle entries are swept out once it grows.
#[derive(Debug)]
struct Swept<K, V> {
    map: HashMap<K, V>,
    /// The size at which idle entries are next swept out: twice what the last sweep
    /// left (at least [`SWEEP_FROM`]), so that busy entries, which no sweep removes,
    /// do not make every insertion a sweep.
    sweep_at: usize,
    /// Sweeps so far.
    sweeps: u64,
}

impl<K, V> Default for Swept<K, V> {
    fn default() -> Self {
        Swept {
            map: HashMap::new(),
            sweep_at: 0,
            sweeps: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, V> Swept<K, V> {
    /// The entry of `key` (`new()` when absent), once the entries `idle` says are idle
    /// were forgotten if the map grew.
    fn entry(&mut self, key: K, idle: impl Fn(&mut V) -> bool, new: impl FnOnce() -> V) -> &mut V {
        if self.map.len() > self.sweep_at.max(SWEEP_FROM) {
            self.map.retain(|_, v| !idle(v));
            self.sweep_at = self.map.len().saturating_mul(2);
            self.sweeps += 1;
        }
        self.map.entry(key).or_insert_with(new)
    }
}

#[derive(Debug, Default)]
struct Counts {
    ips: Swept<IpAddr, IpState>,
    users: HashMap<String, u32>,
}

impl Counts {
    /// The state of `ip` (a full bucket of `rate` when new), once addresses with no
    /// connection and a full bucket were forgotten if the map grew.
    fn ip(&mut self, ip: IpAddr, rate: u32, now: Instant) -> &mut IpState {
        self.ips.entry(
            ip,
            |st| st.open == 0 && st.bucket.full(now) && st.refused.full(now),
            || IpState {
                open: 0,
                bucket: TokenBucket::new(rate, rate.saturating_mul(2), now),
                refused: TokenBucket::new(rate, rate.saturating_mul(2), now),
            },
        )
    }
}

/// Tracked addresses from which idle ones are swept out.
const SWEEP_FROM: usize = 10_000;

/// The per-IP and per-user counts of one gateway.
#[derive(Debug)]
pub struct Limiter {
    settings: LimitSettings,
    counts: Arc<Mutex<Counts>>,
}

/// Holds one connection's place in a count; gives it back when dropped.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    key: SlotKey,
}

#[derive(Debug)]
enum SlotKey {
    Ip(IpAddr),
    User(String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match &self.key {
            SlotKey::Ip(ip) => {
                if let Some(state) = counts.ips.map.get_mut(ip) {
                    state.open = state.open.saturating_sub(1);
                    if state.open == 0 && state.bucket.full(Instant::now()) {
                        counts.ips.map.remove(ip);
                    }
                }
            }
            SlotKey::User(user) => {
                if let Some(n) = counts.users.get_mut(user) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.users.remove(user);
                    }
                }
            }
        }
    }
}

impl Limiter {
    /// A limiter with these settings.
    pub fn new(settings: LimitSettings) -> Limiter {
        Limiter {
            settings,
            counts: Arc::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> LimitSettings {
        self.settings
    }

    /// Admits a new connection from `ip`, or says which limit refuses it.
    ///
    /// # Errors
    /// [`Refused::ConnectionsPerIp`] or [`Refused::NewConnectionsPerIp`].
    pub fn admit_ip(&self, ip: IpAddr, now: Instant) -> Result<Slot, Refused> {
        let s = self.settings;
        let rate = s.new_connections_per_ip_per_s;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let state = counts.ip(ip, rate, now);
        if s.connections_per_ip > 0 && state.open >= s.connections_per_ip {
            return Err(Refused::ConnectionsPerIp);
        }
        if rate > 0 && !state.bucket.take(now) {
            return Err(Refused::NewConnectionsPerIp);
        }
        state.open += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            key: SlotKey::Ip(ip),
        })
    }

    /// `ask` of `ip`'s state (its buckets refilled at `new_connections_per_ip_per_s`);
    /// `true` when that rate is 0 (no limit).
    fn ip_bucket(&self, ip: IpAddr, now: Instant, ask: impl FnOnce(&mut IpState) -> bool) -> bool {
        let rate = self.settings.new_connections_per_ip_per_s;
        if rate == 0 {
            return true;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        ask(counts.ip(ip, rate, now))
    }

    /// Takes one of `ip`'s new-connection tokens for a request that is no connection
    /// but costs as much (`GET /presence`: a token to verify, maybe by the auth
    /// service), without holding a place among its open connections.
    ///
    /// # Errors
    /// [`Refused::NewConnectionsPerIp`].
    pub fn take_ip(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        self.ip_bucket(ip, now, |st| st.bucket.take(now))
            .then_some(())
            .ok_or(Refused::NewConnectionsPerIp)
    }

    /// Whether `ip` may present a credential now: refused when its refused
    /// credentials ([`Limiter::credential_refused`]) spent their budget, before the
    /// credential is even looked at, so that guessing keys goes no faster than
    /// `new_connections_per_ip_per_s`. A credential accepted costs nothing.
    ///
    /// # Errors
    /// [`Refused::NewConnectionsPerIp`].
    pub fn may_present_credential(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        self.ip_bucket(ip, now, |st| st.refused.has_one(now))
            .then_some(())
            .ok_or(Refused::NewConnectionsPerIp)
    }

    /// Counts a credential refused to `ip` ([`Limiter::may_present_credential`]).
    pub fn credential_refused(&self, ip: IpAddr, now: Instant) {
        self.ip_bucket(ip, now, |st| st.refused.take(now));
    }

    /// Admits a new session of `user`, or refuses it.
    ///
    /// # Errors
    /// [`Refused::ConnectionsPerUser`].
    pub fn admit_user(&self, user: &str) -> Result<Slot, Refused> {
        let limit = self.settings.connections_per_user;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.users.entry(user.to_string()).or_insert(0);
        if limit > 0 && *n >= limit {
            return Err(Refused::ConnectionsPerUser);
        }
        *n += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            key: SlotKey::User(user.to_string()),
        })
    }

    /// Admits a session of `user` whatever the limit: one that replaces a connection
    /// of `user` about to close (a resume taking its session over), so that the count
    /// stays one place per open connection.
    pub fn admit_user_replacing(&self, user: &str) -> Slot {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.users.entry(user.to_string()).or_insert(0) += 1;
        Slot {
            counts: self.counts.clone(),
            key: SlotKey::User(user.to_string()),
        }
    }
}

/// What a user's token may do over the HTTP API (`http_api.accept_jwt`): as much as
/// one more WebSocket session of that user — `max_frames_per_s` calls a second
/// (bursts of twice that) and `max_pending_requests` calls in progress at once. API
/// keys (backends) are not counted.
#[derive(Debug)]
pub struct CallLimiter {
    rate: u32,
    in_progress: u32,
    counts: Arc<Mutex<CallCounts>>,
}

#[derive(Debug, Default)]
struct CallCounts {
    users: Swept<String, CallState>,
}

#[derive(Debug)]
struct CallState {
    bucket: TokenBucket,
    in_progress: u32,
}

/// Why an HTTP API call was refused ([`CallLimiter::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRefused {
    /// More calls in the last second than `max_frames_per_s` allows.
    Rate(u32),
    /// `max_pending_requests` calls of this user are in progress.
    InProgress(u32),
}

impl CallRefused {
    /// A sentence for the refusal's body.
    pub fn message(self) -> String {
        match self {
            CallRefused::Rate(limit) => format!(
                "at most {limit} HTTP API calls per second with one user's token \
                 (max_frames_per_s)"
            ),
            CallRefused::InProgress(limit) => format!(
                "at most {limit} HTTP API calls in progress with one user's token \
                 (max_pending_requests)"
            ),
        }
    }
}

/// Holds one call's place in its user's count of calls in progress.
#[derive(Debug)]
pub struct CallSlot {
    counts: Arc<Mutex<CallCounts>>,
    user: String,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = counts.users.map.get_mut(&self.user) {
            state.in_progress = state.in_progress.saturating_sub(1);
        }
    }
}

impl CallLimiter {
    /// `rate` calls a second per user, `in_progress` at once; 0 turns a limit off.
    pub fn new(rate: u32, in_progress: u32) -> CallLimiter {
        CallLimiter {
            rate,
            in_progress,
            counts: Arc::default(),
        }
    }

    /// Admits a call of `user` (its owner key: tenant and user in tenant mode).
    ///
    /// # Errors
    /// [`CallRefused`] naming the limit.
    pub fn admit(&self, user: &str, now: Instant) -> Result<CallSlot, CallRefused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let rate = self.rate;
        let state = counts.users.entry(
            user.to_string(),
            |st| st.in_progress == 0 && st.bucket.full(now),
            || CallState {
                bucket: TokenBucket::new(rate, rate.saturating_mul(2), now),
                in_progress: 0,
            },
        );
        if self.in_progress > 0 && state.in_progress >= self.in_progress {
            return Err(CallRefused::InProgress(self.in_progress));
        }
        if rate > 0 && !state.bucket.take(now) {
            return Err(CallRefused::Rate(rate));
        }
        state.in_progress += 1;
        Ok(CallSlot {
            counts: self.counts.clone(),
            user: user.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_addresses_with_open_connections_do_not_make_every_admission_a_sweep() {
        let l = Limiter::new(settings(10, 0, 0));
        let t0 = Instant::now();
        let slots: Vec<Slot> = (0..40_000u32)
            .map(|i| {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                l.admit_ip(ip, t0).unwrap()
            })
            .collect();
        let sweeps = l.counts.lock().unwrap().ips.sweeps;
        // Every address holds a connection: each sweep removes nothing, so the next
        // waits for twice as many (one at 10,001, one at 20,001: 2, not 30,000).
        assert!(sweeps <= 3, "{sweeps} sweeps");
        drop(slots);
    }

    fn settings(per_ip: u32, rate: u32, per_user: u32) -> LimitSettings {
        LimitSettings {
            connections_per_ip: per_ip,
            new_connections_per_ip_per_s: rate,
            connections_per_user: per_user,
        }
    }

    #[test]
    fn a_users_http_calls_are_held_to_a_rate_and_a_number_in_progress() {
        let t0 = Instant::now();
        let calls = CallLimiter::new(5, 3);
        let held: Vec<CallSlot> = (0..3).map(|_| calls.admit("ada", t0).unwrap()).collect();
        assert_eq!(
            calls.admit("ada", t0).map(|_| ()),
            Err(CallRefused::InProgress(3))
        );
        assert!(calls.admit("bob", t0).is_ok(), "each user has their own");
        drop(held);
        // 3 of the burst of 10 are spent: 7 more, then the rate.
        for _ in 0..7 {
            assert!(calls.admit("ada", t0).is_ok());
        }
        assert_eq!(
            calls.admit("ada", t0).map(|_| ()),
            Err(CallRefused::Rate(5))
        );
        assert!(calls.admit("ada", t0 + Duration::from_millis(250)).is_ok());
        let off = CallLimiter::new(0, 0);
        assert!((0..10_000).all(|_| off.admit("ada", t0).is_ok()));
    }

    #[test]
    fn a_mapped_ipv4_address_counts_as_ipv4_and_ipv6_by_its_64() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            client_address(mapped),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(
            client_address(mapped).is_loopback(),
            "a local proxy on [::]"
        );
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_address(a), client_address(b));
        assert_ne!(client_address(a), client_address(other));
        assert!(client_address("::1".parse().unwrap()) != client_address(a));
        assert!(
            client_address("::1".parse().unwrap()).is_loopback(),
            "IPv6 loopback is still loopback"
        );
        let limiter = Limiter::new(settings(2, 0, 0));
        let now = Instant::now();
        let _one = limiter.admit_ip(client_address(a), now).unwrap();
        let _two = limiter.admit_ip(client_address(b), now).unwrap();
        assert_eq!(
            limiter.admit_ip(client_address(other), now).map(|_| ()),
            Ok(()),
            "another /64"
        );
        assert_eq!(
            limiter.admit_ip(client_address(b), now).map(|_| ()),
            Err(Refused::ConnectionsPerIp),
            "a third address of the same /64"
        );
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 20, t0);
        assert_eq!((0..25).filter(|_| b.take(t0)).count(), 20);
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one token after 1/10 s"
        );
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn a_throttled_bucket_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 2, t0);
        assert_eq!(b.take_or_wait(t0), None);
        assert_eq!(b.take_or_wait(t0), None);
        let wait = b.take_or_wait(t0).expect("throttled");
        assert!(
            wait > Duration::from_millis(9) && wait <= Duration::from_millis(11),
            "{wait:?}"
        );
    }

    #[test]
    fn connections_per_ip_are_counted_until_their_slots_drop_and_other_ips_are_unaffected() {
        let l = Limiter::new(settings(2, 0, 0));
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.admit_ip(a, now).unwrap();
        let _s2 = l.admit_ip(a, now).unwrap();
        assert_eq!(l.admit_ip(a, now).unwrap_err(), Refused::ConnectionsPerIp);
        assert!(l.admit_ip(b, now).is_ok(), "another address is unaffected");
        drop(s1);
        assert!(
            l.admit_ip(a, now).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn new_connections_per_ip_are_rate_limited() {
        let l = Limiter::new(settings(0, 5, 0));
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let admitted = (0..20).filter(|_| l.admit_ip(a, now).is_ok()).count();
        assert_eq!(admitted, 10, "a burst of twice the rate");
        assert_eq!(
            l.admit_ip(a, now).unwrap_err(),
            Refused::NewConnectionsPerIp
        );
        assert!(l.admit_ip(a, now + Duration::from_millis(250)).is_ok());
    }

    #[test]
    fn sessions_per_user_are_limited_and_zero_means_no_limit() {
        let l = Limiter::new(settings(0, 0, 1));
        let s = l.admit_user("ada").unwrap();
        assert_eq!(
            l.admit_user("ada").unwrap_err(),
            Refused::ConnectionsPerUser
        );
        assert!(l.admit_user("bob").is_ok());
        drop(s);
        assert!(l.admit_user("ada").is_ok());
        let open = Limiter::new(settings(0, 0, 0));
        let slots: Vec<Slot> = (0..100).map(|_| open.admit_user("ada").unwrap()).collect();
        assert_eq!(slots.len(), 100);
    }
}
