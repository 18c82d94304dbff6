//! Query-string handling for the proxy's own `__sg*` parameters.
//!
//! Tickets (`__sg_t`) and challenges (`__sg_c`) travel in the URL because a
//! navigation, a WebSocket or a beacon cannot carry a header. They are the proxy's
//! business only: DESIGN.md §2/§3 require every `__sg*` parameter to be removed
//! before the request goes upstream, so the backend never sees (or logs, or puts
//! into a redirect) a value that could be replayed.
//!
//! Parsing follows the WHATWG `application/x-www-form-urlencoded` split on `&` only.
//! `;` is not a separator: modern frameworks dropped it (Python did in 2021, after
//! "parameter cloaking" cache-poisoning reports), and a `__sg_t` hidden behind a
//! `;` is one the proxy never recognised as a ticket, so it carries nothing.
//!
//! Stripping is deliberately broader than recognition: [`strip_proxy_params`]
//! removes any name that *decodes and lowercases* to `__sg…` (`%5F%5Fsg_t`,
//! `__SG_T`), so no spelling a backend might decode into our namespace gets
//! through, while [`param`] matches one exact decoded name. Everything else is
//! kept byte-for-byte, because re-encoding a legacy app's query could change what
//! it parses.

use std::borrow::Cow;

use percent_encoding::{percent_decode, percent_decode_str};

/// Parameter-name prefix the proxy owns, compared after decoding and lowercasing.
const PROXY_PREFIX: &[u8] = b"__sg";

/// Removes every parameter whose name, percent-decoded and ASCII-lowercased, starts
/// with `__sg`.
///
/// - `Some(Cow::Borrowed(query))` when nothing was removed (the hot path: no
///   allocation, and the caller can keep the original URI).
/// - `Some(Cow::Owned(..))` with the remaining parameters, in order and
///   byte-for-byte, joined by `&` (empty `&&` pieces are dropped in a rewrite).
/// - `None` when parameters were removed and nothing remains: the caller drops the
///   `?` as well.
pub fn strip_proxy_params(query: &str) -> Option<Cow<'_, str>> {
    if !query.split('&').any(is_proxy_param) {
        return Some(Cow::Borrowed(query));
    }
    let mut kept = String::with_capacity(query.len());
    for part in query
        .split('&')
        .filter(|p| !p.is_empty() && !is_proxy_param(p))
    {
        if !kept.is_empty() {
            kept.push('&');
        }
        kept.push_str(part);
    }
    if kept.is_empty() {
        None
    } else {
        Some(Cow::Owned(kept))
    }
}

/// True when `part`'s name (before the first `=`) decodes to `__sg…` in any case.
fn is_proxy_param(part: &str) -> bool {
    let name = part.split_once('=').map_or(part, |(name, _)| name);
    // Only the first four decoded bytes matter, so decode lazily: no allocation,
    // and a long name costs nothing beyond its prefix.
    let mut decoded = percent_decode(name.as_bytes()).map(|b| b.to_ascii_lowercase());
    PROXY_PREFIX
        .iter()
        .all(|&want| decoded.next() == Some(want))
}

