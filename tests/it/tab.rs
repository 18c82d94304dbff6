//! `tab` mode over plain HTTP, playing the agent's and the bootstrap page's part by
//! hand: first contact, the bootstrap page, `POST session`, tickets, forks, rotation,
//! the loop guard, speculative loads and the creation limit. (The same flows in a
//! real browser are in the `browser` test suite.)

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sessiongate::config::{DuplicateTab, SessionMode};

use crate::common::Fixture;

/// Where a hand-driven browser sends its requests: a test fixture, or a gateway
/// process started by a test of its own (`persist.rs`).
pub(crate) trait Site {
    fn url(&self, path: &str) -> String;
}

impl Site for Fixture {
    fn url(&self, path: &str) -> String {
        Fixture::url(self, path)
    }
}

/// One browser profile, driven by hand (also used by `ended.rs`, `persist.rs`, ...).
pub(crate) struct Browser {
    pub(crate) client: reqwest::Client,
    /// The `sg_browser=…` cookie pair, once set.
    pub(crate) key: Option<String>,
}

impl Browser {
    pub(crate) fn new() -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            key: None,
        }
    }

    /// A top-level page load, as a browser sends it.
    pub(crate) async fn navigate(&mut self, site: &impl Site, path: &str) -> Response {
        let mut request = self
            .client
            .get(site.url(path))
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-dest", "document")
            .header("accept", "text/html");
        if let Some(key) = &self.key {
            request = request.header("cookie", key);
        }
        let response = request.send().await.unwrap();
        self.remember_key(response.headers());
        response
    }

    fn remember_key(&mut self, headers: &HeaderMap) {
        for cookie in headers.get_all("set-cookie") {
            let pair = cookie.to_str().unwrap().split(';').next().unwrap();
            if pair.starts_with("sg_browser=") {
                self.key = Some(pair.to_string());
            }
        }
    }

    /// A reserved POST from the agent.
    pub(crate) async fn post(
        &self,
        site: &impl Site,
        endpoint: &str,
        token: Option<&str>,
        body: Value,
    ) -> Response {
        let mut request = self
            .client
            .post(site.url(&format!("/__sessiongate/{endpoint}")))
            .header("content-type", "application/json")
            .header("x-sessiongate-agent", "1")
            .body(body.to_string());
        if let Some(key) = &self.key {
            request = request.header("cookie", key);
        }
        if let Some(token) = token {
            request = request.header("x-session-token", token);
        }
        request.send().await.unwrap()
    }

    /// Loads `path` without identity, expects the bootstrap page, and runs its
    /// exchange: `POST session` with the page's challenge.
    pub(crate) async fn bootstrap(
        &mut self,
        site: &impl Site,
        path: &str,
        token: Option<&str>,
        duplicate: bool,
    ) -> Value {
        let page = self.navigate(site, path).await;
        let challenge = challenge_of(page).await;
        let reply = self
            .post(
                site,
                "session",
                token,
                json!({"challenge": challenge, "duplicate": duplicate}),
            )
            .await;
        assert_eq!(reply.status(), StatusCode::OK);
        reply.json().await.unwrap()
    }

    /// A background request (fetch/XHR) carrying the tab's `token`.
    pub(crate) async fn fetch(&self, site: &impl Site, path: &str, token: &str) -> Response {
        let mut request = self
            .client
            .get(site.url(path))
            .header("x-session-token", token);
        if let Some(key) = &self.key {
            request = request.header("cookie", key);
        }
        request.send().await.unwrap()
    }
}

/// Checks a response is the bootstrap page and returns its challenge.
async fn challenge_of(page: Response) -> String {
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers["x-session-state"], "none");
    assert_eq!(headers["cache-control"], "no-store");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("'nonce-"), "{csp}");
    let html = page.text().await.unwrap();
    let marker = "name=\"sessiongate-challenge\" content=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("not the bootstrap page: {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_string()
}

pub(crate) fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
        .to_string()
}

