//! The AMQP topology Warren needs, as data: built from the configuration, printed by
//! `warren-gateway topology print`, and declared idempotently at every start (and by
//! `topology apply`). Per-session queues are declared by `session.rs` instead.

use std::fmt;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use warren_protocol::amqp::{
    dead_letter_queue_args, inbound_queue_args, keys, Names, QueueArg, QueueBounds,
};

use crate::broker::Broker;
use crate::config::{Config, OutboundMode};
use crate::error::{is_precondition_failed, GatewayError};

/// One thing to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declaration {
    /// A durable exchange.
    Exchange {
        /// Its name.
        name: String,
        /// `topic` or `fanout`.
        kind: ExchangeType,
    },
    /// A durable queue.
    Queue {
        /// Its name.
        name: String,
        /// `x-` arguments (e.g. `x-queue-type`, `x-dead-letter-exchange`).
        args: Vec<(String, QueueArg)>,
    },
    /// A queue bound to an exchange.
    Binding {
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// The binding key.
        key: String,
    },
}

/// The exchange types Warren uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes by routing-key pattern.
    Topic,
    /// Routes to every bound queue.
    Fanout,
}

impl ExchangeType {
    fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
        }
    }

    fn kind(self) -> ExchangeKind {
        match self {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Fanout => ExchangeKind::Fanout,
        }
    }
}

/// Everything declared at start-up, in order (exchanges before queues before bindings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The declarations.
    pub declarations: Vec<Declaration>,
    /// Where outbound messages travel (what sessions declare, if anything).
    pub outbound: OutboundMode,
}

impl Topology {
    /// The topology of a configuration.
    pub fn from_config(config: &Config) -> Topology {
        let names = Names::new(&config.namespace);
        let mut d = vec![
            Declaration::Exchange {
                name: names.inbound_exchange(),
                kind: ExchangeType::Topic,
            },
            Declaration::Exchange {
                name: names.outbound_exchange(),
                kind: ExchangeType::Topic,
            },
            Declaration::Exchange {
                name: names.gateways_exchange(),
                kind: ExchangeType::Fanout,
            },
            Declaration::Exchange {
                name: names.services_exchange(),
                kind: ExchangeType::Fanout,
            },
            Declaration::Exchange {
                name: names.presence_exchange(),
                kind: ExchangeType::Topic,
            },
            Declaration::Exchange {
                name: names.dead_letter_exchange(),
                kind: ExchangeType::Fanout,
            },
            Declaration::Queue {
                name: names.dead_letter_queue(),
                args: dead_letter_queue_args(config.queue_type.as_str())
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            },
            Declaration::Binding {
                queue: names.dead_letter_queue(),
                exchange: names.dead_letter_exchange(),
                key: String::new(),
            },
        ];
        for ch in &config.channels {
            d.push(Declaration::Queue {
                name: names.channel_queue(ch),
                args: inbound_queue_args(
                    &names,
                    config.queue_type.as_str(),
                    config.message_ttl_of(ch),
                    QueueBounds {
                        max_length: config.inbound_max_length,
                        max_bytes: config.inbound_max_bytes,
                    },
                )
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            });
            d.push(Declaration::Binding {
                queue: names.channel_queue(ch),
                exchange: names.inbound_exchange(),
                key: keys::inbound_binding(ch),
            });
        }
        if config.outbound == OutboundMode::Stream {
            let stream = names.outbound_stream();
            d.push(Declaration::Queue {
                name: stream.clone(),
                args: vec![
                    ("x-queue-type".into(), QueueArg::Text("stream".into())),
                    (
                        "x-max-age".into(),
                        QueueArg::Text(config.stream_max_age.clone()),
                    ),
                    (
                        "x-max-length-bytes".into(),
                        QueueArg::Int(i64::try_from(config.stream_max_bytes).unwrap_or(i64::MAX)),
                    ),
                    // Retention drops whole segments: keep them a fraction of the size.
                    (
                        "x-stream-max-segment-size-bytes".into(),
                        QueueArg::Int(
                            i64::try_from((config.stream_max_bytes / 8).clamp(1 << 20, 500 << 20))
                                .unwrap_or(500 << 20),
                        ),
                    ),
                ],
            });
            d.push(Declaration::Binding {
                queue: stream,
                exchange: names.outbound_exchange(),
                key: "#".into(),
            });
        }
        Topology {
            declarations: d,
            outbound: config.outbound,
        }
    }

    /// Declares everything on the broker's control channel. Idempotent: declaring what
    /// exists with the same arguments changes nothing. A queue that already exists with
    /// other arguments (406 PRECONDITION_FAILED, e.g. an `IN_*` queue declared before
    /// TTLs were configured) is kept as it is, with a warning, and the rest goes on.
    ///
    /// # Errors
    /// [`GatewayError::Amqp`] naming the declaration the broker refused.
    pub async fn apply(&self, broker: &Broker) -> Result<(), GatewayError> {
        for decl in &self.declarations {
            let channel = broker.control().await?;
            match self.declare(&channel, decl).await {
                Err(GatewayError::Amqp { op, source }) if is_precondition_failed(&source) => {
                    tracing::warn!(%op, error = %source, "kept an existing queue with other arguments");
                }
                other => other?,
            }
        }
        Ok(())
    }

