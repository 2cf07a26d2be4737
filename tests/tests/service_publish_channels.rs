//! The service library's publishing channels over real RabbitMQ: one AMQP channel per
//! Warren channel it sends to, closed once unused for `publish_channel_idle`, so a
//! service that sends to many Warren channels over its life does not keep a channel
//! for each (RabbitMQ allows 2,047 per connection). The broker's own count of the
//! connection's channels (management API) is the measure.

use std::time::{Duration, Instant};

use warren_e2e::env::amqp_addr;
use warren_e2e::gateway::{http_get_with, management_url};
use warren_e2e::service::in_fresh_namespace;
use warren_protocol::amqp::Names;
use warren_service::{Outgoing, Service, ServiceConfig, Targets};

const LIMIT: Duration = Duration::from_secs(90);

/// The channels RabbitMQ counts on the connection named `name` (`None` until the
/// management API lists it; its figures are refreshed every 5 s).
async fn channels_of(name: &str) -> Option<u64> {
    let uri: lapin::uri::AMQPUri = amqp_addr().parse().expect("AMQP_ADDR");
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!(
            "{}:{}",
            uri.authority.userinfo.username, uri.authority.userinfo.password
        ),
    );
    let url = management_url();
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let addr = tokio::net::lookup_host(host)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .expect("the management API's address");
    let (_, _, body) = http_get_with(
        addr,
        "/api/connections?columns=user_provided_name,channels",
        &[("Authorization", &format!("Basic {credentials}"))],
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&body).expect("a JSON list");
    list.as_array()?
        .iter()
        .find(|c| c["user_provided_name"].as_str() == Some(name))
        .and_then(|c| c["channels"].as_u64())
}

/// Waits (at most 30 s, polling every 500 ms) until `name`'s channel count satisfies
/// `ok`, and returns the last count seen.
async fn channels_until(name: &str, ok: impl Fn(u64) -> bool) -> Option<u64> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = channels_of(name).await;
        if seen.is_some_and(&ok) || Instant::now() >= until {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_warren_channel_sent_to_no_more_gives_its_amqp_channel_back() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let names = Names::new(&ns);
        let app = format!("lanes-{ns}");
        // The connection's name, as the library sets it.
        let connection = format!("{app} ({})", names.prefix());
        let config = ServiceConfig::default()
            .with_app_id(app.clone())
            .with_publish_channel_idle(Duration::from_secs(2));
        let service = Service::connect_with(&amqp_addr(), names, config)
            .await
            .expect("the service connects");
        let publisher = service.publisher();
        let broadcast = |channel: &str| {
            Outgoing::new(Targets::broadcast(channel), br#"{"text":"hi"}"#.to_vec())
        };

        // At rest: the announcements' channel only (the registry heartbeat keeps it
        // in use).
        let rest = channels_until(&connection, |n| n >= 1)
            .await
            .expect("RabbitMQ lists the service's connection");

        // Sending to four Warren channels, again and again (until RabbitMQ's count
        // is read): a channel each.
        let sending = async {
            loop {
                for channel in ["news", "sport", "weather", "stocks"] {
                    publisher
                        .publish(&broadcast(channel))
                        .await
                        .expect("confirmed");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let busy = tokio::select! {
            seen = channels_until(&connection, |n| n >= rest + 4) => seen,
            () = sending => unreachable!("sends until the count is read"),
        };
        println!("service_publish_channels: at rest {rest}, sending {busy:?}");
        assert_eq!(
            busy,
            Some(rest + 4),
            "one channel per Warren channel sent to"
        );

        // Sending stopped: 2 s later each of the four is closed.
        let idle = channels_until(&connection, |n| n <= rest).await;
        println!("service_publish_channels: idle {idle:?}");
        assert_eq!(idle, Some(rest), "the idle channels were closed");

        // And sending again opens one again. Sent again and again while RabbitMQ's
        // count is read (its figures are refreshed every 5 s, and the channel closes
        // 2 s after its last use).
        publisher
            .publish(&broadcast("news"))
            .await
            .expect("confirmed after its channel was closed");
        let sending = async {
            loop {
                publisher
                    .publish(&broadcast("news"))
                    .await
                    .expect("confirmed");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let again = tokio::select! {
            seen = channels_until(&connection, |n| n == rest + 1) => seen,
            () = sending => unreachable!("sends until the count is read"),
        };
        println!("service_publish_channels: sending again {again:?}");
        assert_eq!(
            again,
            Some(rest + 1),
            "sending again opened one channel again"
        );
        service.stop().await.expect("stops");
    })
    .await;
}

/// A publish the broker refuses (to an exchange that does not exist: RabbitMQ closes
/// the publishing channel with NOT_FOUND) fails alone: the replies pending on the same
/// channel are published again on a fresh one, and every request gets its handler's
/// answer. The channel's close failed every confirm pending on it with the same
/// error, so those replies were taken for refused ones and the requests answered
/// `internal` instead.
#[tokio::test]
async fn a_refused_publish_does_not_fail_the_replies_pending_beside_it() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use warren_e2e::service::StandInGateway;
    use warren_service::{Answer, Context, HandlerError, Incoming, Outcome};

    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_prefetch(10);
        let service =
            Service::connect_with(&warren_e2e::service::amqp_uri(), Names::new(&ns), config)
                .await
                .expect("the service connects");
        let missing = format!("{ns}.no-such-exchange");
        let refused = Arc::new(AtomicU32::new(0));
        let seen = refused.clone();
        service
            .consume("echo", move |ctx: Context, m: Incoming| {
                let missing = missing.clone();
                let seen = seen.clone();
                async move {
                    let publisher = ctx.publisher().clone();
                    tokio::spawn(async move {
                        let properties = lapin::BasicProperties::default();
                        if publisher
                            .publish_confirmed(&missing, "x", b"{}", properties)
                            .await
                            .is_err()
                        {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                    let n: serde_json::Value = serde_json::from_slice(&m.body)
                        .map_err(|e| HandlerError::Failed(e.to_string()))?;
                    Ok::<_, HandlerError>(Outcome::Reply(
                        Answer::json(&serde_json::json!({ "answer": n["n"] })).expect("JSON"),
                    ))
                }
            })
            .await
            .expect("consume echo");
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        const N: usize = 50;
        for i in 0..N {
            gw.send_request(
                "echo",
                &format!("r{i}"),
                &format!(r#"{{"n":{i}}}"#),
                Duration::from_secs(30),
            )
            .await;
        }
        let mut internal = Vec::new();
        for _ in 0..N {
            let reply = gw
                .next_reply(Duration::from_secs(30))
                .await
                .expect("every request answered within 30 s");
            let id = reply.correlation_id.clone().unwrap_or_default();
            if reply.error.is_some() {
                internal.push((
                    id,
                    reply.error.clone(),
                    String::from_utf8_lossy(&reply.body).into_owned(),
                ));
                continue;
            }
            let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(format!("r{}", body["answer"]), id, "its own answer");
        }
        assert!(
            internal.is_empty(),
            "{} of {N} requests refused instead of answered: {:?}",
            internal.len(),
            internal.first()
        );
        // The bad publishes themselves did fail.
        let deadline = Instant::now() + Duration::from_secs(20);
        while refused.load(Ordering::SeqCst) < N as u32 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            refused.load(Ordering::SeqCst),
            N as u32,
            "every bad publish failed"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}
