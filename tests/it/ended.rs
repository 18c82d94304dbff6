//! Nothing typed goes into a fresh session: in `tab` mode a write that carries a tab
//! identity naming no live session — a ticket that fails, an `X-Session-Token` that
//! resolves to nothing — is answered `409` with `X-Session-State: ended` and never
//! forwarded (DESIGN.md §5; the agent stops such submits itself, this is the rule
//! for the ones it cannot see).

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiongate::config::SessionMode;

use crate::common::{header_of, raw_exchange, status_of, Fixture};
use crate::tab::{text, Browser};

/// A form POST, byte for byte as a browser sends it, with `cookie` and `query`.
fn form_post(fx: &Fixture, cookie: &str, query: &str) -> Vec<u8> {
    let body = "field=typed+before+the+end";
    format!(
        "POST /submit{query} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
         Referer: http://{host}/form?draft=1&__sg_t=old\r\n\
         Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n\
         Accept: text/html\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n{body}",
        host = fx.gateway.public_addr,
        len = body.len(),
    )
    .into_bytes()
}

/// How many requests for `/submit` the upstream has seen.
fn submits(fx: &Fixture) -> usize {
    fx.upstream
        .requests()
        .iter()
        .filter(|r| r.uri.starts_with("/submit"))
        .count()
}

#[tokio::test]
async fn a_write_with_an_ended_or_unknown_tab_identity_is_answered_ended_not_forwarded() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await; // first contact: the browser key
    let reply = tab.bootstrap(&fx, "/form", None, false).await;
    let token = text(&reply, "token");
    let key = tab.key.clone().expect("a browser key");
    let beat = tab
        .post(&fx, "heartbeat", Some(&token), json!({"want": 2}))
        .await;
    let beat: Value = beat.json().await.unwrap();
    let ticket = beat["tickets"][0].as_str().expect("a ticket").to_owned();

    // While the session lives, a write with its token is forwarded.
    let live = tab
        .client
        .post(fx.url("/submit"))
        .header("cookie", &key)
        .header("x-session-token", &token)
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(submits(&fx), 1);

    // The tab's session ends.
    let end = tab.post(&fx, "end", Some(&token), json!({})).await;
    assert_eq!(end.status(), StatusCode::OK);

    // The form POST with the tab's (now dead) ticket: the ended page.
    let answer = raw_exchange(
        fx.gateway.public_addr,
        &form_post(&fx, &key, &format!("?__sg_t={ticket}")),
    )
    .await;
    assert_eq!(status_of(&answer), 409, "{answer}");
    assert_eq!(header_of(&answer, "x-session-state"), Some("ended"));
    assert_eq!(header_of(&answer, "cache-control"), Some("no-store"));
    assert!(
        header_of(&answer, "content-type").is_some_and(|t| t.starts_with("text/html")),
        "{answer}"
    );
    assert!(answer.contains("Your session has ended"), "{answer}");
    assert!(
        answer.contains("<a href=\"/form?draft=1\">Start again</a>"),
        "Start again goes back to the form's page, without __sg: {answer}"
    );

    // fetch/XHR writes with the dead token, or with a token never issued: JSON.
    for presented in [token.as_str(), "A".repeat(43).as_str()] {
        let answer = tab
            .client
            .post(fx.url("/submit"))
            .header("cookie", &key)
            .header("x-session-token", presented)
            .header("sec-fetch-mode", "cors")
            .header("sec-fetch-dest", "empty")
            .body("x=2")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::CONFLICT);
        assert_eq!(answer.headers()["x-session-state"], "ended");
        let body: Value = answer.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("ended"), "{body}");
    }

    // A ticket without the browser key it was bound to, and a made-up ticket.
    for (cookie, query) in [
        ("", format!("?__sg_t={ticket}")),
        (key.as_str(), "?__sg_t=forged".into()),
    ] {
        let answer = raw_exchange(fx.gateway.public_addr, &form_post(&fx, cookie, &query)).await;
        assert_eq!(status_of(&answer), 409, "{query}: {answer}");
    }
    assert_eq!(submits(&fx), 1, "nothing reached the upstream");
    assert_eq!(
        fx.metric(r#"sessiongate_refusals_total{reason="session_ended"}"#)
            .await,
        5.0
    );

    // A write that carries no tab identity at all is forwarded as before (without a
    // session), and a page load with a spent ticket still gets the bootstrap page.
    let plain = raw_exchange(fx.gateway.public_addr, &form_post(&fx, &key, "")).await;
    assert_eq!(status_of(&plain), 200, "{plain}");
    assert_eq!(submits(&fx), 2);
    assert!(fx
        .upstream
        .requests()
        .last()
        .unwrap()
        .header("x-session")
        .is_none());
    let page = tab.navigate(&fx, &format!("/form?__sg_t={ticket}")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.headers()["x-session-state"],
        "none",
        "the bootstrap page"
    );
}

/// `browser` mode keeps ASP.NET's rule: a request without a valid cookie gets a new
/// session, writes included; the tab rule does not apply.
#[tokio::test]
async fn browser_mode_writes_with_a_stale_token_get_a_new_session() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let answer = reqwest::Client::new()
        .post(fx.url("/submit"))
        .header("x-session-token", "A".repeat(43))
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-session-state"], "active");
}
