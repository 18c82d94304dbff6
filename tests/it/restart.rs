//! Restarts under load, against the real binary: a hand-off to a new process
//! (`persist.handoff`, `run --takeover`) while 16 keep-alive connections loop
//! requests fails none of them, and SIGTERM under load drains within
//! `listen.drain_timeout`, exits 0 and leaves the final snapshot.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::process::{Gate, WAIT};
use crate::common::Upstream;
use crate::persist::{snapshot_path, write_config};

const WORKERS: usize = 16;

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// A request on a reused keep-alive connection that the server closed before
    /// sending a byte of the answer, sent again on a new connection — what browsers
    /// and HTTP clients do (RFC 9112 §9.3.1) for the idle-close race.
    resent: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(why);
        }
    }
}

/// Reads one response; `Err((bytes read, why))`.
async fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool), (usize, String)> {
    let mut head = Vec::new();
    let mut line = String::new();
    let mut read = 0;
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) => return Err((read, "closed".into())),
            Ok(n) => read += n,
            Err(e) => return Err((read, e.to_string())),
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_ascii_lowercase());
    }
    let status: u16 = head
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or((read, format!("no status line: {head:?}")))?;
    let header = |name: &str| {
        head.iter().skip(1).find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
    };
    let close = header("connection").is_some_and(|v| v.contains("close"));
    if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| (read, "bad length".to_string()))?;
        let mut body = vec![0; length];
        reader
            .read_exact(&mut body)
            .await
            .map_err(|e| (read, e.to_string()))?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .await
                .map_err(|e| (read, e.to_string()))?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| (read, "bad chunk".to_string()))?;
            let mut chunk = vec![0; size + 2];
            reader
                .read_exact(&mut chunk)
                .await
                .map_err(|e| (read, e.to_string()))?;
            if size == 0 {
                break;
            }
        }
    }
    Ok((status, close))
}

/// Loops `GET /load` with `cookie` on a keep-alive connection until `stop`.
async fn worker(addr: SocketAddr, cookie: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let request = format!("GET /load HTTP/1.1\r\nHost: load\r\nCookie: {cookie}\r\n\r\n");
    let mut conn: Option<(BufReader<TcpStream>, bool)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (mut reader, reused) = match conn.take() {
            Some(open) => open,
            None => match tokio::time::timeout(WAIT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => (BufReader::new(stream), false),
                Ok(Err(e)) => {
                    tally.fail(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => {
                    tally.fail("connect timed out".into());
                    continue;
                }
            },
        };
        if let Err(e) = reader.get_mut().write_all(request.as_bytes()).await {
            if reused {
                tally.resent.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.fail(format!("write on a new connection: {e}"));
            }
            continue;
        }
        match tokio::time::timeout(WAIT, read_response(&mut reader)).await {
            Ok(Ok((200, close))) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if !close {
                    conn = Some((reader, true));
                }
            }
            Ok(Ok((status, _))) => tally.fail(format!("status {status}")),
            Ok(Err((0, _))) if reused => {
                tally.resent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err((read, why))) => {
                tally.fail(format!("{why} after {read} bytes (reused: {reused})"))
            }
            Err(_) => tally.fail("no answer in time".into()),
        }
    }
}

/// One session cookie per worker (browser mode), minted before the load starts.
async fn cookies(gate: &Gate, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let response = reqwest::get(gate.url("/mint")).await.unwrap();
        let pairs: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        out.push(pairs.join("; "));
    }
    out
}

