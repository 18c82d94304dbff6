//! What the page can trust (issue 12): fetch answers reach the page as the app sent
//! them, the countdown speaks the page's language (and the configured texts), a tab
//! whose session ended keeps what was typed instead of posting it into a new
//! session, an `EventSource` keeps its session across a reconnect, forms in open
//! shadow roots carry their ticket, and the tab's token does not stay in the DOM.

use std::time::Duration;

use serde_json::Value as Json;
use sessiongate::config::{Config, Heartbeat, SessionMode};

use crate::app::{FRAGMENT, JSON_AS_HTML};
use crate::fixture::Gate;
use crate::harness::{reserved_401, wait_until, Browser, WAIT};
use crate::lifetime::short_timeout;

fn secs(s: u64) -> sessiongate::config::Duration {
    Duration::from_secs(s).into()
}

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

/// On a `<html lang="de">` page the countdown is German, except for the text the
/// configuration overrides (`browser.text.stay`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_speaks_the_pages_language_with_configured_overrides() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        short_timeout(c);
        c.browser.text.stay = Some("Weiterarbeiten".into());
    })
    .await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/de")).await;
    browser.wait_handle(None, "/de").await;
    browser.wait_agent("/de").await;
    browser
        .wait_agent_state("warning", Duration::from_secs(6), "idle on /de")
        .await;
    let text = wait_until("the countdown's texts", WAIT, || async {
        let text = browser.closed_shadow_text().await;
        text.contains("Sekunde").then_some(text)
    })
    .await;
    for expected in [
        "Ihre Sitzung läuft gleich ab",
        "Sie waren eine Weile nicht aktiv.",
        "Weiterarbeiten",
        "Beenden",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("Bleiben") && !text.contains("Stay"),
        "the override replaces the button's text:\n{text}"
    );
    browser
        .assert_no_console_errors_except("German countdown", reserved_401)
        .await;
    browser.close().await;
}

/// What a tab's UI shows of the ended notice: its host (a custom element), where it
/// sits against the page's heading, and whether it has the focus.
pub const NOTICE_JS: &str = r#"
const host = Array.from(document.querySelectorAll("body > *")).find(e => e.localName.includes("-"));
if (!host) return null;
const box = host.getBoundingClientRect();
const heading = document.querySelector("h1").getBoundingClientRect();
return {
  bottom: box.bottom,
  height: box.height,
  heading_top: heading.top,
  focused: document.activeElement === host,
  field: document.querySelector('#postform input[name="field"]').value,
};
"#;

