//! Lifetime in a real browser (DESIGN.md §4): an idle tab gets the countdown, "Stay"
//! keeps its session (also a real mouse click on it, counted as `extended` in every
//! countdown), an ignored countdown ends the session as `timeout`, and a closed
//! tab's session ends as `abandoned`.

use std::time::Duration;

use fantoccini::key::Key;
use serde_json::Value as Json;
use sessiongate::config::{Config, Heartbeat, SessionMode};

use crate::fixture::Gate;
use crate::harness::{reserved_401, wait_until, Browser, WAIT};

fn secs(s: u64) -> sessiongate::config::Duration {
    Duration::from_secs(s).into()
}

/// Timeout 2 s, countdown 4 s, heartbeat every second, abandon 10 s (so an idle
/// tab ends by `timeout`, never by `abandoned`).
pub fn short_timeout(c: &mut Config) {
    c.session.timeout = secs(2);
    c.session.countdown = Some(secs(4));
    c.session.abandon = Some(secs(10));
    c.browser.heartbeat = Heartbeat::Every(secs(1));
}

/// What the page shows of the agent's countdown dialog. The dialog lives in a
/// closed shadow root whose host is a custom element (a name with a hyphen) that
/// is a child of `<html>`; focus moved into the dialog makes that host the
/// document's `activeElement`.
const DIALOG_JS: &str = r#"
const hosts = Array.from(document.documentElement.children)
  .filter(e => e.localName.includes("-"));
const active = document.activeElement;
return {
  hosts: hosts.map(h => h.localName),
  focus_inside: active !== null && hosts.includes(active),
  open_shadow: hosts.some(h => h.shadowRoot !== null),
  events: window.__sgEvents || [],
};
"#;

/// Records the agent's `warning`, `active` and `ended` events in `__sgEvents`.
const RECORD_EVENTS_JS: &str = r#"
window.__sgEvents = [];
for (const type of ["warning", "active", "ended"]) {
  window.sessiongate.on(type, e => window.__sgEvents.push(e.type + ":" + e.state));
}
return null;
"#;

/// `GET /__sessiongate/status` from the page (the agent adds the tab's token).
const STATUS_JS: &str = r#"
const done = arguments[arguments.length - 1];
fetch("/__sessiongate/status").then(r => r.json()).then(done, e => done({ error: String(e) }));
"#;

pub async fn dialog(browser: &Browser) -> Json {
    browser.eval(DIALOG_JS).await
}

