//! Documents only (DESIGN.md §5): the agent goes into answers to navigations, never
//! into fetch/XHR answers (HTML fragments, JSON labelled `text/html`), and never
//! gets appended to a body that has no element.

use reqwest::RequestBuilder;
use sessiongate::config::SessionMode;

use crate::common::Fixture;

const FRAGMENT: &str = r#"<li class="item">loaded by jQuery .load()</li>"#;
const JSON_AS_HTML: &str = r#"{"ok":true}"#;

/// `/respond` answering `body` as `text/html`.
fn html_answer(fx: &Fixture, body: &str) -> String {
    let body: String = url::form_urlencoded::byte_serialize(body.as_bytes()).collect();
    fx.url(&format!(
        "/respond?type=text/html;%20charset=utf-8&body={body}"
    ))
}

/// A top-level page load, as Chromium sends it.
fn navigate(request: RequestBuilder) -> RequestBuilder {
    request
        .header("sec-fetch-site", "none")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
}

/// A page script's `fetch()`, as Chromium sends it (it may well accept HTML).
fn fetch(request: RequestBuilder) -> RequestBuilder {
    request
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-dest", "empty")
        .header("accept", "text/html, */*; q=0.01")
}

async fn injections(fx: &Fixture, outcome: &str) -> f64 {
    fx.metric(&format!(
        "sessiongate_injections_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

#[tokio::test]
async fn fetch_answers_in_html_are_passed_through_byte_for_byte() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let client = reqwest::Client::new();
    for body in [
        FRAGMENT,
        JSON_AS_HTML,
        "<!doctype html><html><head></head></html>",
    ] {
        let answer = fetch(client.get(html_answer(&fx, body)))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert!(
            answer.headers().get("content-length").is_some(),
            "an untouched answer keeps its Content-Length"
        );
        assert_eq!(answer.text().await.unwrap(), body, "fetch answer changed");
    }
    // An XHR from a client without Fetch Metadata (jQuery sends X-Requested-With).
    let answer = client
        .get(html_answer(&fx, FRAGMENT))
        .header("accept", "text/html, */*; q=0.01")
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), FRAGMENT);
    // Not pages, so not counted either way.
    assert_eq!(injections(&fx, "injected").await, 0.0);
    assert_eq!(injections(&fx, "skipped").await, 0.0);
}

#[tokio::test]
async fn navigations_get_the_agent_but_never_appended_to_a_body_without_elements() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let client = reqwest::Client::new();

    let page = navigate(client.get(html_answer(&fx, "<!doctype html><title>t</title><p>hi")))
        .send()
        .await
        .unwrap();
    // The first answer sets the browser-key cookie, so it is private as well.
    assert_eq!(page.headers()["cache-control"], "private, no-store");
    let page = page.text().await.unwrap();
    assert!(
        page.starts_with("<!doctype html><head><script src=\"/__sessiongate/agent.js?v="),
        "a navigation gets the agent: {page}"
    );
    assert_eq!(injections(&fx, "injected").await, 1.0);

    // JSON labelled text/html, even as a navigation: no element, no tag.
    let json = navigate(client.get(html_answer(&fx, JSON_AS_HTML)))
        .send()
        .await
        .unwrap();
    assert_eq!(json.text().await.unwrap(), JSON_AS_HTML);
    assert_eq!(injections(&fx, "skipped").await, 1.0);
}
