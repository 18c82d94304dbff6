//! The admin session API: paging, get, delete (reason `admin`, end hook), patch
//! timeout, bearer-token refusal and clear JSON errors.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiongate::config::SessionMode;

use crate::common::{cookie_client, Fixture};

/// Creates `n` sessions (browser mode: one per cookie jar); returns their handles.
async fn sessions(fx: &Fixture, n: usize) -> Vec<String> {
    for _ in 0..n {
        cookie_client().get(fx.url("/")).send().await.unwrap();
    }
    let seen = fx.upstream.wait_for(n).await;
    seen.iter()
        .map(|r| r.header("x-session").unwrap())
        .collect()
}

async fn get(url: String) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn lists_in_stable_pages() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let mut handles = sessions(&fx, 5).await;
    handles.sort();
    let mut listed = Vec::new();
    let mut url = fx.admin_url("/sessions?limit=2");
    let mut pages = 0;
    loop {
        let (status, page) = get(url).await;
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        for session in page["sessions"].as_array().unwrap() {
            listed.push(session["handle"].as_str().unwrap().to_string());
            assert_eq!(session["state"], "active");
            assert_eq!(session["mode"], "browser");
            assert_eq!(session["timeout"], 120.0);
            assert!(session["parent"].is_null());
            for field in ["created", "last_activity", "last_seen"] {
                assert!(session[field].as_u64().unwrap() > 1_600_000_000_000);
            }
        }
        match page["next"].as_str() {
            Some(next) => url = fx.admin_url(&format!("/sessions?limit=2&after={next}")),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, handles, "every session once, in handle order");
    let (_, all) = get(fx.admin_url("/sessions")).await;
    assert_eq!(all["sessions"].as_array().unwrap().len(), 5);
    assert!(all["next"].is_null());
}

#[tokio::test]
async fn get_patch_and_delete_one_session() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.hooks.end = "/hooks/end".into();
    })
    .await;
    let handle = sessions(&fx, 1).await.remove(0);
    let one = fx.admin_url(&format!("/sessions/{handle}"));
    let (status, session) = get(one.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(session["handle"], handle.as_str());

    let client = reqwest::Client::new();
    let patched: Value = client
        .patch(&one)
        .json(&json!({"timeout": 2.5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["timeout"], 2.5);
    assert_eq!(get(one.clone()).await.1["timeout"], 2.5);

    let deleted = client.delete(&one).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(get(one.clone()).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        fx.metric("sessiongate_sessions_ended_total{reason=\"admin\"}")
            .await,
        1.0
    );
    let seen = fx.upstream.wait_for(2).await;
    let hook = seen
        .iter()
        .find(|r| r.uri == "/hooks/end")
        .expect("end hook");
    let body: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(body["reason"], "admin");
    assert_eq!(body["session"], handle.as_str());
    assert_eq!(
        client.delete(&one).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let handle = sessions(&fx, 1).await.remove(0);
    let client = reqwest::Client::new();
    let cases = [
        (client.get(fx.admin_url("/sessions?limit=0")), 400, "limit"),
        (client.get(fx.admin_url("/sessions?limit=x")), 400, "limit"),
        (
            client.get(fx.admin_url("/sessions?after=nope")),
            400,
            "after",
        ),
        (
            client.get(fx.admin_url(&format!("/sessions/{}", uuid::Uuid::new_v4()))),
            404,
            "no such session",
        ),
        (
            client.get(fx.admin_url("/sessions/not-a-handle")),
            404,
            "no such session",
        ),
        (client.post(fx.admin_url("/sessions")), 405, "method"),
        (
            client
                .patch(fx.admin_url(&format!("/sessions/{handle}")))
                .body("{\"timeout\": -1}"),
            400,
            "timeout",
        ),
        (
            client
                .patch(fx.admin_url(&format!("/sessions/{handle}")))
                .body("not json"),
            400,
            "timeout",
        ),
    ];
    for (request, status, says) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{error:?} should mention {says}");
    }
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.admin.token = "s3cret-admin-token-for-tests".into();
    })
    .await;
    sessions(&fx, 1).await;
    let client = reqwest::Client::new();
    let url = fx.admin_url("/sessions");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret-admin-token-for-tests"),
    ] {
        let mut request = client.get(&url);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(response.headers().contains_key("www-authenticate"));
    }
    let allowed = client
        .get(&url)
        .bearer_auth("s3cret-admin-token-for-tests")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    // Health and metrics stay open for probes and scrapers.
    for path in ["/healthz", "/metrics"] {
        let response = client.get(fx.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}
