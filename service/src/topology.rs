//! The AMQP objects a service relies on, declared idempotently at start so a service
//! can start before or after the gateways: the `warren.in` and `warren.out` topic
//! exchanges and the `IN_<CHANNEL>` quorum queue of each consumed channel, bound to
//! `warren.in` with `<channel>.#`. Declarations match the gateway's; when an object
//! already exists with other arguments (a deployment that tuned them, or a gateway that
//! declared a TTL this service was not told about), the service accepts it as it is
//! instead of failing.
//!
//! The arguments of an `IN_<CHANNEL>` queue ([`channel_queue_arguments`]) come from
//! `warren_protocol::amqp::inbound_queue_args`, shared with the gateway:
//! `x-queue-type` (`quorum` by default), `x-dead-letter-exchange` = the namespace's
//! `warren.dead` (expired messages are parked in the `warren.dead` queue; not for the
//! queue of [`Service::authenticate`](crate::Service::authenticate), whose requests
//! carry clients' tokens) and, for a
//! channel with a message TTL, `x-message-ttl` (integer milliseconds). Given the same
//! TTLs, the service and the gateways declare identical queues.
//!
//! In a multi-tenant deployment [`declare_tenant_topology`] declares the tenant
//! topology of `warren_protocol::tenants` — the same objects, from the same
//! definition, as the gateway's `[tenants]` section.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::{debug, warn};
use warren_protocol::amqp::{
    dead_letter_queue_args, inbound_queue_args, keys, validate_segment, Names, QueueArg,
};

use warren_protocol::tenants::{Object, QueueSettings, TenantRouting};

use crate::config::ServiceConfig;
use crate::error::{is_not_found, is_precondition_failed, Result};
use crate::short_string::exact;

/// Declares the inbound and outbound topic exchanges and the service registry's
/// fanout exchange.
///
/// # Errors
/// When the broker refuses or the connection fails.
pub async fn declare_exchanges(connection: &Connection, names: &Names) -> Result<()> {
    for exchange in [names.inbound_exchange(), names.outbound_exchange()] {
        declare_exchange(connection, &exchange, ExchangeKind::Topic).await?;
    }
    declare_exchange(connection, &names.services_exchange(), ExchangeKind::Fanout).await
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
    let config = ServiceConfig::default().with_queue_type(queue_type);
    declare_channel_queue_with(connection, names, channel, &config).await
}

/// The arguments the service declares `channel`'s `IN_<CHANNEL>` queue with: exactly
/// [`warren_protocol::amqp::inbound_queue_args`] — the list the gateway declares too —
/// for the configured queue type and the channel's TTL: `x-queue-type`,
/// `x-dead-letter-exchange` = `names`' `warren.dead`, and `x-message-ttl`
/// (milliseconds, a 64-bit integer) when the channel has a TTL.
pub fn channel_queue_arguments(names: &Names, channel: &str, config: &ServiceConfig) -> FieldTable {
    field_table(channel_queue_argument_list(names, channel, config))
}

fn channel_queue_argument_list(
    names: &Names,
    channel: &str,
    config: &ServiceConfig,
) -> Vec<(&'static str, QueueArg)> {
    inbound_queue_args(
        names,
        &config.queue_type,
        message_ttl_ms(config, channel),
        config.inbound_bounds,
    )
}

/// `channel`'s message TTL in whole milliseconds, `None` for none. A TTL of 0 ms (or
/// under 1 ms) is no TTL, as the gateway's `message_ttl_ms = 0`: `x-message-ttl = 0`
/// would dead-letter every message not handed to a consumer at once. The `IN_<CHANNEL>`
/// queues and the tenant queues both take it from here.
fn message_ttl_ms(config: &ServiceConfig, channel: &str) -> Option<u64> {
    config
        .message_ttls
        .get(channel)
        .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        .filter(|ms| *ms > 0)
}

