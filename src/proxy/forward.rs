//! The upstream side: a pooled HTTP/1.1 client with every timeout set, a cap on the
//! requests in flight, and the mapping of failures to gateway responses.
//!
//! hyper-util's client has no connect or response timeout by default; a proxy without
//! them hangs with its upstream. Connect failures become 502, timeouts 504, each with a
//! short body and a metric; the session is never touched by an upstream failure.
//!
//! At most `upstream.max_in_flight` requests are in flight: one HTTP/2 connection
//! can carry many streams, and many connections many more, but the backend behind
//! is usually an old app with a small worker pool. A request holds its [`Slot`]
//! until its response body is done (or it fails); over the cap it waits up to
//! `upstream.connect_timeout` for one (counted in `sessiongate_upstream_waiting`),
//! then gets 503 with `Retry-After`.
//!
//! The request body is sent under `listen.body_timeout` ([`Deadline`]), and the
//! response timeout counts from the moment the body has been sent, not while the
//! client is still uploading. It also bounds each pause of the response body while
//! the gateway waits for it ([`BodyStalled`]): an upstream that stops mid-body would
//! otherwise hold the client (an HTTP/2 stream for ever) and its slot. A body the
//! client stalls or breaks off is the client's failure
//! (`sessiongate_client_errors_total`): 408 (or 400) and the connection closed, never
//! an upstream error.
//!
//! Retries ([`Replay`]): a request hyper never wrote (the pooled connection was found
//! closed as it was checked out) is sent again by hyper-util itself, whatever its
//! method: nothing reached the upstream. A request that was written and whose
//! connection then closed or reset before a complete response head is sent once
//! more, on a new connection, only if it is idempotent (GET, HEAD, OPTIONS, PUT,
//! DELETE; RFC 9110 §9.2.2) and has no body — the keep-alive race where the upstream
//! closes an idle connection just as a request arrives on it. A POST, or any request
//! with a body, is never sent twice: the client gets 502. The failed attempt is
//! counted like any other.
//!
//! Every failure is sorted into one kind of `sessiongate_upstream_errors_total` by
//! [`classify`], whether it ends the exchange before the response head (the client
//! gets the gateway's 502/504) or breaks off the response body (the client's response
//! is cut off; see [`Slot::hold`]).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::config::Config;
use crate::metrics::{ClientFailure, Metrics, UpstreamError};
use crate::web::body::{BoxError, Deadline, Progress, ProxyBody};
use crate::web::client::{self, error_chain};
use crate::web::refusal::Refusal;

/// Idle upstream connections kept for reuse.
const MAX_IDLE_PER_HOST: usize = 256;

/// Why the upstream URL in the config is unusable.
#[derive(Debug, thiserror::Error)]
#[error("upstream.url {url:?}: {reason}")]
pub struct BadUpstreamUrl {
    url: String,
    reason: String,
}

/// The upstream application and the client that reaches it.
pub struct Upstream {
    client: Client<HttpConnector, ProxyBody>,
    /// Keeps no idle connection: a [`Replay`] always goes on a new one.
    fresh: Client<HttpConnector, ProxyBody>,
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of `upstream.url` without a trailing slash ("" for none).
    base_path: String,
    response_timeout: Duration,
    /// `listen.body_timeout`: the longest wait for the client's next body bytes.
    body_timeout: Duration,
    /// `upstream.max_in_flight` slots.
    slots: Arc<Semaphore>,
    /// How long a request waits for a slot (`upstream.connect_timeout`).
    slot_wait: Duration,
}

