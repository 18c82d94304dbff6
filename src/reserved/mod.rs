//! The reserved endpoints under `browser.prefix` (DESIGN.md §6), answered by the
//! gateway and never forwarded, and the bootstrap protocol end to end: the page that
//! issues a challenge ([`bootstrap`]) and `POST session`, which redeems it.
//!
//! State-changing endpoints are POST only, need the session's token header (or, in
//! `browser` mode, the cookie plus `X-Sessiongate-Agent: 1`, which a cross-site form
//! cannot send), refuse cross-site requests and foreign origins, read at most
//! [`MAX_BODY`] bytes, and never answer with CORS headers. Answers are typed
//! ([`reply`]); refusals are [`Refusal`]s; the request context adds the state,
//! cookies and request id.

pub mod bootstrap;
pub mod reply;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use self::reply::{LiveReply, SessionReply, StateReply};
use crate::agent;
use crate::config::{Config, DuplicateTab};
use crate::context::{self, Context};
use crate::lifetime::Lifetime;
use crate::metrics::Metrics;
use crate::session::identity::{BootstrapFailed, Carried, Carrier, Resolver, SetCookie};
use crate::session::store::SessionStore;
use crate::session::ticket::Kind;
use crate::session::{BrowserKey, Clock, EndReason, Session, State, Token, Touch};
use crate::web::body::{self, Progress, ProxyBody};
use crate::web::headers::X_SESSIONGATE_AGENT;
use crate::web::origin::OriginPolicy;
use crate::web::query;
use crate::web::refusal::Refusal;

/// Largest body a reserved endpoint reads.
pub const MAX_BODY: usize = 16 * 1024;

/// Tickets handed out by one reply at most (the agent keeps a pool of 8).
const MAX_TICKETS: usize = 8;

/// The reserved endpoints and what they need.
pub struct Reserved {
    /// Lowercased, to match normalized paths.
    prefix: String,
    /// As configured, for URLs the gateway writes into pages.
    display_prefix: String,
    duplicate_tab: DuplicateTab,
    lifetime: Lifetime,
    store: Arc<dyn SessionStore>,
    resolver: Arc<Resolver>,
    clock: Clock,
    metrics: Arc<Metrics>,
    origins: OriginPolicy,
    /// `listen.body_timeout`.
    body_timeout: std::time::Duration,
}

impl Reserved {
    pub fn new(
        config: &Config,
        store: Arc<dyn SessionStore>,
        resolver: Arc<Resolver>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reserved {
            prefix: config.browser.prefix.to_ascii_lowercase(),
            display_prefix: config.browser.prefix.clone(),
            duplicate_tab: config.session.duplicate_tab,
            lifetime: config.lifetime(),
            store,
            resolver,
            clock,
            metrics,
            origins: OriginPolicy::new(config.listen.origins.clone()),
            body_timeout: config.listen.body_timeout.get(),
        }
    }

    /// The endpoint a request path names, if it is under the prefix (see
    /// [`crate::web::path::reserved_endpoint`]).
    pub fn endpoint(&self, path: &str) -> Option<String> {
        crate::web::path::reserved_endpoint(path, &self.prefix)
    }

    /// The prefix as configured, for URLs the gateway writes into pages.
    pub fn display_prefix(&self) -> &str {
        &self.display_prefix
    }

    /// Heartbeat interval for a session (its timeout may differ from the config's).
    pub fn heartbeat_ms(&self, session: &Session) -> u64 {
        self.lifetime.heartbeat_for(session.timeout())
    }

    /// Answers a request for `endpoint` (the path after the prefix, normalized),
    /// recording the session's state and cookies on the context.
    pub async fn handle(
        &self,
        cx: &mut Context,
        endpoint: &str,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let answer = match endpoint {
            "agent.js" => Ok(agent_script(&request)),
            "status" => self.status(cx, &request),
            "session" => self.session(cx, request).await,
            "heartbeat" | "extend" | "end" | "bye" => self.change(cx, endpoint, request).await,
            _ => Err(Refusal::NotFound),
        };
        answer.unwrap_or_else(|refusal| {
            cx.state = None;
            refusal.into_response()
        })
    }