/// An idle tab sees the countdown; "Stay" (Escape in the dialog) makes it active
/// again; another idle tab whose countdown nobody answers ends as `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_appears_and_stay_keeps_the_session_while_an_ignored_one_times_out() {
    let gate = Gate::start(SessionMode::Tab, short_timeout).await;
    let browser = Browser::launch().await;

    // Tab B first, so that its countdown runs out before A's can.
    let tab_b = browser.current().await;
    browser.goto(&gate.url("/page")).await;
    let (b, _) = browser.wait_handle(None, "tab B").await;
    browser.wait_agent("tab B").await;

    browser.new_tab().await;
    browser.goto(&gate.url("/page")).await;
    let (a, _) = browser.wait_handle(None, "tab A").await;
    assert_ne!(a, b);
    browser.wait_agent("tab A").await;
    browser.eval(RECORD_EVENTS_JS).await;
    assert_eq!(browser.agent_state().await.as_deref(), Some("active"));

    // Idle for the timeout: the countdown.
    browser
        .wait_agent_state("warning", Duration::from_secs(6), "tab A, idle")
        .await;
    assert_eq!(gate.session_state(&a), Some("warning"));
    let shown = dialog(&browser).await;
    assert!(
        !shown["hosts"].as_array().unwrap().is_empty(),
        "no custom-element host for the countdown dialog on <html>: {shown}"
    );
    assert_eq!(
        shown["focus_inside"],
        Json::Bool(true),
        "focus was not moved into the countdown dialog: {shown}"
    );
    assert_eq!(
        shown["open_shadow"],
        Json::Bool(false),
        "the dialog's shadow root must be closed: {shown}"
    );
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .contains(&Json::from("warning:warning")),
        "no warning event: {shown}"
    );

    // "Stay": Escape in the dialog.
    browser.press(Key::Escape).await;
    browser
        .wait_agent_state("active", Duration::from_secs(3), "tab A, after Stay")
        .await;
    let status = browser.eval_async(STATUS_JS).await;
    assert_eq!(status["state"], "active", "GET status after Stay: {status}");
    assert_eq!(gate.session_state(&a), Some("active"));
    let after = dialog(&browser).await;
    assert_eq!(
        after["focus_inside"],
        Json::Bool(false),
        "the dialog kept focus after Stay: {after}"
    );
    assert!(
        after["events"]
            .as_array()
            .unwrap()
            .contains(&Json::from("active:active")),
        "no active event after Stay: {after}"
    );
    assert!(
        gate.metric(r#"sessiongate_countdowns_total{outcome="extended"}"#)
            .await
            >= 1.0,
        "Stay is not counted as countdowns_total{{outcome=\"extended\"}}"
    );

    // Tab B's countdown runs out: its session ends as `timeout` while A's lives.
    wait_until(
        "tab B's session to end",
        Duration::from_secs(10),
        || async { gate.session_state(&b).is_none().then_some(()) },
    )
    .await;
    assert!(
        gate.session_state(&a).is_some(),
        "tab A's session ended too"
    );
    assert_eq!(
        gate.metric(r#"sessiongate_sessions_ended_total{reason="timeout"}"#)
            .await,
        1.0,
        "tab B ended by timeout"
    );
    assert_eq!(
        gate.metric(r#"sessiongate_sessions_ended_total{reason="abandoned"}"#)
            .await,
        0.0
    );
    browser.switch_to(&tab_b).await;
    browser
        .wait_agent_state("ended", Duration::from_secs(5), "tab B, timed out")
        .await;
    browser
        .assert_no_console_errors_except("countdown", reserved_401)
        .await;
    browser.close().await;
}

/// Closing a tab ends its session as `abandoned` once `abandon` has passed
/// without a signal (the `bye` beacon alone never ends it); the other tab, still
/// sending heartbeats, keeps its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_tab_is_abandoned() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        c.session.timeout = secs(60);
        // Five beats of margin: tab A must outlive B's abandonment even when a
        // loaded CI machine delays its timers by a few seconds.
        c.session.abandon = Some(secs(5));
        c.browser.heartbeat = Heartbeat::Every(secs(1));
    })
    .await;
    let browser = Browser::launch().await;

    let tab_a = browser.current().await;
    browser.goto(&gate.url("/page")).await;
    let (a, _) = browser.wait_handle(None, "tab A").await;
    browser.wait_agent("tab A").await;

    browser.new_tab().await;
    browser.goto(&gate.url("/page")).await;
    let (b, _) = browser.wait_handle(None, "tab B").await;
    assert_ne!(a, b);
    browser.wait_agent("tab B").await;
    assert_eq!(gate.session_state(&b), Some("active"), "tab B alive");

    browser.close_tab().await;
    browser.switch_to(&tab_a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gate.session_state(&b),
        Some("active"),
        "closing the tab (its bye beacon) must not end the session by itself"
    );

    wait_until(
        "the closed tab's session to be abandoned",
        Duration::from_secs(15),
        || async { gate.session_state(&b).is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        gate.metric(r#"sessiongate_sessions_ended_total{reason="abandoned"}"#)
            .await,
        1.0
    );
    // A has outlived `abandon`: its heartbeats count as signals.
    assert_eq!(gate.session_state(&a), Some("active"), "tab A lives on");
    assert_eq!(browser.agent_state().await.as_deref(), Some("active"));
    browser.assert_no_console_errors("abandon").await;
    browser.close().await;
}

/// A real mouse click on "Stay" — pointer down and up on the button in the closed
/// shadow root — counts as `countdowns_total{outcome="extended"}`, in the first
/// countdown and in the next one. The countdown (20 s) is longer than the timeout
/// (2 s), so the next idle period starts before the first countdown would have
/// ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mouse_click_on_stay_counts_as_extended_every_time() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        c.session.timeout = secs(2);
        c.session.countdown = Some(secs(20));
        c.session.abandon = Some(secs(40));
        c.browser.heartbeat = Heartbeat::Every(secs(1));
    })
    .await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, _) = browser.wait_handle(None, "the tab").await;
    browser.wait_agent("the tab").await;

    for round in 1..=2u32 {
        let context = format!("countdown #{round}");
        browser
            .wait_agent_state("warning", Duration::from_secs(6), &context)
            .await;
        // The server has entered `warning` (its gauge moved) before the click.
        wait_until(
            &format!("{context}: the session in warning on the server"),
            Duration::from_secs(5),
            || async {
                let warning = gate
                    .metric(r#"sessiongate_sessions_active{state="warning"}"#)
                    .await;
                (warning == 1.0).then_some(())
            },
        )
        .await;
        let (x, y) = wait_until(&format!("{context}: the Stay button"), WAIT, || {
            browser.closed_shadow_control("Stay")
        })
        .await;
        browser.mouse_click(x, y).await;
        browser
            .wait_agent_state("active", Duration::from_secs(3), &context)
            .await;
        assert_eq!(gate.session_state(&handle), Some("active"), "{context}");
        assert_eq!(
            gate.metric(r#"sessiongate_countdowns_total{outcome="extended"}"#)
                .await,
            f64::from(round),
            "{context}: a mouse click on Stay is counted as extended"
        );
    }
    browser.assert_no_console_errors("mouse Stay").await;
    browser.close().await;
}

/// `hooks.timeout` answering `{"handled": true}` (Wisej's handled `SessionTimeout`):
/// across three idle periods (a key press starts each next one) the countdown window
/// never appears, the page's own `warning` listener is never called, the session
/// never leaves `active`, and each period counts as `countdowns_total{outcome="handled"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handled_timeout_hook_keeps_the_countdown_away() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        short_timeout(c);
        c.hooks.timeout = "/hook/handled".into();
        c.hooks.budget = secs(1);
    })
    .await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, _) = browser.wait_handle(None, "the tab").await;
    browser.wait_agent("the tab").await;
    browser.eval(RECORD_EVENTS_JS).await;

    for period in 1..=3u32 {
        let context = format!("idle period #{period}");
        // timeout 2 s, then the hook (answering at once, 1 s budget): a window that
        // was going to show would show within 4 s; watch for 4.5 s.
        let watched = tokio::time::Instant::now() + Duration::from_millis(4_500);
        while tokio::time::Instant::now() < watched {
            let shown = dialog(&browser).await;
            assert!(
                shown["hosts"].as_array().unwrap().is_empty(),
                "{context}: the countdown window appeared: {shown}"
            );
            assert!(
                shown["events"].as_array().unwrap().is_empty(),
                "{context}: the page's listeners were called: {shown}"
            );
            assert_eq!(
                browser.agent_state().await.as_deref(),
                Some("active"),
                "{context}"
            );
            assert_eq!(gate.session_state(&handle), Some("active"), "{context}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(
            gate.metric(r#"sessiongate_countdowns_total{outcome="handled"}"#)
                .await,
            f64::from(period),
            "{context}: the hook's answer is counted once per idle period"
        );
        assert_eq!(
            gate.metric(r#"sessiongate_sessions_active{state="warning"}"#)
                .await,
            0.0,
            "{context}"
        );
        // Activity: the next idle period starts.
        browser.press(Key::Shift).await;
    }
    browser.assert_no_console_errors("handled timeout").await;
    browser.close().await;
}

/// Without a `timeout` hook the countdown window appears, and at the moment it
/// shows the server already counts the session as `warning` (the gauge is 1, the
/// store says `warning`) — read once, with no waiting for them to catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_countdown_shows_only_while_the_server_says_warning() {
    let gate = Gate::start(SessionMode::Tab, short_timeout).await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, _) = browser.wait_handle(None, "the tab").await;
    browser.wait_agent("the tab").await;
    browser.eval(RECORD_EVENTS_JS).await;

    let shown = wait_until("the countdown window", Duration::from_secs(8), || async {
        let shown = dialog(&browser).await;
        (!shown["hosts"].as_array().unwrap().is_empty()).then_some(shown)
    })
    .await;
    assert_eq!(
        gate.metric(r#"sessiongate_sessions_active{state="warning"}"#)
            .await,
        1.0,
        "the window shows while the warning gauge says 0: {shown}"
    );
    assert_eq!(gate.session_state(&handle), Some("warning"));
    assert!(
        dialog(&browser).await["events"]
            .as_array()
            .unwrap()
            .contains(&Json::from("warning:warning")),
        "the page's warning listener was not called"
    );
    assert_eq!(
        gate.metric(r#"sessiongate_countdowns_total{outcome="handled"}"#)
            .await,
        0.0
    );
    // "Stay": the gauge goes back to 0.
    browser.press(Key::Escape).await;
    browser
        .wait_agent_state("active", Duration::from_secs(3), "after Stay")
        .await;
    assert_eq!(
        gate.metric(r#"sessiongate_sessions_active{state="warning"}"#)
            .await,
        0.0
    );
    browser
        .assert_no_console_errors("countdown without a hook")
        .await;
    browser.close().await;
}

/// The agent beats as often as the gateway says, down to 1 s: with `heartbeat = 1s`
/// and `abandon = 3s` an open, idle tab keeps its session for well past `abandon`.
/// (The agent used to stretch any interval to at least 5 s, so a tab whose
/// configured beat was within `abandon` was abandoned while open — the cause of
/// `closed_tab_is_abandoned`'s flakiness, where abandon is 5 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tab_beats_at_the_configured_interval() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        c.session.timeout = secs(60);
        c.session.abandon = Some(secs(3));
        c.browser.heartbeat = Heartbeat::Every(secs(1));
    })
    .await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, _) = browser.wait_handle(None, "the tab").await;
    browser.wait_agent("the tab").await;
    let before = gate.metric("sessiongate_heartbeats_total").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        gate.session_state(&handle),
        Some("active"),
        "an open tab was abandoned"
    );
    let beats = gate.metric("sessiongate_heartbeats_total").await - before;
    assert!(beats >= 5.0, "{beats} heartbeats in 7 s at a 1 s interval");
    browser.assert_no_console_errors("short heartbeat").await;
    browser.close().await;
}

