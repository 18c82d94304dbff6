//! The reserved endpoints under `/__sessiongate`.

use serde_json::Value;
use sessiongate::config::SessionMode;

use crate::common::{cookie_client, Fixture};

/// `GET /__sessiongate/status` as `client` sees it.
async fn status(fx: &Fixture, client: &reqwest::Client) -> Value {
    let response = client
        .get(fx.url("/__sessiongate/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn status_heartbeat_and_end_for_a_cookie_session() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let client = cookie_client();
    client.get(fx.url("/")).send().await.unwrap();

    let status = status(&fx, &client).await;
    assert_eq!(status["state"], "active");
    assert!(status["deadline"].as_u64().unwrap() > status["now"].as_u64().unwrap());

    // A cookie alone is what a cross-site form carries: refused without the agent header.
    let bare = client
        .post(fx.url("/__sessiongate/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 403);

    let beat = client
        .post(fx.url("/__sessiongate/heartbeat"))
        .header("x-sessiongate-agent", "1")
        .json(&serde_json::json!({"page": "p1", "activity": false, "visible": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 200);
    assert_eq!(beat.headers()["x-session-state"], "active");
    let beat: Value = beat.json().await.unwrap();
    assert_eq!(beat["state"], "active");
    assert!(beat["abandon_at"].as_u64().is_some());
    assert_eq!(fx.metric("sessiongate_heartbeats_total").await, 1.0);

    let end = client
        .post(fx.url("/__sessiongate/end"))
        .header("x-sessiongate-agent", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(end.status(), 200);
    assert_eq!(end.headers()["x-session-state"], "ended");
    let expired = end
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("sg_session=;"));
    assert!(expired, "the session cookie is expired");
    assert_eq!(
        fx.metric("sessiongate_sessions_ended_total{reason=\"ended\"}")
            .await,
        1.0
    );
    assert!(
        fx.upstream.requests().len() == 1,
        "nothing reserved was forwarded"
    );
}

#[tokio::test]
async fn reserved_posts_are_guarded() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let client = cookie_client();
    client.get(fx.url("/")).send().await.unwrap();
    let post = |path: &str| client.post(fx.url(path)).header("x-sessiongate-agent", "1");

    let cross = post("/__sessiongate/heartbeat")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let foreign = post("/__sessiongate/heartbeat")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let own_origin = post("/__sessiongate/heartbeat")
        .header("origin", format!("http://{}", fx.gateway.public_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(own_origin.status(), 200);

    let big = post("/__sessiongate/heartbeat")
        .body(vec![b' '; 17 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let junk = post("/__sessiongate/heartbeat")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), 400);

    let get = client
        .get(fx.url("/__sessiongate/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let missing = client
        .get(fx.url("/__sessiongate/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // No session at all: 401 for POST, "none" for status.
    let anonymous = reqwest::Client::new();
    let no_session = anonymous
        .post(fx.url("/__sessiongate/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_session.status(), 401);
    assert_eq!(no_session.headers()["x-session-state"], "none");
    let status = status(&fx, &anonymous).await;
    assert_eq!(status["state"], "none");
    assert!(
        fx.upstream.requests().len() == 1,
        "nothing reserved was forwarded"
    );
}
