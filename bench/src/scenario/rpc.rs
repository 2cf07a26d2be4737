//! rpc: N clients each doing sequential requests on the echo channel. Through the
//! gateway a `request` is answered by `reply` (the reply travels via the outbound stream);
//! raw, each client has its own AMQP connection and an exclusive reply queue, publishes
//! to `warren.in` with `reply_to` + `correlation_id`, and the same echo service answers.
//! Web-STOMP, each client is a STOMP 1.2 session on RabbitMQ's WebSocket endpoint that
//! SENDs to `/exchange/<ns>.warren.in/<channel>` (so the request lands in the same
//! `IN_<CHANNEL>` queue) with `persistent:true`, a `/temp-queue/` reply-to and a
//! `correlation-id`; the plugin turns the reply-to into a queue of its own and
//! delivers the echo service's reply as a `MESSAGE`. Figures: requests/s, round-trip
//! latency.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::value::RawValue;
use warren_protocol::amqp::{H_CHANNEL, H_GATEWAY, H_SESSION, H_USER};
use warren_protocol::{ClientFrame, Request, ServerFrame};

use super::{message, run_workers, SharedEnv, Target, WorkerOutcome};
use crate::amqp::bounded;
use crate::error::{BenchError, Result};
use crate::measurement::{now_us, Figures, MeasureWindow, Tally};
use crate::stomp::StompClient;

/// Runs the rpc scenario once.
///
/// # Errors
/// When a client cannot connect or a reply does not come within `--op-timeout`.
pub async fn run(env: &SharedEnv, target: Target, clients: usize) -> Result<Figures> {
    match target {
        Target::Gateway | Target::GatewayDeflate => {
            let client = move |env, i, window| gateway_client(env, target, i, window);
            run_workers(env, target, clients, client).await
        }
        Target::Raw => run_workers(env, target, clients, raw_client).await,
        Target::WebStomp => run_workers(env, target, clients, stomp_client).await,
    }
}

