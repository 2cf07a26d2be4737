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

/// [`close_gateway_connections`] from async code (on a blocking thread): how many it
/// closed, or `None` when `rabbitmqctl` is not usable here, after
/// [`cannot_check`](crate::env::cannot_check) said so for `what` (it fails the test
/// unless skips are allowed).
pub async fn cut_gateway_connections(what: &str, node: &str) -> Option<usize> {
    let node = node.to_owned();
    let closed = tokio::task::spawn_blocking(move || close_gateway_connections(&node))
        .await
        .expect("the rabbitmqctl task");
    match closed {
        Ok(n) => Some(n),
        Err(why) => {
            crate::env::cannot_check(what, &format!("rabbitmqctl is not usable: {why}"));
            None
        }
    }
}

/// A RabbitMQ user of a test's own (password `pw`, on vhost `/`), deleted when
/// dropped.
pub struct BrokerUser(String);

impl BrokerUser {
    /// Adds user `name` with the `configure`, `write` and `read` permission patterns.
    ///
    /// # Errors
    /// As [`run`] (a broker this machine's `rabbitmqctl` does not reach: in Docker,
    /// elsewhere).
    pub fn add(name: &str, permissions: [&str; 3]) -> Result<BrokerUser, String> {
        run(&["add_user", name, "pw"])?;
        let user = BrokerUser(name.to_owned());
        user.permit(permissions)?;
        Ok(user)
    }

    /// Sets its `configure`, `write` and `read` permission patterns.
    ///
    /// # Errors
    /// As [`run`].
    pub fn permit(&self, [configure, write, read]: [&str; 3]) -> Result<(), String> {
        run(&[
            "set_permissions",
            "-p",
            "/",
            &self.0,
            configure,
            write,
            read,
        ])
        .map(drop)
    }

    /// AMQP URI `uri` (without credentials) with this user's name and password.
    ///
    /// # Panics
    /// When `uri` has no scheme.
    pub fn uri(&self, uri: &str) -> String {
        let (scheme, rest) = uri.split_once("://").expect("an AMQP URI");
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{}:pw@{host}", self.0)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = run(&["delete_user", &self.0]);
    }
}
