//! What reaches the browser: the upstream cannot set the gateway's cookies, answers
//! that carry a session are never cached, the upstream's control headers are read
//! strictly, and the gateway's own answers carry its security headers.

use reqwest::header::HeaderMap;
use sessiongate::config::SessionMode;

use crate::common::{client, header_of, raw_exchange, session_cookies, status_of, Fixture};

fn all<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// An upstream `Set-Cookie` for any of the gateway's cookie names, with or without
/// `__Host-`, whatever the listener's scheme, is dropped; the app's own cookies pass.
#[tokio::test]
async fn the_upstream_cannot_set_the_gateway_cookies() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let path = "/respond?header=Set-Cookie:sg_session=evil;+Path=/\
                &header=Set-Cookie:sg_browser=evil\
                &header=Set-Cookie:__Host-sg_session=evil;+Secure;+Path=/\
                &header=Set-Cookie:__Host-sg_browser=evil;+Secure;+Path=/\
                &header=Set-Cookie:__host-SG_SESSION=evil\
                &header=Set-Cookie:app=1;+Path=/";
    for round in 0..2 {
        let mut request = client().get(fx.url(path));
        if round == 1 {
            request = request.header("cookie", "sg_session=unknown");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let cookies = all(response.headers(), "set-cookie");
        assert!(
            cookies.iter().all(|c| !c.contains("evil")),
            "round {round}: {cookies:?}"
        );
        assert!(cookies.contains(&"app=1; Path=/"), "{cookies:?}");
        // The gateway's own cookie is still set (a new session each round).
        assert!(
            cookies.iter().any(|c| c.starts_with("sg_session=")),
            "{cookies:?}"
        );
    }
}

/// Every answer that sets a gateway cookie or carries `X-Session-Token` is
/// `Cache-Control: private, no-store`, replacing whatever the upstream allowed; in
/// `browser` mode every proxied answer varies on `Cookie`.
#[tokio::test]
async fn answers_that_carry_a_session_are_never_cached() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let cacheable =
        "/respond?header=Cache-Control:public,+max-age=3600&header=Vary:Accept-Encoding";

    // First contact: the answer sets the session cookie.
    let first = client().get(fx.url(cacheable)).send().await.unwrap();
    assert!(first.headers().get("set-cookie").is_some());
    assert_eq!(all(first.headers(), "cache-control"), ["private, no-store"]);
    let vary = all(first.headers(), "vary").join(", ").to_ascii_lowercase();
    assert!(vary.contains("cookie"), "{vary}");
    let pairs: Vec<String> = all(first.headers(), "set-cookie")
        .iter()
        .map(|c| c.split(';').next().unwrap().to_string())
        .collect();
    let cookie_of = |name: &str| {
        pairs
            .iter()
            .find(|pair| pair.starts_with(&format!("{name}=")))
            .unwrap()
            .clone()
    };
    let (browser, session) = (cookie_of("sg_browser"), cookie_of("sg_session"));
    let token = session.trim_start_matches("sg_session=").to_string();

    // The same session later: nothing set, the upstream's caching stands (it is the
    // app's page), but shared caches must key it on the cookie.
    let later = client()
        .get(fx.url(cacheable))
        .header("cookie", format!("{browser}; {session}"))
        .send()
        .await
        .unwrap();
    assert!(later.headers().get("set-cookie").is_none());
    assert_eq!(
        all(later.headers(), "cache-control"),
        ["public, max-age=3600"]
    );
    let vary = all(later.headers(), "vary").join(", ").to_ascii_lowercase();
    assert!(vary.contains("cookie"), "{vary}");

    // A rotation answered to fetch/XHR carries the new token in a header.
    let rotated = client()
        .get(fx.url(&format!("{cacheable}&header=X-Session-Rotate:1")))
        .header("cookie", browser.as_str())
        .header("x-session-token", token.as_str())
        .send()
        .await
        .unwrap();
    assert!(rotated.headers().get("x-session-token").is_some());
    assert_eq!(
        all(rotated.headers(), "cache-control"),
        ["private, no-store"]
    );
}