#[tokio::test]
async fn first_contact_mints_and_a_reload_bootstraps_back_into_the_same_session() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = Browser::new();
    let first = tab.navigate(&fx, "/page").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-session-state"], "active");
    assert!(tab.key.is_some(), "the browser key cookie is set");
    let seen = fx.upstream.wait_for(1).await;
    let handle = seen[0]
        .header("x-session")
        .expect("first contact has a session");

    // A reload carries no identity: the gateway answers itself, upstream sees nothing.
    let page = tab.navigate(&fx, "/page?x=1").await;
    let challenge = challenge_of(page).await;
    assert_eq!(fx.upstream.requests().len(), 1);

    // The bootstrap script has no token for this tab (first contact put it in the
    // page, which the agent would have stored): without it the tab gets a new one.
    let reply = tab
        .post(
            &fx,
            "session",
            None,
            json!({"challenge": challenge, "duplicate": false}),
        )
        .await;
    assert_eq!(reply.status(), StatusCode::OK);
    let reply: Value = reply.json().await.unwrap();
    assert_eq!(reply["reason"], "new");
    let token = text(&reply, "token");
    let fresh = text(&reply, "handle");
    assert_ne!(fresh, handle);
    assert_eq!(reply["tickets"].as_array().unwrap().len(), 4);

    // The ticket carries the navigation; the upstream never sees `__sg*`.
    let ticket = text(&reply, "ticket");
    let page = tab
        .navigate(&fx, &format!("/page?x=1&__sg_t={ticket}&__sg_b=1"))
        .await;
    assert_eq!(page.headers()["x-session-state"], "active");
    let seen = fx.upstream.wait_for(2).await;
    assert_eq!(seen[1].header("x-session").as_deref(), Some(fresh.as_str()));
    assert_eq!(seen[1].uri, "/page?x=1");

    // Tickets are single use: the same URL again bootstraps.
    let again = tab.navigate(&fx, &format!("/page?__sg_t={ticket}")).await;
    challenge_of(again).await;

    // With the stored token the next bootstrap resumes the same session.
    let resumed = tab.bootstrap(&fx, "/other", Some(&token), false).await;
    assert_eq!(resumed["reason"], "resumed");
    assert_eq!(text(&resumed, "handle"), fresh);
    assert!(
        resumed.get("token").is_none(),
        "a resumed tab keeps its token"
    );
    assert_eq!(
        fx.metric("sessiongate_bootstraps_total{outcome=\"resumed\"}")
            .await,
        1.0
    );
    assert_eq!(
        fx.metric("sessiongate_requests_total{code=\"2xx\",route=\"bootstrap\"}")
            .await,
        3.0,
        "the reload, the spent ticket, and /other"
    );
}

#[tokio::test]
async fn a_duplicated_tab_forks_with_a_parent_or_shares() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await;
    let original = tab.bootstrap(&fx, "/", None, false).await;
    let token = text(&original, "token");

    let copy = tab.bootstrap(&fx, "/", Some(&token), true).await;
    assert_eq!(copy["reason"], "forked");
    let child = text(&copy, "handle");
    assert_ne!(child, text(&original, "handle"));
    let child_token = text(&copy, "token");
    assert_ne!(child_token, token);

    // The fork's first forwarded request names its parent; later ones do not.
    for _ in 0..2 {
        tab.client
            .get(fx.url("/api"))
            .header("cookie", tab.key.as_deref().unwrap())
            .header("x-session-token", &child_token)
            .send()
            .await
            .unwrap();
    }
    let seen = fx.upstream.wait_for(3).await;
    let forwarded: Vec<_> = seen.iter().filter(|r| r.uri == "/api").collect();
    assert_eq!(forwarded[0].header("x-session").unwrap(), child);
    assert_eq!(
        forwarded[0].header("x-session-parent").unwrap(),
        text(&original, "handle")
    );
    assert_eq!(forwarded[1].header("x-session-parent"), None);
    assert_eq!(
        fx.metric("sessiongate_sessions_created_total{kind=\"fork\"}")
            .await,
        1.0
    );

    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.session.duplicate_tab = DuplicateTab::Share
    })
    .await;
    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await;
    let original = tab.bootstrap(&fx, "/", None, false).await;
    let copy = tab
        .bootstrap(&fx, "/", Some(&text(&original, "token")), true)
        .await;
    assert_eq!(copy["reason"], "resumed");
    assert_eq!(copy["handle"], original["handle"]);
}

#[tokio::test]
async fn challenges_and_tickets_work_once_and_only_in_their_browser() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await;
    let page = tab.navigate(&fx, "/").await;
    let challenge = challenge_of(page).await;

    let mut thief = Browser::new();
    thief.navigate(&fx, "/").await;
    let stolen = thief
        .post(&fx, "session", None, json!({"challenge": challenge}))
        .await;
    assert_eq!(
        stolen.status(),
        StatusCode::FORBIDDEN,
        "bound to the browser key"
    );

    let body = json!({"challenge": challenge});
    let reply = tab.post(&fx, "session", None, body.clone()).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let reply: Value = reply.json().await.unwrap();
    let replay = tab.post(&fx, "session", None, body).await;
    assert_eq!(replay.status(), StatusCode::FORBIDDEN, "single use");

    // Another browser cannot ride the ticket: it gets its own bootstrap page.
    let ticket = text(&reply, "ticket");
    let page = thief.navigate(&fx, &format!("/?__sg_t={ticket}")).await;
    challenge_of(page).await;
    // … and the ticket is still good for its own browser.
    let page = tab.navigate(&fx, &format!("/?__sg_t={ticket}")).await;
    assert_eq!(page.headers()["x-session-state"], "active");

    // Cookies off: no browser key, no session.
    let cookieless = Browser::new();
    let refused = cookieless
        .post(&fx, "session", None, json!({"challenge": "x"}))
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_loop_guard_stops_after_two_hops() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await;
    let hop1 = tab.navigate(&fx, "/?__sg_t=junk&__sg_b=1").await;
    challenge_of(hop1).await;
    let hop2 = tab.navigate(&fx, "/?__sg_t=junk&__sg_b=2").await;
    assert_eq!(hop2.status(), StatusCode::BAD_REQUEST);
    assert_eq!(hop2.headers()["x-session-state"], "none");
    assert_eq!(
        fx.metric("sessiongate_bootstraps_total{outcome=\"loop\"}")
            .await,
        1.0
    );
    assert_eq!(
        fx.upstream.requests().len(),
        1,
        "only first contact went up"
    );
}

