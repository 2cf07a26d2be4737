//! Unit tests of the client core, driven like the facade drives it: inputs with a fake
//! clock, outputs read back as actions and frames (no socket, no browser).

use serde_json::{json, Value};
use warren_protocol::{Distribution, ErrorCode, Raw};

use super::*;
use crate::codec::JsonCodec;

const URLS: [&str; 3] = ["ws://a/ws", "ws://b/ws", "ws://c/ws"];

fn raw(v: Value) -> Raw {
    serde_json::value::to_raw_value(&v).unwrap()
}

pub(super) fn envelope(channel: &str, message: Value) -> Envelope<Raw> {
    Envelope {
        channel: channel.into(),
        subject: None,
        distribution: Some(Distribution {
            broadcast: true,
            ..Distribution::default()
        }),
        headers: Default::default(),
        message: raw(message),
    }
}

/// The core plus the fake gateway side of the test.
struct Harness {
    core: ClientCore<JsonCodec>,
    now: u64,
    conn: u64,
    log: Vec<Action<Raw>>,
    /// `limits.max_frame_bytes` of the fake gateway's `welcome`.
    max_frame_bytes: u64,
}

impl Harness {
    fn new(urls: &[&str]) -> Self {
        Self::with(Config::new(urls.iter().map(|u| u.to_string()).collect()))
    }

    fn with(config: Config) -> Self {
        Harness {
            core: ClientCore::new(config, JsonCodec::default(), 1234),
            now: 1_000,
            conn: 0,
            log: Vec::new(),
            max_frame_bytes: 1_000_000,
        }
    }

    /// Every action queued since the last call.
    fn take(&mut self) -> Vec<Action<Raw>> {
        let mut out = Vec::new();
        while let Some(a) = self.core.poll_action() {
            if let Action::Open { conn, .. } = &a {
                self.conn = *conn;
            }
            out.push(a);
        }
        self.log.extend(out.iter().cloned());
        out
    }

    /// The frames sent since the last call, parsed.
    fn sent(&mut self) -> Vec<Value> {
        self.take()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send(t) => Some(serde_json::from_str(&t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn opens(actions: &[Action<Raw>]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Open { url, .. } => Some(url.clone()),
                _ => None,
            })
            .collect()
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.core.tick(self.now);
    }

    /// Fails every connection attempt (1006) in 50 ms steps until the client gave up
    /// (`connectTimeoutMs`: disconnected) or `within_ms` passed.
    fn fail_until_given_up(&mut self, within_ms: u64) {
        let end = self.now + within_ms;
        while self.core.state() != State::Disconnected && self.now < end {
            if self.core.state() == State::Connecting {
                self.core.on_close(self.conn, 1006, self.now);
            }
            self.advance(50);
            self.take();
        }
    }

    fn frame(&mut self, v: Value) {
        self.core.on_text(self.conn, &v.to_string(), self.now);
    }

    fn welcome_frame(&self, session: &str, resumed: bool) -> Value {
        json!({"type": "welcome", "session": session, "resumed": resumed,
        "user": "u1", "node": "gw", "heartbeat_ms": 1000, "protocol": 1,
        "limits": {"max_frame_bytes": self.max_frame_bytes, "max_subscriptions": 100,
            "delivery_window": 256}})
    }

    fn welcome(&mut self, session: &str, resumed: bool) {
        let w = self.welcome_frame(session, resumed);
        self.frame(w);
    }

    /// Subscribes to `chat` (its broadcast); the subscription's id.
    fn subscribe_chat(&mut self) -> u64 {
        self.core
            .subscribe(
                SubscribeOptions {
                    channel: "chat".into(),
                    ..Default::default()
                },
                self.now,
            )
            .unwrap()
    }

    /// Subscribes to the `room-1` group of `chat`.
    /// Subscribes to `n` distinct chat rooms (`room-0` …) and takes what that did.
    fn join_rooms(&mut self, n: usize) {
        for room in 0..n {
            self.core
                .subscribe(
                    SubscribeOptions {
                        channel: "chat".into(),
                        groups: vec![format!("room-{room}")],
                        ..Default::default()
                    },
                    self.now,
                )
                .unwrap();
        }
        self.take();
    }

    /// The resumed session's `welcome`: every one of `n` rooms is subscribed again,
    /// and the client is connected.
    fn welcomed_back_with_rooms(&mut self, n: usize) {
        self.welcome("s1", true);
        let frames = self.sent();
        assert_eq!(
            frames.iter().filter(|f| f["type"] == "subscribe").count(),
            n
        );
        assert_eq!(self.core.state(), State::Connected);
    }

    fn join_room(&mut self) {
        self.core
            .subscribe(
                SubscribeOptions {
                    channel: "chat".into(),
                    groups: vec!["room-1".into()],
                    ..Default::default()
                },
                self.now,
            )
            .unwrap();
    }

    /// `connect()` (when idle), socket open, `welcome`; returns the frames sent after
    /// the `hello`.
    fn connect(&mut self, session: &str, resumed: bool) -> Vec<Value> {
        self.core.connect(self.now);
        let conn = self.conn_after_take();
        self.core.on_open(conn, self.now);
        self.welcome(session, resumed);
        self.sent()
            .into_iter()
            .filter(|f| f["type"] != "hello")
            .collect()
    }

    fn conn_after_take(&mut self) -> u64 {
        self.take();
        self.conn
    }

    /// The socket broke; returns the actions the core took.
    fn drop_connection(&mut self) -> Vec<Action<Raw>> {
        self.core.on_close(self.conn, 1006, self.now);
        self.take()
    }

    /// Open + welcome on the socket the core just asked for.
    fn reopen(&mut self, session: &str, resumed: bool) -> Vec<Value> {
        self.core.on_open(self.conn, self.now);
        self.welcome(session, resumed);
        self.sent()
            .into_iter()
            .filter(|f| f["type"] != "hello")
            .collect()
    }

    fn rejections(actions: &[Action<Raw>]) -> Vec<(u64, ErrorCode)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reject(op, e) => Some((*op, e.code)),
                _ => None,
            })
            .collect()
    }
}

fn resolved(actions: &[Action<Raw>], op: u64) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Resolve(o) if *o == op))
}

fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap()).collect()
}

// ----- connection and URL rotation -----

#[test]
fn connecting_says_hello_and_becomes_connected_on_welcome() {
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let actions = h.take();
    assert_eq!(Harness::opens(&actions), vec!["ws://a/ws"]);
    assert_eq!(h.core.state(), State::Connecting);
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(types(&hello), vec!["hello"]);
    assert!(hello[0].get("session").is_none());
    assert_eq!(hello[0]["protocol"], 1);
    h.welcome("s1", false);
    let actions = h.take();
    assert!(actions.iter().any(|a| matches!(a, Action::StateChanged(c)
        if c.old == State::Connecting && c.new == State::Connected
            && c.session.as_deref() == Some("s1") && c.url.as_deref() == Some("ws://a/ws"))));
    assert_eq!(h.core.state(), State::Connected);
}

#[test]
fn a_lost_connection_moves_to_the_next_url_at_once_then_backs_off() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let actions = h.drop_connection();
    assert_eq!(
        Harness::opens(&actions),
        vec!["ws://b/ws"],
        "first retry is immediate"
    );
    assert!(actions.iter().any(|a| matches!(a, Action::StateChanged(c)
        if c.old == State::Connected && c.new == State::Connecting)));
    // The second URL fails too: now the core waits between min and 2×min.
    let actions = h.drop_connection();
    assert!(Harness::opens(&actions).is_empty());
    let at = actions
        .iter()
        .find_map(|a| match a {
            Action::SetTimer(Some(at)) => Some(*at),
            _ => None,
        })
        .expect("a timer for the next attempt");
    assert!((h.now + 250..=h.now + 500).contains(&at), "{at}");
    h.advance(at - h.now);
    assert_eq!(Harness::opens(&h.take()), vec!["ws://c/ws"]);
}

#[test]
fn failed_attempts_rotate_through_every_url_in_order_and_wrap_around() {
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let mut tried = Harness::opens(&h.take());
    for _ in 0..5 {
        h.core.on_close(h.conn, 1006, h.now);
        h.advance(20_000);
        tried.extend(Harness::opens(&h.take()));
    }
    assert_eq!(
        tried,
        vec![
            "ws://a/ws",
            "ws://b/ws",
            "ws://c/ws",
            "ws://a/ws",
            "ws://b/ws",
            "ws://c/ws"
        ]
    );
}

#[test]
fn a_connect_attempt_without_welcome_is_abandoned_after_the_connect_timeout() {
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let conn = h.conn_after_take();
    h.core.on_open(conn, h.now);
    h.take();
    h.advance(5_000);
    let actions = h.take();
    assert!(actions.iter().any(|a| matches!(a, Action::Close)));
    assert_eq!(Harness::opens(&actions), vec!["ws://b/ws"]);
}

#[test]
fn one_attempt_has_the_connect_timeout_in_all_for_get_token_opening_and_welcome() {
    let mut h = Harness::with_get_token();
    h.core.connect(h.now);
    let actions = h.take();
    h.advance(2_000);
    h.core
        .on_token(fetches(&actions)[0], Ok("tok".into()), h.now);
    h.take();
    h.advance(2_000);
    h.core.on_open(h.conn, h.now);
    h.take();
    h.advance(999);
    assert!(!h.take().iter().any(|a| matches!(a, Action::Close)));
    // 5 s after the attempt began, not 5 s after the socket opened.
    h.advance(1);
    let actions = h.take();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Close)),
        "{actions:?}"
    );
    assert!(errors(&actions)[0]
        .message
        .contains("no welcome within 5000 ms"));
    assert_eq!(
        fetches(&actions).len(),
        1,
        "the next attempt asks getToken again"
    );
}

#[test]
fn events_of_an_abandoned_socket_are_ignored() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let old = h.conn;
    h.drop_connection();
    h.core.on_text(old, r#"{"type":"ack","id":"x"}"#, h.now);
    h.core.on_close(old, 1006, h.now);
    assert!(Harness::opens(&h.take()).is_empty());
    assert_eq!(h.core.state(), State::Connecting);
}

#[test]
fn silence_for_two_and_a_half_heartbeats_declares_the_connection_dead() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.advance(2_000);
    h.frame(json!({"type": "ping", "ts": 5}));
    let pong = h.sent();
    assert_eq!(
        pong,
        vec![json!({"type": "pong", "ts": 5})],
        "a ping is answered"
    );
    h.advance(2_499);
    assert_eq!(
        h.core.state(),
        State::Connected,
        "2.499 s of silence is fine"
    );
    h.advance(1);
    let actions = h.take();
    assert!(actions.iter().any(|a| matches!(a, Action::Close)));
    assert_eq!(Harness::opens(&actions), vec!["ws://b/ws"]);
}

