//! The admin listener: health, readiness, metrics and the session API for operators.
//!
//! It is a separate listener (default `127.0.0.1:9090`), never the public one, so that
//! metrics and session data are not reachable by browsers. `/sessions` needs
//! `Authorization: Bearer <admin.token>` whenever a token is configured (and the
//! configuration refuses a non-loopback admin address without one).

pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use self::sessions::SessionApi;
use crate::metrics::Metrics;
use crate::net::{ConnInfo, Handler};
use crate::session::token::constant_time_eq;
use crate::web::body::{self, ProxyBody};

/// Answers admin requests.
pub struct Admin {
    metrics: Arc<Metrics>,
    /// `host:port` of the upstream, probed by `/readyz`.
    upstream: String,
    connect_timeout: Duration,
    sessions: SessionApi,
    /// `admin.token`; empty = no token (loopback only).
    token: String,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        upstream: String,
        connect_timeout: Duration,
        sessions: SessionApi,
        token: String,
    ) -> Self {
        Admin {
            metrics,
            upstream,
            connect_timeout,
            sessions,
            token,
        }
    }

    /// Whether the request carries the configured bearer token (compared in
    /// constant time; any request passes when no token is configured).
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        if self.token.is_empty() {
            return true;
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), self.token.as_bytes())
    }

    /// Whether the upstream accepts a TCP connection within the connect timeout.
    async fn upstream_reachable(&self) -> bool {
        let connect = tokio::net::TcpStream::connect(self.upstream.as_str());
        matches!(
            tokio::time::timeout(self.connect_timeout, connect).await,
            Ok(Ok(_))
        )
    }
}

impl Handler for Admin {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        _conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let path = request.uri().path();
        if path == "/sessions" || path.starts_with("/sessions/") {
            if !self.authorized(request.headers()) {
                let mut refusal =
                    body::json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
                refusal.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sessiongate admin\""),
                );
                return refusal;
            }
            return self.sessions.handle(request).await;
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return body::method_not_allowed("GET, HEAD");
        }
        match request.uri().path() {
            "/healthz" => body::json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            "/readyz" => {
                if self.upstream_reachable().await {
                    body::json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
                } else {
                    body::json_error(StatusCode::SERVICE_UNAVAILABLE, "upstream unreachable")
                }
            }
            "/metrics" => {
                let mut response = Response::new(body::full(self.metrics.render()));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => body::json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}
