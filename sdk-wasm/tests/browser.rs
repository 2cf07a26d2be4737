//! Browser tests (wasm-bindgen-test in headless Chromium) of the JS `Client` against a
//! REAL stack: two gateways, the demo service and RabbitMQ, started by `sdk-wasm/test.sh`
//! with `warren-stack`, whose state JSON (URLs, control API) is compiled in through
//! `WARREN_STACK_STATE_JSON`. The stack runs with an extra channel `silent` that no
//! service consumes, for the timeout test.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Function, Promise, Reflect, JSON};
use warren_sdk::browser::error::is_warren_error;
use warren_sdk::browser::{Client, Subscription};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &Function, ms: f64);
}

/// The stack's state, as `warren-stack --state-file` wrote it.
fn stack() -> JsValue {
    // Compiled in by test.sh; without it the tests fail with this message (the file
    // still compiles, so `cargo clippy --all-targets` works without a stack).
    let Some(text) = option_env!("WARREN_STACK_STATE_JSON") else {
        panic!("run through sdk-wasm/test.sh: WARREN_STACK_STATE_JSON is not set");
    };
    JSON::parse(text).expect("state JSON")
}

fn path(v: &JsValue, keys: &[&str]) -> JsValue {
    keys.iter().fold(v.clone(), |v, k| {
        Reflect::get(&v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED)
    })
}

/// The third stack's state: its gateways send replies by direct reply-to
/// (`--request-replies direct`).
fn direct_stack() -> JsValue {
    let Some(text) = option_env!("WARREN_DIRECT_STACK_STATE_JSON") else {
        panic!("run through sdk-wasm/test.sh: WARREN_DIRECT_STACK_STATE_JSON is not set");
    };
    JSON::parse(text).expect("state JSON")
}

/// The URL of gateway `index` (0 primary, 1 failover) for `listener` (`all`, `tickets`, ...).
fn url(index: u32, listener: &str) -> String {
    url_of(&stack(), index, listener)
}

/// [`url`] of the stack whose state is `stack`.
fn url_of(stack: &JsValue, index: u32, listener: &str) -> String {
    let gateways = path(stack, &["gateways"]);
    path(&Array::from(&gateways).get(index), &["urls", listener])
        .as_string()
        .expect("a gateway URL")
}

fn control() -> String {
    control_of(&stack())
}

fn control_of(stack: &JsValue) -> String {
    path(stack, &["control"]).as_string().expect("control URL")
}

fn json(text: &str) -> JsValue {
    JSON::parse(text).expect("test JSON")
}

fn client(options: &str) -> Client {
    Client::new(json(options).unchecked_into()).expect("client")
}