#[test]
fn a_drain_emits_the_event_and_moves_to_the_next_url_at_once() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.frame(json!({"type": "drain", "reason": "shutdown", "deadline_ms": 5000}));
    let actions = h.take();
    assert!(matches!(actions[0], Action::Drain(ref d) if d.reason == "shutdown"));
    assert!(actions.iter().any(|a| matches!(a, Action::Close)));
    assert_eq!(Harness::opens(&actions), vec!["ws://b/ws"]);
    h.core.on_open(h.conn, h.now);
    assert_eq!(h.sent()[0]["session"], "s1");
}

/// The close code of every `Close` in `actions`, read from the core as the browser
/// driver reads it: when it performs the action, after the core handled the event.
fn close_codes(h: &mut Harness) -> Vec<u16> {
    let mut codes = Vec::new();
    while let Some(a) = h.core.poll_action() {
        if let Action::Open { conn, .. } = &a {
            h.conn = *conn;
        }
        if matches!(a, Action::Close) {
            codes.push(h.core.close_code());
        }
    }
    codes
}

/// A connection the client gives up to resume elsewhere is closed with 4000
/// `heartbeat_timeout` (the gateway keeps the session for the resume grace); `close()`
/// and giving up trying close with 1000 (a goodbye: the session ends at once).
#[test]
fn a_connection_given_up_to_resume_elsewhere_closes_with_4000_and_close_with_1000() {
    // Handshake timeout: no welcome.
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let conn = h.conn_after_take();
    h.core.on_open(conn, h.now);
    h.take();
    h.now += 5_000;
    h.core.tick(h.now);
    assert_eq!(close_codes(&mut h), vec![4000], "handshake timeout");
    // Heartbeat: nothing heard for 2.5 heartbeats.
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.now += 2_500;
    h.core.tick(h.now);
    assert_eq!(close_codes(&mut h), vec![4000], "heartbeat dead");
    assert_eq!(h.core.state(), State::Connecting);
    // Drain: the gateway goes away, the session moves.
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.frame(json!({"type": "drain", "reason": "shutdown", "deadline_ms": 5000}));
    assert_eq!(close_codes(&mut h), vec![4000], "drain");
    // The app's close(): goodbye.
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.core.close(h.now);
    assert_eq!(close_codes(&mut h), vec![1000], "close()");
    // close() while a handshake is under way.
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let conn = h.conn_after_take();
    h.core.on_open(conn, h.now);
    h.take();
    h.core.close(h.now);
    assert_eq!(close_codes(&mut h), vec![1000], "close() while connecting");
    // Gave up trying (connectTimeoutMs) with a socket open: it is not resumed.
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.give_up_after_ms = Some(1_000);
    let mut h = Harness::with(config);
    h.core.connect(h.now);
    let conn = h.conn_after_take();
    h.core.on_open(conn, h.now);
    h.take();
    h.now += 1_000;
    h.core.tick(h.now);
    assert_eq!(close_codes(&mut h), vec![1000], "gave up trying");
    assert_eq!(h.core.state(), State::Disconnected);
}

#[test]
fn a_close_code_that_forbids_reconnecting_stops_and_rejects_pending_writes() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let op = h.core.write(envelope("chat", json!(1)), h.now);
    h.take();
    h.core.on_close(h.conn, 4501, h.now);
    let actions = h.take();
    assert!(Harness::opens(&actions).is_empty());
    assert_eq!(
        Harness::rejections(&actions),
        vec![(op, ErrorCode::Unauthorized)]
    );
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Error(e) if e.code == ErrorCode::Unauthorized)));
    assert_eq!(h.core.state(), State::Disconnected);
}

#[test]
fn after_a_close_code_that_forbids_reconnecting_new_writes_are_rejected_at_once_with_its_error() {
    for (code, expected) in [
        (4501, ErrorCode::Unauthorized),
        (4503, ErrorCode::Unsupported),
        // Not `disconnected` (retryable): the client does not reconnect.
        (4502, ErrorCode::Closed),
        (4500, ErrorCode::Closed),
    ] {
        let mut h = Harness::new(&URLS);
        h.connect("s1", false);
        h.core.on_close(h.conn, code, h.now);
        h.take();
        let w = h.core.write(envelope("chat", json!(1)), h.now);
        let r = h.core.request(envelope("tickets", json!(2)), None, h.now);
        let ready = h.core.ready(h.now);
        let actions = h.take();
        assert_eq!(
            Harness::rejections(&actions),
            vec![(w, expected), (r, expected), (ready, expected)],
            "{code}: rejected at once, not queued for a connection that never comes"
        );
        let err = rejection(&actions, w).unwrap();
        assert!(err.message.contains(&code.to_string()), "{}", err.message);
        assert_eq!(err.id, Some(format!("{}{w}", h.core.id_prefix())));
        assert!(Harness::opens(&actions).is_empty());
        // connect() starts over: writes wait for the connection again.
        h.core.connect(h.now);
        let w = h.core.write(envelope("chat", json!(3)), h.now);
        assert!(Harness::rejections(&h.take()).is_empty());
        let conn = h.conn;
        h.core.on_open(conn, h.now);
        h.welcome("s2", false);
        let sent = h.sent();
        assert_eq!(
            sent.last().unwrap()["id"],
            format!("{}{w}", h.core.id_prefix())
        );
    }
}

#[test]
fn a_stop_rejects_the_readiness_of_subscriptions_not_yet_in_force() {
    // Refused for good (4501): a subscription made while connecting was never acked.
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let sub = h.subscribe_chat();
    h.take();
    h.core.on_close(h.conn, 4501, h.now);
    assert_eq!(
        Harness::rejections(&h.take()),
        vec![(sub, ErrorCode::Unauthorized)]
    );
    // Gave up connecting (connectTimeoutMs).
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.give_up_after_ms = Some(1_000);
    let mut h = Harness::with(config);
    h.core.connect(h.now);
    let sub = h.subscribe_chat();
    h.take();
    h.fail_until_given_up(5_000);
    assert_eq!(
        rejection(&h.log, sub).map(|e| e.code),
        Some(ErrorCode::Timeout)
    );
}

/// A subscription made after the client stopped trying: its readiness was left pending
/// until `connect()` (an app showed "subscribing" for ever), while those made before the
/// stop were rejected.
#[test]
fn a_subscription_made_after_a_stop_is_rejected_at_once_and_still_sent_on_connect() {
    // Refused for good (4501).
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.core.on_close(h.conn, 4501, h.now);
    h.take();
    let sub = h.subscribe_chat();
    assert_eq!(
        Harness::rejections(&h.take()),
        vec![(sub, ErrorCode::Unauthorized)]
    );
    // Gave up connecting (connectTimeoutMs).
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.give_up_after_ms = Some(1_000);
    let mut h = Harness::with(config);
    h.core.connect(h.now);
    h.take();
    h.fail_until_given_up(5_000);
    let sub = h.subscribe_chat();
    let actions = h.take();
    assert_eq!(
        Harness::rejections(&actions),
        vec![(sub, ErrorCode::Timeout)]
    );
    assert!(rejection(&actions, sub)
        .unwrap()
        .message
        .contains("connectTimeoutMs"));
    // The subscription stands: connect() sends it.
    let sent = h.connect("s2", false);
    assert_eq!(types(&sent), vec!["subscribe"]);
    assert_eq!(sent[0]["channel"], "chat");
}

#[test]
fn the_going_away_close_code_reconnects() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.core.on_close(h.conn, 1001, h.now);
    assert_eq!(Harness::opens(&h.take()), vec!["ws://b/ws"]);
}

#[test]
fn close_rejects_everything_with_closed_and_stays_closed() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let w = h.core.write(envelope("chat", json!(1)), h.now);
    let r = h.core.request(envelope("tickets", json!(2)), None, h.now);
    h.take();
    h.core.close(h.now);
    let actions = h.take();
    assert!(actions.iter().any(|a| matches!(a, Action::Close)));
    assert_eq!(
        Harness::rejections(&actions),
        vec![(w, ErrorCode::Closed), (r, ErrorCode::Closed)]
    );
    // Closing resumes nothing: `resumed` is false.
    assert!(actions.iter().any(
        |a| matches!(a, Action::StateChanged(c) if c.new == State::Disconnected && !c.resumed)
    ));
    assert!(
        actions.iter().any(|a| matches!(a, Action::SetTimer(None))),
        "no timer left behind"
    );
    h.core.connect(h.now);
    let later = h.core.write(envelope("chat", json!(3)), h.now);
    let actions = h.take();
    assert!(Harness::opens(&actions).is_empty(), "closed for good");
    assert_eq!(
        Harness::rejections(&actions),
        vec![(later, ErrorCode::Closed)]
    );
    assert!(h.core.is_closed());
}

#[test]
fn ready_resolves_once_connected_and_at_once_when_already_connected() {
    let mut h = Harness::new(&URLS);
    let early = h.core.ready(h.now);
    assert!(!resolved(&h.take(), early));
    h.connect("s1", false);
    assert!(resolved(&h.log, early));
    let late = h.core.ready(h.now);
    assert!(resolved(&h.take(), late));
}

// ----- writes, requests, timeouts -----

#[test]
fn a_write_resolves_on_the_gateway_ack() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let op = h.core.write(envelope("chat", json!({"text": "hi"})), h.now);
    let frames = h.sent();
    assert_eq!(types(&frames), vec!["publish"]);
    assert_eq!(frames[0]["message"], json!({"text": "hi"}));
    assert_eq!(frames[0]["distribution"], json!({"broadcast": true}));
    let id = frames[0]["id"].as_str().unwrap().to_string();
    assert_eq!(id, format!("{}{op}", h.core.id_prefix()));
    h.frame(json!({"type": "ack", "id": id}));
    assert!(resolved(&h.take(), op));
}

#[test]
fn a_gateway_error_rejects_the_write_with_its_code() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let op = h.core.write(envelope("chat", json!(1)), h.now);
    let id = h.sent()[0]["id"].clone();
    h.frame(json!({"type": "error", "id": id, "code": "no_route", "message": "nobody listens"}));
    assert_eq!(
        Harness::rejections(&h.take()),
        vec![(op, ErrorCode::NoRoute)]
    );
}

#[test]
fn a_request_resolves_with_its_reply_and_its_deadline_is_cleared() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let op = h.core.request(
        envelope("tickets", json!({"op": "create"})),
        Some(3_000),
        h.now,
    );
    let frames = h.sent();
    assert_eq!(frames[0]["type"], "request");
    assert_eq!(frames[0]["timeout_ms"], 3000);
    h.frame(json!({"type": "reply", "id": frames[0]["id"], "seq": 1, "message": {"ticket": 7}}));
    let actions = h.take();
    let reply = actions
        .iter()
        .find_map(|a| match a {
            Action::Reply(o, m) if *o == op => Some(m.get().to_string()),
            _ => None,
        })
        .expect("reply");
    assert_eq!(reply, r#"{"ticket":7}"#);
    h.advance(10_000);
    assert!(Harness::rejections(&h.take()).is_empty(), "no late timeout");
}