/// Turns the protocol crate's plain-data queue arguments into an AMQP field table.
fn field_table(args: Vec<(&'static str, QueueArg)>) -> FieldTable {
    let mut arguments = FieldTable::default();
    for (key, value) in args {
        let value = match value {
            QueueArg::Text(text) => AMQPValue::LongString(LongString::from(text)),
            QueueArg::Int(int) => AMQPValue::LongLongInt(int),
        };
        arguments.insert(ShortString::from(key), value);
    }
    arguments
}

/// Declares `channel`'s `IN_<CHANNEL>` queue with [`channel_queue_arguments`] (and the
/// dead-letter exchange and queue first, best effort), binds it to
/// `warren.in` with `<channel>.#`. A queue that exists with other arguments is used
/// as it is. Returns the queue name.
///
/// # Errors
/// [`ServiceError::InvalidTarget`](crate::ServiceError::InvalidTarget) for a channel
/// name that would change routing; AMQP errors when the broker refuses.
pub async fn declare_channel_queue_with(
    connection: &Connection,
    names: &Names,
    channel: &str,
    config: &ServiceConfig,
) -> Result<String> {
    declare_channel_queue_as(connection, names, channel, config, DeadLetters::Parked).await
}

/// What becomes of a message that expires in a channel's queue (or that its handler
/// fails on `max_attempts` times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetters {
    /// Parked in `warren.dead` for inspection.
    Parked,
    /// Dropped: the auth channel's requests carry the clients' tokens, which must not
    /// wait in a queue anyone with access may read.
    Dropped,
}

/// [`declare_channel_queue_with`], the queue without `x-dead-letter-exchange` for
/// [`DeadLetters::Dropped`].
pub(crate) async fn declare_channel_queue_as(
    connection: &Connection,
    names: &Names,
    channel: &str,
    config: &ServiceConfig,
    dead_letters: DeadLetters,
) -> Result<String> {
    validate_segment("channel", channel)?;
    let queue = names.channel_queue(channel);
    let mut arguments = channel_queue_argument_list(names, channel, config);
    if dead_letters == DeadLetters::Parked {
        // Expired (and rejected) messages go there: make sure it exists first. Not
        // fatal: a classic `warren.dead` whose node is down answers 404 to any
        // declaration, and that must not keep the service from consuming on the
        // surviving nodes.
        if let Err(e) = declare_dead_letter_with(connection, names, &config.queue_type).await {
            warn!(queue = %names.dead_letter_queue(), error = %e, "cannot declare the dead-letter queue; consuming anyway");
        }
    } else {
        arguments.retain(|(key, _)| *key != "x-dead-letter-exchange");
    }
    declare_queue(connection, &queue, field_table(arguments)).await?;
    let ch = connection.create_channel().await?;
    ch.queue_bind(
        exact("queue name", &queue)?,
        exact("exchange name", &names.inbound_exchange())?,
        exact("binding key", &keys::inbound_binding(channel))?,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    close(ch).await;
    debug!(queue = %queue, channel, "declared channel queue");
    Ok(queue)
}

/// Declares the dead-letter exchange (fanout) and queue, where messages a handler
/// failed on too often, and expired messages, are parked for inspection. The queue is
/// a quorum queue, so what is parked survives the loss of a node (a classic queue
/// would also stop every re-declaration with 404 while its node is down). Accepts
/// them as they are when they exist already (e.g. declared classic by a gateway).
///
/// # Errors
/// When the broker refuses or the connection fails.
pub async fn declare_dead_letter(connection: &Connection, names: &Names) -> Result<()> {
    declare_dead_letter_with(connection, names, "quorum").await
}

/// [`declare_dead_letter`] with the queue's `x-queue-type` (the service uses its
/// configured inbound queue type).
///
/// # Errors
/// When the broker refuses or the connection fails.
pub async fn declare_dead_letter_with(
    connection: &Connection,
    names: &Names,
    queue_type: &str,
) -> Result<()> {
    let exchange = names.dead_letter_exchange();
    let queue = names.dead_letter_queue();
    declare_exchange(connection, &exchange, ExchangeKind::Fanout).await?;
    declare_queue(
        connection,
        &queue,
        field_table(dead_letter_queue_args(queue_type)),
    )
    .await?;
    let ch = connection.create_channel().await?;
    ch.queue_bind(
        exact("queue name", &queue)?,
        exact("exchange name", &exchange)?,
        // Fanout: the key is ignored; "" as the gateway binds it, so there is one binding.
        ShortString::from(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    close(ch).await;
    Ok(())
}

/// The arguments of a work queue consumed by priority
/// ([`Service::consume_queues`](crate::Service::consume_queues)): `x-queue-type` =
/// the configured queue type (`quorum` by default) and `x-dead-letter-exchange` =
/// `names`' `warren.dead`, so a message the broker drops (delivery limit, TTL set by
/// policy) is parked, not lost.
pub fn work_queue_arguments(names: &Names, config: &ServiceConfig) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(config.queue_type.as_str())),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(names.dead_letter_exchange())),
    );
    arguments
}

