//! Everything the gateway refuses or fails on, in one type with one response and one
//! metric label each — the single place where the gateway writes an error answer of
//! its own (Pingora's error sources and rpxy's one mapping to a status served as
//! models).
//!
//! Each refusal knows who caused it ([`Source`]): the client (a bad or forbidden
//! request), the upstream (it cannot be reached or answered badly) or the gateway
//! itself. Answers to browsers' page requests are short plain text; answers on the
//! reserved endpoints, which the agent reads, are `{"error": "..."}`. The response
//! carries its [`Refused`] label in its extensions so that the request path counts
//! every refusal in `sessiongate_refusals_total{reason}` in one place.

use http::header::{ALLOW, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use super::body::{self, ProxyBody};

/// How an upstream exchange failed (label of `sessiongate_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 4] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Reset,
        UpstreamError::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Protocol => "protocol",
        }
    }
}

/// Who caused a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something the gateway does not serve.
    Downstream,
    /// The upstream could not be reached or answered badly.
    Upstream,
    /// The gateway itself (limits, the OS).
    Internal,
}

/// Everything the gateway answers with an error of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `TRACE` and `CONNECT`.
    Method,
    /// A reserved endpoint called with the wrong method; the value is `Allow`.
    ReservedMethod(&'static str),
    /// A WebSocket (or other upgrade) from a foreign `Origin`.
    CrossOriginUpgrade,
    /// A reserved state change from a foreign `Origin` or another site.
    CrossOrigin,
    /// A path in `session.require` without a session.
    NeedsSession,
    /// `tab` mode: a write whose tab identity names no live session (DESIGN.md §5,
    /// `X-Session-State: ended`): never forwarded into a fresh session.
    SessionEnded,
    /// A request target that cannot be sent upstream.
    BadTarget,
    /// An HTTP/1.1 request without exactly one valid `Host` (RFC 9112 §3.2).
    BadHost,
    /// A path under the reserved prefix that is no endpoint.
    NotFound,
    /// A reserved call without a valid session.
    NoSession,
    /// `POST session` without the browser key cookie.
    NoBrowserKey,
    /// `POST session` with a challenge that is invalid, expired or spent.
    BadChallenge,
    /// A cookie-carried reserved call without `X-Sessiongate-Agent`.
    MissingAgentHeader,
    /// A reserved body over 16 KiB.
    TooLarge,
    /// A reserved body that could not be read.
    Unreadable,
    /// A reserved body that is not the JSON expected.
    BadJson,
    /// A request body that sent nothing for `listen.body_timeout` (the connection
    /// is closed after the answer).
    BodyTimeout,
    /// A forwarded request whose client broke off its body.
    BodyAborted,
    /// `upstream.max_in_flight` requests were in flight for all of
    /// `upstream.connect_timeout`.
    UpstreamBusy,
    /// `max_sessions` reached under `when_full = "reject"`.
    SessionsFull,
    /// A new session was needed while the shared session store (Redis) is
    /// unreachable: none is minted until it is back.
    StoreDown,
    /// Too many new sessions from this client address; retry after so many ms.
    Limited { retry_ms: u64 },
    /// The gateway failed itself: the OS random number generator failed, or handling
    /// the request panicked (`net::conn`).
    Internal,
    /// The upstream failed.
    Upstream(UpstreamError),
}

/// The label a refused response carries in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// How the body of a refusal is written.
enum Style {
    Text,
    Json,
}

impl Refusal {
    /// Every label [`Refusal::label`] can return, to initialise the metric at zero.
    pub const LABELS: [&'static str; 22] = [
        "method",
        "origin",
        "needs_session",
        "session_ended",
        "bad_request",
        "not_found",
        "no_session",
        "no_browser_key",
        "bad_challenge",
        "agent_header",
        "too_large",
        "body_timeout",
        "body_aborted",
        "upstream_busy",
        "sessions_full",
        "store_unavailable",
        "rate_limited",
        "internal",
        "upstream_connect",
        "upstream_timeout",
        "upstream_reset",
        "upstream_protocol",
    ];