#[test]
fn a_request_without_answer_is_rejected_with_timeout_at_its_own_deadline() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let op = h
        .core
        .request(envelope("tickets", json!(1)), Some(500), h.now);
    let actions = h.take();
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::SetTimer(Some(at)) if *at == h.now + 500)));
    h.advance(499);
    assert!(Harness::rejections(&h.take()).is_empty());
    h.advance(1);
    assert_eq!(
        Harness::rejections(&h.take()),
        vec![(op, ErrorCode::Timeout)]
    );
}

#[test]
fn a_timed_out_write_is_cleaned_up_and_never_sent_again() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let op = h.core.write(envelope("chat", json!("lost")), h.now);
    h.take();
    h.advance(10_000);
    assert_eq!(
        Harness::rejections(&h.take()),
        vec![(op, ErrorCode::Timeout)]
    );
    h.frame(json!({"type": "ping"}));
    h.drop_connection();
    let frames = h.reopen("s1", true);
    assert_eq!(types(&frames), Vec::<&str>::new(), "nothing re-sent");
}

#[test]
fn a_late_answer_after_the_timeout_is_ignored_but_acknowledged() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let _op = h
        .core
        .request(envelope("tickets", json!(1)), Some(100), h.now);
    let id = h.sent()[0]["id"].clone();
    h.advance(100);
    h.take();
    h.frame(json!({"type": "reply", "id": id, "seq": 1, "message": 1}));
    assert!(!h.take().iter().any(|a| matches!(a, Action::Reply(..))));
    h.advance(100);
    assert_eq!(h.sent(), vec![json!({"type": "ack_deliveries", "seq": 1})]);
}

#[test]
fn a_service_refusal_rejects_the_request_and_its_seq_is_acknowledged() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let op = h.core.request(envelope("tickets", json!(1)), None, h.now);
    let id = h.sent()[0]["id"].clone();
    h.frame(json!({"type": "error", "id": id, "code": "rejected", "message": "no", "seq": 4}));
    assert_eq!(
        Harness::rejections(&h.take()),
        vec![(op, ErrorCode::Rejected)]
    );
    h.advance(100);
    assert_eq!(h.sent(), vec![json!({"type": "ack_deliveries", "seq": 4})]);
}

#[test]
fn a_channel_outside_the_configured_list_is_refused_locally() {
    let mut config = Config::new(vec![URLS[0].into()]);
    config.channels = vec!["voice".into()];
    let mut h = Harness::with(config);
    h.connect("s1", false);
    let op = h.core.write(envelope("chat", json!(1)), h.now);
    assert_eq!(
        Harness::rejections(&h.take()),
        vec![(op, ErrorCode::UnknownChannel)]
    );
    let err = h
        .core
        .subscribe(
            SubscribeOptions {
                channel: "chat".into(),
                ..Default::default()
            },
            h.now,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownChannel);
    h.core.write(envelope("voice", json!(1)), h.now);
    assert_eq!(types(&h.sent()), vec!["publish"]);
}

// ----- outbox -----

#[test]
fn writes_made_while_disconnected_are_sent_in_order_after_connecting_with_the_same_ids() {
    let mut h = Harness::new(&URLS);
    let ops: Vec<u64> = (0..3)
        .map(|i| h.core.write(envelope("chat", json!(i)), h.now))
        .collect();
    let r = h.core.request(envelope("tickets", json!("q")), None, h.now);
    assert!(h.sent().is_empty(), "nothing is sent before connecting");
    let frames = h.connect("s1", false);
    assert_eq!(
        types(&frames),
        vec!["publish", "publish", "publish", "request"]
    );
    let ids: Vec<String> = frames
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = ops
        .iter()
        .chain([&r])
        .map(|op| format!("{}{op}", h.core.id_prefix()))
        .collect();
    assert_eq!(ids, want);
    assert_eq!(
        frames
            .iter()
            .take(3)
            .map(|f| f["message"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)]
    );
}

#[test]
fn the_outbox_refuses_writes_beyond_its_limit_with_disconnected() {
    let mut config = Config::new(vec![URLS[0].into()]);
    config.outbox_limit = 2;
    let mut h = Harness::with(config);
    let a = h.core.write(envelope("chat", json!(1)), h.now);
    let b = h.core.write(envelope("chat", json!(2)), h.now);
    let c = h.core.write(envelope("chat", json!(3)), h.now);
    let rejected = Harness::rejections(&h.take());
    assert_eq!(rejected, vec![(c, ErrorCode::Disconnected)]);
    let frames = h.connect("s1", false);
    let ids: Vec<&str> = frames.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![
            format!("{}{a}", h.core.id_prefix()),
            format!("{}{b}", h.core.id_prefix())
        ]
    );
}

#[test]
fn writes_not_acked_when_the_connection_dropped_are_sent_again_with_the_same_ids() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let a = h.core.write(envelope("chat", json!("a")), h.now);
    let _b = h.core.write(envelope("chat", json!("b")), h.now);
    let first = h.sent();
    h.frame(json!({"type": "ack", "id": first[0]["id"]}));
    assert!(resolved(&h.take(), a));
    h.drop_connection();
    let c = h.core.write(envelope("chat", json!("c")), h.now);
    let frames = h.reopen("s1", true);
    assert_eq!(types(&frames), vec!["publish", "publish"]);
    assert_eq!(frames[0], first[1], "b again, byte for byte");
    assert_eq!(frames[1]["id"], format!("{}{c}", h.core.id_prefix()));
}

// ----- deliveries -----

fn deliver(seq: u64, id: &str) -> Value {
    json!({"type": "deliver", "seq": seq, "message_id": id, "channel": "chat",
        "routing_key": "chat.all", "message": {"n": seq}})
}

fn delivered(actions: &[Action<Raw>]) -> Vec<(u64, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver {
                subscriptions,
                delivery,
            } => Some(
                subscriptions
                    .iter()
                    .map(|s| (*s, delivery.message_id.clone()))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_redelivered_message_reaches_the_app_once_and_is_still_acknowledged() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let sub = h.subscribe_chat();
    h.take();
    h.frame(deliver(1, "m1"));
    assert_eq!(delivered(&h.take()), vec![(sub, "m1".to_string())]);
    // The gateway died before our ack reached RabbitMQ: the next connection gets m1 again.
    h.drop_connection();
    h.reopen("s1", true);
    h.frame(
        json!({"type": "deliver", "seq": 1, "message_id": "m1", "channel": "chat",
        "routing_key": "chat.all", "redelivered": true, "message": {"n": 1}}),
    );
    h.frame(deliver(2, "m2"));
    assert_eq!(delivered(&h.take()), vec![(sub, "m2".to_string())]);
    h.advance(100);
    assert_eq!(h.sent(), vec![json!({"type": "ack_deliveries", "seq": 2})]);
}

#[test]
fn deliveries_are_acknowledged_cumulatively_in_batches_and_after_a_short_delay() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.subscribe_chat();
    h.take();
    for seq in 1..=31 {
        h.frame(deliver(seq, &format!("m{seq}")));
    }
    assert!(h.sent().is_empty(), "31 < batch of 32: wait");
    h.frame(deliver(32, "m32"));
    assert_eq!(h.sent(), vec![json!({"type": "ack_deliveries", "seq": 32})]);
    h.frame(deliver(33, "m33"));
    h.advance(99);
    assert!(h.sent().is_empty());
    h.advance(1);
    assert_eq!(h.sent(), vec![json!({"type": "ack_deliveries", "seq": 33})]);
}

#[test]
fn a_delivery_is_routed_to_the_subscription_whose_binding_matches() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let all = h.subscribe_chat();
    let room = h
        .core
        .subscribe(
            SubscribeOptions {
                channel: "chat".into(),
                groups: vec!["r1".into()],
                ..Default::default()
            },
            h.now,
        )
        .unwrap();
    let frames = h.sent();
    assert_eq!(types(&frames), vec!["subscribe", "subscribe"]);
    assert_eq!(frames[1]["groups"], json!(["r1"]));
    h.frame(
        json!({"type": "deliver", "seq": 1, "message_id": "g", "channel": "chat",
        "routing_key": "chat.group.r1", "message": 1}),
    );
    h.frame(deliver(2, "b"));
    assert_eq!(
        delivered(&h.take()),
        vec![(room, "g".to_string()), (all, "b".to_string())]
    );
    h.core.unsubscribe(room, h.now);
    let frames = h.sent();
    assert_eq!(frames[0]["type"], "unsubscribe");
    assert_eq!(frames[0]["groups"], json!(["r1"]));
    assert_eq!(frames[0]["broadcast"], json!(false));
    // A room message already on its way when the app unsubscribed reaches no other
    // subscription of the channel (it went to the broadcast's handler).
    h.frame(
        json!({"type": "deliver", "seq": 3, "message_id": "late", "channel": "chat",
        "routing_key": "chat.group.r1", "message": 3}),
    );
    assert!(delivered(&h.take()).is_empty());
}

#[test]
fn a_delivery_naming_other_keys_reaches_each_subscription_of_them_once() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let room = h
        .core
        .subscribe(
            SubscribeOptions {
                channel: "chat".into(),
                groups: vec!["r1".into()],
                ..Default::default()
            },
            h.now,
        )
        .unwrap();
    let direct = h
        .core
        .subscribe(
            SubscribeOptions {
                channel: "chat".into(),
                direct: true,
                ..Default::default()
            },
            h.now,
        )
        .unwrap();
    h.take();
    // One publish to the room and to u1 (CC): one deliver, by the room's key, naming
    // the user's key too. Both subscriptions get it, once each (it reached only the
    // room's, and its id then kept it from the direct one for good).
    h.frame(
        json!({"type": "deliver", "seq": 1, "message_id": "both", "channel": "chat",
        "routing_key": "chat.group.r1", "keys": ["chat.user.u1"], "message": 1}),
    );
    assert_eq!(
        delivered(&h.take()),
        vec![(room, "both".to_string()), (direct, "both".to_string())]
    );
    // By the user's key, naming the room's: the same two, in their order.
    h.frame(
        json!({"type": "deliver", "seq": 2, "message_id": "both2", "channel": "chat",
        "routing_key": "chat.user.u1", "keys": ["chat.group.r1"], "message": 2}),
    );
    assert_eq!(
        delivered(&h.take()),
        vec![(room, "both2".to_string()), (direct, "both2".to_string())]
    );
    // A key no subscription holds (and one already matched) changes nothing.
    h.frame(
        json!({"type": "deliver", "seq": 3, "message_id": "one", "channel": "chat",
        "routing_key": "chat.group.r1",
        "keys": ["chat.group.r9", "chat.user.u2", "voice.user.u1", "chat.group.r1"],
        "message": 3}),
    );
    assert_eq!(delivered(&h.take()), vec![(room, "one".to_string())]);
    // A key of a subscription, on a routing key of none: that subscription only.
    h.frame(
        json!({"type": "deliver", "seq": 4, "message_id": "late", "channel": "chat",
        "routing_key": "chat.group.r9", "keys": ["chat.user.u1"], "message": 4}),
    );
    assert_eq!(delivered(&h.take()), vec![(direct, "late".to_string())]);
}

