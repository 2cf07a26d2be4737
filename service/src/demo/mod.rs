//! The demo service: `chat` (relays a client's publish to the broadcast, groups or
//! users it names), `tickets` (create / list / get / close by request-response, kept
//! in memory), `voice` (relays signalling messages to direct targets) and `echo`
//! (answers a request with the same message), and optionally a priority worker over
//! an ordered list of work queues ([`conversion`]). Run by the `warren-demo-service`
//! binary, and in-process by tests with [`start`].

pub mod auth;
pub mod chat;
pub mod conversion;
pub mod echo;
pub mod tickets;
pub mod voice;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use warren_protocol::amqp::Names;

use crate::config::ServiceConfig;
use crate::error::Result;
use crate::handler::{BoxFuture, Context, Handler, HandlerError, Outcome};
use crate::incoming::Incoming;
use crate::service::{Service, ServiceState};

/// A channel the demo service can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DemoChannel {
    /// Relays to broadcast / groups / users.
    Chat,
    /// Ticket desk by request/response.
    Tickets,
    /// Relays signalling to direct targets.
    Voice,
    /// Echoes requests.
    Echo,
}

impl DemoChannel {
    /// Every demo channel.
    pub const ALL: [DemoChannel; 4] = [
        DemoChannel::Chat,
        DemoChannel::Tickets,
        DemoChannel::Voice,
        DemoChannel::Echo,
    ];

    /// The channel name: `chat`, `tickets`, `voice`, `echo`.
    pub fn name(self) -> &'static str {
        match self {
            DemoChannel::Chat => "chat",
            DemoChannel::Tickets => "tickets",
            DemoChannel::Voice => "voice",
            DemoChannel::Echo => "echo",
        }
    }
}

impl fmt::Display for DemoChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown demo channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown demo channel `{0}` (expected chat, tickets, voice or echo)")]
pub struct UnknownChannel(pub String);

impl FromStr for DemoChannel {
    type Err = UnknownChannel;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        DemoChannel::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownChannel(s.to_string()))
    }
}

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Channels to serve (default: all four).
    pub channels: Vec<DemoChannel>,
    /// Wait this long in every handler before handling (simulates a slow or stuck
    /// worker). Default zero.
    pub delay: Duration,
    /// Library settings (prefetch, retries, duplicate window).
    pub config: ServiceConfig,
    /// The ticket desk. Clones share the tickets, so a demo restarted with the same
    /// options (e.g. after reconnecting to RabbitMQ) keeps them.
    pub desk: tickets::Desk,
    /// Also answer the gateways' `client.auth` requests on this channel with the demo
    /// authenticator ([`auth::authenticate`]). Default: none.
    pub auth_channel: Option<String>,
    /// Also run a priority worker ([`conversion::convert`]) over these work queues,
    /// highest priority first (the source system's `QUEUE_PRIORITY`). Default: none.
    pub priority_queues: Vec<String>,
    /// Also consume these channels and never answer (requests on them time out,
    /// publishes are acknowledged and dropped): a stuck service, for timeout tests.
    /// Default: none.
    pub unanswered: Vec<String>,
    /// Declare this tenant topology at start ([`Service::declare_tenants`]), before the
    /// priority worker consumes (its queues are then the tenants' queues, with the
    /// gateways' arguments). Default: none.
    pub tenants: Option<warren_protocol::tenants::TenantRouting>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            channels: DemoChannel::ALL.to_vec(),
            delay: Duration::ZERO,
            config: ServiceConfig::default().with_app_id("warren-demo-service"),
            desk: tickets::Desk::default(),
            auth_channel: None,
            priority_queues: Vec::new(),
            unanswered: Vec::new(),
            tenants: None,
        }
    }
}

/// The handler of [`DemoOptions::unanswered`]: takes the message, answers nothing.
async fn unanswered(
    _ctx: Context,
    _message: Incoming,
) -> std::result::Result<Outcome, HandlerError> {
    Ok(Outcome::Done)
}

/// A running demo service.
#[derive(Debug)]
pub struct DemoHandle {
    service: Service,
    queues: Vec<String>,
}

impl DemoHandle {
    /// The underlying service.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The queues consumed, e.g. `["ns.IN_CHAT", ...]`.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Resolves when the service fails for good (connection lost with reconnection
    /// disabled, queue deleted) or is stopped, with its state.
    pub async fn closed(&self) -> ServiceState {
        self.service.closed().await
    }

    /// Stops consuming (in-flight handlers finish), closes the connection.
    ///
    /// # Errors
    /// When closing the connection fails.
    pub async fn stop(self) -> Result<()> {
        self.service.stop().await
    }
}