    /// The metric label (bounded: one of [`Refusal::LABELS`]).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Method | Refusal::ReservedMethod(_) => "method",
            Refusal::CrossOriginUpgrade | Refusal::CrossOrigin => "origin",
            Refusal::NeedsSession => "needs_session",
            Refusal::SessionEnded => "session_ended",
            Refusal::BadTarget | Refusal::BadHost | Refusal::Unreadable | Refusal::BadJson => {
                "bad_request"
            }
            Refusal::NotFound => "not_found",
            Refusal::NoSession => "no_session",
            Refusal::NoBrowserKey => "no_browser_key",
            Refusal::BadChallenge => "bad_challenge",
            Refusal::MissingAgentHeader => "agent_header",
            Refusal::TooLarge => "too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::BodyAborted => "body_aborted",
            Refusal::UpstreamBusy => "upstream_busy",
            Refusal::SessionsFull => "sessions_full",
            Refusal::StoreDown => "store_unavailable",
            Refusal::Limited { .. } => "rate_limited",
            Refusal::Internal => "internal",
            Refusal::Upstream(UpstreamError::Connect) => "upstream_connect",
            Refusal::Upstream(UpstreamError::Timeout) => "upstream_timeout",
            Refusal::Upstream(UpstreamError::Reset) => "upstream_reset",
            Refusal::Upstream(UpstreamError::Protocol) => "upstream_protocol",
        }
    }

    pub fn source(self) -> Source {
        match self {
            Refusal::Upstream(_) => Source::Upstream,
            Refusal::SessionsFull
            | Refusal::StoreDown
            | Refusal::UpstreamBusy
            | Refusal::Internal => Source::Internal,
            _ => Source::Downstream,
        }
    }

    pub fn status(self) -> StatusCode {
        self.describe().0
    }

    fn describe(self) -> (StatusCode, Style, &'static str) {
        use Style::{Json, Text};
        match self {
            Refusal::Method => (
                StatusCode::METHOD_NOT_ALLOWED,
                Text,
                "405 Method Not Allowed",
            ),
            Refusal::ReservedMethod(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, Json, "method not allowed")
            }
            Refusal::CrossOriginUpgrade => (
                StatusCode::FORBIDDEN,
                Text,
                "403 Forbidden: cross-origin upgrade refused",
            ),
            Refusal::CrossOrigin => (StatusCode::FORBIDDEN, Json, "cross-origin request refused"),
            Refusal::NeedsSession => (
                StatusCode::UNAUTHORIZED,
                Text,
                "401 Unauthorized: this page needs a session",
            ),
            Refusal::SessionEnded => (
                StatusCode::CONFLICT,
                Json,
                "the session has ended; nothing was forwarded",
            ),
            Refusal::BadTarget => (
                StatusCode::BAD_REQUEST,
                Text,
                "400 Bad Request: unusable request target",
            ),
            Refusal::BadHost => (
                StatusCode::BAD_REQUEST,
                Text,
                "400 Bad Request: a request needs exactly one valid Host header",
            ),
            Refusal::NotFound => (StatusCode::NOT_FOUND, Json, "no such endpoint"),
            Refusal::NoSession => (StatusCode::UNAUTHORIZED, Json, "no valid session"),
            Refusal::NoBrowserKey => (
                StatusCode::UNAUTHORIZED,
                Json,
                "no browser key cookie: cookies must be enabled",
            ),
            Refusal::BadChallenge => (
                StatusCode::FORBIDDEN,
                Json,
                "the challenge is invalid, expired or already used",
            ),
            Refusal::MissingAgentHeader => (
                StatusCode::FORBIDDEN,
                Json,
                "cookie-carried requests need the X-Sessiongate-Agent header",
            ),
            Refusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json,
                "body larger than 16 KiB",
            ),
            Refusal::Unreadable => (StatusCode::BAD_REQUEST, Json, "could not read the body"),
            Refusal::BadJson => (StatusCode::BAD_REQUEST, Json, "body is not valid JSON"),
            Refusal::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                Text,
                "408 Request Timeout: the request body stopped arriving",
            ),
            Refusal::BodyAborted => (
                StatusCode::BAD_REQUEST,
                Text,
                "400 Bad Request: the request body was cut off",
            ),
            Refusal::UpstreamBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                Text,
                "503 Service Unavailable: the application is busy; try again shortly",
            ),
            Refusal::SessionsFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                Text,
                "503 Service Unavailable: too many sessions; try again later",
            ),
            Refusal::StoreDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                Text,
                "503 Service Unavailable: the session store is unreachable; try again shortly",
            ),
            Refusal::Limited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                Text,
                "429 Too Many Requests: too many new sessions from this address",
            ),
            Refusal::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Text,
                "500 Internal Server Error",
            ),
            Refusal::Upstream(UpstreamError::Timeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                Text,
                "504 Gateway Timeout: the application did not answer in time",
            ),
            Refusal::Upstream(UpstreamError::Connect) => (
                StatusCode::BAD_GATEWAY,
                Text,
                "502 Bad Gateway: the application cannot be reached",
            ),
            Refusal::Upstream(UpstreamError::Reset | UpstreamError::Protocol) => (
                StatusCode::BAD_GATEWAY,
                Text,
                "502 Bad Gateway: the application sent no valid response",
            ),
        }
    }

    /// The gateway's answer, labelled with [`Refused`] in its extensions. The
    /// session state, cookies and request id are added by the request context.
    pub fn into_response(self) -> Response<ProxyBody> {
        let (status, style, message) = self.describe();
        let mut response = match style {
            Style::Text => body::text(status, message),
            Style::Json => body::json_error(status, message),
        };
        let headers = response.headers_mut();
        match self {
            Refusal::Method => {
                headers.insert(
                    ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            Refusal::ReservedMethod(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Refusal::Limited { retry_ms } => {
                let seconds = retry_ms.div_ceil(1000).max(1);
                headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            Refusal::UpstreamBusy => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Refusal::StoreDown => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
            }
            _ => {}
        }
        response.extensions_mut().insert(Refused(self.label()));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_listed_and_every_refusal_has_a_status() {
        let all = [
            Refusal::Method,
            Refusal::ReservedMethod("POST"),
            Refusal::CrossOriginUpgrade,
            Refusal::CrossOrigin,
            Refusal::NeedsSession,
            Refusal::SessionEnded,
            Refusal::BadTarget,
            Refusal::BadHost,
            Refusal::NotFound,
            Refusal::NoSession,
            Refusal::NoBrowserKey,
            Refusal::BadChallenge,
            Refusal::MissingAgentHeader,
            Refusal::TooLarge,
            Refusal::Unreadable,
            Refusal::BadJson,
            Refusal::BodyTimeout,
            Refusal::BodyAborted,
            Refusal::UpstreamBusy,
            Refusal::SessionsFull,
            Refusal::StoreDown,
            Refusal::Limited { retry_ms: 1 },
            Refusal::Internal,
            Refusal::Upstream(UpstreamError::Connect),
            Refusal::Upstream(UpstreamError::Timeout),
            Refusal::Upstream(UpstreamError::Reset),
            Refusal::Upstream(UpstreamError::Protocol),
        ];
        for refusal in all {
            assert!(Refusal::LABELS.contains(&refusal.label()), "{refusal:?}");
            let response = refusal.into_response();
            assert!(response.status().is_client_error() || response.status().is_server_error());
            assert_eq!(
                response.extensions().get::<Refused>(),
                Some(&Refused(refusal.label()))
            );
        }
        for label in Refusal::LABELS {
            assert!(all.iter().any(|r| r.label() == label), "{label} unused");
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let response = Refusal::Limited { retry_ms: 1_001 }.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let response = Refusal::Limited { retry_ms: 0 }.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let response = Refusal::UpstreamBusy.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }
}
