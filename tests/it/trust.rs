//! The trust boundary at the front: behind a TLS-terminating proxy the public scheme
//! is https (Secure `__Host-` cookies, HSTS, the `https://` Origin is the gateway's
//! own) and the client is the address the proxy names — but only when the peer is a
//! trusted proxy. From anyone else, forwarded headers change nothing.

use reqwest::StatusCode;
use sessiongate::config::{PublicScheme, SessionMode};

use crate::common::Fixture;

/// Trusts the loopback peer the tests connect from.
fn loopback_trusted(c: &mut sessiongate::config::Config) {
    c.listen.trusted_proxies = vec!["127.0.0.0/8".into(), "::1/128".into()];
}

/// Trusts a network the tests never connect from.
fn others_trusted(c: &mut sessiongate::config::Config) {
    c.listen.trusted_proxies = vec!["10.0.0.0/8".into(), "fd00::/8".into()];
}

/// The `Set-Cookie` lines of a response.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// `name=value` pairs of `Set-Cookie` lines, as a `Cookie` header.
fn cookie_header(set_cookies: &[String]) -> String {
    set_cookies
        .iter()
        .map(|c| c.split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `POST heartbeat` as the agent would send it (cookie mode), from `origin`.
async fn heartbeat(fx: &Fixture, cookies: &str, origin: &str) -> StatusCode {
    reqwest::Client::new()
        .post(fx.url("/__sessiongate/heartbeat"))
        .header("cookie", cookies)
        .header("x-sessiongate-agent", "1")
        .header("x-forwarded-proto", "https")
        .header("origin", origin)
        .json(&serde_json::json!({"page": "p1", "activity": false, "visible": true}))
        .send()
        .await
        .unwrap()
        .status()
}

/// One test for both sides of the boundary, so that it fails unless forwarded
/// headers are believed from trusted proxies *and* only from them.
#[tokio::test]
async fn a_tls_terminating_proxy_is_believed_only_when_trusted() {
    behind_a_trusted_tls_terminator_cookies_are_secure_and_https_is_the_own_origin().await;
    forwarded_headers_from_an_untrusted_peer_change_nothing().await;
}

async fn behind_a_trusted_tls_terminator_cookies_are_secure_and_https_is_the_own_origin() {
    let fx = Fixture::start(SessionMode::Browser, loopback_trusted).await;
    let first = reqwest::Client::new()
        .get(fx.url("/"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let cookies = set_cookies(&first);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for cookie in &cookies {
        assert!(cookie.starts_with("__Host-sg_"), "{cookie}");
        assert!(cookie.contains("; Secure"), "{cookie}");
        assert!(cookie.contains("Path=/"), "{cookie}");
    }
    assert_eq!(
        first.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let seen = &fx.upstream.wait_for(1).await[0];
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1"),
        "starts with the client; what the client itself claimed is dropped"
    );
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    assert!(
        seen.header("cookie").is_none(),
        "__Host- cookies never go upstream"
    );

    let cookies = cookie_header(&cookies);
    let own = format!("https://{}", fx.gateway.public_addr);
    assert_eq!(heartbeat(&fx, &cookies, &own).await, StatusCode::OK);
    let plain = format!("http://{}", fx.gateway.public_addr);
    assert_eq!(
        heartbeat(&fx, &cookies, &plain).await,
        StatusCode::FORBIDDEN,
        "the public origin is https"
    );

    // The session cookie is read in the https spelling.
    let again = reqwest::Client::new()
        .get(fx.url("/again"))
        .header("x-forwarded-proto", "https")
        .header("cookie", &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["x-session-state"], "active");
    assert!(set_cookies(&again).is_empty(), "the same session goes on");
}

async fn forwarded_headers_from_an_untrusted_peer_change_nothing() {
    let fx = Fixture::start(SessionMode::Browser, others_trusted).await;
    let first = reqwest::Client::new()
        .get(fx.url("/"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let cookies = set_cookies(&first);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for cookie in &cookies {
        assert!(cookie.starts_with("sg_"), "{cookie}");
        assert!(!cookie.contains("Secure"), "{cookie}");
    }
    assert!(first.headers().get("strict-transport-security").is_none());
    let seen = &fx.upstream.wait_for(1).await[0];
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));

    let cookies = cookie_header(&cookies);
    let https = format!("https://{}", fx.gateway.public_addr);
    assert_eq!(
        heartbeat(&fx, &cookies, &https).await,
        StatusCode::FORBIDDEN,
        "a claimed https origin is foreign over plain http"
    );
    let own = format!("http://{}", fx.gateway.public_addr);
    assert_eq!(heartbeat(&fx, &cookies, &own).await, StatusCode::OK);
}

#[tokio::test]
async fn per_client_limits_apply_to_the_client_a_trusted_proxy_names() {
    let mint = |fx: &Fixture, client: &'static str| {
        let url = fx.url("/");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("x-forwarded-for", client)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let behind = Fixture::start(SessionMode::Browser, |c| {
        loopback_trusted(c);
        c.session.new_per_client = 1;
    })
    .await;
    assert_eq!(mint(&behind, "203.0.113.1").await, StatusCode::OK);
    assert_eq!(mint(&behind, "203.0.113.2").await, StatusCode::OK);
    assert_eq!(
        mint(&behind, "203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // From an untrusted peer, a made-up X-Forwarded-For cannot dodge the limit.
    let exposed = Fixture::start(SessionMode::Browser, |c| {
        others_trusted(c);
        c.session.new_per_client = 1;
    })
    .await;
    assert_eq!(mint(&exposed, "203.0.113.1").await, StatusCode::OK);
    assert_eq!(
        mint(&exposed, "203.0.113.2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_configured_public_scheme_needs_no_forwarded_header() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.listen.public_scheme = PublicScheme::Https;
    })
    .await;
    let first = reqwest::get(fx.url("/")).await.unwrap();
    for cookie in set_cookies(&first) {
        assert!(cookie.starts_with("__Host-sg_"), "{cookie}");
        assert!(cookie.contains("; Secure"), "{cookie}");
    }
    assert!(first.headers().get("strict-transport-security").is_some());
    let seen = &fx.upstream.wait_for(1).await[0];
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));

    let plain = Fixture::start(SessionMode::Browser, |c| {
        loopback_trusted(c);
        c.listen.public_scheme = PublicScheme::Http;
    })
    .await;
    let first = reqwest::Client::new()
        .get(plain.url("/"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    for cookie in set_cookies(&first) {
        assert!(cookie.starts_with("sg_"), "{cookie}");
    }
}
