//! Presence test support: gateways with short presence timers, and the
//! `client.connected` / `client.disconnected` events as services see them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warren_protocol::Hello;

use crate::client::TestClient;
use crate::env::TestEnv;
use crate::gateway::{http_get, TestGateway};

/// `session_expires_ms` of the tests' gateways: the grace before an unresumed session
/// is announced gone.
pub const GRACE_MS: u64 = 1_500;
/// `announce_interval_ms` of the tests' gateways.
pub const ANNOUNCE_MS: u64 = 200;

/// Presence events (connected / disconnected only) as they arrive.
pub struct Events {
    consumer: lapin::Consumer,
    /// Each event's routing key, body and arrival, in order.
    pub seen: Vec<(String, serde_json::Value, Instant)>,
}

impl Events {
    /// `client.connected` and `client.disconnected` events of `env`'s namespace.
    pub async fn listen(env: &mut TestEnv) -> Events {
        Self::listen_to(env, &["client.connected", "client.disconnected"]).await
    }

    /// Events of the kinds `events` only.
    pub async fn listen_to(env: &mut TestEnv, events: &[&str]) -> Events {
        let queue = format!("{}.test-presence", env.namespace);
        let exchange = env.names.presence_exchange();
        for event in events {
            env.bind_queue(&queue, &exchange, event).await;
        }
        let consumer = env.consume_no_ack(&queue).await;
        Events {
            consumer,
            seen: Vec::new(),
        }
    }

    /// Collects events for `wait`.
    pub async fn collect(&mut self, wait: Duration) {
        use futures_util::StreamExt;
        let until = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, self.consumer.next()).await {
            let v: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON event");
            self.seen
                .push((d.routing_key.to_string(), v, Instant::now()));
        }
    }

    /// Waits (bounded) for `event` of `session`; when it arrived.
    pub async fn wait_for(
        &mut self,
        event: &str,
        session: &str,
        within: Duration,
    ) -> (serde_json::Value, Instant) {
        let started = Instant::now();
        loop {
            if let Some((_, v, at)) = self
                .seen
                .iter()
                .find(|(k, v, _)| k == event && v["session"] == session)
            {
                return (v.clone(), *at);
            }
            assert!(
                started.elapsed() < within,
                "no {event} for {session} within {within:?}; seen {:?}",
                self.seen
                    .iter()
                    .map(|(k, v, _)| (k, &v["session"]))
                    .collect::<Vec<_>>()
            );
            self.collect(Duration::from_millis(50)).await;
        }
    }

    /// `user` connected to `gw`, once its `client.connected` was announced; and its
    /// session.
    pub async fn connected(&mut self, gw: &TestGateway, user: &str) -> (TestClient, String) {
        let client = TestClient::connect_with(&gw.url(), as_user(user)).await;
        let session = client.session().to_string();
        self.wait_for("client.connected", &session, Duration::from_secs(5))
            .await;
        (client, session)
    }

    /// How many `event`s `session` got.
    pub fn count(&self, session: &str, event: &str) -> usize {
        self.seen
            .iter()
            .filter(|(k, v, _)| k == event && v["session"] == session)
            .count()
    }

    /// How many of each event every session got.
    pub fn counts(&self) -> BTreeMap<(String, String), usize> {
        let mut m = BTreeMap::new();
        for (k, v, _) in &self.seen {
            *m.entry((v["session"].as_str().unwrap_or("").to_string(), k.clone()))
                .or_default() += 1;
        }
        m
    }
}

/// A `hello` whose token is user `user` (auth mode `none`).
pub fn as_user(user: &str) -> Hello {
    Hello {
        token: Some(user.into()),
        ..Default::default()
    }
}

/// Waits until gateways started with [`presence_config`] have heard one another
/// (three announcement intervals).
pub async fn peers_heard() {
    tokio::time::sleep(Duration::from_millis(ANNOUNCE_MS * 3)).await;
}

/// Presence on, with short timers ([`ANNOUNCE_MS`], [`GRACE_MS`]).
pub fn presence_config(c: &mut warren_gateway::Config) {
    c.presence = true;
    c.announce_interval_ms = ANNOUNCE_MS;
    c.session_expires_ms = GRACE_MS;
}

/// The users `/presence` on `gw` lists (all channels).
pub async fn listed(gw: &TestGateway, query: &str) -> serde_json::Value {
    let body = http_get(gw.health_addr(), &format!("/presence{query}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
    v["users"].clone()
}