/// The first value of the parameter named exactly `name` (after percent-decoding
/// the name; case-sensitive), percent-decoded. A parameter without `=` has the empty
/// value.
///
/// `+` is *not* turned into a space: the proxy's own values are base64url, which
/// has neither, and leaving `+` alone keeps a standard-base64 value intact instead
/// of corrupting it. Returns `None` when there is no such parameter, or when its
/// first value does not decode to UTF-8 (no ticket or challenge ever does that, so
/// it is treated as absent rather than guessed at).
///
/// The result borrows from `query` unless decoding changed it.
pub fn param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    let value = query.split('&').find_map(|part| {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        percent_decode_str(key).eq(name.bytes()).then_some(value)
    })?;
    percent_decode_str(value).decode_utf8().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strip(q: &str) -> Option<String> {
        strip_proxy_params(q).map(Cow::into_owned)
    }

    #[test]
    fn nothing_to_strip_borrows() {
        for q in [
            "",
            "a=1",
            "a=1&b=2",
            "a=1&&b",
            "sg=1&_sg=2&__s=3",
            "x=__sg_t",
        ] {
            assert!(
                matches!(strip_proxy_params(q), Some(Cow::Borrowed(b)) if b == q),
                "{q}"
            );
        }
    }

    #[test]
    fn strips_all_spellings() {
        assert_eq!(strip("__sg_t=abc"), None);
        assert_eq!(strip("a=1&__sg_t=abc&b=2"), Some("a=1&b=2".into()));
        assert_eq!(strip("__sg_c=x&a=%20+1"), Some("a=%20+1".into()));
        assert_eq!(strip("a=1&%5F%5Fsg_t=x"), Some("a=1".into()));
        assert_eq!(strip("a=1&%5f%5fSG_T=x"), Some("a=1".into()));
        assert_eq!(strip("__SG_T=x&a"), Some("a".into()));
        assert_eq!(strip("__sg&a=1"), Some("a=1".into()));
        assert_eq!(strip("__sgfoo=1&__sg_t&__sg_t=2"), None);
        assert_eq!(strip("_%5Fs%67=1&keep=1"), Some("keep=1".into()));
        assert_eq!(strip("a=1&&__sg_t=x&&b=2&"), Some("a=1&b=2".into()));
    }

    #[test]
    fn keeps_others_byte_for_byte() {
        assert_eq!(
            strip("q=%E2%82%AC+x&__sg_t=1&r=a%2Fb;c&s"),
            Some("q=%E2%82%AC+x&r=a%2Fb;c&s".into())
        );
    }

    #[test]
    fn does_not_strip_lookalikes() {
        // Double-encoded: a backend decodes once and sees `%5F%5Fsg_t`, not ours.
        assert!(matches!(
            strip_proxy_params("%255F%255Fsg_t=1"),
            Some(Cow::Borrowed(_))
        ));
        assert!(matches!(
            strip_proxy_params("x__sg=1&a=__sg_t"),
            Some(Cow::Borrowed(_))
        ));
        // Semicolon is not a separator.
        assert_eq!(strip("a=1;__sg_t=2"), Some("a=1;__sg_t=2".into()));
    }

    #[test]
    fn param_first_exact_decoded() {
        assert_eq!(
            param("a=1&__sg_t=abc&__sg_t=def", "__sg_t").as_deref(),
            Some("abc")
        );
        assert_eq!(param("%5F%5Fsg_t=abc", "__sg_t").as_deref(), Some("abc"));
        assert_eq!(param("__SG_T=abc", "__sg_t"), None);
        assert_eq!(param("__sg_tx=abc", "__sg_t"), None);
        assert_eq!(param("__sg_t", "__sg_t").as_deref(), Some(""));
        assert_eq!(param("__sg_t=", "__sg_t").as_deref(), Some(""));
        assert_eq!(param("", "__sg_t"), None);
        assert_eq!(param("t=a=b", "t").as_deref(), Some("a=b"));
    }

    #[test]
    fn param_decoding() {
        assert!(matches!(
            param("t=abc-_", "t"),
            Some(Cow::Borrowed("abc-_"))
        ));
        assert_eq!(param("t=a%2Bb+c", "t").as_deref(), Some("a+b+c"));
        assert_eq!(param("t=%E2%82%AC", "t").as_deref(), Some("€"));
        assert_eq!(param("t=%FF", "t"), None);
        // The first value counts even when it is unusable.
        assert_eq!(param("t=%FF&t=ok", "t"), None);
        assert_eq!(param("t=%zz", "t").as_deref(), Some("%zz"));
    }

    fn encode_name(name: &str, mask: &[u8]) -> String {
        name.bytes()
            .zip(mask.iter().cycle())
            .map(|(b, m)| match m % 4 {
                0 => (b as char).to_string(),
                1 => (b as char).to_ascii_uppercase().to_string(),
                2 => format!("%{b:02X}"),
                _ => format!("%{b:02x}"),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn prop_strip_model(
            params in proptest::collection::vec(
                (prop_oneof!["[a-z]{1,5}", "__sg[a-z_]{0,3}"], "[a-z0-9%+=]{0,5}", any::<bool>(),
                 proptest::collection::vec(any::<u8>(), 1..8)),
                0..8),
        ) {
            let pieces: Vec<(String, bool)> = params.iter().map(|(n, v, has_eq, mask)| {
                let ours = n.starts_with("__sg");
                let name = if ours { encode_name(n, mask) } else { n.clone() };
                let piece = if *has_eq { format!("{name}={v}") } else { name };
                (piece, ours)
            }).collect();
            let query = pieces.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join("&");
            let kept: Vec<&str> = pieces.iter().filter(|(_, ours)| !ours).map(|(p, _)| p.as_str()).collect();
            let any_ours = pieces.iter().any(|(_, ours)| *ours);
            let got = strip_proxy_params(&query);
            if !any_ours {
                prop_assert!(matches!(got, Some(Cow::Borrowed(b)) if b == query));
            } else if kept.is_empty() {
                prop_assert_eq!(got, None);
            } else {
                let expected = kept.join("&");
                prop_assert_eq!(got.as_deref(), Some(expected.as_str()));
            }
        }

        #[test]
        fn prop_strip_is_idempotent_and_clean(q in "[a-zA-Z_%0-9=&;+]{0,40}") {
            if let Some(once) = strip_proxy_params(&q) {
                let twice = strip_proxy_params(&once);
                prop_assert!(matches!(twice, Some(Cow::Borrowed(b)) if b == once));
                for part in once.split('&') {
                    prop_assert!(!is_proxy_param(part));
                }
            }
        }

        #[test]
        fn prop_param_roundtrip(
            before in proptest::collection::vec("[a-z]{1,4}=[a-z]{0,3}", 0..4),
            value in "[A-Za-z0-9_-]{0,43}",
        ) {
            let mut parts = before.clone();
            parts.push(format!("__sg_t={value}"));
            parts.push("__sg_t=second".to_owned());
            let q = parts.join("&");
            let got = param(&q, "__sg_t");
            prop_assert_eq!(got.as_deref(), Some(value.as_str()));
            // Whatever `param` recognises, stripping removes.
            let stripped = strip_proxy_params(&q);
            prop_assert_eq!(stripped.as_deref().and_then(|s| param(s, "__sg_t")), None);
        }

        #[test]
        fn prop_param_never_panics(q in "\\PC{0,40}", n in "\\PC{0,6}") {
            let _ = param(&q, &n);
            let _ = strip_proxy_params(&q);
        }
    }
}
