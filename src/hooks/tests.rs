//! The hooks against a real loopback HTTP server that records every request and
//! answers from a per-test script. Budgets and backoffs are short so the whole file
//! runs in about a second.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::*;
use crate::config::Duration as Cfg;
use crate::session::{CreatedKind, EndReason, Millis, Session, State};

/// One request the backend received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    /// The session header's value.
    session: Option<String>,
    content_type: Option<String>,
    body: String,
    at: Instant,
    /// How many requests to the same path came before this one.
    nth: usize,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// How the backend answers one request.
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

fn ok() -> Answer {
    answer(200, "{}")
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

fn slow(delay: Duration) -> Answer {
    Answer { delay, ..ok() }
}

type Script = dyn Fn(&Seen) -> Answer + Send + Sync;

struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    /// Serves on an ephemeral loopback port; `header` is the session header to record.
    async fn start(
        header: &'static str,
        script: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, script) = (Arc::clone(&log), Arc::clone(&script));
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (log, script) = (Arc::clone(&log), Arc::clone(&script));
                        async move { Ok::<_, Infallible>(respond(req, header, &log, &*script).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

async fn respond(
    req: Request<Incoming>,
    header: &str,
    log: &Mutex<Vec<Seen>>,
    script: &Script,
) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (session, content_type) = (text(header), text("content-type"));
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let seen = {
        let mut log = log.lock().unwrap();
        let nth = log.iter().filter(|s| s.path == path).count();
        let seen = Seen {
            path,
            session,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
            at,
            nth,
        };
        log.push(seen.clone());
        seen
    };
    let answer = script(&seen);
    tokio::time::sleep(answer.delay).await;
    Response::builder()
        .status(answer.status)
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap()
}

/// A config whose upstream is `upstream` with these hooks and budget.
fn config(upstream: &str, start: &str, timeout: &str, end: &str, budget_ms: u64) -> Config {
    let mut config = Config::default();
    config.upstream.url = upstream.to_string();
    config.hooks.start = start.to_string();
    config.hooks.timeout = timeout.to_string();
    config.hooks.end = end.to_string();
    config.hooks.budget = Cfg::from_millis(budget_ms);
    config
}

fn fast() -> Tuning {
    Tuning {
        end_backoff: Duration::from_millis(10),
        ..Tuning::default()
    }
}

fn session(clock: &Clock, handle: Handle, parent: Option<Handle>) -> Session {
    Session::new(handle, parent, 0, 120_000, clock.now())
}

struct Rig {
    hooks: Hooks,
    metrics: Metrics,
    clock: Clock,
}

impl Rig {
    fn new(config: &Config, tuning: Tuning) -> Rig {
        let clock = Clock::new();
        let metrics = Metrics::new().unwrap();
        let hooks = Hooks::with_tuning(config, clock, &metrics, tuning).unwrap();
        Rig {
            hooks,
            metrics,
            clock,
        }
    }

    fn session(&self, parent: Option<Handle>) -> Session {
        session(&self.clock, Handle::new_v4(), parent)
    }

    fn start(&self, session: &Session) {
        self.hooks.observe(&SessionEvent::Started {
            session,
            kind: CreatedKind::New,
        });
    }

    fn warn(&self, session: &Session) {
        self.hooks.observe(&SessionEvent::Idle { session });
    }

    fn end(&self, session: &Session, reason: EndReason) -> Millis {
        let at = self.clock.now();
        self.hooks.observe(&SessionEvent::Ended {
            session,
            reason,
            at,
            was: State::Active,
        });
        at
    }

    fn calls(&self, hook: &str, outcome: &str) -> u64 {
        self.metrics
            .hook_calls
            .with_label_values(&[hook, outcome])
            .get()
    }

    async fn drain(&self) {
        assert!(
            self.hooks.drain(Duration::from_secs(5)).await,
            "not drained"
        );
    }
}

#[tokio::test]
async fn each_event_posts_its_json_with_the_session_header() {
    let backend = Backend::start("x-app-session", |_| ok()).await;
    let mut config = config(
        &backend.url(),
        "/hooks/start",
        "/hooks/timeout",
        "/hooks/end",
        2000,
    );
    config.upstream.header = "X-App-Session".into();
    let rig = Rig::new(&config, fast());
    let parent = Handle::new_v4();
    let s = rig.session(Some(parent));

    rig.start(&s);
    rig.warn(&s);
    rig.hooks.observe(&SessionEvent::Idle { session: &s });
    rig.hooks.observe(&SessionEvent::Extended { session: &s });
    let ended_at = rig.end(&s, EndReason::Admin);
    rig.drain().await;

    let seen = backend.seen();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/hooks/start",
            "/hooks/timeout",
            "/hooks/timeout",
            "/hooks/end"
        ]
    );
    for (request, event) in seen.iter().zip(["start", "timeout", "timeout", "end"]) {
        assert_eq!(request.session.as_deref(), Some(&*s.handle().to_string()));
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
        let json = request.json();
        let fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            fields.len(),
            7,
            "exactly event, session, parent, reason, created, last_activity, at: {fields:?}"
        );
        assert_eq!(json["event"], event);
        assert_eq!(json["session"], s.handle().to_string());
        assert_eq!(json["parent"], parent.to_string());
        assert_eq!(json["created"], rig.clock.wall(s.created()));
        assert_eq!(json["last_activity"], rig.clock.wall(s.last_activity()));
        assert!(json["at"].as_u64().unwrap() >= rig.clock.wall(s.created()));
        if event == "end" {
            assert_eq!(json["reason"], "admin");
            assert_eq!(json["at"], rig.clock.wall(ended_at));
        } else {
            assert!(json["reason"].is_null());
        }
    }
    assert_eq!(rig.calls("start", "ok"), 1);
    assert_eq!(rig.calls("timeout", "ok"), 2);
    assert_eq!(rig.calls("end", "ok"), 1);
    let page = rig.metrics.render();
    assert!(page.contains("sessiongate_hook_calls_total{hook=\"timeout\",outcome=\"ok\"} 2"));

    // No parent: `null`.
    let orphan = rig.session(None);
    rig.start(&orphan);
    rig.drain().await;
    assert!(backend.seen()[4].json()["parent"].is_null());
}