#[test]
fn a_subscription_removed_during_the_handshake_is_unbound_after_the_hello_that_named_it() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let room = |g: &str| SubscribeOptions {
        channel: "chat".into(),
        groups: vec![g.into()],
        ..Default::default()
    };
    let r1 = h.core.subscribe(room("r1"), h.now).unwrap();
    h.take();
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    assert_eq!(h.sent()[0]["subscriptions"][0]["groups"], json!(["r1"]));
    // A room switch while `hello` is on its way: the gateway binds r1 for this
    // connection, so the unsubscribe follows the hello at once (the gateway reads it
    // after the hello); the new room is subscribed after welcome.
    h.core.unsubscribe(r1, h.now);
    h.core.subscribe(room("r2"), h.now).unwrap();
    let frames = h.sent();
    assert_eq!(types(&frames), vec!["unsubscribe"]);
    assert_eq!(
        frames[0]["groups"],
        json!(["r1"]),
        "the room hello named goes"
    );
    h.frame(h.welcome_frame("s1", true));
    let frames = h.sent();
    assert_eq!(types(&frames), vec!["subscribe"]);
    assert_eq!(frames[0]["groups"], json!(["r2"]));
}

// ----- resume -----

#[test]
fn reconnect_resumes_the_session_and_subscribes_again_before_flushing_writes() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.join_room();
    h.core
        .subscribe(
            SubscribeOptions {
                channel: "voice".into(),
                direct: true,
                ..Default::default()
            },
            h.now,
        )
        .unwrap();
    h.take();
    h.drop_connection();
    let w = h.core.write(envelope("chat", json!("offline")), h.now);
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["type"], "hello");
    assert_eq!(hello[0]["session"], "s1", "names the session to resume");
    h.welcome("s1", true);
    let actions = h.take();
    assert!(actions.iter().any(|a| matches!(a, Action::StateChanged(c)
        if c.new == State::Connected && c.resumed && c.url.as_deref() == Some("ws://b/ws"))));
    let frames: Vec<Value> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(t) => Some(serde_json::from_str(t).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(types(&frames), vec!["subscribe", "subscribe", "publish"]);
    assert_eq!(frames[0]["groups"], json!(["room-1"]));
    assert_eq!(frames[1]["direct"], json!(true));
    assert_eq!(frames[2]["id"], format!("{}{w}", h.core.id_prefix()));
}

#[test]
fn a_resume_names_the_newest_stream_position_and_the_subscriptions() {
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let conn = h.conn_after_take();
    h.core.on_open(conn, h.now);
    let hello = h.sent();
    assert!(
        hello[0].get("position").is_none(),
        "a new session names none"
    );
    // A stream gateway says where the new session starts.
    let mut w = h.welcome_frame("s1", false);
    w["position"] = json!(41);
    h.frame(w.clone());
    assert_eq!(h.core.position(), Some(41));
    h.join_room();
    h.take();
    let mut d = deliver(1, "m1");
    d["position"] = json!(57);
    h.frame(d);
    let mut older = deliver(2, "m0");
    older["position"] = json!(50);
    h.frame(older);
    assert_eq!(h.core.position(), Some(57), "the newest position counts");
    h.take();
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["session"], "s1");
    assert_eq!(hello[0]["position"], 57);
    assert_eq!(hello[0]["subscriptions"][0]["channel"], "chat");
    assert_eq!(hello[0]["subscriptions"][0]["groups"], json!(["room-1"]));
    // The gateway could not resume it: the fresh session's position replaces the old.
    w["session"] = json!("s2");
    w["position"] = json!(90);
    w["notice"] = json!("session_expired");
    h.frame(w);
    assert_eq!(h.core.position(), Some(90));
}

/// A `deliver` at `position` in channel stream `stream` (`None`: the default stream).
fn deliver_at(seq: u64, id: &str, stream: Option<&str>, position: u64) -> Value {
    let mut d = deliver(seq, id);
    d["position"] = json!(position);
    if let Some(stream) = stream {
        d["stream"] = json!(stream);
    }
    d
}

fn stream_positions(entries: &[(&str, u64)]) -> warren_protocol::Positions {
    entries.iter().map(|(c, p)| (c.to_string(), *p)).collect()
}

#[test]
fn each_stream_keeps_its_own_newest_position_and_a_resume_names_them_all() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.frame(deliver_at(1, "m1", None, 57));
    h.frame(deliver_at(2, "n1", Some("news"), 3));
    h.frame(deliver_at(3, "m0", None, 50));
    h.frame(deliver_at(4, "n0", Some("news"), 2));
    h.frame(deliver_at(5, "a1", Some("alerts"), 9));
    // A reply is in the default stream; an error names its stream.
    h.frame(
        json!({"type": "reply", "id": "elsewhere", "seq": 6, "position": 60,
        "message": null}),
    );
    h.frame(
        json!({"type": "error", "code": "session_expired", "stream": "alerts",
        "message": "aged out", "position": 12}),
    );
    assert_eq!(h.core.position(), Some(60), "the default stream's newest");
    assert_eq!(
        h.core.positions(),
        stream_positions(&[("alerts", 12), ("news", 3)]),
        "each channel stream's newest, unmixed with the default stream's"
    );
    h.take();
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["type"], "hello");
    assert_eq!(hello[0]["session"], "s1");
    assert_eq!(hello[0]["position"], 60);
    assert_eq!(hello[0]["positions"], json!({"alerts": 12, "news": 3}));
}

#[test]
fn a_notice_of_missed_positions_names_the_channel_stream_it_is_about() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.take();
    h.frame(
        json!({"type": "error", "code": "session_expired", "stream": "alerts",
        "message": "310 stream positions after position 9 aged out", "position": 320}),
    );
    h.frame(json!({"type": "error", "code": "session_expired",
        "message": "12 stream positions after position 40 aged out"}));
    let notices = errors(&h.take());
    let about: Vec<_> = notices
        .iter()
        .map(|e| (e.code, e.stream.as_deref(), e.message.as_str()))
        .collect();
    assert_eq!(
        about,
        [
            (
                ErrorCode::SessionExpired,
                Some("alerts"),
                "310 stream positions after position 9 aged out"
            ),
            (
                ErrorCode::SessionExpired,
                None,
                "12 stream positions after position 40 aged out"
            ),
        ]
    );
}

#[test]
fn a_new_sessions_channel_stream_positions_are_named_on_resume_without_any_delivery() {
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let conn = h.conn_after_take();
    h.core.on_open(conn, h.now);
    let hello = h.sent();
    assert!(
        hello[0].get("positions").is_none(),
        "a new session names none"
    );
    let mut w = h.welcome_frame("s1", false);
    w["position"] = json!(41);
    w["positions"] = json!({"news": 7, "alerts": 2});
    h.frame(w);
    assert_eq!(
        h.core.positions(),
        stream_positions(&[("alerts", 2), ("news", 7)])
    );
    h.take();
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["position"], 41);
    assert_eq!(hello[0]["positions"], json!({"alerts": 2, "news": 7}));
    // Resumed: the session keeps its positions (a resumed welcome names none; were it
    // to, they would not be the session's).
    let mut w = h.welcome_frame("s1", true);
    w["positions"] = json!({"news": 1});
    h.frame(w);
    assert_eq!(
        h.core.positions(),
        stream_positions(&[("alerts", 2), ("news", 7)])
    );
}

#[test]
fn a_subscriptions_ack_position_is_kept_as_the_newest_of_its_stream() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.frame(json!({"type": "ack", "id": "x", "position": 40}));
    h.frame(json!({"type": "ack", "id": "y", "position": 9, "stream": "voice"}));
    h.frame(json!({"type": "ack", "id": "z", "position": 3}));
    assert_eq!(h.core.position(), Some(40), "the newest, not the last");
    assert_eq!(h.core.positions(), stream_positions(&[("voice", 9)]));
    h.take();
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["position"], 40);
    assert_eq!(hello[0]["positions"], json!({"voice": 9}));
}

#[test]
fn a_gateway_pings_position_is_kept_as_the_newest_of_its_stream_and_the_pong_answers_it() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.frame(deliver_at(1, "m1", None, 5));
    h.frame(json!({"type": "ping", "ts": 1, "position": 300}));
    h.frame(json!({"type": "ping", "ts": 2, "position": 12, "stream": "voice"}));
    h.frame(json!({"type": "ping", "ts": 3, "position": 200}));
    assert_eq!(h.core.position(), Some(300), "the newest, not the last");
    assert_eq!(h.core.positions(), stream_positions(&[("voice", 12)]));
    let pongs: Vec<_> = h
        .sent()
        .into_iter()
        .filter(|f| f["type"] == "pong")
        .collect();
    assert_eq!(pongs.len(), 3, "{pongs:?}");
    h.take();
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["position"], 300);
    assert_eq!(hello[0]["positions"], json!({"voice": 12}));
}

#[test]
fn a_refused_resume_replaces_the_channel_stream_positions_with_the_fresh_sessions() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.frame(deliver_at(1, "m1", None, 57));
    h.frame(deliver_at(2, "n1", Some("news"), 5));
    h.frame(deliver_at(3, "a1", Some("alerts"), 9));
    h.take();
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    assert_eq!(h.sent()[0]["positions"], json!({"alerts": 9, "news": 5}));
    // The gateway could not resume s1: s2 starts after its own positions only.
    let mut w = h.welcome_frame("s2", false);
    w["position"] = json!(90);
    w["positions"] = json!({"news": 20});
    w["notice"] = json!("session_expired");
    h.frame(w);
    assert_eq!(h.core.position(), Some(90));
    assert_eq!(h.core.positions(), stream_positions(&[("news", 20)]));
    h.take();
    h.drop_connection();
    h.advance(20_000); // the backoff: s1's connection did not stay up
    h.take();
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["session"], "s2");
    assert_eq!(hello[0]["position"], 90);
    assert_eq!(hello[0]["positions"], json!({"news": 20}));
    // Refused again, by a gateway whose channel streams are empty: none is left.
    h.frame(h.welcome_frame("s3", false));
    assert!(h.core.positions().is_empty());
    h.take();
    h.drop_connection();
    h.advance(20_000);
    h.take();
    h.core.on_open(h.conn, h.now);
    let hello = h.sent();
    assert_eq!(hello[0]["session"], "s3");
    assert!(hello[0].get("position").is_none());
    assert!(hello[0].get("positions").is_none());
}

