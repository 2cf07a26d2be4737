//! `rabbitmqctl` against the local broker, for tests that look at or cut a gateway's
//! broker connections from the broker's side. Each call says why it could not be
//! done (the tool missing, failing, or listing nothing of the gateway), for
//! [`crate::env::cannot_check`].

use std::process::Command;

/// Runs `rabbitmqctl args`; its standard output.
///
/// # Errors
/// When it does not run or fails (with its standard error).
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("`rabbitmqctl {}` did not run: {e}", args.join(" ")))?;
    if !out.status.success() {
        // Debian's wrapper says why it refuses (not root nor rabbitmq) on stdout.
        let said = if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        return Err(format!(
            "`rabbitmqctl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(said).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pids of the broker connections whose client-provided name is gateway `node`'s.
///
/// # Errors
/// As [`run`].
pub fn gateway_connections(node: &str) -> Result<Vec<String>, String> {
    let text = run(&[
        "list_connections",
        "--no-table-headers",
        "-q",
        "pid",
        "client_properties",
    ])?;
    Ok(text
        .lines()
        .filter(|l| l.contains(&format!("warren-gateway {node} ")))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Closes gateway `node`'s broker connections from the broker's side; how many.
///
/// # Errors
/// As [`run`].
pub fn close_gateway_connections(node: &str) -> Result<usize, String> {
    let pids = gateway_connections(node)?;
    for pid in &pids {
        run(&["close_connection", pid, "test: broker connection lost"])?;
    }
    Ok(pids.len())
}
