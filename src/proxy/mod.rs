//! The request path, as a chain of stages:
//!
//! 1. **refuse** what no legacy backend should see (TRACE, CONNECT; a request that
//!    sends both `Content-Length` and `Transfer-Encoding` is framed by the latter alone
//!    and its connection closed by hyper, so nothing can be smuggled behind it);
//! 2. **reserved**: anything under `browser.prefix` is answered by the gateway
//!    ([`crate::reserved`]) and never forwarded;
//! 3. **identify**: find or mint the request's session ([`crate::session::identity`])
//!    and record the signal or activity — or answer a `tab`-mode page load without
//!    identity with the [`bootstrap`] page;
//! 4. **forward**: scrub the client's headers (strip-then-inject), add the gateway's
//!    own, wait for the session's start hook, and stream the request upstream
//!    ([`forward`]);
//! 5. **respond**: consume the upstream's control headers, put the agent into HTML
//!    ([`crate::inject`]), add `X-Session-State` and cookies, and stream the body
//!    back.

pub mod body;
pub mod bootstrap;
pub mod forward;
pub mod headers;
pub mod origin;
pub mod query;
pub mod tunnel;

use std::sync::Arc;

use http::header::{CONNECTION, HOST, SET_COOKIE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tracing::Instrument;

use self::body::ProxyBody;
use self::forward::Upstream;
use self::headers::{
    X_REQUEST_ID, X_SESSION_END, X_SESSION_PARENT, X_SESSION_ROTATE, X_SESSION_STATE,
    X_SESSION_TIMEOUT, X_SESSION_TOKEN,
};
use self::origin::OriginPolicy;
use self::tunnel::Tunnels;
use crate::config::{Activity, Config};
use crate::hooks::Hooks;
use crate::inject::{self, Outcome as InjectOutcome, Skip};
use crate::metrics::{Metrics, Route};
use crate::net::{ConnInfo, Handler};
use crate::reserved::{self, Reserved};
use crate::session::identity::{Ask, Carried, Carrier, Identity, Outcome, Resolver};
use crate::session::limit::CreationLimiter;
use crate::session::store::SessionStore;
use crate::session::ticket::Tickets;
use crate::session::{Clock, EndReason, SessionError, State, Touch};

/// Everything the request path needs, shared by all connections.
pub struct Gateway {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) resolver: Resolver,
    pub(crate) clock: Clock,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstream: Upstream,
    pub(crate) reserved: Reserved,
    pub(crate) origins: OriginPolicy,
    pub(crate) tunnels: Arc<Tunnels>,
    hooks: Arc<Hooks>,
    /// `browser.inject`: put the agent into HTML pages.
    inject: bool,
    session_header: HeaderName,
    trust_forwarded: bool,
    activity: Activity,
    /// `session.require`, lowercased to match normalized paths.
    require: Vec<String>,
}

/// Errors that stop the gateway from being built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Upstream(#[from] forward::BadUpstreamUrl),
    #[error("upstream.header {0:?} is not a valid header name")]
    SessionHeader(String),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Client addresses tracked by the session-creation limit at once.
const LIMITER_CAPACITY: usize = 65_536;