#[test]
fn an_expired_session_is_reported_as_a_fresh_session_in_the_state_event() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    h.frame(
        json!({"type": "welcome", "session": "s2", "resumed": false, "notice": "session_expired",
        "user": "u1", "node": "gw", "heartbeat_ms": 1000, "protocol": 1,
        "limits": {"max_frame_bytes": 1000000, "max_subscriptions": 100, "delivery_window": 256}}),
    );
    let actions = h.take();
    assert!(actions.iter().any(|a| matches!(a, Action::StateChanged(c)
        if c.new == State::Connected && !c.resumed && c.session.as_deref() == Some("s2"))));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Error(e) if e.code == ErrorCode::SessionExpired)));
    assert_eq!(h.core.session(), Some("s2"));
}

#[test]
fn a_connection_that_stayed_up_resets_the_backoff() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    // Fail twice so that a wait is needed...
    h.drop_connection();
    h.drop_connection();
    h.advance(20_000);
    h.take();
    h.reopen("s1", true);
    // ...then stay connected long enough: the next loss retries at once again.
    h.frame(json!({"type": "ping"}));
    for _ in 0..6 {
        h.now += 1_000;
        h.frame(json!({"type": "ping"}));
    }
    h.take();
    assert_eq!(Harness::opens(&h.drop_connection()).len(), 1);
}

// ----- oversized and refused writes -----

fn errors(actions: &[Action<Raw>]) -> Vec<ClientError> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Error(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn rejection(actions: &[Action<Raw>], op: u64) -> Option<ClientError> {
    actions.iter().find_map(|a| match a {
        Action::Reject(o, e) if *o == op => Some(e.clone()),
        _ => None,
    })
}

#[test]
fn a_write_over_the_gateways_max_frame_bytes_is_rejected_at_once_with_too_large_and_never_sent() {
    let mut h = Harness::new(&URLS);
    h.max_frame_bytes = 1_024;
    h.connect("s1", false);
    let big = h
        .core
        .write(envelope("chat", json!("x".repeat(2_000))), h.now);
    let request = h
        .core
        .request(envelope("echo", json!("y".repeat(2_000))), None, h.now);
    let actions = h.take();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Send(_))),
        "nothing sent"
    );
    for op in [big, request] {
        let err = rejection(&actions, op).expect("rejected at once");
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("1024"), "{}", err.message);
        assert_eq!(err.id, Some(format!("{}{op}", h.core.id_prefix())));
    }
    // Other traffic goes on; the refused frames are in no outbox and no deadline list.
    let small = h.core.write(envelope("chat", json!("ok")), h.now);
    assert_eq!(types(&h.sent()), vec!["publish"]);
    h.drop_connection();
    let again = h.reopen("s1", true);
    assert_eq!(
        types(&again),
        vec!["publish"],
        "only the small write is re-sent"
    );
    assert_eq!(again[0]["id"], format!("{}{small}", h.core.id_prefix()));
    h.advance(60_000);
    let later = h.take();
    assert!(rejection(&later, big).is_none() && rejection(&later, request).is_none());
}

#[test]
fn writes_queued_before_the_limit_was_known_are_checked_against_it_on_welcome() {
    let mut h = Harness::new(&URLS);
    h.max_frame_bytes = 1_024;
    let big = h
        .core
        .write(envelope("chat", json!("x".repeat(5_000))), h.now);
    let small = h.core.write(envelope("chat", json!("small")), h.now);
    let frames = h.connect("s1", false);
    assert_eq!(types(&frames), vec!["publish"]);
    assert_eq!(frames[0]["id"], format!("{}{small}", h.core.id_prefix()));
    let err = rejection(&h.log, big).expect("the big write is rejected on welcome");
    assert_eq!(err.code, ErrorCode::TooLarge);
    h.drop_connection();
    assert_eq!(
        types(&h.reopen("s1", true)),
        vec!["publish"],
        "never re-sent"
    );
}

/// Drops the connection and reopens it; the resume `hello` as sent, and the actions.
fn resume_hello(h: &mut Harness) -> (String, Vec<Action<Raw>>) {
    h.drop_connection();
    h.core.on_open(h.conn, h.now);
    let actions = h.take();
    let hello = actions
        .iter()
        .find_map(|a| match a {
            Action::Send(t) if t.contains("\"hello\"") => Some(t.clone()),
            _ => None,
        })
        .expect("a hello");
    (hello, actions)
}

#[test]
fn a_resume_names_identical_subscriptions_once_and_fits_in_max_frame_bytes() {
    let mut h = Harness::new(&URLS);
    h.max_frame_bytes = 65_536;
    h.connect("s1", false);
    // Thousands of components listening to one room, and two to the broadcast: each
    // named in `hello`, 3,002 frames made it 150 KB, refused (`too_large`) for ever.
    for _ in 0..3_000 {
        h.join_room();
    }
    let first = h.subscribe_chat();
    h.subscribe_chat();
    h.take();
    let (text, actions) = resume_hello(&mut h);
    assert!(text.len() <= 65_536, "a hello of {} B", text.len());
    let hello: Value = serde_json::from_str(&text).unwrap();
    let subs = hello["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "one frame per distinct subscription");
    assert_eq!(subs[0]["groups"], json!(["room-1"]));
    assert_eq!(subs[1]["channel"], "chat");
    assert_eq!(subs[1]["id"], format!("r{first}"));
    assert!(errors(&actions).is_empty());
    // Each subscription is still sent after welcome, for its own ack and status.
    h.welcome("s1", true);
    let frames = h.sent();
    assert_eq!(
        frames.iter().filter(|f| f["type"] == "subscribe").count(),
        3_002
    );
}

#[test]
fn a_resume_hello_refused_as_too_large_is_said_again_without_the_subscriptions() {
    // Welcomed by a gateway with a larger limit than the one it resumes on.
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    h.join_rooms(200);
    // 200 distinct rooms: one frame each is still too many for this gateway.
    let (text, _) = resume_hello(&mut h);
    assert!(text.len() > 4_096 && text.contains("room-199"));
    h.frame(json!({"type": "error", "code": "too_large",
        "message": "frame of 9000 bytes exceeds max_frame_bytes 4096"}));
    let actions = h.take();
    let hellos: Vec<Value> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(t) => Some(serde_json::from_str(t).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(types(&hellos), vec!["hello"], "said again at once, once");
    assert_eq!(hellos[0]["session"], "s1", "still a resume");
    assert!(hellos[0].get("subscriptions").is_none());
    let errs = errors(&actions);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].code, ErrorCode::TooLarge, "the app is told");
    // The session resumes, and every subscription is sent again after welcome.
    h.welcomed_back_with_rooms(200);
}

#[test]
fn a_resume_hello_over_the_known_max_frame_bytes_is_said_without_the_subscriptions_at_once() {
    let mut h = Harness::new(&URLS);
    h.max_frame_bytes = 4_096;
    h.connect("s1", false);
    h.join_rooms(200);
    // A gateway drops a `hello` more than 4 KiB over its limit without an answer:
    // sent, it would have been sent again on every attempt, for ever.
    let (text, actions) = resume_hello(&mut h);
    let hello: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(hello["session"], "s1", "still a resume");
    assert!(hello.get("subscriptions").is_none(), "{text}");
    assert!(text.len() <= 4_096);
    let sent = actions
        .iter()
        .filter(|a| matches!(a, Action::Send(_)))
        .count();
    assert_eq!(sent, 1, "one hello");
    let errs = errors(&actions);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].code, ErrorCode::TooLarge, "the app is told");
    h.welcomed_back_with_rooms(200);
}

#[test]
fn a_write_the_gateway_answered_with_an_error_is_rejected_and_never_sent_again() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let refused = h.core.write(envelope("chat", json!("a")), h.now);
    let transient = h.core.write(envelope("chat", json!("b")), h.now);
    let kept = h.core.write(envelope("chat", json!("c")), h.now);
    let sent = h.sent();
    h.frame(json!({"type": "error", "id": sent[0]["id"], "code": "no_route", "message": "none"}));
    h.frame(
        json!({"type": "error", "id": sent[1]["id"], "code": "broker_unavailable",
        "message": "later"}),
    );
    let actions = h.take();
    let err = rejection(&actions, refused).expect("no_route rejects the write");
    assert_eq!((err.code, err.retry()), (ErrorCode::NoRoute, false));
    assert_eq!(err.id.as_deref(), sent[0]["id"].as_str());
    assert_eq!(
        rejection(&actions, transient).map(|e| e.code),
        Some(ErrorCode::BrokerUnavailable)
    );
    assert!(errors(&actions).is_empty(), "no separate error event");
    h.drop_connection();
    let again = h.reopen("s1", true);
    assert_eq!(types(&again), vec!["publish"]);
    assert_eq!(again[0]["id"], format!("{}{kept}", h.core.id_prefix()));
}

// ----- connection failures -----

#[test]
fn every_failed_attempt_emits_an_error_naming_the_url_and_why() {
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    h.take();
    // a: refused (closed before it opened)
    h.core.on_close(h.conn, 1006, h.now);
    let first = errors(&h.take());
    // b: opened, then closed with 1011 before welcome
    h.core.on_open(h.conn, h.now);
    h.core.on_close(h.conn, 1011, h.now);
    let second = errors(&h.take());
    // c: opened, no welcome until the handshake timeout
    let at = h.now + 10_000;
    while h.core.state() == State::Connecting && h.now < at && Harness::opens(&h.log).len() < 3 {
        h.advance(100);
        h.take();
    }
    h.core.on_open(h.conn, h.now);
    h.take();
    h.advance(5_000);
    let third = errors(&h.take());
    let messages: Vec<String> = [first, second, third]
        .iter()
        .map(|e| {
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].code, ErrorCode::Disconnected);
            e[0].message.clone()
        })
        .collect();
    assert!(messages[0].contains("ws://a/ws") && messages[0].contains("1006 before it opened"));
    assert!(messages[1].contains("ws://b/ws") && messages[1].contains("code 1011"));
    assert!(messages[2].contains("ws://c/ws") && messages[2].contains("handshake timeout"));
}

#[test]
fn a_connection_lost_after_welcome_moves_on_without_an_error_event() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    assert!(errors(&h.drop_connection()).is_empty());
}

#[test]
fn without_a_give_up_deadline_connect_keeps_trying_and_ready_stays_pending() {
    let mut h = Harness::new(&URLS);
    h.core.connect(h.now);
    let ready = h.core.ready(h.now);
    h.take();
    for _ in 0..60 {
        h.core.on_close(h.conn, 1006, h.now);
        h.advance(10_000);
    }
    h.take();
    assert!(
        errors(&h.log).len() >= 30,
        "one error event per failed attempt"
    );
    assert!(rejection(&h.log, ready).is_none());
    assert_eq!(h.core.state(), State::Connecting);
}

