//! Multi-tenant routing as plain data: the one definition of the tenant topology that
//! the gateway (`warren-gateway topology print|apply|check`, and at every start) and
//! the service library declare alike (README, "Multi-tenant deployments").
//!
//! ```text
//! client write ─▶ <ns>.warren.tenants (headers)
//!                   │ x-match=all-with-x, x-warren-tenant=acme
//!                   ▼
//!                 <ns>.warren.tenant.acme (headers)
//!                   ├─ x-warren-channel=scan, x-warren-type=""      ─▶ IN_SCAN.acme
//!                   ├─ x-warren-channel=scan, x-warren-type="delta" ─▶ IN_SCAN.acme.delta
//!                   └─ x-warren-channel=scan, x-warren-type="full"  ─▶ IN_SCAN.acme.full
//! ```
//!
//! The gateway sets [`H_TENANT`] from the client's verified identity (never from the
//! client) and [`H_TYPE`] from the configured type header (`""` when the message names
//! none). A tenant or a type with no bound queue routes nowhere: the gateway publishes
//! `mandatory`, so the client is answered `no_route`, never silently dropped.
//!
//! RabbitMQ ignores binding arguments starting with `x-` unless `x-match` is
//! `all-with-x` (RabbitMQ 3.10 and later), which every binding here uses: the routing
//! headers stay in the `x-` namespace that clients may not set.

use crate::amqp::{
    inbound_queue_args, validate_segment, NameError, Names, QueueArg, QueueBounds, H_CHANNEL,
    H_TENANT, H_TYPE,
};

/// The `x-match` of every tenant binding: all listed headers, `x-` ones included.
pub const X_MATCH: &str = "all-with-x";

/// One tenant and the message types that have a specialised queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name (a routing segment: letters, digits, `-`, `_`, `:`, `@`).
    pub name: String,
    /// Message types with a queue of their own (`IN_SCAN.acme.delta`); messages of any
    /// other named type are answered `no_route`.
    pub types: Vec<String>,
}

/// The tenant routing of one deployment: which channels are routed per tenant, and the
/// tenants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantRouting {
    /// The channels whose writes go through the tenants exchange.
    pub channels: Vec<String>,
    /// The tenants, in the order they are declared.
    pub tenants: Vec<Tenant>,
}

/// The exchange kinds of the tenant topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes by headers (`x-match`).
    Headers,
}

impl ExchangeKind {
    /// The AMQP name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Headers => "headers",
        }
    }
}

/// One AMQP object of the tenant topology, as plain data (the declarer turns it into
/// AMQP calls). Every object is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// An exchange.
    Exchange {
        /// Its name.
        name: String,
        /// Its kind.
        kind: ExchangeKind,
    },
    /// A queue and its arguments.
    Queue {
        /// Its name.
        name: String,
        /// Its `x-` arguments.
        args: Vec<(&'static str, QueueArg)>,
    },
    /// A queue bound to a headers exchange with `args` (routing key `""`).
    QueueBinding {
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// `x-match` and the headers to match.
        args: Vec<(&'static str, QueueArg)>,
    },
    /// An exchange bound to another (exchange-to-exchange) with `args`.
    ExchangeBinding {
        /// Where matching messages go.
        destination: String,
        /// Where they come from.
        source: String,
        /// `x-match` and the headers to match.
        args: Vec<(&'static str, QueueArg)>,
    },
}

/// How the queues of the tenant topology are declared: as the `IN_<CHANNEL>` queues
/// ([`inbound_queue_args`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// `x-queue-type` (`quorum` or `classic`).
    pub queue_type: String,
    /// `x-message-ttl` per channel, in ms.
    pub message_ttl_ms: Vec<(String, u64)>,
    /// `x-max-length` / `x-max-length-bytes`.
    pub bounds: QueueBounds,
}

impl QueueSettings {
    fn ttl_of(&self, channel: &str) -> Option<u64> {
        self.message_ttl_ms
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, ms)| *ms)
    }
}

fn text(s: &str) -> QueueArg {
    QueueArg::Text(s.to_string())
}

