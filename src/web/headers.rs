//! Header hygiene on the way in and out.
//!
//! The proxy's identity model (DESIGN.md §3) only holds if the upstream can trust
//! every `X-Session*` header it receives, so the request path always runs in two
//! steps: **strip, then inject**. First every client-sent header the proxy owns is
//! removed ([`Scrubber::scrub_request`]: the `X-Session*` namespace and the header
//! the handle travels in, `upstream.header`, whatever its name), then the proxy adds
//! its own (`X-Forwarded-*` from [`super::forwarded`], [`request_id`], the handle).
//! Doing it in the other order, or only overwriting with `insert`, would let a second
//! spelling (`X_Session`, a trailer, a header the proxy does not set on this request)
//! reach the backend and be believed.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message,
//! so they never cross the proxy in either direction. That includes every header
//! *named* in a `Connection` line: a client may declare any header hop-by-hop, and a
//! proxy must drop it. That is also why `Connection: X-Session` or
//! `Connection: Cookie` simply makes the named header disappear: the header would
//! be removed (or replaced) anyway, and removing it is what the RFC asks for.
//! Callers that tunnel an upgrade (WebSocket) must note the upgrade *before*
//! scrubbing and re-add `Connection: upgrade` / `Upgrade` for the upstream hop.
//!
//! Everything here is synchronous and avoids allocating on the common path: the
//! scrubbers only allocate when there is something unusual to remove, and the
//! cookie helpers only rebuild the `Cookie` header when it has to change.

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, COOKIE, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Default name of the header that carries the session handle upstream
/// (`upstream.header` can rename it; every spelling is still scrubbed).
pub const X_SESSION: HeaderName = HeaderName::from_static("x-session");
/// The browser's session token (agent → proxy; proxy → browser after a rotation).
pub const X_SESSION_TOKEN: HeaderName = HeaderName::from_static("x-session-token");
/// Session state on every proxied and reserved response.
pub const X_SESSION_STATE: HeaderName = HeaderName::from_static("x-session-state");
/// Parent handle on a forked session's first upstream request.
pub const X_SESSION_PARENT: HeaderName = HeaderName::from_static("x-session-parent");
/// Upstream control: end this session (reason `upstream`).
pub const X_SESSION_END: HeaderName = HeaderName::from_static("x-session-end");
/// Upstream control: set this session's timeout in seconds.
pub const X_SESSION_TIMEOUT: HeaderName = HeaderName::from_static("x-session-timeout");
/// Upstream control: issue a new token for the same handle.
pub const X_SESSION_ROTATE: HeaderName = HeaderName::from_static("x-session-rotate");
/// Upstream control: `off` disables agent injection for this response.
pub const X_SESSION_INJECT: HeaderName = HeaderName::from_static("x-session-inject");
/// Correlation id, kept when well-formed (see [`request_id`]).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Sessiongate-Agent: 1` marks browser-mode reserved calls as made by the agent.
/// It starts with `x-session`, so it is scrubbed before forwarding like the rest.
pub const X_SESSIONGATE_AGENT: HeaderName = HeaderName::from_static("x-sessiongate-agent");
/// De-facto standard client address chain.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// De-facto standard original scheme.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// De-facto standard original host.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Hop-by-hop header not among `http`'s constants.
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Non-standard hop-by-hop header some old clients still send.
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fixed hop-by-hop list; `Connection` itself goes last so that the headers it
/// names can be read first.
const HOP_BY_HOP: [HeaderName; 9] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    CONNECTION,
];

/// The namespace the proxy owns, compared after folding `_` to `-`.
const SESSION_PREFIX: &[u8] = b"x-session";

/// Longest client `X-Request-Id` that is passed through unchanged.
const MAX_REQUEST_ID_LEN: usize = 128;

/// True for every header in the proxy's own namespace: the name, with `_` folded to
/// `-`, starts with `x-session`.
///
/// The `_` fold matters because many CGI-style backends (PHP, classic ASP, WSGI)
/// map both `X-Session` and `X_Session` to the same `HTTP_X_SESSION` variable, so a
/// client could otherwise smuggle a second handle past an exact-name check.
/// [`HeaderName`] is always lowercase, so no case folding is needed.
pub fn is_session_header(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    name.len() >= SESSION_PREFIX.len()
        && name
            .iter()
            .zip(SESSION_PREFIX)
            .all(|(&have, &want)| fold_underscore(have) == want)
}