#[test]
fn connect_gives_up_after_the_deadline_and_rejects_what_waits_with_timeout() {
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.give_up_after_ms = Some(3_000);
    let mut h = Harness::with(config);
    let start = h.now;
    h.core.connect(h.now);
    let ready = h.core.ready(h.now);
    let write = h.core.write(envelope("chat", json!(1)), h.now);
    h.take();
    h.fail_until_given_up(10_000);
    let err = rejection(&h.log, ready).expect("connect() rejected");
    assert_eq!(err.code, ErrorCode::Timeout);
    assert!(
        (start + 3_000..start + 3_100).contains(&h.now),
        "at {}",
        h.now - start
    );
    assert!(err.message.contains("3000") && err.message.contains("cannot connect to ws://"));
    assert_eq!(
        rejection(&h.log, write).map(|e| e.code),
        Some(ErrorCode::Timeout)
    );
    assert_eq!(h.core.state(), State::Disconnected);
    // It stopped trying; a new connect() starts again.
    let opened = Harness::opens(&h.log).len();
    h.advance(60_000);
    assert_eq!(Harness::opens(&h.take()).len(), 0);
    h.core.connect(h.now);
    assert_eq!(Harness::opens(&h.take()).len(), 1);
    assert!(opened >= 3);
}

#[test]
fn after_giving_up_ready_and_writes_are_rejected_at_once_until_connect() {
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.give_up_after_ms = Some(1_000);
    let mut h = Harness::with(config);
    h.core.connect(h.now);
    h.take();
    h.fail_until_given_up(10_000);
    let ready = h.core.ready(h.now);
    let write = h.core.write(envelope("chat", json!(1)), h.now);
    let actions = h.take();
    assert_eq!(
        Harness::rejections(&actions),
        vec![(ready, ErrorCode::Timeout), (write, ErrorCode::Timeout)],
        "rejected at once, not left waiting for a connection nobody tries"
    );
    h.core.connect(h.now);
    let ready = h.core.ready(h.now);
    assert!(
        Harness::rejections(&h.take()).is_empty(),
        "connect() starts over"
    );
    h.connect("s1", false);
    assert!(resolved(&h.log, ready));
}

#[test]
fn a_minimum_delay_of_zero_still_waits_between_failed_attempts() {
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.backoff = crate::Backoff::new(0, 1_000);
    let mut h = Harness::with(config);
    h.core.connect(h.now);
    assert_eq!(Harness::opens(&h.take()).len(), 1);
    // Each attempt refused at once, at the same instant (a URL the browser refuses):
    // the first is tried again at once, the second after a wait.
    h.core.on_close(h.conn, 1006, h.now);
    assert_eq!(
        Harness::opens(&h.take()).len(),
        1,
        "the first retry at once"
    );
    h.core.on_close(h.conn, 1006, h.now);
    assert!(
        Harness::opens(&h.take()).is_empty(),
        "then a wait, not another attempt in the same call"
    );
    assert_eq!(h.core.state(), State::Connecting);
    h.advance(2_000);
    assert_eq!(
        Harness::opens(&h.take()).len(),
        1,
        "and it tries again after the wait"
    );
}

#[test]
fn the_give_up_deadline_ends_once_connected() {
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.give_up_after_ms = Some(3_000);
    let mut h = Harness::with(config);
    let ready = h.core.ready(h.now);
    h.connect("s1", false);
    assert!(resolved(&h.log, ready));
    h.drop_connection();
    for _ in 0..20 {
        h.core.on_close(h.conn, 1006, h.now);
        h.advance(1_000);
    }
    assert_eq!(
        h.core.state(),
        State::Connecting,
        "reconnects go on after a loss"
    );
}

#[test]
fn connect_while_a_token_is_fetched_arms_the_give_up_deadline_too() {
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.fetch_token = true;
    config.give_up_after_ms = Some(3_000);
    let mut h = Harness::with(config);
    let ready = h.core.ready(h.now);
    h.core.connect(h.now);
    let asked = fetches(&h.take());
    h.core.on_token(asked[0], Ok("t".into()), h.now);
    h.take();
    h.core.on_open(h.conn, h.now);
    h.frame(h.welcome_frame("s1", false));
    h.take();
    assert!(resolved(&h.log, ready));
    // Lost: the next attempt waits for its token, and the app asks to connect (with
    // its give-up deadline) meanwhile.
    h.drop_connection();
    let ready = h.core.ready(h.now);
    h.core.connect(h.now);
    h.advance(4_000);
    h.take();
    assert_eq!(
        rejection(&h.log, ready).map(|e| e.code),
        Some(ErrorCode::Timeout),
        "given up 3 s after connect(), the token still not there"
    );
}

#[test]
fn a_subscription_the_gateway_refused_for_good_is_not_sent_again_after_reconnecting() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let refused = SubscribeOptions {
        channel: "chat".into(),
        groups: vec!["secret".into()],
        ..SubscribeOptions::default()
    };
    let transient = SubscribeOptions {
        channel: "voice".into(),
        direct: true,
        ..SubscribeOptions::default()
    };
    h.core.subscribe(refused, h.now).unwrap();
    h.core.subscribe(transient, h.now).unwrap();
    let sent = h.sent();
    assert_eq!(types(&sent), vec!["subscribe", "subscribe"]);
    h.frame(json!({"type": "error", "id": sent[0]["id"], "code": "forbidden", "message": "no"}));
    h.frame(
        json!({"type": "error", "id": sent[1]["id"], "code": "overloaded", "message": "later"}),
    );
    let events = errors(&h.take());
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].code, ErrorCode::Forbidden);
    h.drop_connection();
    let again = h.reopen("s1", true);
    assert_eq!(types(&again), vec!["subscribe"], "only the retryable one");
    assert_eq!(again[0]["channel"], "voice");
}

/// The statuses reported for subscription `sub`, in order (`error:<code>` for errors).
fn sub_statuses(actions: &[Action<Raw>], sub: u64) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SubscriptionStatus(s, None) if *s == sub => Some("pending".to_string()),
            Action::SubscriptionStatus(s, Some(e)) if *s == sub => {
                Some(format!("error:{}", e.code.as_str()))
            }
            Action::Resolve(s) if *s == sub => Some("active".to_string()),
            Action::Reject(s, e) if *s == sub => Some(format!("error:{}", e.code.as_str())),
            _ => None,
        })
        .collect()
}

/// Drops the connection, waits for the next attempt (backoff) and resumes session `s2`;
/// the frames sent after the `hello`.
fn reconnect(h: &mut Harness) -> Vec<Value> {
    let mut actions = h.drop_connection();
    for _ in 0..1_000 {
        if !Harness::opens(&actions).is_empty() {
            break;
        }
        h.advance(50);
        actions = h.take();
    }
    h.reopen("s2", true)
}

/// A subscription's readiness settles once: an app following it kept showing `error`
/// after `connect()` brought the subscription back, and `active` after the gateway
/// refused it on a later reconnect. Its status is reported on every change.
#[test]
fn a_subscriptions_status_follows_every_acknowledgement_refusal_and_stop() {
    let mut h = Harness::new(&URLS);
    h.connect("s1", false);
    let sub = h.subscribe_chat();
    // The statuses reported since `mark` (an index into the log).
    let since = |h: &mut Harness, mark: usize| {
        h.take();
        sub_statuses(&h.log[mark..], sub)
    };
    let sent = h.sent();
    h.frame(json!({"type": "ack", "id": sent[0]["id"]}));
    assert_eq!(since(&mut h, 0), vec!["pending", "active"]);
    // Stopped for good (4501): every subscription, in force or not, is in error.
    let mark = h.log.len();
    h.core.on_close(h.conn, 4501, h.now);
    assert_eq!(since(&mut h, mark), vec!["error:unauthorized"]);
    // connect() starts over: pending at once, active once acknowledged again.
    let mark = h.log.len();
    h.core.connect(h.now);
    assert_eq!(since(&mut h, mark), vec!["pending"]);
    let again = h.reopen("s2", false);
    assert_eq!(types(&again), vec!["subscribe"]);
    h.frame(json!({"type": "ack", "id": again[0]["id"]}));
    assert_eq!(since(&mut h, mark), vec!["pending", "pending", "active"]);
    // A retryable refusal after a reconnect: error, then active after the next one.
    let mark = h.log.len();
    let again = reconnect(&mut h);
    h.frame(
        json!({"type": "error", "id": again[0]["id"], "code": "overloaded", "message": "later"}),
    );
    assert_eq!(since(&mut h, mark), vec!["pending", "error:overloaded"]);
    let mark = h.log.len();
    let again = reconnect(&mut h);
    h.frame(json!({"type": "ack", "id": again[0]["id"]}));
    assert_eq!(since(&mut h, mark), vec!["pending", "active"]);
    // Refused for good on a later reconnect (the token no longer grants it): error,
    // and nothing more about it (it is not sent again).
    let mark = h.log.len();
    let again = reconnect(&mut h);
    h.frame(json!({"type": "error", "id": again[0]["id"], "code": "forbidden", "message": "no"}));
    assert_eq!(since(&mut h, mark), vec!["pending", "error:forbidden"]);
    let mark = h.log.len();
    assert!(reconnect(&mut h).is_empty());
    h.core.on_close(h.conn, 4501, h.now);
    assert!(since(&mut h, mark).is_empty());
}

/// Given up (`connectTimeoutMs`): error for subscriptions made before and after the
/// stop; `connect()` makes them pending again, and active once acknowledged.
#[test]
fn a_subscriptions_status_is_error_after_giving_up_and_active_again_after_connect() {
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.give_up_after_ms = Some(1_000);
    let mut h = Harness::with(config);
    h.core.connect(h.now);
    let before = h.subscribe_chat();
    h.take();
    h.fail_until_given_up(5_000);
    assert_eq!(sub_statuses(&h.log, before), vec!["error:timeout"]);
    let after = h.subscribe_chat();
    assert_eq!(sub_statuses(&h.take(), after), vec!["error:timeout"]);
    let sent = h.connect("s1", false);
    assert_eq!(types(&sent), vec!["subscribe", "subscribe"]);
    for f in &sent {
        h.frame(json!({"type": "ack", "id": f["id"]}));
    }
    let actions = h.take();
    for sub in [before, after] {
        assert_eq!(
            sub_statuses(&h.log, sub).last().map(String::as_str),
            Some("active")
        );
        assert!(!sub_statuses(&actions, sub).is_empty());
    }
}

// ----- tokens: getToken, renewal, expiry -----

