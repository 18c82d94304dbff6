//! The per-request context: everything the gateway learns about one request, made
//! once when the request arrives and carried through every stage (Pingora's `CTX`).
//!
//! It holds the request id, the connection, the request's [`Fetch`] metadata, the
//! client address and the public scheme (computed once, from the peer and what a
//! trusted proxy says: [`crate::web::forwarded`]), and — as the stages find them —
//! the session identity and state. Every route (proxied, reserved, bootstrap,
//! refusal) ends in [`Context::finish`], so `X-Session-State`, the gateway's cookies
//! (spelled for the public scheme), `Strict-Transport-Security` under https and
//! `X-Request-Id` are set the same way on every answer.

use std::net::IpAddr;

use http::header::{CACHE_CONTROL, SET_COOKIE, STRICT_TRANSPORT_SECURITY};
use http::{HeaderValue, Request, Response};

use crate::net::ConnInfo;
use crate::session::identity::{CookieNames, Identity};
use crate::session::{SessionError, State};
use crate::web::body::ProxyBody;
use crate::web::fetch::Fetch;
use crate::web::forwarded::{Forwarded, Scheme, Trust};
use crate::web::headers::{self, X_REQUEST_ID, X_SESSION_STATE, X_SESSION_TOKEN};
use crate::web::refusal::Refusal;

/// HSTS for answers whose public scheme is https: a year, this host only (the
/// gateway cannot know whether every subdomain speaks https). An upstream's own
/// header is kept.
const HSTS: &str = "max-age=31536000";

/// What the gateway knows about one request as it moves through the stages.
#[derive(Debug)]
pub struct Context {
    /// `X-Request-Id`: the client's when well-formed, else a fresh UUID.
    pub id: HeaderValue,
    pub conn: ConnInfo,
    pub fetch: Fetch,
    /// The client address per-client limits apply to (see
    /// [`crate::web::forwarded`]).
    pub client: IpAddr,
    /// The scheme the browser used: decides the cookies' spelling, HSTS and the
    /// gateway's own `Origin`.
    pub scheme: Scheme,
    /// What the upstream's `X-Forwarded-*` headers are made from.
    pub forwarded: Forwarded,
    /// The request's session, once identified, and cookies to set.
    pub identity: Identity,
    /// The session's state after this request (`None`: no session).
    pub state: Option<State>,
}

impl Context {
    /// The context of a request that has just arrived.
    pub fn new<B>(request: &Request<B>, conn: ConnInfo, trust: &Trust) -> Context {
        let headers = request.headers();
        let arrival = trust.arrival(headers, conn.peer.ip(), conn.scheme == "https");
        Context {
            id: request
                .extensions()
                .get::<headers::RequestId>()
                .map_or_else(|| headers::request_id(headers), |id| id.0.clone()),
            conn,
            fetch: Fetch::of(request.method(), headers),
            client: arrival.client,
            scheme: arrival.scheme,
            forwarded: arrival.forwarded,
            identity: Identity::default(),
            state: None,
        }
    }

    /// Adds the gateway's response headers to any answer, proxied or its own: the
    /// session state, the gateway's cookies, HSTS under https, the request id. An
    /// answer that sets a cookie of the gateway's or carries a token is
    /// `Cache-Control: private, no-store`, whatever the upstream said: no cache may
    /// keep a session for others.
    pub fn finish(&self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        let headers = response.headers_mut();
        // No session, but a token of one that ended recently: `ended`, not `none`.
        let state = self
            .state
            .or(self.identity.ended.then_some(State::Ended))
            .map_or("none", State::as_str);
        headers.insert(X_SESSION_STATE, HeaderValue::from_static(state));
        let spelling = CookieNames.spelled(self.scheme);
        for cookie in &self.identity.set_cookies {
            headers.append(SET_COOKIE, cookie.render(spelling));
        }
        if self.scheme.is_secure() && !headers.contains_key(STRICT_TRANSPORT_SECURITY) {
            headers.insert(STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
        }
        if !self.identity.set_cookies.is_empty() || headers.contains_key(X_SESSION_TOKEN) {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        }
        headers.insert(X_REQUEST_ID, self.id.clone());
        response
    }
}

/// The answer to a session-layer error (limits, the OS generator), logged when it is
/// the gateway's own fault.
pub fn refuse_session(error: &SessionError) -> Response<ProxyBody> {
    let refusal = error.refusal();
    if refusal == Refusal::Internal {
        tracing::error!(%error, "cannot mint a session");
    }
    refusal.into_response()
}
