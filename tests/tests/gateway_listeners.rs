//! Listeners: one connection serving every channel, and the POC's per-channel ports
//! (a listener pinned to one channel refuses frames for another with
//! `unknown_channel`); `/healthz`; graceful shutdown closing sockets with 1001.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::{amqp_addr, cannot_check, TestEnv};
use warren_e2e::gateway::{http_answer, http_get_with, upgrade_request, TestGateway};
use warren_e2e::rabbitmqctl::BrokerUser;
use warren_gateway::config::ChannelOptions;
use warren_protocol::amqp::Names;
use warren_protocol::{ClientFrame, ErrorCode, Hello, ServerFrame, Subscribe};

#[tokio::test]
async fn one_connection_serves_every_channel() {
    let env = TestEnv::new("all-channels").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect(&gw.url()).await;
    for ch in ["chat", "voice", "tickets", "echo"] {
        c.publish(&format!("p-{ch}"), ch, json!({ "on": ch })).await;
        c.expect_ack(&format!("p-{ch}")).await;
        assert!(
            env.get(&env.names.channel_queue(ch)).await.is_some(),
            "{ch}"
        );
    }
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_port_pinned_to_a_channel_serves_only_that_channel() {
    let env = TestEnv::new("pinned").await;
    let gw = TestGateway::start_pinned(&env, &["voice", "chat", "tickets"]).await;
    assert_eq!(gw.listeners().len(), 4);
    let mut voice = TestClient::connect(&gw.url_for("voice")).await;
    voice.publish("v", "voice", json!({"sdp": 1})).await;
    voice.expect_ack("v").await;
    voice.publish("c", "chat", json!("wrong port")).await;
    voice
        .expect_error_code(Some("c"), ErrorCode::UnknownChannel)
        .await;
    voice
        .send(&warren_protocol::ClientFrame::Subscribe(Subscribe {
            id: "s".into(),
            channel: "tickets".into(),
            ..Default::default()
        }))
        .await;
    voice
        .expect_error_code(Some("s"), ErrorCode::UnknownChannel)
        .await;
    // Still usable afterwards, and subscriptions on its own channel work.
    voice
        .subscribe(Subscribe {
            id: "s2".into(),
            channel: "voice".into(),
            ..Default::default()
        })
        .await;
    env.publish_out("voice.all", "vb", "1").await;
    assert_eq!(voice.expect_deliver().await.message_id, "vb");

    let mut chat = TestClient::connect(&gw.url_for("chat")).await;
    chat.publish("c2", "chat", json!("right port")).await;
    chat.expect_ack("c2").await;
    assert_eq!(
        env.message_count(&env.names.channel_queue("voice")).await,
        Some(1)
    );
    assert_eq!(
        env.message_count(&env.names.channel_queue("chat")).await,
        Some(1)
    );
    voice.close().await;
    chat.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    out
}

#[tokio::test]
async fn healthz_reports_the_broker_status_as_json() {
    let env = TestEnv::new("healthz").await;
    let gw = TestGateway::start(&env).await;
    let resp = http_get(gw.health_addr(), "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).expect("body");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["broker"], "connected");
    assert_eq!(v["namespace"], env.namespace.as_str());
    gw.shutdown().await;
    env.cleanup().await;
}

/// A gateway whose RabbitMQ user may do everything but read the outbound stream (the
/// user, to grant it later, and the stream's name); why not when the user cannot be
/// added.
async fn not_reading_the_stream(
    env: &TestEnv,
) -> Result<(BrokerUser, TestGateway, String), String> {
    let stream = Names::new(&env.namespace).outbound_stream();
    let not_the_stream = format!("^(?!{}$).*", stream.replace('.', "\\."));
    let user = BrokerUser::add(
        &format!("{}-no-read", env.namespace),
        [".*", ".*", &not_the_stream],
    )?;
    let gw = TestGateway::start_with(env, |c| c.amqp_uri = vec![user.uri(&amqp_addr())]).await;
    Ok((user, gw, stream))
}

/// `/healthz` answers 503 while a stream's reader cannot read it, though RabbitMQ is
/// connected: its sessions would get nothing, and a load balancer should send
/// clients to a gateway that delivers. Here the gateway's RabbitMQ user may not read
/// the outbound stream until the test grants it; then the reader starts and
/// `/healthz` answers 200 again. It answered 200 all along.
#[tokio::test]
async fn healthz_is_503_while_a_stream_is_not_read() {
    let env = TestEnv::new("healthz-unread").await;
    let (user, gw, stream) = match not_reading_the_stream(&env).await {
        Ok(x) => x,
        Err(e) => {
            env.cleanup().await;
            return cannot_check("a stream not read in /healthz", &e);
        }
    };
    let addr = gw.health_addr();
    let health = |want: u16| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, body) = http_get_with(addr, "/healthz", &[]).await;
            if status == want || tokio::time::Instant::now() >= deadline {
                let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (status, body) = health(503).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["broker"], "connected");
    assert_eq!(body["streams_not_read"], json!([stream]));

    user.permit([".*", ".*", ".*"]).expect("read granted");
    let (status, body) = health(200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["streams_not_read"], json!([]));
    gw.shutdown().await;
    env.cleanup().await;
}

/// Every session follows the outbound stream. While the gateway cannot read it (its
/// RabbitMQ user may not), a `hello` opening a new session is answered
/// `broker_unavailable` and closed with 4002 after the 2 s wait, so the client tries
/// again: opened, its `welcome` named no position, and a resume replayed the whole
/// stream (a day by default) to it. Once the stream is read, a new session opens,
/// starting after the stream's newest message.
#[tokio::test]
async fn a_new_session_is_not_opened_while_its_stream_is_not_read() {
    let env = TestEnv::new("unread-hello").await;
    let (user, gw, stream) = match not_reading_the_stream(&env).await {
        Ok(x) => x,
        Err(e) => {
            env.cleanup().await;
            return cannot_check("a new session while its stream is not read", &e);
        }
    };
    // Already in the stream when the session opens: not for it.
    env.publish_out("chat.all", "before", "1").await;

    let mut c = TestClient::connect_raw(&gw.url()).await;
    c.send(&ClientFrame::Hello(Hello {
        subscriptions: vec![sub("s", "chat")],
        ..Hello::default()
    }))
    .await;
    let e = c
        .expect_error_code(None, ErrorCode::BrokerUnavailable)
        .await;
    assert!(e.message.contains(&stream), "{}", e.message);
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4002));

    user.permit([".*", ".*", ".*"]).expect("read granted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let welcome = loop {
        let mut c = TestClient::connect_raw(&gw.url()).await;
        c.send(&ClientFrame::Hello(Hello {
            subscriptions: vec![sub("s", "chat")],
            ..Hello::default()
        }))
        .await;
        match c.recv().await {
            ServerFrame::Welcome(w) => break (c, w),
            ServerFrame::Error(e) if e.code == ErrorCode::BrokerUnavailable => {
                assert!(tokio::time::Instant::now() < deadline, "never opened");
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    };
    let (mut c, welcome) = welcome;
    assert!(welcome.position.is_some(), "{welcome:?}");
    c.expect_no_deliver(Duration::from_millis(500)).await;
    env.publish_out("chat.all", "after", "2").await;
    let d = c.expect_deliver().await;
    assert_eq!(d.message_id, "after");
    assert!(d.position > welcome.position);
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// Waits for streams whose tail is not read yet share one deadline: a gateway whose
/// RabbitMQ user may read none of its three streams (the outbound stream and two
/// channel streams) starts after one 3 s wait, not one per stream (9 s), and a
/// `hello` subscribing to both channels is refused after one 2 s wait.
#[tokio::test]
async fn waits_for_streams_not_read_share_one_deadline() {
    let env = TestEnv::new("unread-many").await;
    let names = Names::new(&env.namespace);
    let streams = [
        names.outbound_stream(),
        names.channel_stream("voice"),
        names.channel_stream("tickets"),
    ];
    let any_of = streams
        .iter()
        .map(|s| s.replace('.', "\\."))
        .collect::<Vec<_>>()
        .join("|");
    let user = match BrokerUser::add(
        &format!("{}-no-read-any", env.namespace),
        [".*", ".*", &format!("^(?!({any_of})$).*")],
    ) {
        Ok(user) => user,
        Err(e) => {
            env.cleanup().await;
            return cannot_check("waits for streams not read", &e);
        }
    };
    let started = Instant::now();
    let gw = TestGateway::start_with(&env, |c| {
        c.amqp_uri = vec![user.uri(&amqp_addr())];
        for channel in ["voice", "tickets"] {
            c.channel_options.insert(
                channel.into(),
                ChannelOptions {
                    stream_max_age: Some("1h".into()),
                    ..ChannelOptions::default()
                },
            );
        }
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(7), "started after {took:?}");

    let mut c = TestClient::connect_raw(&gw.url()).await;
    let asked = Instant::now();
    c.send(&ClientFrame::Hello(Hello {
        subscriptions: vec![sub("v", "voice"), sub("t", "tickets")],
        ..Hello::default()
    }))
    .await;
    c.expect_error_code(None, ErrorCode::BrokerUnavailable)
        .await;
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(4500), "refused after {took:?}");
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4002));
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_sockets_with_going_away() {
    let env = TestEnv::new("shutdown").await;
    let gw = TestGateway::start(&env).await;
    let url = gw.url();
    let mut a = TestClient::connect(&url).await;
    let mut b = TestClient::connect(&url).await;
    // The connections work before the shutdown.
    a.publish("last", "chat", json!(1)).await;
    a.expect_ack("last").await;
    let stop = tokio::spawn(gw.shutdown());
    assert_eq!(a.expect_close(Duration::from_secs(10)).await, Some(1001));
    assert_eq!(b.expect_close(Duration::from_secs(10)).await, Some(1001));
    tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .expect("shutdown finishes")
        .expect("no panic");
    // Nothing listens any more.
    assert!(tokio_tungstenite::connect_async(url.as_str())
        .await
        .is_err());
    env.cleanup().await;
}

/// An upgrade in flight when the gateway begins to shut down (its first line came
/// before, the rest after) is refused `503 broker_unavailable` in JSON, as every
/// refusal, so that the client tries another gateway.
#[tokio::test]
async fn an_upgrade_that_completes_during_shutdown_is_refused_503_in_json() {
    let env = TestEnv::new("shutdown-upgrade").await;
    let gw = TestGateway::start(&env).await;
    let request = upgrade_request("/ws", &[]);
    let (first, rest) = request.split_at(request.find('\n').unwrap() + 1);
    let mut s = tokio::net::TcpStream::connect(gw.health_addr())
        .await
        .expect("connect");
    s.write_all(first.as_bytes()).await.expect("request line");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(rest.as_bytes()).await.expect("the rest");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("an answer before the header deadline")
        .expect("read");
    let (status, _, body) = http_answer(&out);
    assert_eq!(status, 503, "{out}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["code"], "broker_unavailable", "{body}");
    tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .expect("shutdown finishes")
        .expect("no panic");
    env.cleanup().await;
}

#[tokio::test]
async fn a_client_that_asks_for_no_subprotocol_is_served_too() {
    use futures_util::{SinkExt, StreamExt};
    let env = TestEnv::new("no-subprotocol").await;
    let gw = TestGateway::start(&env).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.url().as_str())
        .await
        .expect("connect");
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"type":"hello"}"#.into(),
    ))
    .await
    .expect("send");
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    let frame = warren_protocol::decode_server(msg.to_text().expect("text")).expect("frame");
    assert_eq!(frame.kind(), "welcome");
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_client_close_is_echoed_with_its_code() {
    let env = TestEnv::new("close-echo").await;
    let gw = TestGateway::start(&env).await;
    let c = TestClient::connect(&gw.url()).await;
    assert_eq!(
        c.close_expecting_echo().await,
        Some(1000),
        "RFC 6455: the gateway answers a close frame with one of its own"
    );
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_large_frame_half_sent_before_hello_is_cut_off_at_the_pre_hello_cap() {
    let env = TestEnv::new("pre-hello-cap").await;
    // hello_timeout_ms is 10 s: only the cap can end this connection sooner.
    let gw = TestGateway::start_with(&env, |c| c.hello_timeout_ms = 10_000).await;
    let mut s = tokio::net::TcpStream::connect(gw.health_addr())
        .await
        .expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: warren.v1\r\n\r\n",
    )
    .await
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // A text frame announcing 1 MB (masked), of which 200 KB are sent, and no hello.
    let started = std::time::Instant::now();
    let mut frame = vec![0x81, 0xFF];
    frame.extend_from_slice(&1_000_000u64.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    let _ = s.write_all(&frame).await;
    let chunk = vec![b'x'; 4096];
    for _ in 0..50 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    println!(
        "gateway_listeners: a half-sent 1 MB frame before hello cut off after {} ms",
        started.elapsed().as_millis()
    );
    assert!(closed.is_ok(), "the connection is still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client with a proper hello is served, large frames and all.
    let mut c = TestClient::connect(&gw.url()).await;
    c.publish("big", "chat", json!("y".repeat(60_000))).await;
    c.expect_ack("big").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn with_an_admin_listener_metrics_and_health_move_off_the_websocket_listeners() {
    let env = TestEnv::new("admin-listener").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = gw.gateway().admin_addr().expect("an admin listener");
    let (status, _, body) = http_get_with(admin, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("warren_gateway_connections"), "{body}");
    let (status, _, body) = http_get_with(admin, "/healthz", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((http_get_with(admin, "/services", &[]).await).0, 200);
    for path in ["/metrics", "/healthz", "/services"] {
        let (status, _, _) = http_get_with(gw.health_addr(), path, &[]).await;
        assert_eq!(status, 404, "{path} is not on the WebSocket listener");
    }
    // Clients are served on the WebSocket listener as before.
    let mut c = TestClient::connect(&gw.url()).await;
    c.publish("ok", "chat", json!(1)).await;
    c.expect_ack("ok").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// Through a drain the WebSocket listeners stop accepting, but the admin listener
/// serves on until the drain ends: `/healthz` says `draining` (a load balancer's check
/// sees why), `/metrics` can be scraped.
#[tokio::test]
async fn the_admin_listener_answers_draining_through_the_drain() {
    let env = TestEnv::new("admin-drain").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.shutdown_grace_ms = 3_000;
    })
    .await;
    let admin = gw.gateway().admin_addr().expect("an admin listener");
    let ws = gw.health_addr();
    // A client that stays keeps the drain open for its grace.
    let mut c = TestClient::connect(&gw.url()).await;
    c.publish("ok", "chat", json!(1)).await;
    c.expect_ack("ok").await;
    let drain = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!drain.is_finished(), "the drain waits for the client");
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_ok(),
        "the admin listener accepts during the drain"
    );
    let (status, _, body) = http_get_with(admin, "/healthz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"draining\""), "{body}");
    let (status, _, _) = http_get_with(admin, "/metrics", &[]).await;
    assert_eq!(status, 200, "metrics during the drain");
    assert!(
        tokio::net::TcpStream::connect(ws).await.is_err(),
        "the WebSocket listener stopped accepting"
    );
    tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .expect("the drain ends")
        .expect("shutdown");
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener stops once the drain is over"
    );
    drop(c);
    env.cleanup().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let env = TestEnv::new("slowloris").await;
    let gw = TestGateway::start_with(&env, |c| c.header_read_timeout_ms = 500).await;
    let mut s = tokio::net::TcpStream::connect(gw.health_addr())
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .expect("write");
    // Keep trickling a header byte now and then, as a slowloris client does.
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                r = s.read(&mut buf) => break r,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if s.write_all(b"X").await.is_err() {
                        break Ok(0);
                    }
                }
            }
        }
    })
    .await
    .expect("the gateway disconnects the client in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the deadline: {:?}",
        started.elapsed()
    );
    // A client that sends its headers promptly is served as before.
    let mut c = TestClient::connect(&gw.url()).await;
    c.publish("ok", "chat", json!(1)).await;
    c.expect_ack("ok").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// After its first request, a kept-alive HTTP connection has the same time for the
