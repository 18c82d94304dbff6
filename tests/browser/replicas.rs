//! Two gateway replicas on one Redis (`store.backend = "redis"`), in real Chromium:
//! both are processes of the real binary, and a tiny round-robin TCP proxy in front
//! of them sends each new connection to the next replica (the replicas close idle
//! keep-alive connections after 100 ms, so a tab's requests keep changing replica).
//! One tab keeps one session across navigations, heartbeats and the countdown;
//! killing one replica (SIGKILL) mid-test loses nothing; the `start` and `end` hooks
//! arrive once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::common::process::{self, Gate};
use crate::common::redis::RedisServer;
use crate::common::{metric_value, metrics_of};
use crate::harness::{wait_until, Browser, LogEntry, PageInfo};

/// Round-robin over `backends`, per connection; a backend that refuses is skipped.
struct RoundRobin {
    addr: SocketAddr,
    /// Connections handed to each backend.
    counts: Arc<Vec<AtomicUsize>>,
    stop: CancellationToken,
}

impl RoundRobin {
    async fn start(backends: Vec<SocketAddr>) -> RoundRobin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(
            backends
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect::<Vec<_>>(),
        );
        let stop = CancellationToken::new();
        let (counts2, stop2) = (Arc::clone(&counts), stop.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let (client, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let first = next;
                next = next.wrapping_add(1);
                let (backends, counts) = (backends.clone(), Arc::clone(&counts2));
                tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let which = (first + i) % backends.len();
                        if let Ok(mut upstream) = TcpStream::connect(backends[which]).await {
                            counts[which].fetch_add(1, Ordering::Relaxed);
                            let mut client = client;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        RoundRobin { addr, counts, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn count(&self, backend: usize) -> usize {
        self.counts[backend].load(Ordering::Relaxed)
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A replica's config file in `dir`: tab mode, a 3 s timeout with a 2 s countdown,
/// a heartbeat a second, idle keep-alive connections closed after 100 ms, hooks to
/// the app, sessions on `redis`.
fn replica_config(dir: &Path, name: &str, app: &App, redis: &RedisServer) -> PathBuf {
    process::replica_config(
        dir,
        name,
        &app.url(),
        &redis.url(),
        r#"idle_timeout = "100ms""#,
        r#"
[session]
mode = "tab"
timeout = "3s"
countdown = "2s"
abandon = "20s"

[browser]
heartbeat = "1s"

[hooks]
start = "/hooks/start"
end = "/hooks/end"
"#,
    )
}

/// One sample of `replica`'s metrics (0 when not rendered yet).
async fn metric(replica: &Gate, sample: &str) -> f64 {
    metric_value(&metrics_of(replica.admin).await, sample).unwrap_or(0.0)
}

/// Heartbeats `replica` has received.
async fn heartbeats(replica: &Gate) -> f64 {
    metric(replica, "sessiongate_heartbeats_total").await
}

/// Reloads until the app serves a page other than page `after`, up to 3 times: a
/// reload that meets a connection the killed replica left behind gets Chromium's
/// error page (the proxy's connection to it was reset), and a person would reload
/// again. The page's handle and the page.
async fn reload_until_served(
    browser: &Browser,
    after: Option<u64>,
    context: &str,
) -> (String, PageInfo) {
    for _ in 0..3 {
        // The load's own outcome is what the page then shows; an error page is
        // retried below.
        let _ = browser.client.refresh().await;
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(page) = browser.page().await {
                    if page.loaded && page.seq.is_some() && page.seq != after {
                        return page;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if let Ok(page) = served {
            let handle = page.handle.clone().unwrap_or_default();
            assert!(
                crate::harness::is_uuid(&handle),
                "{context}: served without a session handle ({handle:?})"
            );
            return (handle, page);
        }
    }
    panic!("{context}: no app page after 3 reloads");
}

/// A failed load of a reserved endpoint (a heartbeat) on a connection the killed
/// replica reset: Chromium logs it; the agent retries.
fn reset_by_the_kill(entry: &LogEntry) -> bool {
    entry.source == "network"
        && entry.message.contains("/__sessiongate/")
        && entry.message.contains("net::ERR_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_alternating_between_two_replicas_keeps_one_session_through_a_replica_kill() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = [
        Gate::start(&replica_config(dir.path(), "a", &app, &redis), &[]).await,
        Gate::start(&replica_config(dir.path(), "b", &app, &redis), &[]).await,
    ];
    let proxy = RoundRobin::start(replicas.iter().map(|r| r.listen).collect()).await;
    let browser = Browser::launch().await;

    browser.goto(&proxy.url("/page")).await;
    let (handle, page) = browser.wait_handle(None, "first visit").await;
    browser.wait_agent("first visit").await;
    let mut seq = page.seq;
    for i in 0..4 {
        browser.reload().await;
        let (again, page) = browser.wait_handle(seq, &format!("reload {i}")).await;
        assert_eq!(again, handle, "reload {i} keeps the tab's session");
        seq = page.seq;
        browser.click("#link").await;
        let (again, page) = browser.wait_handle(seq, &format!("link {i}")).await;
        assert_eq!(again, handle, "link {i} keeps the tab's session");
        seq = page.seq;
    }
    assert!(
        proxy.count(0) > 0 && proxy.count(1) > 0,
        "both replicas served: {} / {}",
        proxy.count(0),
        proxy.count(1)
    );
    // Heartbeats, wherever they land, keep it.
    wait_until("heartbeats", Duration::from_secs(10), || async {
        let [a, b] = &replicas;
        (heartbeats(a).await + heartbeats(b).await >= 2.0).then_some(())
    })
    .await;

    // The replica that created the session is killed mid-test: the tab carries on
    // on the other.
    let created = r#"sessiongate_sessions_created_total{kind="new"}"#;
    let creator = usize::from(metric(&replicas[1], created).await == 1.0);
    assert_eq!(
        metric(&replicas[creator], created).await,
        1.0,
        "one creation"
    );
    let [a, b] = &mut replicas;
    let (killed, left) = if creator == 0 { (a, b) } else { (b, a) };
    killed.signal(libc::SIGKILL);
    killed.exit_within(Duration::from_secs(5)).await;
    let before = heartbeats(left).await;
    let (again, page) = reload_until_served(&browser, seq, "after a replica was killed").await;
    assert_eq!(again, handle, "no session lost with a replica");
    seq = page.seq;
    browser.click("#link").await;
    let (again, _) = browser.wait_handle(seq, "a link after the kill").await;
    assert_eq!(again, handle, "navigation after the kill keeps the session");
    wait_until(
        "heartbeats on the replica left",
        Duration::from_secs(10),
        || async { (heartbeats(left).await > before).then_some(()) },
    )
    .await;

    // Idle: the countdown shows, then the session ends — once.
    browser
        .wait_agent_state("warning", Duration::from_secs(10), "idle tab")
        .await;
    wait_until("the end hook", Duration::from_secs(15), || async {
        app.hits()
            .iter()
            .any(|h| h.path() == "/hooks/end")
            .then_some(())
    })
    .await;
    browser
        .wait_agent_state("ended", Duration::from_secs(5), "idle tab")
        .await;
    // A second `end` would come from the sweeper (every 500 ms) or a late retry.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let hits = app.hits();
    for hook in ["/hooks/start", "/hooks/end"] {
        let n = hits
            .iter()
            .filter(|h| h.path() == hook && h.session.as_deref() == Some(&*handle))
            .count();
        assert_eq!(n, 1, "{hook} for the tab's session: {n} times");
    }
    let starts = hits.iter().filter(|h| h.path() == "/hooks/start").count();
    assert_eq!(starts, 1, "one session for the one tab");
    browser
        .assert_no_console_errors_except("replicas", |entry| {
            crate::harness::reserved_401(entry) || reset_by_the_kill(entry)
        })
        .await;
    browser.close().await;
}
