//! `warren-demo-service`: the demo backend (chat, tickets, voice, echo) on a RabbitMQ.
//! Prints `READY` on stdout once it consumes; SIGTERM or Ctrl-C stops it cleanly. Given
//! several AMQP URIs (a cluster), it fails over between them: when the connection is
//! lost the library reconnects to the next URI with backoff and consumes again (the
//! tickets and the duplicate window survive; unacknowledged messages were requeued by
//! the broker). When RabbitMQ is unreachable at start, it retries with backoff.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use warren_protocol::amqp::{validate_segment, Names, QueueBounds, MAX_TTL_MS};
use warren_protocol::tenants::{Tenant, TenantRouting};
use warren_service::demo::{self, DemoChannel, DemoHandle, DemoOptions};
use warren_service::ServiceState;

/// The Warren demo service: chat relay, ticket desk, voice signalling relay, echo.
#[derive(Debug, Parser)]
#[command(name = "warren-demo-service", version)]
struct Args {
    /// AMQP URI of the RabbitMQ to use; repeat it, or separate URIs with commas, to
    /// give every node of a cluster (tried in order, failed over in turn).
    #[arg(
        long,
        env = "WARREN_AMQP_URI",
        value_delimiter = ',',
        default_value = "amqp://127.0.0.1:5672/%2f"
    )]
    amqp_uri: Vec<String>,
    /// Namespace prefix of every exchange and queue name (empty for none). Default:
    /// the `--tenants-file`'s `namespace`, else none.
    #[arg(long, env = "WARREN_NAMESPACE")]
    namespace: Option<String>,
    /// Wait this many milliseconds in every handler (simulates a slow or stuck worker).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Serve only this channel (repeatable): chat, tickets, voice, echo. Default: all.
    #[arg(long = "only", value_name = "CHANNEL")]
    only: Vec<DemoChannel>,
    /// Messages handed to each consumer at a time (AMQP prefetch).
    #[arg(long, default_value_t = 1)]
    prefetch: u16,
    /// `x-queue-type` of the IN_<CHANNEL> queues when this service declares them
    /// first (an existing queue is used as it is). Default: the `--tenants-file`'s
    /// `queue_type`, else quorum.
    #[arg(
        long,
        env = "WARREN_QUEUE_TYPE",
        value_parser = ["quorum", "classic"]
    )]
    queue_type: Option<String>,
    /// Message TTL of a channel's inbound queue when this service declares it first,
    /// as CHANNEL=MILLISECONDS (repeatable; 0 for none, at most ten years); expired
    /// messages are dead-lettered to `warren.dead`. Must match the gateways' setting.
    /// Replaces, for that channel, the TTL a `--tenants-file` gives it.
    #[arg(long = "message-ttl", value_name = "CHANNEL=MS", value_parser = parse_ttl)]
    message_ttl: Vec<(String, u64)>,
    /// How long a publish or reply may wait for RabbitMQ (reconnect + confirm) before
    /// it fails, in milliseconds; at least 100 (a shorter one fails publishes before
    /// RabbitMQ can confirm them).
    #[arg(long, default_value_t = 10_000, value_parser = parse_publish_timeout)]
    publish_timeout_ms: u64,
    /// Close a publishing channel (one per Warren channel sent to) unused this long,
    /// in milliseconds; the next publish opens it again (at least 1,000).
    #[arg(long, default_value_t = 60_000)]
    publish_channel_idle_ms: u64,
    /// Also answer the gateways' `client.auth` requests (gateway `auth.mode =
    /// "service"`) on this channel with the demo authenticator: tokens `user:<name>`
    /// are accepted, `user:blocked` and anything else refused. Development only.
    #[arg(long, value_name = "CHANNEL")]
    auth_channel: Option<String>,
    /// Also consume this channel (repeatable) and never answer: requests on it time
    /// out. A stuck service, for timeout tests.
    #[arg(long, value_name = "CHANNEL")]
    unanswered: Vec<String>,
    /// Run a priority worker over these work queues, highest priority first,
    /// separated by spaces or commas (e.g. `"conversions_delta conversions_full
    /// os2ds_conversions"`): it always takes a message from the highest-priority
    /// non-empty queue and switches as soon as a higher queue receives one. Without
    /// `--only`, the demo channels are then not served.
    #[arg(long, env = "QUEUE_PRIORITY", value_name = "QUEUES")]
    queue_priority: Option<String>,
    /// A gateway configuration file whose `[tenants]` section (routed channels,
    /// tenants and their message types; `enabled = true` required) this service
    /// declares at start — the file the gateways read, so the two cannot drift. The
    /// file's settings that decide queue names and arguments are taken too:
    /// `namespace`, `queue_type`, `message_ttl_ms` and `[channel_options.<channel>]
    /// message_ttl_ms`, `inbound_max_length`, `inbound_max_bytes`; `--namespace`,
    /// `--queue-type` (or their environment variables) and `--message-ttl` win over the
    /// file, as over the gateway's file. With it, a `--queue-priority` entry
    /// `TENANT/TYPE` names that tenant's queue of that type and `TENANT/` its general
    /// queue (on the one routed channel; `CHANNEL/TENANT/TYPE` when there are several),
    /// and an entry the section does not define stops the start-up.
    #[arg(long, env = "WARREN_TENANTS_FILE", value_name = "PATH")]
    tenants_file: Option<std::path::PathBuf>,
    /// Exit (status 1) when RabbitMQ is unreachable or lost, instead of retrying.
    #[arg(long)]
    no_reconnect: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if args.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }

    let mut options = DemoOptions {
        delay: Duration::from_millis(args.delay_ms),
        ..DemoOptions::default()
    };
    if !args.only.is_empty() {
        options.channels = args.only.clone();
    }
    options.auth_channel = args.auth_channel.clone();
    options.unanswered = args.unanswered.clone();
    if let Some(list) = &args.queue_priority {
        options.priority_queues = parse_queue_list(list);
        if options.priority_queues.is_empty() {
            anyhow::bail!("--queue-priority names no queue");
        }
        if args.only.is_empty() {
            options.channels.clear();
        }
    }
    // A flag (or its environment variable) wins over the gateway file, which wins over
    // the default: as the gateway's own flags and variables win over its file.
    let file = match &args.tenants_file {
        Some(path) => Some((path, read_gateway_file(path)?)),
        None => None,
    };
    let gateway_file = file.as_ref().map(|(_, f)| f);
    let namespace = args
        .namespace
        .clone()
        .or_else(|| gateway_file.and_then(|f| f.namespace.clone()))
        .unwrap_or_default();
    let queue_type = args
        .queue_type
        .clone()
        .or_else(|| gateway_file.and_then(|f| f.queue_type.clone()))
        .unwrap_or_else(|| "quorum".to_string());
    options.config = options
        .config
        .with_prefetch(args.prefetch)
        .with_queue_type(queue_type)
        .with_publish_timeout(Duration::from_millis(args.publish_timeout_ms))
        .with_publish_channel_idle(Duration::from_millis(args.publish_channel_idle_ms))
        .with_reconnect(!args.no_reconnect);
    let names = Names::new(&namespace);
    if let Some((path, file)) = &file {
        let routing = file.routing(path)?;
        options.priority_queues = options
            .priority_queues
            .iter()
            .map(|entry| resolve_queue(entry, &routing, &names, path))
            .collect::<anyhow::Result<_>>()?;
        options.config.inbound_bounds = file.bounds();
        // The gateways' TTL of every channel whose queue this service may declare.
        let mut channels: std::collections::BTreeSet<String> = routing
            .channels
            .iter()
            .chain(&file.channels)
            .chain(file.channel_options.keys())
            .chain(options.auth_channel.iter())
            .chain(&options.unanswered)
            .cloned()
            .collect();
        channels.extend(options.channels.iter().map(|c| c.name().to_string()));
        channels.extend(
            options
                .priority_queues
                .iter()
                .filter_map(|q| names.channel_of_queue(q)),
        );
        for channel in channels {
            let ms = file.message_ttl_of(&channel);
            if ms > 0 {
                options.config = options
                    .config
                    .with_message_ttl(channel, Duration::from_millis(ms));
            }
        }
        info!(namespace = %namespace, queue_type = %options.config.queue_type, tenants = routing.tenants.len(), queues = ?options.priority_queues, "tenant topology from {}", path.display());
        options.tenants = Some(routing);
    }
    for (channel, ms) in &args.message_ttl {
        options.config = options
            .config
            .with_message_ttl(channel.clone(), Duration::from_millis(*ms));
    }
    let uris = args
        .amqp_uri
        .iter()
        .flat_map(|u| warren_service::split_uris(u))
        .collect::<Vec<_>>()
        .join(",");
    if uris.is_empty() {
        anyhow::bail!("--amqp-uri names no URI");
    }
    let shown = uris
        .split(',')
        .map(warren_service::link::redact)
        .collect::<Vec<_>>()
        .join(",");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut ready_printed = false;
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            started = demo::start_with(&uris, names.clone(), options.clone()) => started,
        };
        let handle = match started {
            Ok(handle) => handle,
            Err(e) if args.no_reconnect => {
                anyhow::bail!("starting the demo service on {shown}: {e}")
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot start; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        info!(queues = ?handle.queues(), delay_ms = args.delay_ms, "demo service ready");
        if !ready_printed {
            let mut out = std::io::stdout().lock();
            writeln!(out, "READY")?;
            out.flush()?;
            ready_printed = true;
        }
        match serve(&handle, &mut shutdown).await {
            None => {
                info!("stopping");
                handle.stop().await?;
                return Ok(());
            }
            Some(reason) => {
                error!(reason = %reason, "the service failed; starting it again");
                let _ = handle.stop().await;
                if args.no_reconnect {
                    anyhow::bail!("lost RabbitMQ: {reason}");
                }
            }
        }
    }
}

