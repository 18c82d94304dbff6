//! The upstream side: a pooled HTTP/1.1 client with every timeout set, and the
//! mapping of its failures to gateway responses.
//!
//! hyper-util's client has no connect or response timeout by default; a proxy without
//! them hangs with its upstream. Connect failures become 502, timeouts 504, each with a
//! short body and a metric; the session is never touched by an upstream failure.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::config::UpstreamConfig;
use crate::metrics::{Metrics, UpstreamError};
use crate::web::body::ProxyBody;
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
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of `upstream.url` without a trailing slash ("" for none).
    base_path: String,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, BadUpstreamUrl> {
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
        Ok(Upstream {
            client,
            scheme,
            authority,
            base_path,
            response_timeout: config.response_timeout.get(),
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

    /// Sends `request` and waits for the response head within `upstream.response_timeout`.
    /// Failures come back as the gateway's own error response.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        metrics: &Metrics,
    ) -> Result<Response<Incoming>, Response<ProxyBody>> {
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.response_timeout, self.client.request(request)).await;
        match outcome {
            Ok(Ok(response)) => {
                metrics.upstream_latency(started.elapsed());
                Ok(response)
            }
            Ok(Err(error)) => {
                let kind = classify(&error);
                metrics.upstream_error(kind);
                tracing::warn!(error = %error_chain(&error), kind = %kind.as_str(), "upstream request failed");
                Err(Refusal::Upstream(kind).into_response())
            }
            Err(_elapsed) => {
                metrics.upstream_error(UpstreamError::Timeout);
                tracing::warn!(
                    timeout_ms = self.response_timeout.as_millis() as u64,
                    "upstream response timed out"
                );
                Err(Refusal::Upstream(UpstreamError::Timeout).into_response())
            }
        }
    }
}

/// Sorts a client error into the metric's kinds.
fn classify(error: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return UpstreamError::Timeout;
            }
        }
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            if hyper_error.is_parse() || hyper_error.is_parse_status() {
                return UpstreamError::Protocol;
            }
            if hyper_error.is_incomplete_message() || hyper_error.is_canceled() {
                return UpstreamError::Reset;
            }
        }
        source = cause.source();
    }
    if error.is_connect() {
        UpstreamError::Connect
    } else {
        UpstreamError::Reset
    }
}
