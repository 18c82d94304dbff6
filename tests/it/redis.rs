//! Replicas on Redis (`store.backend = "redis"`, issue 17): every test starts its own
//! `redis-server` and two gateways sharing it in front of one recording upstream,
//! and checks that a session minted on one replica is the same session on the
//! other — in both modes, with tickets, challenges, rotation, the admin API, the
//! cookie jar, hooks that fire once, and Redis going away and coming back.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sessiongate::config::{
    Config, CookieJar, Duration as Cfg, OnTimeout, SessionMode, StoreBackend,
};
use sessiongate::server::{self, Running};

use crate::common::redis::RedisServer;
use crate::common::upstream::Recorded;
use crate::common::{client, cookies_of, metric_value, metrics_of, test_config, Upstream};

#[tokio::test]
async fn harness_starts_isolated_servers_and_survives_an_outage() {
    let mut a = RedisServer::start().await;
    let b = RedisServer::start().await;
    assert_ne!(a.url(), b.url(), "each test gets its own server");

    assert_eq!(a.command("SET k 1").await.unwrap(), "+OK\r\n");
    assert_eq!(
        b.command("GET k").await.unwrap(),
        "$-1\r\n",
        "servers share nothing"
    );

    a.stop();
    assert!(
        a.command("PING").await.is_err(),
        "a stopped server refuses connections"
    );
    a.restart().await;
    assert_eq!(
        a.command("GET k").await.unwrap(),
        "$-1\r\n",
        "no persistence across restart"
    );
}

/// One Redis, one upstream, two gateway replicas.
struct Replicas {
    redis: RedisServer,
    upstream: Upstream,
    a: Running,
    b: Running,
}

fn on_redis(config: &mut Config, redis: &RedisServer) {
    config.store.backend = StoreBackend::Redis;
    config.store.url = redis.url();
    config.store.prefix = "test:".into();
}

impl Replicas {
    async fn start(mode: SessionMode, tweak: impl Fn(&mut Config)) -> Replicas {
        let redis = RedisServer::start().await;
        let upstream = Upstream::start().await;
        let replica = || {
            let mut config = test_config(&upstream.url());
            config.session.mode = mode;
            on_redis(&mut config, &redis);
            tweak(&mut config);
            server::start(config)
        };
        let a = replica().await.expect("replica a starts");
        let b = replica().await.expect("replica b starts");
        Replicas {
            redis,
            upstream,
            a,
            b,
        }
    }

    /// The hook calls (`/hooks/...`) the upstream got under `path`.
    fn hooks(&self, path: &str) -> Vec<Recorded> {
        self.upstream
            .requests()
            .into_iter()
            .filter(|q| q.uri.starts_with(path))
            .collect()
    }

    fn count(&self, path: &str) -> usize {
        self.hooks(path).len()
    }
}

/// Sessions that end (`on_timeout = "end"`) after `timeout_ms` idle, with an `end`
/// hook at `/hooks/end`.
fn ending_after(timeout_ms: u64) -> impl Fn(&mut Config) {
    move |c| {
        c.session.timeout = Cfg::from_millis(timeout_ms);
        c.session.on_timeout = OnTimeout::End;
        c.hooks.end = "/hooks/end".into();
    }
}

fn url(gateway: &Running, path: &str) -> String {
    format!("http://{}{}", gateway.public_addr, path)
}

fn admin(gateway: &Running, path: &str) -> String {
    format!("http://{}{}", gateway.admin_addr, path)
}

/// `method` on the admin API's `/sessions/{handle}` of `gateway`, without a body.
async fn on_session(gateway: &Running, method: Method, handle: &str) -> reqwest::Response {
    client()
        .request(method, admin(gateway, &format!("/sessions/{handle}")))
        .send()
        .await
        .unwrap()
}

