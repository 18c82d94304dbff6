//! Identity: sessions carried by cookies and tokens, and never adopted from outside.

use sessiongate::config::SessionMode;

use crate::common::{cookie_client, Fixture};

#[tokio::test]
async fn browser_mode_gives_one_session_to_a_cookie_jar() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let client = cookie_client();
    let first = client.get(fx.url("/one")).send().await.unwrap();
    assert_eq!(first.headers()["x-session-state"], "active");
    let cookies: Vec<_> = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for cookie in &cookies {
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Lax"), "{cookie}");
        assert!(cookie.contains("Path=/"), "{cookie}");
    }
    for path in ["/two", "/three?x=1", "/four"] {
        let later = client.get(fx.url(path)).send().await.unwrap();
        assert!(
            later.headers().get("set-cookie").is_none(),
            "no new cookie on {path}"
        );
    }
    let seen = fx.upstream.wait_for(4).await;
    let handle = seen[0].header_all("x-session");
    assert_eq!(handle.len(), 1, "exactly one X-Session");
    assert!(uuid::Uuid::parse_str(&handle[0]).is_ok());
    for request in &seen {
        assert_eq!(request.header_all("x-session"), handle, "{}", request.uri);
        let cookie = request.header("cookie").unwrap_or_default();
        assert!(
            !cookie.contains("sg_"),
            "proxy cookies reach the upstream: {cookie}"
        );
    }
    assert_eq!(
        fx.metric("sessiongate_sessions_created_total{kind=\"new\"}")
            .await,
        1.0
    );
    assert_eq!(
        fx.metric("sessiongate_sessions_active{state=\"active\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn two_cookie_jars_get_two_sessions_and_other_cookies_pass() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let (a, b) = (cookie_client(), cookie_client());
    let first = a.get(fx.url("/")).send().await.unwrap();
    let a_cookies = format!(
        "sg_browser={}; sg_session={}",
        set_cookie(&first, "sg_browser"),
        set_cookie(&first, "sg_session")
    );
    b.get(fx.url("/")).send().await.unwrap();
    // The app's own cookies around the proxy's, as a browser would send them.
    reqwest::Client::new()
        .get(fx.url("/"))
        .header("cookie", format!("app=1; {a_cookies}; theme=dark"))
        .send()
        .await
        .unwrap();
    let seen = fx.upstream.wait_for(3).await;
    let (ha, hb) = (seen[0].header("x-session"), seen[1].header("x-session"));
    assert_ne!(ha, hb);
    assert_eq!(seen[2].header("x-session"), ha);
    assert_eq!(
        seen[2].header("cookie").as_deref(),
        Some("app=1; theme=dark")
    );
}

/// Extracts the value of cookie `name` from a response's Set-Cookie headers.
fn set_cookie(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_string()
}

#[tokio::test]
async fn forged_malformed_and_foreign_tokens_are_never_adopted() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let client = reqwest::Client::new();
    let minted = client.get(fx.url("/")).send().await.unwrap();
    let token = set_cookie(&minted, "sg_session");
    let key = set_cookie(&minted, "sg_browser");
    let good = format!("sg_browser={key}; sg_session={token}");
    let other_key = "A".repeat(43);
    let forged = "B".repeat(43);

    let attempts = [
        // The real token with another browser key: bound elsewhere.
        format!("sg_browser={other_key}; sg_session={token}"),
        // The real token without any browser key.
        format!("sg_session={token}"),
        // A well-formed token nobody minted.
        format!("sg_browser={key}; sg_session={forged}"),
        // Malformed tokens.
        format!("sg_browser={key}; sg_session={}", &token[..42]),
        format!("sg_browser={key}; sg_session={token}="),
        format!("sg_browser={key}; sg_session=../../etc/passwd"),
    ];
    for cookie in &attempts {
        client
            .get(fx.url("/x"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
    }
    // The same forged token in the header, with the right browser key.
    client
        .get(fx.url("/x"))
        .header("cookie", format!("sg_browser={key}"))
        .header("x-session-token", &forged)
        .send()
        .await
        .unwrap();
    // And the genuine pair still works.
    client
        .get(fx.url("/x"))
        .header("cookie", &good)
        .send()
        .await
        .unwrap();

    let seen = fx.upstream.wait_for(attempts.len() + 3).await;
    let genuine = seen[0].header("x-session").unwrap();
    let adopted: Vec<_> = seen[1..seen.len() - 1]
        .iter()
        .filter(|r| r.header("x-session").as_deref() == Some(genuine.as_str()))
        .map(|r| r.header("cookie"))
        .collect();
    assert!(adopted.is_empty(), "adopted with {adopted:?}");
    assert_eq!(seen.last().unwrap().header("x-session"), Some(genuine));
}

#[tokio::test]
async fn tab_mode_without_a_token_forwards_without_a_session() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.session.require = vec!["/private".into()];
    })
    .await;
    let client = reqwest::Client::new();
    let open = client.get(fx.url("/public")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(open.headers()["x-session-state"], "none");
    for path in [
        "/private/page",
        "//private/page",
        "/PRIVATE/x",
        "/a/../private",
    ] {
        let response = client.get(fx.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()["x-session-state"], "none");
    }
    let seen = fx.upstream.wait_for(1).await;
    assert_eq!(seen.len(), 1, "the 401s were not forwarded");
}

#[tokio::test]
async fn prefetch_never_mints_a_session() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let response = reqwest::Client::new()
        .get(fx.url("/"))
        .header("sec-purpose", "prefetch")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("set-cookie").is_none());
    assert_eq!(response.headers()["x-session-state"], "none");
    assert_eq!(
        fx.metric("sessiongate_sessions_created_total{kind=\"new\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_full_store_rejects_new_sessions_but_keeps_existing_ones() {
    let fx = Fixture::start(SessionMode::Browser, |c| c.session.max_sessions = 1).await;
    let first = cookie_client();
    assert_eq!(first.get(fx.url("/")).send().await.unwrap().status(), 200);
    let second = cookie_client().get(fx.url("/")).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(first.get(fx.url("/")).send().await.unwrap().status(), 200);
}
