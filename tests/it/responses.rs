//! What reaches the browser: the upstream's control headers are read strictly.

use std::time::Duration;

use sessiongate::config::SessionMode;

use crate::common::{session_cookies, Fixture};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
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
