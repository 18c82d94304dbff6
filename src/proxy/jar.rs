//! The session cookie jar on the request path (`upstream.cookie_jar`, see
//! [`crate::session::jar`]): strip-then-inject for cookies.
//!
//! - Requests: every browser-sent cookie of a jarred name is removed (a stale
//!   browser `PHPSESSID` must never mix in), then the session's matching jar cookies
//!   are added to `Cookie` — for every request of the session alike: navigations,
//!   fetch/XHR, form posts and WebSocket handshakes.
//! - Responses: every upstream `Set-Cookie` of a jarred name is removed from the
//!   response and stored in the session's jar; without a session there is no jar,
//!   and the cookie is dropped (counted `no_session`), never handed to the browser.
//!
//! Matching uses what the upstream sees: the request's `Host` (without port) and the
//! upstream path; `Secure` cookies go only with requests the browser made over https.

use http::header::HOST;
use http::uri::Authority;
use http::HeaderMap;

use super::Gateway;
use crate::context::Context;
use crate::session::jar::{Dropped, Jar, Site};
use crate::web::headers;

/// The request a jar works for (see [`Site`]), owned so it outlives the request head.
pub(super) struct JarSite {
    host: String,
    path: String,
    secure: bool,
}

impl JarSite {
    fn site(&self) -> Site<'_> {
        Site {
            host: &self.host,
            path: &self.path,
            secure: self.secure,
        }
    }
}

impl Gateway {
    /// Removes every browser-sent cookie the jar owns (all of them under `"all"`).
    pub(super) fn strip_jarred(&self, headers: &mut HeaderMap) {
        if self.jarred.is_on() {
            headers::remove_cookies_where(headers, |name| self.jarred.covers(name));
        }
    }

    /// The site of an upstream request head (after `prepare_upstream`), when the jar
    /// is on.
    pub(super) fn jar_site(&self, parts: &http::request::Parts, cx: &Context) -> Option<JarSite> {
        if !self.jarred.is_on() {
            return None;
        }
        let host = parts
            .headers
            .get(HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .map_or_else(
                || self.upstream.authority().host().to_ascii_lowercase(),
                |authority| authority.host().to_ascii_lowercase(),
            );
        Some(JarSite {
            host,
            path: parts.uri.path().to_owned(),
            secure: cx.scheme.is_secure(),
        })
    }

    /// Adds the session's matching jar cookies to the upstream request.
    pub(super) fn jar_into_request(&self, headers: &mut HeaderMap, site: &JarSite, cx: &Context) {
        let Some(session) = &cx.identity.session else {
            return;
        };
        let now = self.clock.wall(self.clock.now());
        let mut pairs = None;
        self.store
            .update_jar(session, &mut |slot: &mut Option<Jar>| {
                pairs = None; // each run starts afresh: only the last counts
                if let Some(jar) = slot {
                    pairs = jar.header(&site.site(), now);
                    if jar.is_empty() {
                        *slot = None;
                    }
                }
            });
        if let Some(pairs) = pairs {
            headers::append_cookies(headers, &pairs);
        }
    }

    /// Takes the jarred `Set-Cookie`s out of an upstream response into the session's
    /// jar. Runs before the control headers, so an `X-Session-End` in the same
    /// response drops what was just stored along with the session.
    pub(super) fn jar_from_response(
        &self,
        headers: &mut HeaderMap,
        site: Option<&JarSite>,
        cx: &Context,
    ) {
        if !self.jarred.is_on() {
            return;
        }
        let taken = headers::take_set_cookies(headers, |name| self.jarred.covers(name));
        if taken.is_empty() {
            return;
        }
        let (Some(session), Some(site)) = (&cx.identity.session, site) else {
            for _ in &taken {
                self.metrics.jar_dropped(Dropped::NoSession);
            }
            return;
        };
        let now = self.clock.wall(self.clock.now());
        let mut dropped = Vec::new();
        self.store
            .update_jar(session, &mut |slot: &mut Option<Jar>| {
                dropped.clear();
                let jar = slot.get_or_insert_with(Jar::default);
                for value in &taken {
                    dropped.extend(jar.store(value.as_bytes(), &site.site(), now));
                }
                if jar.is_empty() {
                    *slot = None;
                }
            });
        for reason in dropped {
            tracing::debug!(
                reason = reason.as_str(),
                "upstream cookie not kept in the jar"
            );
            self.metrics.jar_dropped(reason);
        }
    }
}