/// A JWT for `u1` that expires at `exp_s` (seconds).
fn jwt(exp_s: u64) -> String {
    crate::token::test_jwt(&format!(r#"{{"sub":"u1","exp":{exp_s}}}"#))
}

/// The `getToken` calls among `actions`.
fn fetches(actions: &[Action<Raw>]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::FetchToken(f) => Some(*f),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// A client with `getToken` (`reconnect` delays 100..1000 ms).
    fn with_get_token() -> Self {
        let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
        config.fetch_token = true;
        config.backoff = crate::Backoff::new(100, 1_000);
        Harness::with(config)
    }

    /// Answers the one `getToken` call among `actions` with `token`; returns the hello.
    fn give_token(&mut self, actions: &[Action<Raw>], token: &str) -> Value {
        let asked = fetches(actions);
        assert_eq!(asked.len(), 1, "one getToken call: {actions:?}");
        self.core.on_token(asked[0], Ok(token.into()), self.now);
        let actions = self.take();
        assert_eq!(
            Harness::opens(&actions).len(),
            1,
            "the socket opens with the token"
        );
        self.core.on_open(self.conn, self.now);
        let hello = self.sent();
        assert_eq!(types(&hello), vec!["hello"]);
        hello[0].clone()
    }

    /// `ms` pass; the gateway's ping arrives just before the timer fires (so the
    /// connection is not declared dead).
    fn idle(&mut self, ms: u64) {
        self.now += ms;
        self.frame(json!({"type": "ping"}));
        self.core.tick(self.now);
    }

    /// `connect()` with a token from `getToken` expiring at `exp_s`, up to `welcome`.
    fn connect_with_token(&mut self, exp_s: u64) {
        self.core.connect(self.now);
        let actions = self.take();
        let hello = self.give_token(&actions, &jwt(exp_s));
        assert_eq!(hello["token"], jwt(exp_s));
        self.welcome("s1", false);
        self.take();
        assert_eq!(self.core.state(), State::Connected);
    }
}

#[test]
fn get_token_is_asked_before_the_first_socket_opens_and_its_token_goes_in_hello() {
    let mut h = Harness::with_get_token();
    h.core.connect(h.now);
    let actions = h.take();
    assert_eq!(fetches(&actions).len(), 1);
    assert!(
        Harness::opens(&actions).is_empty(),
        "no socket before the token"
    );
    assert_eq!(h.core.state(), State::Connecting);
    let hello = h.give_token(&actions, "tok-1");
    assert_eq!(hello["token"], "tok-1");
    h.welcome("s1", false);
    assert_eq!(h.core.state(), State::Connected);
}

#[test]
fn without_get_token_no_token_is_asked_for_and_the_static_token_goes_in_hello() {
    let mut config = Config::new(vec!["ws://a/ws".into()]);
    config.token = Some(jwt(2));
    let mut h = Harness::with(config);
    h.core.connect(h.now);
    let actions = h.take();
    assert!(fetches(&actions).is_empty());
    h.core.on_open(h.conn, h.now);
    assert_eq!(h.sent()[0]["token"], jwt(2));
    h.welcome("s1", false);
    h.advance(10_000);
    assert!(fetches(&h.take()).is_empty(), "nothing to renew with");
}

#[test]
fn the_token_is_renewed_at_three_quarters_of_its_lifetime_with_a_refresh_on_the_live_connection() {
    let mut h = Harness::with_get_token();
    // now = 1 s; the token expires at 101 s: renewal at 1 s + 75 s.
    h.connect_with_token(101);
    h.idle(74_999);
    let early = h.take();
    assert!(
        fetches(&early).is_empty(),
        "not before 75 % of the lifetime"
    );
    h.idle(1);
    let actions = h.take();
    let asked = fetches(&actions);
    assert_eq!(asked.len(), 1, "getToken at 76 s");
    h.core.on_token(asked[0], Ok(jwt(301)), h.now);
    let actions = h.take();
    let refresh: Vec<Value> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(t) => Some(serde_json::from_str(t).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(types(&refresh), vec!["refresh"]);
    assert_eq!(refresh[0]["token"], jwt(301));
    let id = refresh[0]["id"].as_str().unwrap().to_string();
    assert!(Harness::opens(&actions).is_empty(), "same connection");
    h.frame(json!({"type": "ack", "id": id}));
    let actions = h.take();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::StateChanged(_))),
        "no state change: {actions:?}"
    );
    assert!(errors(&actions).is_empty());
    assert_eq!(h.core.state(), State::Connected);
    assert_eq!(h.core.session(), Some("s1"));
    // The new token (expiring at 301 s) is renewed in its turn, at 76 s + 75 % of 225 s.
    let next = 76_000 + 225_000 * 3 / 4;
    let timers: Vec<Option<u64>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::SetTimer(t) => Some(*t),
            _ => None,
        })
        .collect();
    assert!(timers.is_empty() || timers.iter().all(|t| t.is_some_and(|t| t <= next)));
    h.idle(next - h.now - 1);
    assert!(fetches(&h.take()).is_empty());
    h.idle(1);
    assert_eq!(fetches(&h.take()).len(), 1, "the next renewal at {next}");
}

/// An issuer's "never" (an `exp` far in the future: here the most digits the native
/// codec reads; the browser's reads `Number.MAX_SAFE_INTEGER` too) is renewed at 75 %
/// of its lifetime like any token: not early, and with no overflow (debug builds
/// panicked; the browser build wrapped to any time, a renewal every second in a band).
#[test]
fn a_token_that_never_expires_is_not_renewed_early() {
    let mut h = Harness::with_get_token();
    h.connect_with_token(999_999_999_999_999);
    h.idle(3_600_000);
    assert!(fetches(&h.take()).is_empty());
    assert_eq!(h.core.state(), State::Connected);
}

/// A renewal's `getToken` still running when the app closes the client (or it stops)
/// ends quietly: no `error` event and no `refresh` after the close. A failed one used
/// to be reported as a renewal error on the closed client.
#[test]
fn a_renewal_answered_after_close_reports_nothing() {
    for fails in [true, false] {
        let mut h = Harness::with_get_token();
        h.connect_with_token(101);
        h.idle(75_000);
        let asked = fetches(&h.take());
        assert_eq!(asked.len(), 1, "the renewal's getToken");
        h.core.close(h.now);
        h.take();
        let token = if fails {
            Err("offline".to_string())
        } else {
            Ok(jwt(301))
        };
        h.core.on_token(asked[0], token, h.now);
        let actions = h.take();
        assert!(actions.is_empty(), "nothing after close: {actions:?}");
    }
}

/// A renewed token that no longer grants a subscription: the gateway unbinds it and
/// says so without an id, before the refresh's `ack`. The SDK sends its subscriptions
/// again, so the revoked one is refused with its id: its status turns `error` and it
/// is dropped, while the other is acknowledged as it stands. (It kept showing
/// `active`, receiving nothing, until the next reconnect.)
#[test]
fn subscriptions_a_renewed_token_revokes_turn_error_and_the_others_stay_active() {
    let mut h = Harness::with_get_token();
    h.connect_with_token(101);
    let chat = h.subscribe_chat();
    let room_1 = SubscribeOptions {
        channel: "chat".into(),
        groups: vec!["room-1".into()],
        ..Default::default()
    };
    let room = h.core.subscribe(room_1, h.now).unwrap();
    for f in h.sent() {
        h.frame(json!({"type": "ack", "id": f["id"]}));
    }
    h.idle(75_000);
    let actions = h.take();
    let refresh = answer_renewal(&mut h, &actions, &jwt(301));
    let mark = h.log.len();
    h.frame(json!({"type": "error", "code": "forbidden",
        "message": "the renewed token no longer grants chat.group.room-1: unsubscribed"}));
    let again = h.sent();
    assert_eq!(
        types(&again),
        vec!["subscribe", "subscribe"],
        "both sent again"
    );
    h.frame(json!({"type": "ack", "id": refresh}));
    for f in &again {
        if f["groups"] == json!(["room-1"]) {
            h.frame(json!({"type": "error", "id": f["id"], "code": "forbidden", "message": "no"}));
        } else {
            h.frame(json!({"type": "ack", "id": f["id"]}));
        }
    }
    h.take();
    assert_eq!(
        sub_statuses(&h.log[mark..], room),
        vec!["pending", "error:forbidden"]
    );
    assert_eq!(
        sub_statuses(&h.log[mark..], chat),
        vec!["pending", "active"]
    );
    // Dropped: the next connection subscribes to chat only.
    let mut actions = h.drop_connection();
    for _ in 0..1_000 {
        if let Some(&fetch) = fetches(&actions).first() {
            h.core.on_token(fetch, Ok(jwt(301)), h.now);
        } else if !Harness::opens(&actions).is_empty() {
            break;
        } else {
            h.advance(50);
        }
        actions = h.take();
    }
    let next = h.reopen("s1", true);
    assert_eq!(types(&next), vec!["subscribe"]);
    assert!(next[0].get("groups").is_none(), "{next:?}");
}

