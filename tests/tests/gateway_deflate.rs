//! WebSocket compression (permessage-deflate, RFC 7692), seen on the wire: with
//! `permessage_deflate` on, a client that offers it gets it, with no context takeover
//! either way; the gateway's frames of 64 bytes or more are compressed (RSV1) and the
//! client's compressed frames are understood; a compressed frame that inflates past
//! the hard frame limit closes with 1009. With it off (the default) the offer is
//! declined and nothing is compressed; with it on, a client that offers nothing is
//! served as before.

use std::net::SocketAddr;
use std::time::Duration;

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::raw_ws::{RawFrame, RawWs, CLOSE, TEXT};
use warren_protocol::{decode_server, encode, ClientFrame, Hello, Ping, ServerFrame};

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);
/// What Chromium offers.
const OFFER: &str = "permessage-deflate; client_max_window_bits";

fn addr(gw: &TestGateway) -> SocketAddr {
    let url = gw.url();
    url.trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("listener address")
}

fn server_frame(f: &RawFrame) -> ServerFrame {
    assert_eq!(f.opcode, TEXT, "a text frame: {f:?}");
    decode_server(&f.text()).expect("a server frame")
}

/// A client frame's JSON text.
fn json(f: ClientFrame) -> String {
    encode(&f)
}

fn hello(user: &str) -> String {
    json(ClientFrame::Hello(Hello {
        token: Some(user.into()),
        ..Default::default()
    }))
}