fn fold_underscore(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b
    }
}

/// Removes hop-by-hop headers: the fixed list (`connection`, `keep-alive`,
/// `proxy-connection`, `proxy-authenticate`, `proxy-authorization`, `te`,
/// `trailer`, `transfer-encoding`, `upgrade`) and every header named in any
/// `Connection` line (comma-separated, case-insensitive, surrounding whitespace
/// ignored, invalid names skipped).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Read the Connection lines before anything is removed. Cloning a HeaderValue
    // only bumps a reference count, and collecting the (rare) extra lines into an
    // empty Vec does not allocate when there is just one line.
    let mut lines = headers.get_all(CONNECTION).iter();
    let first = lines.next().cloned();
    let rest: Vec<HeaderValue> = lines.cloned().collect();
    for line in first.iter().chain(&rest) {
        for token in line.as_bytes().split(|&b| b == b',') {
            let token = trim_ows(token);
            // `remove` with a &str lowercases on the stack and returns None for an
            // invalid name, so junk tokens are harmless.
            if let Ok(name) = std::str::from_utf8(token) {
                if !name.is_empty() {
                    headers.remove(name);
                }
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Removes every header for which [`is_session_header`] holds.
pub fn strip_session_headers(headers: &mut HeaderMap) {
    // A request usually carries zero or one such header (the agent's token), so
    // re-scanning after each removal beats collecting names into a Vec; hyper caps
    // the header count, which bounds the quadratic worst case.
    while let Some(name) = headers.keys().find(|n| is_session_header(n)).cloned() {
        headers.remove(&name);
    }
}

/// Strip-then-inject for one deployment: what a client may not send upstream.
///
/// That is the whole `X-Session*` namespace ([`is_session_header`]) and the header
/// the gateway sends the handle in (`upstream.header`), which an operator may have
/// named outside that namespace (`X-App-Session`). Both are matched in every case and
/// `_`/`-` spelling, for the same reason as the namespace: a CGI-style backend folds
/// `X_App_Session` into the same variable as `X-App-Session`. The name is passed in
/// (this layer knows nothing of the configuration); cloning a `Scrubber` only bumps a
/// reference count, so each request's trailer filter can own one.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// The configured header name with `_` folded to `-`, when it lies outside the
    /// namespace (inside it, [`is_session_header`] already covers every spelling).
    extra: Option<Bytes>,
}

impl Scrubber {
    /// A scrubber for the namespace plus `session_header`.
    pub fn new(session_header: &HeaderName) -> Scrubber {
        let extra = (!is_session_header(session_header)).then(|| {
            let folded: Vec<u8> = session_header
                .as_str()
                .bytes()
                .map(fold_underscore)
                .collect();
            Bytes::from(folded)
        });
        Scrubber { extra }
    }

    /// True for every spelling of a header the proxy owns on the way upstream.
    /// [`HeaderName`] is always lowercase, so only `_` needs folding.
    pub fn owns(&self, name: &HeaderName) -> bool {
        is_session_header(name)
            || self.extra.as_ref().is_some_and(|extra| {
                let name = name.as_str().as_bytes();
                name.len() == extra.len()
                    && name
                        .iter()
                        .zip(extra.iter())
                        .all(|(&have, &want)| fold_underscore(have) == want)
            })
    }

    /// Removes every header the proxy owns (see [`Scrubber::owns`]).
    pub fn strip(&self, headers: &mut HeaderMap) {
        // As in `strip_session_headers`: zero or one hit is the common case.
        while let Some(name) = headers.keys().find(|n| self.owns(n)).cloned() {
            headers.remove(&name);
        }
    }

    /// Everything a client may not send upstream: hop-by-hop headers (including
    /// `Connection`-named ones), then every header the proxy owns. Use it for both
    /// the request headers and the request trailers, before adding the proxy's own.
    pub fn scrub_request(&self, headers: &mut HeaderMap) {
        strip_hop_by_hop(headers);
        self.strip(headers);
    }
}

/// Hop-by-hop removal for upstream responses (same list as for requests).
///
/// The upstream's `X-Session-*` control headers are deliberately left in place:
/// the caller consumes them first and then removes them with
/// [`strip_session_headers`] before adding `X-Session-State`.
pub fn scrub_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// Whether an upstream message's framing is ambiguous (RFC 9112 §6.1, §6.3):
/// `Transfer-Encoding` together with `Content-Length`, or transfer codings other than
/// one `chunked`. hyper reads such a message by `Transfer-Encoding` alone, but a
/// sender that meant `Content-Length` (or a coding hyper passes through undecoded)
/// frames it differently, and whatever lies between the two readings is another
/// message on a shared upstream connection. Such a response is refused (502, as nginx
/// does), never forwarded with a `Content-Length` that does not describe the body.
pub fn ambiguous_framing(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return false;
    };
    headers.contains_key(CONTENT_LENGTH)
        || codings.next().is_some()
        || !trim_ows(first.as_bytes()).eq_ignore_ascii_case(b"chunked")
}

/// Removes every `Set-Cookie` that sets one of the named cookies (names compared
/// ASCII case-insensitively: browsers match the `__Host-` prefix that way, and a
/// case variant of the gateway's cookie is no cookie an upstream needs). Returns how
/// many were removed; the others keep their order.
pub fn remove_set_cookies(headers: &mut HeaderMap, names: &[&str]) -> usize {
    take_set_cookies(headers, |name| {
        names
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
    })
    .len()
}

/// Removes and returns every `Set-Cookie` whose cookie name `take` picks (see
/// [`set_cookie_name`]; nameless ones are never picked); the others keep their order.
pub fn take_set_cookies(
    headers: &mut HeaderMap,
    mut take: impl FnMut(&[u8]) -> bool,
) -> Vec<HeaderValue> {
    let mut doomed = |value: &HeaderValue| set_cookie_name(value.as_bytes()).is_some_and(&mut take);
    if !headers.get_all(SET_COOKIE).iter().any(&mut doomed) {
        return Vec::new();
    }
    let all: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    headers.remove(SET_COOKIE);
    let mut taken = Vec::new();
    for value in all {
        if doomed(&value) {
            taken.push(value);
        } else {
            headers.append(SET_COOKIE, value);
        }
    }
    taken
}

/// The cookie name of a `Set-Cookie` value: before the first `=` of the part before
/// the first `;`, trimmed (RFC 6265 §5.2). None without `=` (a nameless cookie).
fn set_cookie_name(value: &[u8]) -> Option<&[u8]> {
    let pair = value.split(|&b| b == b';').next()?;
    split_pair(pair).map(|(name, _)| name)
}

/// Adds `name` to `Vary` unless it is listed already (or `Vary: *`).
pub fn vary_on(headers: &mut HeaderMap, name: HeaderName) {
    let listed = headers.get_all(VARY).iter().any(|line| {
        line.as_bytes().split(|&b| b == b',').any(|token| {
            let token = trim_ows(token);
            token == b"*" || token.eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    });
    if !listed {
        headers.append(VARY, HeaderValue::from(name));
    }
}

/// Every value of cookie `name` across all `Cookie` lines (HTTP/2 sends one line per
/// cookie), in order. Names match exactly (cookie names are case-sensitive);
/// whitespace around names and values is ignored; pairs without `=` and pairs that
/// are not UTF-8 are skipped. Values are returned raw (no unquoting, no decoding):
/// the proxy's own cookies are base64url.
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b';'))
        .filter_map(move |pair| {
            let (k, v) = split_pair(pair)?;
            if k == name.as_bytes() {
                std::str::from_utf8(v).ok()
            } else {
                None
            }
        })
}

