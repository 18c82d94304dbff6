//! The admin session API: paging, get, delete (reason `admin`, end hook), patch
//! timeout, the `state` filter and `count`, milliseconds everywhere, bearer-token
//! refusal and clear JSON errors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiongate::config::{Duration as CfgDuration, SessionMode};

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

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since_epoch.as_millis()).unwrap()
}

#[tokio::test]
async fn lists_in_stable_pages() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let before = now_ms();
    let mut handles = sessions(&fx, 5).await;
    let after = now_ms();
    handles.sort();
    let mut listed = Vec::new();
    let mut url = fx.admin_url("/sessions?limit=2");
    let mut pages = 0;
    loop {
        let (status, page) = get(url).await;
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        // Every page counts the whole table, not itself.
        assert_eq!(page["count"], 5, "{page}");
        for session in page["sessions"].as_array().unwrap() {
            listed.push(session["handle"].as_str().unwrap().to_string());
            assert_eq!(session["state"], "active");
            assert_eq!(session["mode"], "browser");
            // Milliseconds everywhere: the duration says so in its name, the
            // instants are ms since the epoch (whole numbers, taken in this test).
            assert_eq!(session["timeout_ms"], 120_000, "{session}");
            assert!(session.get("timeout").is_none(), "{session}");
            assert!(session["parent"].is_null());
            for field in ["created", "last_activity", "last_seen"] {
                let at = session[field].as_u64().unwrap();
                assert!(
                    (before.saturating_sub(1000)..=after + 1000).contains(&at),
                    "{field} = {at}, not ms since the epoch around {before}..{after}"
                );
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
        .json(&json!({"timeout_ms": 2500}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["timeout_ms"], 2500);
    assert_eq!(get(one.clone()).await.1["timeout_ms"], 2500);

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
            client.get(fx.admin_url("/sessions?state=idle")),
            400,
            "state must be active, warning or ended",
        ),
        (
            client
                .patch(fx.admin_url(&format!("/sessions/{handle}")))
                .body("{\"timeout_ms\": -1}"),
            400,
            "timeout_ms",
        ),
        (
            client
                .patch(fx.admin_url(&format!("/sessions/{handle}")))
                .body("{\"timeout_ms\": 1.5}"),
            400,
            "a whole number",
        ),
        (
            // The old field, in seconds: refused with its new name, never guessed.
            client
                .patch(fx.admin_url(&format!("/sessions/{handle}")))
                .body("{\"timeout\": 300}"),
            400,
            "\"timeout\" is now \"timeout_ms\", in milliseconds",
        ),
        (
            client
                .patch(fx.admin_url(&format!("/sessions/{handle}")))
                .body("not json"),
            400,
            "timeout_ms",
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

/// "How many are in the countdown right now?": `state=warning` and `count`.
#[tokio::test]
async fn state_filter_counts_sessions_in_the_countdown() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.session.timeout = CfgDuration::from_secs(1);
        c.session.countdown = Some(CfgDuration::from_secs(60));
        c.session.abandon = Some(CfgDuration::from_secs(120));
    })
    .await;
    let handles = sessions(&fx, 3).await;
    let (_, all) = get(fx.admin_url("/sessions?state=active")).await;
    assert_eq!(all["count"], 3, "{all}");

    // Idle past the 1 s timeout: all three are in the countdown.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, warning) = get(fx.admin_url("/sessions?state=warning")).await;
    assert_eq!(warning["count"], 3, "{warning}");
    assert_eq!(warning["sessions"].as_array().unwrap().len(), 3);

    // A long timeout takes one out of the countdown.
    let kept = &handles[1];
    let response = reqwest::Client::new()
        .patch(fx.admin_url(&format!("/sessions/{kept}")))
        .json(&json!({"timeout_ms": 3_600_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let (_, warning) = get(fx.admin_url("/sessions?state=warning&limit=1")).await;
    assert_eq!(
        warning["count"], 2,
        "counts every match, not the page: {warning}"
    );
    let page = warning["sessions"].as_array().unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["state"], "warning");
    let next = warning["next"].as_str().expect("a second page");
    let (_, rest) = get(fx.admin_url(&format!("/sessions?state=warning&after={next}"))).await;
    assert_eq!(rest["sessions"].as_array().unwrap().len(), 1, "{rest}");
    assert!(rest["next"].is_null());

    let (_, active) = get(fx.admin_url("/sessions?state=active")).await;
    assert_eq!(active["count"], 1, "{active}");
    assert_eq!(active["sessions"][0]["handle"], kept.as_str());
    assert_eq!(active["sessions"][0]["timeout_ms"], 3_600_000);
    let (_, all) = get(fx.admin_url("/sessions")).await;
    assert_eq!(all["count"], 3, "{all}");
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
