//! A throwaway `redis-server` per test: started on a free loopback port with no
//! persistence (`--save ''`, `--appendonly no`), stoppable and restartable on the same
//! port (for outage tests), and killed by its own PID when dropped.
//!
//! The binary is `$REDIS_SERVER` if set, else `redis-server` on `PATH` (Debian package
//! `redis-server`; `scripts/test` and `.ci/run` install it when missing).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running (or deliberately stopped) `redis-server` owned by one test.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Extra arguments (Cluster mode), and the directory they write to.
    extra: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        // A free port can be taken by someone else between probe and bind: retry.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                extra: Vec::new(),
                _dir: None,
            };
            if server.try_spawn().await {
                return server;
            }
        }
        panic!("redis-server did not come up on a free loopback port (is it installed?)");
    }

    /// `redis://127.0.0.1:<port>` — the `store.url` for a gateway under test.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server (SIGKILL by PID: an outage, not a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as
    /// with a Redis stuck or cut off behind a firewall that drops packets.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("a running server");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Restarts a stopped server on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped server");
        assert!(
            self.try_spawn().await,
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Sends one inline command and returns the raw RESP reply.
    pub async fn command(&self, line: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(self.addr()).await?;
        stream.write_all(format!("{line}\r\n").as_bytes()).await?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    async fn try_spawn(&mut self) -> bool {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(program)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false; // exited: port taken or bad binary
                }
            }
            if matches!(self.command("PING").await, Ok(reply) if reply.starts_with("+PONG")) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop();
        false
    }
}

/// A Redis Cluster of `masters` nodes (no replicas) on free loopback ports, each a
/// [`RedisServer`] with `--cluster-enabled yes` and its node file in a directory of
/// its own, joined by `redis-cli --cluster create`; ready once every node reports
/// `cluster_state:ok`.
pub async fn start_cluster(masters: usize) -> Vec<RedisServer> {
    let mut nodes = Vec::new();
    for _ in 0..masters {
        let mut started = None;
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a directory for the node");
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                extra: vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    dir.path().join("nodes.conf").display().to_string(),
                    "--dir".into(),
                    dir.path().display().to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ],
                _dir: Some(dir),
            };
            if server.try_spawn().await {
                started = Some(server);
                break;
            }
        }
        nodes.push(started.expect("a cluster node comes up"));
    }
    let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
    let addresses: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let status = Command::new(cli)
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli runs (package redis-tools)");
    assert!(status.success(), "redis-cli --cluster create failed");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut ok = true;
        for node in &nodes {
            let info = node.command("CLUSTER INFO").await.unwrap_or_default();
            ok &= info.contains("cluster_state:ok");
        }
        if ok {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}
