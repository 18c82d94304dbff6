//! Hooks over real HTTP: the recording upstream receives `start`, `timeout` and `end`
//! as `POST`s with the session's `X-Session` and the DESIGN.md §7 JSON, in order,
//! and a `timeout` hook answering `{"handled": true}` keeps the session.

use std::time::Duration;

use serde_json::Value;
use sessiongate::config::{Config, Duration as Cfg, SessionMode};

use crate::common::upstream::Recorded;
use crate::common::{cookie_client, Fixture};

/// Short lifetimes so a countdown runs out within a second.
fn short_lifetimes(config: &mut Config) {
    config.session.timeout = Cfg::from_millis(400);
    config.session.countdown = Some(Cfg::from_millis(400));
    config.session.abandon = Some(Cfg::from_secs(30));
    config.hooks.start = "/hooks/start".into();
    config.hooks.end = "/hooks/end".into();
}

/// Waits until the upstream has seen a request whose path starts with `path`.
async fn wait_path(fx: &Fixture, path: &str) -> Vec<Recorded> {
    for _ in 0..100 {
        let seen = fx.upstream.requests();
        if seen.iter().any(|r| r.uri.starts_with(path)) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {path} within 5 s: {:?}", fx.upstream.requests());
}

fn position(seen: &[Recorded], path: &str) -> usize {
    seen.iter()
        .position(|r| r.uri.starts_with(path))
        .unwrap_or_else(|| panic!("no {path}"))
}

fn json(request: &Recorded) -> Value {
    serde_json::from_slice(&request.body).expect("hook body is JSON")
}

#[tokio::test]
async fn hooks_arrive_in_order_with_the_session_and_its_json() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        short_lifetimes(c);
        c.hooks.timeout = "/hooks/timeout".into();
    })
    .await;
    let client = cookie_client();
    let page = client.get(fx.url("/page")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let seen = wait_path(&fx, "/hooks/end").await;

    let (start, first, timeout, end) = (
        position(&seen, "/hooks/start"),
        position(&seen, "/page"),
        position(&seen, "/hooks/timeout"),
        position(&seen, "/hooks/end"),
    );
    assert!(
        start < first,
        "start hook before the first request: {seen:?}"
    );
    assert!(first < timeout && timeout < end, "{seen:?}");
    assert_eq!(
        seen.iter()
            .filter(|r| r.uri.starts_with("/hooks/end"))
            .count(),
        1,
        "exactly one end"
    );
    let handle = seen[first].header("x-session").unwrap();
    for (index, event) in [(start, "start"), (timeout, "timeout"), (end, "end")] {
        let hook = &seen[index];
        assert_eq!(hook.method, "POST");
        assert_eq!(hook.header("x-session").as_deref(), Some(handle.as_str()));
        assert_eq!(
            hook.header("content-type").as_deref(),
            Some("application/json")
        );
        let body = json(hook);
        assert_eq!(body["event"], event);
        assert_eq!(body["session"], handle.as_str());
        assert!(body["parent"].is_null());
        for field in ["created", "last_activity", "at"] {
            assert!(
                body[field].as_u64().unwrap() > 1_600_000_000_000,
                "{field}: {body}"
            );
        }
    }
    let end = json(&seen[end]);
    assert_eq!(end["reason"], "timeout");
    assert!(json(&seen[start])["reason"].is_null());
    assert!(end["at"].as_u64() >= end["created"].as_u64());
    assert_eq!(
        fx.metric("sessiongate_hook_calls_total{hook=\"end\",outcome=\"ok\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn x_session_end_fires_the_end_hook_and_never_reaches_the_browser() {
    let fx = Fixture::start(SessionMode::Browser, short_lifetimes).await;
    let client = cookie_client();
    client.get(fx.url("/")).send().await.unwrap();
    let ended = client
        .get(fx.url("/respond?header=X-Session-End:1&header=X-Session-Rotate:1"))
        .send()
        .await
        .unwrap();
    assert!(ended.headers().get("x-session-end").is_none());
    assert!(ended.headers().get("x-session-rotate").is_none());
    assert_eq!(ended.headers()["x-session-state"], "ended");
    let seen = wait_path(&fx, "/hooks/end").await;
    assert_eq!(
        json(&seen[position(&seen, "/hooks/end")])["reason"],
        "upstream"
    );
}

#[tokio::test]
async fn a_handled_timeout_keeps_the_session() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        short_lifetimes(c);
        c.hooks.timeout = "/respond?type=application/json&body=%7B%22handled%22%3Atrue%7D".into();
    })
    .await;
    let client = cookie_client();
    client.get(fx.url("/")).send().await.unwrap();
    wait_path(&fx, "/respond").await;
    // Well past timeout + countdown: still alive, and no end hook.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let again = client.get(fx.url("/status?code=204")).send().await.unwrap();
    assert!(again.headers().get("set-cookie").is_none(), "same session");
    assert_eq!(again.headers()["x-session-state"], "active");
    assert!(!fx
        .upstream
        .requests()
        .iter()
        .any(|r| r.uri.starts_with("/hooks/end")));
    assert_eq!(
        fx.metric("sessiongate_countdowns_total{outcome=\"handled\"}")
            .await,
        1.0
    );
}

