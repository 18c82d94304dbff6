//! The reserved endpoints under `browser.prefix` (DESIGN.md §6), answered by the
//! gateway and never forwarded.
//!
//! State-changing endpoints are POST only, need the session's token header (or, in
//! `browser` mode, the cookie plus `X-Sessiongate-Agent: 1`, which a cross-site form
//! cannot send), refuse cross-site requests and foreign origins, read at most
//! [`MAX_BODY`] bytes, and never answer with CORS headers.

pub mod path;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::config::{BrowserConfig, Config};
use crate::net::ConnInfo;
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::headers::X_SESSIONGATE_AGENT;
use crate::proxy::{finish_headers, Gateway};
use crate::session::identity::Carrier;
use crate::session::{EndReason, Session, State, Touch};

/// Largest body a reserved endpoint reads.
pub const MAX_BODY: usize = 16 * 1024;

/// Settings of the reserved endpoints.
pub struct Reserved {
    prefix: String,
    browser: BrowserConfig,
}

impl Reserved {
    pub fn new(config: &Config) -> Self {
        Reserved {
            prefix: config.browser.prefix.to_ascii_lowercase(),
            browser: config.browser.clone(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Heartbeat interval for a session (its timeout may differ from the config's).
    fn heartbeat_ms(&self, session: &Session, gateway: &Gateway) -> u64 {
        let timeout = session.timeout();
        let abandon = gateway.store.rules().abandon_for(timeout);
        self.browser
            .heartbeat_for(
                Duration::from_millis(timeout),
                Duration::from_millis(abandon),
            )
            .as_millis() as u64
    }
}

/// The body of `heartbeat` (all fields optional).
#[derive(Debug, Default, Deserialize)]
struct HeartbeatBody {
    #[serde(default)]
    activity: bool,
}

/// Answers a request for `endpoint` (the path after the prefix, normalized).
pub async fn handle(
    gateway: &Gateway,
    endpoint: &str,
    request: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    let mut response = match endpoint {
        "status" => status(gateway, &request),
        "heartbeat" | "extend" | "end" => change(gateway, endpoint, request, conn).await,
        _ => body::json_error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    if !response
        .headers()
        .contains_key(crate::proxy::headers::X_SESSION_STATE)
    {
        finish_headers(response.headers_mut(), None, &[], None);
    }
    response
}

/// `GET status`: the session's state and deadlines, without counting as a signal.
fn status(gateway: &Gateway, request: &Request<Incoming>) -> Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let now = gateway.clock.now();
    let session = gateway
        .resolver
        .resolve(request.headers(), false, now)
        .ok()
        .and_then(|identity| identity.session);
    match session {
        None => with_state(
            body::json(StatusCode::OK, &json!({ "state": "none" })),
            None,
        ),
        Some(session) => {
            let state = session.state_at(gateway.store.rules(), now);
            with_state(
                body::json(StatusCode::OK, &describe(gateway, &session, state)),
                Some(state),
            )
        }
    }
}

/// `POST heartbeat | extend | end`.
async fn change(
    gateway: &Gateway,
    endpoint: &str,
    request: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let session = match authorize(gateway, &request, conn) {
        Ok(session) => session,
        Err(refusal) => return refusal.response(),
    };
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refusal) => return refusal.response(),
    };
    let now = gateway.clock.now();
    match endpoint {
        "end" => {
            gateway.store.end(&session, EndReason::Ended, now);
            let cookies: Vec<HeaderValue> = gateway
                .resolver
                .expire_session_cookie()
                .into_iter()
                .collect();
            let mut response = body::json(StatusCode::OK, &json!({ "state": "ended" }));
            finish_headers(response.headers_mut(), Some(State::Ended), &cookies, None);
            response
        }
        "extend" => touched(gateway, &session, Touch::Activity, now),
        _ => {
            gateway.metrics.heartbeats.inc();
            let beat: HeartbeatBody = if body.is_empty() {
                HeartbeatBody::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(beat) => beat,
                    Err(_) => return Refusal::BadJson.response(),
                }
            };
            let touch = if beat.activity {
                Touch::Activity
            } else {
                Touch::Signal
            };
            touched(gateway, &session, touch, now)
        }
    }
}

/// Why a state-changing request was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    CrossOrigin,
    NoSession,
    MissingAgentHeader,
    TooLarge,
    Unreadable,
    BadJson,
}

impl Refusal {
    fn response(self) -> Response<ProxyBody> {
        let (status, message) = match self {
            Refusal::CrossOrigin => (StatusCode::FORBIDDEN, "cross-origin request refused"),
            Refusal::NoSession => (StatusCode::UNAUTHORIZED, "no valid session"),
            Refusal::MissingAgentHeader => (
                StatusCode::FORBIDDEN,
                "cookie-carried requests need the X-Sessiongate-Agent header",
            ),
            Refusal::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body larger than 16 KiB"),
            Refusal::Unreadable => (StatusCode::BAD_REQUEST, "could not read the body"),
            Refusal::BadJson => (StatusCode::BAD_REQUEST, "body is not valid JSON"),
        };
        with_state(body::json_error(status, message), None)
    }
}

/// The session a state-changing request may act on: same origin, a valid session,
/// and — when only the cookie carries it — the agent's header, which a cross-site
/// form cannot send.
fn authorize(
    gateway: &Gateway,
    request: &Request<Incoming>,
    conn: ConnInfo,
) -> Result<Arc<Session>, Refusal> {
    let authority = request.uri().authority().map(|a| a.as_str());
    if !gateway
        .origins
        .allows(request.headers(), conn.scheme, authority)
    {
        return Err(Refusal::CrossOrigin);
    }
    let identity = gateway
        .resolver
        .resolve(request.headers(), false, gateway.clock.now())
        .map_err(|_| Refusal::NoSession)?;
    let session = identity.session.ok_or(Refusal::NoSession)?;
    if identity.carrier == Some(Carrier::Cookie)
        && !request.headers().contains_key(X_SESSIONGATE_AGENT)
    {
        return Err(Refusal::MissingAgentHeader);
    }
    Ok(session)
}

/// Records a touch and answers with the session's deadlines.
fn touched(
    gateway: &Gateway,
    session: &Arc<Session>,
    touch: Touch,
    now: u64,
) -> Response<ProxyBody> {
    let state = gateway.store.touch(session, touch, now);
    with_state(
        body::json(StatusCode::OK, &describe(gateway, session, state)),
        Some(state),
    )
}

/// The JSON description of a session for the agent (times in ms since the epoch).
fn describe(gateway: &Gateway, session: &Arc<Session>, state: State) -> serde_json::Value {
    if state == State::Ended {
        return json!({ "state": "ended" });
    }
    let clock = &gateway.clock;
    let deadlines = session.deadlines(gateway.store.rules());
    let wall = |at: Option<u64>| at.map(|at| clock.wall(at));
    json!({
        "state": state.as_str(),
        "handle": session.handle(),
        "now": clock.wall(clock.now()),
        "warn_at": wall(deadlines.warn_at),
        "deadline": wall(deadlines.end_at),
        "abandon_at": wall(deadlines.abandon_at),
        "heartbeat": gateway.reserved.heartbeat_ms(session, gateway),
        "tickets": [],
    })
}

/// Reads at most [`MAX_BODY`] bytes of a reserved request's body.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Refusal> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(Refusal::TooLarge);
    }
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        Err(_) => Err(Refusal::Unreadable),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut response = body::json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn with_state(mut response: Response<ProxyBody>, state: Option<State>) -> Response<ProxyBody> {
    finish_headers(response.headers_mut(), state, &[], None);
    response
}
