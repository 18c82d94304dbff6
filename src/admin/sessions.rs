//! The session API of the admin listener (DESIGN.md §9):
//! `GET /sessions?limit=&after=&state=`, `GET | DELETE | PATCH /sessions/{handle}`.
//!
//! `GET /sessions/{handle}` also shows the session's cookie jar (`jar`: names,
//! sizes and attributes of the cookies, never their values).
//!
//! Every time is in milliseconds: instants (`created`, `last_activity`,
//! `last_seen`) since the Unix epoch, like the hook payloads and heartbeat replies;
//! the one duration is named for its unit (`timeout_ms`), in replies and in `PATCH`.
//!
//! Listing pages through sessions in handle order (a stable order that needs no
//! snapshot: `after` is the last handle of the previous page), optionally only those
//! in one `state`, with `count`: how many match in the whole table ("how many are in
//! the countdown right now?"). Ending a session here is reason `admin` and fires the
//! `end` hook like any other end; a new timeout applies at once and also scales the
//! session's countdown and abandon times unless the configuration sets those
//! explicitly.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::SessionMode;
use crate::session::store::SessionStore;
use crate::session::{Clock, EndReason, Handle, Millis, Session, State};
use crate::web::body::{self, Progress, ProxyBody, ReadError};
use crate::web::query;

/// Sessions per page when `limit` is not given, and the most a page may hold.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Largest `PATCH` body read.
const MAX_BODY: usize = 16 * 1024;
/// The longest timeout the API accepts: a year, in milliseconds.
const MAX_TIMEOUT_MS: u64 = 365 * 24 * 3600 * 1000;
/// Longest wait for the next bytes of a `PATCH` body (the admin listener is for
/// operators and tools, which send their small bodies at once).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// Milliseconds; 0 = never time out.
    timeout_ms: u64,
}

/// What a `PATCH` body must look like, for the 400 answer.
const PATCH_EXPECTED: &str = "expected {\"timeout_ms\": milliseconds}, a whole number from 0 (never) to 31536000000 (a year), e.g. {\"timeout_ms\": 300000} for 5 minutes";

/// A session in the listing's bounded heap, ordered by handle.
struct ByHandle(Handle, Arc<Session>);

impl PartialEq for ByHandle {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ByHandle {}

impl PartialOrd for ByHandle {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByHandle {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl SessionApi {
    /// Answers a request whose path starts with `/sessions`.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path().trim_end_matches('/');
        match path.strip_prefix("/sessions") {
            Some("") => match *request.method() {
                Method::GET | Method::HEAD => self.list(request.uri().query()).await,
                _ => body::method_not_allowed("GET, HEAD"),
            },
            Some(rest) => match rest.strip_prefix('/').map(Handle::try_parse) {
                Some(Ok(handle)) => self.one(handle, request).await,
                _ => body::json_error(StatusCode::NOT_FOUND, "no such session"),
            },
            None => body::json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    async fn list(&self, query: Option<&str>) -> Response<ProxyBody> {
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
        let state = match param("state").as_deref() {
            None => None,
            Some("active") => Some(State::Active),
            Some("warning") => Some(State::Warning),
            Some("ended") => Some(State::Ended),
            Some(_) => {
                return body::json_error(
                    StatusCode::BAD_REQUEST,
                    "state must be active, warning or ended",
                )
            }
        };
        // One pass: count every match, and keep the `limit + 1` smallest handles after
        // the cursor in a bounded max-heap (one more than asked tells whether there is
        // a next page). With a shared store the pass reads Redis: off the runtime.
        let store = Arc::clone(&self.store);
        let now = self.clock.now();
        let pass = tokio::task::spawn_blocking(move || {
            let mut count = 0usize;
            let mut heap = BinaryHeap::with_capacity(limit + 2);
            store
                .for_each(now, &mut |session| {
                    if state.is_some_and(|want| session.stored_state() != want) {
                        return;
                    }
                    count += 1;
                    let handle = session.handle();
                    if after.is_some_and(|a| handle <= a) {
                        return;
                    }
                    if heap.len() <= limit {
                        heap.push(ByHandle(handle, Arc::clone(session)));
                    } else if heap.peek().is_some_and(|top: &ByHandle| handle < top.0) {
                        heap.pop();
                        heap.push(ByHandle(handle, Arc::clone(session)));
                    }
                })
                .map(|()| (count, heap))
        })
        .await;
        let (count, heap) = match pass {
            Ok(Ok(found)) => found,
            Ok(Err(_)) => {
                return body::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the shared session store is unreachable: cannot list every session",
                )
            }
            Err(_) => {
                return body::json_error(StatusCode::INTERNAL_SERVER_ERROR, "the listing failed")
            }
        };
        let mut sessions = heap.into_sorted_vec();
        let next = (sessions.len() > limit).then(|| {
            sessions.truncate(limit);
            sessions.last().map(|s| s.0)
        });
        let items: Vec<Value> = sessions.iter().map(|s| self.describe(&s.1)).collect();
        body::json(
            StatusCode::OK,
            &json!({ "sessions": items, "count": count, "next": next.flatten() }),
        )
    }

