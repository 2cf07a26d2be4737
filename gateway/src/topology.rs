//! The AMQP topology Warren needs, as data: built from the configuration, printed by
//! `warren-gateway topology print`, and declared idempotently at every start (and by
//! `topology apply`), and compared with a live broker by `topology check`. Nothing is
//! declared per session: every gateway reads the outbound stream. In tenant mode the
//! tenant topology of `warren_protocol::tenants` is added, tenant by tenant.

use std::fmt;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use warren_protocol::amqp::{
    dead_letter_queue_args, inbound_queue_args, keys, Names, QueueArg, QueueBounds,
};
use warren_protocol::tenants::{self, Object, QueueSettings};

use crate::broker::Broker;
use crate::config::Config;
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
    /// A binding that must not exist: removed if it does (the outbound stream's `#`
    /// once some channel has a stream of its own).
    Unbinding {
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// The binding key.
        key: String,
    },
    /// Tenant mode: a queue bound to a headers exchange by `x-match` arguments.
    HeadersBinding {
        /// The queue.
        queue: String,
        /// The headers exchange.
        exchange: String,
        /// `x-match` and the headers to match.
        args: Vec<(String, QueueArg)>,
    },
    /// Tenant mode: an exchange bound to another by `x-match` arguments.
    ExchangeBinding {
        /// Where matching messages go.
        destination: String,
        /// The headers exchange they come from.
        source: String,
        /// `x-match` and the headers to match.
        args: Vec<(String, QueueArg)>,
    },
    /// Tenant mode: the declarations that follow belong to this tenant (a heading in
    /// `topology print`; nothing is declared).
    Tenant {
        /// The tenant.
        name: String,
    },
}

/// The exchange types Warren uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes by routing-key pattern.
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by message headers (tenant mode).
    Headers,
}