/// Starts the demo on all channels, consuming once this returns. `amqp_uri` is one
/// AMQP URI or several separated by commas (the service fails over between them).
///
/// # Errors
/// When connecting, declaring or consuming fails.
pub async fn start(amqp_uri: &str, names: Names) -> Result<DemoHandle> {
    start_with(amqp_uri, names, DemoOptions::default()).await
}

/// Starts the demo with options; `amqp_uri` as in [`start`].
///
/// # Errors
/// When connecting, declaring or consuming fails.
pub async fn start_with(amqp_uri: &str, names: Names, options: DemoOptions) -> Result<DemoHandle> {
    let service = Service::connect_with(amqp_uri, names, options.config.clone()).await?;
    let mut queues = Vec::new();
    let delay = options.delay;
    let mut channels: Vec<DemoChannel> = Vec::new();
    for c in &options.channels {
        if !channels.contains(c) {
            channels.push(*c);
        }
    }
    for channel in channels {
        let queue = match channel {
            DemoChannel::Chat => {
                service
                    .consume(channel.name(), Delayed::new(delay, chat::relay))
                    .await
            }
            DemoChannel::Voice => {
                service
                    .consume(channel.name(), Delayed::new(delay, voice::relay))
                    .await
            }
            DemoChannel::Echo => {
                service
                    .consume(channel.name(), Delayed::new(delay, echo::echo))
                    .await
            }
            DemoChannel::Tickets => {
                service
                    .consume(channel.name(), Delayed::new(delay, options.desk.clone()))
                    .await
            }
        };
        match queue {
            Ok(q) => queues.push(q),
            Err(e) => {
                let _ = service.stop().await;
                return Err(e);
            }
        }
    }
    for channel in &options.unanswered {
        match service.consume(channel, unanswered).await {
            Ok(q) => queues.push(q),
            Err(e) => {
                let _ = service.stop().await;
                return Err(e);
            }
        }
    }
    if let Some(channel) = &options.auth_channel {
        match service.authenticate(channel, auth::authenticate).await {
            Ok(q) => queues.push(q),
            Err(e) => {
                let _ = service.stop().await;
                return Err(e);
            }
        }
    }
    if let Some(routing) = &options.tenants {
        if let Err(e) = service.declare_tenants(routing).await {
            let _ = service.stop().await;
            return Err(e);
        }
    }
    if !options.priority_queues.is_empty() {
        let worker = Delayed::new(delay, conversion::convert);
        match service
            .consume_queues(&options.priority_queues, worker)
            .await
        {
            Ok(q) => queues.extend(q),
            Err(e) => {
                let _ = service.stop().await;
                return Err(e);
            }
        }
    }
    Ok(DemoHandle { service, queues })
}

/// Wraps a handler so each call first waits `delay`.
struct Delayed<H> {
    delay: Duration,
    inner: Arc<H>,
}

impl<H> Delayed<H> {
    fn new(delay: Duration, inner: H) -> Self {
        Delayed {
            delay,
            inner: Arc::new(inner),
        }
    }
}

impl<H: Handler> Handler for Delayed<H> {
    fn handle(
        &self,
        ctx: Context,
        message: Incoming,
    ) -> BoxFuture<'static, std::result::Result<Outcome, HandlerError>> {
        let delay = self.delay;
        let inner = self.inner.clone();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            inner.handle(ctx, message).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_channels_parse_from_their_names() {
        for c in DemoChannel::ALL {
            assert_eq!(c.name().parse::<DemoChannel>().unwrap(), c);
        }
        assert!("fax".parse::<DemoChannel>().is_err());
    }

    /// The form service/README.md shows: the fields one sets, the rest from `Default`
    /// (every channel, no delay, none of the extras).
    #[test]
    fn demo_options_take_the_fields_not_given_from_default() {
        let options = DemoOptions {
            channels: vec![DemoChannel::Echo],
            delay: Duration::from_millis(5),
            ..Default::default()
        };
        assert_eq!(options.channels, [DemoChannel::Echo]);
        assert_eq!(options.delay, Duration::from_millis(5));
        assert_eq!(options.config.app_id, "warren-demo-service");
        assert!(options.auth_channel.is_none() && options.tenants.is_none());
        assert!(options.priority_queues.is_empty() && options.unanswered.is_empty());

        let default = DemoOptions::default();
        assert_eq!(default.channels, DemoChannel::ALL);
        assert_eq!(default.delay, Duration::ZERO);
    }
}