#[tokio::test]
async fn ready_waits_for_the_start_hook() {
    let backend = Backend::start("x-session", |_| slow(Duration::from_millis(150))).await;
    let rig = Rig::new(
        &config(&backend.url(), "/hooks/start", "", "", 2000),
        fast(),
    );
    let s = rig.session(None);

    rig.start(&s);
    let began = Instant::now();
    rig.hooks.ready(s.handle()).await;
    let waited = began.elapsed();
    assert!(waited >= Duration::from_millis(140), "{waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    assert_eq!(backend.paths(), ["/hooks/start"]);
    assert_eq!(rig.hooks.gates.len(), 0, "a finished start leaves no gate");

    // Nothing pending: at once, for that session and for one never seen.
    let began = Instant::now();
    rig.hooks.ready(s.handle()).await;
    rig.hooks.ready(Handle::new_v4()).await;
    assert!(began.elapsed() < Duration::from_millis(50));
}

#[tokio::test]
async fn ready_is_bounded_by_the_budget() {
    let backend = Backend::start("x-session", |_| slow(Duration::from_secs(5))).await;
    let rig = Rig::new(
        &config(&backend.url(), "/hooks/start", "", "/hooks/end", 200),
        fast(),
    );
    let s = rig.session(None);

    rig.start(&s);
    let began = Instant::now();
    rig.hooks.ready(s.handle()).await;
    let waited = began.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    rig.drain().await;
    assert_eq!(rig.calls("start", "timeout"), 1);
    assert_eq!(rig.calls("start", "ok"), 0);
}

#[tokio::test]
async fn unreachable_hook_is_an_error_not_a_wait() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let rig = Rig::new(&config(&url, "/hooks/start", "", "", 2000), fast());
    let s = rig.session(None);

    rig.start(&s);
    let began = Instant::now();
    rig.hooks.ready(s.handle()).await;
    assert!(began.elapsed() < Duration::from_secs(1));
    rig.drain().await;
    assert_eq!(rig.calls("start", "error"), 1);
}