/// Waits for a shutdown signal (`None`) or the loss of the service (`Some(reason)`).
async fn serve(
    handle: &DemoHandle,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<String> {
    tokio::select! {
        _ = shutdown.as_mut() => None,
        state = handle.closed() => match state {
            ServiceState::Failed(reason) => Some(reason),
            ServiceState::Running | ServiceState::Reconnecting(_) | ServiceState::Stopped => None,
        },
    }
}

/// A gateway configuration file, as far as a service needs it: what decides the names
/// and arguments of the queues the gateways declare, and the `[tenants]` section (the
/// rest of the file is ignored). Absent keys have the gateway's defaults.
#[derive(Debug, Default, serde::Deserialize)]
struct GatewayFile {
    namespace: Option<String>,
    queue_type: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    message_ttl_ms: u64,
    #[serde(default)]
    channel_options: std::collections::BTreeMap<String, ChannelOptions>,
    inbound_max_length: Option<u64>,
    inbound_max_bytes: Option<u64>,
    #[serde(default)]
    tenants: TenantsSection,
}

/// `[channel_options.<channel>]`: only its TTL decides a queue argument.
#[derive(Debug, Default, serde::Deserialize)]
struct ChannelOptions {
    message_ttl_ms: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct TenantsSection {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    tenant: std::collections::BTreeMap<String, TenantTypes>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct TenantTypes {
    #[serde(default)]
    types: Vec<String>,
}

/// Reads a gateway configuration file and checks the settings a service takes from it.
fn read_gateway_file(path: &std::path::Path) -> anyhow::Result<GatewayFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    parse_gateway_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn parse_gateway_file(text: &str) -> anyhow::Result<GatewayFile> {
    let file: GatewayFile = toml::from_str(text)?;
    if let Some(namespace) = file.namespace.as_deref().filter(|n| !n.is_empty()) {
        for segment in namespace.split('.') {
            validate_segment("namespace", segment)?;
        }
    }
    if let Some(kind) = file.queue_type.as_deref() {
        if !matches!(kind, "quorum" | "classic") {
            anyhow::bail!("queue_type `{kind}` is not quorum or classic");
        }
    }
    // RabbitMQ refuses a longer TTL: the service would retry its declare for ever.
    let ttls = std::iter::once(("message_ttl_ms".to_string(), file.message_ttl_ms)).chain(
        file.channel_options.iter().filter_map(|(c, o)| {
            Some((
                format!("channel_options.{c}.message_ttl_ms"),
                o.message_ttl_ms?,
            ))
        }),
    );
    for (key, ms) in ttls {
        if ms > MAX_TTL_MS {
            anyhow::bail!(
                "{key} = {ms} is more than {MAX_TTL_MS} (ten years, RabbitMQ's longest TTL)"
            );
        }
    }
    Ok(file)
}

impl GatewayFile {
    /// The tenant routing (tenants in name order, as the gateway declares them).
    fn routing(&self, path: &std::path::Path) -> anyhow::Result<TenantRouting> {
        if !self.tenants.enabled {
            anyhow::bail!(
                "{}: [tenants] enabled is not true: the gateways reading this file do not route by tenant",
                path.display()
            );
        }
        let routing = TenantRouting {
            channels: self.tenants.channels.clone(),
            tenants: self
                .tenants
                .tenant
                .iter()
                .map(|(name, t)| Tenant {
                    name: name.clone(),
                    types: t.types.clone(),
                })
                .collect(),
        };
        routing
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [tenants]: {e}", path.display()))?;
        if routing.channels.is_empty() || routing.tenants.is_empty() {
            anyhow::bail!(
                "{}: [tenants] names no routed channel or no tenant",
                path.display()
            );
        }
        Ok(routing)
    }

    /// `channel`'s message TTL in ms as the gateway takes it (0: none): its
    /// `[channel_options]` one, else `message_ttl_ms`.
    fn message_ttl_of(&self, channel: &str) -> u64 {
        self.channel_options
            .get(channel)
            .and_then(|o| o.message_ttl_ms)
            .unwrap_or(self.message_ttl_ms)
    }

    /// The inbound queues' length bounds (0 turns one off), the gateway's defaults for
    /// what the file does not set.
    fn bounds(&self) -> QueueBounds {
        QueueBounds {
            max_length: self
                .inbound_max_length
                .unwrap_or(QueueBounds::INBOUND.max_length),
            max_bytes: self
                .inbound_max_bytes
                .unwrap_or(QueueBounds::INBOUND.max_bytes),
        }
    }
}

/// A `--queue-priority` entry as a queue name: `TENANT/TYPE`, `TENANT/` or
/// `CHANNEL/TENANT/TYPE` resolved in `routing`, anything else as it is.
fn resolve_queue(
    entry: &str,
    routing: &TenantRouting,
    names: &Names,
    path: &std::path::Path,
) -> anyhow::Result<String> {
    let parts: Vec<&str> = entry.split('/').collect();
    let (channel, tenant, kind) = match parts.as_slice() {
        [_] => return Ok(entry.to_string()),
        [tenant, kind] => match routing.channels.as_slice() {
            [channel] => (channel.as_str(), *tenant, *kind),
            _ => anyhow::bail!(
                "`{entry}`: {} routes several channels; write CHANNEL/TENANT/TYPE",
                path.display()
            ),
        },
        [channel, tenant, kind] => (*channel, *tenant, *kind),
        _ => anyhow::bail!("`{entry}` is not TENANT/TYPE or CHANNEL/TENANT/TYPE"),
    };
    routing
        .queue_for(names, tenant, channel, kind)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{entry}`: {} defines no queue for tenant `{tenant}`, type `{kind}` on channel `{channel}`",
                path.display()
            )
        })
}

/// Splits a `QUEUE_PRIORITY` list on spaces and commas.
fn parse_queue_list(list: &str) -> Vec<String> {
    list.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|q| !q.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `CHANNEL=MILLISECONDS`.
fn parse_ttl(s: &str) -> Result<(String, u64), String> {
    let (channel, ms) = s
        .split_once('=')
        .ok_or_else(|| format!("expected CHANNEL=MILLISECONDS, got `{s}`"))?;
    let ms = ms
        .parse::<u64>()
        .map_err(|e| format!("`{ms}` is not a number of milliseconds: {e}"))?;
    // RabbitMQ refuses a longer TTL: the service would retry its declare for ever.
    if ms > MAX_TTL_MS {
        return Err(format!(
            "{ms} ms is more than {MAX_TTL_MS} (ten years, RabbitMQ's longest TTL)"
        ));
    }
    Ok((channel.to_string(), ms))
}

/// The shortest `--publish-timeout-ms`. With 0, every publish and reply failed at
/// once, confirmed or not: nothing was answered, and a request whose reply was kept for
/// its next copy was handed back and redelivered in a loop.
const MIN_PUBLISH_TIMEOUT_MS: u64 = 100;

/// Parses `--publish-timeout-ms`: milliseconds, at least [`MIN_PUBLISH_TIMEOUT_MS`].
fn parse_publish_timeout(s: &str) -> Result<u64, String> {
    let ms = s
        .parse::<u64>()
        .map_err(|e| format!("`{s}` is not a number of milliseconds: {e}"))?;
    if ms < MIN_PUBLISH_TIMEOUT_MS {
        return Err(format!(
            "{ms} ms is too short to wait for a publish's confirm: at least {MIN_PUBLISH_TIMEOUT_MS}"
        ));
    }
    Ok(ms)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_milliseconds_up_to_ten_years() {
        assert_eq!(parse_ttl("echo=0"), Ok(("echo".into(), 0)));
        assert_eq!(
            parse_ttl(&format!("echo={MAX_TTL_MS}")),
            Ok(("echo".into(), MAX_TTL_MS))
        );
        // RabbitMQ refuses more: the service retried its declare for ever.
        let e = parse_ttl(&format!("echo={}", MAX_TTL_MS + 1)).unwrap_err();
        assert!(e.contains("ten years"), "{e}");
        assert!(parse_ttl("echo").is_err());
    }

    #[test]
    fn a_publish_timeout_below_100_ms_is_refused() {
        let parse = |ms: &str| {
            Args::try_parse_from(["warren-demo-service", "--publish-timeout-ms", ms])
                .map(|a| a.publish_timeout_ms)
        };
        for ms in ["0", "99"] {
            let e = parse(ms).unwrap_err().to_string();
            assert!(e.contains("at least 100"), "{ms}: {e}");
        }
        assert_eq!(parse("100").unwrap(), 100);
        assert!(parse("soon").is_err());
        let args = Args::try_parse_from(["warren-demo-service"]).unwrap();
        assert_eq!(args.publish_timeout_ms, 10_000, "the default");
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("at least 100"), "{help}");
    }

    #[test]
    fn the_queue_type_is_read_from_the_environment_the_gateway_reads() {
        // The only test here that touches the environment.
        std::env::set_var("WARREN_QUEUE_TYPE", "classic");
        let args = Args::try_parse_from(["warren-demo-service"]).unwrap();
        std::env::remove_var("WARREN_QUEUE_TYPE");
        assert_eq!(args.queue_type.as_deref(), Some("classic"));
        // Unset: the tenants file's, else quorum (in `main`).
        let args = Args::try_parse_from(["warren-demo-service"]).unwrap();
        assert_eq!(args.queue_type, None);
    }

    #[test]
    fn a_gateway_file_gives_the_queue_settings_the_gateway_takes_from_it() {
        let file = parse_gateway_file(
            "namespace = \"prod\"\nqueue_type = \"classic\"\nmessage_ttl_ms = 300\n\
             inbound_max_length = 7\nlisten = \"127.0.0.1:4000\"\n\
             [channel_options.scan]\nmessage_ttl_ms = 0\nstream_max_bytes = 5\n\
             [tenants]\nenabled = true\nchannels = [\"scan\"]\n[tenants.tenant.acme]\n",
        )
        .unwrap();
        assert_eq!(file.namespace.as_deref(), Some("prod"));
        assert_eq!(file.queue_type.as_deref(), Some("classic"));
        assert_eq!(file.message_ttl_of("chat"), 300);
        assert_eq!(file.message_ttl_of("scan"), 0, "the channel's own wins");
        assert_eq!(
            file.bounds(),
            QueueBounds {
                max_length: 7,
                max_bytes: QueueBounds::INBOUND.max_bytes
            }
        );
        let path = std::path::Path::new("g.toml");
        assert_eq!(file.routing(path).unwrap().channels, ["scan"]);

        let e = parse_gateway_file("queue_type = \"stream\"\n").unwrap_err();
        assert!(e.to_string().contains("queue_type"), "{e}");
        let e = parse_gateway_file("namespace = \"a b\"\n").unwrap_err();
        assert!(e.to_string().contains("namespace"), "{e}");
        let e = parse_gateway_file(&format!("message_ttl_ms = {}\n", MAX_TTL_MS + 1)).unwrap_err();
        assert!(e.to_string().contains("message_ttl_ms"), "{e}");
        let off = parse_gateway_file("[tenants]\nchannels = [\"scan\"]\n[tenants.tenant.acme]\n")
            .unwrap();
        let e = off.routing(path).unwrap_err().to_string();
        assert!(e.contains("enabled"), "{e}");
    }
}
