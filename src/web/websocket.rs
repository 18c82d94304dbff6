//! The WebSocket opening handshake (RFC 6455 §4), as far as a proxy must check it
//! before it hands a client a raw tunnel to the backend.
//!
//! An upgraded connection leaves HTTP: whatever flows through it is never scrubbed,
//! identified or framed by the gateway again. A proxy that forwards any `Upgrade`
//! (`h2c` above all) or believes any upstream `101` gives the client a pipe past every
//! check (h2c smuggling, the WebSocket-`101` variant). So a tunnel opens only for a
//! WebSocket handshake both sides completed: the client asked for it properly
//! ([`Handshake::requested`]), and the upstream answered with the one
//! `Sec-WebSocket-Accept` that proves it read this very request
//! ([`Handshake::completed_by`]). Everything else is a plain request, and a `101` to
//! anything else is the upstream's error.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version RFC 6455 defines.
const VERSION: &[u8] = b"13";

/// A `Sec-WebSocket-Key` is the base64 of this many random bytes.
const KEY_BYTES: usize = 16;

/// A client's complete WebSocket handshake request, remembered until the upstream
/// answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The `Sec-WebSocket-Accept` the upstream must answer with.
    accept: HeaderValue,
}

impl Handshake {
    /// The handshake a request asks for, if it is a complete and valid one
    /// (RFC 6455 §4.1): an HTTP/1.1 `GET` with `Connection: upgrade`, an `Upgrade`
    /// listing `websocket`, exactly one `Sec-WebSocket-Key` that is the base64 of 16
    /// bytes, and exactly one `Sec-WebSocket-Version: 13`. `None` for anything else,
    /// `h2c` included: such a request goes on as a plain request.
    pub fn requested(method: &Method, version: Version, headers: &HeaderMap) -> Option<Handshake> {
        if method != Method::GET
            || version != Version::HTTP_11
            || !has_token(headers, &CONNECTION, "upgrade")
            || !has_token(headers, &UPGRADE, "websocket")
            || single(headers, &SEC_WEBSOCKET_VERSION)?.as_bytes() != VERSION
        {
            return None;
        }
        let key = single(headers, &SEC_WEBSOCKET_KEY)?;
        let decoded = STANDARD.decode(key.as_bytes()).ok()?;
        if decoded.len() != KEY_BYTES {
            return None;
        }
        let accept = HeaderValue::from_str(&accept_for(key.as_bytes())).ok()?;
        Some(Handshake { accept })
    }

    /// Whether the headers of an upstream `101` complete this handshake
    /// (RFC 6455 §4.1, the client's checks): `Upgrade: websocket`,
    /// `Connection: upgrade`, and exactly one `Sec-WebSocket-Accept` equal to the one
    /// derived from the client's key.
    pub fn completed_by(&self, headers: &HeaderMap) -> bool {
        let upgrade_is_websocket = headers.get_all(UPGRADE).iter().count() == 1
            && headers
                .get(UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        upgrade_is_websocket
            && has_token(headers, &CONNECTION, "upgrade")
            && single(headers, &SEC_WEBSOCKET_ACCEPT).is_some_and(|v| *v == self.accept)
    }
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
pub fn accept_for(key: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(GUID);
    STANDARD.encode(context.finish())
}

/// The value of a header that must appear exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// Whether any line of a comma-separated header lists `token` (case-insensitive;
/// a protocol's `/version` suffix is ignored, as in `Upgrade: websocket/13`).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|line| {
        line.as_bytes().split(|&b| b == b',').any(|item| {
            let item = item.trim_ascii();
            let protocol = item.split(|&b| b == b'/').next().unwrap_or(item);
            protocol.trim_ascii().eq_ignore_ascii_case(token.as_bytes())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    /// RFC 6455 §1.3's example.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn request(extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", KEY),
            ("sec-websocket-version", "13"),
        ]);
        for (name, value) in extra {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn asked(headers: &HeaderMap) -> Option<Handshake> {
        Handshake::requested(&Method::GET, Version::HTTP_11, headers)
    }

    #[test]
    fn the_rfc_example_accept() {
        assert_eq!(accept_for(KEY.as_bytes()), ACCEPT);
    }

    #[test]
    fn a_complete_request_is_a_handshake() {
        let handshake = asked(&request(&[])).expect("valid handshake");
        assert_eq!(handshake.accept, ACCEPT);
        assert!(asked(&request(&[("upgrade", "WebSocket")])).is_some());
    }

    #[test]
    fn anything_else_is_no_handshake() {
        for bad in [
            request(&[("upgrade", "h2c")]),
            request(&[("connection", "keep-alive")]),
            request(&[("sec-websocket-version", "8")]),
            request(&[("sec-websocket-key", "c2hvcnQ=")]),
            request(&[("sec-websocket-key", "not base64 at all!!!!!!!")]),
            request(&[("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA")]),
        ] {
            assert!(asked(&bad).is_none(), "{bad:?}");
        }
        let mut no_key = request(&[]);
        no_key.remove(SEC_WEBSOCKET_KEY);
        assert!(asked(&no_key).is_none());
        let mut two_keys = request(&[]);
        two_keys.append(SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
        assert!(asked(&two_keys).is_none());
        let mut no_version = request(&[]);
        no_version.remove(SEC_WEBSOCKET_VERSION);
        assert!(asked(&no_version).is_none());
        assert!(Handshake::requested(&Method::POST, Version::HTTP_11, &request(&[])).is_none());
        assert!(Handshake::requested(&Method::GET, Version::HTTP_10, &request(&[])).is_none());
        assert!(Handshake::requested(&Method::GET, Version::HTTP_2, &request(&[])).is_none());
    }

    #[test]
    fn only_the_matching_accept_completes_it() {
        let handshake = asked(&request(&[])).unwrap();
        let good = map(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ]);
        assert!(handshake.completed_by(&good));
        let mut wrong = good.clone();
        wrong.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        );
        assert!(!handshake.completed_by(&wrong));
        let mut missing = good.clone();
        missing.remove(SEC_WEBSOCKET_ACCEPT);
        assert!(!handshake.completed_by(&missing));
        let mut twice = good.clone();
        twice.append(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static(ACCEPT));
        assert!(!handshake.completed_by(&twice));
        let mut h2c = good.clone();
        h2c.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!handshake.completed_by(&h2c));
        let mut no_connection = good.clone();
        no_connection.remove(CONNECTION);
        assert!(!handshake.completed_by(&no_connection));
    }
}
