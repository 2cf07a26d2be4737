//! What `warren-gateway` tells a user who got something wrong, before it connects to
//! anything (`topology print` reads and checks the whole configuration): one line per
//! error, each cause once, no backtrace (`RUST_BACKTRACE=1` printed one, and every
//! cause came twice); a JWT secret or secret file given by flag replaces the file's
//! (the file's `secret` kept winning over `--auth-jwt-secret-file`), and both set at
//! once are refused; `topology check --management-url` says what is wrong with the URL.

use std::path::PathBuf;
use std::process::Output;

use warren_e2e::binary::workspace_binary;

/// A file under the temporary directory holding `text`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!(
            "warren-cli-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("temp file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs `warren-gateway args` with `RUST_BACKTRACE=1`.
async fn gateway(args: &[&str]) -> Output {
    gateway_with(&[("RUST_BACKTRACE", "1")], args).await
}

/// Runs `warren-gateway args` with `env` set (and no JWT secret from the caller's).
async fn gateway_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    let bin = tokio::task::spawn_blocking(|| {
        workspace_binary("warren-gateway", "warren-gateway", &["WARREN_GATEWAY_BIN"])
    })
    .await
    .expect("binary");
    tokio::process::Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("WARREN_AUTH_JWT_SECRET")
        .env_remove("WARREN_AUTH_JWT_SECRET_FILE")
        .output()
        .await
        .expect("run warren-gateway")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn help_and_version_go_to_stdout_and_exit_0() {
    for flag in ["--help", "--version"] {
        let out = gateway(&[flag]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{flag} writes nothing to stderr");
        let expected = if flag == "--help" {
            "WARREN_HEARTBEAT_MS"
        } else {
            "warren-gateway"
        };
        assert!(text.contains(expected), "{flag} printed to stdout: {text}");
    }
}

#[tokio::test]
async fn a_configuration_error_is_one_line_with_each_cause_once_and_no_backtrace() {
    let config = TempFile::new("c.toml", "namespace = \"cli\"\nlisten_adress = \"x\"\n");
    let out = gateway(&["--config", config.path(), "topology", "print"]).await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("error: "), "{text}");
    assert_eq!(text.matches("unknown field").count(), 1, "{text}");
    assert!(text.contains("listen_adress"), "names the key: {text}");
    assert!(!text.to_lowercase().contains("backtrace"), "{text}");
}

#[tokio::test]
async fn a_jwt_secret_file_given_by_flag_replaces_the_files_secret_and_both_are_refused() {
    let long = "0123456789abcdef0123456789abcdef-in-the-file";
    let config = TempFile::new(
        "j.toml",
        &format!("[auth]\nmode = \"jwt\"\n[auth.jwt]\nsecret = \"{long}\"\n"),
    );
    let short = TempFile::new("short", "short\n");
    let print = ["topology", "print"];
    let out = gateway(&[&["--config", config.path()][..], &print].concat()).await;
    assert!(out.status.success(), "the file's secret: {}", stderr(&out));
    // The flag's file is the secret now: too short.
    let args = [
        "--config",
        config.path(),
        "--auth-jwt-secret-file",
        short.path(),
    ];
    let out = gateway(&[&args[..], &print].concat()).await;
    let text = stderr(&out);
    assert!(!out.status.success(), "the flag's file was ignored: {text}");
    assert!(text.contains("at least 32 bytes"), "{text}");

    let both = TempFile::new(
        "both.toml",
        &format!(
            "[auth]\nmode = \"jwt\"\n[auth.jwt]\nsecret = \"{long}\"\nsecret_file = \"{}\"\n",
            short.path()
        ),
    );
    let out = gateway(&[&["--config", both.path()][..], &print].concat()).await;
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("both set"), "{text}");
}

#[tokio::test]
async fn topology_check_says_a_management_url_needs_its_scheme() {
    let out = gateway(&[
        "--namespace",
        "cli-check",
        "--amqp-uri",
        &warren_e2e::env::amqp_addr(),
        "topology",
        "check",
        "--management-url",
        "127.0.0.1:15672",
    ])
    .await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("must start with http://"), "{text}");
    assert!(!text.contains("invalid format"), "{text}");
}

/// A `--management-url` that is not RabbitMQ's management API exits 2 saying so: here
/// a web server answering 404 to everything (another service on that port, a reverse
/// proxy's wrong prefix). Each 404 was taken for "this binding does not exist": every
/// binding was listed missing and the check exited 1, as if the broker differed.
#[tokio::test]
async fn topology_check_says_a_management_url_that_is_not_the_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let out = gateway(&[
        "--namespace",
        "cli-check-404",
        "--amqp-uri",
        &warren_e2e::env::amqp_addr(),
        "topology",
        "check",
        "--management-url",
        &url,
    ])
    .await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("not RabbitMQ's management API"), "{text}");
}

/// `warren-stack --auth jwt` writes the gateways' configuration file itself: a
/// `--gateway-arg=--config=…` of the user's is refused at once, saying so (both
/// gateways exited with "cannot be used multiple times", and the stack failed with
/// `Error: exit status: …`).
#[tokio::test]
async fn warren_stack_refuses_a_second_gateway_config_with_auth_jwt_saying_why() {
    let bin = tokio::task::spawn_blocking(|| {
        workspace_binary("warren-e2e", "warren-stack", &["WARREN_STACK_BIN"])
    })
    .await
    .expect("binary");
    let config = TempFile::new("mine.toml", "heartbeat_ms = 5000\n");
    let out = tokio::process::Command::new(bin)
        .args(["--layout", "ephemeral", "--no-service", "--auth", "jwt"])
        .arg(format!("--gateway-arg=--config={}", config.path()))
        .args(["--amqp-uri", "amqp://127.0.0.1:1/%2f"])
        .output()
        .await
        .expect("run warren-stack");
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("with --auth jwt"), "{text}");
    assert!(!text.contains("exit status"), "{text}");
}

