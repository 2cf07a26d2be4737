//! Raw AMQP (lapin) plumbing shared by the baseline and the fanout publisher: connecting,
//! making sure the Warren topology exists, message properties like the gateway's, and
//! cleaning up what a run declared. Every wait on the broker made for load is bounded
//! ([`bounded`]): a connection RabbitMQ closed must fail a run, not hang it.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use warren_protocol::amqp::{keys, Names, H_CHANNEL, H_GATEWAY, H_SESSION, H_USER};

use crate::error::{BenchError, Result};

/// The AMQP minimum frame size, which load connections ask for unless a message needs
/// more (see [`load_frame_max`]).
const MIN_FRAME: u32 = 4096;

/// Opens one AMQP connection named `name` (visible in the management UI).
///
/// # Errors
/// `Amqp` when RabbitMQ cannot be reached or refuses the credentials.
pub async fn connect(uri: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    Ok(Connection::connect(uri, props).await?)
}

/// The `frame_max` a load connection negotiates for messages of `size` bytes: the
/// smallest of 4 KiB, 8 KiB, ... that holds one whole (so no message is split into
/// more frames than at the broker's 128 KiB), at most 128 KiB. lapin keeps two ring
/// buffers of 32 frames per connection, zero-filled to that size: 8 MiB a connection
/// at 128 KiB, which is what made 5,000 raw subscribers take 9.4 GB; 256 KiB at 4 KiB.
pub fn load_frame_max(size: usize) -> u32 {
    // Room for the content header frame's properties and headers.
    let need = u32::try_from(size.saturating_add(2048)).unwrap_or(u32::MAX);
    need.max(MIN_FRAME).next_power_of_two().min(128 * 1024)
}

/// Opens one load connection (a baseline client or the fanout publisher), waiting at
/// most `timeout`, negotiating `frame_max` (see [`load_frame_max`]).
///
/// # Errors
/// `Timeout` when the handshake does not finish in time, `Amqp` when RabbitMQ cannot
/// be reached or refuses, `Config` for a URI lapin cannot read.
pub async fn connect_load(
    uri: &str,
    name: &str,
    frame_max: u32,
    timeout: Duration,
) -> Result<Connection> {
    let mut uri =
        AMQPUri::from_str(uri).map_err(|e| BenchError::Config(format!("--amqp-uri: {e}")))?;
    uri.query.frame_max = Some(frame_max);
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    bounded(
        timeout,
        "an AMQP connection",
        Connection::connect_uri(uri, props),
    )
    .await
}

/// Waits at most `timeout` for a broker operation.
///
/// # Errors
/// `Timeout` naming `what` when it takes longer, `Amqp` when it fails.
pub async fn bounded<T>(
    timeout: Duration,
    what: &'static str,
    op: impl Future<Output = lapin::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, op).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BenchError::Timeout(what)),
    }
}

/// Closes a connection, waiting at most `timeout` (a closed one is fine).
pub async fn close(conn: &Connection, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, conn.close(200, "done".into())).await;
}

/// Declares a durable topic exchange unless it already exists (whatever its flags).
///
/// # Errors
/// `Amqp` when neither the passive nor the active declaration works.
pub async fn ensure_exchange(conn: &Connection, name: &str) -> Result<()> {
    let probe = conn.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    if probe
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok()
    {
        let _ = probe.close(200, "ok".into()).await;
        return Ok(());
    }
    let ch = conn.create_channel().await?;
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(())
}

/// Makes sure `IN_<CHANNEL>` exists and is bound (quorum, durable, as the gateway and
/// services declare it); an existing queue is left as it is.
///
/// # Errors
/// `Amqp` when the queue can neither be found nor declared.
pub async fn ensure_channel_queue(conn: &Connection, names: &Names, channel: &str) -> Result<()> {
    ensure_exchange(conn, &names.inbound_exchange()).await?;
    let queue = names.channel_queue(channel);
    let probe = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if probe
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = probe.close(200, "ok".into()).await;
        return Ok(());
    }
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await?;
    ch.queue_bind(
        queue.as_str().into(),
        names.inbound_exchange().into(),
        keys::inbound_binding(channel).into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(())
}

/// Arguments of a raw subscriber's queue (fanout baseline): bounded and expiring, as
/// the per-session queues of the gateway's removed `outbound = "queues"` mode were.
pub fn subscriber_queue_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    args.insert("x-max-length".into(), AMQPValue::LongInt(10_000));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    args
}

/// Properties like those the gateway sets on a client's publish: persistent, a message
/// id, timestamp, app id, content type and the session/user/gateway/channel headers.
pub fn client_like_properties(client: &str, message_id: String, channel: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(v.into());
    headers.insert(H_SESSION.into(), s(client));
    headers.insert(H_USER.into(), s(client));
    headers.insert(H_GATEWAY.into(), s("warren-bench-raw"));
    headers.insert(H_CHANNEL.into(), s(channel));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id))
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .with_app_id("warren-bench".into())
        .with_content_type("application/json".into())
        .with_headers(headers)
}

/// Deletes queues, many at once; missing queues are fine. Returns how many went. Each
/// batch of 256 waits at most 30 s (a closed connection deletes nothing, at once).
pub async fn delete_queues(conn: &Connection, queues: &[String]) -> usize {
    const BATCH_WAIT: Duration = Duration::from_secs(30);
    let mut deleted = 0;
    for chunk in queues.chunks(256) {
        let Ok(ch) = bounded(BATCH_WAIT, "a channel", conn.create_channel()).await else {
            break;
        };
        let batch = join_all(
            chunk
                .iter()
                .map(|q| ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())),
        );
        let Ok(results) = tokio::time::timeout(BATCH_WAIT, batch).await else {
            break;
        };
        deleted += results.iter().filter(|r| r.is_ok()).count();
        let _ = tokio::time::timeout(BATCH_WAIT, ch.close(200, "ok".into())).await;
    }
    deleted
}

/// Deletes the exchanges, channel queues and streams (the outbound stream and any
/// channel's own) of a namespace the benchmark made up.
pub async fn delete_namespace(conn: &Connection, names: &Names, channels: &[&str]) {
    let mut queues: Vec<String> = channels.iter().map(|c| names.channel_queue(c)).collect();
    // Deleting a queue that is not there is not an error.
    queues.extend(channels.iter().map(|c| names.channel_stream(c)));
    queues.push(names.dead_letter_queue());
    queues.push(names.outbound_stream());
    delete_queues(conn, &queues).await;
    let exchanges = [
        names.inbound_exchange(),
        names.outbound_exchange(),
        names.gateways_exchange(),
        names.presence_exchange(),
        names.services_exchange(),
        names.dead_letter_exchange(),
    ];
    let wait = Duration::from_secs(10);
    for x in exchanges {
        if let Ok(ch) = bounded(wait, "a channel", conn.create_channel()).await {
            let delete = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default());
            let _ = tokio::time::timeout(wait, delete).await;
            let _ = tokio::time::timeout(wait, ch.close(200, "ok".into())).await;
        }
    }
}