    async fn declare(&self, channel: &Channel, decl: &Declaration) -> Result<(), GatewayError> {
        {
            match decl {
                Declaration::Exchange { name, kind } => channel
                    .exchange_declare(
                        ShortString::from(name.as_str()),
                        kind.kind(),
                        ExchangeDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| GatewayError::amqp(format!("exchange.declare {name}"), e))?,
                Declaration::Queue { name, args } => {
                    let table = field_table(args);
                    channel
                        .queue_declare(
                            ShortString::from(name.as_str()),
                            QueueDeclareOptions {
                                durable: true,
                                ..Default::default()
                            },
                            table,
                        )
                        .await
                        .map_err(|e| GatewayError::amqp(format!("queue.declare {name}"), e))?;
                }
                Declaration::Binding {
                    queue,
                    exchange,
                    key,
                } => channel
                    .queue_bind(
                        ShortString::from(queue.as_str()),
                        ShortString::from(exchange.as_str()),
                        ShortString::from(key.as_str()),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        GatewayError::amqp(format!("queue.bind {queue} {exchange} {key}"), e)
                    })?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Topology {
    /// A human-readable listing of what would be declared.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for decl in &self.declarations {
            match decl {
                Declaration::Exchange { name, kind } => {
                    writeln!(f, "exchange  {name:<32} {} durable", kind.as_str())?
                }
                Declaration::Queue { name, args } => {
                    write!(f, "queue     {name:<32} durable")?;
                    for (k, v) in args {
                        match v {
                            QueueArg::Text(t) => write!(f, " {k}={t}")?,
                            QueueArg::Int(i) => write!(f, " {k}={i}")?,
                        }
                    }
                    writeln!(f)?
                }
                Declaration::Binding {
                    queue,
                    exchange,
                    key,
                } => writeln!(f, "binding   {queue:<32} <- {exchange} key `{key}`")?,
            }
        }
        if self.outbound == OutboundMode::Stream {
            return writeln!(
                f,
                "# per session: nothing (outbound = \"stream\": every gateway reads \
                 the outbound stream and fans out in memory; replies reach the stream \
                 through the default exchange)"
            );
        }
        writeln!(
            f,
            "# per session: queue <ns.>warren.session.<id> durable x-expires x-max-length \
             x-overflow=drop-head x-dead-letter-exchange=\"\" \
             x-dead-letter-routing-key=<its name>.dropped, bound to warren.out by its \
             subscriptions; queue <ns.>warren.session.<id>.dropped (lazy) records what \
             the overflow policy dropped"
        )
    }
}

/// Queue arguments as an AMQP field table (text as long strings, numbers as
/// long-long integers).
pub(crate) fn field_table<K: AsRef<str>>(args: &[(K, QueueArg)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            QueueArg::Text(t) => AMQPValue::LongString(LongString::from(t.as_str())),
            QueueArg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        table.insert(ShortString::from(k.as_ref()), value);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_has_quorum_inbound_queues_bound_by_channel() {
        let t = Topology::from_config(&Config::default());
        assert!(t.declarations.contains(&Declaration::Queue {
            name: "IN_CHAT".into(),
            args: vec![
                ("x-queue-type".into(), QueueArg::Text("quorum".into())),
                (
                    "x-dead-letter-exchange".into(),
                    QueueArg::Text("warren.dead".into())
                ),
                ("x-max-length".into(), QueueArg::Int(100_000)),
                (
                    "x-max-length-bytes".into(),
                    QueueArg::Int(1024 * 1024 * 1024)
                ),
                ("x-overflow".into(), QueueArg::Text("reject-publish".into())),
            ],
        }));
        assert!(t.declarations.contains(&Declaration::Binding {
            queue: "IN_VOICE".into(),
            exchange: "warren.in".into(),
            key: "voice.#".into(),
        }));
        let printed = t.to_string();
        for name in [
            "warren.in",
            "warren.out",
            "warren.gateways",
            "warren.services",
            "warren.presence",
        ] {
            assert!(printed.contains(name), "{name} missing from\n{printed}");
        }
    }

    #[test]
    fn a_channel_with_a_ttl_gets_x_message_ttl_on_its_inbound_queue() {
        let mut config = Config::default();
        config.channel_options.insert(
            "echo".into(),
            crate::config::ChannelOptions {
                message_ttl_ms: Some(500),
            },
        );
        let t = Topology::from_config(&config);
        let args = t
            .declarations
            .iter()
            .find_map(|d| match d {
                Declaration::Queue { name, args } if name == "IN_ECHO" => Some(args.clone()),
                _ => None,
            })
            .unwrap();
        assert!(args.contains(&("x-message-ttl".into(), QueueArg::Int(500))));
        assert!(t.to_string().contains("x-message-ttl=500"));
    }

    #[test]
    fn namespace_prefixes_every_name() {
        let config = Config {
            namespace: "t-1".into(),
            ..Config::default()
        };
        let t = Topology::from_config(&config);
        for d in &t.declarations {
            let name = match d {
                Declaration::Exchange { name, .. } | Declaration::Queue { name, .. } => name,
                Declaration::Binding { queue, .. } => queue,
            };
            assert!(name.starts_with("t-1."), "{name}");
        }
    }
}
