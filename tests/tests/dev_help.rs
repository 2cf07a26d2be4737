//! `./dev <command> --help` prints what the command does and exits at once, before
//! anything is installed, started or built: run here with a `PATH` holding only the
//! few tools the help needs (no apt-get, cargo, rabbitmqctl). `./dev bench --help` and
//! `./dev bench-stream-read --help` installed packages, started RabbitMQ and built in
//! release mode before the help reached the benchmark. Then `./dev` with stub commands
//! (apt, cargo, rabbitmq-plugins, the demo's binaries) and a TCP listener for a running
//! broker: what it installs, builds, starts and says.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory holding links to the tools `./dev`'s help needs, and nothing else.
fn bare_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "warren-dev-help-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for tool in ["awk", "cat", "dirname"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is not installed"));
        std::os::unix::fs::symlink(found, dir.join(tool)).expect("link");
    }
    dir
}

#[test]
fn dev_help_of_every_command_prints_at_once_without_installing_or_building() {
    let dev = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dev");
    let path = bare_path();
    for args in [
        &["help"][..],
        &["bench", "--help"],
        &["bench-stream-read", "-h"],
        &["demo", "--help"],
    ] {
        let started = std::time::Instant::now();
        let out = Command::new("/bin/bash")
            .arg(&dev)
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", std::env::temp_dir())
            .output()
            .expect("run ./dev");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "./dev {args:?}: {}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains("Usage: ./dev"), "./dev {args:?}: {stdout}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "./dev {args:?} took {:?}",
            started.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(path);
}

/// `./dev` run with a `PATH` of stub commands: apt's, Rust's, Node's and RabbitMQ's
/// tools answer as on a machine where everything is installed (save the Debian
/// packages named in `STUB_MISSING_DEBS`), and `sudo`, `cargo` and `rabbitmq-plugins`
/// write what they were asked into `log/`. A TCP listener stands for a running broker.
struct Stubbed {
    dir: PathBuf,
    broker: std::net::TcpListener,
}

const STUBS: &[(&str, &str)] = &[
    ("id", r#"[ "$1" = -u ] && { echo 1000; exit 0; }; exit 1"#),
    (
        "sudo",
        r#"echo "$*" >>"$STUB_LOG/sudo"; case $1 in rabbitmq*|sh) exec "$@";; esac; exit 0"#,
    ),
    (
        "dpkg-query",
        r#"for a; do pkg=$a; done
case " $STUB_MISSING_DEBS " in *" $pkg "*) exit 1;; esac
printf 'install ok installed'"#,
    ),
    ("node", "echo v22.12.0"),
    ("npm", "exit 0"),
    ("curl", "exit 7"),
    ("rustc", "echo 'rustc 1.95.0 (stub)'"),
    (
        "rustup",
        r#"case $1 in target) echo wasm32-unknown-unknown;; component) printf 'rustfmt\nclippy\n';; esac"#,
    ),
    (
        "cargo",
        r#"echo "$*" >>"$STUB_LOG/cargo"
[ "$1" = build ] && [ -n "${STUB_CARGO_BUILD_FAILS:-}" ] && exit 1
exit 0"#,
    ),
    ("rabbitmqctl", "exit 0"),
    (
        "rabbitmq-plugins",
        r#"echo "$*" >>"$STUB_LOG/rabbitmq-plugins"
echo "Error: stub broker refuses to enable $2" >&2; exit 2"#,
    ),
];

impl Stubbed {
    fn new() -> Stubbed {
        let dir = bare_path();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(dir.join("log")).expect("log dir");
        for tool in [
            "awk", "cat", "dirname", "sed", "grep", "head", "tr", "df", "seq", "sleep", "rm",
            "mkdir", "wc", "python3", "flock", "env", "setsid", "tee", "tail", "chmod", "sh",
            "bash", "hostname", "mv",
        ] {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} is not installed"));
            std::os::unix::fs::symlink(found, bin.join(tool)).expect("link");
        }
        for (name, body) in STUBS {
            write_script(&bin.join(name), body);
        }
        // This machine's node, as its plugins file says: the plugins enabled.
        std::fs::write(
            dir.join("enabled_plugins"),
            "[rabbitmq_management,rabbitmq_web_stomp,rabbitmq_stream].\n",
        )
        .expect("plugins file");
        let broker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Stubbed { dir, broker }
    }

    /// `./dev ARGS` with the stubs, AMQP_ADDR at the listener, and `envs`.
    fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let dev = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dev");
        let mut command = Command::new("/bin/bash");
        command
            .arg(dev)
            .args(args)
            .env_clear()
            .env("PATH", self.dir.join("bin"))
            .env("HOME", &self.dir)
            .env("STUB_LOG", self.dir.join("log"))
            // Never the checkout's .dev: a real `./dev test` may be using it (its
            // cargo-test step lists the test binaries there, which this test runs in).
            .env("WARREN_DEV_STATE_DIR", self.dir.join("state"))
            .env("WARREN_DEV_POLICY_RC_D", self.dir.join("policy-rc.d"))
            .env(
                "AMQP_ADDR",
                format!(
                    "amqp://127.0.0.1:{}/%2f",
                    self.broker.local_addr().expect("addr").port()
                ),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .stdin(std::process::Stdio::null());
        for (k, v) in envs {
            command.env(k, v);
        }
        command
    }

    fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
        let out = self.command(args, envs).output().expect("run ./dev");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The lines the stub `name` logged (empty when it never ran).
    fn log(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log").join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Stubbed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write stub");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn dev_demo_with_a_broker_answering_installs_no_rabbitmq_server() {
    let stubs = Stubbed::new();
    // The build fails on purpose: the demo stops right after its setup.
    let (_, stdout, stderr) = stubs.run(
        &["demo"],
        &[
            ("STUB_MISSING_DEBS", "rabbitmq-server"),
            ("STUB_CARGO_BUILD_FAILS", "1"),
        ],
    );
    assert!(
        stubs
            .log("cargo")
            .iter()
            .any(|l| l.starts_with("build --release")),
        "the setup did not reach the build:\n{stdout}\n{stderr}"
    );
    let sudo = stubs.log("sudo");
    assert!(
        !sudo.iter().any(|l| l.contains("rabbitmq-server")),
        "./dev demo installed or started rabbitmq-server though a broker answers: {sudo:#?}"
    );
}

#[test]
fn dev_test_setup_with_a_broker_answering_installs_rabbitmq_server_with_its_service_held() {
    let stubs = Stubbed::new();
    let (ok, stdout, stderr) = stubs.run(
        &["test", "setup"],
        &[("STUB_MISSING_DEBS", "rabbitmq-server")],
    );
    assert!(ok, "./dev test setup failed:\n{stdout}\n{stderr}");
    let sudo = stubs.log("sudo");
    let at = |what: &dyn Fn(&String) -> bool| sudo.iter().position(what);
    let install = at(&|l| l.contains("apt-get install") && l.contains("rabbitmq-server"))
        .unwrap_or_else(|| panic!("the fault tests' rabbitmq-server was not installed: {sudo:#?}"));
    let policy = stubs.dir.join("policy-rc.d").display().to_string();
    let held = at(&|l| l.contains("exit 101") && l.contains(&policy));
    let released = at(&|l| l.contains("rm -f") && l.contains(&policy));
    assert!(
        held.is_some_and(|h| h < install) && released.is_some_and(|r| r > install),
        "rabbitmq-server was installed with its service free to start on the taken port: {sudo:#?}"
    );
    assert!(
        !stubs.dir.join("policy-rc.d").exists(),
        "the hold was taken away after the install"
    );
    assert!(
        !sudo.iter().any(|l| l.contains("rabbitmq-server -detached")),
        "a second broker was started: {sudo:#?}"
    );
}

/// A policy-rc.d that ./dev wrote for an install it was interrupted in (Ctrl-C) would
/// hold every package's service for good, and the next such install set it aside as
/// the machine's own, losing that one: the next setup takes it away and puts the
/// machine's own back.
#[test]
fn dev_setup_takes_away_a_policy_rc_d_an_interrupted_install_left() {
    let stubs = Stubbed::new();
    let policy = stubs.dir.join("policy-rc.d");
    let own = "#!/bin/sh\nexit 0 # the machine's own\n";
    std::fs::write(
        &policy,
        "#!/bin/sh\n# written by warren ./dev for one install; removed after it\nexit 101\n",
    )
    .expect("leftover");
    std::fs::write(stubs.dir.join("policy-rc.d.dev-saved"), own).expect("saved");
    let (ok, stdout, stderr) = stubs.run(&["test", "setup"], &[]);
    assert!(ok, "./dev test setup failed:\n{stdout}\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(&policy).ok().as_deref(),
        Some(own),
        "the machine's own policy-rc.d is back"
    );
    assert!(!stubs.dir.join("policy-rc.d.dev-saved").exists());
}

#[test]
fn dev_test_setup_stops_at_once_when_a_plugin_cannot_be_enabled() {
    let stubs = Stubbed::new();
    std::fs::write(
        stubs.dir.join("enabled_plugins"),
        "[rabbitmq_management].\n",
    )
    .expect("plugins file");
    let (ok, stdout, stderr) = stubs.run(&["test", "setup"], &[]);
    assert!(
        !ok,
        "./dev test setup passed with a plugin refused:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("rabbitmq_web_stomp")
            && stderr.contains("stub broker refuses to enable rabbitmq_web_stomp"),
        "the failure names neither the plugin nor rabbitmq-plugins' output:\n{stdout}\n{stderr}"
    );
}

#[test]
fn dev_test_cargo_test_alone_builds_the_binaries_first() {
    let stubs = Stubbed::new();
    // The stub cargo lists no test binary, so the step fails after the build.
    let (_, stdout, stderr) = stubs.run(&["test", "cargo-test"], &[]);
    let cargo = stubs.log("cargo");
    let bins = cargo
        .iter()
        .position(|l| l == "build --workspace --bins --tests");
    let tests = cargo.iter().position(|l| l.starts_with("test --workspace"));
    assert!(
        tests.is_some() && bins.is_some_and(|b| Some(b) < tests),
        "cargo-test ran without building the binaries first: {cargo:#?}\n{stdout}\n{stderr}"
    );
    // Its list of test binaries went to the test's own state directory, not to the
    // checkout's .dev, where a real `./dev test` running this test keeps its lists
    // (they were emptied under it, and its fault tests skipped).
    assert!(
        stubs.dir.join("state/test-lanes").is_dir(),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn dev_unknown_command_says_it_is_unknown() {
    let path = bare_path();
    let out = Command::new("/bin/bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dev"))
        .arg("nosuch")
        .env_clear()
        .env("PATH", &path)
        .output()
        .expect("run ./dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown command `nosuch`") && stderr.contains("Usage: ./dev"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(path);
}

#[test]
fn dev_demo_help_says_rabbitmq_keeps_running() {
    let path = bare_path();
    let out = Command::new("/bin/bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dev"))
        .args(["demo", "--help"])
        .env_clear()
        .env("PATH", &path)
        .output()
        .expect("run ./dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("RabbitMQ it started keeps running")
            && !stdout.contains("stops everything"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(path);
}

/// The benchmarks' binaries are where cargo puts them: under `CARGO_TARGET_DIR` when it
/// is set. `./dev bench-stream-read` built into it and then ran, or said "not built
/// yet" for, `bench/stream-read/target/release/`'s binary, which was not there; `./dev
/// bench --help` looked in `target/release/` for warren-bench alike. The stub cargo
/// writes the binary it is asked to build under `$CARGO_TARGET_DIR/release`.
#[test]
fn dev_benchmarks_run_and_show_the_help_of_the_binaries_in_cargo_target_dir() {
    let stubs = Stubbed::new();
    write_script(
        &stubs.dir.join("bin/cargo"),
        r#"echo "$*" >>"$STUB_LOG/cargo"
[ "$1" = build ] || exit 0
mkdir -p "$CARGO_TARGET_DIR/release"
bin=$CARGO_TARGET_DIR/release/warren-bench-stream-read
printf '#!/bin/sh\ncase "$1" in --help) echo "stream-read stub usage: --messages N";; *) echo "stream-read stub ran: $*";; esac\n' >"$bin"
chmod +x "$bin""#,
    );
    let target = stubs.dir.join("target");
    let target_env = ("CARGO_TARGET_DIR", target.to_str().expect("utf-8 path"));
    // A broker at an address other than 127.0.0.1 or localhost: `./dev` checks no
    // plugin of this machine's RabbitMQ for it (the stream protocol's port 5552 here).
    let broker = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let amqp = format!(
        "amqp://127.0.0.2:{}/%2f",
        broker.local_addr().expect("addr").port()
    );
    let envs = [target_env, ("AMQP_ADDR", amqp.as_str())];

    let (ok, stdout, stderr) = stubs.run(&["bench-stream-read", "--help"], &envs);
    assert!(ok && stdout.contains("not built yet"), "{stdout}\n{stderr}");

    let (ok, stdout, stderr) = stubs.run(&["bench-stream-read", "--messages", "5"], &envs);
    assert!(
        stubs
            .log("cargo")
            .contains(&"build --release --quiet".to_string()),
        "{:#?}",
        stubs.log("cargo")
    );
    assert!(
        ok && stdout.contains("stream-read stub ran: --messages 5"),
        "./dev bench-stream-read did not run the binary it built:\n{stdout}\n{stderr}"
    );

    let (ok, stdout, stderr) = stubs.run(&["bench-stream-read", "--help"], &envs);
    assert!(
        ok && stdout.contains("stream-read stub usage: --messages N")
            && !stdout.contains("not built yet"),
        "{stdout}\n{stderr}"
    );

    write_script(
        &target.join("release/warren-bench"),
        r#"echo "warren-bench stub usage: --targets""#,
    );
    let (ok, stdout, stderr) = stubs.run(&["bench", "--help"], &envs);
    assert!(
        ok && stdout.contains("warren-bench stub usage: --targets")
            && !stdout.contains("not built yet"),
        "{stdout}\n{stderr}"
    );
}

/// The names of the environment variables the tests' library and tests read: the
/// literals given to `env::var`, `var_os` and `env_number`, and every `"WARREN_…"`
/// literal of tests/src (binary lookups take lists of them).
fn env_vars_the_tests_read() -> std::collections::BTreeSet<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut names = std::collections::BTreeSet::new();
    for dir in ["src", "tests"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            for (at, _) in text.match_indices('"') {
                let rest = &text[at + 1..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.len() < 3 || !rest[name.len()..].starts_with('"') {
                    continue;
                }
                let before = &text[..at];
                let read = ["var(", "var_os(", "env_number("]
                    .iter()
                    .any(|f| before.ends_with(f));
                if read || (dir == "src" && name.starts_with("WARREN_")) {
                    names.insert(name);
                }
            }
        }
    }
    names
}

#[test]
fn dev_help_and_readme_name_every_environment_variable_the_tests_read() {
    let names = env_vars_the_tests_read();
    assert!(names.contains("WARREN_MANAGEMENT_URL"), "{names:?}");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let development = readme
        .split("\n## Development\n")
        .nth(1)
        .expect("README has a Development section");
    let development = development.split("\n## ").next().unwrap_or(development);
    let path = bare_path();
    let help = Command::new("/bin/bash")
        .arg(root.join("dev"))
        .arg("help")
        .env_clear()
        .env("PATH", &path)
        .output()
        .expect("run ./dev");
    let help = String::from_utf8_lossy(&help.stdout);
    let _ = std::fs::remove_dir_all(path);
    for name in &names {
        assert!(
            development.contains(name.as_str()),
            "README's Development section does not name {name}"
        );
        assert!(
            help.contains(name.as_str()),
            "./dev help does not name {name}"
        );
    }
}

#[test]
fn dev_demo_tenants_uses_amqp_addr_and_stops_at_once_when_a_gateway_exits() {
    let stubs = Stubbed::new();
    let release = stubs.dir.join("target/release");
    std::fs::create_dir_all(&release).expect("target dir");
    write_script(
        &release.join("warren-gateway"),
        r#"echo "$*" >>"$STUB_LOG/gateway"
if [ -n "${STUB_GATEWAY_FAILS:-}" ]; then echo "gateway stub: cannot reach the broker" >&2; exit 1; fi
echo READY; exec sleep 30"#,
    );
    write_script(
        &release.join("warren-demo-service"),
        r#"echo "$*" >>"$STUB_LOG/service"; exec sleep 30"#,
    );
    let target = stubs.dir.join("target");
    let target = target.to_str().expect("utf-8 path");
    let uri = format!(
        "--amqp-uri amqp://127.0.0.1:{}/%2f ",
        stubs.broker.local_addr().expect("addr").port()
    );

    // A gateway that exits: the demo stops at once, with its log.
    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = stubs.run(
        &["demo-tenants"],
        &[("CARGO_TARGET_DIR", target), ("STUB_GATEWAY_FAILS", "1")],
    );
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "./dev demo-tenants waited {:?} for a gateway that had exited",
        started.elapsed()
    );
    assert!(
        stderr.contains("gateway stub: cannot reach the broker") && stderr.contains(".err"),
        "the gateway's error is not shown, nor its log file named:\n{stdout}\n{stderr}"
    );

    // Gateways that start: every gateway and worker is given AMQP_ADDR.
    let _ = std::fs::remove_file(stubs.dir.join("log/gateway"));
    let _ = std::fs::remove_file(stubs.dir.join("log/service"));
    let mut demo = stubs
        .command(&["demo-tenants"], &[("CARGO_TARGET_DIR", target)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ./dev");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (stubs.log("gateway").len() < 2 || stubs.log("service").len() < 2)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("/bin/kill")
        .args(["-TERM", &demo.id().to_string()])
        .status();
    let _ = demo.wait();
    let (gateways, workers) = (stubs.log("gateway"), stubs.log("service"));
    assert_eq!(
        (gateways.len(), workers.len()),
        (2, 2),
        "{gateways:#?} {workers:#?}"
    );
    for args in gateways.iter().chain(&workers) {
        assert!(args.contains(&uri), "started without {uri}: {args}");
    }
}

/// `sdk-wasm/test.sh` and `bench/smoke.sh` build what they start with the very command of
/// `./dev test`'s bins step: a narrower build resolves other features, so after the bins
/// step they compiled lapin, serde and the gateway again (48 s in bench smoke) and
/// replaced the binaries the other steps had tested.
#[test]
fn the_scripts_build_what_the_bins_step_built() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dev = std::fs::read_to_string(root.join("dev")).unwrap();
    let build = dev
        .lines()
        .find_map(|l| l.trim().strip_prefix("step bins "))
        .expect("./dev has no bins step");
    for script in ["sdk-wasm/test.sh", "bench/smoke.sh"] {
        let text = std::fs::read_to_string(root.join(script)).unwrap();
        let builds: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains("cargo build"))
            .collect();
        assert!(
            !builds.is_empty() && builds.iter().all(|l| l.contains(build)),
            "{script} builds otherwise than the bins step (`{build}`): {builds:#?}"
        );
    }
}

/// The SDK's size budget: `sdk-wasm/size.sh` fails over 30 KB gzipped, or, with
/// `WARREN_SDK_SIZE_BUDGET=warn`, says so and succeeds. `./dev demo` builds the
/// package that way: the size depends on the Rust toolchain (std is rebuilt from its
/// source), and a user's newer Rust that built a few bytes more stopped the demo
/// before anything started. `./dev test` enforces it.
#[test]
fn the_sdk_size_budget_fails_the_build_for_tests_and_only_warns_for_the_demo() {
    use std::io::Read;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pkg = std::env::temp_dir().join(format!(
        "warren-sdk-size-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&pkg).expect("temp dir");
    let mut noise = vec![0u8; 40_000];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut noise))
        .expect("random bytes");
    let size = |wasm: &[u8], mode: &str| {
        std::fs::write(pkg.join("warren_sdk_bg.wasm"), wasm).expect("wasm");
        std::fs::write(pkg.join("warren_sdk.js"), "export default 1;\n").expect("js");
        let out = Command::new(root.join("sdk-wasm/size.sh"))
            .arg(&pkg)
            .env("WARREN_SDK_SIZE_BUDGET", mode)
            .output()
            .expect("size.sh runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = size(&noise, "enforce");
    assert!(!ok && err.contains("error: over the size budget"), "{err}");
    let (ok, err) = size(&noise, "warn");
    assert!(ok && err.contains("warning: over the size budget"), "{err}");
    let (ok, err) = size(&noise[..1_000], "enforce");
    assert!(ok && !err.contains("over the size budget"), "{err}");
    let (ok, err) = size(&noise[..1_000], "sometimes");
    assert!(
        !ok && err.contains("enforce (the default) or warn"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&pkg);

    let dev = std::fs::read_to_string(root.join("dev")).expect("dev");
    let demo = &dev[dev.find("cmd_demo() {").expect("cmd_demo")..];
    assert!(
        demo.contains("WARREN_SDK_SIZE_BUDGET=warn sdk-wasm/build.sh"),
        "./dev demo builds the SDK with the budget only warning"
    );
    let test_step = dev
        .lines()
        .find(|l| l.contains("step sdk-build"))
        .expect("the sdk-build step");
    assert!(!test_step.contains("WARREN_SDK_SIZE_BUDGET"), "{test_step}");
}