impl TenantRouting {
    /// Whether `channel`'s writes are routed per tenant.
    pub fn routes(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| c == channel)
    }

    /// The tenant named `name`, if configured.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// Checks every name once, at start-up.
    ///
    /// # Errors
    /// The first channel, tenant or type that is not a routing segment or is listed
    /// twice (as [`NameError::BadChar`] naming the duplicate).
    pub fn validate(&self) -> Result<(), NameError> {
        for (i, c) in self.channels.iter().enumerate() {
            validate_segment("tenant channel", c)?;
            if self.channels[..i].contains(c) {
                return Err(NameError::BadChar {
                    what: "tenant channel (listed twice)",
                    value: c.clone(),
                });
            }
        }
        for (i, t) in self.tenants.iter().enumerate() {
            validate_segment("tenant", &t.name)?;
            if self.tenants[..i].iter().any(|o| o.name == t.name) {
                return Err(NameError::BadChar {
                    what: "tenant (listed twice)",
                    value: t.name.clone(),
                });
            }
            for (j, ty) in t.types.iter().enumerate() {
                validate_segment("message type", ty)?;
                if t.types[..j].contains(ty) {
                    return Err(NameError::BadChar {
                        what: "message type (listed twice)",
                        value: ty.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The objects shared by every tenant: the root headers exchange.
    pub fn root_objects(&self, names: &Names) -> Vec<Object> {
        vec![Object::Exchange {
            name: names.tenants_exchange(),
            kind: ExchangeKind::Headers,
        }]
    }

    /// The objects of one tenant, in declaration order: its exchange, bound to the
    /// root exchange by [`H_TENANT`]; per routed channel its general queue (bound with
    /// [`H_TYPE`] `""`) and one queue per type (bound with [`H_TYPE`] = the type).
    pub fn tenant_objects(
        &self,
        names: &Names,
        tenant: &Tenant,
        settings: &QueueSettings,
    ) -> Vec<Object> {
        let exchange = names.tenant_exchange(&tenant.name);
        let mut out = vec![
            Object::Exchange {
                name: exchange.clone(),
                kind: ExchangeKind::Headers,
            },
            Object::ExchangeBinding {
                destination: exchange.clone(),
                source: names.tenants_exchange(),
                args: vec![("x-match", text(X_MATCH)), (H_TENANT, text(&tenant.name))],
            },
        ];
        for channel in &self.channels {
            let args = inbound_queue_args(
                names,
                &settings.queue_type,
                settings.ttl_of(channel),
                settings.bounds,
            );
            let kinds = std::iter::once(None).chain(tenant.types.iter().map(|t| Some(t.as_str())));
            for kind in kinds {
                let queue = names.tenant_queue(channel, &tenant.name, kind);
                out.push(Object::Queue {
                    name: queue.clone(),
                    args: args.clone(),
                });
                out.push(Object::QueueBinding {
                    queue,
                    exchange: exchange.clone(),
                    args: vec![
                        ("x-match", text(X_MATCH)),
                        (H_CHANNEL, text(channel)),
                        (H_TYPE, text(kind.unwrap_or(""))),
                    ],
                });
            }
        }
        out
    }

    /// Every object, root first, then tenant by tenant.
    pub fn objects(&self, names: &Names, settings: &QueueSettings) -> Vec<Object> {
        let mut out = self.root_objects(names);
        for t in &self.tenants {
            out.extend(self.tenant_objects(names, t, settings));
        }
        out
    }

    /// The queue a write of `tenant` on `channel` with type `kind` (`""` for none)
    /// lands in, if the topology has one: what the broker's bindings do, for tests
    /// and tools.
    pub fn queue_for(
        &self,
        names: &Names,
        tenant: &str,
        channel: &str,
        kind: &str,
    ) -> Option<String> {
        let t = self.tenant(tenant)?;
        if !self.routes(channel) {
            return None;
        }
        if kind.is_empty() {
            return Some(names.tenant_queue(channel, tenant, None));
        }
        t.types
            .iter()
            .any(|k| k == kind)
            .then(|| names.tenant_queue(channel, tenant, Some(kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> TenantRouting {
        TenantRouting {
            channels: vec!["scan".into()],
            tenants: vec![
                Tenant {
                    name: "acme".into(),
                    types: vec!["delta".into(), "full".into()],
                },
                Tenant {
                    name: "globex".into(),
                    types: vec![],
                },
            ],
        }
    }

    fn settings() -> QueueSettings {
        QueueSettings {
            queue_type: "quorum".into(),
            message_ttl_ms: vec![],
            bounds: QueueBounds::INBOUND,
        }
    }

    #[test]
    fn each_tenant_gets_an_exchange_bound_by_its_header_and_a_queue_per_type() {
        let names = Names::new("ns");
        let objects = routing().objects(&names, &settings());
        assert_eq!(
            objects[0],
            Object::Exchange {
                name: "ns.warren.tenants".into(),
                kind: ExchangeKind::Headers
            }
        );
        assert!(objects.contains(&Object::ExchangeBinding {
            destination: "ns.warren.tenant.acme".into(),
            source: "ns.warren.tenants".into(),
            args: vec![
                ("x-match", text("all-with-x")),
                ("x-warren-tenant", text("acme"))
            ],
        }));
        assert!(objects.contains(&Object::QueueBinding {
            queue: "ns.IN_SCAN.acme.delta".into(),
            exchange: "ns.warren.tenant.acme".into(),
            args: vec![
                ("x-match", text("all-with-x")),
                ("x-warren-channel", text("scan")),
                ("x-warren-type", text("delta")),
            ],
        }));
        let queues: Vec<&str> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Queue { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            queues,
            [
                "ns.IN_SCAN.acme",
                "ns.IN_SCAN.acme.delta",
                "ns.IN_SCAN.acme.full",
                "ns.IN_SCAN.globex"
            ]
        );
    }

    #[test]
    fn a_write_routes_to_its_tenants_queue_of_its_type_or_nowhere() {
        let names = Names::default();
        let r = routing();
        assert_eq!(
            r.queue_for(&names, "acme", "scan", "").as_deref(),
            Some("IN_SCAN.acme")
        );
        assert_eq!(
            r.queue_for(&names, "acme", "scan", "full").as_deref(),
            Some("IN_SCAN.acme.full")
        );
        assert_eq!(r.queue_for(&names, "globex", "scan", "full"), None);
        assert_eq!(r.queue_for(&names, "initech", "scan", ""), None);
        assert_eq!(r.queue_for(&names, "acme", "chat", ""), None);
    }

    #[test]
    fn bad_or_duplicate_names_are_refused() {
        assert!(routing().validate().is_ok());
        let mut r = routing();
        r.tenants[1].name = "acme".into();
        assert!(r.validate().is_err());
        let mut r = routing();
        r.tenants[0].types.push("a.b".into());
        assert!(r.validate().is_err());
        let mut r = routing();
        r.channels.push("scan".into());
        assert!(r.validate().is_err());
    }
}
