//! `warren-gateway`: parses the command line, sets up logging, and runs the gateway
//! (or prints/applies the topology) until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use std::io::{IsTerminal, Write};
use warren_gateway::broker::Broker;
use warren_gateway::{Cli, Command, Config, Gateway, Topology, TopologyAction};

#[tokio::main]
async fn main() {
    if let Err(e) = gateway_main().await {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each once: the gateway's errors name their
/// cause in their own message already (printed as a chain, each came twice or three
/// times, and returned from `main` with a backtrace under `RUST_BACKTRACE=1`).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `topology check` cannot tell: exit 2 with the reason.
fn fail(e: impl Into<anyhow::Error>) -> ! {
    eprintln!("error: {}", one_line(&e.into()));
    std::process::exit(2);
}

/// Parses the command line and the `WARREN_*` environment, or exits (2) with clap's
/// message (`--help` and `--version`: printed to stdout, exit 0). An invalid value that came from an environment variable is named as that
/// variable: clap names only the flag, which the user did not type.
fn parse_cli() -> Cli {
    let e = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    if !e.use_stderr() {
        // `--help` and `--version`: to stdout, exit 0 (`--help | less` shows it).
        e.exit();
    }
    let mut text = e.render().to_string();
    if let Some(clap::error::ContextValue::String(shown)) =
        e.get(clap::error::ContextKind::InvalidArg)
    {
        if let Some(env) = env_source(shown) {
            text = text.replacen(
                &format!("'{shown}'"),
                &format!("environment variable {env} (flag '{shown}')"),
                1,
            );
        }
    }
    eprint!("{text}");
    std::process::exit(e.exit_code());
}

/// The environment variable an invalid value of `shown` (clap's `--flag <VALUE>`)
/// came from: the flag's variable, when it is set and the flag is not on the command
/// line.
fn env_source(shown: &str) -> Option<String> {
    let long = shown.strip_prefix("--")?.split([' ', '=']).next()?;
    let on_line = std::env::args_os().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    if on_line {
        return None;
    }
    let command = <Cli as clap::CommandFactory>::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    let env = arg.get_env()?.to_string_lossy().into_owned();
    std::env::var_os(&env).is_some().then_some(env)
}

async fn gateway_main() -> anyhow::Result<()> {
    let cli = parse_cli();
    let checking = matches!(
        cli.command,
        Some(Command::Topology {
            action: TopologyAction::Check { .. }
        })
    );
    // `topology check` probes every object with a passive declare, and RabbitMQ closes
    // the channel of each one missing: lapin would log each as an error, though a
    // missing object is what the check reports (on stdout).
    let logs = if checking {
        "warn,lapin=off"
    } else {
        "info,lapin=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| logs.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match Config::load(&cli.overrides).context("configuration") {
        Ok(config) => config,
        Err(e) if checking => fail(e),
        Err(e) => return Err(e),
    };
    for unused in config.unused_settings() {
        tracing::warn!("{unused}");
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Topology {
            action: TopologyAction::Print,
        } => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = write!(std::io::stdout(), "{}", Topology::from_config(&config));
        }
        Command::Topology {
            action: TopologyAction::Apply,
        } => {
            let broker = Broker::connect(&config, std::sync::Arc::new(Default::default())).await?;
            let topology = Topology::from_config(&config);
            let kept = topology.apply(&broker).await?;
            broker.close().await;
            if kept.is_empty() {
                let _ = writeln!(std::io::stdout(), "{topology}applied");
            } else {
                // RabbitMQ cannot change a queue's or exchange's arguments: `apply &&
                // deploy` must not go on as if it had.
                let _ = write!(std::io::stdout(), "{topology}");
                let mut err = std::io::stderr().lock();
                for k in &kept {
                    let _ = writeln!(err, "KEPT {k}");
                }
                let _ = writeln!(
                    err,
                    "error: {} object(s) exist with other arguments and were kept as they \
                     are (RabbitMQ cannot change them); delete and apply again, or change \
                     the configuration back (`topology check` lists every difference)",
                    kept.len()
                );
                std::process::exit(1);
            }
        }
        Command::Topology {
            action: TopologyAction::Check { management_url },
        } => {
            use warren_gateway::topology::{Declaration, Management};
            let topology = Topology::from_config(&config);
            let mismatches = check(&config, &topology).await.unwrap_or_else(|e| fail(e));
            let missing_bindings = match &management_url {
                Some(url) => {
                    let uri = config.amqp_uri.first().cloned().unwrap_or_default();
                    let management = Management::new(url, &uri).unwrap_or_else(|e| fail(e));
                    let topology = topology.clone();
                    let found =
                        tokio::task::spawn_blocking(move || topology.check_bindings(&management))
                            .await
                            .unwrap_or_else(|e| fail(e));
                    Some(found.unwrap_or_else(|e| fail(e)))
                }
                None => None,
            };
            let mut out = std::io::stdout().lock();
            for m in mismatches.iter().chain(missing_bindings.iter().flatten()) {
                let _ = writeln!(out, "MISMATCH {m}");
            }
            let count =
                |f: fn(&Declaration) -> bool| topology.declarations.iter().filter(|d| f(d)).count();
            let objects =
                count(|d| matches!(d, Declaration::Exchange { .. } | Declaration::Queue { .. }));
            let bindings = count(|d| {
                matches!(
                    d,
                    Declaration::Binding { .. }
                        | Declaration::HeadersBinding { .. }
                        | Declaration::ExchangeBinding { .. }
                )
            });
            let _ = writeln!(
                out,
                "{} of {objects} exchanges and queues differ from the broker",
                mismatches.len()
            );
            let _ = match &missing_bindings {
                Some(found) => {
                    let missing = found.iter().filter(|m| m.difference == "missing").count();
                    let extra = found.len() - missing;
                    if extra == 0 {
                        writeln!(out, "{missing} of {bindings} bindings are missing")
                    } else {
                        writeln!(
                            out,
                            "{missing} of {bindings} bindings are missing, and {extra} present \
                             should be removed"
                        )
                    }
                }
                None => writeln!(
                    out,
                    "{bindings} bindings not compared (pass --management-url to read them)"
                ),
            };
            let _ = out.flush();
            if !mismatches.is_empty() || missing_bindings.is_some_and(|m| !m.is_empty()) {
                std::process::exit(1);
            }
        }
        Command::Run => run(config).await?,
    }
    Ok(())
}

/// `topology check`: the mismatches between `topology` and the broker.
async fn check(
    config: &Config,
    topology: &Topology,
) -> anyhow::Result<Vec<warren_gateway::topology::Mismatch>> {
    let broker = Broker::connect(config, std::sync::Arc::new(Default::default())).await?;
    let mismatches = topology.check(&broker).await;
    broker.close().await;
    Ok(mismatches?)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let gateway = Gateway::start(config)
        .await
        .context("starting the gateway")?;
    {
        let mut out = std::io::stdout().lock();
        for (addr, channel) in gateway.listeners() {
            writeln!(
                out,
                "LISTENING {addr} {}",
                channel.as_deref().unwrap_or("*")
            )?;
        }
        if let Some(addr) = gateway.http_api_addr() {
            writeln!(out, "HTTP_API {addr}")?;
        }
        if let Some(addr) = gateway.admin_addr() {
            writeln!(out, "ADMIN {addr}")?;
        }
        writeln!(out, "READY")?;
        out.flush()?;
    }
    wait_for_signal().await;
    gateway.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
