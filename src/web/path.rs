//! Path normalisation that decides whether a request is for the reserved prefix.
//!
//! DESIGN.md §6: nothing under `browser.prefix` (default `/__sessiongate`) is ever
//! forwarded. The proxy answers it itself, so the upstream (or a cache in front of
//! the proxy that normalises paths differently) can never be made to serve content
//! at an address the agent script lives at. The check therefore has to see through
//! every spelling a server, framework or cache might fold into the prefix, and it
//! errs on the side of *over*-reserving: answering a strange path with the proxy's
//! 404 is harmless, forwarding a disguised reserved path is not.
//!
//! [`normalize`] works on bytes, in this order:
//!
//! 1. Percent-decode to a fixed point (`%255F` → `%5F` → `_`). Also decodes IIS's
//!    `%uHHHH` when it denotes ASCII, since legacy IIS backends still accept it.
//! 2. `\` is `/` (IIS and Windows treat them alike).
//! 3. `;…` parameters are dropped from each segment (Tomcat/Jetty style), so
//!    `..;x` is a dot segment.
//! 4. Dot segments are removed (RFC 3986 §5.2.4; empty segments count, as in
//!    browsers), then repeated `/` are folded.
//! 5. ASCII lowercase.
//!
//! Decoding to a fixed point is done in one linear pass rather than "decode again
//! until nothing changes": each round of plain decoding may peel off only one level
//! (`%2525…255F`), so repeated rounds are quadratic on a hostile 64 KiB path, and
//! a round limit would leave a result that is not idempotent. The one-pass decoder
//! keeps an output buffer that never contains an escape; after each appended byte
//! it only has to look at the buffer's tail. Because two escapes can never overlap
//! (the byte after `%` is a hex digit or `u`, never `%`), the order of reductions
//! does not matter and the result equals unbounded repeated decoding.
//!
//! Invalid UTF-8 after decoding becomes U+FFFD (`String::from_utf8_lossy`), which
//! cannot fake the ASCII bytes of a prefix.
//!
//! [`reserved_endpoint`] checks the canonical form and, for the rare paths where the
//! order of `//` folding or `;` stripping changes how far a `..` climbs, the
//! alternative readings too (nginx folds `//` before resolving dots; most servers
//! do not strip `;`). A path is reserved when *any* reading lands under the prefix.

use std::borrow::Cow;

/// How a `..` climbs: the canonical reading and the alternatives some servers use.
#[derive(Clone, Copy)]
struct Reading {
    /// Fold `//` before resolving dot segments (nginx `merge_slashes`) instead of
    /// after (RFC 3986, browsers).
    fold_first: bool,
    /// Drop `;…` segment parameters (Tomcat, Jetty, Spring).
    drop_params: bool,
}

const CANONICAL: Reading = Reading {
    fold_first: false,
    drop_params: true,
};

const ALTERNATIVES: [Reading; 3] = [
    Reading {
        fold_first: true,
        drop_params: true,
    },
    Reading {
        fold_first: false,
        drop_params: false,
    },
    Reading {
        fold_first: true,
        drop_params: false,
    },
];

/// Normalises `path` for the reserved-prefix check (see the module docs). The
/// result always starts with `/`, and `normalize(normalize(p)) == normalize(p)`.
///
/// Already-normal paths (the common case: lowercase, no `%`, `\`, `;`, `//` or dot
/// segments) are returned borrowed, without allocating.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded = decode(path.as_bytes());
    Cow::Owned(resolve(&decoded, CANONICAL))
}

