//! Authoritative transitions (DESIGN.md §3): a reply never says `warning` before the
//! `warned` event was emitted (and, with a `timeout` hook, before the app had its say),
//! and the state gauges always count the sessions in each state.
//!
//! Over HTTP against the real gateway, and as a property over random operation
//! sequences on the real store with the real metrics as observer (paused clock).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};
use sessiongate::config::{Duration as Cfg, OnTimeout, SessionMode, WhenFull};
use sessiongate::lifetime::{Activity, Lifetime};
use sessiongate::metrics::Metrics;
use sessiongate::session::events::{Observers, SessionEvent, SessionObserver};
use sessiongate::session::store::{MemoryStore, SessionStore};
use sessiongate::session::{
    BrowserKey, Clock, CreatedKind, EndReason, Handle, Session, State, Token, Touch,
};

use crate::common::{cookie_client, metric_value, Fixture};
use crate::tab::{text, Browser as TabBrowser};

async fn status(fx: &Fixture, client: &reqwest::Client) -> Value {
    client
        .get(fx.url("/__sessiongate/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A `timeout` hook that answers (not handled) after 700 ms, under a 1.5 s budget:
/// until the budget has run out, every reader says `active`; once a reply says
/// `warning`, the `warning` gauge says 1 and the hook had been called.
#[tokio::test]
async fn the_countdown_waits_for_the_timeout_hook() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.session.timeout = Cfg::from_millis(400);
        c.session.countdown = Some(Cfg::from_secs(5));
        c.session.abandon = Some(Cfg::from_secs(30));
        c.hooks.timeout = "/slow?ms=700".into();
        c.hooks.budget = Cfg::from_millis(1_500);
    })
    .await;
    let client = cookie_client();
    client.get(fx.url("/")).send().await.unwrap();
    let started = Instant::now();
    let warning_at = loop {
        let state = status(&fx, &client).await["state"]
            .as_str()
            .unwrap()
            .to_string();
        let elapsed = started.elapsed();
        if state == "warning" {
            break elapsed;
        }
        assert_eq!(state, "active", "at {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "no countdown at all");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // timeout 400 ms + budget 1.5 s: never before 1.9 s.
    assert!(
        warning_at >= Duration::from_millis(1_900),
        "warning after {warning_at:?}, before the hook's budget ran out"
    );
    assert!(fx
        .upstream
        .requests()
        .iter()
        .any(|r| r.uri.starts_with("/slow")));
    assert_eq!(
        fx.metric("sessiongate_sessions_active{state=\"warning\"}")
            .await,
        1.0
    );
    assert_eq!(
        fx.metric("sessiongate_sessions_active{state=\"active\"}")
            .await,
        0.0
    );
}

/// Without a hook, the reply that first says `warning` finds the gauge at 1 already,
/// even when it comes before the sweeper got to the session.
#[tokio::test]
async fn a_warning_reply_and_the_gauge_agree() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.session.timeout = Cfg::from_millis(300);
        c.session.countdown = Some(Cfg::from_secs(5));
        c.session.abandon = Some(Cfg::from_secs(30));
    })
    .await;
    let client = cookie_client();
    client.get(fx.url("/")).send().await.unwrap();
    for _ in 0..100 {
        let state = status(&fx, &client).await["state"]
            .as_str()
            .unwrap()
            .to_string();
        let text = reqwest::get(fx.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let warning = metric_value(&text, "sessiongate_sessions_active{state=\"warning\"}");
        if state == "warning" {
            assert_eq!(warning, Some(1.0));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never warned");
}

// The property.

/// The state each session is in according to the events emitted so far.
#[derive(Default)]
struct Model(Mutex<std::collections::HashMap<Handle, State>>);

impl SessionObserver for Model {
    fn observe(&self, event: &SessionEvent<'_>) {
        let mut states = self.0.lock().unwrap();
        match *event {
            SessionEvent::Started { session, .. } => {
                states.insert(session.handle(), State::Active);
            }
            SessionEvent::Warned { session } => {
                states.insert(session.handle(), State::Warning);
            }
            SessionEvent::Extended { session } => {
                states.insert(session.handle(), State::Active);
            }
            SessionEvent::Handled { session, .. } => {
                states.insert(session.handle(), State::Active);
            }
            // Only a shared store takes over another replica's `end` hook.
            SessionEvent::Idle { .. } | SessionEvent::EndOwed { .. } => {}
            SessionEvent::Ended { session, .. } => {
                states.insert(session.handle(), State::Ended);
            }
        }
    }
}

impl Model {
    fn of(&self, session: &Session) -> State {
        self.0.lock().unwrap()[&session.handle()]
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create,
    Touch(usize, bool),
    Status(usize),
    Advance(u64),
    Sweep,
    End(usize),
    SetTimeout(usize, u64),
    Handled(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        3 => (0..6usize, any::<bool>()).prop_map(|(i, a)| Op::Touch(i, a)),
        3 => (0..6usize).prop_map(Op::Status),
        4 => (0..4_000u64).prop_map(Op::Advance),
        2 => Just(Op::Sweep),
        1 => (0..6usize).prop_map(Op::End),
        1 => (0..6usize, 0..5_000u64).prop_map(|(i, t)| Op::SetTimeout(i, t)),
        1 => (0..6usize).prop_map(Op::Handled),
    ]
}

fn rules() -> impl Strategy<Value = Lifetime> {
    (
        1..5_000u64,
        prop_oneof![
            Just(OnTimeout::Countdown),
            Just(OnTimeout::Keep),
            Just(OnTimeout::End)
        ],
        0..4_000u64,
        prop_oneof![Just(0u64), 200..2_000u64],
    )
        .prop_map(|(timeout, on_timeout, countdown, consult)| {
            Lifetime::new(
                Duration::from_millis(timeout),
                on_timeout,
                Some(Duration::from_millis(countdown)),
                Some(Duration::from_millis(timeout * 3)),
                Duration::ZERO,
                Activity::Interaction,
            )
            .with_consult(Duration::from_millis(consult))
        })
}

/// The gauge of `state` on the metrics page.
fn gauge(metrics: &Metrics, state: &str) -> f64 {
    let sample = format!("sessiongate_sessions_active{{state=\"{state}\"}}");
    metric_value(&metrics.render(), &sample).unwrap_or(0.0)
}

fn run(rules: Lifetime, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new().unwrap());
        let model = Arc::new(Model::default());
        let observers = Observers::new()
            .with(Arc::clone(&metrics) as _)
            .with(Arc::clone(&model) as _);
        let store = MemoryStore::new(rules, 8, WhenFull::Reject, Arc::new(observers)).unwrap();
        let clock = Clock::new();
        let key = BrowserKey::generate().unwrap();
        let mut sessions: Vec<(Token, Arc<Session>)> = Vec::new();
        for op in ops {
            let pick = |i: usize| sessions.get(i % sessions.len().max(1)).cloned();
            let now = clock.now();
            // A state some reader reported, and the session it is about.
            let reported: Option<(Arc<Session>, State)> = match op {
                Op::Create => {
                    if let Ok(created) = store.create(&key, None, CreatedKind::New, None, now) {
                        sessions.push((created.token, created.session));
                    }
                    None
                }
                Op::Touch(i, activity) => pick(i).map(|(_, s)| {
                    let touch = if activity {
                        Touch::Activity
                    } else {
                        Touch::Signal
                    };
                    let state = store.touch(&s, touch, now);
                    (s, state)
                }),
                Op::Status(i) => pick(i).map(|(token, s)| {
                    let state = store
                        .resolve(&token, &key, now)
                        .map_or(State::Ended, |r| r.session.stored_state());
                    (s, state)
                }),
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    None
                }
                Op::Sweep => {
                    while store.sweep(clock.now(), 64) == 64 {}
                    None
                }
                Op::End(i) => {
                    if let Some((_, s)) = pick(i) {
                        store.end(&s, EndReason::Admin, now);
                    }
                    None
                }
                Op::SetTimeout(i, ms) => {
                    if let Some((_, s)) = pick(i) {
                        store.set_timeout(&s, ms, now);
                    }
                    None
                }
                Op::Handled(i) => {
                    if let Some((_, s)) = pick(i) {
                        store.timeout_handled(&s.handle(), s.last_activity(), now);
                    }
                    None
                }
            };
            if let Some((session, state)) = reported {
                // What a reader says is what the events said: in particular never
                // `warning` unless `warned` was emitted (and not undone) before.
                prop_assert_eq!(state, model.of(&session), "{:?}", op);
            }
            let (mut active, mut warning) = (0.0, 0.0);
            store
                .for_each(clock.now(), &mut |s| match s.stored_state() {
                    State::Active => active += 1.0,
                    State::Warning => warning += 1.0,
                    State::Ended => {}
                })
                .expect("the memory store lists without failing");
            prop_assert_eq!(gauge(&metrics, "active"), active, "{:?}", op);
            prop_assert_eq!(gauge(&metrics, "warning"), warning, "{:?}", op);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn replies_follow_events_and_gauges_count_states(
        rules in rules(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(rules, ops)?;
    }
}

// Ended tokens.

/// A late request, status and heartbeat with the token of a session that just
/// ended are told `ended` — not `none`, not 401 — and nothing is forwarded into a
/// fresh session by the status call. An unknown token is still `none`.
#[tokio::test]
async fn a_just_ended_token_is_told_ended() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let cookies = crate::common::session_cookies(&fx).await;
    let client = reqwest::Client::new();
    let post = |path: &str, cookies: &str| {
        client
            .post(fx.url(path))
            .header("cookie", cookies.to_string())
            .header("x-sessiongate-agent", "1")
            .header("content-type", "application/json")
            .body("{}")
    };
    let ended = post("/__sessiongate/end", &cookies).send().await.unwrap();
    assert_eq!(ended.status(), 200);
    assert_eq!(ended.headers()["x-session-state"], "ended");

    let status = client
        .get(fx.url("/__sessiongate/status"))
        .header("cookie", cookies.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(status.headers()["x-session-state"], "ended");
    assert_eq!(status.json::<Value>().await.unwrap()["state"], "ended");

    let beat = post("/__sessiongate/heartbeat", &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(
        beat.status(),
        200,
        "not 401: the tab is told its session ended"
    );
    assert_eq!(beat.headers()["x-session-state"], "ended");
    assert_eq!(beat.json::<Value>().await.unwrap()["state"], "ended");

    // A token the gateway never issued is still unknown.
    let browser_key = cookies
        .split("; ")
        .find(|c| !c.starts_with("sg_session") && !c.starts_with("__Host-sg_session"))
        .unwrap_or_default()
        .to_string();
    let stranger = post("/__sessiongate/heartbeat", &browser_key)
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);
    assert_eq!(stranger.headers()["x-session-state"], "none");
}

/// In `tab` mode a background request, a status call and a heartbeat carrying an
/// ended tab's token are answered as `ended`.
#[tokio::test]
async fn a_late_request_from_an_ended_tab_says_ended() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = TabBrowser::new();
    tab.navigate(&fx, "/").await;
    let reply = tab.bootstrap(&fx, "/", None, false).await;
    let token = text(&reply, "token");
    let ended = tab.post(&fx, "end", Some(&token), json!({})).await;
    assert_eq!(ended.headers()["x-session-state"], "ended");
    let late = tab
        .client
        .get(fx.url("/status?code=204"))
        .header("cookie", tab.key.clone().unwrap())
        .header("x-session-token", token.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(late.headers()["x-session-state"], "ended");
    let beat = tab.post(&fx, "heartbeat", Some(&token), json!({})).await;
    assert_eq!(beat.status(), 200);
    assert_eq!(beat.headers()["x-session-state"], "ended");
}

// Persistent cookies (`session.cookie_lifetime`).

/// The `Set-Cookie` values of `response`, by cookie name (without attributes' case).
fn set_cookies(response: &reqwest::Response) -> Vec<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap().to_string();
            let name = v.split('=').next().unwrap().to_string();
            (name, v)
        })
        .collect()
}