#[tokio::test]
async fn prefetch_never_mints_or_spends() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let prefetch = reqwest::Client::new()
        .get(fx.url("/"))
        .header("sec-fetch-mode", "navigate")
        .header("sec-purpose", "prefetch")
        .send()
        .await
        .unwrap();
    assert!(prefetch.headers().get("set-cookie").is_none());
    assert_eq!(prefetch.headers()["x-session-state"], "none");

    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await;
    let reply = tab.bootstrap(&fx, "/", None, false).await;
    let ticket = text(&reply, "ticket");
    let prefetched = tab
        .client
        .get(fx.url(&format!("/next?__sg_t={ticket}")))
        .header("cookie", tab.key.as_deref().unwrap())
        .header("sec-fetch-mode", "navigate")
        .header("sec-purpose", "prefetch;prerender")
        .send()
        .await
        .unwrap();
    assert_eq!(prefetched.headers()["x-session-state"], "none");
    let real = tab.navigate(&fx, &format!("/next?__sg_t={ticket}")).await;
    assert_eq!(real.headers()["x-session-state"], "active", "not spent");
    assert_eq!(
        fx.metric("sessiongate_sessions_created_total{kind=\"new\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn heartbeats_refill_tickets_and_bye_takes_a_ticket() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await;
    let reply = tab.bootstrap(&fx, "/", None, false).await;
    let token = text(&reply, "token");
    let beat = tab
        .post(
            &fx,
            "heartbeat",
            Some(&token),
            json!({"page": "p1", "activity": true, "visible": true, "want": 50}),
        )
        .await;
    assert_eq!(beat.status(), StatusCode::OK);
    let beat: Value = beat.json().await.unwrap();
    assert_eq!(beat["state"], "active");
    assert_eq!(beat["tickets"].as_array().unwrap().len(), 8, "capped at 8");
    for field in ["now", "warn_at", "deadline", "abandon_at", "heartbeat"] {
        assert!(beat[field].is_u64(), "{field} in {beat}");
    }

    let ticket = beat["tickets"][0].as_str().unwrap();
    let bye = tab
        .client
        .post(fx.url(&format!("/__sessiongate/bye?__sg_t={ticket}")))
        .header("cookie", tab.key.as_deref().unwrap())
        .body(r#"{"page":"p1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bye.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        bye.headers()["x-session-state"],
        "active",
        "bye ends nothing"
    );
    // Only bye may use a ticket.
    let ticket = beat["tickets"][1].as_str().unwrap();
    let beat = tab
        .client
        .post(fx.url(&format!("/__sessiongate/heartbeat?__sg_t={ticket}")))
        .header("cookie", tab.key.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rotation_hands_out_a_new_token_and_retires_the_old_one() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut tab = Browser::new();
    tab.navigate(&fx, "/").await;
    let reply = tab.bootstrap(&fx, "/", None, false).await;
    let old = text(&reply, "token");
    let handle = text(&reply, "handle");
    let fetch = |token: String, path: &'static str| {
        let request = tab
            .client
            .get(fx.url(path))
            .header("cookie", tab.key.clone().unwrap())
            .header("x-session-token", token);
        async move { request.send().await.unwrap() }
    };
    let login = fetch(old.clone(), "/respond?header=X-Session-Rotate:1").await;
    assert_eq!(login.status(), StatusCode::OK);
    assert!(login.headers().get("x-session-rotate").is_none());
    let new = login.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(new, old);

    // Both work during the grace period, for the same handle; a heartbeat with the
    // old one is told the new one.
    for token in [&old, &new] {
        let echo: Value = fetch(token.clone(), "/echo").await.json().await.unwrap();
        let seen = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "x-session")
            .map(|h| h[1].as_str().unwrap().to_string());
        assert_eq!(seen.as_deref(), Some(handle.as_str()));
    }
    let beat: Value = tab
        .post(&fx, "heartbeat", Some(&old), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(beat["token"], new.as_str());
    let beat: Value = tab
        .post(&fx, "heartbeat", Some(&new), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert!(beat.get("token").is_none());
}

#[tokio::test]
async fn one_address_cannot_mint_without_limit() {
    let fx = Fixture::start(SessionMode::Tab, |c| c.session.new_per_client = 3).await;
    for _ in 0..3 {
        let page = Browser::new().navigate(&fx, "/").await;
        assert_eq!(page.status(), StatusCode::OK);
    }
    let refused = Browser::new().navigate(&fx, "/").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(fx.gateway.store.len(), 3);
}
