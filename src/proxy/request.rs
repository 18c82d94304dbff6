//! Stage 4, the upstream request head: strip everything the client may not decide,
//! then add the gateway's own headers (strip-then-inject, DESIGN.md §3, §5).

use std::sync::Arc;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use super::Gateway;
use crate::context::Context;
use crate::session::Handle;
use crate::web::body::ProxyBody;
use crate::web::headers::{self, X_REQUEST_ID, X_SESSION_PARENT};
use crate::web::query;

/// An HTTP/1.1 `Upgrade` request (WebSocket and friends) in flight.
pub(super) struct Upgrade {
    pub(super) protocol: HeaderValue,
    /// The client side of the connection, handed over once we answer 101.
    client: hyper::upgrade::OnUpgrade,
}

impl Upgrade {
    /// Takes the upgrade out of a request that asks for one (`Connection: upgrade`).
    pub(super) fn requested(parts: &mut http::request::Parts) -> Option<Upgrade> {
        let protocol = parts.headers.get(UPGRADE)?.clone();
        let asks = parts.headers.get_all(CONNECTION).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
            })
        });
        if !asks {
            return None;
        }
        let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        Some(Upgrade { protocol, client })
    }
}

/// Puts back the two hop-by-hop headers of an upgrade that scrubbing removed.
pub(super) fn restore_upgrade(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(UPGRADE, protocol.clone());
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

impl Gateway {
    /// Turns the client's request head into the upstream's: strip everything the
    /// client may not decide, then add the gateway's own headers.
    pub(super) fn prepare_upstream(
        &self,
        parts: &mut http::request::Parts,
        cx: &Context,
        upgrade: Option<&Upgrade>,
    ) -> Result<(), http::Error> {
        // Taken before scrubbing: `Connection: host` would remove it.
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::scrub_request(&mut parts.headers);
        headers::remove_cookies(&mut parts.headers, &self.resolver.cookies.both());
        cx.forwarded
            .apply(&mut parts.headers, cx.scheme, host.as_ref());
        parts.headers.insert(X_REQUEST_ID, cx.id.clone());
        if let Some(upgrade) = upgrade {
            restore_upgrade(&mut parts.headers, &upgrade.protocol);
        }
        let host = host.or_else(|| HeaderValue::from_str(self.upstream.authority().as_str()).ok());
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        if let Some(session) = &cx.identity.session {
            parts
                .headers
                .insert(self.session_header.clone(), handle_value(session.handle()));
            if let Some(parent) = session.parent_once() {
                parts.headers.insert(X_SESSION_PARENT, handle_value(parent));
            }
        }
        let query = parts.uri.query().and_then(query::strip_proxy_params);
        parts.uri = self.upstream.uri_for(parts.uri.path(), query.as_deref())?;
        // The upstream pool speaks HTTP/1.1 whatever the client spoke (h2 included).
        parts.version = Version::HTTP_11;
        Ok(())
    }

    /// On `101 Switching Protocols`, joins both sides of the upgrade in a tunnel and
    /// returns the protocol to announce to the client.
    pub(super) fn start_tunnel(
        &self,
        upgrade: Upgrade,
        response: &mut Response<Incoming>,
        cx: &Context,
    ) -> Option<HeaderValue> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        let upstream_side = hyper::upgrade::on(response);
        let session = cx
            .identity
            .session
            .clone()
            .map(|s| (s, Arc::clone(&self.store), self.clock));
        self.tunnels.spawn(upgrade.client, upstream_side, session);
        Some(upgrade.protocol)
    }
}

/// Strips identity headers from request trailers too (a chunked body can carry an
/// `X-Session` trailer after the headers were checked).
pub(super) fn scrub_trailers(incoming: Incoming) -> ProxyBody {
    incoming
        .map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                headers::scrub_request(&mut trailers);
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        })
        .map_err(Into::into)
        .boxed_unsync()
}

fn handle_value(handle: Handle) -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(handle.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static(""))
}