/// Removes the named cookies from every `Cookie` line and joins what remains into
/// one `Cookie` header (`"; "`-separated, each kept pair byte-for-byte apart from
/// surrounding whitespace), or removes the header when nothing remains.
///
/// The proxy's own cookies (`sg_browser`, `sg_session`, their `__Host-` forms) carry
/// secrets the upstream must never see. Several lines are joined even when nothing
/// was removed, because HTTP/1.1 allows one `Cookie` line only (RFC 9113 §8.2.3
/// asks for exactly this join when an HTTP/2 request goes on over HTTP/1.1). A
/// single line with nothing to remove is left untouched, without allocating.
pub fn remove_cookies(headers: &mut HeaderMap, names: &[&str]) {
    remove_cookies_where(headers, |name| names.iter().any(|n| n.as_bytes() == name));
}

/// [`remove_cookies`] for every cookie whose name `doomed` picks.
pub fn remove_cookies_where(headers: &mut HeaderMap, doomed: impl Fn(&[u8]) -> bool) {
    let is_doomed = |pair: &[u8]| split_pair(pair).is_some_and(|(k, _)| doomed(k));
    let mut lines = 0usize;
    let mut total = 0usize;
    let mut hit = false;
    for line in headers.get_all(COOKIE) {
        lines += 1;
        total += line.len();
        hit = hit || line.as_bytes().split(|&b| b == b';').any(is_doomed);
    }
    if !hit && lines <= 1 {
        return;
    }
    let mut joined = Vec::with_capacity(total + 2 * lines);
    for line in headers.get_all(COOKIE) {
        for pair in line.as_bytes().split(|&b| b == b';') {
            let pair = trim_ows(pair);
            if pair.is_empty() || is_doomed(pair) {
                continue;
            }
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(pair);
        }
    }
    if joined.is_empty() {
        headers.remove(COOKIE);
        return;
    }
    match HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        Ok(value) => {
            headers.insert(COOKIE, value);
        }
        // Unreachable (the pieces came from valid header values), but if it ever
        // happened, dropping all cookies is the fail-closed answer: never leak the
        // proxy's cookies upstream.
        Err(_) => {
            headers.remove(COOKIE);
        }
    }
}

