//! Stage 4, the upstream request head: strip everything the client may not decide,
//! then add the gateway's own headers (strip-then-inject, DESIGN.md §3, §5).

use std::sync::Arc;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use super::Gateway;
use crate::context::Context;
use crate::net::Lease;
use crate::session::identity::CookieNames;
use crate::session::Handle;
use crate::web::body::ProxyBody;
use crate::web::headers::{self, Scrubber, X_REQUEST_ID, X_SESSION_PARENT};
use crate::web::query;
use crate::web::refusal::{Refusal, UpstreamError};
use crate::web::websocket::Handshake;

/// A WebSocket handshake in flight: the only upgrade the gateway tunnels.
pub(super) struct Upgrade {
    handshake: Handshake,
    /// The client side of the connection, handed over once we answer 101.
    client: hyper::upgrade::OnUpgrade,
    /// The client connection's lease: the tunnel holds its `max_connections` permit.
    lease: Lease,
}

impl Upgrade {
    /// Takes the upgrade out of a request that is a complete WebSocket handshake
    /// (see [`Handshake::requested`]). Any other `Upgrade` (`h2c` above all) is not
    /// an upgrade at all: scrubbing removes the header as hop-by-hop and the request
    /// goes on as a plain one.
    pub(super) fn requested(parts: &mut http::request::Parts) -> Option<Upgrade> {
        let handshake = Handshake::requested(&parts.method, parts.version, &parts.headers)?;
        let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        let lease = parts.extensions.remove::<Lease>()?;
        Some(Upgrade {
            handshake,
            client,
            lease,
        })
    }
}

/// Puts back the two hop-by-hop headers of a WebSocket upgrade that scrubbing removed
/// (only `websocket`, whatever else the client listed).
pub(super) fn restore_upgrade(headers: &mut HeaderMap) {
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Settles which host a request is for, in stage 1 (RFC 9112 §3.2, §3.2.2; RFC 9113
/// §8.3.1). An HTTP/1.x request with more than one `Host`, or a `Host` that is not
/// `host[:port]`, and an HTTP/1.1 request without one, are refused. A target that
/// names an authority — the absolute form (`GET http://host/path`) or HTTP/2's
/// `:authority` — decides the host, and `Host` is set to it: from here on `Host` is
/// the one answer every stage uses (origin checks, `X-Forwarded-Host`, upstream).
pub(super) fn settle_host<B>(request: &mut Request<B>) -> Result<(), Refusal> {
    let version = request.version();
    let http1 = matches!(
        version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    let authority = request.uri().authority().cloned();
    if http1 {
        let mut hosts = request.headers().get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return Err(Refusal::BadHost),
            (None, _) if version == Version::HTTP_11 => return Err(Refusal::BadHost),
            // A received Host is ignored when the target has an authority.
            (Some(host), None) if authority.is_none() && !valid_host(host) => {
                return Err(Refusal::BadHost)
            }
            _ => {}
        }
    }
    if let Some(authority) = authority {
        let host = HeaderValue::from_str(host_of(&authority)).map_err(|_| Refusal::BadHost)?;
        request.headers_mut().insert(HOST, host);
    }
    Ok(())
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2): an authority without user info,
/// or empty.
fn valid_host(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty() || (!bytes.contains(&b'@') && Authority::try_from(bytes).is_ok())
}

/// An authority without its (deprecated) user info.
fn host_of(authority: &Authority) -> &str {
    let text = authority.as_str();
    text.rsplit_once('@').map_or(text, |(_, host)| host)
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
        // Taken before scrubbing: `Connection: host` would remove it. Stage 1 made it
        // the one host of the request (see `settle_host`).
        let host = parts.headers.get(HOST).cloned();
        self.scrubber.scrub_request(&mut parts.headers);
        headers::remove_cookies(&mut parts.headers, &PROXY_COOKIES);
        self.strip_jarred(&mut parts.headers);
        cx.forwarded
            .apply(&mut parts.headers, cx.scheme, host.as_ref());
        parts.headers.insert(X_REQUEST_ID, cx.id.clone());
        if upgrade.is_some() {
            restore_upgrade(&mut parts.headers);
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

    /// What an upstream `101 Switching Protocols` does: `Ok(true)` when it completes
    /// the client's WebSocket handshake — both sides are then joined in a tunnel —
    /// `Ok(false)` for any other status. A `101` to a request that asked for no
    /// WebSocket, or one that does not complete its handshake (another protocol, a
    /// wrong or missing `Sec-WebSocket-Accept`), is the upstream's protocol error: no
    /// tunnel, and the caller answers 502.
    pub(super) fn switch_protocols(
        &self,
        upgrade: Option<Upgrade>,
        response: &mut Response<Incoming>,
        cx: &Context,
    ) -> Result<bool, Refusal> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(false);
        }
        let Some(upgrade) =
            upgrade.filter(|upgrade| upgrade.handshake.completed_by(response.headers()))
        else {
            return Err(Refusal::Upstream(UpstreamError::Protocol));
        };
        let upstream_side = hyper::upgrade::on(response);
        let session = cx
            .identity
            .session
            .clone()
            .map(|s| (s, Arc::clone(&self.store), self.clock));
        self.tunnels
            .spawn(upgrade.client, upstream_side, upgrade.lease, session);
        Ok(true)
    }
}

/// Every name the gateway's cookies go by, with and without `__Host-`: whichever the
/// listener uses, none of them is the upstream's to read or set.
pub(super) const PROXY_COOKIES: [&str; 4] = CookieNames.both();

/// Strips identity headers from request trailers too (a chunked body can carry an
/// `X-Session` trailer after the headers were checked).
pub(super) fn scrub_trailers(incoming: Incoming, scrubber: Scrubber) -> ProxyBody {
    incoming
        .map_frame(move |frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                scrubber.scrub_request(&mut trailers);
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