/// `X-Session-Timeout: 9223372036854775807` used to overflow the deadline arithmetic
/// and end the session at once (abandoned). Values are digits only and clamped to a
/// year; anything else is ignored.
#[tokio::test]
async fn an_absurd_session_timeout_is_clamped_not_fatal() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let cookie = session_cookies(&fx).await;
    let session = fx.gateway.store.page(None, 10).pop().unwrap();
    let configured = session.timeout();

    let send = |value: &'static str| {
        let (fx, cookie) = (&fx, cookie.clone());
        async move {
            client()
                .get(fx.url(&format!("/respond?header=X-Session-Timeout:{value}")))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    for ignored in ["-5", "1.5", "60s", "%2B60", "0x10", "6%2060"] {
        let response = send(ignored).await;
        assert_eq!(response.headers()["x-session-state"], "active", "{ignored}");
        assert_eq!(session.timeout(), configured, "{ignored} was not ignored");
    }
    for (value, expected) in [
        ("9223372036854775807", 31_536_000_000),
        ("99999999999999999999999999", 31_536_000_000),
        ("0", 0),
        ("30", 30_000),
    ] {
        let response = send(value).await;
        assert_eq!(response.status(), 200, "{value}");
        assert_eq!(response.headers()["x-session-state"], "active", "{value}");
        assert!(response.headers().get("x-session-timeout").is_none());
        assert_eq!(session.timeout(), expected, "{value}");
    }
    // Still the same live session.
    let again = client()
        .get(fx.url("/"))
        .header("cookie", cookie.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["x-session-state"], "active");
    assert!(again.headers().get("set-cookie").is_none());
    assert_eq!(
        fx.metric("sessiongate_sessions_ended_total{reason=\"abandoned\"}")
            .await,
        0.0
    );
}

fn assert_own(answer: &str, what: &str) {
    assert_eq!(
        header_of(answer, "x-content-type-options"),
        Some("nosniff"),
        "{what}: {answer}"
    );
    assert_eq!(
        header_of(answer, "referrer-policy"),
        Some("no-referrer"),
        "{what}: {answer}"
    );
    assert!(header_of(answer, "server").is_none(), "{what}: {answer}");
}

/// The gateway's own answers (refusals, reserved replies, the bootstrap page) say
/// `nosniff` and `no-referrer` and name no server; the app's answers are left alone.
#[tokio::test]
async fn the_gateway_own_answers_carry_security_headers() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let addr = fx.gateway.public_addr;
    let refused = raw_exchange(
        addr,
        b"TRACE / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&refused), 405);
    assert_own(&refused, "refusal");
    let no_host = raw_exchange(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&no_host), 400);
    assert_own(&no_host, "bad host");
    let status = raw_exchange(
        addr,
        b"GET /__sessiongate/status HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&status), 200);
    assert_own(&status, "reserved reply");
    let script = raw_exchange(
        addr,
        b"GET /__sessiongate/agent.js HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&script), 200);
    assert_own(&script, "agent script");

    // First contact sets the browser key; the next page load without a ticket gets
    // the bootstrap page.
    let navigate = "Accept: text/html\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n";
    let first = raw_exchange(
        addr,
        format!("GET /page HTTP/1.1\r\nHost: gw\r\n{navigate}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let key = header_of(&first, "set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let bootstrap = raw_exchange(
        addr,
        format!("GET /page HTTP/1.1\r\nHost: gw\r\n{navigate}Cookie: {key}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(bootstrap.contains("sessiongate-challenge"), "{bootstrap}");
    assert_own(&bootstrap, "bootstrap page");

    // The app's answers are the app's.
    let proxied = raw_exchange(
        addr,
        b"GET /app HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&proxied), 200);
    assert!(
        header_of(&proxied, "x-content-type-options").is_none(),
        "{proxied}"
    );
    assert!(header_of(&proxied, "server").is_none(), "{proxied}");
}
