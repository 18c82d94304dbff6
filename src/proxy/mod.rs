//! The request path, the top of the gateway: a chain of stages sharing one
//! per-request [`Context`]:
//!
//! 1. **refuse** what no legacy backend should see (TRACE, CONNECT, an HTTP/1.1
//!    request without exactly one `Host`; a request that sends both `Content-Length`
//!    and `Transfer-Encoding` is framed by the latter alone and its connection closed
//!    by hyper, so nothing can be smuggled behind it), and settle the request's host
//!    (an absolute-form target's authority wins over `Host`);
//! 2. **reserved**: anything under `browser.prefix` is answered by the gateway
//!    ([`crate::reserved`]) and never forwarded;
//! 3. **identify**: find or mint the request's session ([`crate::session::identity`])
//!    and record the signal or activity — or answer a `tab`-mode page load without
//!    identity with the bootstrap page;
//! 4. **forward**: scrub the client's headers (strip-then-inject), add the gateway's
//!    own, wait for the session's start hook, and stream the request upstream
//!    ([`request`], [`forward`]); only a complete WebSocket handshake stays an upgrade;
//! 5. **respond**: refuse a response whose framing is ambiguous or a `101` that
//!    completes no WebSocket handshake (502, the upstream connection is not reused),
//!    consume the upstream's control headers, drop any `Set-Cookie` for the gateway's
//!    own cookies, put the agent into HTML ([`crate::inject`]), and stream the body
//!    back ([`respond`]).
//!
//! Every answer, whatever its route, is finished by [`Context::finish`] in
//! [`Gateway::handle`](crate::net::Handler::handle), which also counts it and logs it.

pub mod forward;
mod jar;
mod request;
mod respond;
pub mod tunnel;

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection};
use tracing::Instrument;

use self::forward::Upstream;
use self::request::Upgrade;
use self::tunnel::Tunnels;
use crate::config::{Activity, Config};
use crate::context::{self, Context};
use crate::hooks::Hooks;
use crate::metrics::{Metrics, Route};
use crate::net::{ConnInfo, Handler};
use crate::reserved::Reserved;
use crate::session::identity::{Ask, Carried, Carrier, Outcome, Resolver};
use crate::session::jar::Jarred;
use crate::session::limit::CreationLimiter;
use crate::session::store::SessionStore;
use crate::session::ticket::Tickets;
use crate::session::token::Secrets;
use crate::session::{Clock, SessionError, State, Touch};
use crate::web::body::{self, ProxyBody};
use crate::web::forwarded::Trust;
use crate::web::headers::{self as header_rules, Scrubber, X_SESSION_TOKEN};
use crate::web::origin::OriginPolicy;
use crate::web::refusal::{Refusal, Refused, UpstreamError};

/// Everything the request path needs, shared by all connections.
pub struct Gateway {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) clock: Clock,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstream: Upstream,
    pub(crate) reserved: Reserved,
    pub(crate) tunnels: Arc<Tunnels>,
    origins: OriginPolicy,
    hooks: Arc<Hooks>,
    /// `browser.inject`: put the agent into HTML pages.
    inject: bool,
    /// The agent's language and text overrides, as its tag carries them
    /// (`data-lang`, `data-text`); `None` for the defaults.
    agent_language: Option<String>,
    agent_text: Option<String>,
    session_header: HeaderName,
    /// Strips the `X-Session*` namespace and every spelling of `session_header`.
    scrubber: Scrubber,
    /// Whose forwarded headers are believed, and the public scheme.
    trust: Trust,
    activity: Activity,
    /// `session.require`, lowercased to match normalized paths.
    require: Vec<String>,
    /// `upstream.cookie_jar`: the upstream cookies sessions keep on the gateway.
    jarred: Jarred,
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
    #[error("listen.trusted_proxies: {0}")]
    TrustedProxies(#[from] crate::config::CidrError),
}

/// Client addresses tracked by the session-creation and challenge limits at once
/// (each; least recently seen out).
const LIMITER_CAPACITY: usize = 65_536;

/// Browsers whose redeemed tickets and challenges are remembered at once (see
/// `session::ticket`; least recently redeeming out).
const SPENT_BROWSERS: usize = 32_768;