/// `amqp_addr()` with its host and port replaced by `127.0.0.1:port`, and the
/// `host:port` it named.
fn amqp_addr_on(port: u16) -> (String, String) {
    let addr = warren_e2e::env::amqp_addr();
    let authority_start = addr.find("//").map_or(0, |i| i + 2);
    let authority_end = addr[authority_start..]
        .find('/')
        .map_or(addr.len(), |i| authority_start + i);
    let host_start = addr[authority_start..authority_end]
        .rfind('@')
        .map_or(authority_start, |i| authority_start + i + 1);
    let real = addr[host_start..authority_end].to_string();
    let moved = format!(
        "{}127.0.0.1:{port}{}",
        &addr[..host_start],
        &addr[authority_end..]
    );
    (moved, real)
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// RabbitMQ starting beside the gateway (a compose file, a machine's boot): the
/// gateway keeps trying for `broker_start_wait_ms`, saying so at each attempt, and
/// serves once RabbitMQ answers; when it never does, it exits 1 naming the wait. (It
/// exited at the first refused connection.)
#[tokio::test]
async fn the_gateway_waits_for_rabbitmq_starting_beside_it() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let env = warren_e2e::env::TestEnv::new("start-wait").await;
    let bin = tokio::task::spawn_blocking(|| {
        workspace_binary("warren-gateway", "warren-gateway", &["WARREN_GATEWAY_BIN"])
    })
    .await
    .expect("binary");
    let port = free_port();
    let (uri, real) = amqp_addr_on(port);
    let mut gw = tokio::process::Command::new(&bin)
        .args(["--amqp-uri", &uri, "--namespace", &env.namespace])
        .args(["--node", "gw-start-wait", "--listen", "127.0.0.1:0"])
        .args(["--broker-start-wait-ms", "30000"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start warren-gateway");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        gw.try_wait().expect("status").is_none(),
        "the gateway waits for RabbitMQ instead of exiting"
    );
    // RabbitMQ "starts": a forwarder to the real broker on the port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is still free");
    let forwarder = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let real = real.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&real).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let mut stdout = tokio::io::BufReader::new(gw.stdout.take().expect("stdout")).lines();
    let listening = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if line.starts_with("LISTENING ") {
                return true;
            }
        }
        false
    })
    .await;
    gw.start_kill().expect("kill");
    let _ = gw.wait().await;
    let mut log = String::new();
    gw.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .await
        .expect("stderr");
    assert_eq!(listening, Ok(true), "serves once RabbitMQ answers: {log}");
    assert!(log.contains("RabbitMQ is not reachable yet"), "{log}");
    forwarder.abort();

    // Never answering: exit 1 once the wait is over, naming it.
    let started = Instant::now();
    let out = tokio::process::Command::new(&bin)
        .args(["--amqp-uri", &amqp_addr_on(free_port()).0])
        .args(["--namespace", &env.namespace, "--listen", "127.0.0.1:0"])
        .args(["--broker-start-wait-ms", "1200"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .await
        .expect("run warren-gateway");
    let took = started.elapsed();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        took >= Duration::from_millis(1_200) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{text}");
    assert!(last.contains("broker_start_wait_ms (1200 ms)"), "{text}");
    assert!(last.contains("cannot connect to RabbitMQ"), "{text}");
    env.cleanup().await;
}

/// Runs `warren-gateway args topology print` with `env` set.
async fn print_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    gateway_with(env, &[args, &["topology", "print"]].concat()).await
}

/// An invalid value from a `WARREN_*` variable is reported under that variable's
/// name (clap named only the flag, which the user had not typed); one on the command
/// line is the flag's. On/off settings take `1`/`0`, `yes`/`no`, `on`/`off` too, as
/// environment variables usually do (only `true`/`false` were taken).
#[tokio::test]
async fn an_invalid_environment_value_is_named_as_its_variable_and_booleans_take_1_and_0() {
    let out = print_with(&[("WARREN_HEARTBEAT_MS", "abc")], &[]).await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("invalid value 'abc' for environment variable WARREN_HEARTBEAT_MS"),
        "{text}"
    );
    let out = print_with(&[("WARREN_HEARTBEAT_MS", "abc")], &["--heartbeat-ms=x"]).await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("invalid value 'x' for '--heartbeat-ms"),
        "{text}"
    );
    assert!(!text.contains("environment variable"), "{text}");

    for (value, ok) in [("1", true), ("off", true), ("yes", true), ("maybe", false)] {
        let out = print_with(&[("WARREN_PRESENCE", value)], &[]).await;
        let text = stderr(&out);
        assert_eq!(out.status.success(), ok, "WARREN_PRESENCE={value}: {text}");
        if !ok {
            assert!(
                text.contains("environment variable WARREN_PRESENCE"),
                "{text}"
            );
        }
    }
}

/// Tenant mode with `auth.mode = "none"` (the default) and no default tenant is refused
/// at start, naming `tenants.default`: no token carries a tenant in that mode, so the
/// gateway started and then refused every write `forbidden`. A `topology` command with
/// the same file still runs: it is often run with the default `auth.mode` for
/// gateways that verify tokens, whose sessions take their tenant from them.
#[tokio::test]
async fn tenant_mode_with_auth_none_and_no_default_tenant_is_refused_at_start() {
    let serve = gateway(&["--tenants", "true", "--listen", "127.0.0.1:0"]);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), serve)
        .await
        .expect("refused at start, not serving");
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("tenants.default") && text.contains("--tenants-default"),
        "{text}"
    );
    let out = print_with(&[], &["--tenants", "true"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}