async fn gateway_client(
    env: SharedEnv,
    target: Target,
    i: usize,
    window: MeasureWindow,
) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let (mut c, setup) = env.gateway_client(target, i).await?;
    drop(setup);
    window.set_up()?;
    let body = RawValue::from_string(message(cfg.size, None))?;
    let mut tally = Tally::default();
    let mut issued = 0u64;
    while window.may_issue(issued) {
        issued += 1;
        let id = issued.to_string();
        c.ack_if_due(cfg.ack_every, false).await?;
        let sent = now_us();
        c.send(&ClientFrame::Request(Request {
            id: id.clone(),
            channel: cfg.rpc_channel.clone(),
            subject: None,
            headers: Default::default(),
            timeout_ms: Some(cfg.op_timeout.as_millis() as u64),
            message: &*body,
        }))
        .await?;
        loop {
            let frame = tokio::time::timeout(cfg.op_timeout + Duration::from_secs(1), c.recv())
                .await
                .map_err(|_| BenchError::Timeout("a reply"))??;
            match frame {
                ServerFrame::Reply(r) if r.id == id => {
                    tally.record(&window, sent, now_us());
                    break;
                }
                ServerFrame::Error(e) if e.id.as_deref() == Some(id.as_str()) => {
                    tally.errors += 1;
                    if tally.errors == 1 {
                        tracing::warn!(code = %e.code, message = %e.message, "request failed");
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    let session = c.session().to_string();
    c.close().await;
    Ok(WorkerOutcome {
        tally,
        session: Some(session),
    })
}

async fn raw_client(env: SharedEnv, i: usize, window: MeasureWindow) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let setup = env.setup_permit().await;
    let conn = env.connect_load(&format!("warren-bench-rpc-{i}")).await?;
    let outcome = raw_requests(&env, &conn, i, window, setup).await;
    crate::amqp::close(&conn, cfg.op_timeout).await;
    outcome
}

async fn raw_requests(
    env: &SharedEnv,
    conn: &Connection,
    i: usize,
    window: MeasureWindow,
    setup: tokio::sync::SemaphorePermit<'_>,
) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let t = cfg.op_timeout;
    let ch = bounded(t, "a channel", conn.create_channel()).await?;
    let reply_queue = bounded(
        t,
        "the reply queue",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let reply_to = reply_queue.name().clone();
    let mut replies = bounded(
        t,
        "the reply consumer",
        ch.basic_consume(
            reply_to.clone(),
            format!("rpc-{i}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    drop(setup);
    window.set_up()?;
    let exchange = env.names.inbound_exchange();
    // Message ids unique to this run: the service's duplicate window remembers ids, and
    // a reused one would be answered from that memory instead of handled again.
    let client = format!("raw-{i}-{}", super::run_tag());
    let body = message(cfg.size, None).into_bytes();
    let opts = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let mut tally = Tally::default();
    let (mut issued, mut unacked) = (0u64, 0u64);
    while window.may_issue(issued) {
        issued += 1;
        let id = issued.to_string();
        let props = crate::amqp::client_like_properties(
            &client,
            format!("{client}:{issued}"),
            &cfg.rpc_channel,
        )
        .with_correlation_id(id.as_str().into())
        .with_reply_to(reply_to.clone())
        .with_expiration(t.as_millis().to_string().into());
        let sent = now_us();
        // Not waiting for the confirm: the reply is what the client waits for.
        let _confirm = bounded(
            t,
            "a raw publish",
            ch.basic_publish(
                exchange.as_str().into(),
                cfg.rpc_channel.as_str().into(),
                opts,
                &body,
                props,
            ),
        )
        .await?;
        loop {
            let delivery = tokio::time::timeout(t, replies.next())
                .await
                .map_err(|_| BenchError::Timeout("a raw reply"))?
                .ok_or(BenchError::Closed)??;
            unacked += 1;
            if unacked >= cfg.ack_every {
                bounded(
                    t,
                    "a raw ack",
                    ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true }),
                )
                .await?;
                unacked = 0;
            }
            let correlation = delivery.properties.correlation_id().as_ref();
            if correlation.map(|c| c.as_str()) == Some(id.as_str()) {
                tally.record(&window, sent, now_us());
                break;
            }
        }
    }
    Ok(WorkerOutcome {
        tally,
        session: None,
    })
}

/// A Web-STOMP client: sequential persistent SENDs to the channel's queue, each
/// answered on the session's temp queue. The headers are those the raw client's
/// requests carry (`x-warren-session`, `-user`, `-gateway`, `-channel`, a message id,
/// an expiration); the echo service needs only reply-to and correlation-id.
async fn stomp_client(env: SharedEnv, i: usize, window: MeasureWindow) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let t = cfg.op_timeout;
    let setup = env.setup_permit().await;
    let mut c = StompClient::connect(&cfg.web_stomp_url, t).await?;
    drop(setup);
    window.set_up()?;
    let destination = format!(
        "/exchange/{}/{}",
        env.names.inbound_exchange(),
        cfg.rpc_channel
    );
    let reply_to = format!("/temp-queue/rpc-{i}");
    // Message ids unique to this run: the service's duplicate window remembers ids.
    let client = format!("stomp-{i}-{}", super::run_tag());
    let expiration = t.as_millis().to_string();
    let body = message(cfg.size, None);
    let mut tally = Tally::default();
    let mut issued = 0u64;
    let outcome = async {
        while window.may_issue(issued) {
            issued += 1;
            let id = issued.to_string();
            let message_id = format!("{client}:{issued}");
            let headers = [
                ("destination", destination.as_str()),
                ("persistent", "true"),
                ("reply-to", reply_to.as_str()),
                ("correlation-id", id.as_str()),
                ("content-type", "application/json"),
                ("amqp-message-id", message_id.as_str()),
                ("expiration", expiration.as_str()),
                (H_SESSION, client.as_str()),
                (H_USER, client.as_str()),
                (H_GATEWAY, "warren-bench-web-stomp"),
                (H_CHANNEL, cfg.rpc_channel.as_str()),
            ];
            let sent = now_us();
            tokio::time::timeout(t, c.send("SEND", &headers, body.as_bytes()))
                .await
                .map_err(|_| BenchError::Timeout("a web-stomp send"))??;
            loop {
                let frame = tokio::time::timeout(t, c.recv())
                    .await
                    .map_err(|_| BenchError::Timeout("a web-stomp reply"))??;
                if frame.command == "MESSAGE" && frame.header("correlation-id") == Some(id.as_str())
                {
                    tally.record(&window, sent, now_us());
                    break;
                }
            }
        }
        Ok::<(), BenchError>(())
    }
    .await;
    c.close().await;
    outcome.map(|()| WorkerOutcome {
        tally,
        session: None,
    })
}
