//! Stage 5, the response: consume the upstream's control headers (DESIGN.md §5),
//! drop the upstream's attempts to set the gateway's cookies, take the cookies the
//! session's jar keeps out of the response ([`super::jar`]), put the agent's tag into
//! HTML pages ([`crate::inject`]), and hand the body back as it streams.

use std::sync::Arc;

use http::header::COOKIE;
use http::{HeaderMap, Method, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::jar::JarSite;
use super::request::{restore_upgrade, PROXY_COOKIES};
use super::Gateway;
use crate::config::SessionMode;
use crate::context::Context;
use crate::inject::{self, Outcome as InjectOutcome, Skip};
use crate::session::{EndReason, Millis, Session, State};
use crate::web::body::ProxyBody;
use crate::web::headers::{self, X_SESSION_END, X_SESSION_ROTATE, X_SESSION_TIMEOUT};

/// The longest timeout `X-Session-Timeout` may set: one year (DESIGN.md §5).
const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 60 * 60;

impl Gateway {
    /// Shapes the upstream's response for the client.
    pub(super) fn respond(
        &self,
        method: &Method,
        response: Response<Incoming>,
        switched: bool,
        jar_site: Option<&JarSite>,
        cx: &mut Context,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        headers::scrub_response(&mut parts.headers);
        if switched {
            restore_upgrade(&mut parts.headers);
        }
        let forged = headers::remove_set_cookies(&mut parts.headers, &PROXY_COOKIES);
        if forged > 0 {
            tracing::warn!(
                count = forged,
                "upstream tried to set the gateway's own cookies; dropped"
            );
        }
        self.jar_from_response(&mut parts.headers, jar_site, cx);
        if self.resolver.mode() == SessionMode::Browser {
            // The session (and so the answer) follows the cookie: a shared cache must
            // not hand one browser's page to another.
            headers::vary_on(&mut parts.headers, COOKIE);
        }
        if let Some(session) = cx.identity.session.clone() {
            cx.state = Some(self.apply_control_headers(&parts.headers, &session, cx));
        }
        let body = body.map_err(Into::into).boxed_unsync();
        let body = self.inject_agent(method, &mut parts, body, cx);
        headers::strip_session_headers(&mut parts.headers);
        Response::from_parts(parts, body)
    }

    /// The agent tag into documents (streaming; see [`crate::inject`]): only answers
    /// to navigations ([`Fetch::navigation`](crate::web::fetch::Fetch) — a page load,
    /// a form submit, an iframe), never a fetch/XHR answer, whatever its
    /// `Content-Type` (HTML fragments for jQuery `.load()`, HTMX or UpdatePanels, JSON
    /// labelled `text/html`): those are passed through byte for byte, and, not being
    /// pages, are not counted.
    fn inject_agent(
        &self,
        method: &Method,
        parts: &mut http::response::Parts,
        body: ProxyBody,
        cx: &Context,
    ) -> ProxyBody {
        if !self.inject {
            return body;
        }
        let plan = inject::plan(method, parts);
        if !cx.fetch.navigation {
            if plan.is_ok() {
                tracing::debug!(reason = "skip_not_document", "fetch answer not injected");
            }
            return body;
        }
        let plan = match plan {
            Ok(plan) => plan,
            Err(skip) => {
                // Pages that should have had the agent and could not; images, JSON,
                // HEAD and 304s are not pages and not counted.
                if matches!(
                    skip,
                    Skip::OptOut | Skip::Encoding | Skip::Charset | Skip::Csp
                ) {
                    self.metrics.injection(false);
                    tracing::debug!(reason = skip.label(), "page not injected");
                }
                return body;
            }
        };
        let tag = self.agent_tag(cx);
        let metrics = Arc::clone(&self.metrics);
        let plan = plan.on_outcome(move |outcome| match outcome {
            InjectOutcome::Injected => metrics.injection(true),
            InjectOutcome::Abandoned => {}
            other => {
                tracing::debug!(reason = other.label(), "page not injected");
                metrics.injection(false);
            }
        });
        inject::inject(plan, parts, body, &tag)
    }

    /// The agent's `<script>` tag for a page of this request.
    fn agent_tag(&self, cx: &Context) -> inject::Tag {
        let prefix = self.reserved.display_prefix();
        let mut data = vec![
            ("prefix", prefix.to_string()),
            ("mode", self.resolver.mode().as_str().to_string()),
        ];
        if let Some(language) = &self.agent_language {
            data.push(("lang", language.clone()));
        }
        if let Some(text) = &self.agent_text {
            data.push(("text", text.clone()));
        }
        if let (Some(session), Some(state)) = (&cx.identity.session, cx.state) {
            if state != State::Ended {
                data.push(("handle", session.handle().to_string()));
                data.push(("state", state.as_str().to_string()));
                data.push(("heartbeat", self.reserved.heartbeat_ms(session).to_string()));
                if let Some(token) = &cx.identity.new_token {
                    data.push(("token", token.encode()));
                }
            }
        }
        inject::Tag {
            src: format!("{prefix}/agent.js?v={}", crate::agent::version()),
            data,
        }
    }

    /// `X-Session-End`, `X-Session-Timeout` and `X-Session-Rotate` from the upstream
    /// (DESIGN.md §5).
    fn apply_control_headers(
        &self,
        headers: &HeaderMap,
        session: &Session,
        cx: &mut Context,
    ) -> State {
        let now = self.clock.now();
        if headers.contains_key(X_SESSION_END) {
            self.store.end(session, EndReason::Upstream, now);
            if let Some(expire) = self.resolver.expire_session_cookie() {
                cx.identity.set_cookies.push(expire);
            }
            return State::Ended;
        }
        if let Some(timeout) = session_timeout(headers) {
            self.store.set_timeout(session, timeout, now);
        }
        if headers.contains_key(X_SESSION_ROTATE) {
            if let Err(error) = self.resolver.rotate(session, &mut cx.identity, now) {
                tracing::error!(%error, session = %session.handle(), "cannot rotate the token");
            }
        }
        session.stored_state()
    }
}

/// The timeout `X-Session-Timeout` asks for, in milliseconds (DESIGN.md §5): one value
/// of digits only (no sign, no fraction, no spaces), in seconds; `0` is "never", any
/// other value is clamped to 1 s … 1 year, however many digits it has. Anything else,
/// several values included, is ignored.
fn session_timeout(headers: &HeaderMap) -> Option<Millis> {
    let mut values = headers.get_all(X_SESSION_TIMEOUT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seconds = digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    let seconds = if seconds == 0 {
        0
    } else {
        seconds.clamp(1, MAX_TIMEOUT_SECS)
    };
    Some(seconds.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn timeout_of(values: &[&'static str]) -> Option<Millis> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_SESSION_TIMEOUT, HeaderValue::from_static(value));
        }
        session_timeout(&headers)
    }

    #[test]
    fn timeouts_are_digits_only() {
        assert_eq!(timeout_of(&["60"]), Some(60_000));
        assert_eq!(timeout_of(&["0"]), Some(0));
        assert_eq!(timeout_of(&["007"]), Some(7_000));
        for bad in ["", "-1", "+5", "1.5", "1e3", "60s", "0x10", " 6 0"] {
            assert_eq!(timeout_of(&[bad]), None, "{bad:?}");
        }
        assert_eq!(timeout_of(&[]), None);
        assert_eq!(timeout_of(&["60", "60"]), None);
    }

    #[test]
    fn timeouts_are_clamped_to_a_year() {
        let year = MAX_TIMEOUT_SECS * 1000;
        assert_eq!(timeout_of(&["31536000"]), Some(year));
        assert_eq!(timeout_of(&["31536001"]), Some(year));
        assert_eq!(timeout_of(&["9223372036854775807"]), Some(year));
        assert_eq!(timeout_of(&["18446744073709551616"]), Some(year));
        assert_eq!(
            timeout_of(&["99999999999999999999999999999999999999999999"]),
            Some(year)
        );
        assert_eq!(timeout_of(&["1"]), Some(1_000));
    }
}
