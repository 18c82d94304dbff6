//! Per-session cookie jars (`upstream.cookie_jar`): upstream cookies of jarred names
//! are kept on the gateway, per session, and sent upstream with every request of
//! that session; the browser never gets them, and whatever it sends under those
//! names never reaches the upstream.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;
use sessiongate::config::{CookieJar, DuplicateTab, SessionMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{header_of, session_cookies, status_of, Fixture};
use crate::tab::{text, Browser};

/// A gateway with the built-in jar in `mode`.
async fn jarred(mode: SessionMode) -> Fixture {
    Fixture::start(mode, |c| c.upstream.cookie_jar = CookieJar::Builtin).await
}

/// One session of a browser-mode gateway: its `Cookie` pairs, and a client.
struct Visitor {
    client: reqwest::Client,
    cookies: String,
}

impl Visitor {
    async fn new(fx: &Fixture) -> Visitor {
        Visitor {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            cookies: session_cookies(fx).await,
        }
    }

    /// A request whose upstream answer carries `set_cookies`, sent with `host` (the
    /// gateway's own address when `None`); returns the response's headers.
    async fn set(&self, fx: &Fixture, host: Option<&str>, set_cookies: &[&str]) -> HeaderMap {
        let query: Vec<(&str, String)> = set_cookies
            .iter()
            .map(|c| ("header", format!("Set-Cookie:{c}")))
            .collect();
        let mut request = self
            .client
            .get(fx.url("/respond"))
            .query(&query)
            .header("cookie", &self.cookies);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.headers().clone()
    }

    /// The `Cookie` header the upstream got for a request to `path` (with `extra`
    /// browser cookies, and `host`).
    async fn upstream_cookie(
        &self,
        fx: &Fixture,
        host: Option<&str>,
        path: &str,
        extra: &str,
    ) -> Option<String> {
        let cookie = if extra.is_empty() {
            self.cookies.clone()
        } else {
            format!("{}; {extra}", self.cookies)
        };
        let mut request = self.client.get(fx.url(path)).header("cookie", cookie);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let echo: Value = request.send().await.unwrap().json().await.unwrap();
        cookie_of(&echo)
    }
}

/// The `Cookie` header in an `/echo` answer.
fn cookie_of(echo: &Value) -> Option<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "cookie")
        .map(|h| h[1].as_str().unwrap().to_string())
}

/// The `Set-Cookie` names a response hands the browser.
fn set_cookie_names(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap();
            text[..text.find('=').unwrap()].to_string()
        })
        .collect()
}

/// The cookie pairs of a `Cookie` header, without the gateway's own.
fn pairs(cookie: Option<String>) -> Vec<String> {
    cookie
        .unwrap_or_default()
        .split("; ")
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_jarred_cookie_stays_on_the_gateway_and_goes_with_every_request() {
    let fx = jarred(SessionMode::Browser).await;
    let visitor = Visitor::new(&fx).await;
    let headers = visitor
        .set(
            &fx,
            None,
            &["PHPSESSID=abc123; Path=/; HttpOnly", "theme=dark; Path=/"],
        )
        .await;
    assert_eq!(
        set_cookie_names(&headers),
        ["theme"],
        "the browser gets the app's other cookies, never the jarred one"
    );
    // A stale browser PHPSESSID never mixes in; other browser cookies pass.
    let sent = visitor
        .upstream_cookie(&fx, None, "/echo", "PHPSESSID=stale; theme=dark")
        .await;
    assert_eq!(pairs(sent), ["theme=dark", "PHPSESSID=abc123"]);
    // A form POST carries it too.
    let echo: Value = visitor
        .client
        .post(fx.url("/echo/form"))
        .header("cookie", &visitor.cookies)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pairs(cookie_of(&echo)), ["PHPSESSID=abc123"]);
    // Another session has its own (empty) jar.
    let other = Visitor::new(&fx).await;
    assert_eq!(other.upstream_cookie(&fx, None, "/echo", "").await, None);
}

#[tokio::test]
async fn without_the_jar_cookies_pass_as_before() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let visitor = Visitor::new(&fx).await;
    let headers = visitor.set(&fx, None, &["PHPSESSID=abc123; Path=/"]).await;
    assert_eq!(set_cookie_names(&headers), ["PHPSESSID"]);
    let sent = visitor
        .upstream_cookie(&fx, None, "/echo", "PHPSESSID=browser")
        .await;
    assert_eq!(pairs(sent), ["PHPSESSID=browser"]);
}