/// After a timeout the tab's notice shows and the page stays usable; a form
/// submitted then is stopped (nothing reaches the app), the typed text stays in the
/// page, the notice — pushing the page down, not covering it — gets the focus and
/// offers "Start again", which starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_submitted_in_an_ended_tab_is_kept_not_forwarded() {
    let gate = Gate::start(SessionMode::Tab, |c: &mut Config| {
        c.session.timeout = secs(2);
        c.session.countdown = Some(secs(2));
        c.session.abandon = Some(secs(10));
        c.browser.heartbeat = Heartbeat::Every(secs(1));
    })
    .await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, page) = browser.wait_handle(None, "the tab").await;
    browser.wait_agent("the tab").await;
    browser
        .wait_agent_state("ended", Duration::from_secs(8), "the tab, idle")
        .await;
    assert!(gate.session_state(&handle).is_none(), "the session ended");

    const TYPED: &str = "a long answer typed after the end";
    let field = browser
        .client
        .find(fantoccini::Locator::Css("#postform input[name=\"field\"]"))
        .await
        .expect("the form's field");
    field.clear().await.expect("clear the field");
    field.send_keys(TYPED).await.expect("type into the field");
    let posts_before = gate.app.hits().len();
    browser.click("#postsubmit").await;

    let notice = wait_until("the notice to take the focus", WAIT, || async {
        let notice = browser.eval(NOTICE_JS).await;
        (notice["focused"] == Json::Bool(true)).then_some(notice)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = browser.page().await.expect("the page is still there");
    assert_eq!(still.seq, page.seq, "the submit replaced the page");
    assert_eq!(
        browser.eval(NOTICE_JS).await["field"],
        TYPED,
        "the typed text is gone"
    );
    let posted: Vec<_> = gate.app.hits()[posts_before..]
        .iter()
        .map(|h| format!("{} {}", h.method, h.uri))
        .collect();
    assert!(posted.is_empty(), "reached the app: {posted:?}");
    assert!(
        notice["height"].as_f64().unwrap() > 0.0
            && notice["bottom"].as_f64().unwrap() <= notice["heading_top"].as_f64().unwrap(),
        "the notice must push the page down, not cover it: {notice}"
    );
    let text = browser.closed_shadow_text().await;
    for expected in [
        "Your session has ended.",
        "What you entered is still on this page.",
        "Start again",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let shot = std::env::temp_dir().join("sessiongate-ended-notice.png");
    browser.screenshot(&shot).await;

    // "Start again": a new session for the tab.
    let (x, y) = browser
        .closed_shadow_control("Start again")
        .await
        .expect("a Start again link");
    browser.mouse_click(x, y).await;
    let (fresh, _) = browser.wait_handle(page.seq, "after Start again").await;
    assert_ne!(fresh, handle, "Start again starts a new session");
    browser
        .assert_no_console_errors_except("ended tab", reserved_401)
        .await;
    browser.close().await;
}

/// An `EventSource` whose stream ends reconnects with a fresh ticket: every event,
/// before and after the reconnects, was sent for the tab's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_source_keeps_its_session_across_reconnects() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/sse")).await;
    let (handle, _) = browser.wait_handle(None, "/sse").await;
    browser.wait_agent("/sse").await;
    let events = wait_until("three events (two reconnects)", WAIT, || async {
        let events = browser.eval("return window.__events;").await;
        (events.as_array().map_or(0, Vec::len) >= 3).then_some(events)
    })
    .await;
    for event in events.as_array().unwrap() {
        assert_eq!(event, &Json::from(handle.clone()), "events: {events}");
    }
    let source = browser
        .eval(
            "const s = window.__source; return [s instanceof EventSource, s.url, \
             typeof s.onmessage, EventSource.OPEN];",
        )
        .await;
    assert_eq!(source[0], Json::Bool(true), "{source}");
    assert_eq!(
        source[1],
        gate.url("/events"),
        "url without a ticket: {source}"
    );
    assert_eq!(source[2], "function");
    assert_eq!(source[3], 1);
    for hit in gate.app.hits().iter().filter(|h| h.path() == "/events") {
        assert_eq!(hit.session.as_deref(), Some(handle.as_str()), "{}", hit.uri);
        assert!(!hit.uri.contains("__sg"), "{}", hit.uri);
    }
    browser.eval("window.__source.close(); return null;").await;
    browser.assert_no_console_errors("EventSource").await;
    browser.close().await;
}

/// POST forms inside open shadow roots — attached by script, and declarative — carry
/// a ticket: the posted page belongs to the tab's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_in_open_shadow_roots_carry_their_ticket() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let browser = Browser::launch().await;
    for host in ["scripted", "declarative"] {
        browser.goto(&gate.url("/shadow")).await;
        let (handle, page) = browser.wait_handle(None, "/shadow").await;
        browser.wait_agent("/shadow").await;
        browser
            .eval(&format!(
                "document.getElementById({host:?}).shadowRoot\
                 .getElementById(\"{host}-submit\").click(); return null;"
            ))
            .await;
        let (posted, after) = browser
            .wait_handle(page.seq, &format!("the {host} shadow form posted"))
            .await;
        assert_eq!(after.method.as_deref(), Some("POST"), "{after:?}");
        assert_eq!(posted, handle, "the {host} shadow form lost the session");
        assert_eq!(
            browser.text("#posted").await.as_deref(),
            Some(format!("from {host}").as_str())
        );
    }
    browser.assert_no_console_errors("shadow forms").await;
    browser.close().await;
}

/// The first page of a tab carries its token in `data-token`; once the agent has
/// read it, it is gone from the DOM (and kept in sessionStorage only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_gone_from_the_dom_after_load() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    browser.wait_handle(None, "first contact").await;
    browser.wait_agent("first contact").await;
    let seen = browser
        .eval(
            r#"const token = sessionStorage.getItem("sessiongate.token") || "";
return {
  token: token.length,
  attribute: document.querySelectorAll("[data-token]").length,
  in_dom: token !== "" && document.documentElement.outerHTML.includes(token),
};"#,
        )
        .await;
    assert_eq!(
        seen["token"], 43,
        "the agent stored the tab's token: {seen}"
    );
    assert_eq!(
        seen["attribute"], 0,
        "data-token is still in the DOM: {seen}"
    );
    assert_eq!(seen["in_dom"], Json::Bool(false), "{seen}");
    browser.assert_no_console_errors("token").await;
    browser.close().await;
}