/// Adds `pairs` (`name=value; …`) to the request's `Cookie` header, after the
/// cookies already there (one line: call [`remove_cookies`] first, which joins).
pub fn append_cookies(headers: &mut HeaderMap, pairs: &str) {
    let value = match headers.get(COOKIE) {
        Some(line) if !line.is_empty() => {
            let mut joined = Vec::with_capacity(line.len() + 2 + pairs.len());
            joined.extend_from_slice(line.as_bytes());
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(pairs.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(joined))
        }
        _ => HeaderValue::from_str(pairs),
    };
    // The pairs came from valid `Set-Cookie` values, so this cannot fail; if it did,
    // the request goes on without the jar's cookies.
    if let Ok(value) = value {
        headers.insert(COOKIE, value);
    }
}

/// Splits `name=value` at the first `=` and trims both sides; None without `=`.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..])))
}

/// Trims optional whitespace (SP / HTAB, RFC 9110 §5.6.3) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A request's id, settled as the request arrives (see [`request_id`]) and kept in
/// its extensions, so that whoever serves or logs the request uses the same one.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The request id to send upstream and log: the client's first `X-Request-Id` when
/// it is 1–128 characters of `[A-Za-z0-9._-]`, else a fresh hyphenated UUID v4.
///
/// The charset keeps ids safe to put into log lines and response headers verbatim;
/// only the first line counts so that a request has exactly one id.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID) {
        let bytes = id.as_bytes();
        if (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return id.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is hex digits and hyphens only, so the error branch cannot
    // be taken; it exists to keep a panic off the hot path.
    HeaderValue::from_str(text)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-0000-0000-000000000000"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A header map of `(name, value)` pairs, in order (shared with `web::forwarded`).
    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    /// Every value of `name`, in order.
    pub(crate) fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn name(s: &str) -> HeaderName {
        HeaderName::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn session_header_variants() {
        for n in [
            "X-Session",
            "x_session",
            "X-Session-Token",
            "X_SESSION_STATE",
            "x-session_parent",
            "X_Session-End",
            "x-sessiongate-agent",
            "x-sessionid",
        ] {
            assert!(is_session_header(&name(n)), "{n}");
        }
        for n in [
            "x-sessio",
            "session",
            "x-request-id",
            "xsession",
            "x--session",
            "cookie",
        ] {
            assert!(!is_session_header(&name(n)), "{n}");
        }
    }

    #[test]
    fn constants_are_session_headers_where_they_should_be() {
        for n in [
            X_SESSION,
            X_SESSION_TOKEN,
            X_SESSION_STATE,
            X_SESSION_PARENT,
            X_SESSION_END,
            X_SESSION_TIMEOUT,
            X_SESSION_ROTATE,
            X_SESSION_INJECT,
            X_SESSIONGATE_AGENT,
        ] {
            assert!(is_session_header(&n), "{n}");
        }
        assert!(!is_session_header(&X_REQUEST_ID));
    }

    #[test]
    fn hop_by_hop_fixed_list() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x-foo"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(values(&h, "accept"), ["*/*"]);
    }

    #[test]
    fn connection_named_headers_go_across_lines() {
        let mut h = map(&[
            ("connection", "close, X-Foo ,\tx-bar"),
            ("connection", "X-Session"),
            ("connection", "Cookie"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-bar", "3"),
            ("x-session", "evil"),
            ("cookie", "a=b"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(values(&h, "x-keep"), ["yes"]);
    }

    #[test]
    fn connection_junk_tokens_are_ignored() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static(",, ,bad name,(x),"));
        h.append(
            CONNECTION,
            HeaderValue::from_bytes(b"\xff\xfe, x-a").unwrap(),
        );
        h.append(name("x-a"), HeaderValue::from_static("1"));
        h.append(name("x-b"), HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-b"));
    }

    #[test]
    fn session_headers_all_spellings_removed() {
        let mut h = map(&[
            ("x-session", "a"),
            ("x_session", "b"),
            ("X-Session-Token", "c"),
            ("X_SESSION_STATE", "d"),
            ("x-sessiongate-agent", "1"),
            ("x-session", "e"),
            ("accept", "*/*"),
        ]);
        strip_session_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn scrub_request_handles_trailer_maps() {
        let mut trailers = map(&[("x_session", "forged"), ("x-checksum", "abc")]);
        Scrubber::default().scrub_request(&mut trailers);
        assert_eq!(trailers.len(), 1);
        assert!(trailers.contains_key("x-checksum"));
    }

    #[test]
    fn scrub_request_then_inject_leaves_only_ours() {
        let mut h = map(&[
            ("connection", "keep-alive, x-trace"),
            ("x-trace", "1"),
            ("x-session", "forged"),
            ("X_Session", "forged2"),
            ("host", "example.com"),
        ]);
        Scrubber::default().scrub_request(&mut h);
        h.insert(X_SESSION, HeaderValue::from_static("real"));
        assert_eq!(values(&h, "x-session"), ["real"]);
        assert!(!h.contains_key("x_session"));
        assert!(!h.contains_key("x-trace"));
        assert!(!h.contains_key(CONNECTION));
        assert_eq!(values(&h, "host"), ["example.com"]);
    }

    #[test]
    fn scrubber_strips_the_configured_header_in_every_spelling() {
        let scrubber = Scrubber::new(&name("x-app-session"));
        let mut h = map(&[
            ("x-app-session", "a"),
            ("X_App_Session", "b"),
            ("X-APP_SESSION", "c"),
            ("x_app-session", "d"),
            ("x-session", "e"),
            ("x-app-sessions", "keep"),
            ("x-app", "keep"),
            ("accept", "*/*"),
        ]);
        scrubber.scrub_request(&mut h);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-app", "x-app-sessions"]);
    }

    #[test]
    fn scrubber_with_an_underscored_configured_name() {
        let scrubber = Scrubber::new(&name("my_handle"));
        assert!(scrubber.owns(&name("my-handle")));
        assert!(scrubber.owns(&name("MY_HANDLE")));
        assert!(!scrubber.owns(&name("my-handles")));
        assert!(!scrubber.owns(&name("myhandle")));
    }

    #[test]
    fn default_scrubber_is_the_namespace() {
        let scrubber = Scrubber::default();
        assert!(scrubber.owns(&name("x_session_token")));
        assert!(!scrubber.owns(&name("x-app-session")));
        // A configured name inside the namespace adds nothing.
        assert!(Scrubber::new(&X_SESSION).extra.is_none());
    }

    #[test]
    fn scrub_response_keeps_control_headers() {
        let mut h = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("x-session-end", "1"),
            ("content-type", "text/html"),
        ]);
        scrub_response(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key(X_SESSION_END));
    }

    #[test]
    fn framing_with_both_lengths_or_odd_codings_is_ambiguous() {
        assert!(!ambiguous_framing(&map(&[("content-length", "5")])));
        assert!(!ambiguous_framing(&map(&[(
            "transfer-encoding",
            "chunked"
        )])));
        assert!(!ambiguous_framing(&map(&[(
            "transfer-encoding",
            "Chunked"
        )])));
        assert!(!ambiguous_framing(&HeaderMap::new()));
        for bad in [
            map(&[("transfer-encoding", "chunked"), ("content-length", "5")]),
            map(&[("content-length", "5"), ("transfer-encoding", "gzip")]),
            map(&[("transfer-encoding", "gzip, chunked")]),
            map(&[("transfer-encoding", "chunked, chunked")]),
            map(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ]),
            map(&[("transfer-encoding", "identity")]),
        ] {
            assert!(ambiguous_framing(&bad), "{bad:?}");
        }
    }

    #[test]
    fn proxy_set_cookies_are_removed_in_any_case() {
        let mut h = map(&[
            ("set-cookie", "a=1; Path=/"),
            ("set-cookie", "sg_session=evil; Path=/"),
            ("set-cookie", " __host-SG_BROWSER = evil ;Secure"),
            ("set-cookie", "__Host-sg_session=evil"),
            ("set-cookie", "sg_sessionx=keep"),
            ("set-cookie", "nameless"),
            ("set-cookie", "b=2"),
        ]);
        let names = [
            "sg_browser",
            "sg_session",
            "__Host-sg_browser",
            "__Host-sg_session",
        ];
        assert_eq!(remove_set_cookies(&mut h, &names), 3);
        assert_eq!(
            values(&h, "set-cookie"),
            ["a=1; Path=/", "sg_sessionx=keep", "nameless", "b=2"]
        );
        assert_eq!(remove_set_cookies(&mut h, &names), 0);
    }

    #[test]
    fn vary_is_added_once() {
        let mut h = HeaderMap::new();
        vary_on(&mut h, COOKIE);
        vary_on(&mut h, COOKIE);
        assert_eq!(values(&h, "vary"), ["cookie"]);
        let mut h = map(&[("vary", "Accept-Encoding, Cookie")]);
        vary_on(&mut h, COOKIE);
        assert_eq!(values(&h, "vary"), ["Accept-Encoding, Cookie"]);
        let mut h = map(&[("vary", "*")]);
        vary_on(&mut h, COOKIE);
        assert_eq!(values(&h, "vary"), ["*"]);
        let mut h = map(&[("vary", "accept-encoding")]);
        vary_on(&mut h, COOKIE);
        assert_eq!(values(&h, "vary"), ["accept-encoding", "cookie"]);
    }

    #[test]
    fn cookie_values_across_lines() {
        let h = map(&[
            ("cookie", "a=1; sg_browser=k1;b=2"),
            ("cookie", "sg_browser=k2"),
            (
                "cookie",
                " junk ; ;=x; sg_browserx=no; SG_BROWSER=no;  sg_browser = k3 ",
            ),
        ]);
        let got: Vec<_> = cookie_values(&h, "sg_browser").collect();
        assert_eq!(got, ["k1", "k2", "k3"]);
        assert_eq!(cookie_values(&h, "missing").count(), 0);
        let empty = HeaderMap::new();
        assert_eq!(cookie_values(&empty, "a").count(), 0);
    }

    #[test]
    fn cookie_values_skip_non_utf8() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_bytes(b"a=\xff; a=ok").unwrap());
        assert_eq!(cookie_values(&h, "a").collect::<Vec<_>>(), ["ok"]);
    }

    #[test]
    fn cookie_value_keeps_inner_equals() {
        let h = map(&[("cookie", "t=abc==; u=")]);
        assert_eq!(cookie_values(&h, "t").collect::<Vec<_>>(), ["abc=="]);
        assert_eq!(cookie_values(&h, "u").collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn remove_cookies_joins_lines() {
        let mut h = map(&[
            ("cookie", "a=1; sg_browser=k;b=\"q x\""),
            ("cookie", "__Host-sg_session=t"),
            ("cookie", "c=3"),
        ]);
        remove_cookies(&mut h, &["sg_browser", "__Host-sg_session"]);
        assert_eq!(values(&h, "cookie"), ["a=1; b=\"q x\"; c=3"]);
    }

    #[test]
    fn remove_cookies_removes_header_when_empty() {
        let mut h = map(&[("cookie", "sg_browser=k"), ("cookie", " ; sg_session=t ;")]);
        remove_cookies(&mut h, &["sg_browser", "sg_session"]);
        assert!(!h.contains_key(COOKIE));
    }

    #[test]
    fn remove_cookies_untouched_single_line() {
        let mut h = map(&[("cookie", "a=1;b=2 ;; junk")]);
        remove_cookies(&mut h, &["sg_browser"]);
        assert_eq!(values(&h, "cookie"), ["a=1;b=2 ;; junk"]);
    }

    #[test]
    fn remove_cookies_joins_h2_lines_even_without_hit() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        remove_cookies(&mut h, &["sg_browser"]);
        assert_eq!(values(&h, "cookie"), ["a=1; b=2"]);
    }

    #[test]
    fn remove_cookies_keeps_junk_and_case_variants() {
        let mut h = map(&[("cookie", "junk; SG_BROWSER=x; sg_browser=y; =z")]);
        remove_cookies(&mut h, &["sg_browser"]);
        assert_eq!(values(&h, "cookie"), ["junk; SG_BROWSER=x; =z"]);
    }

    #[test]
    fn remove_cookies_no_header() {
        let mut h = HeaderMap::new();
        remove_cookies(&mut h, &["a"]);
        assert!(h.is_empty());
    }

    #[test]
    fn request_id_kept_when_valid() {
        let id = "a".repeat(128);
        for ok in ["abc-123", "A.b_C-9", "x", id.as_str()] {
            let h = map(&[("x-request-id", ok)]);
            assert_eq!(request_id(&h), ok);
        }
    }

    #[test]
    fn request_id_first_value_only() {
        let h = map(&[("x-request-id", "bad id"), ("x-request-id", "good")]);
        assert_ne!(request_id(&h), "good");
        let h = map(&[("x-request-id", "good"), ("x-request-id", "other")]);
        assert_eq!(request_id(&h), "good");
    }

    #[test]
    fn request_id_replaced_when_invalid() {
        let long = "a".repeat(129);
        for bad in ["", "has space", "semi;colon", "ünï", long.as_str(), "a/b"] {
            let h = map(&[("x-request-id", bad)]);
            let id = request_id(&h);
            let id = id.to_str().unwrap();
            assert_ne!(id, bad);
            assert_uuid_v4(id);
        }
        assert_uuid_v4(request_id(&HeaderMap::new()).to_str().unwrap());
    }

    #[test]
    fn request_ids_are_fresh() {
        let h = HeaderMap::new();
        assert_ne!(request_id(&h), request_id(&h));
    }

    fn assert_uuid_v4(s: &str) {
        let u = uuid::Uuid::parse_str(s).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(s.len(), 36);
        assert_eq!(s, s.to_ascii_lowercase());
    }

    /// Strategy for a header-name spelling of `x-session` with optional suffix.
    fn session_spelling() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec((any::<bool>(), any::<bool>()), 9),
            "[a-z0-9_-]{0,8}",
        )
            .prop_map(|(flags, suffix)| {
                let mut s: String = "x-session"
                    .chars()
                    .zip(flags)
                    .map(|(c, (upper, underscore))| match c {
                        '-' if underscore => '_',
                        c if upper => c.to_ascii_uppercase(),
                        c => c,
                    })
                    .collect();
                s.push_str(&suffix);
                s
            })
    }

    proptest! {
        #[test]
        fn prop_session_spellings_detected(s in session_spelling()) {
            prop_assert!(is_session_header(&name(&s)));
        }

        #[test]
        fn prop_configured_header_spellings_owned(
            base in "[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,5}){0,3}",
            flags in proptest::collection::vec((any::<bool>(), any::<bool>()), 24),
        ) {
            let scrubber = Scrubber::new(&name(&base));
            let spelled: String = base
                .chars()
                .zip(flags.iter().cycle())
                .map(|(c, &(upper, underscore))| match c {
                    '-' if underscore => '_',
                    c if upper => c.to_ascii_uppercase(),
                    c => c,
                })
                .collect();
            prop_assert!(scrubber.owns(&name(&spelled)));
            let longer = format!("{spelled}x");
            prop_assert_eq!(scrubber.owns(&name(&longer)), is_session_header(&name(&longer)));
        }

        #[test]
        fn prop_is_session_header_matches_model(s in "[a-zA-Z_-][a-zA-Z0-9_-]{0,15}") {
            let model = s.to_ascii_lowercase().replace('_', "-").starts_with("x-session");
            prop_assert_eq!(is_session_header(&name(&s)), model);
        }

        #[test]
        fn prop_scrub_request_leaves_no_session_or_hop_headers(
            session in proptest::collection::vec(session_spelling(), 0..4),
            other in proptest::collection::vec("y-[a-z]{1,6}", 0..4),
            named in proptest::collection::vec("z-[a-z]{1,6}", 0..3),
        ) {
            let mut h = HeaderMap::new();
            for n in session.iter().chain(&other).chain(&named) {
                h.append(name(n), HeaderValue::from_static("v"));
            }
            if !named.is_empty() {
                let line = named.iter().map(|n| n.to_ascii_uppercase()).collect::<Vec<_>>().join(" , ");
                h.append(CONNECTION, HeaderValue::from_str(&line).unwrap());
            }
            h.append(TE, HeaderValue::from_static("trailers"));
            Scrubber::default().scrub_request(&mut h);
            for k in h.keys() {
                prop_assert!(!is_session_header(k));
                prop_assert!(!HOP_BY_HOP.contains(k));
                prop_assert!(!named.iter().any(|n| n == k.as_str()));
            }
            for n in &other {
                prop_assert!(h.contains_key(n.as_str()));
            }
        }

        #[test]
        fn prop_remove_cookies_model(
            lines in proptest::collection::vec(
                proptest::collection::vec(("(a|b|sg|sgx)", "[a-zA-Z0-9=]{0,4}"), 1..4), 1..4),
        ) {
            let mut h = HeaderMap::new();
            for line in &lines {
                let text = line.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
                h.append(COOKIE, HeaderValue::from_str(&text).unwrap());
            }
            let before_sg: Vec<String> = cookie_values(&h, "sg").map(str::to_owned).collect();
            prop_assert_eq!(before_sg.len(), lines.iter().flatten().filter(|(k, _)| k == "sg").count());
            remove_cookies(&mut h, &["sg"]);
            let expected: Vec<String> = lines.iter().flatten()
                .filter(|(k, _)| k != "sg").map(|(k, v)| format!("{k}={v}")).collect();
            let got = values(&h, "cookie");
            if expected.is_empty() {
                prop_assert!(got.is_empty());
            } else if lines.len() == 1 && before_sg.is_empty() {
                // untouched
                prop_assert_eq!(got.len(), 1);
            } else {
                prop_assert_eq!(got, vec![expected.join("; ")]);
            }
            prop_assert_eq!(cookie_values(&h, "sg").count(), 0);
        }

        #[test]
        fn prop_request_id_valid_passthrough(id in "[A-Za-z0-9._-]{1,128}") {
            let h = map(&[("x-request-id", id.as_str())]);
            prop_assert_eq!(request_id(&h), id.as_str());
        }

        #[test]
        fn prop_request_id_always_safe(id in "[ -~]{0,140}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert(X_REQUEST_ID, v);
            }
            let out = request_id(&h);
            let out = out.as_bytes();
            prop_assert!((1..=128).contains(&out.len()));
            prop_assert!(out.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b)));
        }
    }
}