/// `None` when `path` is not under `prefix`; otherwise the endpoint name: the
/// normalised remainder after the prefix with leading `/` trimmed (`heartbeat`,
/// `agent.js`, or `` for the prefix itself).
///
/// `prefix` is the configured `browser.prefix` (lowercase, leading `/`, no trailing
/// `/`); it is compared ASCII-case-insensitively anyway. The check is a plain
/// prefix match, so `/__sessiongatex` is reserved too (endpoint `x`, a 404):
/// over-reserving is safe.
pub fn reserved_endpoint(path: &str, prefix: &str) -> Option<String> {
    if is_normal(path) {
        return endpoint(path, prefix);
    }
    let decoded = decode(path.as_bytes());
    if let Some(rest) = endpoint(&resolve(&decoded, CANONICAL), prefix) {
        return Some(rest);
    }
    // The readings only differ in how far `..` climbs; skip them when it cannot.
    if !contains(&decoded, b"..") {
        return None;
    }
    ALTERNATIVES
        .iter()
        .find_map(|&reading| endpoint(&resolve(&decoded, reading), prefix))
}

fn endpoint(normalized: &str, prefix: &str) -> Option<String> {
    let head = normalized.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = normalized.get(prefix.len()..)?;
    Some(rest.trim_start_matches('/').to_owned())
}

/// True when [`resolve`]`(decode(path))` would return `path` unchanged.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    if bytes
        .iter()
        .any(|&b| matches!(b, b'\\' | b';') || b.is_ascii_uppercase())
    {
        return false;
    }
    // A `%` that starts no escape survives normalisation (`/100%`), so only real
    // escapes disqualify; checking this keeps `normalize` idempotent *and*
    // allocation-free on its own output.
    let escape_at = |i: usize| {
        [3, 6].iter().any(|&len| {
            bytes
                .get(i..i + len)
                .is_some_and(|window| escape_at_tail(window).is_some())
        })
    };
    if (0..bytes.len()).any(|i| bytes[i] == b'%' && escape_at(i)) {
        return false;
    }
    // Skip the leading '/'; the last piece may be empty (trailing slash is kept),
    // any other empty piece is a `//`.
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if matches!(segment, "." | "..") || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes to a fixed point in one pass (see the module docs).
fn decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    for &b in input {
        out.push(b);
        // Invariant: before the push `out` held no escape, so a new one can only
        // end at the last byte; reducing it may complete another, hence the loop.
        while let Some((len, byte)) = escape_at_tail(&out) {
            out.truncate(out.len() - len);
            out.push(byte);
        }
    }
    out
}

/// An escape ending at the last byte of `buf`: its length and decoded byte.
fn escape_at_tail(buf: &[u8]) -> Option<(usize, u8)> {
    match buf {
        [.., b'%', hi, lo] => Some((3, (hex(*hi)? << 4) | hex(*lo)?)),
        [.., b'%', b'u' | b'U', a, b, c, d] => {
            let value = (u16::from(hex(*a)?) << 12)
                | (u16::from(hex(*b)?) << 8)
                | (u16::from(hex(*c)?) << 4)
                | u16::from(hex(*d)?);
            // Only ASCII matters for an ASCII prefix; other code points stay
            // escaped, which keeps the result idempotent.
            u8::try_from(value)
                .ok()
                .filter(u8::is_ascii)
                .map(|byte| (6, byte))
        }
        _ => None,
    }
}

