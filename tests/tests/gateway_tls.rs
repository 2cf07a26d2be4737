//! `amqps://` is TLS: the gateway never sends the broker's password in plaintext. A
//! plain TCP listener stands in for the broker and records the first bytes the gateway
//! sends: a TLS ClientHello, not the AMQP header and credentials.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use warren_gateway::{Config, Gateway, ListenerConfig};

#[tokio::test]
async fn an_amqps_uri_opens_tls_and_never_sends_the_password_in_plaintext() {
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = fake.local_addr().unwrap().port();
    let config = Config {
        amqp_uri: vec![format!(
            "amqps://warren:s3cret-broker-pass@localhost:{port}/%2f"
        )],
        listen: vec![ListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            channel: None,
        }],
        broker_wait_ms: 1000,
        ..Config::default()
    };
    let start = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(20), Gateway::start(config)).await
    });
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), fake.accept())
        .await
        .expect("the gateway connects")
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut first))
        .await
        .expect("the gateway speaks first")
        .unwrap();
    let first = &first[..n];
    assert!(n >= 5, "{n} bytes");
    assert_eq!(
        first[0],
        0x16,
        "a TLS handshake record, not {:?}",
        &first[..8.min(n)]
    );
    assert_eq!(first[1], 0x03, "TLS version major 3");
    assert!(!first.starts_with(b"AMQP"), "not the plaintext AMQP header");
    let text = String::from_utf8_lossy(first);
    assert!(
        !text.contains("s3cret-broker-pass"),
        "no password in plaintext"
    );
    drop(socket);
    drop(fake);
    let started = start.await.unwrap();
    assert!(
        !matches!(started, Ok(Ok(_))),
        "a broker that does not speak TLS is not accepted"
    );
}
