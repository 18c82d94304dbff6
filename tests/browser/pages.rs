//! Injection in a real browser (DESIGN.md §5, PROTOCOL.md "The injected tag"): the
//! agent runs on pages with a strict CSP (no violation), on gzip-compressed pages
//! and on pages without `<head>`, and a 5 MiB page streams through with exactly one
//! tag added.

use sessiongate::config::SessionMode;

use crate::app::{self, GZIP_TEXT, NOHEAD_TEXT};
use crate::fixture::Gate;
use crate::harness::{assert_clean, Browser};
use crate::selfcheck::{fetch_big, find, find_agent_tag};

/// Loads `path` through the gateway and checks that the app's page came with a
/// session, the agent runs, and the page's own scripts ran.
async fn load(browser: &Browser, gate: &Gate, path: &str) {
    browser.goto(&gate.url(path)).await;
    let (_, page) = browser.wait_handle(None, path).await;
    assert_clean(&page, path);
    browser.wait_agent(path).await;
    assert_eq!(
        browser.text("#script-ran").await.as_deref(),
        Some("yes"),
        "{path}: the page's own script did not run"
    );
}

/// `script-src 'self'` (the agent is a same-origin script) and `script-src
/// 'nonce-abc'` (the gateway reuses the page's nonce): the agent runs and the
/// browser reports no CSP violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_under_a_strict_csp_without_violations() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    // The gateway never weakens the page's policy (DESIGN.md §5).
    for (path, policy) in [
        ("/csp-self", "script-src 'self'"),
        ("/csp-nonce", "script-src 'nonce-abc'"),
    ] {
        let response = reqwest::Client::new()
            .get(gate.url(path))
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        let got: Vec<_> = response
            .headers()
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(got, [policy], "{path}: Content-Security-Policy");
    }

    let browser = Browser::launch().await;
    load(&browser, &gate, "/csp-self").await;
    browser.assert_no_console_errors("script-src 'self'").await;

    load(&browser, &gate, "/csp-nonce").await;
    assert_eq!(
        browser.text("#inline").await.as_deref(),
        Some("ran"),
        "the page's nonce'd inline script"
    );
    browser
        .assert_no_console_errors("script-src 'nonce-abc'")
        .await;
    browser.close().await;
}

/// A gzip-compressed page and a page without `<head>` get the agent, and their
/// text arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_is_injected_into_gzip_and_headless_pages() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let browser = Browser::launch().await;

    load(&browser, &gate, "/gzip").await;
    assert_eq!(browser.text("#text").await.as_deref(), Some(GZIP_TEXT));
    browser.assert_no_console_errors("gzip page").await;

    load(&browser, &gate, "/nohead").await;
    assert_eq!(browser.text("#text").await.as_deref(), Some(NOHEAD_TEXT));
    browser
        .assert_no_console_errors("page without <head>")
        .await;
    browser.close().await;
}

/// The 5 MiB page streams (first bytes before the app finished) and arrives as
/// exactly the app's bytes plus one agent tag, the first element of `<head>`;
/// in Chromium the agent runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_page_streams_with_exactly_one_agent_tag() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let fetched = fetch_big(&gate).await;
    assert!(
        fetched.first_bytes_before_upstream_finished,
        "the gateway held the page back until the app had sent all of it"
    );
    let body = &fetched.body;
    let original = app::big_page();
    let (start, end) = find_agent_tag(body).expect("no agent tag in the 5 MiB page");
    assert!(
        find(&body[end..], b"/agent.js").is_none(),
        "more than one agent tag"
    );
    let head = find(&original, b"<head>").unwrap() + b"<head>".len();
    let first_element = head + find(&original[head..], b"<").unwrap();
    assert!(
        (head..=first_element).contains(&start),
        "the tag is not the first element of <head> (at byte {start})"
    );
    let without = [&body[..start], &body[end..]].concat();
    assert_eq!(
        body.len(),
        app::BIG_LEN + (end - start),
        "5 MiB plus the tag"
    );
    assert!(without == original[..], "the page's bytes were changed");

    let browser = Browser::launch().await;
    browser.goto(&gate.url("/big")).await;
    browser.wait_agent("/big").await;
    assert_eq!(
        browser.text("#end").await.as_deref(),
        Some("end of the big page")
    );
    browser.assert_no_console_errors("/big").await;
    browser.close().await;
}