impl Gateway {
    pub fn new(
        config: &Config,
        store: Arc<dyn SessionStore>,
        clock: Clock,
        metrics: Arc<Metrics>,
        hooks: Arc<Hooks>,
    ) -> Result<Self, GatewayError> {
        let secure = config.listen.tls.is_some();
        let session_header = HeaderName::try_from(config.upstream.header.as_str())
            .map_err(|_| GatewayError::SessionHeader(config.upstream.header.clone()))?;
        // Remembered redeemed tickets: a few per live session is far more than tabs
        // navigate within a ticket's lifetime.
        let tickets = Arc::new(Tickets::new(
            config.session.max_sessions.saturating_mul(4).max(65_536),
        )?);
        Ok(Gateway {
            resolver: Resolver::new(
                Arc::clone(&store),
                config.session.mode,
                secure,
                tickets,
                CreationLimiter::new(config.session.new_per_client, LIMITER_CAPACITY),
            ),
            inject: config.browser.inject,
            hooks,
            reserved: Reserved::new(config),
            origins: OriginPolicy::new(config.listen.origins.clone()),
            tunnels: Arc::new(Tunnels::new()),
            upstream: Upstream::new(&config.upstream)?,
            store,
            clock,
            metrics,
            session_header,
            trust_forwarded: config.upstream.trust_forwarded,
            activity: config.session.activity,
            require: config
                .session
                .require
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
        })
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> (Route, Response<ProxyBody>) {
        if let Some(mut refusal) = refuse(&request) {
            finish_headers(refusal.headers_mut(), None, &[], None);
            return (Route::Proxy, refusal);
        }
        if let Some(endpoint) =
            reserved::path::reserved_endpoint(request.uri().path(), self.reserved.prefix())
        {
            let response = reserved::handle(self, &endpoint, request, conn).await;
            return (Route::Reserved, response);
        }
        self.forward(request, conn).await
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> (Route, Response<ProxyBody>) {
        let (mut parts, body) = request.into_parts();
        let upgrade = Upgrade::requested(&mut parts);
        if upgrade.is_some() && !self.origin_allowed(&parts, conn) {
            let refusal = body::text(
                StatusCode::FORBIDDEN,
                "403 Forbidden: cross-origin upgrade refused",
            );
            return (Route::Proxy, Exchange::default().finish(refusal));
        }

        // Stage 3: identify (or answer with the bootstrap page).
        let exchange = match self.identify(&parts, conn) {
            Ok(Outcome::Forward(identity)) => self.record(&parts, identity),
            Ok(Outcome::Bootstrap { browser }) => {
                return (Route::Bootstrap, bootstrap::page(self, &parts, &browser))
            }
            Ok(Outcome::Loop) => return (Route::Bootstrap, bootstrap::loop_page(self)),
            Err(error) => return (Route::Proxy, session_error_response(&error)),
        };
        (
            Route::Proxy,
            self.pass(parts, body, conn, upgrade, exchange).await,
        )
    }

    /// Stages 4 and 5 for an identified request: forward it and shape the response.
    async fn pass(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        conn: ConnInfo,
        upgrade: Option<Upgrade>,
        exchange: Exchange,
    ) -> Response<ProxyBody> {
        if exchange.identity.session.is_none() && self.requires_session(parts.uri.path()) {
            let refusal = body::text(
                StatusCode::UNAUTHORIZED,
                "401 Unauthorized: this page needs a session",
            );
            return exchange.finish(refusal);
        }

        // Stage 4: forward.
        let method = parts.method.clone();
        if self.inject {
            inject::prefer_identity(&parts.method, &mut parts.headers);
        }
        let mut exchange = exchange;
        exchange.request_id = Some(match parts.extensions.remove::<RequestId>() {
            Some(RequestId(id)) => id,
            None => headers::request_id(&parts.headers),
        });
        if self
            .prepare_upstream(&mut parts, conn, &exchange, upgrade.as_ref())
            .is_err()
        {
            let refusal = body::text(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: unusable request target",
            );
            return exchange.finish(refusal);
        }
        if let Some(session) = &exchange.identity.session {
            // The backend hears of a session (start hook) before its first request.
            self.hooks.ready(session.handle()).await;
        }
        let upstream_request = Request::from_parts(parts, scrub_trailers(body));
        let mut response = match self.upstream.send(upstream_request, &self.metrics).await {
            Ok(response) => response,
            Err(failure) => return exchange.finish(failure),
        };

        // Stage 5: respond.
        let switched =
            upgrade.and_then(|upgrade| self.start_tunnel(upgrade, &mut response, &exchange));
        let (mut response_parts, body) = response.into_parts();
        headers::scrub_response(&mut response_parts.headers);
        if let Some(protocol) = &switched {
            restore_upgrade(&mut response_parts.headers, protocol);
        }
        if let Some(session) = exchange.identity.session.clone() {
            exchange.state = Some(self.apply_control_headers(
                &response_parts.headers,
                &session,
                &mut exchange.identity,
            ));
        }
        let body = body.map_err(Into::into).boxed_unsync();
        let body = self.inject_agent(&method, &mut response_parts, body, &exchange);
        headers::strip_session_headers(&mut response_parts.headers);
        if exchange.identity.carrier == Some(Carrier::Header) {
            // fetch/XHR can read a rotated token from the response; pages get it in
            // the agent tag instead.
            if let Some(token) = &exchange.identity.new_token {
                if let Ok(value) = HeaderValue::from_str(&token.encode()) {
                    response_parts.headers.insert(X_SESSION_TOKEN, value);
                }
            }
        }
        exchange.finish(Response::from_parts(response_parts, body))
    }

    /// Stage 5b: the agent tag into HTML pages (streaming; see [`crate::inject`]).
    fn inject_agent(
        &self,
        method: &Method,
        parts: &mut http::response::Parts,
        body: ProxyBody,
        exchange: &Exchange,
    ) -> ProxyBody {
        if !self.inject {
            return body;
        }
        let plan = match inject::plan(method, parts) {
            Ok(plan) => plan,
            Err(skip) => {
                // Pages that should have had the agent and could not; images, JSON,
                // HEAD and 304s are not pages and not counted.
                if matches!(
                    skip,
                    Skip::OptOut | Skip::Encoding | Skip::Charset | Skip::Csp
                ) {
                    self.metrics
                        .injections
                        .with_label_values(&["skipped"])
                        .inc();
                    tracing::debug!(reason = skip.label(), "page not injected");
                }
                return body;
            }
        };
        let tag = self.agent_tag(exchange);
        let metrics = Arc::clone(&self.metrics);
        let plan = plan.on_outcome(move |outcome| match outcome {
            InjectOutcome::Injected => metrics.injection(true),
            InjectOutcome::Abandoned => {}
            other => {
                tracing::debug!(reason = other.label(), "page not injected");
                metrics.injection(false);
            }
        });
        inject::inject(plan, parts, body, &tag)
    }

    /// The agent's `<script>` tag for a page of this exchange.
    fn agent_tag(&self, exchange: &Exchange) -> inject::Tag {
        let mut data = vec![
            ("prefix", self.reserved.display_prefix().to_string()),
            ("mode", self.resolver.mode().as_str().to_string()),
        ];
        if let (Some(session), Some(state)) = (&exchange.identity.session, exchange.state) {
            if state != State::Ended {
                data.push(("handle", session.handle().to_string()));
                data.push(("state", state.as_str().to_string()));
                data.push((
                    "heartbeat",
                    self.reserved.heartbeat_ms(session, self).to_string(),
                ));
                if let Some(token) = &exchange.identity.new_token {
                    data.push(("token", token.encode()));
                }
            }
        }
        inject::Tag {
            src: format!(
                "{}/agent.js?v={}",
                self.reserved.display_prefix(),
                crate::agent::version()
            ),
            data,
        }
    }

    pub(crate) fn trust_forwarded(&self) -> bool {
        self.trust_forwarded
    }

    fn origin_allowed(&self, parts: &http::request::Parts, conn: ConnInfo) -> bool {
        let authority = parts.uri.authority().map(|a| a.as_str());
        self.origins.allows(&parts.headers, conn.scheme, authority)
    }

    /// Stage 3: which session the request belongs to (DESIGN.md §3).
    fn identify(
        &self,
        parts: &http::request::Parts,
        conn: ConnInfo,
    ) -> Result<Outcome, SessionError> {
        let page_load = (parts.method == Method::GET || parts.method == Method::HEAD)
            && is_navigation(&parts.headers);
        let ask = Ask {
            carried: Carried {
                headers: &parts.headers,
                query: parts.uri.query(),
                speculative: is_speculative(&parts.headers),
            },
            navigation: page_load,
            client: headers::client_address(&parts.headers, conn.peer.ip(), self.trust_forwarded),
        };
        self.resolver.identify(&ask, self.clock.now())
    }

    /// Records the request on its session (signal or activity).
    fn record(&self, parts: &http::request::Parts, mut identity: Identity) -> Exchange {
        let mut state = None;
        if let Some(session) = &identity.session {
            let touch = touch_kind(self.activity, &parts.method, &parts.headers);
            match self.store.touch(session, touch, self.clock.now()) {
                State::Ended => identity.session = None,
                live => state = Some(live),
            }
        }
        Exchange {
            identity,
            state,
            request_id: None,
        }
    }

    /// Turns the client's request head into the upstream's: strip everything the
    /// client may not decide, then add the gateway's own headers.
    fn prepare_upstream(
        &self,
        parts: &mut http::request::Parts,
        conn: ConnInfo,
        exchange: &Exchange,
        upgrade: Option<&Upgrade>,
    ) -> Result<(), http::Error> {
        // Taken before scrubbing: `Connection: host` would remove it.
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::scrub_request(&mut parts.headers);
        headers::remove_cookies(&mut parts.headers, &self.resolver.cookies.both());
        headers::set_forwarded(
            &mut parts.headers,
            conn.peer.ip(),
            conn.scheme,
            host.as_ref(),
            self.trust_forwarded,
        );
        if let Some(id) = &exchange.request_id {
            parts.headers.insert(X_REQUEST_ID, id.clone());
        }
        if let Some(upgrade) = upgrade {
            restore_upgrade(&mut parts.headers, &upgrade.protocol);
        }
        let host = host.or_else(|| HeaderValue::from_str(self.upstream.authority().as_str()).ok());
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        if let Some(session) = &exchange.identity.session {
            parts
                .headers
                .insert(self.session_header.clone(), handle_value(session.handle()));
            if let Some(parent) = session.parent_once() {
                parts.headers.insert(X_SESSION_PARENT, handle_value(parent));
            }
        }
        let query = parts.uri.query().and_then(query::strip_proxy_params);
        parts.uri = self.upstream.uri_for(parts.uri.path(), query.as_deref())?;
        // The upstream pool speaks HTTP/1.1 whatever the client spoke (h2 included).
        parts.version = Version::HTTP_11;
        Ok(())
    }

    /// On `101 Switching Protocols`, joins both sides of the upgrade in a tunnel and
    /// returns the protocol to announce to the client.
    fn start_tunnel(
        &self,
        upgrade: Upgrade,
        response: &mut Response<Incoming>,
        exchange: &Exchange,
    ) -> Option<HeaderValue> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        let upstream_side = hyper::upgrade::on(response);
        let session = exchange
            .identity
            .session
            .clone()
            .map(|s| (s, Arc::clone(&self.store), self.clock));
        self.tunnels.spawn(upgrade.client, upstream_side, session);
        Some(upgrade.protocol)
    }

    fn requires_session(&self, path: &str) -> bool {
        if self.require.is_empty() {
            return false;
        }
        let normalized = reserved::path::normalize(path);
        self.require
            .iter()
            .any(|prefix| normalized.starts_with(prefix.as_str()))
    }

    /// `X-Session-End`, `X-Session-Timeout` and `X-Session-Rotate` from the upstream
    /// (DESIGN.md §5).
    fn apply_control_headers(
        &self,
        headers: &HeaderMap,
        session: &crate::session::Session,
        identity: &mut Identity,
    ) -> State {
        let now = self.clock.now();
        if headers.contains_key(X_SESSION_END) {
            self.store.end(session, EndReason::Upstream, now);
            if let Some(expire) = self.resolver.expire_session_cookie() {
                identity.set_cookies.push(expire);
            }
            return State::Ended;
        }
        if let Some(seconds) = headers
            .get(X_SESSION_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            self.store
                .set_timeout(session, seconds.saturating_mul(1000), now);
        }
        if headers.contains_key(X_SESSION_ROTATE) {
            if let Err(error) = self.resolver.rotate(session, identity, now) {
                tracing::error!(%error, session = %session.handle(), "cannot rotate the token");
            }
        }
        session.state_at(self.store.rules(), now)
    }
}

impl Handler for Gateway {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let started = tokio::time::Instant::now();
        let mut request = request;
        // Taken (or made) first, so the log line of every answer carries it. The
        // path is logged without its query, which may hold a ticket.
        let request_id = RequestId(headers::request_id(request.headers()));
        let span = tracing::info_span!(
            "request",
            id = request_id.0.to_str().unwrap_or(""),
            method = %request.method(),
            path = request.uri().path(),
        );
        request.extensions_mut().insert(request_id);
        let (route, response) = self.route(request, conn).instrument(span.clone()).await;
        self.metrics.request(route, response.status());
        span.in_scope(|| {
            tracing::info!(
                route = %route.as_str(),
                status = response.status().as_u16(),
                // Whole microseconds in milliseconds: three decimals, still a number.
                elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0,
                "answered"
            )
        });
        response
    }
}

