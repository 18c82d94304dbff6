//! The admin listener: health, readiness and metrics for operators.
//!
//! It is a separate listener (default `127.0.0.1:9090`), never the public one, so that
//! metrics and session data are not reachable by browsers.

use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::net::{ConnInfo, Handler};
use crate::proxy::body::{self, ProxyBody};

/// Answers admin requests.
pub struct Admin {
    metrics: Arc<Metrics>,
    /// `host:port` of the upstream, probed by `/readyz`.
    upstream: String,
    connect_timeout: Duration,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, upstream: String, connect_timeout: Duration) -> Self {
        Admin {
            metrics,
            upstream,
            connect_timeout,
        }
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
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return body::json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
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