impl Upstream {
    /// The upstream of `config`: `[upstream]`, and `listen.body_timeout` for the
    /// request bodies sent to it.
    pub fn new(config: &Config) -> Result<Self, BadUpstreamUrl> {
        let body_timeout = config.listen.body_timeout.get();
        let config = &config.upstream;
        let bad = |reason: &str| BadUpstreamUrl {
            url: config.url.clone(),
            reason: reason.to_string(),
        };
        let uri: Uri = config.url.parse().map_err(|_| bad("not a valid URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(bad("only http:// upstreams are supported"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        let base_path = uri.path().trim_end_matches('/').to_string();

        let client = client::pooled(config.connect_timeout.get(), MAX_IDLE_PER_HOST);
        let fresh = client::pooled(config.connect_timeout.get(), 0);
        Ok(Upstream {
            client,
            fresh,
            scheme,
            authority,
            base_path,
            response_timeout: config.response_timeout.get(),
            body_timeout,
            slots: Arc::new(Semaphore::new(
                config.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            slot_wait: config.connect_timeout.get(),
        })
    }

    /// The authority requests are sent to (used when a client sent no Host).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The upstream URI for a client path and (already filtered) query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut target = String::with_capacity(self.base_path.len() + path.len() + 64);
        target.push_str(&self.base_path);
        target.push_str(if path.is_empty() { "/" } else { path });
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(target)?)
            .build()
    }

    /// Sends `request` once a slot is free and waits for the response head within
    /// `upstream.response_timeout` of the request body having been sent. The
    /// returned [`Slot`] must be held until the response body is done
    /// ([`Slot::hold`]). Failures come back as the gateway's own error response.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        metrics: &Arc<Metrics>,
    ) -> Result<(Response<Incoming>, Slot), Response<ProxyBody>> {
        let permit = self.slot(metrics).await?;
        let replay = Replay::of(&request);
        // Counted where the body fails: the upstream connection's task reads it, and
        // this request's task is gone if the client closed its connection.
        let counted = Arc::clone(metrics);
        let progress = Progress::observed(move |failure| counted.client_error(failure));
        let timeout = self.body_timeout;
        let watched = Arc::clone(&progress);
        let request = request.map(|body| Deadline::new(body, timeout, watched).boxed_unsync());
        let exchange = async {
            let first = self.client.request(request).await;
            match (first, replay) {
                (Err(error), Some(replay)) if replay.worth_it(&error) => {
                    let kind = classify(&error);
                    metrics.upstream_error(kind);
                    tracing::info!(
                        error = %error_chain(&error),
                        kind = %kind.as_str(),
                        "upstream connection closed before answering; sending the request once more on a new connection"
                    );
                    self.fresh.request(replay.request()).await
                }
                (first, _) => first,
            }
        };
        let outcome = tokio::select! {
            sent = exchange => Some(sent),
            () = progress.quiet_for(self.response_timeout) => None,
        };
        match outcome {
            Some(Ok(response)) => {
                metrics.upstream_latency(
                    Instant::now().saturating_duration_since(progress.last_moved()),
                );
                Ok((
                    response,
                    Slot {
                        permit: Some(permit),
                        metrics: Arc::clone(metrics),
                        request_body: progress,
                        stall_after: self.response_timeout,
                    },
                ))
            }
            Some(Err(error)) => {
                if let Some(failure) = progress.failure() {
                    return Err(client_failed(failure));
                }
                let kind = classify(&error);
                metrics.upstream_error(kind);
                tracing::warn!(error = %error_chain(&error), kind = %kind.as_str(), "upstream request failed");
                Err(Refusal::Upstream(kind).into_response())
            }
            None => {
                metrics.upstream_error(UpstreamError::Timeout);
                tracing::warn!(
                    timeout_ms = self.response_timeout.as_millis() as u64,
                    "upstream response timed out"
                );
                Err(Refusal::Upstream(UpstreamError::Timeout).into_response())
            }
        }
    }

    /// One of the `upstream.max_in_flight` slots, waiting up to `connect_timeout`.
    async fn slot(&self, metrics: &Metrics) -> Result<OwnedSemaphorePermit, Response<ProxyBody>> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = Waiting::start(metrics);
        match tokio::time::timeout(self.slot_wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a full one.
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(wait = ?self.slot_wait, "no upstream slot free (upstream.max_in_flight)");
                Err(Refusal::UpstreamBusy.into_response())
            }
        }
    }
}