fn start_load(
    addr: SocketAddr,
    cookies: Vec<String>,
) -> (
    Arc<AtomicBool>,
    Arc<Tally>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = cookies
        .into_iter()
        .map(|cookie| tokio::spawn(worker(addr, cookie, Arc::clone(&stop), Arc::clone(&tally))))
        .collect();
    (stop, tally, workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_under_load_fails_no_request_and_keeps_every_session() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("handoff.sock");
    let config = write_config(
        dir.path(),
        &upstream,
        "mode = \"browser\"",
        &format!("interval = \"1h\"\nhandoff = \"{}\"", socket.display()),
    );
    let mut old = Gate::start(&config, &["--takeover"]).await; // nothing to take over: binds
    let cookies = cookies(&old, WORKERS).await;
    let (stop, tally, workers) = start_load(old.listen, cookies);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    let handoff_at = Instant::now();
    let new = Gate::start(&config, &["--takeover"]).await;
    assert_eq!(new.listen, old.listen, "the same listening socket");
    assert_eq!(new.admin, old.admin);
    let status = old.exit_within(Duration::from_secs(8)).await;
    assert!(status.success(), "the old process exits 0: {status}");
    let old_gone = handoff_at.elapsed();
    let at_exit = tally.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let (ok, failed, resent) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.resent.load(Ordering::Relaxed),
    );
    eprintln!(
        "hand-off under load: {ok} requests ok ({before} before the hand-off, {} during it, {} after the old process exited), {failed} failed, {resent} resent after an idle keep-alive close; old process gone {old_gone:?} after the new one started",
        at_exit - before,
        ok - at_exit
    );
    assert_eq!(failed, 0, "{:?}", tally.failures.lock().unwrap());
    // Draining answers with `Connection: close` instead of cutting idle keep-alive
    // connections: no request had to be sent again.
    assert_eq!(resent, 0, "requests cut off by an idle keep-alive close");
    assert!(
        ok - at_exit > 100,
        "the new process served the load: {ok} {at_exit}"
    );
    // Every request went out with one of the 16 sessions minted before: no session
    // was lost (a lost one would have been minted anew).
    let handles: HashSet<String> = upstream
        .requests()
        .iter()
        .filter(|r| r.uri == "/load")
        .filter_map(|r| r.header("x-session"))
        .collect();
    assert_eq!(handles.len(), WORKERS);
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_within_drain_timeout_and_writes_the_final_snapshot() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &upstream,
        "mode = \"browser\"",
        "interval = \"1h\"",
    );
    let mut gate = Gate::start(&config, &[]).await;
    let cookies = cookies(&gate, WORKERS).await;
    let slow_cookie = cookies[0].clone();
    let (stop, tally, workers) = start_load(gate.listen, cookies);
    let slow_url = gate.url("/slow?ms=1500");
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .get(slow_url)
            .header("cookie", slow_cookie)
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        std::fs::metadata(snapshot_path(dir.path())).is_err(),
        "no snapshot yet (interval 1h)"
    );

    let signalled = Instant::now();
    gate.signal(libc::SIGTERM);
    let status = gate.exit_within(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(status.success(), "exit 0: {status}");
    // drain_timeout is 5 s; the slow request needed < 1 s more.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!("SIGTERM under load: {ok} requests before, exited 0 after {took:?}");
    assert!(ok > 100, "{ok}");
    let snapshot = sessiongate::session::persist::read_file(&snapshot_path(dir.path()))
        .expect("a readable snapshot")
        .expect("the final snapshot");
    assert_eq!(snapshot.sessions.len(), WORKERS);
}

#[tokio::test]
async fn systemd_socket_activation_serves_on_the_socket_passed_as_fd_3() {
    use std::os::fd::AsRawFd;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "mode = \"browser\"", "");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    // As systemd does: the socket as fd 3, LISTEN_PID naming the service's own pid
    // (the shell's, which `exec` hands to the binary).
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .arg(Gate::bin())
        .arg("--config")
        .arg(&config)
        .arg("run");
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let gate = Gate::spawn(command).await;
    drop(listener);
    assert_eq!(gate.listen, addr, "serves on the passed socket");
    assert_ne!(gate.admin, addr);
    let answer = reqwest::get(gate.url("/")).await.unwrap();
    assert_eq!(answer.status(), 200);
}
