//! `tab` mode: requests a page makes by itself — fetch, XHR (the agent adds
//! `X-Session-Token`) and WebSocket (the agent adds a `__sg_t` ticket) — reach the
//! upstream with the tab's own handle.

use sessiongate::config::SessionMode;

use crate::fixture::Gate;
use crate::harness::Browser;

/// Clicks the fetch, XHR and WebSocket buttons and checks what the app echoed.
async fn requests_carry(browser: &Browser, handle: &str, context: &str) {
    browser.click("#fetch").await;
    assert_eq!(
        browser.wait_text("#fetch-result").await,
        handle,
        "{context}: fetch reached the app with another X-Session"
    );
    browser.click("#xhr").await;
    assert_eq!(
        browser.wait_text("#xhr-result").await,
        handle,
        "{context}: XHR reached the app with another X-Session"
    );
    browser.click("#ws").await;
    assert_eq!(
        browser.wait_text("#ws-result").await,
        handle,
        "{context}: the WebSocket reached the app with another X-Session"
    );
    assert_eq!(
        browser.wait_text("#ws-echo").await,
        "ping from the page",
        "{context}: WebSocket echo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_xhr_and_websocket_carry_the_tabs_session() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let browser = Browser::launch().await;

    browser.goto(&gate.url("/page")).await;
    let (a, _) = browser.wait_handle(None, "tab A").await;
    browser.wait_agent("tab A").await;
    requests_carry(&browser, &a, "tab A").await;

    browser.new_tab().await;
    browser.goto(&gate.url("/page")).await;
    let (b, _) = browser.wait_handle(None, "tab B").await;
    assert_ne!(a, b, "two tabs, two sessions");
    browser.wait_agent("tab B").await;
    requests_carry(&browser, &b, "tab B").await;

    // What the app saw: each request with its tab's handle and no __sg parameter
    // (the WebSocket's ticket is stripped before forwarding).
    let hits = gate.app.hits();
    let sessions = |path: &str| -> Vec<Option<String>> {
        hits.iter()
            .filter(|h| h.path() == path)
            .map(|h| h.session.clone())
            .collect()
    };
    let both = vec![Some(a.clone()), Some(b.clone())];
    assert_eq!(sessions("/ws"), both, "WebSocket handshakes");
    let echoes: Vec<_> = hits.iter().filter(|h| h.path() == "/echo").collect();
    assert_eq!(echoes.len(), 4, "two fetches and two XHRs");
    for hit in &hits {
        assert!(!hit.uri.contains("__sg"), "forwarded {}", hit.uri);
        assert!(
            !hit.headers
                .iter()
                .any(|(name, _)| name == "x-session-token"),
            "the token reached the app on {}",
            hit.uri
        );
    }
    browser
        .assert_no_console_errors("fetch, XHR and WebSocket")
        .await;
    browser.close().await;
}
