//! The bootstrap page: what a `tab`-mode navigation without identity gets.
//!
//! A reload, a bookmark or a new tab arrives with the browser key cookie but without
//! the tab's token, which lives in `sessionStorage` where only script can read it. So
//! the gateway answers with a tiny page of its own (DESIGN.md §3 rule 5): its script
//! asks `POST session` for the tab's session with the challenge in the page, then
//! reloads the same URL with a ticket. The page is never cached, carries its own
//! nonce CSP, and says in `<noscript>` why it needs JavaScript. After
//! [`MAX_HOPS`](crate::session::identity::MAX_HOPS) hops without success the browser
//! gets a plain error page instead of a loop.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};

use super::body::{self, ProxyBody};
use super::{finish_headers, Gateway};
use crate::agent;
use crate::config::DuplicateTab;
use crate::session::ticket::Kind;
use crate::session::{BrowserKey, Handle};

/// The bootstrap page for this browser, with a fresh challenge and nonce.
pub fn page(
    gateway: &Gateway,
    request: &http::request::Parts,
    browser: &BrowserKey,
) -> Response<ProxyBody> {
    let challenge = gateway.resolver.tickets.issue(
        Kind::Challenge,
        Handle::nil(),
        browser,
        gateway.clock.now(),
    );
    let nonce = nonce();
    let share = gateway.reserved.duplicate_tab() == DuplicateTab::Share;
    let html = agent::bootstrap_page(&challenge, &nonce, gateway.reserved.display_prefix(), share);
    let body = if request.method == Method::HEAD {
        body::empty()
    } else {
        body::full(html)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(csp) = HeaderValue::from_str(&agent::bootstrap_csp(&nonce)) {
        headers.insert(CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    finish_headers(headers, None, &[], None);
    response
}

/// The page for a browser that keeps coming back without a session (cookies or
/// JavaScript disabled): an explanation instead of another hop.
pub fn loop_page(gateway: &Gateway) -> Response<ProxyBody> {
    gateway
        .metrics
        .bootstraps
        .with_label_values(&["loop"])
        .inc();
    let mut response = Response::new(body::full(agent::loop_page()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; base-uri 'none'; form-action 'none'"),
    );
    finish_headers(headers, None, &[], None);
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