/// The request's `X-Request-Id` (kept or made), carried in its extensions.
#[derive(Debug, Clone)]
struct RequestId(HeaderValue);

/// What the gateway knows about one proxied request as it moves through the stages.
#[derive(Debug, Default)]
struct Exchange {
    identity: Identity,
    /// The session's state after this request (`None`: no session).
    state: Option<State>,
    request_id: Option<HeaderValue>,
}

impl Exchange {
    /// Adds the gateway's response headers to any answer, proxied or its own.
    fn finish(&self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        finish_headers(
            response.headers_mut(),
            self.state,
            &self.identity.set_cookies,
            self.request_id.as_ref(),
        );
        response
    }
}

/// An HTTP/1.1 `Upgrade` request (WebSocket and friends) in flight.
struct Upgrade {
    protocol: HeaderValue,
    /// The client side of the connection, handed over once we answer 101.
    client: hyper::upgrade::OnUpgrade,
}

impl Upgrade {
    /// Takes the upgrade out of a request that asks for one (`Connection: upgrade`).
    fn requested(parts: &mut http::request::Parts) -> Option<Upgrade> {
        let protocol = parts.headers.get(UPGRADE)?.clone();
        let asks = parts.headers.get_all(CONNECTION).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
            })
        });
        if !asks {
            return None;
        }
        let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        Some(Upgrade { protocol, client })
    }
}

