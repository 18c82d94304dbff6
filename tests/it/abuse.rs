//! Abuse resistance against the real gateway over sockets (issue 14): one client
//! spending challenges cannot lock other browsers out, a refused creation spends
//! nothing, live sessions and challenge issuance are capped per client address.
//! Client addresses are set with `X-Forwarded-For` from a trusted loopback proxy.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sessiongate::config::{Config, SessionMode};

use crate::common::Fixture;
use crate::tab::{text, Browser};

fn loopback_trusted(c: &mut Config) {
    c.listen.trusted_proxies = vec!["127.0.0.0/8".into(), "::1/128".into()];
}

/// A browser profile whose requests come (through the trusted proxy) from `client`.
fn browser_at(client: &str) -> Browser {
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_str(client).unwrap());
    Browser {
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .default_headers(headers)
            .build()
            .unwrap(),
        key: None,
    }
}

/// The challenge of a bootstrap page.
async fn challenge_of(page: Response) -> String {
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let marker = "name=\"sessiongate-challenge\" content=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("not the bootstrap page: {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_string()
}

async fn post_session(tab: &Browser, fx: &Fixture, challenge: &str) -> Response {
    tab.post(fx, "session", None, json!({"challenge": challenge}))
        .await
}

#[tokio::test]
async fn a_burst_of_spent_challenges_from_one_client_locks_out_nobody_else() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        loopback_trusted(c);
        // No rate or live-session limit: only the spent-value memory is tested.
        c.session.new_per_client = 0;
        c.session.max_per_client = 0;
    })
    .await;
    let mut attacker = browser_at("203.0.113.66");
    attacker.navigate(&fx, "/").await;
    let (mut accepted, mut refused) = (0, 0);
    let mut spent = Vec::new();
    for _ in 0..200 {
        let challenge = challenge_of(attacker.navigate(&fx, "/").await).await;
        match post_session(&attacker, &fx, &challenge).await.status() {
            StatusCode::OK => accepted += 1,
            StatusCode::FORBIDDEN => refused += 1,
            other => panic!(
                "unexpected {other} after {accepted} accepted: {}",
                attacker
                    .post(&fx, "session", None, json!({"challenge": "x"}))
                    .await
                    .text()
                    .await
                    .unwrap()
            ),
        }
        spent.push(challenge);
    }
    // The attacker's own partition filled; past it only the attacker is refused.
    assert_eq!(accepted, 64, "the per-browser cap");
    assert_eq!(refused, 136);
    let replay = post_session(&attacker, &fx, &spent[0]).await;
    assert_eq!(replay.status(), StatusCode::FORBIDDEN, "single use holds");

    // Another browser (another address) bootstraps and navigates with a ticket.
    let mut user = browser_at("198.51.100.7");
    user.navigate(&fx, "/").await;
    let challenge = challenge_of(user.navigate(&fx, "/page").await).await;
    let reply = post_session(&user, &fx, &challenge).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let reply: Value = reply.json().await.unwrap();
    let handle = text(&reply, "handle");
    let ticket = text(&reply, "ticket");
    let before = fx.upstream.requests().len();
    let page = user
        .navigate(&fx, &format!("/page?__sg_t={ticket}&__sg_b=1"))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["x-session-state"], "active");
    let seen = fx.upstream.wait_for(before + 1).await;
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-session").as_deref(), Some(handle.as_str()));

    // Even the same address with a fresh browser is not locked out.
    let mut sibling = browser_at("203.0.113.66");
    sibling.navigate(&fx, "/").await;
    let challenge = challenge_of(sibling.navigate(&fx, "/").await).await;
    assert_eq!(
        post_session(&sibling, &fx, &challenge).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_creation_refused_by_the_per_client_limit_spends_no_challenge() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        loopback_trusted(c);
        c.session.max_per_client = 2;
    })
    .await;
    let mut tab = browser_at("203.0.113.5");
    // First contact mints one session, the first bootstrap a second.
    tab.navigate(&fx, "/").await;
    let first = challenge_of(tab.navigate(&fx, "/").await).await;
    let reply = post_session(&tab, &fx, &first).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let token = text(&reply.json::<Value>().await.unwrap(), "token");

    // A third live session from this address: 429, and the challenge is kept.
    let challenge = challenge_of(tab.navigate(&fx, "/").await).await;
    let refused = post_session(&tab, &fx, &challenge).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));

    // Once one of its sessions ends, the same challenge still works.
    let end = tab.post(&fx, "end", Some(&token), json!({})).await;
    assert_eq!(end.status(), StatusCode::OK);
    let retried = post_session(&tab, &fx, &challenge).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let token = text(&retried.json::<Value>().await.unwrap(), "token");
    // And it is single use all the same (resuming creates nothing, so no limit
    // answers first).
    let again = tab
        .post(
            &fx,
            "session",
            Some(&token),
            json!({"challenge": challenge}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn live_sessions_are_capped_per_client_address() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        loopback_trusted(c);
        c.session.max_per_client = 3;
    })
    .await;
    let mint = |client: &'static str| {
        let url = fx.url("/");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("x-forwarded-for", client)
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        assert_eq!(mint("203.0.113.9").await.status(), StatusCode::OK);
    }
    let refused = mint("203.0.113.9").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    // The same /64 is the same client; another address is not affected.
    assert_eq!(mint("2001:db8::1").await.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(mint("2001:db8::2").await.status(), StatusCode::OK);
    }
    assert_eq!(
        mint("2001:db8::ffff").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(mint("198.51.100.1").await.status(), StatusCode::OK);
    assert_eq!(fx.gateway.store.len(), 7);
}

#[tokio::test]
async fn challenge_issuance_is_rate_limited_per_client_address() {
    // Challenges: 4 × new_per_client per minute per address.
    let fx = Fixture::start(SessionMode::Tab, |c| {
        loopback_trusted(c);
        c.session.new_per_client = 2;
    })
    .await;
    let mut script = browser_at("203.0.113.77");
    script.navigate(&fx, "/").await;
    for _ in 0..8 {
        challenge_of(script.navigate(&fx, "/").await).await;
    }
    let refused = script.navigate(&fx, "/").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address still gets its bootstrap page.
    let mut user = browser_at("198.51.100.8");
    user.navigate(&fx, "/").await;
    challenge_of(user.navigate(&fx, "/").await).await;
}

#[tokio::test]
async fn a_token_less_admin_listener_answers_only_loopback_host_names() {
    use crate::common::{raw_exchange, status_of};
    let ask = |addr, host: &str, path: &str| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        async move { status_of(&raw_exchange(addr, raw.as_bytes()).await) }
    };
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let admin = fx.gateway.admin_addr;
    for host in [
        "127.0.0.1:9090",
        "localhost",
        "LOCALHOST.:1",
        "127.8.9.10",
        "[::1]:9090",
    ] {
        assert_eq!(ask(admin, host, "/metrics").await, 200, "{host}");
    }
    // A DNS name rebound to 127.0.0.1 carries the attacker page's host name.
    for path in ["/metrics", "/healthz", "/sessions"] {
        for host in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.1.evil.example",
            "10.0.0.1",
        ] {
            assert_eq!(ask(admin, host, path).await, 403, "{host}{path}");
        }
    }
    // With a token, Prometheus may scrape by any address.
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.admin.token = "s3cret-admin-token".into()
    })
    .await;
    assert_eq!(
        ask(fx.gateway.admin_addr, "10.1.2.3:9090", "/metrics").await,
        200
    );
    assert_eq!(
        ask(fx.gateway.admin_addr, "10.1.2.3:9090", "/sessions").await,
        401
    );
}