/// A JWT for `u1` issued at `iat_s` that expires at `exp_s` (seconds).
fn jwt_issued(iat_s: u64, exp_s: u64) -> String {
    crate::token::test_jwt(&format!(r#"{{"sub":"u1","iat":{iat_s},"exp":{exp_s}}}"#))
}

/// Answers the one `getToken` call among `actions` with `token` while connected; returns
/// the `refresh` frame's id.
fn answer_renewal(h: &mut Harness, actions: &[Action<Raw>], token: &str) -> String {
    let asked = fetches(actions);
    assert_eq!(asked.len(), 1, "one getToken call: {actions:?}");
    h.core.on_token(asked[0], Ok(token.into()), h.now);
    let sent = h.sent();
    assert_eq!(types(&sent), vec!["refresh"]);
    sent[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn with_the_browser_clock_ahead_of_the_issuer_renewal_follows_the_tokens_lifetime() {
    let mut h = Harness::with_get_token();
    // The browser's clock says 10,000 s; the issuer's said 100 s: 100-second tokens
    // look long expired here. Renewal still comes at 75 % of their lifetime, 75 s.
    h.now = 10_000_000;
    h.core.connect(h.now);
    let actions = h.take();
    h.give_token(&actions, &jwt_issued(100, 200));
    h.welcome("s1", false);
    h.take();
    for round in 0..3 {
        h.idle(74_999);
        assert!(
            fetches(&h.take()).is_empty(),
            "round {round}: not every second"
        );
        h.idle(1);
        let actions = h.take();
        let issued = 175 + 75 * round;
        let id = answer_renewal(&mut h, &actions, &jwt_issued(issued, issued + 100));
        h.frame(json!({"type": "ack", "id": id}));
        h.take();
    }
}

/// A token provider that caches (Firebase, Auth0) hands out a token issued long ago.
/// Its renewal was scheduled from its whole lifetime, as if just issued: after its
/// `exp`, so the gateway closed the session (4004) once per token lifetime.
#[test]
fn a_cached_token_half_used_is_renewed_before_its_exp() {
    let mut h = Harness::with_get_token();
    // 1,000 s on the browser's clock; the token was issued at 400 s for 1,200 s: 600 s
    // left. Renewal at 75 % of those, 450 s from now (it was 900 s, past its exp).
    h.now = 1_000_000;
    h.core.connect(h.now);
    let actions = h.take();
    h.give_token(&actions, &jwt_issued(400, 1_600));
    h.welcome("s1", false);
    h.take();
    h.idle(449_999);
    assert!(
        fetches(&h.take()).is_empty(),
        "not before 75 % of what is left"
    );
    h.idle(1);
    assert_eq!(fetches(&h.take()).len(), 1, "renewed at 1,450 s");
    assert!(h.now < 1_600_000, "before the token's exp");
}

#[test]
fn a_token_without_iat_that_looks_expired_on_the_browser_clock_is_not_renewed_every_second() {
    let mut h = Harness::with_get_token();
    h.now = 10_000_000;
    h.core.connect(h.now);
    let actions = h.take();
    h.give_token(&actions, &jwt(200));
    h.welcome("s1", false);
    h.take();
    for _ in 0..30 {
        h.idle(1_000);
    }
    assert!(fetches(&h.take()).is_empty(), "no renewal loop");
    // The gateway closes with 4004 when the token really expires; the reconnect asks
    // getToken for a fresh one.
    h.core.on_close(h.conn, 4004, h.now);
    assert_eq!(fetches(&h.take()).len(), 1);
}

#[test]
fn a_refused_refresh_is_reported_and_not_repeated_and_expiry_then_reconnects_with_a_fresh_token() {
    let mut h = Harness::with_get_token();
    h.connect_with_token(101);
    h.idle(75_000);
    let asked = fetches(&h.take());
    h.core.on_token(asked[0], Ok("not-accepted".into()), h.now);
    let sent = h.sent();
    assert_eq!(types(&sent), vec!["refresh"]);
    h.frame(
        json!({"type": "error", "id": sent[0]["id"], "code": "unauthorized",
        "message": "the token is malformed"}),
    );
    let actions = h.take();
    let events = errors(&actions);
    assert_eq!(events.len(), 1, "{actions:?}");
    assert_eq!(events[0].code, ErrorCode::Unauthorized);
    assert!(
        events[0].message.contains("the token is malformed"),
        "{}",
        events[0].message
    );
    assert_eq!(h.core.state(), State::Connected, "the connection stays");
    // Not sent again (the gateway counts refused frames) until the token expires...
    for _ in 0..24 {
        h.idle(1_000);
    }
    assert!(fetches(&h.take()).is_empty(), "no new getToken call");
    // ...then the gateway closes with 4004 and the reconnect gets a fresh token.
    h.core.on_close(h.conn, 4004, h.now);
    let actions = h.take();
    assert_eq!(h.give_token(&actions, &jwt(500))["token"], jwt(500));
}

#[test]
fn a_transient_refresh_error_is_retried_with_backoff() {
    let mut h = Harness::with_get_token();
    h.connect_with_token(101);
    h.idle(75_000);
    let asked = fetches(&h.take());
    h.core.on_token(asked[0], Ok(jwt(200)), h.now);
    let sent = h.sent();
    h.frame(json!({"type": "error", "id": sent[0]["id"], "code": "overloaded", "message": "busy"}));
    assert_eq!(errors(&h.take()).len(), 1);
    h.idle(200);
    assert_eq!(fetches(&h.take()).len(), 1, "getToken asked again");
}

#[test]
fn a_failed_get_token_during_renewal_is_reported_and_retried() {
    let mut h = Harness::with_get_token();
    h.connect_with_token(101);
    h.idle(75_000);
    let asked = fetches(&h.take());
    h.core.on_token(asked[0], Err("backend down".into()), h.now);
    let events = errors(&h.take());
    assert_eq!(events.len(), 1);
    assert!(events[0].message.contains("getToken failed: backend down"));
    h.idle(200);
    assert_eq!(fetches(&h.take()).len(), 1, "getToken asked again");
}

#[test]
fn failed_renewals_with_a_minimum_delay_of_zero_back_off_instead_of_calling_get_token_in_a_loop() {
    let mut config = Config::new(URLS.iter().map(|u| u.to_string()).collect());
    config.fetch_token = true;
    config.backoff = crate::Backoff::new(0, 10_000);
    let mut h = Harness::with(config);
    // A token of an hour: renewal at 45 min, then every getToken fails at once.
    h.connect_with_token(3_601);
    h.idle(2_700_000);
    let mut asked = fetches(&h.take());
    assert_eq!(asked.len(), 1, "the renewal asks getToken");
    let mut calls = 0;
    // One simulated second, with the timer firing every millisecond.
    for _ in 0..1_000 {
        for fetch in asked {
            calls += 1;
            h.core.on_token(fetch, Err("backend down".into()), h.now);
        }
        h.advance(1);
        asked = fetches(&h.take());
    }
    assert!(
        (2..=10).contains(&calls),
        "{calls} getToken calls in one second of failing renewals"
    );
}

#[test]
fn a_close_with_token_expired_reconnects_with_a_fresh_token_from_get_token_and_resumes() {
    let mut h = Harness::with_get_token();
    h.connect_with_token(101);
    h.frame(json!({"type": "error", "code": "unauthorized", "message": "the token has expired"}));
    h.core.on_close(h.conn, 4004, h.now);
    let actions = h.take();
    assert_eq!(
        fetches(&actions).len(),
        1,
        "a fresh token for the reconnect"
    );
    assert!(Harness::opens(&actions).is_empty());
    let hello = h.give_token(&actions, &jwt(500));
    assert_eq!(hello["token"], jwt(500));
    assert_eq!(hello["session"], "s1", "resumes");
    h.welcome("s1", true);
    assert_eq!(h.core.state(), State::Connected);
}

#[test]
fn every_reconnect_asks_get_token_again() {
    let mut h = Harness::with_get_token();
    h.connect_with_token(101);
    let actions = h.drop_connection();
    let hello = h.give_token(&actions, &jwt(102));
    assert_eq!(hello["token"], jwt(102));
}

#[test]
fn unauthorized_at_hello_after_the_token_expired_reconnects_with_a_fresh_token() {
    let mut h = Harness::with_get_token();
    h.core.connect(h.now);
    let actions = h.take();
    // A token that expired at 0.5 s (now is 1 s): the gateway refuses it.
    h.give_token(&actions, &jwt(0));
    h.core.on_close(h.conn, 4501, h.now);
    let actions = h.take();
    assert_eq!(
        fetches(&actions).len(),
        1,
        "asks for a fresh token: {actions:?}"
    );
    // A token that is still valid but refused: the client stops.
    h.give_token(&actions, &jwt(1_000));
    h.core.on_close(h.conn, 4501, h.now);
    let actions = h.take();
    assert!(fetches(&actions).is_empty());
    assert_eq!(h.core.state(), State::Disconnected);
}

#[test]
fn a_failed_get_token_is_an_error_event_and_is_retried_with_backoff() {
    let mut h = Harness::with_get_token();
    let ready = h.core.ready(h.now);
    h.core.connect(h.now);
    let first = fetches(&h.take());
    h.core.on_token(first[0], Err("offline".into()), h.now);
    let actions = h.take();
    let events = errors(&actions);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].code, ErrorCode::Disconnected);
    assert!(
        events[0].message.contains("getToken failed: offline"),
        "{}",
        events[0].message
    );
    let second = fetches(&actions);
    assert_eq!(second.len(), 1, "the first retry is immediate");
    h.core.on_token(second[0], Err("offline".into()), h.now);
    let actions = h.take();
    assert!(fetches(&actions).is_empty(), "then the backoff waits");
    assert!(Harness::opens(&actions).is_empty());
    assert_eq!(h.core.state(), State::Connecting);
    h.advance(200);
    let actions = h.take();
    let hello = h.give_token(&actions, "tok");
    assert_eq!(hello["token"], "tok");
    h.welcome("s1", false);
    assert!(resolved(&h.take(), ready));
}

#[test]
fn a_get_token_that_never_answers_fails_the_attempt_and_a_late_answer_is_ignored() {
    let mut h = Harness::with_get_token();
    h.core.connect(h.now);
    let first = fetches(&h.take());
    h.advance(5_000);
    let actions = h.take();
    let events = errors(&actions);
    assert!(
        events[0].message.contains("getToken did not answer"),
        "{events:?}"
    );
    let second = fetches(&actions);
    assert_eq!(second.len(), 1);
    h.core.on_token(first[0], Ok("late".into()), h.now);
    assert!(
        Harness::opens(&h.take()).is_empty(),
        "the late answer opens nothing"
    );
    h.core.on_token(second[0], Ok("tok".into()), h.now);
    assert_eq!(Harness::opens(&h.take()).len(), 1);
}

#[test]
fn a_subscription_is_in_force_only_once_the_gateway_acknowledged_it() {
    let mut h = Harness::new(&URLS);
    let chat = SubscribeOptions {
        channel: "chat".into(),
        ..SubscribeOptions::default()
    };
    // Subscribed before connecting: nothing is sent, nothing resolves.
    let early = h.core.subscribe(chat.clone(), h.now).unwrap();
    assert!(!resolved(&h.take(), early));
    let sent = h.connect("s1", false);
    let subscribe = sent
        .iter()
        .find(|f| f["type"] == "subscribe")
        .unwrap()
        .clone();
    assert!(!resolved(&h.take(), early), "sent is not in force");
    h.frame(json!({"type": "ack", "id": subscribe["id"]}));
    assert!(resolved(&h.take(), early), "the ack puts it in force");

    // Refused for good: rejected with the gateway's code (and the error event).
    let secret = h
        .core
        .subscribe(
            SubscribeOptions {
                groups: vec!["secret".into()],
                ..chat.clone()
            },
            h.now,
        )
        .unwrap();
    let sent = h.sent();
    h.frame(json!({"type": "error", "id": sent[0]["id"], "code": "forbidden", "message": "no"}));
    let actions = h.take();
    assert_eq!(
        rejection(&actions, secret).map(|e| e.code),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(errors(&actions).len(), 1);

    // Refused for now: stays pending, and is in force after the next connection's ack.
    let later = h
        .core
        .subscribe(
            SubscribeOptions {
                channel: "voice".into(),
                ..SubscribeOptions::default()
            },
            h.now,
        )
        .unwrap();
    let sent = h.sent();
    h.frame(
        json!({"type": "error", "id": sent[0]["id"], "code": "overloaded", "message": "later"}),
    );
    let actions = h.take();
    assert_eq!(rejection(&actions, later), None);
    assert!(!resolved(&actions, later));
    h.drop_connection();
    let again = h.reopen("s1", true);
    let voice = again
        .iter()
        .find(|f| f["channel"] == "voice")
        .unwrap()
        .clone();
    h.frame(json!({"type": "ack", "id": voice["id"]}));
    assert!(resolved(&h.take(), later));

    // Not yet in force when the client closes: rejected with `closed`.
    let last = h.core.subscribe(chat, h.now).unwrap();
    h.core.close(h.now);
    assert_eq!(
        rejection(&h.take(), last).map(|e| e.code),
        Some(ErrorCode::Closed)
    );
}
