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
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::agent;
use crate::config::{BrowserConfig, Config, DuplicateTab};
use crate::net::ConnInfo;
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::headers::X_SESSIONGATE_AGENT;
use crate::proxy::{finish_headers, Gateway};
use crate::session::identity::{Carried, Carrier, Identity};
use crate::session::ticket::Kind;
use crate::session::{BrowserKey, CreatedKind, EndReason, Session, State, Token, Touch};

/// Largest body a reserved endpoint reads.
pub const MAX_BODY: usize = 16 * 1024;

/// Tickets handed out by one reply at most (the agent keeps a pool of 8).
const MAX_TICKETS: usize = 8;

/// Settings of the reserved endpoints.
pub struct Reserved {
    /// Lowercased, to match normalized paths.
    prefix: String,
    browser: BrowserConfig,
    duplicate_tab: DuplicateTab,
}

impl Reserved {
    pub fn new(config: &Config) -> Self {
        Reserved {
            prefix: config.browser.prefix.to_ascii_lowercase(),
            browser: config.browser.clone(),
            duplicate_tab: config.session.duplicate_tab,
        }
    }

    /// The prefix for matching (lowercase).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix as configured, for URLs the gateway writes into pages.
    pub fn display_prefix(&self) -> &str {
        &self.browser.prefix
    }

    pub fn duplicate_tab(&self) -> DuplicateTab {
        self.duplicate_tab
    }

    /// Heartbeat interval for a session (its timeout may differ from the config's).
    pub(crate) fn heartbeat_ms(&self, session: &Session, gateway: &Gateway) -> u64 {
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
    /// How many fresh tickets the agent wants for its pool.
    #[serde(default)]
    want: usize,
}

/// The body of `POST session`.
#[derive(Debug, Deserialize)]
struct SessionBody {
    challenge: String,
    #[serde(default)]
    duplicate: bool,
}

/// Answers a request for `endpoint` (the path after the prefix, normalized).
pub async fn handle(
    gateway: &Gateway,
    endpoint: &str,
    request: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    let mut response = match endpoint {
        "agent.js" => agent_script(&request),
        "status" => status(gateway, &request),
        "session" => session(gateway, request, conn).await,
        "heartbeat" | "extend" | "end" | "bye" => change(gateway, endpoint, request, conn).await,
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
        .browser_key(request.headers())
        .and_then(|key| identify(gateway, request, &key, false, now))
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

/// `GET agent.js`: the agent. Its URL carries the version, so it may be cached
/// forever; a request for another version still gets the current script, but only
/// for a short while.
fn agent_script(request: &Request<Incoming>) -> Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let current = request
        .uri()
        .query()
        .and_then(|q| crate::proxy::query::param(q, "v"))
        .is_some_and(|v| v == agent::version());
    let body = if request.method() == Method::HEAD {
        body::empty()
    } else {
        body::full(agent::AGENT_JS)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if current {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `POST session`: the bootstrap page asks for its tab's session.
async fn session(
    gateway: &Gateway,
    request: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    if !same_origin(gateway, &request, conn) {
        return Refusal::CrossOrigin.response();
    }
    let Some(browser) = gateway.resolver.browser_key(request.headers()) else {
        return Refusal::NoBrowserKey.response();
    };
    let presented = gateway.resolver.header_token(request.headers());
    let client = crate::proxy::headers::client_address(
        request.headers(),
        conn.peer.ip(),
        gateway.trust_forwarded(),
    );
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refusal) => return refusal.response(),
    };
    let Ok(asked) = serde_json::from_slice::<SessionBody>(&body) else {
        return Refusal::BadJson.response();
    };
    let now = gateway.clock.now();
    if gateway
        .resolver
        .tickets
        .redeem(Kind::Challenge, &asked.challenge, &browser, now)
        .is_err()
    {
        return Refusal::BadChallenge.response();
    }
    let resolved = presented.and_then(|token| gateway.store.resolve(&token, &browser, now));
    let fork = asked.duplicate && gateway.reserved.duplicate_tab == DuplicateTab::New;
    let (reason, session, token) = match resolved {
        Some(resolved) if !fork => {
            // A reload or navigation of the tab: the user is there.
            gateway.store.touch(&resolved.session, Touch::Activity, now);
            ("resumed", resolved.session, resolved.newer_token)
        }
        found => {
            let (reason, parent, kind) = match (found, presented) {
                (Some(parent), _) => ("forked", Some(parent.session.handle()), CreatedKind::Fork),
                (None, Some(_)) => ("expired", None, CreatedKind::ResumeMiss),
                (None, None) => ("new", None, CreatedKind::New),
            };
            match gateway
                .resolver
                .mint(Some(browser), parent, kind, client, now)
            {
                Ok(Identity {
                    session: Some(session),
                    new_token,
                    ..
                }) => (reason, session, new_token),
                Ok(_) => return Refusal::NoSession.response(),
                Err(error) => return crate::proxy::session_error_response(&error),
            }
        }
    };
    gateway
        .metrics
        .bootstraps
        .with_label_values(&[reason])
        .inc();
    // One ticket for the bootstrap page's own reload, a few for the next page.
    let ticket = issue_tickets(gateway, &session, &browser, 1, now);
    let tickets = issue_tickets(gateway, &session, &browser, MAX_TICKETS / 2, now);
    let mut reply = json!({
        "handle": session.handle(),
        "ticket": ticket.first(),
        "tickets": tickets,
        "reason": reason,
    });
    if let Some(token) = token {
        reply["token"] = json!(token.encode());
    }
    let state = session.state_at(gateway.store.rules(), now);
    with_state(body::json(StatusCode::OK, &reply), Some(state))
}

/// Fresh tickets for `session`, bound to this browser.
fn issue_tickets(
    gateway: &Gateway,
    session: &Session,
    browser: &BrowserKey,
    count: usize,
    now: u64,
) -> Vec<String> {
    (0..count)
        .map(|_| {
            gateway
                .resolver
                .tickets
                .issue(Kind::Ticket, session.handle(), browser, now)
        })
        .collect()
}

/// `POST heartbeat | extend | end | bye`.
async fn change(
    gateway: &Gateway,
    endpoint: &str,
    request: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let caller = match authorize(gateway, &request, conn, endpoint == "bye") {
        Ok(caller) => caller,
        Err(refusal) => return refusal.response(),
    };
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refusal) => return refusal.response(),
    };
    let now = gateway.clock.now();
    match endpoint {
        "end" => {
            gateway.store.end(&caller.session, EndReason::Ended, now);
            let cookies: Vec<HeaderValue> = gateway
                .resolver
                .expire_session_cookie()
                .into_iter()
                .collect();
            let mut response = body::json(StatusCode::OK, &json!({ "state": "ended" }));
            finish_headers(response.headers_mut(), Some(State::Ended), &cookies, None);
            response
        }
        // The page is gone; whether the tab is, only the absence of further signals
        // can tell (a reload sends `bye` too). So nothing changes here.
        "bye" => {
            let state = caller.session.state_at(gateway.store.rules(), now);
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            with_state(response, Some(state))
        }
        "extend" => touched(gateway, &caller, Touch::Activity, 0, now),
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
            touched(gateway, &caller, touch, beat.want, now)
        }
    }
}

