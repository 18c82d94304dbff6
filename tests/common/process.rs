//! The real `sessiongate` binary as a child process (`sessiongate run` with a config
//! file): its JSON log events (the `sessiongate started` event gives its addresses),
//! signals (SIGTERM, SIGKILL) and exit. Killed when dropped, so a failing test never
//! leaks one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");
/// Bound for anything the binary should do quickly.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running `sessiongate`; killed when dropped.
pub struct Gate {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Gate {
    /// Starts `sessiongate run` with `config` (plus `extra` arguments) and waits for
    /// its JSON `sessiongate started` event.
    pub async fn start(config: &Path, extra: &[&str]) -> Gate {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(config).arg("run").args(extra);
        Gate::spawn(command).await
    }

    /// The binary's path, for commands that wrap it.
    pub fn bin() -> &'static str {
        BIN
    }

    /// Starts `command` (which runs the binary) with a clean environment and waits
    /// for its `sessiongate started` event.
    pub async fn spawn(mut command: Command) -> Gate {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SESSIONGATE_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("the sessiongate binary starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut gate = Gate {
            child,
            lines,
            seen: Vec::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let started = gate.event("sessiongate started").await;
        gate.listen = started["listen"].as_str().unwrap().parse().unwrap();
        gate.admin = started["admin"].as_str().unwrap().parse().unwrap();
        gate
    }

    /// The fields of the next JSON log event with this message.
    pub async fn event(&mut self, message: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => line,
                _ => panic!("no {message:?} event; saw:\n{}", self.seen.join("\n")),
            };
            self.seen.push(line.clone());
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["fields"]["message"] == message {
                return event["fields"].clone();
            }
        }
    }

    /// The fields of a JSON log event with this message seen so far (up to the
    /// last one [`Gate::event`] waited for).
    pub fn saw(&self, message: &str) -> Option<Value> {
        self.seen.iter().find_map(|line| {
            let event: Value = serde_json::from_str(line).ok()?;
            (event["fields"]["message"] == message).then(|| event["fields"].clone())
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id().expect("running")).unwrap();
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                while let Ok(line) = self.lines.try_recv() {
                    self.seen.push(line);
                }
                panic!(
                    "sessiongate did not exit within {within:?}; saw:\n{}",
                    self.seen.join("\n")
                )
            }
        }
    }
}

/// Writes `<dir>/<name>.toml` for a replica process sharing its sessions on the
/// Redis at `redis_url`: loopback ports (`listen` adds `[listen]` keys), JSON logs
/// (which [`Gate`] reads), `upstream_url`, and `sections` (`[session]`, `[hooks]`,
/// ... as the test needs).
pub fn replica_config(
    dir: &Path,
    name: &str,
    upstream_url: &str,
    redis_url: &str,
    listen: &str,
    sections: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"
{listen}

[admin]
address = "127.0.0.1:0"

[upstream]
url = "{upstream_url}"

[log]
format = "json"
level = "info"

[store]
backend = "redis"
url = "{redis_url}"

{sections}
"#
    );
    std::fs::write(&path, text).expect("config written");
    path
}
