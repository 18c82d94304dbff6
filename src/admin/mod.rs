//! The admin listener: health, readiness, metrics and the session API for operators.
//!
//! It is a separate listener (default `127.0.0.1:9090`), never the public one, so that
//! metrics and session data are not reachable by browsers. `/sessions` needs
//! `Authorization: Bearer <admin.token>` whenever a token is configured (and the
//! configuration refuses a non-loopback admin address without one).
//!
//! Without `admin.token` the listener answers only requests whose `Host` (or HTTP/2
//! `:authority`) is a loopback name or address — `localhost`, `127.0.0.0/8`,
//! `[::1]`, each with an optional port — and `403` to anything else, on every path
//! (`/metrics`, `/healthz` and `/readyz` included). A loopback socket is not enough
//! on its own: a web page in a browser on the operator's machine can reach it through
//! a DNS name rebound to 127.0.0.1, and that request carries the page's host name.
//! Prometheus scraping `127.0.0.1:9090` keeps working; scraping by another address
//! needs a token (and then any `Host` is answered).

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

    /// Whether a token-less listener may answer this request: its authority names
    /// the loopback interface (see the module doc). With a token every host passes.
    fn host_allowed(&self, request: &Request<Incoming>) -> bool {
        if !self.token.is_empty() {
            return true;
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
        authority.as_deref().is_some_and(is_loopback_authority)
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
    fn panicked(&self) {
        self.metrics.panicked();
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        _conn: ConnInfo,
    ) -> Response<ProxyBody> {
        if !self.host_allowed(&request) {
            return body::json_error(
                StatusCode::FORBIDDEN,
                "without admin.token only loopback Host names are answered",
            );
        }
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
                if !self.sessions.store.ready() {
                    body::json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "session store (redis) unreachable",
                    )
                } else if self.upstream_reachable().await {
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

/// Whether `authority` (`host[:port]`) names the loopback interface: `localhost`
/// (any case, optional trailing dot), an address in `127.0.0.0/8`, or `[::1]`.
fn is_loopback_authority(authority: &str) -> bool {
    if authority.contains('@') {
        return false;
    }
    let host = match authority.parse::<http::uri::Authority>() {
        Ok(parsed) => parsed.host().to_owned(),
        Err(_) => return false,
    };
    // After the host only an optional all-digit port may follow.
    let rest = authority.get(host.len()..).unwrap_or("");
    let port_ok = rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|port| port.parse::<u16>().is_ok());
    if !port_ok {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    }
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        return v4.is_loopback();
    }
    let name = host.strip_suffix('.').unwrap_or(&host);
    name.eq_ignore_ascii_case("localhost")
}

#[cfg(test)]
mod tests {
    use super::is_loopback_authority;

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "LOCALHOST:9090",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:9090",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for no in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:9090",
            "[::2]:9090",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
            "localhost:abc",
            "user@localhost",
        ] {
            assert!(!is_loopback_authority(no), "{no}");
        }
    }
}
