//! publish: N clients publish as fast as acknowledgements allow, each keeping
//! `--window` publishes in flight. Through the gateway a publish is answered by `ack`
//! after the broker confirm; raw, each client has its own AMQP connection with publisher
//! confirms and the same window. Figures: acked writes/s, ack latency.

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Connection;
use serde_json::value::RawValue;
use warren_protocol::{ClientFrame, Publish, ServerFrame};

use super::{message, run_workers, SharedEnv, Target, WorkerOutcome};
use crate::amqp::bounded;
use crate::error::{BenchError, Result};
use crate::measurement::{now_us, Figures, MeasureWindow, Tally};

/// Runs the publish scenario once.
///
/// # Errors
/// When a client cannot connect or an answer does not come within `--op-timeout`.
pub async fn run(env: &SharedEnv, target: Target, clients: usize) -> Result<Figures> {
    let ensure =
        crate::amqp::ensure_channel_queue(&env.amqp, &env.names, &env.config.publish_channel);
    tokio::time::timeout(env.config.op_timeout, ensure)
        .await
        .map_err(|_| BenchError::Timeout("the publish channel's queue"))??;
    let figures = match target {
        Target::Gateway | Target::GatewayDeflate => {
            let client = move |env, i, window| gateway_client(env, target, i, window);
            run_workers(env, target, clients, client).await
        }
        Target::Raw => run_workers(env, target, clients, raw_client).await,
        Target::WebStomp => Err(BenchError::Config(
            "the web-stomp target has no publish client (rpc and fanout only)".into(),
        )),
    };
    purge(env).await;
    figures
}

/// Empties the channel queue the publishes went to, so RabbitMQ stays lean (each step
/// waits at most `--op-timeout`).
async fn purge(env: &SharedEnv) {
    let t = env.config.op_timeout;
    if let Ok(ch) = bounded(t, "a channel", env.amqp.create_channel()).await {
        let q = env.names.channel_queue(&env.config.publish_channel);
        let purge = ch.queue_purge(
            q.as_str().into(),
            lapin::options::QueuePurgeOptions::default(),
        );
        let _ = tokio::time::timeout(t, purge).await;
        let _ = tokio::time::timeout(t, ch.close(200, "ok".into())).await;
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
    let (mut issued, mut inflight) = (0u64, 0usize);
    loop {
        while inflight < cfg.window && window.may_issue(issued) {
            issued += 1;
            // The id carries the send time, so acks need no lookup table.
            let frame = ClientFrame::Publish(Publish {
                id: format!("{issued}-{}", now_us()),
                channel: cfg.publish_channel.clone(),
                subject: None,
                distribution: None,
                headers: Default::default(),
                message: &*body,
            });
            c.feed(&frame).await?;
            inflight += 1;
        }
        c.flush().await?;
        if inflight == 0 {
            break;
        }
        let frame = tokio::time::timeout(cfg.op_timeout, c.recv())
            .await
            .map_err(|_| BenchError::Timeout("a publish ack"))??;
        let done = now_us();
        match frame {
            ServerFrame::Ack(a) => {
                inflight -= 1;
                if let Some(sent) = sent_us(&a.id) {
                    tally.record(&window, sent, done);
                }
            }
            ServerFrame::Error(e) if e.id.is_some() => {
                inflight -= 1;
                tally.errors += 1;
                if tally.errors == 1 {
                    tracing::warn!(code = %e.code, message = %e.message, "publish refused");
                }
            }
            _ => {}
        }
    }
    let session = c.session().to_string();
    c.close().await;
    Ok(WorkerOutcome {
        tally,
        session: Some(session),
    })
}

/// The send time encoded in a frame id `<n>-<micros>`.
fn sent_us(id: &str) -> Option<u64> {
    id.rsplit_once('-').and_then(|(_, t)| t.parse().ok())
}

async fn raw_client(env: SharedEnv, i: usize, window: MeasureWindow) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let setup = env.setup_permit().await;
    let conn = env
        .connect_load(&format!("warren-bench-publish-{i}"))
        .await?;
    let outcome = raw_publishes(&env, &conn, window, i, setup).await;
    crate::amqp::close(&conn, cfg.op_timeout).await;
    outcome
}

async fn raw_publishes(
    env: &SharedEnv,
    conn: &Connection,
    window: MeasureWindow,
    i: usize,
    setup: tokio::sync::SemaphorePermit<'_>,
) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let t = cfg.op_timeout;
    let ch = bounded(t, "a channel", conn.create_channel()).await?;
    bounded(
        t,
        "confirm mode",
        ch.confirm_select(ConfirmSelectOptions::default()),
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
    let mut issued = 0u64;
    let mut pending = FuturesUnordered::new();
    loop {
        while pending.len() < cfg.window && window.may_issue(issued) {
            issued += 1;
            let props = crate::amqp::client_like_properties(
                &client,
                format!("{client}:{issued}"),
                &cfg.publish_channel,
            );
            let sent = now_us();
            let confirm = bounded(
                t,
                "a raw publish",
                ch.basic_publish(
                    exchange.as_str().into(),
                    cfg.publish_channel.as_str().into(),
                    opts,
                    &body,
                    props,
                ),
            )
            .await?;
            pending.push(async move { (sent, confirm.await) });
        }
        let Some((sent, confirmation)) = tokio::time::timeout(cfg.op_timeout, pending.next())
            .await
            .map_err(|_| BenchError::Timeout("a publisher confirm"))?
        else {
            break;
        };
        match confirmation {
            Ok(lapin::Confirmation::Ack(None)) => tally.record(&window, sent, now_us()),
            _ => tally.errors += 1,
        }
    }
    Ok(WorkerOutcome {
        tally,
        session: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_read_back_from_the_frame_id() {
        assert_eq!(sent_us("17-123456"), Some(123456));
        assert_eq!(sent_us("nope"), None);
    }
}