/// Bootstrap pages (challenges) per minute per client address, as a multiple of
/// `session.new_per_client` (0 = no limit, like it).
const CHALLENGES_PER_CREATION: u32 = 4;

impl Gateway {
    pub fn new(
        config: &Config,
        store: Arc<dyn SessionStore>,
        clock: Clock,
        metrics: Arc<Metrics>,
        hooks: Arc<Hooks>,
        secrets: &Secrets,
    ) -> Result<Self, GatewayError> {
        let session_header = HeaderName::try_from(config.upstream.header.as_str())
            .map_err(|_| GatewayError::SessionHeader(config.upstream.header.clone()))?;
        // Under the gateway's (possibly restored) ticket key: tickets and challenges
        // issued before a restart still verify after it.
        let tickets = Arc::new(
            Tickets::with_secret(SPENT_BROWSERS, secrets.tickets()).with_ledger(store.ledger()),
        );
        let resolver = Arc::new(
            Resolver::new(
                Arc::clone(&store),
                config.session.mode,
                tickets,
                CreationLimiter::new(config.session.new_per_client, LIMITER_CAPACITY),
                CreationLimiter::new(
                    config
                        .session
                        .new_per_client
                        .saturating_mul(CHALLENGES_PER_CREATION),
                    LIMITER_CAPACITY,
                ),
            )
            .with_cookie_lifetime(config.session.cookie_lifetime.get()),
        );
        Ok(Gateway {
            reserved: Reserved::new(
                config,
                Arc::clone(&store),
                Arc::clone(&resolver),
                clock,
                Arc::clone(&metrics),
            ),
            resolver,
            inject: config.browser.inject,
            agent_language: Some(config.browser.language.trim())
                .filter(|language| *language != "auto")
                .map(str::to_owned),
            agent_text: (!config.browser.text.is_empty())
                .then(|| serde_json::to_string(&config.browser.text).ok())
                .flatten(),
            hooks,
            origins: OriginPolicy::new(config.listen.origins.clone()),
            tunnels: Arc::new(Tunnels::new(config, &metrics)),
            upstream: Upstream::new(config)?,
            store,
            clock,
            metrics,
            scrubber: Scrubber::new(&session_header),
            session_header,
            trust: Trust::from_config(config)?,
            activity: config.session.activity,
            require: config
                .session
                .require
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            jarred: Jarred::from_config(&config.upstream.cookie_jar),
        })
    }

    async fn route(
        &self,
        mut request: Request<Incoming>,
        cx: &mut Context,
    ) -> (Route, Response<ProxyBody>) {
        if let Err(refusal) = refuse(&mut request) {
            return (Route::Proxy, refusal.into_response());
        }
        if let Some(endpoint) = self.reserved.endpoint(request.uri().path()) {
            let response = self.reserved.handle(cx, &endpoint, request).await;
            return (Route::Reserved, response);
        }
        self.forward(request, cx).await
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        cx: &mut Context,
    ) -> (Route, Response<ProxyBody>) {
        let (mut parts, body) = request.into_parts();
        let upgrade = Upgrade::requested(&mut parts);
        if upgrade.is_some() && !self.origin_allowed(&parts, cx) {
            return (Route::Proxy, Refusal::CrossOriginUpgrade.into_response());
        }

        // Stage 3: identify (or answer with the bootstrap page).
        match self.identify(&parts, cx) {
            Ok(Outcome::Forward(identity)) => {
                cx.identity = identity;
                self.record(&parts, cx);
            }
            Ok(Outcome::Bootstrap { browser }) => {
                let page = self.reserved.bootstrap_page(&parts.method, &browser);
                return (Route::Bootstrap, page);
            }
            Ok(Outcome::Loop) => return (Route::Bootstrap, self.reserved.loop_page(&parts.method)),
            Ok(Outcome::Ended) => {
                // A write from a tab whose session is over: never into a fresh one.
                cx.state = Some(State::Ended);
                let restart = restart_target(&parts);
                let page = self
                    .reserved
                    .ended_page(&parts.method, cx.fetch.navigation, &restart);
                return (Route::Proxy, page);
            }
            Err(error) => return (Route::Proxy, context::refuse_session(&error)),
        }
        if cx.identity.session.is_none() && self.requires_session(parts.uri.path()) {
            return (Route::Proxy, Refusal::NeedsSession.into_response());
        }
        (Route::Proxy, self.pass(parts, body, upgrade, cx).await)
    }