/// The answer to a request body the client failed (already counted as the
/// client's error, never the upstream's).
fn client_failed(failure: ClientFailure) -> Response<ProxyBody> {
    tracing::info!(
        kind = failure.as_str(),
        "the client failed its request body"
    );
    match failure {
        ClientFailure::TimedOut => Refusal::BodyTimeout.into_response(),
        ClientFailure::Aborted => Refusal::BodyAborted.into_response(),
    }
}

/// Counts a request in `sessiongate_upstream_waiting` while it waits for a slot.
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.upstream_waiting.inc();
        Waiting(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.upstream_waiting.dec();
    }
}

/// What is needed to send a request once more: an idempotent request without a body
/// (and no upgrade), as it was before it was sent.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// The replay of `request`, if it may be sent twice.
    fn of(request: &Request<ProxyBody>) -> Option<Replay> {
        let idempotent = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        (idempotent && !upgrade && request.body().is_end_stream()).then(|| Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    /// Whether `error` is a connection that closed or reset after the request was
    /// written and before a response head: neither a connect failure, nor a timeout,
    /// nor an answer that made no sense. (The replay goes on a client that pools
    /// nothing, so its connection is never reused whatever it answers.)
    fn worth_it(&self, error: &hyper_util::client::legacy::Error) -> bool {
        !error.is_connect() && classify(error) == UpstreamError::Reset
    }

    fn request(self) -> Request<ProxyBody> {
        let mut request = Request::new(crate::web::body::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

/// A request's place among the `upstream.max_in_flight`: given back when the
/// response body it is [held](Slot::hold) by ends, fails or is dropped.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    /// Where a response body the upstream breaks off is counted.
    metrics: Arc<Metrics>,
    /// The request body: when the client failed it, the exchange (and so the
    /// response body) breaks off by the client's fault, already counted as such.
    request_body: Arc<Progress>,
    /// `upstream.response_timeout`: the longest the upstream may keep the response
    /// body waiting.
    stall_after: Duration,
}

impl Slot {
    /// The response body, holding this slot until it is done. A body that fails (the
    /// upstream reset the connection, closed it early, garbled the framing, or sent
    /// nothing of it for `upstream.response_timeout` while it was waited for) is
    /// counted in `sessiongate_upstream_errors_total` by its [kind](classify) —
    /// unless the client failed its request body, which is the client's error — and
    /// its error ends the client's response abnormally.
    pub fn hold(self, body: ProxyBody) -> ProxyBody {
        Holding {
            inner: body,
            slot: self,
            stall: None,
            armed: false,
        }
        .boxed_unsync()
    }

    /// Holds the slot for `response`'s body.
    pub fn hold_response(self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        response.map(|body| self.hold(body))
    }
}

/// The error a response body fails with when the upstream sends nothing of it for
/// `upstream.response_timeout` while the gateway waits for it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the upstream sent nothing of its response body for {0:?}")]
pub struct BodyStalled(pub Duration);

/// A body that gives its [`Slot`] back as soon as it is done, and fails when the
/// upstream stalls it.
struct Holding {
    inner: ProxyBody,
    slot: Slot,
    /// Runs while the body waits for the upstream (not while the client is slow to
    /// read: then the body is not polled and waits for nothing).
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Holding {
    /// Whether the upstream has now kept the body waiting for `response_timeout`
    /// (time the client spent moving its request body, as in an early answer to an
    /// upload, counts as activity). Arms the timer on the first wait of a pause.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.slot.stall_after;
        if !self.armed {
            let Some(deadline) = Instant::now().checked_add(idle) else {
                return false;
            };
            match &mut self.stall {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(sleep) = self.stall.as_mut() else {
            return false;
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            match self.slot.request_body.last_moved().checked_add(idle) {
                Some(resume) if resume > Instant::now() => sleep.as_mut().reset(resume),
                _ => return true,
            }
        }
    }
}

impl Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut poll = Pin::new(&mut self.inner).poll_frame(cx);
        if poll.is_pending() {
            if !self.stalled(cx) {
                return Poll::Pending;
            }
            poll = Poll::Ready(Some(Err(Box::new(BodyStalled(self.slot.stall_after)))));
        }
        self.armed = false;
        match &poll {
            Poll::Ready(None) => self.slot.permit = None,
            Poll::Ready(Some(Err(error))) => {
                // Counted once (the slot is taken when it is given back), and only
                // when the client did not cause it.
                let counted =
                    self.slot.permit.take().is_some() && self.slot.request_body.failure().is_none();
                if counted {
                    let kind = classify(error.as_ref());
                    self.slot.metrics.upstream_error(kind);
                    tracing::warn!(
                        error = %error_chain(error.as_ref()),
                        kind = %kind.as_str(),
                        "upstream response body broke off"
                    );
                }
            }
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sorts an upstream failure into the metric's kinds: the one mapping for a failed
/// exchange (hyper-util's client error) and a broken-off response body (hyper's body
/// error, possibly inside the injection's decoder), by the first cause that tells:
///
/// - a timeout (the connect timeout, a stalled response body included) → `timeout`;
/// - a response that does not parse (status line, head, chunk sizes, content coding)
///   → `protocol`;
/// - a connection closed or reset before the message was complete → `reset`;
/// - otherwise a failure to connect → `connect`, anything else → `reset`.
pub(crate) fn classify(error: &(dyn StdError + 'static)) -> UpstreamError {
    let mut connect = false;
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<BodyStalled>() {
            return UpstreamError::Timeout;
        }
        if let Some(client) = cause.downcast_ref::<hyper_util::client::legacy::Error>() {
            connect |= client.is_connect();
        }
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            if hyper_error.is_timeout() {
                return UpstreamError::Timeout;
            }
            if hyper_error.is_parse() || hyper_error.is_parse_status() {
                return UpstreamError::Protocol;
            }
            if hyper_error.is_incomplete_message() || hyper_error.is_canceled() {
                return UpstreamError::Reset;
            }
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => return UpstreamError::Timeout,
                InvalidData | InvalidInput if !connect => return UpstreamError::Protocol,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof if !connect => {
                    return UpstreamError::Reset
                }
                _ => {}
            }
            // `io::Error::source` skips the error it wraps; look at that one too.
            if let Some(inner) = io.get_ref() {
                source = Some(inner as &(dyn StdError + 'static));
                continue;
            }
        }
        source = cause.source();
    }
    if connect {
        UpstreamError::Connect
    } else {
        UpstreamError::Reset
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// What the integration tests cannot build: io errors wrapped the way the
    /// injection's decoder and the body plumbing wrap them.
    #[test]
    fn io_causes_are_sorted_into_kinds_even_when_wrapped() {
        let kind = |error: io::Error| classify(&error);
        assert_eq!(
            kind(io::ErrorKind::ConnectionReset.into()),
            UpstreamError::Reset
        );
        assert_eq!(
            kind(io::ErrorKind::UnexpectedEof.into()),
            UpstreamError::Reset
        );
        assert_eq!(kind(io::ErrorKind::TimedOut.into()), UpstreamError::Timeout);
        assert_eq!(
            kind(io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")),
            UpstreamError::Protocol
        );
        // `io::Error::other(inner)`: `source()` skips `inner`; the kind is found anyway.
        assert_eq!(
            kind(io::Error::other(io::Error::new(
                io::ErrorKind::InvalidData,
                "corrupt deflate stream"
            ))),
            UpstreamError::Protocol
        );
        assert_eq!(
            kind(io::Error::other(io::Error::from(io::ErrorKind::BrokenPipe))),
            UpstreamError::Reset
        );
        // Nothing that tells: a reset (the exchange broke), never a connect failure.
        assert_eq!(
            kind(io::Error::other("something else")),
            UpstreamError::Reset
        );
    }
}
