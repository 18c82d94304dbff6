//! Checks of the harness itself, independent of the tab-mode features: Chromium
//! starts through chromedriver, console errors (and CSP violations) are visible,
//! the test app's pages, forms, fetch, XHR and WebSocket echo work, tabs and
//! popups can be driven, and pages load through the gateway in `browser` mode.

use std::time::Duration;

use sessiongate::config::SessionMode;

use crate::app::{self, App, GZIP_TEXT, NOHEAD_TEXT, POST_FIELD, POST_NOTES};
use crate::fixture::Gate;
use crate::harness::{is_uuid, wait_until, Browser};

/// The app alone, straight from Chromium: pages render, page scripts run, and
/// nothing logs an error; an error and a CSP violation do show up in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_app_and_the_console_log_is_readable() {
    let app = App::start().await;
    let browser = Browser::launch().await;

    browser.goto(&format!("{}/page", app.url())).await;
    let page = browser.wait_app_page(None).await;
    assert_eq!(page.handle.as_deref(), Some(""), "no gateway, no X-Session");
    assert_eq!(browser.text("#script-ran").await.as_deref(), Some("yes"));
    assert!(!page.agent, "no gateway, no agent");

    for path in ["/csp-self", "/csp-nonce", "/gzip", "/nohead"] {
        browser.goto(&format!("{}{path}", app.url())).await;
        browser.wait_app_page(None).await;
        assert_eq!(
            browser.text("#script-ran").await.as_deref(),
            Some("yes"),
            "{path}"
        );
    }
    assert_eq!(browser.text("#text").await.as_deref(), Some(NOHEAD_TEXT));
    browser.goto(&format!("{}/gzip", app.url())).await;
    assert_eq!(browser.text("#text").await.as_deref(), Some(GZIP_TEXT));
    browser.goto(&format!("{}/csp-nonce", app.url())).await;
    assert_eq!(browser.text("#inline").await.as_deref(), Some("ran"));
    browser.goto(&format!("{}/big", app.url())).await;
    assert_eq!(
        browser.text("#end").await.as_deref(),
        Some("end of the big page")
    );
    let length = browser
        .eval("return document.documentElement.outerHTML.length;")
        .await;
    assert!(length.as_u64().unwrap() > 5_000_000, "{length}");
    browser
        .assert_no_console_errors("the app's own pages")
        .await;

    // console.error is an error; the harness reads it (and the read drains it).
    browser
        .eval("console.error('selfcheck marker'); return null;")
        .await;
    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("selfcheck marker")),
        "console.error not reported: {errors:?}"
    );
    assert!(browser.console_errors().await.is_empty(), "log not drained");

    // A CSP violation is an error too.
    browser.goto(&format!("{}/csp-self", app.url())).await;
    browser
        .eval(
            "const s = document.createElement('script'); s.textContent = 'window.x = 1';\
             document.head.appendChild(s); return null;",
        )
        .await;
    let errors = wait_until(
        "the CSP violation in the log",
        Duration::from_secs(5),
        || async {
            let errors = browser.console_errors().await;
            (!errors.is_empty()).then_some(errors)
        },
    )
    .await;
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("Content Security Policy")),
        "{errors:?}"
    );
    browser.close().await;
}

/// The app's forms, fetch, XHR and WebSocket echo, straight from Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_forms_fetch_xhr_and_websocket_work_without_the_gateway() {
    let app = App::start().await;
    let browser = Browser::launch().await;
    browser.goto(&format!("{}/page", app.url())).await;
    let page = browser.wait_app_page(None).await;

    browser.click("#fetch").await;
    assert_eq!(browser.wait_text("#fetch-result").await, "(none)");
    browser.click("#xhr").await;
    assert_eq!(browser.wait_text("#xhr-result").await, "(none)");
    browser.click("#ws").await;
    assert_eq!(browser.wait_text("#ws-result").await, "(none)");
    assert_eq!(browser.wait_text("#ws-echo").await, "ping from the page");

    browser.click("#postsubmit").await;
    let posted = browser.wait_app_page(page.seq).await;
    assert_eq!(posted.method.as_deref(), Some("POST"));
    assert_eq!(browser.text("#posted").await.as_deref(), Some(POST_FIELD));
    let hit = app.hit(posted.seq.unwrap());
    assert_eq!(
        app::form_pairs(&hit.body),
        [
            ("field".to_string(), POST_FIELD.to_string()),
            ("notes".to_string(), POST_NOTES.to_string())
        ]
    );
    browser
        .assert_no_console_errors("the app's main page")
        .await;
    browser.close().await;
}