    /// Stages 4 and 5 for an identified request: forward it and shape the response.
    async fn pass(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        upgrade: Option<Upgrade>,
        cx: &mut Context,
    ) -> Response<ProxyBody> {
        // Stage 4: forward.
        let method = parts.method.clone();
        if self.inject {
            crate::inject::prefer_identity(&parts.method, cx.fetch, &mut parts.headers);
        }
        if self
            .prepare_upstream(&mut parts, cx, upgrade.as_ref())
            .is_err()
        {
            return Refusal::BadTarget.into_response();
        }
        let jar_site = self.jar_site(&parts, cx);
        if let Some(site) = &jar_site {
            self.jar_into_request(&mut parts.headers, site, cx);
        }
        if let Some(session) = &cx.identity.session {
            // The backend hears of a session (start hook) before its first request.
            self.hooks.ready(session.handle()).await;
        }
        let body = request::scrub_trailers(body, self.scrubber.clone());
        let mut upstream_request = Request::from_parts(parts, body);
        let connection = capture_connection(&mut upstream_request);
        let (mut response, slot) = match self.upstream.send(upstream_request, &self.metrics).await {
            Ok(sent) => sent,
            Err(failure) => return failure,
        };

        // Stage 5: respond.
        let switched = if header_rules::ambiguous_framing(response.headers()) {
            Err(Refusal::Upstream(UpstreamError::Protocol))
        } else {
            self.switch_protocols(upgrade, &mut response, cx)
        };
        let switched = match switched {
            Ok(switched) => switched,
            Err(refusal) => return self.refuse_upstream(refusal, &response, &connection),
        };
        let mut response = self.respond(&method, response, switched, jar_site.as_ref(), cx);
        if cx.identity.carrier == Some(Carrier::Header) {
            // fetch/XHR can read a rotated token from the response; pages get it in
            // the agent tag instead.
            if let Some(token) = &cx.identity.new_token {
                if let Ok(value) = HeaderValue::from_str(&token.encode()) {
                    response.headers_mut().insert(X_SESSION_TOKEN, value);
                }
            }
        }
        // The upstream slot is given back when the body is done.
        slot.hold_response(response)
    }

    /// Answers 502 instead of an upstream response that must not reach the client,
    /// and makes sure its connection is never used again: what the upstream sends
    /// after a mis-framed message or a bogus `101` is no response to anything.
    fn refuse_upstream(
        &self,
        refusal: Refusal,
        response: &Response<Incoming>,
        connection: &CaptureConnection,
    ) -> Response<ProxyBody> {
        if let Some(connected) = connection.connection_metadata().as_ref() {
            connected.poison();
        }
        self.metrics.upstream_error(UpstreamError::Protocol);
        tracing::warn!(
            status = response.status().as_u16(),
            "upstream response refused: ambiguous framing, or a 101 that completes no WebSocket handshake"
        );
        refusal.into_response()
    }

    fn origin_allowed(&self, parts: &http::request::Parts, cx: &Context) -> bool {
        let authority = parts.uri.authority().map(|a| a.as_str());
        self.origins
            .allows(&parts.headers, cx.scheme.as_str(), authority)
    }

    /// Stage 3: which session the request belongs to (DESIGN.md §3).
    fn identify(
        &self,
        parts: &http::request::Parts,
        cx: &Context,
    ) -> Result<Outcome, SessionError> {
        let ask = Ask {
            carried: Carried {
                headers: &parts.headers,
                query: parts.uri.query(),
                speculative: cx.fetch.speculative,
                scheme: cx.scheme,
            },
            navigation: cx.fetch.page_load,
            write: !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS),
            client: cx.client,
        };
        self.resolver.identify(&ask, self.clock.now())
    }

    /// Records the request on its session (signal or activity).
    fn record(&self, parts: &http::request::Parts, cx: &mut Context) {
        if let Some(session) = &cx.identity.session {
            let touch = touch_kind(self.activity, &parts.method, cx.fetch.navigation);
            match self.store.touch(session, touch, self.clock.now()) {
                State::Ended => cx.identity.session = None,
                live => cx.state = Some(live),
            }
        }
    }

    fn requires_session(&self, path: &str) -> bool {
        if self.require.is_empty() {
            return false;
        }
        let normalized = crate::web::path::normalize(path);
        self.require
            .iter()
            .any(|prefix| normalized.starts_with(prefix.as_str()))
    }
}