/// A tab whose session was ended elsewhere (the admin API) is told `ended` by its
/// next heartbeat — the gateway remembers the ended token — and shows the ended
/// notice, without a single failed request in the console (a forgotten token got
/// 401s, logged by the browser as errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_whose_session_was_ended_is_told_ended() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        c.session.timeout = secs(60);
        c.session.abandon = Some(secs(10));
        c.browser.heartbeat = Heartbeat::Every(secs(1));
    })
    .await;
    let browser = Browser::launch().await;
    browser.goto(&gate.url("/page")).await;
    let (handle, _) = browser.wait_handle(None, "the tab").await;
    browser.wait_agent("the tab").await;

    let ended = reqwest::Client::new()
        .delete(gate.admin_url(&format!("/sessions/{handle}")))
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    browser
        .wait_agent_state("ended", Duration::from_secs(5), "the ended tab")
        .await;
    let notice = wait_until("the ended notice", WAIT, || async {
        let notice = browser.eval(crate::page_truth::NOTICE_JS).await;
        (!notice.is_null()).then_some(notice)
    })
    .await;
    assert!(notice["height"].as_f64().unwrap() > 0.0, "{notice}");
    // A few more seconds: nothing keeps knocking with the ended token.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gate.live_sessions(), 0, "nothing started over silently");
    browser.assert_no_console_errors("ended tab").await;
    browser.close().await;
}