/// Puts back the two hop-by-hop headers of an upgrade that scrubbing removed.
fn restore_upgrade(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(UPGRADE, protocol.clone());
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Stage 1: requests answered before anything else looks at them.
fn refuse(request: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    if request.method() == Method::TRACE || request.method() == Method::CONNECT {
        let mut response = body::text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed");
        response.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Some(response);
    }
    None
}

/// Whether a request counts as user activity or only as a sign of life (DESIGN.md
/// §4): with `activity = "request"` every request does; with `"interaction"`,
/// navigations and writes do, background reads (polling, heartbeats) do not.
fn touch_kind(activity: Activity, method: &Method, headers: &HeaderMap) -> Touch {
    let is_activity = activity == Activity::Request
        || !(method == Method::GET || method == Method::HEAD)
        || is_navigation(headers);
    if is_activity {
        Touch::Activity
    } else {
        Touch::Signal
    }
}

/// Prefetch and prerender requests never mint or consume anything.
fn is_speculative(headers: &HeaderMap) -> bool {
    ["sec-purpose", "purpose"].iter().any(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("prefetch") || v.contains("prerender")
            })
    })
}

/// A top-level navigation (link, form, address bar) rather than a background request.
fn is_navigation(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-mode") {
        Some(mode) => mode.as_bytes() == b"navigate",
        // Older clients: a request that prefers HTML is a page load.
        None => headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html")),
    }
}

