//! The session API of the admin listener (DESIGN.md §9):
//! `GET /sessions?limit=&after=`, `GET | DELETE | PATCH /sessions/{handle}`.
//!
//! Listing pages through sessions in handle order (a stable order that needs no
//! snapshot: `after` is the last handle of the previous page). Ending a session here
//! is reason `admin` and fires the `end` hook like any other end; a new timeout
//! applies at once and also scales the session's countdown and abandon times unless
//! the configuration sets those explicitly.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::SessionMode;
use crate::session::store::SessionStore;
use crate::session::{Clock, EndReason, Handle, Session};
use crate::web::body::{self, Progress, ProxyBody, ReadError};
use crate::web::query;

/// Sessions per page when `limit` is not given, and the most a page may hold.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Largest `PATCH` body read.
const MAX_BODY: usize = 16 * 1024;
/// Longest wait for the next bytes of a `PATCH` body (the admin listener is for
/// operators and tools, which send their small bodies at once).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest timeout the API accepts: a year, in seconds.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// What the session API needs from the gateway.
pub struct SessionApi {
    pub store: Arc<dyn SessionStore>,
    pub clock: Clock,
    pub mode: SessionMode,
}

/// The body of `PATCH /sessions/{handle}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    /// Seconds; 0 = never time out.
    timeout: f64,
}

impl SessionApi {
    /// Answers a request whose path starts with `/sessions`.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path().trim_end_matches('/');
        match path.strip_prefix("/sessions") {
            Some("") => match *request.method() {
                Method::GET | Method::HEAD => self.list(request.uri().query()),
                _ => body::method_not_allowed("GET, HEAD"),
            },
            Some(rest) => match rest.strip_prefix('/').map(Handle::try_parse) {
                Some(Ok(handle)) => self.one(handle, request).await,
                _ => body::json_error(StatusCode::NOT_FOUND, "no such session"),
            },
            None => body::json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn list(&self, query: Option<&str>) -> Response<ProxyBody> {
        let param = |name| query.and_then(|q| query::param(q, name));
        let limit = match param("limit").map(|v| v.parse::<usize>()) {
            None => DEFAULT_LIMIT,
            Some(Ok(limit)) if (1..=MAX_LIMIT).contains(&limit) => limit,
            Some(_) => {
                return body::json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                )
            }
        };
        let after = match param("after").map(|v| Handle::try_parse(&v)) {
            None => None,
            Some(Ok(handle)) => Some(handle),
            Some(Err(_)) => {
                return body::json_error(
                    StatusCode::BAD_REQUEST,
                    "after must be a session handle (the `next` of the previous page)",
                )
            }
        };
        // One more than asked tells whether there is a next page.
        let mut sessions = self.store.page(after, limit + 1);
        let next = (sessions.len() > limit).then(|| {
            sessions.truncate(limit);
            sessions.last().map(|s| s.handle())
        });
        let items: Vec<Value> = sessions.iter().map(|s| self.describe(s)).collect();
        body::json(
            StatusCode::OK,
            &json!({ "sessions": items, "next": next.flatten() }),
        )
    }

    async fn one(&self, handle: Handle, request: Request<Incoming>) -> Response<ProxyBody> {
        let now = self.clock.now();
        let Some(session) = self.store.get(&handle, now) else {
            return body::json_error(StatusCode::NOT_FOUND, "no such session");
        };
        match *request.method() {
            Method::GET | Method::HEAD => body::json(StatusCode::OK, &self.describe(&session)),
            Method::DELETE => {
                self.store.end(&session, EndReason::Admin, now);
                body::json(
                    StatusCode::OK,
                    &json!({ "handle": handle, "state": "ended", "reason": "admin" }),
                )
            }
            Method::PATCH => {
                let patch = match body::read_limited(
                    request,
                    MAX_BODY,
                    BODY_TIMEOUT,
                    Progress::new(),
                )
                .await
                {
                    Ok(bytes) => serde_json::from_slice::<Patch>(&bytes),
                    Err(ReadError::TooLarge) => {
                        return body::json_error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body larger than 16 KiB",
                        )
                    }
                    Err(ReadError::Unreadable) => {
                        return body::json_error(StatusCode::BAD_REQUEST, "could not read the body")
                    }
                    Err(ReadError::TimedOut) => {
                        return body::json_error(
                            StatusCode::REQUEST_TIMEOUT,
                            "the request body stopped arriving",
                        )
                    }
                };
                let seconds = match patch {
                    Ok(Patch { timeout }) if (0.0..=MAX_TIMEOUT_SECS).contains(&timeout) => timeout,
                    _ => return body::json_error(
                        StatusCode::BAD_REQUEST,
                        "expected {\"timeout\": seconds} with seconds from 0 (never) to 31536000",
                    ),
                };
                self.store
                    .set_timeout(&session, (seconds * 1000.0).round() as u64, now);
                body::json(StatusCode::OK, &self.describe(&session))
            }
            _ => body::method_not_allowed("GET, HEAD, DELETE, PATCH"),
        }
    }

    /// `{"handle", "state", "mode", "created", "last_activity", "last_seen",
    /// "timeout", "parent"}`: times in ms since the epoch, the timeout in seconds.
    fn describe(&self, session: &Session) -> Value {
        let now = self.clock.now();
        json!({
            "handle": session.handle(),
            "state": session.state_at(self.store.rules(), now).as_str(),
            "mode": self.mode.as_str(),
            "created": self.clock.wall(session.created()),
            "last_activity": self.clock.wall(session.last_activity()),
            "last_seen": self.clock.wall(session.last_seen()),
            "timeout": session.timeout() as f64 / 1000.0,
            "parent": session.parent(),
        })
    }
}