#[tokio::test]
async fn paths_follow_rfc_6265() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.upstream.cookie_jar = CookieJar::Names(vec!["a".into(), "b".into(), "c".into()])
    })
    .await;
    let v = Visitor::new(&fx).await;
    v.set(&fx, None, &["a=1; Path=/echo/shop", "b=2; Path=/", "c=3"])
        .await;
    // `c` got the default path of `/respond`: `/`.
    assert_eq!(
        pairs(v.upstream_cookie(&fx, None, "/echo/shop/cart", "").await),
        ["a=1", "b=2", "c=3"],
        "longest path first"
    );
    assert_eq!(
        pairs(v.upstream_cookie(&fx, None, "/echo/shopping", "").await),
        ["b=2", "c=3"]
    );
    assert_eq!(
        pairs(v.upstream_cookie(&fx, None, "/echo/shop", "").await),
        ["a=1", "b=2", "c=3"]
    );
}

#[tokio::test]
async fn domains_follow_rfc_6265() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.upstream.cookie_jar = CookieJar::All
    })
    .await;
    let v = Visitor::new(&fx).await;
    let www = Some("www.example.test");
    v.set(
        &fx,
        www,
        &[
            "host=1",
            "wide=2; Domain=.example.test",
            "evil=3; Domain=other.test",
        ],
    )
    .await;
    assert_eq!(
        pairs(v.upstream_cookie(&fx, www, "/echo", "").await),
        ["host=1", "wide=2"]
    );
    assert_eq!(
        pairs(
            v.upstream_cookie(&fx, Some("api.example.test:8080"), "/echo", "")
                .await
        ),
        ["wide=2"],
        "a host-only cookie stays on its host; the port does not matter"
    );
    assert_eq!(
        pairs(
            v.upstream_cookie(&fx, Some("other.test"), "/echo", "")
                .await
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        fx.metric("sessiongate_jar_dropped_total{reason=\"domain\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn expiry_and_deletion() {
    let fx = jarred(SessionMode::Browser).await;
    let v = Visitor::new(&fx).await;
    v.set(
        &fx,
        None,
        &["PHPSESSID=1", "JSESSIONID=2", "connect.sid=3; Max-Age=1"],
    )
    .await;
    assert_eq!(
        pairs(v.upstream_cookie(&fx, None, "/echo", "").await),
        ["PHPSESSID=1", "JSESSIONID=2", "connect.sid=3"]
    );
    // Deletion as PHP's session_destroy() and a servlet's invalidate() write it.
    v.set(
        &fx,
        None,
        &[
            "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/",
            "JSESSIONID=; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        ],
    )
    .await;
    assert_eq!(
        pairs(v.upstream_cookie(&fx, None, "/echo", "").await),
        ["connect.sid=3"]
    );
    // A Max-Age of one second runs out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(v.upstream_cookie(&fx, None, "/echo", "").await, None);
    // A past Expires is never stored.
    v.set(
        &fx,
        None,
        &["PHPSESSID=x; Expires=Wed, 21 Oct 2015 07:28:00 GMT"],
    )
    .await;
    assert_eq!(v.upstream_cookie(&fx, None, "/echo", "").await, None);
}

#[tokio::test]
async fn jarred_browser_cookies_never_reach_the_upstream_even_without_a_session() {
    let fx = jarred(SessionMode::Tab).await;
    let client = reqwest::Client::new();
    // Tab mode, a fetch without a token: forwarded without a session.
    let echo: Value = client
        .get(fx.url("/echo"))
        .header("cookie", "PHPSESSID=planted; JSESSIONID=x; other=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pairs(cookie_of(&echo)), ["other=1"]);
    // And with no session there is no jar: the cookie is dropped, not handed out.
    let response = client
        .get(fx.url("/respond"))
        .query(&[("header", "Set-Cookie:PHPSESSID=new")])
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("set-cookie").is_none());
    assert_eq!(
        fx.metric("sessiongate_jar_dropped_total{reason=\"no_session\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn all_keeps_every_upstream_cookie_and_strips_every_browser_cookie() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.upstream.cookie_jar = CookieJar::All
    })
    .await;
    let v = Visitor::new(&fx).await;
    let headers = v.set(&fx, None, &["a=1", "b=2"]).await;
    assert_eq!(
        set_cookie_names(&headers),
        Vec::<String>::new(),
        "no upstream cookie reaches the browser"
    );
    assert_eq!(
        pairs(
            v.upstream_cookie(&fx, None, "/echo", "js_set=1; a=old")
                .await
        ),
        ["a=1", "b=2"]
    );
}

#[tokio::test]
async fn a_websocket_handshake_carries_the_jar() {
    let fx = jarred(SessionMode::Browser).await;
    let v = Visitor::new(&fx).await;
    v.set(&fx, Some("gw"), &["PHPSESSID=ws1"]).await;
    let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let head = format!(
        "GET /upgrade HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Cookie: {}; PHPSESSID=stale\r\n\r\n",
        v.cookies
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert_eq!(status_of(&answer), 101, "{answer}");
    assert_eq!(header_of(&answer, "set-cookie"), None);
    let seen = fx.upstream.wait_for(3).await;
    let upgrade = seen.iter().find(|r| r.uri == "/upgrade").unwrap();
    assert_eq!(upgrade.header("cookie").as_deref(), Some("PHPSESSID=ws1"));
}

/// A tab-mode tab: its browser, token and handle.
struct Tab {
    token: String,
    handle: String,
}

async fn open_tab(
    fx: &Fixture,
    browser: &mut Browser,
    token: Option<&str>,
    duplicate: bool,
) -> Tab {
    browser.navigate(fx, "/").await;
    let reply = browser.bootstrap(fx, "/", token, duplicate).await;
    Tab {
        token: token
            .map(str::to_string)
            .filter(|_| reply.get("token").is_none())
            .unwrap_or_else(|| text(&reply, "token")),
        handle: text(&reply, "handle"),
    }
}

/// A fetch from `tab`: its upstream `/echo` cookie, or the headers of a `/respond`.
async fn tab_get(
    fx: &Fixture,
    browser: &Browser,
    token: &str,
    path_and_query: &str,
) -> reqwest::Response {
    browser
        .client
        .get(fx.url(path_and_query))
        .header(
            "cookie",
            format!("{}; PHPSESSID=browser", browser.key.as_deref().unwrap()),
        )
        .header("x-session-token", token)
        .send()
        .await
        .unwrap()
}

async fn tab_cookie(fx: &Fixture, browser: &Browser, token: &str) -> Vec<String> {
    let echo: Value = tab_get(fx, browser, token, "/echo")
        .await
        .json()
        .await
        .unwrap();
    pairs(cookie_of(&echo))
}

#[tokio::test]
async fn two_tabs_two_jars_a_forked_tab_starts_empty() {
    let fx = jarred(SessionMode::Tab).await;
    let mut browser = Browser::new();
    let a = open_tab(&fx, &mut browser, None, false).await;
    let b = open_tab(&fx, &mut browser, None, false).await;
    assert_ne!(a.handle, b.handle);
    tab_get(
        &fx,
        &browser,
        &a.token,
        "/respond?header=Set-Cookie:PHPSESSID%3Dtab-a",
    )
    .await;
    tab_get(
        &fx,
        &browser,
        &b.token,
        "/respond?header=Set-Cookie:PHPSESSID%3Dtab-b",
    )
    .await;
    assert_eq!(
        tab_cookie(&fx, &browser, &a.token).await,
        ["PHPSESSID=tab-a"]
    );
    assert_eq!(
        tab_cookie(&fx, &browser, &b.token).await,
        ["PHPSESSID=tab-b"]
    );

    // A duplicate of tab A (duplicate_tab = "new") forks: a new session, empty jar.
    let copy = open_tab(&fx, &mut browser, Some(&a.token), true).await;
    assert_ne!(copy.handle, a.handle);
    assert_eq!(
        tab_cookie(&fx, &browser, &copy.token).await,
        Vec::<String>::new()
    );
    assert_eq!(
        tab_cookie(&fx, &browser, &a.token).await,
        ["PHPSESSID=tab-a"]
    );
}

#[tokio::test]
async fn a_shared_duplicate_shares_the_jar() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.upstream.cookie_jar = CookieJar::Builtin;
        c.session.duplicate_tab = DuplicateTab::Share;
    })
    .await;
    let mut browser = Browser::new();
    let a = open_tab(&fx, &mut browser, None, false).await;
    tab_get(
        &fx,
        &browser,
        &a.token,
        "/respond?header=Set-Cookie:PHPSESSID%3Dshared",
    )
    .await;
    let copy = open_tab(&fx, &mut browser, Some(&a.token), true).await;
    assert_eq!(copy.handle, a.handle);
    assert_eq!(
        tab_cookie(&fx, &browser, &copy.token).await,
        ["PHPSESSID=shared"]
    );
}

#[tokio::test]
async fn a_rotated_token_keeps_the_jar_and_an_end_drops_it() {
    let fx = jarred(SessionMode::Tab).await;
    let mut browser = Browser::new();
    let a = open_tab(&fx, &mut browser, None, false).await;
    // A login: the app rotates the token and sets its session cookie at once.
    let login = tab_get(
        &fx,
        &browser,
        &a.token,
        "/respond?header=X-Session-Rotate:1&header=Set-Cookie:PHPSESSID%3Dafter-login",
    )
    .await;
    let new = login.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(new, a.token);
    assert_eq!(
        tab_cookie(&fx, &browser, &new).await,
        ["PHPSESSID=after-login"]
    );

    // The admin API shows names and sizes, never values.
    let detail: Value = reqwest::get(fx.admin_url(&format!("/sessions/{}", a.handle)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jar = detail["jar"].as_array().unwrap();
    assert_eq!(jar.len(), 1, "{detail}");
    assert_eq!(jar[0]["name"], "PHPSESSID");
    assert_eq!(
        jar[0]["size"],
        "PHPSESSID".len() + "after-login".len() + "127.0.0.1".len() + 1
    );
    assert!(!detail.to_string().contains("after-login"), "{detail}");
    assert_eq!(fx.gateway.store.jar_count(), 1);

    // The app ends the session in the same response that sets a cookie: nothing is
    // left behind.
    tab_get(
        &fx,
        &browser,
        &new,
        "/respond?header=Set-Cookie:PHPSESSID%3Dlast&header=X-Session-End:1",
    )
    .await;
    assert_eq!(fx.gateway.store.jar_count(), 0);
    assert!(fx.gateway.store.jar(&a.handle.parse().unwrap()).is_none());
}

#[tokio::test]
async fn bounds_count_bytes_and_size_are_enforced_and_counted() {
    let fx = jarred(SessionMode::Browser).await;
    let fx_all = Fixture::start(SessionMode::Browser, |c| {
        c.upstream.cookie_jar = CookieJar::All
    })
    .await;
    let v = Visitor::new(&fx_all).await;
    // 60 cookies in one response: the jar keeps the 50 most recent.
    let many: Vec<String> = (0..60).map(|i| format!("c{i}={i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    v.set(&fx_all, None, &many).await;
    let sent = pairs(v.upstream_cookie(&fx_all, None, "/echo", "").await);
    assert_eq!(sent.len(), 50);
    assert_eq!(sent[0], "c10=10", "the oldest ten went first");
    assert_eq!(
        fx_all
            .metric("sessiongate_jar_dropped_total{reason=\"count\"}")
            .await,
        10.0
    );

    // Bytes: three 3000-byte cookies do not fit in 8 KiB; the oldest goes.
    let v = Visitor::new(&fx).await;
    let big = |name: &str| format!("{name}={}", "v".repeat(3000));
    let (a, b, c) = (big("PHPSESSID"), big("JSESSIONID"), big("connect.sid"));
    v.set(&fx, None, &[&a, &b, &c]).await;
    let sent = pairs(v.upstream_cookie(&fx, None, "/echo", "").await);
    assert_eq!(sent, [b.clone(), c.clone()]);
    assert_eq!(
        fx.metric("sessiongate_jar_dropped_total{reason=\"bytes\"}")
            .await,
        1.0
    );

    // A cookie over 4 KiB is refused outright (and not handed to the browser).
    let huge = format!("laravel_session={}", "v".repeat(4100));
    let headers = v.set(&fx, None, &[&huge]).await;
    assert!(headers.get("set-cookie").is_none());
    let sent = pairs(v.upstream_cookie(&fx, None, "/echo", "").await);
    assert_eq!(sent, [b, c]);
    assert_eq!(
        fx.metric("sessiongate_jar_dropped_total{reason=\"too_large\"}")
            .await,
        1.0
    );
}