/// Strips identity headers from request trailers too (a chunked body can carry an
/// `X-Session` trailer after the headers were checked).
fn scrub_trailers(incoming: Incoming) -> ProxyBody {
    incoming
        .map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                headers::scrub_request(&mut trailers);
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        })
        .map_err(Into::into)
        .boxed_unsync()
}

fn handle_value(handle: crate::session::Handle) -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(handle.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static(""))
}

/// Adds the gateway's response headers: the session state, cookies, request id.
pub(crate) fn finish_headers(
    headers: &mut HeaderMap,
    state: Option<State>,
    set_cookies: &[HeaderValue],
    request_id: Option<&HeaderValue>,
) {
    let state = state.map_or("none", State::as_str);
    headers.insert(X_SESSION_STATE, HeaderValue::from_static(state));
    for cookie in set_cookies {
        headers.append(SET_COOKIE, cookie.clone());
    }
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID, id.clone());
    }
}

pub(crate) fn session_error_response(error: &SessionError) -> Response<ProxyBody> {
    let mut response = match error {
        SessionError::Full(_) => body::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: too many sessions; try again later",
        ),
        SessionError::Limited(retry_ms) => {
            let mut response = body::text(
                StatusCode::TOO_MANY_REQUESTS,
                "429 Too Many Requests: too many new sessions from this address",
            );
            let seconds = retry_ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
            response
        }
        SessionError::Entropy(_) => {
            tracing::error!(%error, "cannot mint a session");
            body::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error",
            )
        }
    };
    finish_headers(response.headers_mut(), None, &[], None);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn what_counts_as_activity() {
        let navigate = headers(&[("sec-fetch-mode", "navigate")]);
        let fetch = headers(&[("sec-fetch-mode", "cors"), ("accept", "text/html")]);
        let old_browser_page = headers(&[("accept", "text/html,*/*")]);
        let poll = headers(&[("accept", "application/json")]);
        let interaction = Activity::Interaction;
        assert_eq!(
            touch_kind(interaction, &Method::GET, &navigate),
            Touch::Activity
        );
        assert_eq!(
            touch_kind(interaction, &Method::GET, &old_browser_page),
            Touch::Activity
        );
        assert_eq!(
            touch_kind(interaction, &Method::POST, &poll),
            Touch::Activity
        );
        assert_eq!(
            touch_kind(interaction, &Method::DELETE, &fetch),
            Touch::Activity
        );
        assert_eq!(touch_kind(interaction, &Method::GET, &fetch), Touch::Signal);
        assert_eq!(touch_kind(interaction, &Method::GET, &poll), Touch::Signal);
        assert_eq!(touch_kind(interaction, &Method::HEAD, &poll), Touch::Signal);
        for method in [Method::GET, Method::HEAD, Method::POST] {
            for h in [&navigate, &fetch, &poll] {
                assert_eq!(touch_kind(Activity::Request, &method, h), Touch::Activity);
            }
        }
    }

    #[test]
    fn speculative_loads_are_recognised() {
        assert!(is_speculative(&headers(&[("sec-purpose", "prefetch")])));
        assert!(is_speculative(&headers(&[(
            "sec-purpose",
            "prefetch;prerender"
        )])));
        assert!(is_speculative(&headers(&[("purpose", "prefetch")])));
        assert!(!is_speculative(&headers(&[("sec-fetch-mode", "navigate")])));
    }
}
