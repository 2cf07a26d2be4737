//! The AMQP objects a service relies on, declared idempotently at start so a service
//! can start before or after the gateways: the `warren.in` and `warren.out` topic
//! exchanges and the `IN_<CHANNEL>` quorum queue of each consumed channel, bound to
//! `warren.in` with `<channel>.#`. Declarations match the gateway's; when an object
//! already exists with other arguments (a deployment that tuned them), the service
//! accepts it as it is instead of failing.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::{debug, warn};
use warren_protocol::amqp::{keys, validate_segment, Names};

use crate::error::{is_precondition_failed, Result};

/// Declares the inbound and outbound topic exchanges.
///
/// # Errors
/// When the broker refuses or the connection fails.
pub async fn declare_exchanges(connection: &Connection, names: &Names) -> Result<()> {
    for exchange in [names.inbound_exchange(), names.outbound_exchange()] {
        declare_exchange(connection, &exchange, ExchangeKind::Topic).await?;
    }
    Ok(())
}

/// Declares the queue `IN_<CHANNEL>` (`x-queue-type` = `queue_type`, normally
/// `quorum`) and binds it to `warren.in` with `<channel>.#`. Returns the queue name.
///
/// # Errors
/// [`ServiceError::InvalidTarget`](crate::ServiceError::InvalidTarget) for a channel
/// name that would change routing; AMQP errors when the broker refuses.
pub async fn declare_channel_queue(
    connection: &Connection,
    names: &Names,
    channel: &str,
    queue_type: &str,
) -> Result<String> {
    validate_segment("channel", channel)?;
    let queue = names.channel_queue(channel);
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(queue_type)),
    );
    declare_queue(connection, &queue, arguments).await?;
    let ch = connection.create_channel().await?;
    ch.queue_bind(
        ShortString::from(queue.as_str()),
        ShortString::from(names.inbound_exchange()),
        ShortString::from(keys::inbound_binding(channel)),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    close(ch).await;
    debug!(queue = %queue, channel, "declared channel queue");
    Ok(queue)
}

/// Declares the dead-letter exchange (fanout) and queue, where messages a handler
/// failed on too often are parked for inspection. Accepts them as they are when they
/// exist already.
///
/// # Errors
/// When the broker refuses or the connection fails.
pub async fn declare_dead_letter(connection: &Connection, names: &Names) -> Result<()> {
    let exchange = names.dead_letter_exchange();
    let queue = names.dead_letter_queue();
    declare_exchange(connection, &exchange, ExchangeKind::Fanout).await?;
    declare_queue(connection, &queue, FieldTable::default()).await?;
    let ch = connection.create_channel().await?;
    ch.queue_bind(
        ShortString::from(queue.as_str()),
        ShortString::from(exchange.as_str()),
        ShortString::from("#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    close(ch).await;
    Ok(())
}

async fn declare_exchange(connection: &Connection, name: &str, kind: ExchangeKind) -> Result<()> {
    let ch = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare(name.into(), kind.clone(), options, FieldTable::default())
        .await
    {
        Ok(()) => {
            close(ch).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            warn!(exchange = name, error = %e, "exchange exists with other settings; using it as it is");
            let ch = connection.create_channel().await?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..options
            };
            ch.exchange_declare(name.into(), kind, passive, FieldTable::default())
                .await?;
            close(ch).await;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn declare_queue(connection: &Connection, name: &str, arguments: FieldTable) -> Result<()> {
    let ch = connection.create_channel().await?;
    match ch
        .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments)
        .await
    {
        Ok(_) => {
            close(ch).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            warn!(queue = name, error = %e, "queue exists with other arguments; using it as it is");
            let ch = connection.create_channel().await?;
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions::durable().passive(),
                FieldTable::default(),
            )
            .await?;
            close(ch).await;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn close(channel: Channel) {
    let _ = channel.close(200, ShortString::from("declared")).await;
}
