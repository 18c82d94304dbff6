//! `browser` mode (DESIGN.md §3): one session per browser profile, carried by the
//! cookie; the agent's countdown shows in every tab and "Stay" in one extends all.

use std::time::Duration;

use fantoccini::key::Key;
use serde_json::Value as Json;
use sessiongate::config::SessionMode;

use crate::fixture::Gate;
use crate::harness::{reserved_401, Browser};
use crate::lifetime::{dialog, short_timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_share_one_session() {
    let gate = Gate::start(SessionMode::Browser, |_| {}).await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (first, _) = browser.wait_handle(None, "tab 1").await;

    browser.new_tab().await;
    browser.goto(&gate.url("/page")).await;
    let (second, _) = browser.wait_handle(None, "tab 2").await;
    assert_eq!(first, second, "browser mode: one session for both tabs");
    browser.click("#fetch").await;
    assert_eq!(browser.wait_text("#fetch-result").await, first);
    assert_eq!(gate.live_sessions(), 1, "exactly one session was made");
    browser
        .assert_no_console_errors("browser mode, two tabs")
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_shows_in_every_tab_and_stay_in_one_extends_all() {
    let gate = Gate::start(SessionMode::Browser, short_timeout).await;
    let browser = Browser::launch().await;
    let tab_1 = browser.current().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, _) = browser.wait_handle(None, "tab 1").await;
    browser.wait_agent("tab 1").await;

    let tab_2 = browser.new_tab().await;
    browser.goto(&gate.url("/page")).await;
    let (again, _) = browser.wait_handle(None, "tab 2").await;
    assert_eq!(handle, again);
    browser.wait_agent("tab 2").await;

    // Both tabs show the countdown.
    browser
        .wait_agent_state("warning", Duration::from_secs(6), "tab 2, idle")
        .await;
    browser.switch_to(&tab_1).await;
    browser
        .wait_agent_state("warning", Duration::from_secs(2), "tab 1, idle")
        .await;
    let shown = dialog(&browser).await;
    assert!(
        !shown["hosts"].as_array().unwrap().is_empty(),
        "tab 1: no countdown dialog host on <html>: {shown}"
    );
    browser.switch_to(&tab_2).await;
    let shown = dialog(&browser).await;
    assert!(
        !shown["hosts"].as_array().unwrap().is_empty(),
        "tab 2: no countdown dialog host on <html>: {shown}"
    );
    assert_eq!(
        shown["focus_inside"],
        Json::Bool(true),
        "tab 2: focus not in the dialog: {shown}"
    );

    // "Stay" in tab 2 extends the session for both tabs.
    browser.press(Key::Escape).await;
    browser
        .wait_agent_state("active", Duration::from_secs(3), "tab 2, after Stay")
        .await;
    assert_eq!(gate.session_state(&handle), Some("active"));
    browser.switch_to(&tab_1).await;
    browser
        .wait_agent_state(
            "active",
            Duration::from_secs(3),
            "tab 1, after Stay in tab 2",
        )
        .await;
    browser
        .assert_no_console_errors_except("browser mode countdown", reserved_401)
        .await;
    browser.close().await;
}

/// `session.cookie_lifetime`: a `browser`-mode session survives closing Chromium and
/// opening it again with the same profile directory; with the default (`0`, session
/// cookies) the reopened browser gets a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_browser_restart_with_a_cookie_lifetime() {
    async fn across_restart(gate: &Gate, context: &str) -> (String, String) {
        let profile = tempfile::Builder::new()
            .prefix("sessiongate-profile-")
            .tempdir()
            .expect("a profile directory");
        let browser = Browser::launch_with_profile(profile.path()).await;
        browser.goto(&gate.url("/page")).await;
        let (before, _) = browser.wait_handle(None, context).await;
        browser.wait_agent(context).await;
        browser.assert_no_console_errors(context).await;
        browser.close().await;
        // Chromium writes its cookie store on the way out; wait until it is gone.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let browser = Browser::launch_with_profile(profile.path()).await;
        browser.goto(&gate.url("/page")).await;
        let (after, _) = browser.wait_handle(None, context).await;
        browser.wait_agent(context).await;
        browser.assert_no_console_errors(context).await;
        browser.close().await;
        (before, after)
    }

    let gate = Gate::start(SessionMode::Browser, |c| {
        c.session.cookie_lifetime = Duration::from_secs(86_400).into();
    })
    .await;
    let (before, after) = across_restart(&gate, "cookie_lifetime = 1d").await;
    assert_eq!(before, after, "the session did not survive the restart");
    assert_eq!(gate.live_sessions(), 1);

    let gate = Gate::start(SessionMode::Browser, |_| {}).await;
    let (before, after) = across_restart(&gate, "cookie_lifetime = 0").await;
    assert_ne!(before, after, "session cookies must end with the browser");
}