#[tokio::test]
async fn with_deflate_on_an_offering_client_gets_compressed_frames_and_may_send_them() {
    TestEnv::run("deflate-on", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.permessage_deflate = true).await;
        let mut ws = RawWs::connect(addr(&gw), Some(OFFER)).await;
        assert_eq!(ws.status, 101);
        assert_eq!(ws.header("sec-websocket-protocol"), Some("warren.v1"));
        let agreed = ws
            .header("sec-websocket-extensions")
            .expect("deflate agreed");
        for term in [
            "permessage-deflate",
            "server_no_context_takeover",
            "client_no_context_takeover",
        ] {
            assert!(agreed.contains(term), "{term} in {agreed}");
        }

        // The client's frames may be compressed: the gateway inflates them.
        ws.send_text(&hello("alice"), true).await;
        let welcome = ws.recv_text(WAIT).await.expect("welcome");
        assert!(
            welcome.rsv1,
            "the welcome ({} bytes) is compressed",
            welcome.text().len()
        );
        assert!(matches!(server_frame(&welcome), ServerFrame::Welcome(_)));
        ws.send_text(&json(ClientFrame::Subscribe(sub("s1", "chat"))), true)
            .await;
        let ack = ws.recv_text(WAIT).await.expect("ack");
        assert!(matches!(server_frame(&ack), ServerFrame::Ack(a) if a.id == "s1"));

        // A delivery of repetitive JSON goes out compressed, and much smaller.
        let body = serde_json::json!({ "text": "all work and no play ".repeat(200) }).to_string();
        env.publish_out("chat.all", "m1", &body).await;
        let deliver = ws.recv_text(WAIT).await.expect("deliver");
        assert!(deliver.rsv1, "the delivery is compressed");
        let text = deliver.text();
        assert!(
            deliver.payload.len() * 10 < text.len(),
            "{} bytes on the wire for {} of JSON",
            deliver.payload.len(),
            text.len()
        );
        match decode_server(&text).expect("deliver") {
            ServerFrame::Deliver(d) => assert_eq!(d.message.get(), body),
            other => panic!("expected deliver, got {other:?}"),
        }

        // Frames under 64 bytes go out as they are.
        ws.send_text(
            &json(ClientFrame::Ping(Ping {
                ts: Some(7),
                ..Ping::default()
            })),
            false,
        )
        .await;
        let pong = ws.recv_text(WAIT).await.expect("pong");
        assert!(
            !pong.rsv1,
            "a {}-byte pong is not compressed",
            pong.payload.len()
        );
        assert!(matches!(server_frame(&pong), ServerFrame::Pong(p) if p.ts == Some(7)));

        let metrics = warren_e2e::gateway::http_get(gw.health_addr(), "/metrics").await;
        assert!(
            metrics.contains("warren_gateway_deflate_connections_total{")
                && metrics.lines().any(|l| l
                    .starts_with("warren_gateway_deflate_connections_total{")
                    && l.ends_with(" 1")),
            "one deflate connection counted"
        );

        // The close handshake: the gateway echoes the client's 1000.
        ws.send_frame(CLOSE, false, &1000u16.to_be_bytes()).await;
        let close = ws.recv_text(WAIT).await.expect("close echo");
        assert_eq!(close.close_code(), Some(1000));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn with_deflate_off_the_offer_is_declined_and_nothing_is_compressed() {
    TestEnv::run("deflate-off", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut ws = RawWs::connect(addr(&gw), Some(OFFER)).await;
        assert_eq!(ws.status, 101);
        assert_eq!(ws.header("sec-websocket-extensions"), None);
        ws.send_text(&hello("alice"), false).await;
        let welcome = ws.recv_text(WAIT).await.expect("welcome");
        assert!(!welcome.rsv1);
        assert!(matches!(server_frame(&welcome), ServerFrame::Welcome(_)));
        ws.send_text(&json(ClientFrame::Subscribe(sub("s1", "chat"))), false)
            .await;
        let _ack = ws.recv_text(WAIT).await.expect("ack");
        let body = serde_json::json!({ "text": "x".repeat(1000) }).to_string();
        env.publish_out("chat.all", "m1", &body).await;
        let deliver = ws.recv_text(WAIT).await.expect("deliver");
        assert!(!deliver.rsv1, "nothing is compressed");
        assert!(deliver.payload.len() > body.len());
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn with_deflate_on_a_client_that_does_not_offer_it_is_served_as_before() {
    TestEnv::run("deflate-plain", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.permessage_deflate = true).await;
        let raw = RawWs::connect(addr(&gw), None).await;
        assert_eq!(raw.status, 101);
        assert_eq!(raw.header("sec-websocket-extensions"), None);
        drop(raw);
        // The tests' tungstenite client offers no compression.
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("s1", "chat")).await;
        env.publish_out("chat.all", "m1", "{\"n\":1}").await;
        assert_eq!(c.expect_deliver().await.message.get(), "{\"n\":1}");
        assert_eq!(c.close_expecting_echo().await, Some(1000));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_compressed_frame_that_inflates_past_the_hard_limit_closes_with_1009() {
    TestEnv::run("deflate-bomb", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.permessage_deflate = true).await;
        let mut ws = RawWs::connect(addr(&gw), Some(OFFER)).await;
        ws.send_text(&hello("alice"), true).await;
        let welcome = ws.recv_text(WAIT).await.expect("welcome");
        assert!(matches!(server_frame(&welcome), ServerFrame::Welcome(_)));
        // 4 MiB of JSON in a few KiB: past the 1 MiB hard limit once inflated.
        let bomb = format!(
            "{{\"type\":\"publish\",\"id\":\"p\",\"channel\":\"chat\",\"message\":\"{}\"}}",
            "a".repeat(4 * 1024 * 1024)
        );
        let compressed = warren_e2e::raw_ws::deflate(bomb.as_bytes());
        assert!(compressed.len() < 64 * 1024, "{} bytes", compressed.len());
        ws.send_frame(TEXT, true, &compressed).await;
        let close = loop {
            let f = ws.recv(WAIT).await.expect("a close frame");
            if f.opcode == CLOSE {
                break f;
            }
        };
        assert_eq!(close.close_code(), Some(1009));
        // One close frame: the WebSocket library's (it closes a frame it refuses
        // itself); a second, the gateway's, broke RFC 6455.
        let after = ws.recv(Duration::from_millis(500)).await;
        assert!(
            after.as_ref().is_none_or(|f| f.opcode != CLOSE),
            "a second close frame: {after:?}"
        );
        // The gateway goes on serving.
        let mut c = TestClient::connect(&gw.url()).await;
        c.ping(1).await;
        assert!(matches!(c.recv().await, ServerFrame::Pong(_)));
        gw.shutdown().await;
    })
    .await;
}