#[tokio::test]
async fn timeout_handled_calls_back_only_on_2xx_handled_true() {
    let clock = Clock::new();
    let sessions: Vec<Session> = (0..7)
        .map(|_| session(&clock, Handle::new_v4(), None))
        .collect();
    let big = format!(r#"{{"handled": true, "pad": "{}"}}"#, "x".repeat(100_000));
    let answers: HashMap<String, (u16, String)> = sessions
        .iter()
        .map(|s| s.handle().to_string())
        .zip([
            (200, r#"{"handled": true}"#.to_string()),
            (200, r#"{"handled": false}"#.to_string()),
            (200, "not json".to_string()),
            (500, r#"{"handled": true}"#.to_string()),
            (200, "{}".to_string()),
            (200, r#"{"handled": "yes"}"#.to_string()),
            (200, big),
        ])
        .collect();
    let backend = Backend::start("x-session", move |seen| {
        let (status, body) = &answers[seen.session.as_deref().unwrap()];
        answer(*status, body)
    })
    .await;
    let rig = Rig::new(
        &config(&backend.url(), "", "/hooks/timeout", "", 2000),
        fast(),
    );
    let kept = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&kept);
    let handler = move |session: Handle, _: Millis| record.lock().unwrap().push(session);
    rig.hooks.on_timeout_handled(Arc::new(handler)).unwrap();
    assert!(matches!(
        rig.hooks
            .on_timeout_handled(Arc::new(|_: Handle, _: Millis| {})),
        Err(HooksError::HandlerAlreadySet)
    ));

    for s in &sessions {
        rig.warn(s);
    }
    rig.drain().await;
    assert_eq!(backend.seen().len(), 7);
    assert_eq!(*kept.lock().unwrap(), [sessions[0].handle()]);
    assert_eq!(rig.calls("timeout", "ok"), 6);
    assert_eq!(rig.calls("timeout", "error"), 1);
}

#[tokio::test]
async fn end_is_retried_until_it_works() {
    let backend = Backend::start("x-session", |seen| {
        if seen.nth < 2 {
            answer(500, "busy")
        } else {
            ok()
        }
    })
    .await;
    let rig = Rig::new(&config(&backend.url(), "", "", "/hooks/end", 1000), fast());
    let s = rig.session(None);

    rig.end(&s, EndReason::Timeout);
    rig.drain().await;
    let seen = backend.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.body == seen[0].body));
    assert_eq!(seen[0].json()["reason"], "timeout");
    // Backoff 10 ms, then 20 ms.
    assert!(seen[2].at - seen[0].at >= Duration::from_millis(30));
    assert_eq!(rig.calls("end", "error"), 2);
    assert_eq!(rig.calls("end", "ok"), 1);
}

#[tokio::test]
async fn end_gives_up_after_its_attempts_and_not_on_4xx() {
    let failing = Handle::new_v4();
    let backend = Backend::start("x-session", move |seen| {
        if seen.session.as_deref() == Some(&*failing.to_string()) {
            answer(503, "")
        } else {
            answer(404, "")
        }
    })
    .await;
    let rig = Rig::new(&config(&backend.url(), "", "", "/hooks/end", 1000), fast());
    // The backend fails `a` with 503 and everything else (`b`) with 404.
    let a = session(&rig.clock, failing, None);
    let b = rig.session(None);
    rig.end(&a, EndReason::Abandoned);
    rig.end(&b, EndReason::Evicted);
    rig.drain().await;
    let count = |h: &Session| {
        let handle = h.handle().to_string();
        backend
            .seen()
            .iter()
            .filter(|r| r.session.as_deref() == Some(&*handle))
            .count()
    };
    assert_eq!(count(&a), 3, "503 is retried up to the attempts");
    assert_eq!(count(&b), 1, "404 is not retried");
    assert_eq!(rig.calls("end", "error"), 4);
}

#[tokio::test]
async fn end_waits_for_a_slow_start() {
    let backend = Backend::start("x-session", |seen| {
        if seen.path == "/hooks/start" {
            slow(Duration::from_millis(300))
        } else {
            ok()
        }
    })
    .await;
    let rig = Rig::new(
        &config(
            &backend.url(),
            "/hooks/start",
            "/hooks/timeout",
            "/hooks/end",
            2000,
        ),
        fast(),
    );
    let s = rig.session(None);

    rig.start(&s);
    rig.warn(&s);
    rig.end(&s, EndReason::Ended);
    rig.drain().await;
    let seen = backend.seen();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/hooks/start", "/hooks/timeout", "/hooks/end"]);
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(290),
        "timeout went before start answered"
    );
}

#[tokio::test]
async fn sessions_do_not_wait_for_each_other() {
    let backend = Backend::start("x-session", |_| slow(Duration::from_millis(200))).await;
    let rig = Rig::new(&config(&backend.url(), "", "", "/hooks/end", 2000), fast());
    let sessions: Vec<Session> = (0..20).map(|_| rig.session(None)).collect();

    let began = Instant::now();
    for s in &sessions {
        rig.end(s, EndReason::Lifetime);
    }
    assert!(
        !rig.hooks.drain(Duration::from_millis(50)).await,
        "drain reports work still in flight"
    );
    rig.drain().await;
    let took = began.elapsed();
    assert_eq!(backend.seen().len(), 20);
    // One after another this would take 20 × 200 ms = 4 s.
    assert!(took < Duration::from_millis(1200), "{took:?}");
    assert_eq!(rig.calls("end", "ok"), 20);
}

#[tokio::test]
async fn absolute_urls_and_upstream_prefixes() {
    let upstream = Backend::start("x-session", |_| ok()).await;
    let elsewhere = Backend::start("x-session", |_| ok()).await;
    let config = config(
        &format!("{}/app/", upstream.url()),
        "/hooks/start",
        "",
        &format!("{}/elsewhere/end", elsewhere.url()),
        1000,
    );
    let rig = Rig::new(&config, fast());
    let s = rig.session(None);

    rig.start(&s);
    rig.end(&s, EndReason::Upstream);
    rig.drain().await;
    assert_eq!(upstream.paths(), ["/app/hooks/start"]);
    assert_eq!(elsewhere.paths(), ["/elsewhere/end"]);
    let handle = s.handle().to_string();
    assert_eq!(elsewhere.seen()[0].session.as_deref(), Some(&*handle));
}

#[tokio::test]
async fn hooks_off_send_nothing_and_keep_nothing() {
    let backend = Backend::start("x-session", |_| ok()).await;
    let rig = Rig::new(&config(&backend.url(), "", "", "", 1000), fast());
    let s = rig.session(None);

    rig.start(&s);
    assert_eq!(rig.hooks.gates.len(), 0);
    let began = Instant::now();
    rig.hooks.ready(s.handle()).await;
    rig.warn(&s);
    rig.end(&s, EndReason::Admin);
    rig.drain().await;
    assert!(began.elapsed() < Duration::from_millis(100));
    assert!(backend.seen().is_empty());
    assert_eq!(rig.hooks.dropped(), 0);
    for hook in HookKind::ALL {
        assert!(!rig.hooks.enabled(hook));
        for outcome in ["ok", "error", "timeout"] {
            assert_eq!(rig.calls(hook.as_str(), outcome), 0);
        }
    }
}

/// On a current-thread runtime the actor cannot run between these synchronous
/// `observe` calls, so the channel really fills up.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_instead_of_blocking() {
    let backend = Backend::start("x-session", |_| slow(Duration::from_millis(300))).await;
    let tuning = Tuning { queue: 2, ..fast() };
    let rig = Rig::new(
        &config(&backend.url(), "/hooks/start", "", "", 2000),
        tuning,
    );
    let sessions: Vec<Session> = (0..50).map(|_| rig.session(None)).collect();

    let began = std::time::Instant::now();
    for s in &sessions {
        rig.start(s);
    }
    assert!(
        began.elapsed() < Duration::from_millis(50),
        "observe blocked"
    );
    assert_eq!(rig.hooks.dropped(), 48);
    assert_eq!(rig.calls("start", "error"), 48);
    assert_eq!(rig.hooks.gates.len(), 2, "dropped starts leave no gate");

    // A request of a session whose start was dropped does not wait.
    let began = Instant::now();
    rig.hooks.ready(sessions[10].handle()).await;
    assert!(began.elapsed() < Duration::from_millis(50));

    rig.drain().await;
    assert_eq!(backend.seen().len(), 2);
    assert_eq!(rig.calls("start", "ok"), 2);
}