/// The `Max-Age` of one `Set-Cookie` value, if any.
fn max_age(cookie: &str) -> Option<u64> {
    cookie
        .split(';')
        .map(str::trim)
        .find_map(|a| a.strip_prefix("Max-Age="))
        .map(|v| v.parse().unwrap())
}

/// `cookie_lifetime = 0`: both cookies are session cookies, as before.
#[tokio::test]
async fn without_a_cookie_lifetime_the_cookies_end_with_the_browser() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let first = reqwest::get(fx.url("/")).await.unwrap();
    let cookies = set_cookies(&first);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for (name, cookie) in &cookies {
        assert_eq!(max_age(cookie), None, "{name}: {cookie}");
        assert!(!cookie.to_ascii_lowercase().contains("expires"), "{cookie}");
    }
}

/// A positive `cookie_lifetime` gives both cookies that `Max-Age` — never beyond what
/// `max_lifetime` leaves — and an answer the session gets anyway (a heartbeat reply)
/// gives them again once the refresh interval (an hour, or half the lifetime if
/// shorter) has passed: not before, and only one answer per interval.
#[tokio::test]
async fn a_cookie_lifetime_makes_both_cookies_persistent_and_refreshes_them() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.session.cookie_lifetime = Cfg::from_secs(86_400);
    })
    .await;
    let first = reqwest::get(fx.url("/")).await.unwrap();
    let cookies = set_cookies(&first);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for (name, cookie) in &cookies {
        assert_eq!(max_age(cookie), Some(86_400), "{name}: {cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
    }

    // Capped by what max_lifetime leaves.
    let capped = Fixture::start(SessionMode::Browser, |c| {
        c.session.cookie_lifetime = Cfg::from_secs(86_400);
        c.session.max_lifetime = Cfg::from_secs(600);
    })
    .await;
    let first = reqwest::get(capped.url("/")).await.unwrap();
    for (name, cookie) in set_cookies(&first) {
        let age = max_age(&cookie).unwrap();
        assert!((599..=600).contains(&age), "{name}: {cookie}");
    }

    // Refreshed by a heartbeat reply: a 4 s lifetime refreshes every 2 s.
    let short = Fixture::start(SessionMode::Browser, |c| {
        c.session.cookie_lifetime = Cfg::from_secs(4);
    })
    .await;
    let cookies = crate::common::session_cookies(&short).await;
    let client = reqwest::Client::new();
    let beat = || {
        client
            .post(short.url("/__sessiongate/heartbeat"))
            .header("cookie", cookies.clone())
            .header("x-sessiongate-agent", "1")
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let early = beat().await.unwrap();
    assert_eq!(early.status(), 200);
    assert!(set_cookies(&early).is_empty(), "refreshed too early");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let due = beat().await.unwrap();
    assert_eq!(due.status(), 200);
    let refreshed = set_cookies(&due);
    assert_eq!(refreshed.len(), 2, "{refreshed:?}");
    let sent: Vec<&str> = cookies.split("; ").collect();
    for (name, cookie) in &refreshed {
        assert_eq!(max_age(cookie), Some(4), "{name}: {cookie}");
        let pair = cookie.split(';').next().unwrap();
        assert!(sent.contains(&pair), "the same values again: {pair}");
    }
    assert_eq!(
        due.headers()["cache-control"],
        "private, no-store",
        "an answer that sets cookies is never cached"
    );
    let again = beat().await.unwrap();
    assert!(set_cookies(&again).is_empty(), "one answer per interval");
}