    /// `GET status`: the session's state and deadlines, without counting as a signal.
    fn status(
        &self,
        cx: &mut Context,
        request: &Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err(Refusal::ReservedMethod("GET, HEAD"));
        }
        let now = self.clock.now();
        let found = self
            .resolver
            .browser_key(request.headers(), cx.scheme)
            .and_then(|key| self.identify(cx, request, &key, false, now));
        let session = found.and_then(|found| {
            cx.identity.set_cookies.extend(found.set_cookies);
            found.session
        });
        let reply = match session {
            None if self.presents_ended(cx, request, now) => {
                cx.state = Some(State::Ended);
                StateReply::gone("ended")
            }
            None => StateReply::gone("none"),
            Some(session) => {
                let state = session.stored_state();
                cx.state = Some(state);
                self.describe(&session, state, Vec::new(), None)
            }
        };
        Ok(body::json(StatusCode::OK, &reply))
    }

    /// `POST session`: the bootstrap page asks for its tab's session.
    async fn session(
        &self,
        cx: &mut Context,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        if request.method() != Method::POST {
            return Err(Refusal::ReservedMethod("POST"));
        }
        if !self.same_origin(cx, &request) {
            return Err(Refusal::CrossOrigin);
        }
        let browser = self
            .resolver
            .browser_key(request.headers(), cx.scheme)
            .ok_or(Refusal::NoBrowserKey)?;
        let presented = self.resolver.header_token(request.headers());
        let body = self.read_body(request).await?;
        let asked: SessionBody = serde_json::from_slice(&body).map_err(|_| Refusal::BadJson)?;
        let now = self.clock.now();
        // The challenge is checked here but spent only once the per-client limits
        // have answered (see `Resolver::bootstrap`).
        let found = match self.resolver.bootstrap(
            browser,
            &asked.challenge,
            presented,
            asked.duplicate,
            self.duplicate_tab,
            cx.client,
            now,
        ) {
            Ok(found) => found,
            Err(BootstrapFailed::Challenge) => return Err(Refusal::BadChallenge),
            Err(BootstrapFailed::Session(error)) => return Ok(context::refuse_session(&error)),
        };
        let reason = found.reason.as_str();
        self.metrics.bootstraps.with_label_values(&[reason]).inc();
        // One ticket for the bootstrap page's own reload, a few for the next page.
        let session = &found.session;
        let reply = SessionReply {
            token: found.token.map(|token| token.encode()),
            handle: session.handle(),
            ticket: self.issue_tickets(session, &browser, 1, now).pop(),
            tickets: self.issue_tickets(session, &browser, MAX_TICKETS / 2, now),
            reason,
        };
        cx.state = Some(session.stored_state());
        Ok(body::json(StatusCode::OK, &reply))
    }

    /// Fresh tickets for `session`, bound to this browser.
    fn issue_tickets(
        &self,
        session: &Session,
        browser: &BrowserKey,
        count: usize,
        now: u64,
    ) -> Vec<String> {
        (0..count)
            .map(|_| {
                self.resolver
                    .tickets
                    .issue(Kind::Ticket, session.handle(), browser, now)
            })
            .collect()
    }

    /// `POST heartbeat | extend | end | bye`.
    async fn change(
        &self,
        cx: &mut Context,
        endpoint: &str,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        if request.method() != Method::POST {
            return Err(Refusal::ReservedMethod("POST"));
        }
        let caller = match self.authorize(cx, &request, endpoint == "bye") {
            Ok(caller) => caller,
            // A late call with the token of a session that just ended: say so (the
            // tab shows "ended"), rather than that there is no session at all.
            Err(Refusal::NoSession) if self.presents_ended(cx, &request, self.clock.now()) => {
                cx.state = Some(State::Ended);
                return Ok(body::json(StatusCode::OK, &StateReply::gone("ended")));
            }
            Err(refusal) => return Err(refusal),
        };
        if endpoint != "end" {
            cx.identity
                .set_cookies
                .extend(caller.set_cookies.iter().cloned());
        }
        let body = self.read_body(request).await?;
        let now = self.clock.now();
        let session = &caller.session;
        match endpoint {
            "end" => {
                self.store.end(session, EndReason::Ended, now);
                cx.identity
                    .set_cookies
                    .extend(self.resolver.expire_session_cookie());
                cx.state = Some(State::Ended);
                Ok(body::json(StatusCode::OK, &StateReply::gone("ended")))
            }
            // The page is gone; whether the tab is, only the absence of further
            // signals can tell (a reload sends `bye` too). So nothing changes here.
            "bye" => {
                cx.state = Some(session.stored_state());
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            "extend" => Ok(self.touched(cx, &caller, Touch::Activity, 0, now)),
            _ => {
                self.metrics.heartbeats.inc();
                let beat: HeartbeatBody = if body.is_empty() {
                    HeartbeatBody::default()
                } else {
                    serde_json::from_slice(&body).map_err(|_| Refusal::BadJson)?
                };
                let touch = if beat.activity {
                    Touch::Activity
                } else {
                    Touch::Signal
                };
                Ok(self.touched(cx, &caller, touch, beat.want, now))
            }
        }
    }

    /// Is the request from the gateway's own origin (or an allowed one)?
    fn same_origin(&self, cx: &Context, request: &Request<Incoming>) -> bool {
        let authority = request.uri().authority().map(|a| a.as_str());
        self.origins
            .allows(request.headers(), cx.scheme.as_str(), authority)
    }

    /// Reads at most [`MAX_BODY`] bytes of a reserved request's body, each wait for
    /// the client bounded by `listen.body_timeout` (408 past it).
    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes, Refusal> {
        let metrics = Arc::clone(&self.metrics);
        let progress = Progress::observed(move |failure| metrics.client_error(failure));
        body::read_limited(request, MAX_BODY, self.body_timeout, progress)
            .await
            .map_err(|error| match error {
                body::ReadError::TooLarge => Refusal::TooLarge,
                body::ReadError::Unreadable => Refusal::Unreadable,
                body::ReadError::TimedOut => Refusal::BodyTimeout,
            })
    }

    /// The session a reserved request carries: its token header, a ticket (only
    /// where `tickets` allows: `bye` is a beacon and cannot set headers), or the
    /// cookie.
    fn identify(
        &self,
        cx: &Context,
        request: &Request<Incoming>,
        browser: &BrowserKey,
        tickets: bool,
        now: u64,
    ) -> Option<Found> {
        let carried = Carried {
            headers: request.headers(),
            query: if tickets { request.uri().query() } else { None },
            speculative: false,
            scheme: cx.scheme,
        };
        let identity = self.resolver.existing(&carried, browser, now)?;
        Some(Found {
            session: identity.session,
            carrier: identity.carrier,
            new_token: identity.new_token,
            set_cookies: identity.set_cookies,
        })
    }

    /// Whether the request presents the token of a session that ended recently.
    fn presents_ended(&self, cx: &Context, request: &Request<Incoming>, now: u64) -> bool {
        let carried = Carried {
            headers: request.headers(),
            query: None,
            speculative: false,
            scheme: cx.scheme,
        };
        self.resolver.presents_ended(&carried, now)
    }

    /// The session a state-changing request may act on: same origin, a valid
    /// session, and — when only the cookie carries it — the agent's header, which a
    /// cross-site form cannot send.
    fn authorize(
        &self,
        cx: &Context,
        request: &Request<Incoming>,
        tickets: bool,
    ) -> Result<Caller, Refusal> {
        if !self.same_origin(cx, request) {
            return Err(Refusal::CrossOrigin);
        }
        let browser = self
            .resolver
            .browser_key(request.headers(), cx.scheme)
            .ok_or(Refusal::NoSession)?;
        let now = self.clock.now();
        let found = self
            .identify(cx, request, &browser, tickets, now)
            .ok_or(Refusal::NoSession)?;
        let session = found.session.ok_or(Refusal::NoSession)?;
        if found.carrier == Some(Carrier::Cookie)
            && !request.headers().contains_key(X_SESSIONGATE_AGENT)
        {
            return Err(Refusal::MissingAgentHeader);
        }
        Ok(Caller {
            session,
            browser,
            new_token: found.new_token,
            set_cookies: found.set_cookies,
        })
    }

    /// Records a touch and answers with the session's deadlines, `want` fresh
    /// tickets, and the current token if the caller's was rotated away.
    fn touched(
        &self,
        cx: &mut Context,
        caller: &Caller,
        touch: Touch,
        want: usize,
        now: u64,
    ) -> Response<ProxyBody> {
        let session = &caller.session;
        let state = self.store.touch(session, touch, now);
        cx.state = Some(state);
        let tickets = if state == State::Ended {
            Vec::new()
        } else {
            self.issue_tickets(session, &caller.browser, want.min(MAX_TICKETS), now)
        };
        let reply = self.describe(session, state, tickets, caller.new_token.as_ref());
        body::json(StatusCode::OK, &reply)
    }

    /// The description of a session for the agent (times in ms since the epoch).
    fn describe(
        &self,
        session: &Session,
        state: State,
        tickets: Vec<String>,
        token: Option<&Token>,
    ) -> StateReply {
        if state == State::Ended {
            return StateReply::gone("ended");
        }
        let clock = &self.clock;
        let deadlines = session.deadlines(self.store.rules());
        let wall = |at: Option<u64>| at.map(|at| clock.wall(at));
        StateReply {
            state: state.as_str(),
            live: Some(LiveReply {
                handle: session.handle(),
                now: clock.wall(clock.now()),
                warn_at: wall(deadlines.warn_at),
                deadline: wall(deadlines.end_at),
                abandon_at: wall(deadlines.abandon_at),
                heartbeat: self.heartbeat_ms(session),
                tickets,
                token: token.map(Token::encode),
            }),
        }
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

/// What a reserved request carries, as identified.
struct Found {
    session: Option<Arc<Session>>,
    carrier: Option<Carrier>,
    new_token: Option<Token>,
    /// Cookies the reply must set (a rotated token, refreshed persistent cookies).
    set_cookies: Vec<SetCookie>,
}

/// The session a reserved request acts on, and what the reply needs to know.
struct Caller {
    session: Arc<Session>,
    browser: BrowserKey,
    /// The current token when the request presented one that was rotated away.
    new_token: Option<Token>,
    /// Cookies the reply must set (a rotated token, refreshed persistent cookies).
    set_cookies: Vec<SetCookie>,
}

/// `GET agent.js`: the agent. Its URL carries the version, so it may be cached
/// forever; a request for another version still gets the current script, but only
/// for a short while.
fn agent_script(request: &Request<Incoming>) -> Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Refusal::ReservedMethod("GET, HEAD").into_response();
    }
    let current = request
        .uri()
        .query()
        .and_then(|q| query::param(q, "v"))
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