impl ExchangeType {
    fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }

    fn kind(self) -> ExchangeKind {
        match self {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Headers => ExchangeKind::Headers,
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
        // The outbound stream takes every channel's messages (`#`), unless some channel
        // has a stream of its own: a topic binding cannot leave a channel out, so the
        // outbound stream then binds each other channel, and its `#` is removed.
        let own = config.channel_streams();
        let stream = names.outbound_stream();
        d.push(stream_queue(
            stream.clone(),
            &config.stream_max_age,
            config.stream_max_bytes,
        ));
        for s in &own {
            d.push(stream_queue(
                names.channel_stream(&s.channel),
                &s.max_age,
                s.max_bytes,
            ));
        }
        if own.is_empty() {
            d.push(Declaration::Binding {
                queue: stream,
                exchange: names.outbound_exchange(),
                key: "#".into(),
            });
        } else {
            for ch in &config.channels {
                let queue = match own.iter().find(|s| &s.channel == ch) {
                    Some(_) => names.channel_stream(ch),
                    None => stream.clone(),
                };
                d.push(Declaration::Binding {
                    queue,
                    exchange: names.outbound_exchange(),
                    key: keys::inbound_binding(ch),
                });
            }
            d.push(Declaration::Unbinding {
                queue: stream,
                exchange: names.outbound_exchange(),
                key: "#".into(),
            });
        }
        if config.tenants.enabled {
            push_tenant_topology(&mut d, config, &names);
        }
        Topology { declarations: d }
    }

    /// Declares everything on the broker's control channel. Idempotent: declaring what
    /// exists with the same arguments changes nothing. A queue that already exists with
    /// other arguments (406 PRECONDITION_FAILED, e.g. an `IN_*` queue declared before
    /// TTLs were configured) is kept as it is, with a warning, and the rest goes on.
    /// One the broker refuses to create (a 406 for an object that does not exist: an
    /// argument it does not take) is an error with the broker's reason.
    ///
    /// Returns what was kept as it is: each such declaration and the broker's text
    /// on how it differs.
    ///
    /// # Errors
    /// [`GatewayError::Amqp`] naming the declaration the broker refused.
    pub async fn apply(&self, broker: &Broker) -> Result<Vec<String>, GatewayError> {
        let mut kept = Vec::new();
        for decl in &self.declarations {
            if matches!(decl, Declaration::Tenant { .. }) {
                continue;
            }
            let channel = broker.control().await?;
            match self.declare(&channel, decl).await {
                Err(GatewayError::Amqp { op, source }) if is_precondition_failed(&source) => {
                    if !self.exists(broker, decl).await? {
                        return Err(GatewayError::Amqp { op, source });
                    }
                    tracing::warn!(
                        %op,
                        difference = %broker_text(&source),
                        "the broker has this object with other arguments or another kind; \
                         kept it as it is (`warren-gateway topology check` lists every difference)"
                    );
                    kept.push(format!("{op}: {}", broker_text(&source)));
                }
                other => other?,
            }
        }
        Ok(kept)
    }

    /// Whether the exchange or queue of `decl` exists (a passive declare on a scratch
    /// channel); bindings count as existing.
    async fn exists(&self, broker: &Broker, decl: &Declaration) -> Result<bool, GatewayError> {
        let passive = match decl {
            Declaration::Exchange { name, kind } => Declaration::Exchange {
                name: name.clone(),
                kind: *kind,
            },
            Declaration::Queue { name, .. } => Declaration::Queue {
                name: name.clone(),
                args: Vec::new(),
            },
            _ => return Ok(true),
        };
        let channel = broker.scratch().await?;
        let found = self.declare_with(&channel, &passive, true).await;
        let _ = channel.close(200, "checked".into()).await;
        match found {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Compares the topology with what the broker has, without creating anything:
    /// each exchange and queue is declared passively (missing → reported) and, when
    /// it exists, declared again with the expected kind and arguments on a scratch
    /// channel (a 406 PRECONDITION_FAILED → reported with the broker's text, e.g.
    /// `inequivalent arg 'x-queue-type' for queue 'IN_CHAT' in vhost '/': received
    /// 'classic' but current is 'quorum'`). Bindings cannot be read over AMQP 0.9.1
    /// and are not checked (a write they would have routed is answered `no_route`).
    ///
    /// # Errors
    /// [`GatewayError`] when the broker cannot be reached or fails otherwise.
    pub async fn check(&self, broker: &Broker) -> Result<Vec<Mismatch>, GatewayError> {
        let mut out = Vec::new();
        for decl in &self.declarations {
            let object = match decl {
                Declaration::Exchange { name, .. } => format!("exchange {name}"),
                Declaration::Queue { name, .. } => format!("queue {name}"),
                _ => continue,
            };
            if !self.exists(broker, decl).await? {
                out.push(Mismatch {
                    object,
                    difference: "missing".into(),
                });
                continue;
            }
            let channel = broker.scratch().await?;
            let same = self.declare_with(&channel, decl, false).await;
            let _ = channel.close(200, "checked".into()).await;
            match same {
                Ok(()) => {}
                Err(GatewayError::Amqp { source, .. }) if is_precondition_failed(&source) => out
                    .push(Mismatch {
                        object,
                        difference: broker_text(&source),
                    }),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn declare(&self, channel: &Channel, decl: &Declaration) -> Result<(), GatewayError> {
        self.declare_with(channel, decl, false).await
    }

    /// Declares `decl` (`passive`: only asks whether the exchange or queue exists).
    async fn declare_with(
        &self,
        channel: &Channel,
        decl: &Declaration,
        passive: bool,
    ) -> Result<(), GatewayError> {
        {
            match decl {
                Declaration::Tenant { .. } => {}
                Declaration::Exchange { name, kind } => channel
                    .exchange_declare(
                        ShortString::from(name.as_str()),
                        kind.kind(),
                        ExchangeDeclareOptions {
                            durable: true,
                            passive,
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
                                passive,
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
                Declaration::Unbinding {
                    queue,
                    exchange,
                    key,
                } => channel
                    .queue_unbind(
                        ShortString::from(queue.as_str()),
                        ShortString::from(exchange.as_str()),
                        ShortString::from(key.as_str()),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        GatewayError::amqp(format!("queue.unbind {queue} {exchange} {key}"), e)
                    })?,
                Declaration::HeadersBinding {
                    queue,
                    exchange,
                    args,
                } => channel
                    .queue_bind(
                        ShortString::from(queue.as_str()),
                        ShortString::from(exchange.as_str()),
                        ShortString::from(""),
                        QueueBindOptions::default(),
                        field_table(args),
                    )
                    .await
                    .map_err(|e| GatewayError::amqp(format!("queue.bind {queue} {exchange}"), e))?,
                Declaration::ExchangeBinding {
                    destination,
                    source,
                    args,
                } => channel
                    .exchange_bind(
                        ShortString::from(destination.as_str()),
                        ShortString::from(source.as_str()),
                        ShortString::from(""),
                        ExchangeBindOptions::default(),
                        field_table(args),
                    )
                    .await
                    .map_err(|e| {
                        GatewayError::amqp(format!("exchange.bind {destination} {source}"), e)
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
                Declaration::Unbinding {
                    queue,
                    exchange,
                    key,
                } => writeln!(
                    f,
                    "unbind    {queue:<32} <- {exchange} key `{key}` (removed if present)"
                )?,
                Declaration::HeadersBinding {
                    queue,
                    exchange,
                    args,
                } => writeln!(f, "binding   {queue:<32} <- {exchange} {}", show_args(args))?,
                Declaration::ExchangeBinding {
                    destination,
                    source,
                    args,
                } => writeln!(
                    f,
                    "e-binding {destination:<32} <- {source} {}",
                    show_args(args)
                )?,
                Declaration::Tenant { name } => writeln!(f, "# tenant {name}")?,
            }
        }
        writeln!(
            f,
            "# per session: nothing (every gateway reads the outbound stream and fans \
             out in memory; replies reach the stream through the default exchange)"
        )
    }
}

/// A stream of messages to clients, retained by `max_age` and `max_bytes`.
fn stream_queue(name: String, max_age: &str, max_bytes: u64) -> Declaration {
    Declaration::Queue {
        name,
        args: vec![
            ("x-queue-type".into(), QueueArg::Text("stream".into())),
            ("x-max-age".into(), QueueArg::Text(max_age.to_string())),
            (
                "x-max-length-bytes".into(),
                QueueArg::Int(i64::try_from(max_bytes).unwrap_or(i64::MAX)),
            ),
            // Retention drops whole segments: keep them a fraction of the size.
            (
                "x-stream-max-segment-size-bytes".into(),
                QueueArg::Int(
                    i64::try_from((max_bytes / 8).clamp(1 << 20, 500 << 20)).unwrap_or(500 << 20),
                ),
            ),
        ],
    }
}

/// `k=v` pairs of binding arguments (an empty text as `""`).
fn show_args(args: &[(String, QueueArg)]) -> String {
    args.iter()
        .map(|(k, v)| match v {
            QueueArg::Text(t) if t.is_empty() => format!("{k}=\"\""),
            QueueArg::Text(t) => format!("{k}={t}"),
            QueueArg::Int(i) => format!("{k}={i}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One difference between the topology and the broker ([`Topology::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `exchange <name>` or `queue <name>`.
    pub object: String,
    /// `missing`, or the broker's PRECONDITION_FAILED text naming the difference.
    pub difference: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.difference)
    }
}

/// The broker's own text of a channel error (e.g. `PRECONDITION_FAILED - inequivalent
/// arg 'x-queue-type' for queue 'X' in vhost '/': received 'classic' but current is
/// 'quorum'`), or lapin's description of another error.
pub(crate) fn broker_text(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => e.to_string(),
    }
}

/// Appends the tenant topology ([`warren_protocol::tenants`]) of `config`: the root
/// headers exchange, then each tenant's exchange, binding, queues and bindings under
/// a [`Declaration::Tenant`] heading.
fn push_tenant_topology(d: &mut Vec<Declaration>, config: &Config, names: &Names) {
    let routing = config.tenants.routing();
    let settings = QueueSettings {
        queue_type: config.queue_type.as_str().to_string(),
        message_ttl_ms: routing
            .channels
            .iter()
            .filter_map(|c| config.message_ttl_of(c).map(|ms| (c.clone(), ms)))
            .collect(),
        bounds: QueueBounds {
            max_length: config.inbound_max_length,
            max_bytes: config.inbound_max_bytes,
        },
    };
    for o in routing.root_objects(names) {
        d.push(declaration_of(o));
    }
    for t in &routing.tenants {
        d.push(Declaration::Tenant {
            name: t.name.clone(),
        });
        for o in routing.tenant_objects(names, t, &settings) {
            d.push(declaration_of(o));
        }
    }
}

/// The gateway's declaration of one object of the protocol crate's tenant topology.
fn declaration_of(o: Object) -> Declaration {
    let owned = |args: Vec<(&'static str, QueueArg)>| -> Vec<(String, QueueArg)> {
        args.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    {
        match o {
            Object::Exchange { name, kind } => Declaration::Exchange {
                name,
                kind: match kind {
                    tenants::ExchangeKind::Headers => ExchangeType::Headers,
                },
            },
            Object::Queue { name, args } => Declaration::Queue {
                name,
                args: owned(args),
            },
            Object::QueueBinding {
                queue,
                exchange,
                args,
            } => Declaration::HeadersBinding {
                queue,
                exchange,
                args: owned(args),
            },
            Object::ExchangeBinding {
                destination,
                source,
                args,
            } => Declaration::ExchangeBinding {
                destination,
                source,
                args: owned(args),
            },
        }
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
                ..Default::default()
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
    fn a_channel_with_its_own_retention_gets_its_own_stream_and_the_outbound_stream_the_rest() {
        let plain = Topology::from_config(&Config::default());
        let outbound_all = Declaration::Binding {
            queue: "warren.out.stream".into(),
            exchange: "warren.out".into(),
            key: "#".into(),
        };
        assert!(plain.declarations.contains(&outbound_all));
        assert!(!plain.to_string().contains("unbind"));

        let mut config = Config::default();
        config.channel_options.insert(
            "voice".into(),
            crate::config::ChannelOptions {
                stream_max_age: Some("10m".into()),
                ..Default::default()
            },
        );
        let t = Topology::from_config(&config);
        let args = t
            .declarations
            .iter()
            .find_map(|d| match d {
                Declaration::Queue { name, args } if name == "warren.out.stream.voice" => {
                    Some(args.clone())
                }
                _ => None,
            })
            .expect("voice's stream is declared");
        assert!(args.contains(&("x-queue-type".into(), QueueArg::Text("stream".into()))));
        assert!(args.contains(&("x-max-age".into(), QueueArg::Text("10m".into()))));
        // Its size limit is the outbound stream's, as the channel does not set one.
        assert!(args.contains(&(
            "x-max-length-bytes".into(),
            QueueArg::Int(2 * 1024 * 1024 * 1024)
        )));
        let bindings: Vec<(String, String)> = t
            .declarations
            .iter()
            .filter_map(|d| match d {
                Declaration::Binding {
                    queue,
                    exchange,
                    key,
                } if exchange == "warren.out" => Some((queue.clone(), key.clone())),
                _ => None,
            })
            .collect();
        let expect = |q: &str, k: &str| (q.to_string(), k.to_string());
        assert_eq!(
            bindings,
            [
                expect("warren.out.stream", "chat.#"),
                expect("warren.out.stream.voice", "voice.#"),
                expect("warren.out.stream", "tickets.#"),
                expect("warren.out.stream", "echo.#"),
            ]
        );
        assert!(t.declarations.contains(&Declaration::Unbinding {
            queue: "warren.out.stream".into(),
            exchange: "warren.out".into(),
            key: "#".into(),
        }));
        assert!(t
            .to_string()
            .contains("unbind    warren.out.stream                <- warren.out key `#`"));
    }

    #[test]
    fn tenant_mode_adds_the_tenant_topology_per_tenant_and_nothing_without_it() {
        let plain = Topology::from_config(&Config::default());
        assert!(!plain.to_string().contains("tenant"));
        let mut config = Config::default();
        config.tenants.enabled = true;
        config.tenants.channels = vec!["chat".into()];
        config.tenants.tenant.insert(
            "acme".into(),
            crate::config::TenantOptions {
                types: vec!["pdf".into()],
            },
        );
        config
            .tenants
            .tenant
            .insert("globex".into(), Default::default());
        let t = Topology::from_config(&config);
        assert_eq!(
            t.declarations[..plain.declarations.len()],
            plain.declarations[..],
            "the untenanted topology is unchanged"
        );
        assert!(t.declarations.contains(&Declaration::Exchange {
            name: "warren.tenants".into(),
            kind: ExchangeType::Headers,
        }));
        assert!(t.declarations.contains(&Declaration::HeadersBinding {
            queue: "IN_CHAT.acme.pdf".into(),
            exchange: "warren.tenant.acme".into(),
            args: vec![
                ("x-match".into(), QueueArg::Text("all-with-x".into())),
                ("x-warren-channel".into(), QueueArg::Text("chat".into())),
                ("x-warren-type".into(), QueueArg::Text("pdf".into())),
            ],
        }));
        let printed = t.to_string();
        let acme = printed.find("# tenant acme").expect("acme heading");
        let globex = printed.find("# tenant globex").expect("globex heading");
        let pdf = printed.find("IN_CHAT.acme.pdf").unwrap();
        assert!(acme < pdf && pdf < globex, "{printed}");
        assert!(printed.contains("x-warren-type=\"\""), "{printed}");
        assert!(
            printed.contains("e-binding warren.tenant.globex"),
            "{printed}"
        );
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
                Declaration::Binding { queue, .. }
                | Declaration::Unbinding { queue, .. }
                | Declaration::HeadersBinding { queue, .. } => queue,
                Declaration::ExchangeBinding { destination, .. } => destination,
                Declaration::Tenant { name } => name,
            };
            assert!(name.starts_with("t-1."), "{name}");
        }
    }
}

/// A binding as the management API lists it: its routing key and arguments.
type FoundBinding = (String, serde_json::Map<String, serde_json::Value>);

/// Where `topology check` reads bindings: RabbitMQ's management HTTP API (AMQP 0-9-1
/// cannot list them), with the user, password and virtual host of the AMQP URI.
#[derive(Debug, Clone)]
pub struct Management {
    /// E.g. `http://127.0.0.1:15672`.
    pub base_url: String,
    /// The virtual host.
    pub vhost: String,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// One HTTP agent for every request of a check.
    agent: ureq::Agent,
}

impl Management {
    /// The management API at `base_url`, with the credentials and virtual host of
    /// `amqp_uri`.
    ///
    /// # Errors
    /// [`GatewayError::Config`] for an AMQP URI lapin cannot parse, or a base URL
    /// that is not `http://` or `https://`.
    pub fn new(base_url: &str, amqp_uri: &str) -> Result<Management, GatewayError> {
        let uri: lapin::uri::AMQPUri = amqp_uri
            .parse()
            .map_err(|e| GatewayError::Config(format!("amqp_uri: {e}")))?;
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(GatewayError::Config(format!(
                "--management-url `{base_url}` must start with http:// or https:// \
                 (e.g. http://127.0.0.1:15672)"
            )));
        }
        Ok(Management {
            base_url: base_url.trim_end_matches('/').to_string(),
            vhost: uri.vhost,
            user: uri.authority.userinfo.username,
            password: uri.authority.userinfo.password,
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(10)))
                .http_status_as_error(false)
                .build()
                .into(),
        })
    }

    /// The bindings from exchange `source` to `destination` (`q`: a queue, `e`: an
    /// exchange): each binding's routing key and arguments. Blocking.
    fn bindings(
        &self,
        source: &str,
        kind: &str,
        destination: &str,
    ) -> Result<Vec<FoundBinding>, GatewayError> {
        let path = format!(
            "bindings/{}/e/{}/{kind}/{}",
            percent_encode(&self.vhost),
            percent_encode(source),
            percent_encode(destination)
        );
        Ok(self
            .list(&path)?
            .iter()
            .map(|b| {
                let key = b["routing_key"].as_str().unwrap_or_default().to_string();
                let args = b["arguments"].as_object().cloned().unwrap_or_default();
                (key, args)
            })
            .collect())
    }

    /// The queues exchange `source` binds, each with the binding's routing key.
    /// Blocking.
    fn queues_bound_from(&self, source: &str) -> Result<Vec<(String, String)>, GatewayError> {
        let path = format!(
            "exchanges/{}/{}/bindings/source",
            percent_encode(&self.vhost),
            percent_encode(source)
        );
        Ok(self
            .list(&path)?
            .iter()
            .filter(|b| b["destination_type"].as_str() == Some("queue"))
            .map(|b| {
                let text = |k: &str| b[k].as_str().unwrap_or_default().to_string();
                (text("destination"), text("routing_key"))
            })
            .collect())
    }

    /// Checks that `base_url` is RabbitMQ's management API (`GET /api/overview`
    /// answers 200), so that a 404 later means an object that does not exist. Another
    /// web server there (a wrong port, a reverse proxy's prefix) answering 404 to
    /// everything made every binding "missing". Blocking.
    fn probe(&self) -> Result<(), GatewayError> {
        let url = format!("{}/api/overview", self.base_url);
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", self.user, self.password),
        );
        let answer = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Basic {basic}"))
            .call();
        match answer.map(|r| r.status().as_u16()) {
            Ok(200) => Ok(()),
            Ok(401) => Err(GatewayError::Management(format!(
                "{} (GET {url}): HTTP 401, the AMQP URI's user and password were refused",
                self.base_url
            ))),
            Ok(status) => Err(GatewayError::Management(format!(
                "{} (GET {url} answered HTTP {status}): this is not RabbitMQ's management \
                 API; give its base URL, e.g. http://127.0.0.1:15672 (without /api), with \
                 the rabbitmq_management plugin enabled",
                self.base_url
            ))),
            Err(e) => Err(GatewayError::Management(format!(
                "{} ({url}): {e}; is the rabbitmq_management plugin enabled?",
                self.base_url
            ))),
        }
    }

    /// The JSON list at `/api/<path>`; empty when the API answers 404 (the object
    /// does not exist: reported on its own). Blocking.
    fn list(&self, path: &str) -> Result<Vec<serde_json::Value>, GatewayError> {
        let url = format!("{}/api/{path}", self.base_url);
        let failed = |e: String| {
            GatewayError::Management(format!(
                "{} ({url}): {e}; is the rabbitmq_management plugin enabled, and may the \
                 AMQP URI's user read bindings?",
                self.base_url
            ))
        };
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", self.user, self.password),
        );
        let mut response = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Basic {basic}"))
            .call()
            .map_err(|e| failed(e.to_string()))?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(Vec::new()),
            status => return Err(failed(format!("HTTP {status}"))),
        }
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| failed(e.to_string()))?;
        let body: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
        Ok(match body {
            serde_json::Value::Array(list) => list,
            _ => Vec::new(),
        })
    }
}

impl Topology {
    /// Bindings from the outbound exchange to a channel's own stream that this
    /// topology does not declare: left by a `[channel_options.<channel>]` retention
    /// since taken out of the configuration (`apply` cannot see them over AMQP). Each
    /// such channel's messages are still written to that stream, which no gateway
    /// reads, until the stream is deleted.
    fn stale_stream_bindings(
        &self,
        management: &Management,
    ) -> Result<Vec<Mismatch>, GatewayError> {
        // The outbound stream's bindings name the exchange and the streams' prefix.
        let Some((exchange, prefix)) = self.declarations.iter().find_map(|d| match d {
            Declaration::Binding {
                queue,
                exchange,
                key,
            }
            | Declaration::Unbinding {
                queue,
                exchange,
                key,
            } if key == "#" => Some((exchange, format!("{queue}."))),
            _ => None,
        }) else {
            return Ok(Vec::new());
        };
        let declared = |queue: &str, key: &str| {
            self.declarations.iter().any(|d| {
                matches!(d, Declaration::Binding { queue: q, exchange: e, key: k }
                    if q == queue && e == exchange && k == key)
            })
        };
        Ok(management
            .queues_bound_from(exchange)?
            .into_iter()
            .filter(|(queue, key)| queue.starts_with(&prefix) && !declared(queue, key))
            .map(|(queue, key)| Mismatch {
                object: format!("binding {exchange} -> {queue} ({key})"),
                difference: "present; should be removed (no configured channel has this \
                             stream of its own: its messages are still written to it, and no \
                             gateway reads them; delete the stream once they are not needed)"
                    .into(),
            })
            .collect())
    }
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded (a path
/// segment of the management API: `/` as a vhost is `%2F`).
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Topology {
    /// The bindings of the topology that the broker does not have, read through the
    /// management API (`MISMATCH binding <source> -> <destination> (<key or
    /// arguments>): missing`), and those it has that must go (`present; should be
    /// removed`): the outbound stream's `#` when a channel has a stream of its own, and
    /// a binding to a channel's own stream that the configuration no longer declares.
    /// Blocking: call it off the async runtime.
    ///
    /// # Errors
    /// [`GatewayError::Config`] when the management API cannot be asked.
    pub fn check_bindings(&self, management: &Management) -> Result<Vec<Mismatch>, GatewayError> {
        management.probe()?;
        let mut out = self.stale_stream_bindings(management)?;
        for decl in &self.declarations {
            let (source, kind, destination, key, args) = match decl {
                Declaration::Binding {
                    queue,
                    exchange,
                    key,
                } => (exchange, "q", queue, Some(key), &Vec::new()),
                Declaration::HeadersBinding {
                    queue,
                    exchange,
                    args,
                } => (exchange, "q", queue, None, args),
                Declaration::ExchangeBinding {
                    destination,
                    source,
                    args,
                } => (source, "e", destination, None, args),
                Declaration::Unbinding {
                    queue,
                    exchange,
                    key,
                } => {
                    let found = management.bindings(exchange, "q", queue)?;
                    if found.iter().any(|(k, _)| k == key) {
                        out.push(Mismatch {
                            object: format!("binding {exchange} -> {queue} ({key})"),
                            difference: "present; should be removed (a channel has a \
                                         stream of its own, and its messages would be \
                                         kept twice)"
                                .into(),
                        });
                    }
                    continue;
                }
                _ => continue,
            };
            let found = management.bindings(source, kind, destination)?;
            let wanted = |(k, a): &FoundBinding| {
                key.is_none_or(|key| key == k)
                    && args.iter().all(|(name, value)| {
                        let have = a.get(name);
                        match value {
                            QueueArg::Text(t) => have.and_then(|v| v.as_str()) == Some(t.as_str()),
                            QueueArg::Int(i) => {
                                have.and_then(serde_json::Value::as_i64) == Some(*i)
                            }
                        }
                    })
            };
            if !found.iter().any(wanted) {
                let what = match key {
                    Some(k) => k.clone(),
                    None => show_args(args),
                };
                out.push(Mismatch {
                    object: format!("binding {source} -> {destination} ({what})"),
                    difference: "missing".into(),
                });
            }
        }
        Ok(out)
    }
}