    async fn one(&self, handle: Handle, request: Request<Incoming>) -> Response<ProxyBody> {
        let now = self.clock.now();
        let Some(session) = self.store.get(&handle, now) else {
            return body::json_error(StatusCode::NOT_FOUND, "no such session");
        };
        match *request.method() {
            Method::GET | Method::HEAD => {
                let mut described = self.describe(&session);
                described["jar"] = self.jar(&session);
                body::json(StatusCode::OK, &described)
            }
            Method::DELETE => {
                self.store.end(&session, EndReason::Admin, now);
                body::json(
                    StatusCode::OK,
                    &json!({ "handle": handle, "state": "ended", "reason": "admin" }),
                )
            }
            Method::PATCH => {
                let bytes = match body::read_limited(
                    request,
                    MAX_BODY,
                    BODY_TIMEOUT,
                    Progress::new(),
                )
                .await
                {
                    Ok(bytes) => bytes,
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
                let timeout = match parse_patch(&bytes) {
                    Ok(timeout) => timeout,
                    Err(reason) => return body::json_error(StatusCode::BAD_REQUEST, &reason),
                };
                self.store.set_timeout(&session, timeout, now);
                body::json(StatusCode::OK, &self.describe(&session))
            }
            _ => body::method_not_allowed("GET, HEAD, DELETE, PATCH"),
        }
    }

    /// `{"handle", "state", "mode", "created", "last_activity", "last_seen",
    /// "timeout_ms", "parent"}`: instants in ms since the epoch, the timeout in ms.
    fn describe(&self, session: &Session) -> Value {
        json!({
            "handle": session.handle(),
            "state": session.stored_state().as_str(),
            "mode": self.mode.as_str(),
            "created": self.clock.wall(session.created()),
            "last_activity": self.clock.wall(session.last_activity()),
            "last_seen": self.clock.wall(session.last_seen()),
            "timeout_ms": session.timeout(),
            "parent": session.parent(),
        })
    }
}

impl SessionApi {
    /// The session's cookie jar (`upstream.cookie_jar`) as the single-session view
    /// shows it: each cookie's name, size and attributes, never its value; `[]`
    /// without a jar.
    fn jar(&self, session: &Session) -> Value {
        let Some(jar) = self.store.jar(&session.handle()) else {
            return json!([]);
        };
        let mut cookies: Vec<_> = jar.cookies().iter().collect();
        cookies.sort_by_key(|c| c.created);
        Value::Array(
            cookies
                .into_iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "size": c.size(),
                        "domain": c.domain,
                        "host_only": c.host_only,
                        "path": c.path,
                        "expires": c.expires,
                        "secure": c.secure,
                        "http_only": c.http_only,
                    })
                })
                .collect(),
        )
    }
}

/// The new timeout in ms from a `PATCH` body, or the reason for a 400.
fn parse_patch(bytes: &[u8]) -> Result<Millis, String> {
    if let Ok(Patch { timeout_ms }) = serde_json::from_slice::<Patch>(bytes) {
        if timeout_ms <= MAX_TIMEOUT_MS {
            return Ok(timeout_ms);
        }
    }
    // The field used to be `timeout`, in seconds: say so rather than guess the unit.
    let old_name = serde_json::from_slice::<Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("timeout").is_some());
    Err(if old_name {
        format!("\"timeout\" is now \"timeout_ms\", in milliseconds; {PATCH_EXPECTED}")
    } else {
        PATCH_EXPECTED.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_bodies() {
        assert_eq!(parse_patch(br#"{"timeout_ms": 300000}"#), Ok(300_000));
        assert_eq!(parse_patch(br#"{"timeout_ms": 0}"#), Ok(0));
        assert_eq!(
            parse_patch(br#"{"timeout_ms": 31536000000}"#),
            Ok(MAX_TIMEOUT_MS)
        );
        for bad in [
            &br#"{"timeout_ms": 31536000001}"#[..],
            br#"{"timeout_ms": -1}"#,
            br#"{"timeout_ms": 1.5}"#,
            br#"{"timeout_ms": "5m"}"#,
            br#"{"timeout_ms": 1, "x": 2}"#,
            b"not json",
        ] {
            let reason = parse_patch(bad).expect_err("refused");
            assert!(reason.starts_with("expected {\"timeout_ms\""), "{reason}");
        }
        let reason = parse_patch(br#"{"timeout": 300}"#).expect_err("the old field");
        assert!(
            reason.starts_with("\"timeout\" is now \"timeout_ms\""),
            "{reason}"
        );
    }
}
