//! Forwarding: what reaches the upstream, what comes back, and upstream failures.

use std::time::{Duration, Instant};

use http::Version;
use sessiongate::config::{Duration as CfgDuration, SessionMode};

use crate::common::{Fixture, Upstream};

#[tokio::test]
async fn forwards_method_path_query_and_body_and_streams_the_answer() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let client = reqwest::Client::new();
    let response = client
        // (`__sg_b`, not a ticket: a write with a failing ticket is never forwarded,
        // see ended.rs.)
        .post(fx.url("/echo/form?a=1&__sg_b=1&b=two"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=value&x=%20y")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-session-state"], "none");
    let seen = fx.upstream.wait_for(1).await;
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.uri, "/echo/form?a=1&b=two",
        "__sg* params are stripped"
    );
    assert_eq!(&request.body[..], b"name=value&x=%20y");
    assert_eq!(request.version, Version::HTTP_11);
    assert!(
        request.header("x-session").is_none(),
        "no session, no X-Session"
    );
}

#[tokio::test]
async fn sets_forwarded_headers_from_the_connection_unless_trusted() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    reqwest::Client::new()
        .get(fx.url("/"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .send()
        .await
        .unwrap();
    let request = &fx.upstream.wait_for(1).await[0];
    assert_eq!(request.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(request.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        request.header("x-forwarded-host"),
        Some(fx.gateway.public_addr.to_string())
    );
    assert!(request.header("forwarded").is_none());

    let trusted = Fixture::start(SessionMode::Tab, |c| c.upstream.trust_forwarded = true).await;
    reqwest::Client::new()
        .get(trusted.url("/"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let request = &trusted.upstream.wait_for(1).await[0];
    assert_eq!(
        request.header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1")
    );
    assert_eq!(
        request.header("x-forwarded-proto").as_deref(),
        Some("https")
    );
}

#[tokio::test]
async fn keeps_a_sane_request_id_and_replaces_others() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let client = reqwest::Client::new();
    let kept = client
        .get(fx.url("/"))
        .header("x-request-id", "abc-123_x.y")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123_x.y");
    client
        .get(fx.url("/"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let seen = fx.upstream.wait_for(2).await;
    assert_eq!(
        seen[0].header("x-request-id").as_deref(),
        Some("abc-123_x.y")
    );
    let replaced = seen[1].header("x-request-id").unwrap();
    assert_ne!(replaced, "bad id with spaces");
    assert!(
        uuid::Uuid::parse_str(&replaced).is_ok(),
        "a fresh UUID: {replaced}"
    );
}

#[tokio::test]
async fn http2_client_reaches_the_http1_upstream_with_host_from_authority() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .cookie_store(true)
        .build()
        .unwrap();
    let first = client.get(fx.url("/a")).send().await.unwrap();
    assert_eq!(first.version(), Version::HTTP_2);
    assert_eq!(first.status(), 200);
    client.get(fx.url("/b")).send().await.unwrap();
    let seen = fx.upstream.wait_for(2).await;
    for request in &seen {
        assert_eq!(request.version, Version::HTTP_11);
        assert_eq!(
            request.header("host"),
            Some(fx.gateway.public_addr.to_string())
        );
    }
    let handle = seen[0].header_all("x-session");
    assert_eq!(handle.len(), 1);
    assert_eq!(
        seen[1].header_all("x-session"),
        handle,
        "same session over h2"
    );
}

#[tokio::test]
async fn upstream_down_is_502_and_counted() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = Upstream::start().await; // unused, keeps Fixture's shape
    drop(upstream);
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.upstream.url = format!("http://{closed}");
    })
    .await;
    let client = crate::common::cookie_client();
    let started = Instant::now();
    let response = client.get(fx.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        response.headers()["x-session-state"],
        "active",
        "session untouched"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("cannot be reached"), "{body}");
    assert_eq!(
        fx.metric("sessiongate_upstream_errors_total{kind=\"connect\"}")
            .await,
        1.0
    );
    assert_eq!(
        fx.metric("sessiongate_requests_total{code=\"5xx\",route=\"proxy\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn slow_upstream_is_504_within_the_response_timeout() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.upstream.response_timeout = CfgDuration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let response = reqwest::get(fx.url("/slow?ms=3000")).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(
        fx.metric("sessiongate_upstream_errors_total{kind=\"timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn response_bodies_stream_without_buffering() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let started = Instant::now();
    let mut response = reqwest::get(fx.url("/stream?chunks=3&ms=400"))
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(first.starts_with(b"chunk 0"), "{first:?}");
    assert!(
        first_at < Duration::from_millis(700),
        "first chunk after {first_at:?}"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).contains("chunk 2"));
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn control_headers_from_the_upstream_never_reach_the_browser() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let client = crate::common::cookie_client();
    let response = client
        .get(fx.url(
            "/respond?header=X-Session-Timeout:30&header=X_Session_Debug:1&header=X-Other:kept",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["x-other"], "kept");
    assert_eq!(headers["x-session-state"], "active");
    let leaked: Vec<_> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.replace('_', "-").starts_with("x-session") && *k != "x-session-state")
        .collect();
    assert!(leaked.is_empty(), "leaked {leaked:?}");
}

#[tokio::test]
async fn upstream_can_end_the_session() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let client = crate::common::cookie_client();
    client.get(fx.url("/")).send().await.unwrap();
    let ended = client
        .get(fx.url("/respond?header=X-Session-End:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.headers()["x-session-state"], "ended");
    client.get(fx.url("/after")).send().await.unwrap();
    let seen = fx.upstream.wait_for(3).await;
    let first = seen[0].header("x-session").unwrap();
    let after = seen[2].header("x-session").unwrap();
    assert_ne!(first, after, "an ended session is never forwarded again");
    assert_eq!(
        fx.metric("sessiongate_sessions_ended_total{reason=\"upstream\"}")
            .await,
        1.0
    );
}