/// next request's headers (counted from the response): one that trickles its second
/// request, or sits idle, is closed. Without it any client could hold a socket (and a
/// file descriptor) for ever with one quick `GET /healthz`.
#[tokio::test]
async fn a_kept_alive_connection_that_trickles_or_idles_after_its_first_request_is_disconnected() {
    let env = TestEnv::new("keepalive").await;
    let gw = TestGateway::start_with(&env, |c| c.header_read_timeout_ms = 500).await;
    for trickle in [true, false] {
        let mut s = tokio::net::TcpStream::connect(gw.health_addr())
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.expect("the response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{:?}", &buf[..n]);
        let answered = std::time::Instant::now();
        if trickle {
            s.write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .expect("write");
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => break r,
                    () = tokio::time::sleep(Duration::from_millis(100)), if trickle => {
                        if s.write_all(b"X").await.is_err() {
                            break Ok(0);
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("closed within 5 s (trickle: {trickle})"));
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert!(
            answered.elapsed() >= Duration::from_millis(400),
            "not before the deadline: {:?}",
            answered.elapsed()
        );
    }
    // A kept-alive client that asks again in time is served again.
    let mut s = tokio::net::TcpStream::connect(gw.health_addr())
        .await
        .expect("connect");
    let mut buf = [0u8; 4096];
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let n = s.read(&mut buf).await.expect("the response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // WebSockets are not cut at the deadline.
    let mut c = TestClient::connect(&gw.url()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.publish("ok", "chat", json!(1)).await;
    c.expect_ack("ok").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn topology_print_shows_and_topology_apply_declares_what_the_gateway_declares() {
    use warren_e2e::binary::workspace_binary;
    let env = TestEnv::new("topology-cli").await;
    let bin = tokio::task::spawn_blocking(|| {
        workspace_binary("warren-gateway", "warren-gateway", &["WARREN_GATEWAY_BIN"])
    })
    .await
    .expect("binary");
    let run = |action: &'static str| {
        let bin = bin.clone();
        let ns = env.namespace.clone();
        async move {
            tokio::process::Command::new(bin)
                .args(["--namespace", &ns, "--amqp-uri"])
                .arg(warren_e2e::env::amqp_addr())
                .args(["topology", action])
                .output()
                .await
                .expect("run warren-gateway")
        }
    };
    let printed = run("print").await;
    assert!(printed.status.success());
    let text = String::from_utf8_lossy(&printed.stdout).to_string();
    for name in [
        env.names.inbound_exchange(),
        env.names.outbound_exchange(),
        env.names.channel_queue("chat"),
    ] {
        assert!(text.contains(&name), "print names {name}: {text}");
    }
    // print does not connect: nothing exists yet.
    assert_eq!(
        env.message_count(&env.names.channel_queue("chat")).await,
        None
    );
    let applied = run("apply").await;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        env.message_count(&env.names.channel_queue("chat")).await,
        Some(0),
        "apply declared IN_CHAT"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn topology_apply_reports_an_argument_the_broker_refuses_with_the_brokers_reason() {
    use std::sync::Arc;
    use warren_gateway::broker::Broker;
    use warren_gateway::metrics::Metrics;
    use warren_gateway::topology::Declaration;
    use warren_protocol::amqp::QueueArg;
    let env = TestEnv::new("topology-refused").await;
    let config = warren_e2e::gateway::test_config(&env);
    let broker = Broker::connect(&config, Arc::new(Metrics::default()))
        .await
        .expect("connects");
    let stream = format!("{}refused.stream", env.names.prefix());
    // RabbitMQ refuses a zero max age (the gateway's config does too); before, apply
    // took the 406 for "exists with other arguments", went on, and failed at the
    // binding with a misleading NOT_FOUND for the queue.
    let topology = warren_gateway::Topology {
        declarations: vec![
            Declaration::Queue {
                name: stream.clone(),
                args: vec![
                    ("x-queue-type".into(), QueueArg::Text("stream".into())),
                    ("x-max-age".into(), QueueArg::Text("0s".into())),
                ],
            },
            Declaration::Binding {
                queue: stream.clone(),
                exchange: "amq.topic".into(),
                key: "#".into(),
            },
        ],
    };
    let err = topology.apply(&broker).await.unwrap_err().to_string();
    assert!(err.contains("invalid_max_age"), "{err}");
    assert!(err.contains(&stream), "names the queue: {err}");
    // An object that exists with other arguments is still kept, with a warning.
    let existing = env.names.outbound_stream();
    let gw = TestGateway::start(&env).await;
    let other = warren_gateway::Topology {
        declarations: vec![Declaration::Queue {
            name: existing,
            args: vec![
                ("x-queue-type".into(), QueueArg::Text("stream".into())),
                ("x-max-age".into(), QueueArg::Text("1s".into())),
            ],
        }],
    };
    let kept = other.apply(&broker).await.expect("kept as it is");
    assert_eq!(kept.len(), 1, "{kept:?}");
    gw.shutdown().await;
    env.cleanup().await;
}

/// `topology apply` with a configuration the broker's objects differ from (a new
/// stream retention: RabbitMQ cannot change a queue's arguments) exits 1 naming what
/// it kept as it is. It printed `applied` and exited 0, so `apply && deploy` went on
/// against a broker that still differed.
#[tokio::test]
async fn topology_apply_exits_1_naming_what_the_broker_kept_as_it_is() {
    let env = TestEnv::new("topology-apply-kept").await;
    let same = warren_e2e::gateway::topology_cli(&env, "", "apply", &[]).await;
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(String::from_utf8_lossy(&same.stdout).ends_with("applied\n"));
    let out =
        warren_e2e::gateway::topology_cli(&env, "stream_max_age = \"1h\"\n", "apply", &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("KEPT"), "{err}");
    assert!(err.contains(&env.names.outbound_stream()), "{err}");
    assert!(err.contains("x-max-age"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("applied"));
    env.cleanup().await;
}