/// Steps 2–5 of the module docs on already-decoded bytes.
fn resolve(decoded: &[u8], reading: Reading) -> String {
    let mut stack: Vec<&[u8]> = Vec::new();
    // RFC 3986: a path ending in `.`/`..` (or `/`) keeps its trailing slash.
    let mut trailing_slash = false;
    let mut pieces = decoded.split(|&b| b == b'/' || b == b'\\').peekable();
    // A leading separator yields an empty first piece: that is the root, not a
    // segment. A relative-looking path is treated as if rooted.
    if decoded.first().is_some_and(|&b| b == b'/' || b == b'\\') {
        pieces.next();
    }
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        let segment = if reading.drop_params {
            piece.split(|&b| b == b';').next().unwrap_or_default()
        } else {
            piece
        };
        trailing_slash = false;
        match segment {
            b"." => trailing_slash = true,
            b".." => {
                stack.pop();
                trailing_slash = true;
            }
            b"" if reading.fold_first => trailing_slash = last,
            _ => stack.push(segment),
        }
    }
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for segment in stack.iter().filter(|s| !s.is_empty()) {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    // Folding happens here: empty segments produced no output above. A trailing
    // empty segment (the path ended in `/`) still means a trailing slash.
    let ends_empty = stack.last().is_some_and(|s| s.is_empty());
    if out.is_empty() || trailing_slash || ends_empty {
        out.push(b'/');
    }
    out.make_ascii_lowercase();
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PREFIX: &str = "/__sessiongate";

    fn n(p: &str) -> String {
        normalize(p).into_owned()
    }

    fn reserved(p: &str) -> Option<String> {
        reserved_endpoint(p, PREFIX)
    }

    #[test]
    fn normalize_basics() {
        assert_eq!(n(""), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("a/b"), "/a/b");
        assert_eq!(n("/A/B/"), "/a/b/");
        assert_eq!(n("//a///b"), "/a/b");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/../../x"), "/x");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/../"), "/");
        assert_eq!(n("/a;x=1/b;y"), "/a/b");
        assert_eq!(n("/a/..;x/b"), "/b");
        assert_eq!(n("\\a\\b"), "/a/b");
        assert_eq!(n("/%41%2fb"), "/a/b");
        assert_eq!(n("/%2e%2E/x"), "/x");
        assert_eq!(n("/%255F"), "/_");
        assert_eq!(n("/%25"), "/%");
        assert_eq!(n("/%2525"), "/%");
        assert_eq!(n("/%zz%4"), "/%zz%4");
        assert_eq!(n("/%u005F%U005f"), "/__");
        assert_eq!(n("/%u00E9"), "/%u00e9");
        assert_eq!(n("/caf%C3%A9"), "/café");
        assert_eq!(n("/%FF"), "/\u{FFFD}");
        // RFC 3986 order: the `..` pops the empty segment, not `a`.
        assert_eq!(n("/a//../b"), "/a/b");
    }

    #[test]
    fn normalize_borrows_normal_paths() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/app/page.html",
            "/x/.well-known/y",
            "/a/..b/c.",
        ] {
            assert!(matches!(normalize(p), Cow::Borrowed(b) if b == p), "{p}");
        }
        for p in [
            "", "a", "/A", "//", "/a//b", "/./", "/a/..", "/%41", "/;", "/\\",
        ] {
            assert!(matches!(normalize(p), Cow::Owned(_)), "{p}");
        }
    }

    #[test]
    fn decode_handles_nested_escapes() {
        assert_eq!(decode(b"%2525255F"), b"_");
        assert_eq!(decode(b"%%35%46"), b"_");
        assert_eq!(decode(b"%u005%46"), b"_");
        assert_eq!(decode(b"%25u005F"), b"_");
        assert_eq!(decode(b"%"), b"%");
        assert_eq!(decode(b"%%%"), b"%%%");
        // Deep nesting stays linear and complete.
        let mut deep = String::from("%5F");
        for _ in 0..2000 {
            deep = deep.replacen('%', "%25", 1);
        }
        assert_eq!(decode(deep.as_bytes()), b"_");
    }

    #[test]
    fn reserved_must_catch() {
        for (p, rest) in [
            ("/__sessiongate/status", "status"),
            ("//__sessiongate/status", "status"),
            ("/%5F%5Fsessiongate/status", "status"),
            ("/__SessionGate/x", "x"),
            ("/a/../__sessiongate/x", "x"),
            ("/a/%2e%2e/__sessiongate", ""),
            ("/%2F__sessiongate", ""),
            ("/__sessiongate;x=1/status", "status"),
            ("/.%2f__sessiongate", ""),
            ("\\__sessiongate", ""),
            ("/%255F%255Fsessiongate", ""),
            ("/__sessiongate", ""),
            ("/__sessiongate/", ""),
            ("/__sessiongate/agent.js", "agent.js"),
            ("/__sessiongate//heartbeat", "heartbeat"),
            ("/__sessiongatex", "x"),
            ("/%u005F%u005Fsessiongate/end", "end"),
            ("/a/..;/__sessiongate/bye", "bye"),
            ("/%2e/__sessiongate/status/", "status/"),
            ("/x/%252e%252e/__sessiongate/y", "y"),
            ("/__sessiongate\\status", "status"),
        ] {
            assert_eq!(reserved(p).as_deref(), Some(rest), "{p}");
        }
    }

    #[test]
    fn reserved_alternative_readings() {
        // nginx-style `//` folding before dots.
        assert_eq!(reserved("/a//../__sessiongate/x").as_deref(), Some("x"));
        // RFC-style: the `..` only pops the empty segment.
        assert_eq!(reserved("/__sessiongate//../x").as_deref(), Some("x"));
        // `;` kept: `..;x` is an ordinary segment.
        assert_eq!(reserved("/__sessiongate/..;x/y").as_deref(), Some("..;x/y"));
    }

    #[test]
    fn reserved_must_not_catch() {
        for p in [
            "/",
            "/sessiongate",
            "/app/__sessiongate-not",
            "/app/__sessiongate",
            "/__session",
            "/__sessiongate/../app",
            "/_%5Fsession/gate",
            "/%5F_sessio%6E",
            "/a/b/../../x/__sessiongate",
        ] {
            assert_eq!(reserved(p), None, "{p}");
        }
    }

    #[test]
    fn prefix_compare_is_case_insensitive() {
        assert_eq!(
            reserved_endpoint("/__sessiongate/x", "/__SessionGate").as_deref(),
            Some("x")
        );
        assert_eq!(reserved_endpoint("/", "/__sessiongate"), None);
        assert_eq!(reserved_endpoint("/é", "/_"), None);
    }

    /// One spelling of one ASCII byte.
    fn spell_byte(b: u8) -> BoxedStrategy<String> {
        let c = b as char;
        prop_oneof![
            Just(c.to_string()),
            Just(c.to_ascii_uppercase().to_string()),
            Just(format!("%{b:02X}")),
            Just(format!("%{b:02x}")),
            Just(format!("%25{b:02X}")),
            Just(format!("%2525{b:02x}")),
            Just(format!("%u00{b:02X}")),
        ]
        .boxed()
    }

    fn spell(s: &'static str) -> BoxedStrategy<String> {
        s.bytes()
            .map(spell_byte)
            .collect::<Vec<_>>()
            .prop_map(|parts| parts.concat())
            .boxed()
    }

    /// A separator that every reading treats as exactly one `/`.
    fn separator() -> BoxedStrategy<String> {
        prop_oneof![
            Just("/".to_owned()),
            Just("\\".to_owned()),
            Just("%2F".to_owned()),
            Just("%2f".to_owned()),
            Just("%5C".to_owned()),
            Just("%252F".to_owned()),
        ]
        .boxed()
    }

    fn name_segment() -> BoxedStrategy<String> {
        prop_oneof![
            "[a-z]{1,6}",
            "[A-Z]{1,6}",
            "[a-z]{1,4};x",
            "[a-z]{1,3}\\.[a-z]{1,3}",
        ]
        .boxed()
    }

    fn dot() -> BoxedStrategy<String> {
        prop_oneof![Just(".".to_owned()), spell(".")].boxed()
    }

    fn dot_dot() -> BoxedStrategy<String> {
        prop_oneof![
            Just("..".to_owned()),
            spell(".."),
            Just("..;x".to_owned()),
            Just("%2e%2E;x".to_owned()),
        ]
        .boxed()
    }

    /// A walk that ends where it started: names each matched by a later `..`,
    /// with `.` segments sprinkled in. Segments only; joined by separators later.
    fn balanced_walk() -> impl Strategy<Value = Vec<String>> {
        let leaf = prop_oneof![dot().prop_map(|d| vec![d]), Just(Vec::new())];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                (name_segment(), inner.clone(), dot_dot()).prop_map(|(name, mid, up)| {
                    let mut v = vec![name];
                    v.extend(mid);
                    v.push(up);
                    v
                }),
                (inner.clone(), inner).prop_map(|(mut a, b)| {
                    a.extend(b);
                    a
                }),
            ]
        })
    }

    fn join(segments: &[String], seps: &[String]) -> String {
        let mut out = String::new();
        for (i, segment) in segments.iter().enumerate() {
            out.push_str(&seps[i % seps.len()]);
            out.push_str(segment);
        }
        out
    }

    fn arbitrary_path() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("/"),
                Just("\\"),
                Just("."),
                Just(".."),
                Just(";"),
                Just("x"),
                Just("X"),
                Just("%"),
                Just("%2e"),
                Just("%2E"),
                Just("%2F"),
                Just("%25"),
                Just("%5C"),
                Just("%u002F"),
                Just("%u00E9"),
                Just("u"),
                Just("2"),
                Just("5"),
                Just("e"),
                Just("F"),
                Just("%C3"),
                Just("%A9"),
                Just("%FF"),
                Just("é"),
                Just("__sessiongate"),
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn prop_prefix_after_balanced_walk_is_detected(
            walk in balanced_walk(),
            seps in proptest::collection::vec(separator(), 1..4),
            leading_ups in proptest::collection::vec(dot_dot(), 0..2),
            prefix in spell("__sessiongate"),
            param in prop_oneof![Just(String::new()), Just(";x=1".to_owned())],
            tail in prop_oneof![Just(String::new()), Just("status".to_owned()), "[a-zA-Z]{1,8}(\\.[a-z]{1,3})?"],
        ) {
            let mut segments = leading_ups;
            segments.extend(walk);
            segments.push(format!("{prefix}{param}"));
            segments.push(tail);
            let path = join(&segments, &seps);
            prop_assert!(normalize(&path).starts_with(PREFIX), "{} -> {}", path, normalize(&path));
            prop_assert!(reserved(&path).is_some(), "{}", path);
        }

        #[test]
        fn prop_prefix_after_walk_with_empty_segments_is_detected(
            walk in balanced_walk(),
            seps in proptest::collection::vec(prop_oneof![separator(), Just("//".to_owned())], 1..4),
            prefix in spell("__sessiongate"),
        ) {
            let mut segments = walk;
            segments.push(prefix);
            let path = join(&segments, &seps);
            prop_assert!(reserved(&path).is_some(), "{}", path);
        }

        #[test]
        fn prop_normalize_idempotent(p in arbitrary_path()) {
            let once = normalize(&p).into_owned();
            let twice = normalize(&once);
            prop_assert_eq!(&once, &*twice);
            prop_assert!(matches!(twice, Cow::Borrowed(_)), "{:?} not recognised as normal", once);
            prop_assert!(once.starts_with('/'));
        }

        #[test]
        fn prop_normalize_idempotent_any_string(p in "\\PC{0,30}") {
            let once = normalize(&p).into_owned();
            prop_assert_eq!(&once, &*normalize(&once));
        }

        #[test]
        fn prop_fast_path_agrees_with_slow_path(p in arbitrary_path()) {
            let slow = resolve(&decode(p.as_bytes()), CANONICAL);
            prop_assert_eq!(&*normalize(&p), slow.as_str());
        }

        #[test]
        fn prop_plain_names_are_not_reserved(
            segments in proptest::collection::vec("[a-zA-Z0-9.-]{1,8}", 0..6),
        ) {
            let path = format!("/{}", segments.join("/"));
            prop_assert_eq!(reserved(&path), None);
        }
    }
}
