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
