//! The AMQP topology Warren needs, as data: built from the configuration, printed by
//! `warren-gateway topology print`, and declared idempotently at every start (and by
//! `topology apply`). Per-session queues are declared by `session.rs` instead.

use std::fmt;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use warren_protocol::amqp::{keys, Names};

use crate::config::Config;
use crate::error::GatewayError;

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
        /// String-valued `x-` arguments (e.g. `x-queue-type`).
        args: Vec<(String, String)>,
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
                name: names.presence_exchange(),
                kind: ExchangeType::Topic,
            },
            Declaration::Exchange {
                name: names.dead_letter_exchange(),
                kind: ExchangeType::Fanout,
            },
            Declaration::Queue {
                name: names.dead_letter_queue(),
                args: vec![],
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
                args: vec![(
                    "x-queue-type".to_string(),
                    config.queue_type.as_str().to_string(),
                )],
            });
            d.push(Declaration::Binding {
                queue: names.channel_queue(ch),
                exchange: names.inbound_exchange(),
                key: keys::inbound_binding(ch),
            });
        }
        Topology { declarations: d }
    }

    /// Declares everything on `channel`. Idempotent: declaring what exists with the
    /// same arguments changes nothing.
    ///
    /// # Errors
    /// [`GatewayError::Amqp`] naming the declaration the broker refused (e.g. a queue
    /// that exists with other arguments: 406 PRECONDITION_FAILED).
    pub async fn apply(&self, channel: &Channel) -> Result<(), GatewayError> {
        for decl in &self.declarations {
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
                    let mut table = FieldTable::default();
                    for (k, v) in args {
                        table.insert(
                            ShortString::from(k.as_str()),
                            AMQPValue::LongString(LongString::from(v.as_str())),
                        );
                    }
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
                        write!(f, " {k}={v}")?;
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
        writeln!(
            f,
            "# per session: queue <ns.>warren.session.<id> durable x-expires x-max-length \
             x-overflow=drop-head, bound to warren.out by its subscriptions"
        )?;
        writeln!(
            f,
            "# to dead-letter expired requests, add a policy: dead-letter-exchange = {}",
            self.declarations
                .iter()
                .find_map(|d| match d {
                    Declaration::Exchange { name, .. } if name.ends_with("warren.dead") =>
                        Some(name.as_str()),
                    _ => None,
                })
                .unwrap_or("warren.dead")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_has_quorum_inbound_queues_bound_by_channel() {
        let t = Topology::from_config(&Config::default());
        assert!(t.declarations.contains(&Declaration::Queue {
            name: "IN_CHAT".into(),
            args: vec![("x-queue-type".into(), "quorum".into())],
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
            "warren.presence",
        ] {
            assert!(printed.contains(name), "{name} missing from\n{printed}");
        }
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