/// The `X-Session` (and every other header) the upstream got, from `/echo`.
async fn echoed(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn header_in(echo: &Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
}

/// A `browser`-mode session minted on `gateway`: its cookies and handle.
async fn mint(gateway: &Running) -> (String, String) {
    let response = client().get(url(gateway, "/echo")).send().await.unwrap();
    let cookies = cookies_of(&response);
    let echo = echoed(response).await;
    let handle = header_in(&echo, "x-session").expect("a session");
    (cookies, handle)
}

/// The handle the upstream sees for a request with `cookies` to `gateway`.
async fn handle_on(gateway: &Running, cookies: &str) -> Option<String> {
    let response = client()
        .get(url(gateway, "/echo"))
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    header_in(&echoed(response).await, "x-session")
}

#[tokio::test]
async fn a_cookie_session_minted_on_one_replica_is_the_same_on_the_other() {
    let r = Replicas::start(SessionMode::Browser, |_| {}).await;
    let (cookies, handle) = mint(&r.a).await;
    for gateway in [&r.b, &r.a, &r.b] {
        assert_eq!(
            handle_on(gateway, &cookies).await.as_deref(),
            Some(&*handle)
        );
    }
    // The admin API of either replica knows it.
    for gateway in [&r.a, &r.b] {
        let one = client()
            .get(admin(gateway, &format!("/sessions/{handle}")))
            .send()
            .await
            .unwrap();
        assert_eq!(one.status(), StatusCode::OK);
    }
    assert_eq!(r.count("/echo"), 4);
}

#[tokio::test]
async fn an_admin_end_on_one_replica_is_refused_on_the_other_at_once() {
    let r = Replicas::start(SessionMode::Browser, |c| {
        c.hooks.start = "/hooks/start".into();
        c.hooks.end = "/hooks/end".into();
    })
    .await;
    let (cookies, handle) = mint(&r.a).await;
    // Both replicas hold it in their caches now.
    assert_eq!(handle_on(&r.b, &cookies).await.as_deref(), Some(&*handle));
    let ended = on_session(&r.a, Method::DELETE, &handle).await;
    assert_eq!(ended.status(), StatusCode::OK);
    // The invalidation is published; give the subscriber a moment (well under a
    // flush interval), then B must not serve the session.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = handle_on(&r.b, &cookies).await;
    assert_ne!(
        after.as_deref(),
        Some(&*handle),
        "ended on A, still live on B"
    );
    let gone = on_session(&r.b, Method::GET, &handle).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    // A second end on B changes nothing; the end hook came once.
    let again = on_session(&r.b, Method::DELETE, &handle).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ends: Vec<_> = r.hooks("/hooks/end");
    assert_eq!(ends.len(), 1, "one end hook: {ends:?}");
}

/// A `GET` on `gateway`'s admin API: its status and JSON body.
async fn admin_get(gateway: &Running, path: &str) -> (StatusCode, Value) {
    let response = client().get(admin(gateway, path)).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// The handles of a `/sessions` listing page.
fn listed(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["handle"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_admin_api_of_either_replica_lists_patches_and_ends_every_session() {
    let mut r = Replicas::start(SessionMode::Browser, |c| {
        c.hooks.end = "/hooks/end".into();
    })
    .await;
    // Three minted on A, two on B; neither replica has seen the other's.
    let mut handles = Vec::new();
    for gateway in [&r.a, &r.a, &r.a, &r.b, &r.b] {
        handles.push(mint(gateway).await.1);
    }
    let on_a = &handles[0].clone();
    handles.sort();
    for gateway in [&r.a, &r.b] {
        let (status, page) = admin_get(gateway, "/sessions").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["count"], 5, "{page}");
        assert_eq!(
            listed(&page),
            handles,
            "every replica's sessions, by handle"
        );
        // Paged two at a time, each session once, in order.
        let mut paged = Vec::new();
        let mut path = "/sessions?limit=2".to_string();
        loop {
            let (_, page) = admin_get(gateway, &path).await;
            paged.extend(listed(&page));
            match page["next"].as_str() {
                Some(next) => path = format!("/sessions?limit=2&after={next}"),
                None => break,
            }
        }
        assert_eq!(paged, handles);
        let (_, active) = admin_get(gateway, "/sessions?state=active").await;
        assert_eq!(active["count"], 5);
        let (_, warning) = admin_get(gateway, "/sessions?state=warning").await;
        assert_eq!(warning["count"], 0);
    }

    // A's session patched on B: A applies the new timeout within a flush interval.
    let patched = client()
        .patch(admin(&r.b, &format!("/sessions/{on_a}")))
        .json(&json!({ "timeout_ms": 123_000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let mut timeout = Value::Null;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        timeout = admin_get(&r.a, &format!("/sessions/{on_a}")).await.1["timeout_ms"].clone();
        if timeout == 123_000 {
            break;
        }
    }
    assert_eq!(timeout, 123_000, "A sees B's patch");

    // Ended on B: gone from A's listing at once, its end hook once.
    let ended = on_session(&r.b, Method::DELETE, on_a).await;
    assert_eq!(ended.status(), StatusCode::OK);
    let (_, page) = admin_get(&r.a, "/sessions").await;
    assert_eq!(page["count"], 4, "{page}");
    assert!(!listed(&page).contains(on_a));
    assert!(crate::common::eventually(|| r.count("/hooks/end") == 1).await);

    // An index entry whose session is gone (its replica died between ending it and
    // unlisting it) is not listed, and is unlisted.
    let ghost = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        r.redis
            .command(&format!("SADD test:i:{{0}} {ghost}"))
            .await
            .unwrap(),
        ":1\r\n"
    );
    let (_, page) = admin_get(&r.b, "/sessions").await;
    assert_eq!(page["count"], 4, "{page}");
    assert_eq!(
        r.redis
            .command(&format!("SISMEMBER test:i:{{0}} {ghost}"))
            .await
            .unwrap(),
        ":0\r\n"
    );

    // Redis down: a listing would be partial, so it is refused.
    r.redis.stop();
    let (status, body) = admin_get(&r.a, "/sessions").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn an_idle_session_ends_once_with_two_sweepers_and_each_hook_fires_once() {
    let r = Replicas::start(SessionMode::Browser, |c| {
        c.session.timeout = Cfg::from_millis(400);
        c.session.countdown = Some(Cfg::from_millis(300));
        c.session.abandon = Some(Cfg::from_secs(30));
        c.hooks.start = "/hooks/start".into();
        c.hooks.timeout = "/hooks/timeout".into();
        c.hooks.end = "/hooks/end".into();
    })
    .await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let (cookies, handle) = mint(&r.a).await;
        // Activity on B too, so both replicas hold (and sweep) every session.
        assert_eq!(handle_on(&r.b, &cookies).await.as_deref(), Some(&*handle));
        sessions.push(handle);
    }
    for _ in 0..60 {
        if r.count("/hooks/end") >= sessions.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for a second sweeper to have ended them again, were it able to.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let seen = r.upstream.requests();
    for handle in &sessions {
        for hook in ["/hooks/start", "/hooks/timeout", "/hooks/end"] {
            let n = seen
                .iter()
                .filter(|q| q.uri.starts_with(hook))
                .filter(|q| q.header("x-session").as_deref() == Some(handle))
                .count();
            assert_eq!(n, 1, "{hook} for {handle}: {n} times");
        }
    }
    let ended: f64 = ["a", "b"]
        .iter()
        .zip([&r.a, &r.b])
        .map(|(_, g)| {
            g.metrics
                .sessions_ended
                .with_label_values(&["timeout"])
                .get() as f64
        })
        .sum();
    assert_eq!(
        ended,
        sessions.len() as f64,
        "each end counted once across replicas"
    );
}

/// `tab` mode by hand (the agent's and the bootstrap page's part), across replicas.
struct Tab {
    client: reqwest::Client,
    key: String,
}

impl Tab {
    async fn new(gateway: &Running) -> Tab {
        let client = client();
        let first = client
            .get(url(gateway, "/"))
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-dest", "document")
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let key = first
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .find(|pair| pair.starts_with("sg_browser="))
            .expect("a browser key");
        Tab { client, key }
    }

    async fn navigate(&self, gateway: &Running, path: &str) -> reqwest::Response {
        self.client
            .get(url(gateway, path))
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-dest", "document")
            .header("accept", "text/html")
            .header("cookie", &self.key)
            .send()
            .await
            .unwrap()
    }

    async fn challenge(&self, gateway: &Running) -> String {
        let html = self.navigate(gateway, "/").await.text().await.unwrap();
        let marker = "name=\"sessiongate-challenge\" content=\"";
        let start = html.find(marker).expect("the bootstrap page") + marker.len();
        let end = start + html[start..].find('"').unwrap();
        html[start..end].to_string()
    }

    /// The bootstrap exchange on `gateway`: a new session's token and handle.
    async fn open(&self, gateway: &Running) -> (String, String) {
        let challenge = self.challenge(gateway).await;
        let reply: Value = self
            .post(gateway, "session", None, json!({"challenge": challenge}))
            .await
            .json()
            .await
            .unwrap();
        (field(&reply, "token"), field(&reply, "handle"))
    }

    async fn post(
        &self,
        gateway: &Running,
        endpoint: &str,
        token: Option<&str>,
        body: Value,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(url(gateway, &format!("/__sessiongate/{endpoint}")))
            .header("content-type", "application/json")
            .header("x-sessiongate-agent", "1")
            .header("cookie", &self.key)
            .body(body.to_string());
        if let Some(token) = token {
            request = request.header("x-session-token", token);
        }
        request.send().await.unwrap()
    }

    async fn handle_with(&self, gateway: &Running, token: &str, path: &str) -> Option<String> {
        let response = self
            .client
            .get(url(gateway, path))
            .header("cookie", &self.key)
            .header("x-session-token", token)
            .send()
            .await
            .unwrap();
        header_in(&echoed(response).await, "x-session")
    }
}

fn field(value: &Value, name: &str) -> String {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {value}"))
        .to_string()
}

#[tokio::test]
async fn tab_tokens_work_everywhere_and_challenges_and_tickets_are_single_use_across_replicas() {
    let r = Replicas::start(SessionMode::Tab, |_| {}).await;
    let tab = Tab::new(&r.a).await;
    let challenge = tab.challenge(&r.a).await;
    let body = json!({"challenge": challenge});
    let reply = tab.post(&r.a, "session", None, body.clone()).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let reply: Value = reply.json().await.unwrap();
    let (token, handle) = (field(&reply, "token"), field(&reply, "handle"));
    // The challenge was spent on A: B refuses it too.
    let replay = tab.post(&r.b, "session", None, body).await;
    assert_eq!(
        replay.status(),
        StatusCode::FORBIDDEN,
        "challenge replayed on B"
    );

    for gateway in [&r.b, &r.a] {
        assert_eq!(
            tab.handle_with(gateway, &token, "/echo").await.as_deref(),
            Some(&*handle)
        );
    }
    // A ticket issued by A is redeemed on B, once.
    let ticket = field(&reply, "ticket");
    let page = tab.navigate(&r.b, &format!("/?__sg_t={ticket}")).await;
    assert_eq!(page.headers()["x-session-state"], "active");
    let again = tab.navigate(&r.a, &format!("/?__sg_t={ticket}")).await;
    assert_eq!(
        again.headers()["x-session-state"],
        "none",
        "a ticket spent on B works no more on A"
    );
    // A heartbeat on B keeps the session A minted.
    let beat = tab.post(&r.b, "heartbeat", Some(&token), json!({})).await;
    assert_eq!(beat.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_token_and_its_grace_hold_on_every_replica() {
    let r = Replicas::start(SessionMode::Tab, |_| {}).await;
    let tab = Tab::new(&r.a).await;
    let (old, handle) = tab.open(&r.a).await;
    // B holds the session before the rotation, so it must learn of it.
    assert_eq!(
        tab.handle_with(&r.b, &old, "/echo").await.as_deref(),
        Some(&*handle)
    );
    let login = tab
        .client
        .get(url(&r.a, "/respond?header=X-Session-Rotate:1"))
        .header("cookie", &tab.key)
        .header("x-session-token", &old)
        .send()
        .await
        .unwrap();
    let new = login.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    // Within the grace both tokens name the session on both replicas.
    for gateway in [&r.b, &r.a] {
        for token in [&new, &old] {
            assert_eq!(
                tab.handle_with(gateway, token, "/echo").await.as_deref(),
                Some(&*handle)
            );
        }
    }
}

#[tokio::test]
async fn a_cookie_the_upstream_set_through_one_replica_is_replayed_by_the_other() {
    let r = Replicas::start(SessionMode::Browser, |c| {
        c.upstream.cookie_jar = CookieJar::Builtin
    })
    .await;
    let (cookies, _) = mint(&r.a).await;
    let set = client()
        .get(url(
            &r.a,
            "/respond?header=Set-Cookie:JSESSIONID=abc123;%20Path=/",
        ))
        .header("cookie", &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    assert!(
        !cookies_of(&set).contains("JSESSIONID"),
        "the jarred cookie stays on the gateway"
    );
    let echo = echoed(
        client()
            .get(url(&r.b, "/echo"))
            .header("cookie", &cookies)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let sent = header_in(&echo, "cookie").unwrap_or_default();
    assert!(
        sent.contains("JSESSIONID=abc123"),
        "B replays A's jar: {sent:?}"
    );
}

#[tokio::test]
async fn while_redis_is_down_cached_sessions_work_none_is_minted_and_all_resumes_after() {
    let mut r = Replicas::start(SessionMode::Browser, |_| {}).await;
    let (cookies, handle) = mint(&r.a).await;
    r.redis.stop();

    // Cached on A: served. New: 503 with Retry-After. Not ready.
    assert_eq!(handle_on(&r.a, &cookies).await.as_deref(), Some(&*handle));
    let fresh = client().get(url(&r.a, "/echo")).send().await.unwrap();
    assert_eq!(fresh.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fresh.headers()["retry-after"], "2");
    let ready = client().get(admin(&r.a, "/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.unwrap().contains("session store"));
    let metrics = metrics_of(r.a.admin_addr).await;
    let errors: f64 = ["connect", "create", "flush"]
        .iter()
        .filter_map(|op| {
            metric_value(
                &metrics,
                &format!("sessiongate_store_errors_total{{op=\"{op}\"}}"),
            )
        })
        .sum();
    assert!(errors >= 1.0, "store errors counted:\n{metrics}");
    // Activity during the outage is kept for the flush.
    assert_eq!(handle_on(&r.a, &cookies).await.as_deref(), Some(&*handle));

    // Redis comes back empty: A writes its sessions back, B finds the session.
    r.redis.restart().await;
    let mut found = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let ready = client().get(admin(&r.b, "/readyz")).send().await.unwrap();
        if ready.status() != StatusCode::OK {
            continue;
        }
        // A's flush has run once Redis holds the session again.
        let one = on_session(&r.b, Method::GET, &handle).await;
        if one.status() == StatusCode::OK {
            found = handle_on(&r.b, &cookies).await;
            break;
        }
    }
    assert_eq!(
        found.as_deref(),
        Some(&*handle),
        "the session survived the outage"
    );
    let (_, minted) = mint(&r.b).await;
    assert_ne!(minted, handle, "minting works again");
}

#[tokio::test]
async fn a_replica_that_stops_loses_no_session() {
    let r = Replicas::start(SessionMode::Browser, |_| {}).await;
    let mut minted = Vec::new();
    for _ in 0..5 {
        minted.push(mint(&r.a).await);
    }
    r.a.shutdown();
    for (cookies, handle) in &minted {
        assert_eq!(handle_on(&r.b, cookies).await.as_deref(), Some(&**handle));
    }
}

/// Counts `Ended` events.
#[derive(Default)]
struct Ends(std::sync::atomic::AtomicUsize);

impl sessiongate::session::events::SessionObserver for Ends {
    fn observe(&self, event: &sessiongate::session::events::SessionEvent<'_>) {
        if matches!(
            event,
            sessiongate::session::events::SessionEvent::Ended { .. }
        ) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A replica's store on `redis` without the gateway around it or its background
/// tasks (no flush, no invalidation, no sweep): a test drives it call by call.
/// Sessions time out after a minute, then `on_timeout` applies.
async fn bare_store(
    redis: &RedisServer,
    on_timeout: sessiongate::config::OnTimeout,
) -> (
    sessiongate::session::store::redis::RedisStore,
    sessiongate::session::Clock,
    std::sync::Arc<Ends>,
) {
    use sessiongate::config::WhenFull;
    use sessiongate::lifetime::Activity;
    use sessiongate::session::store::redis::{connect, RedisStore};
    use sessiongate::session::Lifetime;

    let mut config = Config::default();
    on_redis(&mut config, redis);
    let rules = Lifetime::new(
        Duration::from_secs(60),
        on_timeout,
        None,
        None,
        Duration::ZERO,
        Activity::Interaction,
    );
    let store_config = config.store.clone();
    let (link, clock, secrets) = tokio::task::spawn_blocking(move || connect(&store_config))
        .await
        .unwrap()
        .expect("redis reachable");
    let ends = std::sync::Arc::new(Ends::default());
    let store = RedisStore::with_link(link, rules, 1000, WhenFull::Reject, ends.clone())
        .unwrap()
        .with_secrets(&secrets);
    (store, clock, ends)
}

/// Two replicas' bare stores on one Redis (see [`bare_store`]), with a session
/// created on A and loaded by B.
struct TwoStores {
    /// Kept (bind it when destructuring): dropping it stops the server.
    _redis: RedisServer,
    a: sessiongate::session::store::redis::RedisStore,
    b: sessiongate::session::store::redis::RedisStore,
    ends: [std::sync::Arc<Ends>; 2],
    /// The session as A holds it, and as B does.
    on_a: std::sync::Arc<sessiongate::session::Session>,
    on_b: std::sync::Arc<sessiongate::session::Session>,
    now: sessiongate::session::Millis,
}

impl TwoStores {
    async fn start(on_timeout: sessiongate::config::OnTimeout) -> TwoStores {
        use sessiongate::session::store::SessionStore;
        use sessiongate::session::{BrowserKey, CreatedKind};

        let redis = RedisServer::start().await;
        let (a, clock, ends_a) = bare_store(&redis, on_timeout).await;
        let (b, _, ends_b) = bare_store(&redis, on_timeout).await;
        let browser = BrowserKey::generate().unwrap();
        let now = clock.now();
        let created = a
            .create(&browser, None, CreatedKind::New, None, now)
            .unwrap();
        let on_b = b
            .resolve(&created.token, &browser, now)
            .expect("B loads the session A created")
            .session;
        assert_eq!(on_b.handle(), created.session.handle());
        TwoStores {
            _redis: redis,
            a,
            b,
            ends: [ends_a, ends_b],
            on_a: created.session,
            on_b,
            now,
        }
    }
}

#[tokio::test]
async fn two_stores_that_both_hold_a_due_session_end_it_once() {
    use sessiongate::session::store::SessionStore;
    use sessiongate::session::EndReason;

    // Two replicas' stores, without their background tasks: no invalidation
    // reaches the other, so only the end claim in Redis can keep the second end
    // from happening.
    let TwoStores {
        _redis,
        a,
        b,
        ends,
        on_a,
        on_b,
        now,
    } = TwoStores::start(OnTimeout::End).await;
    // Both find it past its deadline: both try to end it.
    let later = now + 61_000;
    for (store, session) in [(&a, &on_a), (&b, &on_b)] {
        store.sweep(later, 100);
        store.end(session, EndReason::Timeout, later);
    }
    let total: usize = ends
        .iter()
        .map(|e| e.0.load(std::sync::atomic::Ordering::SeqCst))
        .sum();
    assert_eq!(total, 1, "exactly one replica ended it");
    assert!(a.get(&on_a.handle(), later).is_none());
    assert!(b.get(&on_a.handle(), later).is_none());
}

#[tokio::test]
async fn cookies_two_replicas_store_in_one_jar_at_the_same_time_are_both_kept() {
    use sessiongate::session::jar::{Jar, Site};
    use sessiongate::session::store::SessionStore;

    const SITE: Site<'static> = Site {
        host: "app",
        path: "/",
        secure: false,
    };
    let TwoStores {
        _redis,
        a,
        b,
        on_a,
        on_b,
        ..
    } = TwoStores::start(OnTimeout::End).await;
    // A stores `a=1` while B stores `b=2` in the same session's jar: B's write lands
    // between A reading the jar and A writing it back.
    let mut raced = false;
    a.update_jar(&on_a, &mut |slot: &mut Option<Jar>| {
        if !raced {
            raced = true;
            b.update_jar(&on_b, &mut |slot: &mut Option<Jar>| {
                slot.get_or_insert_with(Jar::default)
                    .store(b"b=2", &SITE, 1);
            });
        }
        slot.get_or_insert_with(Jar::default)
            .store(b"a=1", &SITE, 1);
    });
    for store in [&a, &b] {
        let mut jar = store.jar(&on_a.handle()).expect("a jar");
        assert_eq!(
            jar.header(&SITE, 2).as_deref(),
            Some("b=2; a=1"),
            "neither change is lost"
        );
    }
}

#[tokio::test]
async fn a_session_in_its_countdown_is_listed_as_warning_by_a_replica_that_does_not_hold_it() {
    use sessiongate::session::store::SessionStore;
    use sessiongate::session::{BrowserKey, CreatedKind, State};

    let redis = RedisServer::start().await;
    let (a, clock, _) = bare_store(&redis, OnTimeout::Countdown).await;
    let (b, _, _) = bare_store(&redis, OnTimeout::Countdown).await;
    let browser = BrowserKey::generate().unwrap();
    let now = clock.now();
    let created = a
        .create(&browser, None, CreatedKind::New, None, now)
        .unwrap();
    // A minute idle: A's sweeper starts the countdown. Redis holds the timestamps,
    // not A's view of them.
    let later = now + 61_000;
    a.sweep(later, 100);
    assert_eq!(created.session.stored_state(), State::Warning);
    let mut seen = Vec::new();
    b.for_each(later, &mut |s| seen.push((s.handle(), s.stored_state())))
        .expect("Redis reachable");
    assert_eq!(seen, [(created.session.handle(), State::Warning)]);
}

/// The `Cookie` header the upstream got for a request with `cookies` to `gateway`.
async fn cookie_sent(gateway: &Running, cookies: &str) -> String {
    let response = client()
        .get(url(gateway, "/echo"))
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    header_in(&echoed(response).await, "cookie").unwrap_or_default()
}

#[tokio::test]
async fn a_cookie_set_while_redis_is_down_is_kept_and_written_back() {
    let mut r = Replicas::start(SessionMode::Browser, |c| {
        c.upstream.cookie_jar = CookieJar::Builtin
    })
    .await;
    let (cookies, handle) = mint(&r.a).await;
    let set = |cookie: &'static str| {
        let request = client()
            .get(url(
                &r.a,
                &format!("/respond?header=Set-Cookie:{cookie};%20Path=/"),
            ))
            .header("cookie", &cookies);
        async move { assert_eq!(request.send().await.unwrap().status(), StatusCode::OK) }
    };
    set("JSESSIONID=before").await;
    r.redis.stop();
    // The session is in A's cache: served, and the upstream's new cookie is kept.
    set("PHPSESSID=during").await;
    let sent = cookie_sent(&r.a, &cookies).await;
    assert!(
        sent.contains("JSESSIONID=before") && sent.contains("PHPSESSID=during"),
        "A replays its jar during the outage: {sent:?}"
    );
    // Redis comes back empty: A writes the jar back with the session, so B replays
    // both cookies, and A still does.
    r.redis.restart().await;
    let mut on_b = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if on_session(&r.b, Method::GET, &handle).await.status() == StatusCode::OK {
            on_b = cookie_sent(&r.b, &cookies).await;
            break;
        }
    }
    assert!(
        on_b.contains("JSESSIONID=before") && on_b.contains("PHPSESSID=during"),
        "B replays the jar A kept through the outage: {on_b:?}"
    );
    let sent = cookie_sent(&r.a, &cookies).await;
    assert!(sent.contains("PHPSESSID=during"), "{sent:?}");
}

/// A config file for a replica process on `redis` (JSON logs, for `Gate`).
fn replica_config(
    dir: &std::path::Path,
    name: &str,
    upstream: &Upstream,
    redis: &RedisServer,
) -> std::path::PathBuf {
    replica_config_with(dir, name, upstream, redis, "/hooks/end", "2s")
}

/// [`replica_config`] with the `end` hook's target and `hooks.budget`.
fn replica_config_with(
    dir: &std::path::Path,
    name: &str,
    upstream: &Upstream,
    redis: &RedisServer,
    end_hook: &str,
    budget: &str,
) -> std::path::PathBuf {
    crate::common::process::replica_config(
        dir,
        name,
        &upstream.url(),
        &redis.url(),
        r#"drain_timeout = "2s""#,
        &format!(
            r#"
[session]
mode = "browser"
timeout = "1s"
on_timeout = "end"

[hooks]
start = "/hooks/start"
end = "{end_hook}"
budget = "{budget}"
"#
        ),
    )
}

#[tokio::test]
async fn sigkill_of_a_replica_loses_no_session_and_every_hook_fires_once() {
    use crate::common::process::Gate;
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Gate::start(&replica_config(dir.path(), "a", &upstream, &redis), &[]).await;
    let b = Gate::start(&replica_config(dir.path(), "b", &upstream, &redis), &[]).await;
    let get = |url: String, cookies: Option<String>| async move {
        let mut request = client().get(url);
        if let Some(cookies) = cookies {
            request = request.header("cookie", cookies);
        }
        request.send().await.unwrap()
    };
    let mut sessions = Vec::new();
    for i in 0..4 {
        let response = get(a.url("/echo"), None).await;
        let cookies = cookies_of(&response);
        let handle = header_in(&echoed(response).await, "x-session").unwrap();
        // Half of them B has seen before A dies; the others only Redis knows of.
        if i % 2 == 0 {
            let on_b = echoed(get(b.url("/echo"), Some(cookies.clone())).await).await;
            assert_eq!(header_in(&on_b, "x-session").as_deref(), Some(&*handle));
        }
        sessions.push((cookies, handle));
    }
    a.signal(libc::SIGKILL);
    a.exit_within(Duration::from_secs(5)).await;
    // Every session works on B (loaded from Redis where B had not seen it).
    for (cookies, handle) in &sessions {
        let echo = echoed(get(b.url("/echo"), Some(cookies.clone())).await).await;
        assert_eq!(header_in(&echo, "x-session").as_deref(), Some(&**handle));
    }
    // Idle: B ends all of them (its own sweep, and the shared index for any it did
    // not hold), each once.
    let ends = || {
        upstream
            .requests()
            .iter()
            .filter(|r| r.uri.starts_with("/hooks/end"))
            .count()
    };
    for _ in 0..80 {
        if ends() >= sessions.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let seen = upstream.requests();
    for (_, handle) in &sessions {
        for hook in ["/hooks/start", "/hooks/end"] {
            let n = seen
                .iter()
                .filter(|q| q.uri.starts_with(hook))
                .filter(|q| q.header("x-session").as_deref() == Some(&**handle))
                .count();
            assert_eq!(n, 1, "{hook} for {handle}: {n} times");
        }
    }
}

#[tokio::test]
async fn an_end_hook_owed_by_a_killed_replica_is_fired_once_by_another() {
    use crate::common::process::Gate;
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A's `end` hook goes to a listener that accepts and never answers: A is killed
    // while its hook is in flight. B's goes to the upstream, which records it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hooks/end", silent.local_addr().unwrap());
    let (a_config, b_config) = (
        replica_config_with(dir.path(), "a", &upstream, &redis, &silent_url, "300ms"),
        replica_config_with(dir.path(), "b", &upstream, &redis, "/hooks/end", "300ms"),
    );
    let mut a = Gate::start(&a_config, &[]).await;
    let b = Gate::start(&b_config, &[]).await;
    let get = |url: String| async move { client().get(url).send().await.unwrap() };
    let handle_of = |response: reqwest::Response| async move {
        header_in(&echoed(response).await, "x-session").expect("a session")
    };
    // One session ended on A (its hook never gets through), one on B (delivered).
    let on_a = handle_of(get(a.url("/echo")).await).await;
    let on_b = handle_of(get(b.url("/echo")).await).await;
    let delete = |admin: std::net::SocketAddr, handle: String| async move {
        let url = format!("http://{admin}/sessions/{handle}");
        let response = client().delete(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    };
    delete(b.admin, on_b.clone()).await;
    delete(a.admin, on_a.clone()).await;
    let (_held, _) = tokio::time::timeout(Duration::from_secs(5), silent.accept())
        .await
        .expect("A calls its end hook")
        .unwrap();
    a.signal(libc::SIGKILL);
    a.exit_within(Duration::from_secs(5)).await;
    // Once A's lease on the hook is out (its worst case: 3 attempts of 300 ms and
    // the pauses, plus margins), B takes the hook over and fires it, once.
    let ends_of = |handle: &str| {
        upstream
            .requests()
            .into_iter()
            .filter(|q| q.uri.starts_with("/hooks/end"))
            .filter(|q| q.header("x-session").as_deref() == Some(handle))
            .collect::<Vec<_>>()
    };
    for _ in 0..100 {
        if !ends_of(&on_a).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let taken_over = ends_of(&on_a);
    assert_eq!(
        taken_over.len(),
        1,
        "A's end hook, fired by B: {taken_over:?}"
    );
    let payload: Value = serde_json::from_slice(&taken_over[0].body).unwrap();
    assert_eq!(payload["event"], "end");
    assert_eq!(payload["reason"], "admin");
    assert_eq!(payload["session"], on_a.as_str());
    // B's own hook got through, so nobody took it over: still once.
    assert_eq!(ends_of(&on_b).len(), 1);
    let metrics = metrics_of(b.admin).await;
    assert_eq!(
        metric_value(&metrics, "sessiongate_end_hooks_taken_over_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_session_only_redis_knows_of_is_swept_by_the_shared_deadline_index() {
    // A session created by a replica that is gone and never seen by the one left:
    // only the shared deadline index can bring it to its end (and its end hook).
    // Long enough that A is surely gone before the session is due, even on a loaded
    // machine (A ending it itself would prove nothing).
    let r = Replicas::start(SessionMode::Browser, ending_after(2_000)).await;
    let (_, handle) = mint(&r.a).await;
    r.a.shutdown();
    r.a.stopping().await;
    // A's sweeper is gone; B never held the session.
    assert_eq!(
        r.a.metrics
            .sessions_ended
            .with_label_values(&["timeout"])
            .get(),
        0,
        "A was gone before the session was due"
    );
    for _ in 0..80 {
        if r.count("/hooks/end") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ends: Vec<_> = r.hooks("/hooks/end");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].header("x-session").as_deref(), Some(&*handle));
    assert_eq!(
        r.b.metrics
            .sessions_ended
            .with_label_values(&["timeout"])
            .get(),
        1,
        "B ended it"
    );
}

#[tokio::test]
async fn an_end_on_a_replica_that_missed_the_rotation_leaves_no_alias_in_redis() {
    let r = Replicas::start(SessionMode::Tab, |_| {}).await;
    let tab = Tab::new(&r.a).await;
    let (old, handle) = tab.open(&r.a).await;
    assert_eq!(
        tab.handle_with(&r.b, &old, "/echo").await.as_deref(),
        Some(&*handle)
    );
    // B flushes its touch, then is idle: it will not hear of the rotation.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let login = tab
        .client
        .get(url(&r.a, "/respond?header=X-Session-Rotate:1"))
        .header("cookie", &tab.key)
        .header("x-session-token", &old)
        .send()
        .await
        .unwrap();
    assert!(login.headers().contains_key("x-session-token"));
    assert_eq!(
        r.redis
            .command("KEYS test:a:*")
            .await
            .unwrap()
            .lines()
            .next(),
        Some("*1")
    );
    // The rotating replica goes away (else it would clean up on the invalidation).
    r.a.shutdown();
    r.a.stopping().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ended = on_session(&r.b, Method::DELETE, &handle).await;
    assert_eq!(ended.status(), StatusCode::OK);
    assert_eq!(
        r.redis.command("KEYS test:a:*").await.unwrap(),
        "*0\r\n",
        "the current token's alias (no expiry) must go with the session"
    );
}

/// Waits (up to 5 s) for the `end` hook, then a little longer for a second one
/// that must not come: exactly one, for `handle`.
async fn ended_once(r: &Replicas, handle: &str) {
    for _ in 0..50 {
        if r.count("/hooks/end") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ends: Vec<_> = r.hooks("/hooks/end");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].header("x-session").as_deref(), Some(handle));
}

/// One replica alone, so no other sweeper can take the session over: the sweeper
/// that met the outage on the session's deadline must still end it once Redis is
/// back (it once dropped the session from its index when the end could not be
/// committed, and the session then lived on until its next request).
#[tokio::test]
async fn a_deadline_met_during_an_outage_is_swept_once_redis_is_back() {
    let mut r = Replicas::start(SessionMode::Browser, ending_after(600)).await;
    r.b.shutdown();
    r.b.stopping().await;
    let (_, handle) = mint(&r.a).await;
    r.redis.stop();
    // The deadline passes, and the sweeper meets it, while Redis is away.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(r.count("/hooks/end"), 0, "ended during the outage");
    r.redis.restart().await;
    ended_once(&r, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_request_waiting_on_a_frozen_redis_holds_up_no_other() {
    // One runtime worker for the gateway and this test: a call to Redis that blocked
    // the worker would stall every other request until it timed out.
    let r = Replicas::start(SessionMode::Browser, |_| {}).await;
    let (cookies, handle) = mint(&r.a).await;
    r.redis.freeze();
    let started = std::time::Instant::now();
    // A new session needs Redis: its admission waits for an answer that never comes...
    let fresh = tokio::spawn(client().get(url(&r.a, "/echo")).send());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...while the session this replica holds is served at once.
    assert_eq!(handle_on(&r.a, &cookies).await.as_deref(), Some(&*handle));
    let took = started.elapsed();
    let fresh = fresh.await.unwrap().unwrap();
    assert_eq!(fresh.status(), StatusCode::SERVICE_UNAVAILABLE);
    r.redis.thaw();
    assert!(
        took < Duration::from_millis(300),
        "a held session waited {took:?} behind a Redis call"
    );
}

#[tokio::test]
async fn nothing_ends_while_redis_is_down_and_the_sweeper_catches_up_after() {
    let mut r = Replicas::start(SessionMode::Browser, ending_after(600)).await;
    let (cookies, handle) = mint(&r.a).await;
    r.redis.stop();
    // Past its deadline while Redis is away: refused (a new session cannot be
    // minted either), but not ended — no end hook, no end counted.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let late = client()
        .get(url(&r.a, "/echo"))
        .header("cookie", &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.count("/hooks/end"), 0, "ended during the outage");
    assert_eq!(
        r.a.metrics
            .sessions_ended
            .with_label_values(&["timeout"])
            .get(),
        0
    );
    // Redis is back: the session is ended, with its hook, once.
    r.redis.restart().await;
    ended_once(&r, &handle).await;
}

#[tokio::test]
async fn past_the_outage_grace_held_sessions_are_refused_but_not_ended() {
    let mut r = Replicas::start(SessionMode::Browser, |c| {
        c.store.outage_grace = Cfg::from_millis(800);
        c.hooks.end = "/hooks/end".into();
    })
    .await;
    let (cookies, handle) = mint(&r.a).await;
    r.redis.stop();
    // Within the grace: served (and the request notices the outage: its touch
    // cannot be flushed).
    assert_eq!(handle_on(&r.a, &cookies).await.as_deref(), Some(&*handle));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let refused = client()
        .get(url(&r.a, "/echo"))
        .header("cookie", &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "past the grace"
    );
    assert_eq!(r.count("/hooks/end"), 0, "refused, not ended");
    r.redis.restart().await;
    let mut back = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let response = client()
            .get(url(&r.a, "/echo"))
            .header("cookie", &cookies)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            back = header_in(&echoed(response).await, "x-session");
            break;
        }
    }
    assert_eq!(
        back.as_deref(),
        Some(&*handle),
        "the same session once Redis is back"
    );
    assert_eq!(r.count("/hooks/end"), 0);
}

#[tokio::test]
async fn a_replica_caches_at_most_max_sessions_and_still_serves_the_others() {
    // The local cache is bounded by session.max_sessions: sessions created
    // elsewhere beyond it are served from Redis without being kept.
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let start = |max: usize| {
        let mut config = test_config(&upstream.url());
        config.session.mode = SessionMode::Browser;
        config.session.max_sessions = max;
        on_redis(&mut config, &redis);
        server::start(config)
    };
    let a = start(100).await.unwrap();
    let b = start(3).await.unwrap();
    let mut minted = Vec::new();
    for _ in 0..10 {
        minted.push(mint(&a).await);
    }
    for _ in 0..2 {
        for (cookies, handle) in &minted {
            assert_eq!(handle_on(&b, cookies).await.as_deref(), Some(&**handle));
        }
    }
    assert_eq!(b.store.len(), 3, "B holds max_sessions, no more");
    assert_eq!(a.store.len(), 10);
}

#[tokio::test]
async fn two_replicas_share_sessions_on_a_three_master_redis_cluster() {
    let nodes = crate::common::redis::start_cluster(3).await;
    let upstream = Upstream::start().await;
    let replica = |node: &RedisServer| {
        let mut config = test_config(&upstream.url());
        config.session.mode = SessionMode::Browser;
        ending_after(600)(&mut config);
        config.hooks.start = "/hooks/start".into();
        on_redis(&mut config, node);
        server::start(config)
    };
    // Each replica is pointed at a different node of the cluster.
    let a = replica(&nodes[0])
        .await
        .expect("replica a starts on the cluster");
    let b = replica(&nodes[1])
        .await
        .expect("replica b starts on the cluster");
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let (cookies, handle) = mint(&a).await;
        assert_eq!(handle_on(&b, &cookies).await.as_deref(), Some(&*handle));
        sessions.push(handle);
    }
    // The sessions' hashes are spread over the masters (hash-tagged by handle).
    let mut holding = 0;
    for node in &nodes {
        let keys = node.command("KEYS test:s:*").await.unwrap();
        if !keys.starts_with("*0") {
            holding += 1;
        }
    }
    assert!(holding >= 2, "sessions on {holding} of 3 masters");
    // B lists all six (its index shards are spread over the masters too).
    let (status, page) = admin_get(&b, "/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["count"], 6, "{page}");
    // Idle: each ends once (two sweepers, end claims on three masters).
    for _ in 0..60 {
        if upstream
            .requests()
            .iter()
            .filter(|r| r.uri.starts_with("/hooks/end"))
            .count()
            >= sessions.len()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let seen = upstream.requests();
    for handle in &sessions {
        for hook in ["/hooks/start", "/hooks/end"] {
            let n = seen
                .iter()
                .filter(|q| q.uri.starts_with(hook))
                .filter(|q| q.header("x-session").as_deref() == Some(handle))
                .count();
            assert_eq!(n, 1, "{hook} for {handle}: {n} times");
        }
    }
}