/// New tabs, switching, `window.open` popups and closing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_and_popups_can_be_driven() {
    let app = App::start().await;
    let browser = Browser::launch().await;
    let first = browser.current().await;
    browser.goto(&format!("{}/page?tab=1", app.url())).await;
    let second = browser.new_tab().await;
    browser.goto(&format!("{}/page?tab=2", app.url())).await;
    assert_eq!(browser.windows().await.len(), 2);

    browser.switch_to(&first).await;
    let page = browser.wait_app_page(None).await;
    assert_eq!(page.path.as_deref(), Some("/page?tab=1"));
    browser.click("#open-same").await;
    let popup = browser
        .wait_new_window(&[first.clone(), second.clone()])
        .await;
    browser.switch_to(&popup).await;
    let popped = browser.wait_app_page(None).await;
    assert_eq!(popped.path.as_deref(), Some("/page?tab=1"));
    let opener = browser.eval("return window.opener !== null;").await;
    assert_eq!(opener, serde_json::json!(true), "popup has its opener");

    browser.close_tab().await;
    browser.switch_to(&second).await;
    let page = browser.wait_app_page(None).await;
    assert_eq!(page.path.as_deref(), Some("/page?tab=2"));
    assert_eq!(browser.windows().await.len(), 2);
    browser.assert_no_console_errors("tabs and popups").await;
    browser.close().await;
}

/// `browser` mode already works without the agent (the cookie carries the
/// session): pages, fetch, XHR and the WebSocket all reach the app with one handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_in_browser_mode_carries_the_session_on_every_request() {
    let gate = Gate::start(SessionMode::Browser, |_| {}).await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, page) = browser.wait_handle(None, "browser mode").await;
    assert_eq!(gate.session_state(&handle), Some("active"));

    browser.click("#fetch").await;
    assert_eq!(browser.wait_text("#fetch-result").await, handle, "fetch");
    browser.click("#xhr").await;
    assert_eq!(browser.wait_text("#xhr-result").await, handle, "XHR");
    browser.click("#ws").await;
    assert_eq!(browser.wait_text("#ws-result").await, handle, "WebSocket");
    assert_eq!(browser.wait_text("#ws-echo").await, "ping from the page");

    browser.reload().await;
    let (again, _) = browser.wait_handle(page.seq, "browser mode, reload").await;
    assert_eq!(again, handle);
    browser.assert_no_console_errors("browser mode").await;
    browser.close().await;
}

/// The 5 MiB page reaches the client while the app is still sending it, and
/// arrives whole (apart from an agent tag, once the gateway injects one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_page_streams_through_the_gateway() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let fetched = fetch_big(&gate).await;
    assert!(
        fetched.first_bytes_before_upstream_finished,
        "the first body bytes only arrived after the app had sent the whole page"
    );
    let original = app::big_page();
    let body = match find_agent_tag(&fetched.body) {
        Some((start, end)) => [&fetched.body[..start], &fetched.body[end..]].concat(),
        None => fetched.body.clone(),
    };
    assert_eq!(body.len(), original.len(), "body length (without a tag)");
    assert!(body == original[..], "body differs from what the app sent");
}

/// A `/big` exchange through the gateway.
pub struct BigFetch {
    pub first_bytes_before_upstream_finished: bool,
    pub body: Vec<u8>,
}

/// GETs `/big` through the gateway as a top-level navigation, noting whether the
/// first body bytes arrived before the app had handed over its last chunk.
pub async fn fetch_big(gate: &Gate) -> BigFetch {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut response = client
        .get(gate.url("/big"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .header("sec-fetch-site", "none")
        .send()
        .await
        .expect("GET /big through the gateway");
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    let mut first = None;
    while let Some(chunk) = response.chunk().await.expect("read /big") {
        if first.is_none() && !chunk.is_empty() {
            first = Some(!gate.app.big_finished());
        }
        body.extend_from_slice(&chunk);
    }
    assert!(gate.app.big_finished(), "the app finished sending");
    BigFetch {
        first_bytes_before_upstream_finished: first.unwrap_or(false),
        body,
    }
}

/// The byte range of the injected `<script … agent.js …></script>` tag, if any.
pub fn find_agent_tag(body: &[u8]) -> Option<(usize, usize)> {
    let at = find(body, b"/agent.js")?;
    let start = rfind(&body[..at], b"<script")?;
    let end = at + find(&body[at..], b"</script>")? + b"</script>".len();
    Some((start, end))
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[test]
fn handles_are_uuids() {
    assert!(is_uuid("67e55044-10b1-426f-9247-bb680e5fe0c8"));
    assert!(!is_uuid(""));
    assert!(!is_uuid("67e5504410b1426f9247bb680e5fe0c8"));
}