/// Why a reserved request was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    CrossOrigin,
    NoSession,
    NoBrowserKey,
    BadChallenge,
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
            Refusal::NoBrowserKey => (
                StatusCode::UNAUTHORIZED,
                "no browser key cookie: cookies must be enabled",
            ),
            Refusal::BadChallenge => (
                StatusCode::FORBIDDEN,
                "the challenge is invalid, expired or already used",
            ),
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

/// The session a reserved request acts on, and what the reply needs to know.
struct Caller {
    session: Arc<Session>,
    browser: BrowserKey,
    /// The current token when the request presented one that was rotated away.
    new_token: Option<Token>,
}

/// Is the request from the gateway's own origin (or an allowed one)?
fn same_origin(gateway: &Gateway, request: &Request<Incoming>, conn: ConnInfo) -> bool {
    let authority = request.uri().authority().map(|a| a.as_str());
    gateway
        .origins
        .allows(request.headers(), conn.scheme, authority)
}

/// The session a reserved request carries: its token header, a ticket (only where
/// `tickets` allows: `bye` is a beacon and cannot set headers), or the cookie.
fn identify(
    gateway: &Gateway,
    request: &Request<Incoming>,
    browser: &BrowserKey,
    tickets: bool,
    now: u64,
) -> Option<Identity> {
    let carried = Carried {
        headers: request.headers(),
        query: if tickets { request.uri().query() } else { None },
        speculative: false,
    };
    gateway.resolver.existing(&carried, browser, now)
}

/// The session a state-changing request may act on: same origin, a valid session,
/// and — when only the cookie carries it — the agent's header, which a cross-site
/// form cannot send.
fn authorize(
    gateway: &Gateway,
    request: &Request<Incoming>,
    conn: ConnInfo,
    tickets: bool,
) -> Result<Caller, Refusal> {
    if !same_origin(gateway, request, conn) {
        return Err(Refusal::CrossOrigin);
    }
    let browser = gateway
        .resolver
        .browser_key(request.headers())
        .ok_or(Refusal::NoSession)?;
    let now = gateway.clock.now();
    let identity = identify(gateway, request, &browser, tickets, now).ok_or(Refusal::NoSession)?;
    let session = identity.session.ok_or(Refusal::NoSession)?;
    if identity.carrier == Some(Carrier::Cookie)
        && !request.headers().contains_key(X_SESSIONGATE_AGENT)
    {
        return Err(Refusal::MissingAgentHeader);
    }
    Ok(Caller {
        session,
        browser,
        new_token: identity.new_token,
    })
}

/// Records a touch and answers with the session's deadlines, `want` fresh tickets,
/// and the current token if the caller's was rotated away.
fn touched(
    gateway: &Gateway,
    caller: &Caller,
    touch: Touch,
    want: usize,
    now: u64,
) -> Response<ProxyBody> {
    let session = &caller.session;
    let state = gateway.store.touch(session, touch, now);
    let mut reply = describe(gateway, session, state);
    if state != State::Ended {
        let tickets = issue_tickets(
            gateway,
            session,
            &caller.browser,
            want.min(MAX_TICKETS),
            now,
        );
        reply["tickets"] = json!(tickets);
        if let Some(token) = &caller.new_token {
            reply["token"] = json!(token.encode());
        }
    }
    with_state(body::json(StatusCode::OK, &reply), Some(state))
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
    body::read_limited(request, MAX_BODY)
        .await
        .map_err(|error| match error {
            body::ReadError::TooLarge => Refusal::TooLarge,
            body::ReadError::Unreadable => Refusal::Unreadable,
        })
}

fn method_not_allowed(allow: &'static str) -> Response<ProxyBody> {
    body::method_not_allowed(allow)
}

fn with_state(mut response: Response<ProxyBody>, state: Option<State>) -> Response<ProxyBody> {
    finish_headers(response.headers_mut(), state, &[], None);
    response
}