/// Declares the work queue `queue` (a plain name, not namespaced, not bound to any
/// exchange: producers publish to it through the default exchange) with
/// [`work_queue_arguments`], and the dead-letter exchange and queue first (best
/// effort). A queue that exists is used as it is.
///
/// # Errors
/// AMQP errors when the broker refuses or the connection fails.
pub async fn declare_work_queue(
    connection: &Connection,
    names: &Names,
    queue: &str,
    config: &ServiceConfig,
) -> Result<()> {
    if let Err(e) = declare_dead_letter_with(connection, names, &config.queue_type).await {
        warn!(queue = %names.dead_letter_queue(), error = %e, "cannot declare the dead-letter queue; consuming anyway");
    }
    declare_queue(connection, queue, work_queue_arguments(names, config)).await?;
    debug!(queue, "declared work queue");
    Ok(())
}

/// The ready messages (not delivered to any consumer) of each of `queues`, in
/// order, by passive declares on one channel.
///
/// # Errors
/// AMQP errors, among them 404 NOT_FOUND for a queue that does not exist.
pub async fn ready_counts(connection: &Connection, queues: &[String]) -> Result<Vec<u32>> {
    let ch = connection.create_channel().await?;
    let mut counts = Vec::with_capacity(queues.len());
    for queue in queues {
        let declared = ch
            .queue_declare(
                exact("queue name", queue)?,
                QueueDeclareOptions::durable().passive(),
                FieldTable::default(),
            )
            .await?;
        counts.push(declared.message_count());
    }
    close(ch).await;
    Ok(counts)
}

/// Whether `channel`'s `IN_<CHANNEL>` queue exists (a passive declare): used when a
/// consumer restarts on a connection that stayed up, so that a queue deleted on
/// purpose is not re-created.
///
/// # Errors
/// AMQP errors other than 404 NOT_FOUND.
pub async fn channel_queue_exists(
    connection: &Connection,
    names: &Names,
    channel: &str,
) -> Result<bool> {
    queue_exists(connection, &names.channel_queue(channel)).await
}

/// A passive declare of `queue`: `true` when it exists, `false` on 404 NOT_FOUND.
async fn queue_exists(connection: &Connection, queue: &str) -> Result<bool> {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let ch = connection.create_channel().await?;
    match ch
        .queue_declare(
            exact("queue name", queue)?,
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await
    {
        Ok(_) => {
            close(ch).await;
            Ok(true)
        }
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(p)
                if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
                    && !p.get_message().as_str().contains("down or inaccessible") =>
            {
                Ok(false)
            }
            _ => Err(e.into()),
        },
    }
}