fn both(listener: &str) -> String {
    format!(r#"["{}", "{}"]"#, url(0, listener), url(1, listener))
}

async fn wait(p: Promise) -> Result<JsValue, JsValue> {
    JsFuture::from(p).await
}

async fn sleep(ms: u32) {
    let p = Promise::new(&mut |resolve, _| set_timeout(&resolve, f64::from(ms)));
    let _ = wait(p).await;
}

/// A JS function that records its argument.
fn recorder() -> (Function, Rc<RefCell<Vec<JsValue>>>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let f = Closure::<dyn FnMut(JsValue)>::new(move |v| s.borrow_mut().push(v));
    let function = f.as_ref().unchecked_ref::<Function>().clone();
    f.forget();
    (function, seen)
}

async fn post(url: &str) {
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    let window = web_sys::window().expect("window");
    let response = wait(window.fetch_with_str_and_init(url, &init))
        .await
        .expect("control API reachable");
    let response: web_sys::Response = response.unchecked_into();
    assert!(response.ok(), "POST {url}: {}", response.status());
}

fn code_of(err: &JsValue) -> String {
    path(err, &["code"]).as_string().unwrap_or_default()
}

#[wasm_bindgen_test]
async fn connect_opens_a_session_and_write_resolves_on_the_gateway_ack() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    assert_eq!(c.state(), "connected");
    assert!(c.session().is_string());
    wait(c.write(json(r#"{"channel": "echo", "message": {"hello": "browser"}}"#).unchecked_into()))
        .await
        .expect("write acked");
    c.close();
}

#[wasm_bindgen_test]
async fn write_and_wait_resolves_with_the_reply_of_the_echo_and_tickets_services() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    let reply = wait(c.write_and_wait(
        json(r#"{"channel": "echo", "message": {"n": 42, "s": "x"}}"#),
        Some(json(r#"{"timeoutMs": 5000}"#).unchecked_into()),
    ))
    .await
    .expect("echo reply");
    assert_eq!(JSON::stringify(&reply).unwrap(), r#"{"n":42,"s":"x"}"#);
    let ticket = wait(c.write_and_wait(
        json(r#"{"channel": "tickets", "message": {"op": "create", "title": "wasm"}}"#),
        None,
    ))
    .await
    .expect("ticket");
    assert_eq!(
        path(&ticket, &["title"]).as_string().as_deref(),
        Some("wasm")
    );
    assert_eq!(
        path(&ticket, &["status"]).as_string().as_deref(),
        Some("open")
    );
    c.close();
}

#[wasm_bindgen_test]
async fn a_subscription_receives_a_chat_broadcast_relayed_by_the_service() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    let (handler, seen) = recorder();
    let sub = c
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            handler,
            None,
        )
        .expect("subscribe");
    wait(sub.ready())
        .await
        .expect("the subscription is in force");
    let delivery = broadcast_and_wait(&c, &seen, "hi")
        .await
        .expect("the broadcast was delivered");
    assert_eq!(
        path(&delivery, &["channel"]).as_string().as_deref(),
        Some("chat")
    );
    assert_eq!(
        path(&delivery, &["routingKey"]).as_string().as_deref(),
        Some("chat.all")
    );
    assert!(path(&delivery, &["messageId"]).as_string().is_some());
    c.close();
}

/// Writes a chat broadcast through `c` with a fresh text starting with `prefix` (the
/// demo service relays it to the channel) and waits up to 5 s for its delivery among
/// `seen`.
async fn broadcast_and_wait(
    c: &Client,
    seen: &Rc<RefCell<Vec<JsValue>>>,
    prefix: &str,
) -> Option<JsValue> {
    let text = format!("{prefix}-{}", js_sys::Math::random());
    let envelope = format!(
        r#"{{"channel": "chat", "distribution": {{"broadcast": true}}, "message": {{"text": "{text}"}}}}"#
    );
    wait(c.write(json(&envelope).unchecked_into()))
        .await
        .expect("write");
    for _ in 0..50 {
        let found = seen
            .borrow()
            .iter()
            .find(|d| path(d, &["message", "text"]).as_string().as_deref() == Some(text.as_str()))
            .cloned();
        if found.is_some() {
            return found;
        }
        sleep(100).await;
    }
    None
}

/// Records how `p` settles (`None` while pending).
fn watch(p: &Promise) -> Rc<RefCell<Option<Result<JsValue, JsValue>>>> {
    let out = Rc::new(RefCell::new(None));
    let (ok, err) = (out.clone(), out.clone());
    let on_ok = Closure::<dyn FnMut(JsValue)>::new(move |v| *ok.borrow_mut() = Some(Ok(v)));
    let on_err = Closure::<dyn FnMut(JsValue)>::new(move |e| *err.borrow_mut() = Some(Err(e)));
    let _ = p.then2(&on_ok, &on_err);
    on_ok.forget();
    on_err.forget();
    out
}

#[wasm_bindgen_test]
async fn a_subscription_is_ready_once_the_gateway_acknowledged_it_and_refusals_reject_it() {
    // Subscribed before connecting: not in force, so `ready` stays pending.
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    let (handler, seen) = recorder();
    let sub = c
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            handler,
            None,
        )
        .expect("subscribe");
    let ready = watch(&sub.ready());
    sleep(300).await;
    assert!(ready.borrow().is_none(), "ready before any connection");
    let started = js_sys::Date::now();
    wait(c.connect()).await.expect("connect");
    wait(sub.ready()).await.expect("ready resolves");
    let settle_ms = js_sys::Date::now() - started;
    assert!(settle_ms < 5000.0, "ready {settle_ms} ms after connect()");
    // In force means bound: a broadcast published right after `ready` arrives (no sleep).
    assert!(
        broadcast_and_wait(&c, &seen, "ready").await.is_some(),
        "the broadcast published after ready was delivered"
    );
    c.close();

    // Refused by the gateway for good (this port serves only `tickets`): rejected with
    // the gateway's code, and the `error` event says it too.
    let t = client(&format!(r#"{{"urls": {}}}"#, both("tickets")));
    let (on_error, errors) = recorder();
    t.on("error", on_error).expect("on");
    wait(t.connect())
        .await
        .expect("connect to the tickets port");
    let (noop, _) = recorder();
    let refused = t
        .subscribe(json(r#"{"channel": "chat"}"#).unchecked_into(), noop, None)
        .expect("subscribe");
    let err = wait(refused.ready()).await.expect_err("refused");
    assert!(is_warren_error(&err), "a WarrenError");
    assert_eq!(code_of(&err), "unknown_channel");
    assert!(errors
        .borrow()
        .iter()
        .any(|e| code_of(e) == "unknown_channel"));
    t.close();

    // Not yet in force when the client closes: rejected with `closed`.
    let n = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    let (noop, _) = recorder();
    let never = n
        .subscribe(json(r#"{"channel": "chat"}"#).unchecked_into(), noop, None)
        .expect("subscribe");
    n.close();
    let err = wait(never.ready()).await.expect_err("closed");
    assert_eq!(code_of(&err), "closed");
}

/// `subscribe`'s `onStatus` hears every change (`ready` settles once): `pending` when
/// sent, `active` on the gateway's ack, `error` when the client closes; and `error` for
/// a refusal.
#[wasm_bindgen_test]
async fn on_status_reports_every_change_of_a_subscription() {
    let strings = |v: &Rc<RefCell<Vec<JsValue>>>| -> Vec<String> {
        v.borrow().iter().filter_map(|s| s.as_string()).collect()
    };
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    let (noop, _) = recorder();
    let (on_status, statuses) = recorder();
    let sub = c
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            noop,
            Some(on_status),
        )
        .expect("subscribe");
    wait(sub.ready()).await.expect("in force");
    assert_eq!(strings(&statuses), ["pending", "active"]);
    c.close();
    assert_eq!(strings(&statuses), ["pending", "active", "error"]);

    let t = client(&format!(r#"{{"urls": {}}}"#, both("tickets")));
    wait(t.connect())
        .await
        .expect("connect to the tickets port");
    let (noop, _) = recorder();
    let (on_status, statuses) = recorder();
    let refused = t
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            noop,
            Some(on_status),
        )
        .expect("subscribe");
    wait(refused.ready()).await.expect_err("refused");
    assert_eq!(strings(&statuses), ["pending", "error"]);
    t.close();
}

/// A message a service sends to a group and to one of its members in ONE publish (the
/// demo chat relays a distribution naming both with the user's key in `CC`) reaches
/// the member's session once, by one key, naming the other (`deliver.keys`): the SDK
/// hands it to the member's room subscription AND to its direct one, once each (the
/// direct one never got it, and the message's id then kept it out for good).
#[wasm_bindgen_test]
async fn a_message_to_a_group_and_its_member_reaches_both_subscriptions_of_the_member_once() {
    let tag = format!("{}", js_sys::Math::random()).replace('.', "");
    let room = format!("room-{tag}");
    // Anonymous: bob's user id is his session id.
    let bob = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(bob.connect()).await.expect("connect bob");
    let bob_user = bob.session().as_string().expect("bob's session");
    let (on_room, in_room) = recorder();
    let (on_direct, in_direct) = recorder();
    let room_sub = bob
        .subscribe(
            json(&format!(r#"{{"channel": "chat", "groups": ["{room}"]}}"#)).unchecked_into(),
            on_room,
            None,
        )
        .expect("subscribe room");
    let direct_sub = bob
        .subscribe(
            json(r#"{"channel": "chat", "direct": true}"#).unchecked_into(),
            on_direct,
            None,
        )
        .expect("subscribe direct");
    wait(room_sub.ready()).await.expect("room subscribed");
    wait(direct_sub.ready()).await.expect("direct subscribed");

    let ann = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(ann.connect()).await.expect("connect ann");
    let text = format!("both-{tag}");
    wait(
        ann.write(
            json(&format!(
                r#"{{"channel": "chat", "distribution": {{"groups": ["{room}"], "direct": ["{bob_user}"]}}, "message": {{"text": "{text}"}}}}"#
            ))
            .unchecked_into(),
        ),
    )
    .await
    .expect("write");
    let got = |seen: &Rc<RefCell<Vec<JsValue>>>| texts_with(seen, "both-", &tag).len();
    assert!(
        eventually(|| got(&in_room) >= 1 && got(&in_direct) >= 1).await,
        "both subscriptions got it: room {:?}, direct {:?}",
        texts_with(&in_room, "", ""),
        texts_with(&in_direct, "", "")
    );
    sleep(500).await;
    assert_eq!(
        texts_with(&in_room, "", ""),
        vec![text.clone()],
        "room, once"
    );
    assert_eq!(
        texts_with(&in_direct, "", ""),
        vec![text.clone()],
        "direct, once"
    );
    let id = |seen: &Rc<RefCell<Vec<JsValue>>>| path(&seen.borrow()[0], &["messageId"]);
    assert_eq!(id(&in_room), id(&in_direct), "one message");
    bob.close();
    ann.close();
}

/// Waits (up to 5 s) for the delivery of ticket `title` announced as event `event`.
async fn ticket_event(seen: &Rc<RefCell<Vec<JsValue>>>, title: &str, event: &str) -> JsValue {
    let find = || {
        seen.borrow()
            .iter()
            .find(|d| {
                path(d, &["message", "title"]).as_string().as_deref() == Some(title)
                    && path(d, &["event"]).as_string().as_deref() == Some(event)
            })
            .cloned()
    };
    for _ in 0..50 {
        if let Some(d) = find() {
            return d;
        }
        sleep(100).await;
    }
    find().unwrap_or_else(|| panic!("ticket `{title}` was not announced as event `{event}`"))
}

#[wasm_bindgen_test]
async fn a_wildcard_topic_subscription_hands_the_app_the_event_name_and_the_full_key() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    let (handler, seen) = recorder();
    let _sub = c
        .subscribe(
            json(r#"{"channel": "tickets", "topic": "ticket.*"}"#).unchecked_into(),
            handler,
            None,
        )
        .expect("subscribe");
    sleep(200).await; // the subscription is in place before the ticket changes
                      // The demo desk announces every change as `tickets.event.ticket.<change>`.
    let title = format!("topic-{}", js_sys::Math::random());
    let create =
        format!(r#"{{"channel": "tickets", "message": {{"op": "create", "title": "{title}"}}}}"#);
    let ticket = wait(c.write_and_wait(json(&create), None))
        .await
        .expect("ticket created");
    let created = ticket_event(&seen, &title, "created").await;
    assert_eq!(
        path(&created, &["routingKey"]).as_string().as_deref(),
        Some("tickets.event.ticket.created")
    );
    assert_eq!(
        path(&created, &["channel"]).as_string().as_deref(),
        Some("tickets")
    );
    let id = path(&ticket, &["id"]).as_f64().expect("a ticket id");
    let close = format!(r#"{{"channel": "tickets", "message": {{"op": "close", "id": {id}}}}}"#);
    wait(c.write_and_wait(json(&close), None))
        .await
        .expect("ticket closed");
    let closed = ticket_event(&seen, &title, "closed").await;
    assert_eq!(
        path(&closed, &["routingKey"]).as_string().as_deref(),
        Some("tickets.event.ticket.closed")
    );
    c.close();
}

#[wasm_bindgen_test]
async fn write_and_wait_rejects_with_timeout_when_no_service_answers() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    let started = js_sys::Date::now();
    let err = wait(c.write_and_wait(
        json(r#"{"channel": "silent", "message": {"anyone": "there?"}}"#),
        Some(json(r#"{"timeoutMs": 300}"#).unchecked_into()),
    ))
    .await
    .expect_err("nobody answers on `silent`");
    let elapsed = js_sys::Date::now() - started;
    assert_eq!(code_of(&err), "timeout");
    assert_eq!(
        path(&err, &["name"]).as_string().as_deref(),
        Some("WarrenError")
    );
    assert_eq!(path(&err, &["retry"]).as_bool(), Some(true));
    assert!(
        (250.0..3_000.0).contains(&elapsed),
        "rejected after {elapsed} ms"
    );
    // The pending entry is gone: the client still works and has nothing to time out.
    wait(c.write(json(r#"{"channel": "echo", "message": 1}"#).unchecked_into()))
        .await
        .expect("still usable");
    c.close();
}

/// A `writeAndWait` of `timeout_ms` on the stack's `silent` URL (no gateway answers,
/// so only the SDK's own deadline can reject it; `handshake_ms` is the client's next
/// timer), with `Date.now` shifted by `shift_ms` while it waits: how it ended (if it
/// did within 10 s) and after how many ms.
async fn with_the_wall_clock_shifted(
    shift_ms: i64,
    handshake_ms: u32,
    timeout_ms: u32,
) -> (Option<Result<JsValue, JsValue>>, f64) {
    let silent = path(&stack(), &["silent"]).as_string().expect("silent URL");
    let c = client(&format!(
        r#"{{"urls": ["{silent}"], "handshakeTimeoutMs": {handshake_ms}}}"#
    ));
    let _ = watch(&c.connect());
    let pending = watch(&c.write_and_wait(
        json(r#"{"channel": "silent", "message": {"clock": "shifted"}}"#),
        Some(json(&format!(r#"{{"timeoutMs": {timeout_ms}}}"#)).unchecked_into()),
    ));
    let now = || js_sys::eval("performance.now()").unwrap().as_f64().unwrap();
    let started = now();
    js_sys::eval(&format!(
        "globalThis.__dateNow = Date.now; \
         Date.now = () => globalThis.__dateNow.call(Date) + ({shift_ms});"
    ))
    .unwrap();
    let _ = eventually(|| pending.borrow().is_some()).await;
    let elapsed = now() - started;
    js_sys::eval("Date.now = globalThis.__dateNow;").unwrap();
    c.close();
    let outcome = pending.borrow_mut().take();
    (outcome, elapsed)
}

/// The deadlines' clock never goes back: the wall clock stepping back a minute (NTP,
/// the user, a VM restore) while a request waits does not keep it pending a minute
/// more.
#[wasm_bindgen_test]
async fn a_wall_clock_stepping_back_does_not_stretch_a_request_deadline() {
    let (outcome, elapsed) = with_the_wall_clock_shifted(-60_000, 60_000, 500).await;
    let outcome =
        outcome.unwrap_or_else(|| panic!("still pending {elapsed} ms after a 500 ms timeout"));
    let err = outcome.expect_err("nobody answers on `silent`");
    assert_eq!(code_of(&err), "timeout");
    assert!(elapsed < 1_500.0, "rejected after {elapsed} ms");
}

/// A wall clock that went ahead of the monotonic one, as after a laptop sleeps
/// (`performance.now()` stands still meanwhile on Linux and macOS), is followed: a
/// request whose deadline passed during the "sleep" is rejected at the client's next
/// timer (here the handshake's, 1 s in), and a token that expired meanwhile is seen as
/// expired. (On `performance.now()` alone it stayed pending its whole minute.)
#[wasm_bindgen_test]
async fn a_wall_clock_gone_ahead_as_after_a_sleep_is_followed() {
    let (outcome, elapsed) = with_the_wall_clock_shifted(120_000, 1_000, 60_000).await;
    let outcome = outcome.unwrap_or_else(|| {
        panic!("still pending {elapsed} ms after the clock went two minutes ahead")
    });
    let err = outcome.expect_err("nobody answers on `silent`");
    assert_eq!(code_of(&err), "timeout");
}

#[wasm_bindgen_test]
async fn one_client_per_channel_port_serves_its_channel_and_refuses_others_locally() {
    let c = client(&format!(
        r#"{{"urls": {}, "channels": ["tickets"]}}"#,
        both("tickets")
    ));
    wait(c.connect())
        .await
        .expect("connect to the tickets port");
    let list = wait(c.write_and_wait(
        json(r#"{"channel": "tickets", "message": {"op": "list"}}"#),
        None,
    ))
    .await
    .expect("tickets answer on their own port");
    assert!(Array::is_array(&path(&list, &["tickets"])));
    let err = wait(c.write(json(r#"{"channel": "chat", "message": 1}"#).unchecked_into()))
        .await
        .expect_err("chat is not served by this client");
    assert_eq!(code_of(&err), "unknown_channel");
    c.close();
}

#[wasm_bindgen_test]
async fn when_the_first_gateway_is_killed_the_client_continues_on_the_second_url() {
    let primary = url(0, "all");
    let failover = url(1, "all");
    let c = client(&format!(
        r#"{{"urls": ["{primary}", "{failover}"], "reconnect": {{"minDelayMs": 100, "maxDelayMs": 1000}}}}"#
    ));
    let (on_state, states) = recorder();
    c.on("state", on_state).expect("on");
    wait(c.connect()).await.expect("connect");
    assert_eq!(c.url().as_string().as_deref(), Some(primary.as_str()));
    let (handler, seen) = recorder();
    let _sub = c
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            handler,
            None,
        )
        .expect("subscribe");
    sleep(200).await;

    post(&format!("{}/gateways/primary/kill", control())).await;
    let killed_at = js_sys::Date::now();
    for _ in 0..100 {
        if c.state() == "connected" && c.url().as_string().as_deref() == Some(failover.as_str()) {
            break;
        }
        sleep(50).await;
    }
    let moved_after = js_sys::Date::now() - killed_at;
    assert_eq!(
        c.url().as_string().as_deref(),
        Some(failover.as_str()),
        "moved to the second URL"
    );
    assert_eq!(c.state(), "connected");
    assert!(moved_after < 3_000.0, "failover took {moved_after} ms");
    let news: Vec<String> = states
        .borrow()
        .iter()
        .filter_map(|e| path(e, &["newState"]).as_string())
        .collect();
    assert_eq!(
        news,
        vec!["connecting", "connected", "connecting", "connected"]
    );

    // The session goes on: requests resolve and the subscription was renewed.
    let reply = wait(c.write_and_wait(json(r#"{"channel": "echo", "message": "after"}"#), None))
        .await
        .expect("request after failover");
    assert_eq!(reply.as_string().as_deref(), Some("after"));
    let text = format!("after-failover-{}", js_sys::Math::random());
    let envelope = format!(r#"{{"channel": "chat", "message": {{"text": "{text}"}}}}"#);
    wait(c.write(json(&envelope).unchecked_into()))
        .await
        .expect("write");
    for _ in 0..50 {
        if seen
            .borrow()
            .iter()
            .any(|d| path(d, &["message", "text"]).as_string().as_deref() == Some(text.as_str()))
        {
            break;
        }
        sleep(100).await;
    }
    assert!(
        seen.borrow()
            .iter()
            .any(|d| path(d, &["message", "text"]).as_string().as_deref() == Some(text.as_str())),
        "the re-subscribed broadcast arrives on the second gateway"
    );
    c.close();
    post(&format!("{}/gateways/primary/start", control())).await;
}

/// The texts of the deliveries in `seen` that start with `prefix` and end with `tag`,
/// in order.
fn texts_with(seen: &Rc<RefCell<Vec<JsValue>>>, prefix: &str, tag: &str) -> Vec<String> {
    seen.borrow()
        .iter()
        .filter_map(|d| path(d, &["message", "text"]).as_string())
        .filter(|t| t.starts_with(prefix) && t.ends_with(tag))
        .collect()
}

/// A client that knows only `primary` (so it stays away while the primary is down),
/// reconnecting quickly, connected; and the `state` events it emits.
async fn primary_only(primary: &str) -> (Client, Rc<RefCell<Vec<JsValue>>>) {
    let a = client(&format!(
        r#"{{"urls": ["{primary}"], "reconnect": {{"minDelayMs": 100, "maxDelayMs": 300}}}}"#
    ));
    let (on_state, states) = recorder();
    a.on("state", on_state).expect("on");
    wait(a.connect()).await.expect("connect a");
    (a, states)
}

/// A client of `failover` subscribed to chat (acknowledged by the gateway); its
/// subscription, and the chat deliveries it receives.
async fn chat_follower(failover: &str) -> (Client, Subscription, Rc<RefCell<Vec<JsValue>>>) {
    let b = client(&format!(r#"{{"urls": ["{failover}"]}}"#));
    wait(b.connect()).await.expect("connect b");
    let (chat_b, b_chat) = recorder();
    let b_sub = b
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            chat_b,
            None,
        )
        .expect("b chat");
    wait(b_sub.ready()).await.expect("b subscribed");
    (b, b_sub, b_chat)
}

/// Polls `done` every 100 ms for up to 10 s; whether it became true.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        sleep(100).await;
    }
    done()
}

// test.sh gives the stack's `voice` a stream of its own (`[channel_options.voice]`):
// its positions are unrelated to the outbound stream's, and a resume names both.
#[wasm_bindgen_test]
async fn a_resume_replays_what_was_missed_from_the_outbound_stream_and_a_channel_stream() {
    let primary = url(0, "all");
    let failover = url(1, "all");
    let tag = format!("{}", js_sys::Math::random()).replace('.', "");
    // `a` knows only the primary, so it stays away while the primary is down.
    let (a, states) = primary_only(&primary).await;
    // Anonymous: the user id is the session id; voice messages are addressed to it.
    let user = a.session().as_string().expect("a session");
    // `b` writes through the failover gateway; the demo service relays chat
    // broadcasts to the channel and voice messages to their direct targets. `b`
    // follows chat, so once it has a broadcast, that is in the outbound stream.
    let (b, _b_sub, b_chat) = chat_follower(&failover).await;
    let send = |channel: &str, text: String| {
        let distribution = if channel == "chat" {
            r#"{"broadcast": true}"#.to_string()
        } else {
            format!(r#"{{"direct": ["{user}"]}}"#)
        };
        b.write(
            json(&format!(
                r#"{{"channel": "{channel}", "distribution": {distribution}, "message": {{"text": "{text}"}}}}"#
            ))
            .unchecked_into(),
        )
    };
    // Before `a` subscribes: never for `a`, not even when it resumes. (A resume that
    // named no position in voice's stream would replay it from its start, and these.)
    wait(send("voice", format!("vpre-{tag}")))
        .await
        .expect("write vpre");
    wait(send("chat", format!("cpre-{tag}")))
        .await
        .expect("write cpre");
    assert!(eventually(|| texts_with(&b_chat, "cpre-", &tag).len() == 1).await);
    sleep(300).await;

    let (chat_a, seen_chat) = recorder();
    let (voice_a, seen_voice) = recorder();
    let chat_sub = a
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            chat_a,
            None,
        )
        .expect("subscribe chat");
    let voice_sub = a
        .subscribe(
            json(r#"{"channel": "voice", "direct": true}"#).unchecked_into(),
            voice_a,
            None,
        )
        .expect("subscribe voice");
    wait(chat_sub.ready()).await.expect("chat subscribed");
    wait(voice_sub.ready()).await.expect("voice subscribed");
    // Nothing has reached `a` yet: the positions a resume names are those the
    // subscriptions' `ack`s gave (the newest each gateway stream had read), so
    // cpre and vpre, from before them, are not replayed.

    post(&format!("{}/gateways/primary/kill", control())).await;
    // While `a` is away: three of each (a voice message the service relays after `a`
    // is back reaches it live; either way once).
    for i in 1..=3 {
        wait(send("chat", format!("c{i}-{tag}")))
            .await
            .expect("write chat");
        wait(send("voice", format!("v{i}-{tag}")))
            .await
            .expect("write voice");
    }
    assert!(
        eventually(|| texts_with(&b_chat, "c3-", &tag).len() == 1).await,
        "the chat broadcasts were relayed"
    );
    assert!(
        texts_with(&seen_chat, "c1-", &tag).is_empty(),
        "a was away: {:?}",
        texts_with(&seen_chat, "", &tag)
    );

    post(&format!("{}/gateways/primary/start", control())).await;
    assert!(
        eventually(|| {
            texts_with(&seen_chat, "c", &tag).len() >= 3
                && texts_with(&seen_voice, "v", &tag).len() >= 3
        })
        .await,
        "a resumed and got what it missed: chat {:?}, voice {:?}",
        texts_with(&seen_chat, "", &tag),
        texts_with(&seen_voice, "", &tag)
    );
    sleep(500).await;
    let want = |p: &str| (1..=3).map(|i| format!("{p}{i}-{tag}")).collect::<Vec<_>>();
    // Every delivery `a` got, other tests' too: only these, in order, once.
    let all = |seen: &Rc<RefCell<Vec<JsValue>>>| texts_with(seen, "", "");
    assert_eq!(all(&seen_chat), want("c"), "chat, in order, once");
    assert_eq!(all(&seen_voice), want("v"), "voice, in order, once");
    let resumed = states.borrow().last().map(|e| path(e, &["resumed"]));
    assert_eq!(resumed, Some(JsValue::TRUE), "the session was resumed");
    assert_eq!(a.session().as_string(), Some(user));
    a.close();
    b.close();
}

// A resume whose `hello` would be far over the gateway's max_frame_bytes (64 KiB):
// 250 distinct subscriptions of three long groups each (about 110 KB), 105 bindings.
// A gateway drops a `hello` more than 4 KiB over its limit without an answer: the
// client sent the same one on every attempt and never got its session back. Now it
// says `hello` without them (an `error` event `too_large`), resumes, and subscribes
// again after `welcome`.
#[wasm_bindgen_test]
async fn a_resume_whose_hello_would_be_over_max_frame_bytes_resumes_and_subscribes_again() {
    let primary = url(0, "all");
    let tag = format!("{}", js_sys::Math::random()).replace('.', "");
    let (a, states) = primary_only(&primary).await;
    let (on_error, errors) = recorder();
    a.on("error", on_error).expect("on error");
    let session = a.session().as_string().expect("a session");
    // Group names of 128 characters, the most a name may have.
    let group = |n: usize| format!("{tag}{}{n:03}", "g".repeat(125 - tag.len()));
    let (on_first, first) = recorder();
    let mut subs = Vec::new();
    for i in 0..250 {
        let groups = [group(i % 50), group(50 + i / 50), group(55 + (i * 7) % 50)];
        let options = json(&format!(
            r#"{{"channel": "chat", "groups": ["{}", "{}", "{}"]}}"#,
            groups[0], groups[1], groups[2]
        ));
        let on = if i == 0 {
            on_first.clone()
        } else {
            recorder().0
        };
        subs.push(
            a.subscribe(options.unchecked_into(), on, None)
                .expect("subscribe"),
        );
    }
    for sub in &subs {
        wait(sub.ready()).await.expect("subscribed");
    }

    post(&format!("{}/gateways/primary/kill", control())).await;
    post(&format!("{}/gateways/primary/start", control())).await;
    assert!(
        eventually(|| {
            states
                .borrow()
                .iter()
                .filter(|e| path(e, &["resumed"]) == JsValue::TRUE)
                .count()
                >= 1
        })
        .await,
        "resumed within 10 s of the restart; errors: {:?}",
        errors.borrow().iter().map(code_of).collect::<Vec<_>>()
    );
    assert_eq!(a.session().as_string(), Some(session), "the same session");
    assert!(
        errors.borrow().iter().any(|e| code_of(e) == "too_large"),
        "the app was told: {:?}",
        errors.borrow().iter().map(code_of).collect::<Vec<_>>()
    );
    // Subscribed again after `welcome`: a message to the first subscription's group
    // reaches it.
    let (b, _b_sub, _) = chat_follower(&url(1, "all")).await;
    let text = format!("big-{tag}");
    wait(
        b.write(
            json(&format!(
                r#"{{"channel": "chat", "distribution": {{"groups": ["{}"]}}, "message": {{"text": "{text}"}}}}"#,
                group(0)
            ))
            .unchecked_into(),
        ),
    )
    .await
    .expect("write");
    assert!(
        eventually(|| texts_with(&first, "big-", &tag).len() == 1).await,
        "delivered to the subscription after the resume: {:?}",
        texts_with(&first, "", "")
    );
    a.close();
    b.close();
}

// test.sh runs a third stack whose gateways answer requests by direct reply-to
// (`request_replies = "direct"`): a reply comes without a stream position. Requests
// resolve, and the positions the codec keeps are untouched by such replies: a resume
// after them replays what was missed and nothing from before the subscription.
#[wasm_bindgen_test]
async fn with_direct_replies_requests_resolve_and_a_resume_replays_only_what_was_missed() {
    let stack = direct_stack();
    let primary = url_of(&stack, 0, "all");
    let failover = url_of(&stack, 1, "all");
    let control = control_of(&stack);
    let tag = format!("{}", js_sys::Math::random()).replace('.', "");
    // `a` knows only the primary, so it stays away while the primary is down.
    let (a, states) = primary_only(&primary).await;
    // `b` writes chat broadcasts through the failover gateway (the demo service relays
    // them) and follows chat, so once it has one, that is in the outbound stream.
    let (b, _b_sub, b_chat) = chat_follower(&failover).await;
    let send = |text: String| {
        b.write(
            json(&format!(
                r#"{{"channel": "chat", "distribution": {{"broadcast": true}}, "message": {{"text": "{text}"}}}}"#
            ))
            .unchecked_into(),
        )
    };
    // Before `a` subscribes: never for `a` (a resume that named no position would
    // replay it from the stream's start).
    wait(send(format!("cpre-{tag}"))).await.expect("write cpre");
    assert!(eventually(|| texts_with(&b_chat, "cpre-", &tag).len() == 1).await);
    sleep(300).await;

    let (chat_a, seen) = recorder();
    let sub = a
        .subscribe(
            json(r#"{"channel": "chat"}"#).unchecked_into(),
            chat_a,
            None,
        )
        .expect("subscribe chat");
    wait(sub.ready()).await.expect("chat subscribed");
    wait(send(format!("c0-{tag}"))).await.expect("write c0");
    assert!(eventually(|| texts_with(&seen, "c0-", &tag).len() == 1).await);
    // Answered by direct reply-to: the newest frames `a` got carry no position.
    for n in ["d1", "d2"] {
        let envelope = format!(r#"{{"channel": "echo", "message": "{n}-{tag}"}}"#);
        let reply = wait(a.write_and_wait(json(&envelope), None))
            .await
            .expect("a direct reply");
        assert_eq!(reply.as_string(), Some(format!("{n}-{tag}")));
    }

    post(&format!("{control}/gateways/primary/kill")).await;
    for i in 1..=2 {
        wait(send(format!("c{i}-{tag}"))).await.expect("write chat");
    }
    assert!(
        eventually(|| texts_with(&b_chat, "c2-", &tag).len() == 1).await,
        "the chat broadcasts were relayed"
    );
    post(&format!("{control}/gateways/primary/start")).await;
    assert!(
        eventually(|| texts_with(&seen, "c", &tag).len() >= 3).await,
        "a resumed and got what it missed: {:?}",
        texts_with(&seen, "", &tag)
    );
    sleep(500).await;
    let want: Vec<String> = (0..=2).map(|i| format!("c{i}-{tag}")).collect();
    assert_eq!(
        texts_with(&seen, "", ""),
        want,
        "in order, once, nothing older"
    );
    let resumed = states.borrow().last().map(|e| path(e, &["resumed"]));
    assert_eq!(resumed, Some(JsValue::TRUE), "the session was resumed");
    // And requests go on being answered after the resume.
    let envelope = format!(r#"{{"channel": "echo", "message": "d3-{tag}"}}"#);
    let reply = wait(a.write_and_wait(json(&envelope), None))
        .await
        .expect("a direct reply after the resume");
    assert_eq!(reply.as_string(), Some(format!("d3-{tag}")));
    a.close();
    b.close();
}

// test.sh keeps `voice`'s own stream to 2 MiB (in 1 MiB segments): 300 messages of
// 16 KiB push its oldest segments out, and a session that was away while they came is
// told which channel's history it lost, before what is left is replayed.
#[wasm_bindgen_test]
async fn a_resume_past_a_channel_streams_retention_is_an_error_event_naming_the_channel() {
    let primary = url(0, "all");
    let failover = url(1, "all");
    let tag = format!("{}", js_sys::Math::random()).replace('.', "");
    // `a` knows only the primary, so it stays away while the primary is down. Its
    // `error` events and voice deliveries go to one log, to see which came first.
    let (a, states) = primary_only(&primary).await;
    let (log_a, seen_a) = recorder();
    a.on("error", log_a.clone()).expect("on error");
    let user_a = a.session().as_string().expect("a session");
    // `b` is sent a copy of each message (one publish to both users), so once it has
    // them all they are in the stream, in the stream's order.
    let b = client(&format!(r#"{{"urls": ["{failover}"]}}"#));
    wait(b.connect()).await.expect("connect b");
    let user_b = b.session().as_string().expect("b session");
    let (voice_b, seen_b) = recorder();
    let voice = || json(r#"{"channel": "voice", "direct": true}"#).unchecked_into();
    let b_sub = b.subscribe(voice(), voice_b, None).expect("b voice");
    let a_sub = a.subscribe(voice(), log_a, None).expect("a voice");
    wait(b_sub.ready()).await.expect("b subscribed");
    wait(a_sub.ready()).await.expect("a subscribed");
    let pad = "x".repeat(16 * 1024);
    let send = |text: String| {
        b.write(
            json(&format!(
                r#"{{"channel": "voice", "distribution": {{"direct": ["{user_a}", "{user_b}"]}}, "message": {{"text": "{text}", "pad": "{pad}"}}}}"#
            ))
            .unchecked_into(),
        )
    };
    wait(send(format!("v0-{tag}"))).await.expect("write v0");
    assert!(
        eventually(|| texts_with(&seen_a, "v0-", &tag).len() == 1).await,
        "v0 arrives live, so `a` has a position in voice's stream"
    );

    post(&format!("{}/gateways/primary/kill", control())).await;
    for batch in 0..6 {
        let writes = Array::new();
        for i in batch * 50..(batch + 1) * 50 {
            writes.push(&send(format!("big{i}-{tag}")));
        }
        wait(Promise::all(&writes)).await.expect("writes acked");
    }
    assert!(
        eventually(|| texts_with(&seen_b, "big", &tag).len() == 300).await,
        "the 300 were relayed: {} arrived",
        texts_with(&seen_b, "big", &tag).len()
    );
    let in_stream = texts_with(&seen_b, "big", &tag);

    post(&format!("{}/gateways/primary/start", control())).await;
    let notices = || {
        seen_a
            .borrow()
            .iter()
            .position(|e| code_of(e) == "session_expired")
    };
    assert!(
        eventually(
            || notices().is_some() && texts_with(&seen_a, "big", &tag).last() == in_stream.last()
        )
        .await,
        "a resumed, was told, and got the newest: {:?}",
        messages_of(&seen_a)
    );
    sleep(500).await;
    let log = seen_a.borrow().clone();
    let expired: Vec<&JsValue> = log
        .iter()
        .filter(|e| code_of(e) == "session_expired")
        .collect();
    assert_eq!(expired.len(), 1, "one notice: {:?}", messages_of(&seen_a));
    let notice = expired[0];
    assert!(is_warren_error(notice), "a WarrenError");
    let message = path(notice, &["message"]).as_string().unwrap_or_default();
    assert_eq!(
        path(notice, &["stream"]).as_string().as_deref(),
        Some("voice"),
        "{message}"
    );
    assert_eq!(path(notice, &["retry"]), JsValue::FALSE);
    assert!(message.contains("channel `voice`'s stream"), "{message}");
    let missed: u64 = message
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the count comes first");
    assert!(missed > 0, "{message}");
    // The notice comes before the replay; what is replayed is the newest part of the
    // stream, once, in order.
    let first_replayed = log
        .iter()
        .position(|e| {
            path(e, &["message", "text"])
                .as_string()
                .is_some_and(|t| t.starts_with("big"))
        })
        .expect("some were replayed");
    assert!(notices() < Some(first_replayed), "notice first");
    let replayed = texts_with(&seen_a, "big", &tag);
    assert!(
        !replayed.is_empty() && replayed.len() < 300,
        "{} of 300 replayed",
        replayed.len()
    );
    assert_eq!(
        replayed,
        in_stream[300 - replayed.len()..],
        "the newest, once, in order"
    );
    assert_eq!(texts_with(&seen_a, "v0-", &tag).len(), 1, "v0 not again");
    let resumed = states.borrow().last().map(|e| path(e, &["resumed"]));
    assert_eq!(
        resumed,
        Some(JsValue::TRUE),
        "the session itself was resumed"
    );
    a.close();
    b.close();
}

// ----- errors as classes, oversized writes, connection failures -----

/// A JSON string literal of `n` bytes of `x` (a message far over the gateway's limit).
fn big_envelope(channel: &str, n: usize) -> JsValue {
    json(&format!(
        r#"{{"channel": "{channel}", "message": "{}"}}"#,
        "x".repeat(n)
    ))
}

fn states_of(seen: &Rc<RefCell<Vec<JsValue>>>) -> Vec<String> {
    seen.borrow()
        .iter()
        .filter_map(|e| path(e, &["newState"]).as_string())
        .collect()
}

fn messages_of(seen: &Rc<RefCell<Vec<JsValue>>>) -> Vec<String> {
    seen.borrow()
        .iter()
        .filter_map(|e| path(e, &["message"]).as_string())
        .collect()
}

#[wasm_bindgen_test]
fn new_client_refuses_invalid_urls_synchronously_with_invalid() {
    for options in [
        r#"{"urls": ["not a url"]}"#,
        r#"{"urls": ["http://127.0.0.1:4000/ws"]}"#,
        r#"{"urls": ["ws://127.0.0.1:4000/ws", "localhost:4000"]}"#,
        r#"{"urls": []}"#,
        r#"{}"#,
    ] {
        let err = Client::new(json(options).unchecked_into())
            .err()
            .unwrap_or_else(|| panic!("accepted {options}"));
        assert!(is_warren_error(&err), "{options}: a WarrenError");
        assert!(err.is_instance_of::<js_sys::Error>());
        assert_eq!(code_of(&err), "invalid", "{options}");
        assert_eq!(path(&err, &["retry"]).as_bool(), Some(false));
    }
}

#[wasm_bindgen_test]
async fn a_refused_port_is_reported_as_an_error_event_and_connect_rejects_after_connect_timeout_ms()
{
    let refused = "ws://127.0.0.1:1/ws";
    let c = client(&format!(
        r#"{{"urls": ["{refused}"], "connectTimeoutMs": 1500,
             "reconnect": {{"minDelayMs": 100, "maxDelayMs": 300}}}}"#
    ));
    let (on_error, errors) = recorder();
    c.on("error", on_error).expect("on");
    let started = js_sys::Date::now();
    let err = wait(c.connect())
        .await
        .expect_err("nothing answers on port 1");
    let elapsed = js_sys::Date::now() - started;
    assert!(is_warren_error(&err));
    assert_eq!(code_of(&err), "timeout");
    assert!(
        (1_400.0..3_000.0).contains(&elapsed),
        "connect() rejected after {elapsed} ms (connectTimeoutMs 1500)"
    );
    let messages = messages_of(&errors);
    assert!(
        messages.iter().filter(|m| m.contains(refused)).count() >= 2,
        "every failed attempt names the URL: {messages:?}"
    );
    assert!(path(&err, &["message"])
        .as_string()
        .unwrap_or_default()
        .contains(refused));
    assert_eq!(code_of(&c.last_error()), "timeout");
    assert_eq!(c.state(), "disconnected");
    c.close();
}

#[wasm_bindgen_test]
async fn a_gateway_down_at_start_is_reported_and_connect_resolves_once_it_is_up() {
    let failover = url(1, "all");
    post(&format!("{}/gateways/failover/kill", control())).await;
    let c = client(&format!(
        r#"{{"urls": ["{failover}"], "reconnect": {{"minDelayMs": 100, "maxDelayMs": 300}}}}"#
    ));
    let (on_error, errors) = recorder();
    c.on("error", on_error).expect("on");
    let connected = c.connect();
    // A write made while nothing answers waits in the outbox.
    let written =
        c.write(json(r#"{"channel": "chat", "message": {"text": "queued"}}"#).unchecked_into());
    for _ in 0..100 {
        if messages_of(&errors).len() >= 2 {
            break;
        }
        sleep(50).await;
    }
    let messages = messages_of(&errors);
    assert!(
        messages.len() >= 2 && messages.iter().all(|m| m.contains(&failover)),
        "every failed attempt is an error event naming the URL: {messages:?}"
    );
    assert_ne!(c.state(), "connected");
    post(&format!("{}/gateways/failover/start", control())).await;
    let up = js_sys::Date::now();
    wait(connected)
        .await
        .expect("connect() resolves once the gateway is up");
    let after = js_sys::Date::now() - up;
    assert!(
        after < 5_000.0,
        "connected {after} ms after the gateway was up"
    );
    wait(written)
        .await
        .expect("the queued write goes out and is acknowledged");
    assert_eq!(c.state(), "connected");
    c.close();
}

#[wasm_bindgen_test]
async fn a_gateway_that_never_answers_the_handshake_times_out_and_the_next_url_is_used() {
    let silent = path(&stack(), &["silent"]).as_string().expect("silent URL");
    let good = url(0, "all");
    let c = client(&format!(
        r#"{{"urls": ["{silent}", "{good}"], "handshakeTimeoutMs": 800}}"#
    ));
    let (on_error, errors) = recorder();
    c.on("error", on_error).expect("on");
    let started = js_sys::Date::now();
    wait(c.connect()).await.expect("the second URL works");
    let elapsed = js_sys::Date::now() - started;
    assert_eq!(c.url().as_string().as_deref(), Some(good.as_str()));
    let messages = messages_of(&errors);
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&silent) && m.contains("handshake timeout")),
        "{messages:?}"
    );
    assert!(
        (700.0..5_000.0).contains(&elapsed),
        "connected {elapsed} ms after the start (handshakeTimeoutMs 800)"
    );
    let reply = wait(c.write_and_wait(json(r#"{"channel": "echo", "message": 1}"#), None))
        .await
        .expect("traffic on the good gateway");
    assert_eq!(reply.as_f64(), Some(1.0));
    c.close();
}

/// Records, from now on, the code of every `close(code)` the page calls on a WebSocket
/// (`globalThis.__closeCalls`: `[url, code]` pairs), and forgets the earlier ones.
fn record_close_calls() {
    let _ = js_sys::eval(
        r#"
        if (!globalThis.__closeCalls) {
          const close = WebSocket.prototype.close;
          WebSocket.prototype.close = function (...args) {
            globalThis.__closeCalls.push([this.url, args[0]]);
            return close.apply(this, args);
          };
        }
        globalThis.__closeCalls = [];
        "#,
    );
}

/// The codes of the `close(code)` calls [`record_close_calls`] saw on sockets to `url`.
fn close_calls_to(url: &str) -> Vec<u16> {
    let calls = Reflect::get(&js_sys::global(), &"__closeCalls".into()).unwrap_or_default();
    Array::from(&calls)
        .iter()
        .map(|pair| Array::from(&pair))
        .filter(|pair| {
            let to = pair.get(0).as_string().unwrap_or_default();
            to.starts_with(url) || url.starts_with(&to)
        })
        .map(|pair| pair.get(1).as_f64().unwrap_or(-1.0) as u16)
        .collect()
}

/// A connection the SDK gives up to resume elsewhere (here: no `welcome` in time) is
/// closed with 4000 `heartbeat_timeout`, which the gateway does not take for a goodbye
/// (the session stays for the resume grace); `close()` and giving up trying close with
/// 1000, a goodbye.
#[wasm_bindgen_test]
async fn a_connection_given_up_to_resume_elsewhere_is_closed_with_4000_and_close_with_1000() {
    record_close_calls();
    let silent = path(&stack(), &["silent"]).as_string().expect("silent URL");
    let good = url(1, "all");
    let c = client(&format!(
        r#"{{"urls": ["{silent}", "{good}"], "handshakeTimeoutMs": 600}}"#
    ));
    wait(c.connect()).await.expect("the second URL works");
    assert_eq!(close_calls_to(&silent), vec![4000], "handshake timeout");
    assert_eq!(close_calls_to(&good), Vec::<u16>::new());
    c.close();
    assert_eq!(close_calls_to(&good), vec![1000], "close()");
    record_close_calls();
    let d = client(&format!(
        r#"{{"urls": ["{silent}"], "handshakeTimeoutMs": 5000, "connectTimeoutMs": 600}}"#
    ));
    let err = wait(d.connect()).await.expect_err("gives up");
    assert_eq!(code_of(&err), "timeout");
    assert_eq!(close_calls_to(&silent), vec![1000], "gave up trying");
    d.close();
}

#[wasm_bindgen_test]
async fn a_wrong_path_is_reported_with_its_url_and_the_client_moves_on_to_the_next_url() {
    let good = url(0, "all");
    let wrong = good.replace("/ws", "/no-such-path");
    let c = client(&format!(r#"{{"urls": ["{wrong}", "{good}"]}}"#));
    let (on_error, errors) = recorder();
    c.on("error", on_error).expect("on");
    wait(c.connect()).await.expect("the second URL works");
    assert_eq!(c.url().as_string().as_deref(), Some(good.as_str()));
    let messages = messages_of(&errors);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains(&wrong), "{messages:?}");
    assert!(is_warren_error(&c.last_error()));
    c.close();
}

#[wasm_bindgen_test]
async fn an_oversized_write_is_rejected_at_once_with_too_large_while_other_traffic_goes_on() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    let (on_error, errors) = recorder();
    c.on("error", on_error).expect("on");
    wait(c.connect()).await.expect("connect");
    let echo = c.write_and_wait(
        json(r#"{"channel": "echo", "message": "still here"}"#),
        None,
    );
    let started = js_sys::Date::now();
    let err = wait(c.write(big_envelope("chat", 100 * 1024).unchecked_into()))
        .await
        .expect_err("100 KB is over max_frame_bytes");
    let elapsed = js_sys::Date::now() - started;
    assert!(is_warren_error(&err));
    assert_eq!(code_of(&err), "too_large");
    assert_eq!(path(&err, &["retry"]).as_bool(), Some(false));
    assert!(
        path(&err, &["id"]).is_string(),
        "names the write's frame id"
    );
    assert!(elapsed < 200.0, "rejected after {elapsed} ms");
    let err = wait(c.write_and_wait(big_envelope("echo", 100 * 1024), None))
        .await
        .expect_err("requests too");
    assert_eq!(code_of(&err), "too_large");
    let reply = wait(echo).await.expect("the other request resolves");
    assert_eq!(reply.as_string().as_deref(), Some("still here"));
    wait(c.write(json(r#"{"channel": "echo", "message": 1}"#).unchecked_into()))
        .await
        .expect("writes go on");
    assert!(
        messages_of(&errors).is_empty(),
        "no separate error event: {:?}",
        messages_of(&errors)
    );
    c.close();
}

#[wasm_bindgen_test]
async fn a_two_megabyte_write_is_never_sent_and_the_connection_stays_up() {
    // Written before connecting (the gateway's limit is not known yet) and after.
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    let (on_state, states) = recorder();
    c.on("state", on_state).expect("on");
    let early = c.write(big_envelope("chat", 2 * 1024 * 1024).unchecked_into());
    wait(c.connect()).await.expect("connect");
    let err = wait(early)
        .await
        .expect_err("refused once welcome named the limit");
    assert_eq!(code_of(&err), "too_large");
    let err = wait(c.write(big_envelope("chat", 2 * 1024 * 1024).unchecked_into()))
        .await
        .expect_err("refused at once");
    assert_eq!(code_of(&err), "too_large");
    sleep(1_500).await;
    assert_eq!(
        states_of(&states),
        vec!["connecting", "connected"],
        "no close, no reconnect, nothing re-sent"
    );
    let reply = wait(c.write_and_wait(json(r#"{"channel": "echo", "message": 2}"#), None))
        .await
        .expect("the session is intact");
    assert_eq!(reply.as_f64(), Some(2.0));
    c.close();
}

#[wasm_bindgen_test]
async fn write_and_wait_rejects_with_no_service_at_once_when_no_service_runs() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    let started = js_sys::Date::now();
    let err = wait(c.write_and_wait(
        json(r#"{"channel": "nobody", "message": {"anyone": "there?"}}"#),
        Some(json(r#"{"timeoutMs": 30000}"#).unchecked_into()),
    ))
    .await
    .expect_err("no service consumes `nobody`");
    let elapsed = js_sys::Date::now() - started;
    assert_eq!(code_of(&err), "no_service");
    assert_eq!(
        path(&err, &["retry"]).as_bool(),
        Some(true),
        "no_service is retryable"
    );
    assert!(
        elapsed < 2_000.0,
        "no_service comes at once, not after the 30 s timeout ({elapsed} ms)"
    );
    c.close();
}

#[wasm_bindgen_test]
async fn freeing_the_client_closes_it_and_rejects_what_is_pending() {
    let c = client(&format!(r#"{{"urls": {}}}"#, both("all")));
    wait(c.connect()).await.expect("connect");
    let (on_state, states) = recorder();
    c.on("state", on_state).expect("on");
    let pending = c.write_and_wait(
        json(r#"{"channel": "silent", "message": "nobody answers"}"#),
        Some(json(r#"{"timeoutMs": 60000}"#).unchecked_into()),
    );
    drop(c); // what `client.free()` and `[Symbol.dispose]()` do from JS
    let err = wait(pending).await.expect_err("rejected by the close");
    assert_eq!(code_of(&err), "closed");
    assert_eq!(states_of(&states), vec!["disconnected"]);
}

// ----- tokens: getToken, renewal on the live connection, expiry -----
//
// Against a second stack in jwt mode (`warren-stack --auth jwt --jwt-leeway-s 0`, no
// demo service), whose state test.sh compiles in as `WARREN_JWT_STACK_STATE_JSON`;
// tokens come from its development endpoint `POST /token`.

fn jwt_stack() -> JsValue {
    let Some(text) = option_env!("WARREN_JWT_STACK_STATE_JSON") else {
        panic!("run through sdk-wasm/test.sh: WARREN_JWT_STACK_STATE_JSON is not set");
    };
    JSON::parse(text).expect("jwt stack state JSON")
}

fn jwt_urls() -> String {
    let gateways = Array::from(&path(&jwt_stack(), &["gateways"]));
    let url = |i| {
        path(&gateways.get(i), &["urls", "all"])
            .as_string()
            .expect("URL")
    };
    format!(r#"["{}", "{}"]"#, url(0), url(1))
}

/// A `getToken` for `user` that fetches tokens living `lifetime_s` from the jwt stack's
/// `POST /token`, counting its calls in `globalThis.__tokenCalls[user]`; while
/// `globalThis.__refuseRenewal[user]` is true it rejects (renewal disabled); the tokens
/// grant the groups in `globalThis.__tokenGroups[user]` when set.
fn get_token(user: &str, lifetime_s: u32) -> Function {
    let control = path(&jwt_stack(), &["control"])
        .as_string()
        .expect("control");
    Function::new_no_args(&format!(
        r#"
        const calls = (globalThis.__tokenCalls ??= {{}});
        calls["{user}"] = (calls["{user}"] ?? 0) + 1;
        if ((globalThis.__refuseRenewal ?? {{}})["{user}"]) {{
          return Promise.reject(new Error("renewal disabled by the test"));
        }}
        return fetch("{control}/token", {{
          method: "POST",
          headers: {{ "content-type": "application/json" }},
          body: JSON.stringify({{ user: "{user}", lifetime_s: {lifetime_s},
            groups: (globalThis.__tokenGroups ?? {{}})["{user}"] }}),
        }}).then((r) => r.json()).then((j) => j.token);
        "#
    ))
}

/// The groups the next tokens of `user` grant.
fn token_groups(user: &str, groups: &[&str]) {
    let global = js_sys::global();
    let mut map = Reflect::get(&global, &"__tokenGroups".into()).unwrap_or_default();
    if !map.is_object() {
        map = js_sys::Object::new().into();
        Reflect::set(&global, &"__tokenGroups".into(), &map).unwrap();
    }
    let list: Array = groups.iter().map(|g| JsValue::from_str(g)).collect();
    Reflect::set(&map, &user.into(), &list).unwrap();
}

fn token_calls(user: &str) -> u32 {
    let calls = Reflect::get(&js_sys::global(), &"__tokenCalls".into()).unwrap_or_default();
    path(&calls, &[user]).as_f64().unwrap_or(0.0) as u32
}

fn refuse_renewal(user: &str, refuse: bool) {
    let global = js_sys::global();
    let mut map = Reflect::get(&global, &"__refuseRenewal".into()).unwrap_or_default();
    if !map.is_object() {
        map = js_sys::Object::new().into();
        Reflect::set(&global, &"__refuseRenewal".into(), &map).unwrap();
    }
    Reflect::set(&map, &user.into(), &refuse.into()).unwrap();
}

/// Records the close code of every WebSocket the page opens from now on, by URL
/// (`globalThis.__closes`: `[url, code]` pairs).
fn record_close_codes() {
    let _ = js_sys::eval(
        r#"
        if (!globalThis.__closes) {
          globalThis.__closes = [];
          const Native = globalThis.WebSocket;
          globalThis.WebSocket = class extends Native {
            constructor(...args) {
              super(...args);
              this.addEventListener("close", (e) => globalThis.__closes.push([String(args[0]), e.code]));
            }
          };
        }
        "#,
    );
}

fn close_codes() -> Vec<u16> {
    let closes = Reflect::get(&js_sys::global(), &"__closes".into()).unwrap_or_default();
    Array::from(&closes)
        .iter()
        .filter_map(|pair| Array::from(&pair).get(1).as_f64())
        .map(|c| c as u16)
        .collect()
}

fn jwt_client(user: &str, lifetime_s: u32) -> Client {
    let options = json(&format!(
        r#"{{"urls": {}, "reconnect": {{"minDelayMs": 100, "maxDelayMs": 500}}}}"#,
        jwt_urls()
    ));
    Reflect::set(&options, &"getToken".into(), &get_token(user, lifetime_s)).unwrap();
    Client::new(options.unchecked_into()).expect("client")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e9) as u64)
}

#[wasm_bindgen_test]
async fn a_short_lived_token_is_renewed_on_the_live_connection_without_reconnecting() {
    let user = unique("renew");
    // 4 s tokens and no leeway: without renewal the gateway closes within 4 s.
    let c = jwt_client(&user, 4);
    let (on_state, states) = recorder();
    c.on("state", on_state).expect("on");
    let (on_error, errors) = recorder();
    c.on("error", on_error).expect("on");
    wait(c.connect())
        .await
        .expect("connect with a token from getToken");
    assert_eq!(token_calls(&user), 1, "getToken before connecting");
    let session = c.session();
    sleep(10_000).await;
    assert!(
        token_calls(&user) >= 3,
        "renewed at least twice in 10 s (getToken called {} times)",
        token_calls(&user)
    );
    assert_eq!(
        states_of(&states),
        vec!["connecting", "connected"],
        "no reconnect"
    );
    assert_eq!(c.session(), session, "same session");
    assert!(
        errors.borrow().is_empty(),
        "no error: {:?}",
        messages_of(&errors)
    );
    wait(c.write(json(r#"{"channel": "echo", "message": "still here"}"#).unchecked_into()))
        .await
        .expect("the renewed session publishes");
    c.close();
}

/// A renewed token that no longer grants a group: the subscription to it turns `error`
/// (`forbidden`) while the connection stays up, and the one to a group still granted
/// stays `active`. (It kept showing `active`, receiving nothing, until a reconnect.)
#[wasm_bindgen_test]
async fn a_subscription_a_renewed_token_no_longer_grants_turns_error() {
    let strings = |v: &Rc<RefCell<Vec<JsValue>>>| -> Vec<String> {
        v.borrow().iter().filter_map(|s| s.as_string()).collect()
    };
    let user = unique("revoke");
    // 4 s tokens: renewed 3 s after each.
    let c = jwt_client(&user, 4);
    wait(c.connect()).await.expect("connect");
    let follow = |group: &str| {
        let (noop, _) = recorder();
        let (on_status, statuses) = recorder();
        let options = json(&format!(r#"{{"channel": "chat", "groups": ["{group}"]}}"#));
        let sub = c
            .subscribe(options.unchecked_into(), noop, Some(on_status))
            .expect("subscribe");
        (sub, statuses)
    };
    let (room_1, room_1_statuses) = follow("room-1");
    let (room_2, room_2_statuses) = follow("room-2");
    wait(room_1.ready()).await.expect("room-1 in force");
    wait(room_2.ready()).await.expect("room-2 in force");
    token_groups(&user, &["room-2"]);
    let mut waited = 0;
    while strings(&room_1_statuses).last().map(String::as_str) != Some("error") {
        assert!(
            waited < 10_000,
            "room-1 in error within 10 s: {:?}",
            strings(&room_1_statuses)
        );
        sleep(100).await;
        waited += 100;
    }
    sleep(500).await;
    assert_eq!(
        strings(&room_1_statuses).last().map(String::as_str),
        Some("error"),
        "and it stays so"
    );
    assert_eq!(
        strings(&room_2_statuses).last().map(String::as_str),
        Some("active"),
        "room-2: {:?}",
        strings(&room_2_statuses)
    );
    assert_eq!(
        c.state().as_string().as_deref(),
        Some("connected"),
        "on the same connection"
    );
    c.close();
}

#[wasm_bindgen_test]
async fn without_renewal_the_token_expires_with_4004_and_the_client_reconnects_with_a_fresh_token()
{
    record_close_codes();
    let user = unique("expire");
    // Renewals are refused while connected; the reconnect gets a fresh token.
    let c = jwt_client(&user, 3);
    let (on_state, states) = recorder();
    c.on("state", on_state).expect("on");
    let (on_error, errors) = recorder();
    c.on("error", on_error).expect("on");
    wait(c.connect()).await.expect("connect");
    let session = c.session();
    refuse_renewal(&user, true);
    // Allow the renewal again once the gateway closed the connection.
    let allow = Closure::<dyn FnMut(JsValue)>::new({
        let user = user.clone();
        move |ev: JsValue| {
            if path(&ev, &["newState"]).as_string().as_deref() == Some("connecting") {
                refuse_renewal(&user, false);
            }
        }
    });
    c.on("state", allow.as_ref().unchecked_ref::<Function>().clone())
        .expect("on");
    allow.forget();
    let mut reconnected = false;
    for _ in 0..100 {
        sleep(100).await;
        if states_of(&states).len() >= 4 && c.state() == "connected" {
            reconnected = true;
            break;
        }
    }
    assert!(reconnected, "states: {:?}", states_of(&states));
    assert_eq!(
        states_of(&states),
        vec!["connecting", "connected", "connecting", "connected"]
    );
    assert!(
        close_codes().contains(&4004),
        "closed with 4004 token_expired (close codes seen: {:?})",
        close_codes()
    );
    let events = messages_of(&errors);
    assert!(
        events
            .iter()
            .any(|m| m.contains("renewal disabled by the test")),
        "the failed renewal was an error event: {events:?}"
    );
    assert!(token_calls(&user) >= 3, "connect, renewal, reconnect");
    let resumed = states.borrow().last().map(|e| path(e, &["resumed"]));
    assert_eq!(resumed, Some(JsValue::TRUE), "the session was resumed");
    assert_eq!(c.session(), session);
    wait(c.write(json(r#"{"channel": "echo", "message": "back"}"#).unchecked_into()))
        .await
        .expect("the fresh token works");
    c.close();
}

/// The `hello` a resume of session `s1` sends, as the browser codec writes it.
fn resume_hello(codec: &warren_sdk::browser::codec::JsCodec) -> JsValue {
    use warren_sdk::codec::Codec;
    let hello = warren_protocol::ClientFrame::Hello(warren_protocol::Hello {
        session: Some("s1".into()),
        ..Default::default()
    });
    json(&codec.encode(&hello).expect("hello"))
}

/// A frame the browser codec refuses never reaches the app, so its stream position is
/// not recorded: a resume names the position of the last frame that decoded, and the
/// gateway replays the refused one rather than skipping it.
#[wasm_bindgen_test]
fn a_frame_the_codec_refuses_does_not_move_the_stream_positions_a_resume_names() {
    use warren_sdk::codec::Codec;
    let codec = warren_sdk::browser::codec::JsCodec::default();
    let deliver = |seq: u32, position: u32, stream: &str| {
        format!(
            r#"{{"type": "deliver", "seq": {seq}, "position": {position}, {stream}
            "message_id": "m{seq}", "channel": "chat", "routing_key": "chat", "message": 1}}"#
        )
    };
    codec
        .decode(&deliver(1, 5, ""))
        .expect("a valid deliver decodes");
    codec
        .decode(&deliver(2, 7, r#""stream": "chat","#))
        .expect("a valid deliver of a channel stream decodes");
    // Refused: no `message_id`; an unknown frame type; a welcome without a session; a
    // mistyped `seq`.
    for bad in [
        r#"{"type": "deliver", "seq": 3, "position": 9, "channel": "chat", "routing_key": "chat", "message": 1}"#,
        r#"{"type": "deliver", "seq": 3, "position": 9, "stream": "chat", "channel": "chat", "routing_key": "chat", "message": 1}"#,
        r#"{"type": "surprise", "position": 11}"#,
        // A welcome without `session`: a fresh session's would start the positions over.
        r#"{"type": "welcome", "resumed": false, "position": 1, "positions": {}}"#,
        r#"{"type": "deliver", "seq": "x", "position": 12, "message_id": "m", "channel": "chat", "routing_key": "chat", "message": 1}"#,
    ] {
        assert!(codec.decode(bad).is_err(), "refused: {bad}");
    }
    let hello = resume_hello(&codec);
    assert_eq!(path(&hello, &["position"]).as_f64(), Some(5.0));
    assert_eq!(path(&hello, &["positions", "chat"]).as_f64(), Some(7.0));
    // A valid frame still moves them.
    codec
        .decode(&deliver(4, 13, ""))
        .expect("a valid deliver decodes");
    assert_eq!(
        path(&resume_hello(&codec), &["position"]).as_f64(),
        Some(13.0)
    );
}
