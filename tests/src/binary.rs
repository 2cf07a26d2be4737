//! Locating the workspace's binaries for tests that run them as child processes, and
//! the command that runs one.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// The path of binary `bin` of workspace package `package`: the first of `env_vars`
/// that is set and names an existing file, else built with `cargo build` into the
/// profile directory of the running test binary (`target/<profile>`, `--release`
/// when that profile is `release`).
///
/// Blocking (it may run cargo): call it from `spawn_blocking` and cache the result.
///
/// # Panics
///
/// When cargo cannot be run, the build fails, or the binary is missing after it.
pub fn workspace_binary(package: &str, bin: &str, env_vars: &[&str]) -> PathBuf {
    for var in env_vars {
        if let Some(path) = std::env::var_os(var).map(PathBuf::from) {
            if path.exists() {
                return path;
            }
        }
    }
    let exe = std::env::current_exe().expect("the test binary path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf();
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building {bin} failed");
    let path = profile_dir.join(bin);
    assert!(path.exists(), "{} exists after the build", path.display());
    path
}

/// A command running `binary` as a test's child: stdin closed, stdout piped (for its
/// `READY` line), its log on the test's stderr filtered by the environment variable
/// `log_var` (default `warn`), killed when dropped.
pub fn child_command(binary: &Path, log_var: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .env(
            "RUST_LOG",
            std::env::var(log_var).unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}
