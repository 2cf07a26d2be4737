//! `./dev <command> --help` prints what the command does and exits at once, before
//! anything is installed, started or built: run here with a `PATH` holding only the
//! few tools the help needs (no apt-get, cargo, rabbitmqctl). `./dev bench --help` and
//! `./dev bench-stream-read --help` installed packages, started RabbitMQ and built in
//! release mode before the help reached the benchmark.

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