/// A hook request can be told from a client's request that merely looks like one:
/// it names its event in `X-Session-Hook` (a header no client request carries through
/// the gateway), and with `hooks.secret` it is signed.
#[tokio::test]
async fn hook_requests_say_their_event_and_are_signed_with_the_secret() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.hooks.start = "/hooks/start".into();
        c.hooks.secret = "s3cret".into();
    })
    .await;
    let client = cookie_client();
    // A client forging a hook call: its X-Session-Hook never reaches the upstream.
    let forged = client
        .post(fx.url("/hooks/end"))
        .header("x-session-hook", "end")
        .header("x-session-signature", "sha256=00")
        .body(r#"{"event":"end","session":"00000000-0000-0000-0000-000000000000"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);

    let seen = wait_path(&fx, "/hooks/start").await;
    let start = &seen[position(&seen, "/hooks/start")];
    assert_eq!(start.header("x-session-hook").as_deref(), Some("start"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
    let expected: String = ring::hmac::sign(&key, &start.body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        start.header("x-session-signature"),
        Some(format!("sha256={expected}"))
    );

    let forged = &seen[position(&seen, "/hooks/end")];
    assert_eq!(forged.header("x-session-hook"), None);
    assert_eq!(forged.header("x-session-signature"), None);
}

/// Only a session's first request waits for its start hook: in tab mode `POST
/// session` mints the session without waiting (its start hook is slow), and of two
/// requests that then carry the token at once, only the first waits.
#[tokio::test]
async fn only_the_first_request_waits_for_a_slow_start_hook() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.hooks.start = "/slow?ms=1500".into();
        c.hooks.budget = Cfg::from_secs(5);
    })
    .await;
    let mut tab = crate::tab::Browser::new();
    // First contact (a session of its own); the reload bootstraps a new one.
    tab.navigate(&fx, "/page").await;
    let reply = tab.bootstrap(&fx, "/page", None, false).await;
    assert_eq!(reply["reason"], "new");
    let token = crate::tab::text(&reply, "token");
    let send = |path: &'static str| {
        let (client, url, token) = (tab.client.clone(), fx.url(path), token.clone());
        let key = tab.key.clone().expect("the browser key");
        async move {
            let began = std::time::Instant::now();
            let response = client
                .get(url)
                .header("cookie", key)
                .header("x-session-token", token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-session-state"], "active");
            began.elapsed()
        }
    };
    let first = tokio::spawn(send("/first"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = send("/second").await;
    let first = first.await.unwrap();
    assert!(
        second < Duration::from_millis(700),
        "the second request waited {second:?} for the start hook"
    );
    assert!(
        first >= Duration::from_millis(900),
        "the first request did not wait for the start hook: {first:?}"
    );
}