impl Handler for Gateway {
    fn panicked(&self) {
        self.metrics.panicked();
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let started = tokio::time::Instant::now();
        // Made first, so the log line of every answer carries the request id. The
        // path is logged without its query, which may hold a ticket.
        let mut cx = Context::new(&request, conn, &self.trust);
        let span = tracing::info_span!(
            "request",
            id = cx.id.to_str().unwrap_or(""),
            method = %request.method(),
            path = request.uri().path(),
        );
        let (route, response) = self.route(request, &mut cx).instrument(span.clone()).await;
        let mut response = cx.finish(response);
        if route != Route::Proxy || response.extensions().get::<Refused>().is_some() {
            body::mark_own(response.headers_mut());
        }
        if let Some(Refused(reason)) = response.extensions().get::<Refused>() {
            self.metrics.refused(reason);
        }
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

/// Where "Start again" on the ended page leads: the page the request came from when
/// the `Referer` is of this origin (without `__sg*` parameters), else `/`. Only a
/// path is ever returned, never one that a browser would read as another host.
fn restart_target(parts: &http::request::Parts) -> String {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let referer = parts
        .headers
        .get(http::header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<http::Uri>().ok());
    let (Some(host), Some(referer)) = (host, referer) else {
        return "/".into();
    };
    let same_origin = referer
        .authority()
        .is_some_and(|a| a.as_str().eq_ignore_ascii_case(&host));
    let path = referer.path();
    if !same_origin || !path.starts_with('/') || path.starts_with("//") || path.starts_with("/\\") {
        return "/".into();
    }
    match referer
        .query()
        .and_then(crate::web::query::strip_proxy_params)
    {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    }
}

/// Stage 1: requests answered before anything else looks at them, and the host of
/// the others settled (see [`request::settle_host`]).
fn refuse(request: &mut Request<Incoming>) -> Result<(), Refusal> {
    if request.method() == Method::TRACE || request.method() == Method::CONNECT {
        return Err(Refusal::Method);
    }
    request::settle_host(request)
}

/// Whether a request counts as user activity or only as a sign of life (DESIGN.md
/// §4): with `activity = "request"` every request does; with `"interaction"`,
/// navigations and writes do, background reads (polling, heartbeats) do not.
fn touch_kind(activity: Activity, method: &Method, navigation: bool) -> Touch {
    let is_activity = activity == Activity::Request
        || !(method == Method::GET || method == Method::HEAD)
        || navigation;
    if is_activity {
        Touch::Activity
    } else {
        Touch::Signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::fetch::is_navigation;
    use http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn start_again_goes_back_to_a_page_of_this_origin_only() {
        let target = |referer: Option<&'static str>| {
            let mut request = Request::post("/submit").header("host", "app.example:8080");
            if let Some(referer) = referer {
                request = request.header("referer", referer);
            }
            restart_target(&request.body(()).unwrap().into_parts().0)
        };
        assert_eq!(target(None), "/");
        assert_eq!(target(Some("http://app.example:8080/form")), "/form");
        assert_eq!(
            target(Some("http://app.example:8080/form?a=1&__sg_t=x&b=2")),
            "/form?a=1&b=2"
        );
        assert_eq!(target(Some("http://app.example:8080/f?__sg_t=x")), "/f");
        for elsewhere in [
            "http://evil.example/form",
            "http://app.example:8080//evil.example/x",
            "http://app.example:8080/\\evil.example/x",
            "not a url",
        ] {
            assert_eq!(target(Some(elsewhere)), "/", "{elsewhere}");
        }
    }

    #[test]
    fn what_counts_as_activity() {
        let touch_kind = |activity, method: &Method, h: &HeaderMap| {
            touch_kind(activity, method, is_navigation(h))
        };
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
}