async fn declare_exchange(connection: &Connection, name: &str, kind: ExchangeKind) -> Result<()> {
    let ch = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare(
            exact("exchange name", name)?,
            kind.clone(),
            options,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            close(ch).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            let ch = connection.create_channel().await?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..options
            };
            match ch
                .exchange_declare(
                    exact("exchange name", name)?,
                    kind,
                    passive,
                    FieldTable::default(),
                )
                .await
            {
                Ok(()) => {
                    warn!(exchange = name, error = %e, "exchange exists with other settings; using it as it is");
                    close(ch).await;
                    Ok(())
                }
                // Not there: the broker refused to create it; its reason says why.
                Err(missing) if is_not_found(&missing) => Err(e.into()),
                Err(other) => Err(other.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Declares a durable queue with `arguments` unless it exists: a passive declare
/// first, so a queue the gateway declared (perhaps with arguments this service was
/// not told about) is used as it is without a 406 closing a channel.
async fn declare_queue(connection: &Connection, name: &str, arguments: FieldTable) -> Result<()> {
    if queue_exists(connection, name).await? {
        debug!(queue = name, "queue exists; used as it is");
        return Ok(());
    }
    let ch = connection.create_channel().await?;
    match ch
        .queue_declare(
            exact("queue name", name)?,
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
    {
        Ok(_) => {
            close(ch).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            let ch = connection.create_channel().await?;
            match ch
                .queue_declare(
                    exact("queue name", name)?,
                    QueueDeclareOptions::durable().passive(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(_) => {
                    warn!(queue = name, error = %e, "queue exists with other arguments; using it as it is");
                    close(ch).await;
                    Ok(())
                }
                // Not there: the broker refused to create it (an argument it does not
                // take, such as a TTL over ten years); its reason says why.
                Err(missing) if is_not_found(&missing) => Err(e.into()),
                Err(other) => Err(other.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Declares a queue of a priority list ([`Service::consume_queues`](crate::Service::consume_queues))
/// as what it is: a channel's `IN_<CHANNEL>` queue as [`declare_channel_queue_with`]
/// does (the gateway's bounds and TTL, bound to `warren.in`), a tenant's
/// `IN_<CHANNEL>.<tenant>[.<type>]` queue with the same arguments (its bindings come
/// from [`declare_tenant_topology`]), any other queue as [`declare_work_queue`]. A
/// worker that starts before the gateways so creates the queues the gateways would:
/// as a plain work queue, an `IN_<CHANNEL>` queue had no length bound and no TTL, and
/// the gateways then used it as it was.
///
/// # Errors
/// As [`declare_channel_queue_with`] and [`declare_work_queue`].
pub async fn declare_priority_queue(
    connection: &Connection,
    names: &Names,
    queue: &str,
    config: &ServiceConfig,
) -> Result<()> {
    let Some(channel) = names.channel_of_queue(queue) else {
        return declare_work_queue(connection, names, queue, config).await;
    };
    if queue == names.channel_queue(&channel) {
        declare_channel_queue_with(connection, names, &channel, config).await?;
        return Ok(());
    }
    if let Err(e) = declare_dead_letter_with(connection, names, &config.queue_type).await {
        warn!(queue = %names.dead_letter_queue(), error = %e, "cannot declare the dead-letter queue; consuming anyway");
    }
    declare_queue(
        connection,
        queue,
        channel_queue_arguments(names, &channel, config),
    )
    .await?;
    debug!(queue, channel, "declared tenant channel queue");
    Ok(())
}

/// Declares the tenant topology of `routing` ([`warren_protocol::tenants`]): the root
/// headers exchange `warren.tenants`, each tenant's headers exchange bound to it by
/// `x-warren-tenant`, and each tenant's general and per-type queues of the routed
/// channels, bound by `x-warren-channel` and `x-warren-type` — exactly what a gateway
/// with the same `[tenants]` section declares (queues as the `IN_<CHANNEL>` queues,
/// [`channel_queue_arguments`]' list). Objects that exist are used as they are (a
/// difference is logged with the broker's text). Returns the queue names, tenant by
/// tenant: what a priority worker ([`Service::consume_queues`](crate::Service::consume_queues))
/// may consume.
///
/// # Errors
/// [`ServiceError::InvalidTarget`](crate::ServiceError::InvalidTarget) for a name
/// that would change routing; AMQP errors when the broker refuses.
pub async fn declare_tenant_topology(
    connection: &Connection,
    names: &Names,
    routing: &TenantRouting,
    config: &ServiceConfig,
) -> Result<Vec<String>> {
    routing.validate()?;
    if let Err(e) = declare_dead_letter_with(connection, names, &config.queue_type).await {
        warn!(queue = %names.dead_letter_queue(), error = %e, "cannot declare the dead-letter queue; declaring the tenant topology anyway");
    }
    let settings = QueueSettings {
        queue_type: config.queue_type.clone(),
        message_ttl_ms: routing
            .channels
            .iter()
            .filter_map(|c| Some((c.clone(), message_ttl_ms(config, c)?)))
            .collect(),
        bounds: config.inbound_bounds,
    };
    let mut queues = Vec::new();
    for object in routing.objects(names, &settings) {
        match object {
            Object::Exchange { name, .. } => {
                declare_exchange(connection, &name, ExchangeKind::Headers).await?
            }
            Object::Queue { name, args } => {
                let arguments = field_table(args);
                declare_queue(connection, &name, arguments.clone()).await?;
                report_difference(connection, &name, arguments).await;
                queues.push(name);
            }
            Object::QueueBinding {
                queue,
                exchange,
                args,
            } => {
                let ch = connection.create_channel().await?;
                ch.queue_bind(
                    exact("queue name", &queue)?,
                    exact("exchange name", &exchange)?,
                    ShortString::from(""),
                    QueueBindOptions::default(),
                    field_table(args),
                )
                .await?;
                close(ch).await;
            }
            Object::ExchangeBinding {
                destination,
                source,
                args,
            } => {
                let ch = connection.create_channel().await?;
                ch.exchange_bind(
                    exact("exchange name", &destination)?,
                    exact("exchange name", &source)?,
                    ShortString::from(""),
                    ExchangeBindOptions::default(),
                    field_table(args),
                )
                .await?;
                close(ch).await;
            }
        }
    }
    debug!(
        tenants = routing.tenants.len(),
        queues = queues.len(),
        "declared the tenant topology"
    );
    Ok(queues)
}

/// Declares `queue` again with the expected `arguments` on a scratch channel and logs
/// the broker's exact difference when it has the queue with others (a 406 closes only
/// that channel). Start-up reporting for the tenant topology; the queue is used as it
/// is either way.
async fn report_difference(connection: &Connection, queue: &str, arguments: FieldTable) {
    let Ok(name) = exact("queue name", queue) else {
        return;
    };
    let Ok(ch) = connection.create_channel().await else {
        return;
    };
    match ch
        .queue_declare(name, QueueDeclareOptions::durable(), arguments)
        .await
    {
        Ok(_) => close(ch).await,
        Err(e) if is_precondition_failed(&e) => {
            let difference = match e.kind() {
                lapin::ErrorKind::ProtocolError(p) => p.get_message().to_string(),
                _ => e.to_string(),
            };
            warn!(queue, %difference, "the broker has this tenant queue with other arguments; using it as it is");
        }
        Err(e) => debug!(queue, error = %e, "could not compare the queue's arguments"),
    }
}

async fn close(channel: Channel) {
    let _ = channel.close(200, ShortString::from("declared")).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn inbound_queue_arguments_carry_the_type_the_dead_letter_exchange_and_the_ttl() {
        let names = Names::new("t-1");
        let config = ServiceConfig::default().with_message_ttl("chat", Duration::from_secs(30));
        let chat = channel_queue_arguments(&names, "chat", &config);
        let get = |table: &FieldTable, key: &str| table.inner().get(key).cloned();
        assert_eq!(
            get(&chat, "x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            get(&chat, "x-dead-letter-exchange"),
            Some(AMQPValue::LongString("t-1.warren.dead".into()))
        );
        assert_eq!(
            get(&chat, "x-message-ttl"),
            Some(AMQPValue::LongLongInt(30_000))
        );
        let voice = channel_queue_arguments(&names, "voice", &config);
        assert_eq!(get(&voice, "x-message-ttl"), None, "no TTL for voice");
        // A TTL of 0 is none, as the gateway's: the arguments are the gateway's.
        let zero = ServiceConfig::default().with_message_ttl("echo", Duration::ZERO);
        assert_eq!(
            channel_queue_arguments(&names, "echo", &zero),
            channel_queue_arguments(&names, "echo", &ServiceConfig::default())
        );
    }
}
