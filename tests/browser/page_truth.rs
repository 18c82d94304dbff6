//! What the page can trust (issue 12): fetch answers reach the page as the app sent
//! them, the countdown speaks the page's language (and the configured texts), a tab
//! whose session ended keeps what was typed instead of posting it into a new
//! session, an `EventSource` keeps its session across a reconnect, forms in open
//! shadow roots carry their ticket, and the tab's token does not stay in the DOM.

use serde_json::Value as Json;
use sessiongate::config::SessionMode;

use crate::app::{FRAGMENT, JSON_AS_HTML};
use crate::fixture::Gate;
use crate::harness::{wait_until, Browser, WAIT};

/// A page's script fetches an HTML fragment and JSON labelled `text/html`: both
/// arrive byte for byte (the agent goes into documents only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_html_and_json_as_html_arrive_byte_identical() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/partials")).await;
    browser.wait_handle(None, "/partials").await;
    browser.wait_agent("/partials").await;
    let partials = wait_until("the page's fetches", WAIT, || async {
        let value = browser.eval("return window.__partials;").await;
        (value["done"] == Json::Bool(true) || value["error"].is_string()).then_some(value)
    })
    .await;
    assert_eq!(partials["/fragment"], FRAGMENT, "{partials}");
    assert_eq!(partials["/json-html"], JSON_AS_HTML, "{partials}");
    browser.assert_no_console_errors("partials").await;
    browser.close().await;
}