/// Only the first request of a session waits for its start hook; a second one,
/// concurrent with it, goes on at once.
#[tokio::test]
async fn only_the_first_waiter_waits_for_the_start_hook() {
    let backend = Backend::start("x-session", |_| slow(Duration::from_millis(300))).await;
    let rig = Rig::new(
        &config(&backend.url(), "/hooks/start", "", "", 2000),
        fast(),
    );
    let s = rig.session(None);
    rig.start(&s);
    let began = Instant::now();
    // `join!` polls in order: the first `ready` takes the gate.
    let (first, second) = tokio::join!(
        async {
            rig.hooks.ready(s.handle()).await;
            began.elapsed()
        },
        async {
            rig.hooks.ready(s.handle()).await;
            began.elapsed()
        }
    );
    assert!(first >= Duration::from_millis(280), "{first:?}");
    assert!(second < Duration::from_millis(100), "{second:?}");
    rig.drain().await;
    assert_eq!(rig.hooks.gates.len(), 0);
}

/// A flood of hook events past the backlog, while the backend is slow: what waits
/// stays bounded, left-out jobs are counted by hook, `timeout`s go first, and every
/// session's delivered hooks keep their order start → timeout → end.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_past_the_backlog_stays_bounded() {
    let backend = Backend::start("x-session", |_| slow(Duration::from_millis(5))).await;
    let backlog = 32;
    let tuning = Tuning {
        queue: 100_000,
        concurrency: 4,
        backlog,
        ..fast()
    };
    let rig = Rig::new(
        &config(
            &backend.url(),
            "/hooks/start",
            "/hooks/timeout",
            "/hooks/end",
            2000,
        ),
        tuning,
    );
    let sessions: Vec<Session> = (0..2_000).map(|_| rig.session(None)).collect();
    for s in &sessions {
        rig.start(s);
        for _ in 0..5 {
            rig.warn(s);
        }
        rig.end(s, EndReason::Timeout);
    }
    // The actor takes the whole channel in; the schedule holds no more than its bound.
    let mut peak = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        peak = peak.max(rig.hooks.waiting());
    }
    assert!(peak > 0, "the backlog was never used");
    assert!(peak <= 4 * backlog, "{peak} jobs waiting");
    let dropped = |hook: &str| rig.metrics.hook_dropped.with_label_values(&[hook]).get();
    assert!(dropped("start") > 1_000, "{}", dropped("start"));
    // Four of the five timeouts of every session are merged or dropped at least.
    assert!(dropped("timeout") >= 4 * 2_000, "{}", dropped("timeout"));
    assert!(dropped("end") < dropped("start"), "ends are kept longest");

    rig.drain().await;
    assert_eq!(rig.hooks.waiting(), 0);
    let seen = backend.seen();
    let ends = seen.iter().filter(|s| s.path == "/hooks/end").count() as u64;
    assert_eq!(ends, 2_000 - dropped("end"));
    let mut last: HashMap<String, usize> = HashMap::new();
    for call in &seen {
        let rank = ["/hooks/start", "/hooks/timeout", "/hooks/end"]
            .iter()
            .position(|p| *p == call.path)
            .unwrap();
        let session = call.session.clone().unwrap();
        if let Some(before) = last.insert(session, rank) {
            // Timeouts may repeat (below half the backlog); nothing goes backwards.
            assert!(
                before < rank || before == 1 && rank == 1,
                "out of order: {}",
                call.path
            );
        }
    }
}
