//! `max_sessions` over HTTP: `reject` refuses only requests that would create a
//! session; `evict` makes room by ending the least recently seen one.

use reqwest::StatusCode;
use sessiongate::config::{SessionMode, WhenFull};

use crate::common::{cookie_client, Fixture};

#[tokio::test]
async fn reject_refuses_new_sessions_and_keeps_existing_ones() {
    let fx = Fixture::start(SessionMode::Browser, |c| c.session.max_sessions = 2).await;
    let (a, b, c) = (cookie_client(), cookie_client(), cookie_client());
    assert_eq!(
        a.get(fx.url("/")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        b.get(fx.url("/")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let refused = c.get(fx.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["x-session-state"], "none");
    assert!(refused.headers().get("set-cookie").is_none());
    for client in [&a, &b] {
        let again = client.get(fx.url("/")).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(again.headers()["x-session-state"], "active");
    }
    assert_eq!(
        fx.upstream.requests().len(),
        4,
        "the refused request never went up"
    );
}

#[tokio::test]
async fn evict_ends_the_least_recently_seen_session() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.session.max_sessions = 2;
        c.session.when_full = WhenFull::Evict;
    })
    .await;
    let (a, b, c) = (cookie_client(), cookie_client(), cookie_client());
    a.get(fx.url("/")).send().await.unwrap();
    b.get(fx.url("/")).send().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    a.get(fx.url("/")).send().await.unwrap(); // a is seen again: b is the oldest now
    let third = c.get(fx.url("/")).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(
        fx.metric("sessiongate_sessions_ended_total{reason=\"evicted\"}")
            .await,
        1.0
    );
    let a_again = a.get(fx.url("/")).send().await.unwrap();
    assert!(
        a_again.headers().get("set-cookie").is_none(),
        "a kept its session"
    );
    let b_again = b.get(fx.url("/")).send().await.unwrap();
    assert!(
        b_again.headers().get("set-cookie").is_some(),
        "b was evicted and starts over"
    );
}

/// One HTTP/2 connection asks for 150 slow pages at once: the gateway announces
/// `listen.max_streams` and so never has more than that many of them upstream.
#[tokio::test]
async fn one_http2_connection_never_has_more_than_max_streams_upstream() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let fx = Fixture::start(SessionMode::Tab, |c| c.listen.max_streams = 20).await;
    let stream = tokio::net::TcpStream::connect(fx.gateway.public_addr)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // One request first, so the server's SETTINGS have arrived before the burst.
    let warm_up = http::Request::get(fx.url("/"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(warm_up).await.unwrap().status(), 200);

    let mut streams = tokio::task::JoinSet::new();
    for i in 0..150 {
        let mut sender = sender.clone();
        let url = fx.url(&format!("/slow?ms=150&i={i}"));
        streams.spawn(async move {
            sender.ready().await.unwrap();
            let request = http::Request::get(url)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            response.into_body().collect().await.unwrap();
            status
        });
    }
    while let Some(status) = streams.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(fx.upstream.requests().len(), 151);
    let peak = fx.upstream.peak_in_flight();
    assert!(
        peak <= 20,
        "{peak} upstream requests at once from one connection"
    );
    assert!(peak > 1, "the streams did run concurrently ({peak})");
}

/// Over `upstream.max_in_flight`, a request waits up to `connect_timeout` for a
/// slot, then gets 503 with `Retry-After`; slots come back when bodies are done.
#[tokio::test]
async fn upstream_requests_over_max_in_flight_wait_then_get_503() {
    use std::time::{Duration, Instant};

    use sessiongate::config::Duration as CfgDuration;

    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.upstream.max_in_flight = 2;
        c.upstream.connect_timeout = CfgDuration::from_millis(400);
    })
    .await;
    let client = reqwest::Client::new();
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let request = client.get(fx.url(&format!("/slow?ms=2000&i={i}")));
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    fx.upstream.wait_for(2).await;

    let started = Instant::now();
    let third = tokio::spawn(client.get(fx.url("/third")).send());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fx.metric("sessiongate_upstream_waiting").await, 1.0);
    let third = third.await.unwrap().unwrap();
    let waited = started.elapsed();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers()["retry-after"], "1");
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_millis(1_900), "{waited:?}");
    assert_eq!(fx.metric("sessiongate_upstream_waiting").await, 0.0);
    assert_eq!(
        fx.metric("sessiongate_refusals_total{reason=\"upstream_busy\"}")
            .await,
        1.0
    );
    assert!(
        fx.upstream.requests().iter().all(|r| r.uri != "/third"),
        "the refused request never went up"
    );

    for request in slow {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    // Both slots are free again once those bodies are done.
    for _ in 0..3 {
        let response = client.get(fx.url("/after")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap();
    }
}
