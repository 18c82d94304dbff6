//! One hook call: `POST` the JSON payload with the session header, the whole exchange
//! (connect, response head, body) bounded by `hooks.budget`; and how its outcome is
//! counted.
//!
//! The client comes from [`crate::web::client::pooled`], like the proxy's, in a
//! separate pool so that hook calls never queue behind, or starve, proxied requests.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use prometheus::IntCounter;
use ring::hmac;
use tokio::time::Instant;

use super::HookKind;
use crate::metrics::Metrics;
use crate::session::Handle;
use crate::web::client::{self, error_chain};

/// The most of a hook's answer that is read; `{"handled": true}` is 16 bytes, and a
/// backend must not make the gateway buffer a page.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// A hook's answer. A body that could not be read in time or in full is empty: the
/// status alone says whether the call worked.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why a hook call got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {}", error_chain(.0))]
    Send(#[source] hyper_util::client::legacy::Error),
    #[error("cannot build the request: {0}")]
    Build(#[from] http::Error),
}

/// Names the event of a hook request (`start`, `timeout`, `end`). It is in the
/// `X-Session*` namespace, which the gateway strips from every client request, so a
/// request carrying it that reached the upstream through the gateway came from the
/// gateway itself.
pub const X_SESSION_HOOK: HeaderName = HeaderName::from_static("x-session-hook");
/// `sha256=<hex HMAC-SHA256 of the body>` under `hooks.secret`, for upstreams that
/// others can reach directly.
pub const X_SESSION_SIGNATURE: HeaderName = HeaderName::from_static("x-session-signature");

/// Sends hook requests.
pub(crate) struct Caller {
    client: Client<HttpConnector, Full<Bytes>>,
    header: HeaderName,
    budget: Duration,
    /// `hooks.secret`, when set: every body is signed with it.
    secret: Option<hmac::Key>,
}

impl Caller {
    pub(crate) fn new(
        header: HeaderName,
        budget: Duration,
        connect_timeout: Duration,
        pool: usize,
        secret: &str,
    ) -> Self {
        let client = client::pooled(connect_timeout, pool);
        Caller {
            client,
            header,
            budget,
            secret: (!secret.is_empty())
                .then(|| hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())),
        }
    }

    /// The `X-Session-Signature` value for `body`, when a secret is set.
    fn signature(&self, body: &[u8]) -> Option<String> {
        let tag = hmac::sign(self.secret.as_ref()?, body);
        let mut value = String::with_capacity(7 + 64);
        value.push_str("sha256=");
        for byte in tag.as_ref() {
            value.push_str(&format!("{byte:02x}"));
        }
        Some(value)
    }

    /// Posts `body` to `uri` for `session`'s `event`; an answer of any status is
    /// `Ok`.
    pub(crate) async fn post(
        &self,
        uri: &Uri,
        event: HookKind,
        session: Handle,
        body: Bytes,
    ) -> Result<Reply, CallError> {
        let deadline = Instant::now() + self.budget;
        let mut request = Request::post(uri.clone())
            .header(&self.header, session.to_string())
            .header(CONTENT_TYPE, "application/json")
            .header(X_SESSION_HOOK, event.as_str());
        if let Some(signature) = self.signature(&body) {
            request = request.header(X_SESSION_SIGNATURE, signature);
        }
        let request = request.body(Full::new(body))?;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(CallError::Send(error)),
            Err(_elapsed) => return Err(CallError::Timeout(self.budget)),
        };
        let status = response.status();
        // The answer has arrived: a body that is slow, cut off or too large leaves the
        // status standing (an end hook that answered 200 must not be sent again).
        let read = Limited::new(response.into_body(), MAX_REPLY_BYTES).collect();
        let body = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) => {
                tracing::debug!(%session, error = %error, "hook answer body unreadable");
                Bytes::new()
            }
            Err(_elapsed) => Bytes::new(),
        };
        Ok(Reply { status, body })
    }
}

/// How one call went (the `outcome` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    Timeout,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Error, Outcome::Timeout];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }

    /// A 2xx answer is `Ok`; any other answer or failure an `Error`, except running
    /// out of budget.
    pub(crate) fn of(result: &Result<Reply, CallError>) -> Outcome {
        match result {
            Ok(reply) if reply.status.is_success() => Outcome::Ok,
            Err(CallError::Timeout(_)) => Outcome::Timeout,
            _ => Outcome::Error,
        }
    }
}

/// `sessiongate_hook_calls_total{hook, outcome}`, resolved once so that counting does
/// not hash label values.
pub(crate) struct Counters([[IntCounter; 3]; 3]);

impl Counters {
    pub(crate) fn new(metrics: &Metrics) -> Self {
        Counters(HookKind::ALL.map(|hook| {
            Outcome::ALL.map(|outcome| {
                metrics
                    .hook_calls
                    .with_label_values(&[hook.as_str(), outcome.as_str()])
            })
        }))
    }

    pub(crate) fn count(&self, hook: HookKind, outcome: Outcome) {
        self.0[hook as usize][outcome as usize].inc();
    }
}
