//! The bootstrap page: what a `tab`-mode navigation without identity gets.
//!
//! A reload, a bookmark or a new tab arrives with the browser key cookie but without
//! the tab's token, which lives in `sessionStorage` where only script can read it. So
//! the gateway answers with a tiny page of its own (DESIGN.md §3 rule 5): its script
//! asks `POST session` for the tab's session with the challenge in the page, then
//! reloads the same URL with a ticket. The page is never cached, carries its own
//! nonce CSP, and says in `<noscript>` why it needs JavaScript. After
//! [`MAX_HOPS`](crate::session::identity::MAX_HOPS) hops without success the browser
//! gets a plain error page instead of a loop. A form posted from a tab whose session
//! has ended gets the ended page (`409`), never a fresh session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};

use super::Reserved;
use crate::agent;
use crate::config::DuplicateTab;
use crate::session::ticket::Kind;
use crate::session::{BrowserKey, Handle};
use crate::web::body::{self, ProxyBody};
use crate::web::refusal::{Refusal, Refused};

impl Reserved {
    /// The bootstrap page for this browser, with a fresh challenge and nonce.
    pub fn bootstrap_page(&self, method: &Method, browser: &BrowserKey) -> Response<ProxyBody> {
        let challenge =
            self.resolver
                .tickets
                .issue(Kind::Challenge, Handle::nil(), browser, self.clock.now());
        let nonce = nonce();
        let share = self.duplicate_tab == DuplicateTab::Share;
        let html = agent::bootstrap_page(&challenge, &nonce, &self.display_prefix, share);
        page(method, html, &agent::bootstrap_csp(&nonce), StatusCode::OK)
    }

    /// The page for a browser that keeps coming back without a session (cookies or
    /// JavaScript disabled): an explanation instead of another hop.
    pub fn loop_page(&self, method: &Method) -> Response<ProxyBody> {
        self.metrics.bootstraps.with_label_values(&["loop"]).inc();
        page(
            method,
            agent::loop_page(),
            "default-src 'none'; base-uri 'none'; form-action 'none'",
            StatusCode::BAD_REQUEST,
        )
    }
}

impl Reserved {
    /// The answer to a write from a `tab`-mode tab whose session has ended
    /// ([`Outcome::Ended`](crate::session::identity::Outcome::Ended)): `409 Conflict`
    /// — the request conflicts with the session's state; unlike `410` it is never
    /// cached — with the ended page for a navigation (a form POST) and
    /// `{"error": ...}` for fetch/XHR. `restart` is where "Start again" leads.
    /// Counted as the refusal `session_ended`.
    pub fn ended_page(
        &self,
        method: &Method,
        navigation: bool,
        restart: &str,
    ) -> Response<ProxyBody> {
        let refusal = Refusal::SessionEnded;
        let mut response = if navigation {
            page(
                method,
                agent::ended_page(restart),
                "default-src 'none'; base-uri 'none'; form-action 'none'",
                refusal.status(),
            )
        } else {
            refusal.into_response()
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response.extensions_mut().insert(Refused(refusal.label()));
        response
    }
}

/// An HTML page of the gateway's own: never cached, with its own CSP.
fn page(method: &Method, html: String, csp: &str, status: StatusCode) -> Response<ProxyBody> {
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        body::full(html)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(csp) = HeaderValue::from_str(csp) {
        headers.insert(CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// 128 random bits for the page's CSP nonce. A nonce only has to be unpredictable
/// per response; should the OS generator fail, a v4 UUID (also random) stands in.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = *uuid::Uuid::new_v4().as_bytes();
    }
    URL_SAFE_NO_PAD.encode(bytes)
}
