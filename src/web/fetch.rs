//! Fetch Metadata: what kind of request a browser says this is — the one definition
//! of "navigation" (a document load in a tab or frame), "page load" and
//! "speculative" (prefetch, prerender) every layer uses (DESIGN.md §3, §5).

use http::header::ACCEPT;
use http::{HeaderMap, HeaderName, Method};

const SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
const SEC_PURPOSE: HeaderName = HeaderName::from_static("sec-purpose");
const PURPOSE: HeaderName = HeaderName::from_static("purpose");
const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");

/// What a request's headers say about where its answer goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetch {
    /// A navigation: its answer becomes a document (top-level, `iframe` or `frame`)
    /// — a link, a form, the address bar, a reload — never a fetch/XHR answer.
    pub navigation: bool,
    /// A `GET`/`HEAD` navigation: a page load, which may mint or bootstrap a session.
    pub page_load: bool,
    /// Prefetch or prerender: never mints or consumes anything.
    pub speculative: bool,
}

impl Fetch {
    pub fn of(method: &Method, headers: &HeaderMap) -> Fetch {
        let navigation = is_navigation(headers);
        Fetch {
            navigation,
            page_load: navigation && (method == Method::GET || method == Method::HEAD),
            speculative: is_speculative(headers),
        }
    }
}

/// A navigation, per DESIGN.md §5: `Sec-Fetch-Dest` is `document`, `iframe` or
/// `frame` (or, with no `Sec-Fetch-Dest`, `Sec-Fetch-Mode` is `navigate`); from a
/// client without Fetch Metadata, a request whose `Accept` lists `text/html` and
/// that carries no `X-Requested-With` (what jQuery and other AJAX libraries send).
/// Values compare case-insensitively.
pub fn is_navigation(headers: &HeaderMap) -> bool {
    let dest = headers.get(SEC_FETCH_DEST);
    let mode = headers.get(SEC_FETCH_MODE);
    if dest.is_some() || mode.is_some() || headers.contains_key(SEC_FETCH_SITE) {
        return match dest {
            Some(dest) => ["document", "iframe", "frame"]
                .iter()
                .any(|d| token_is(dest.as_bytes(), d)),
            None => mode.is_some_and(|m| token_is(m.as_bytes(), "navigate")),
        };
    }
    !headers.contains_key(X_REQUESTED_WITH)
        && headers.get_all(ACCEPT).iter().any(|value| {
            value
                .as_bytes()
                .windows(b"text/html".len())
                .any(|window| window.eq_ignore_ascii_case(b"text/html"))
        })
}

/// Prefetch and prerender (`Sec-Purpose`, or the older `Purpose`).
pub fn is_speculative(headers: &HeaderMap) -> bool {
    [SEC_PURPOSE, PURPOSE].iter().any(|name| {
        headers.get_all(name).iter().any(|v| {
            let v = v.as_bytes();
            contains_ignore_case(v, b"prefetch") || contains_ignore_case(v, b"prerender")
        })
    })
}

fn token_is(value: &[u8], expected: &str) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(expected.as_bytes())
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn documents_are_navigations_and_fetches_are_not() {
        for navigation in [
            headers(&[
                ("sec-fetch-dest", "document"),
                ("sec-fetch-mode", "navigate"),
            ]),
            headers(&[("sec-fetch-dest", "iframe"), ("sec-fetch-mode", "navigate")]),
            headers(&[("sec-fetch-dest", "Frame")]),
            headers(&[("sec-fetch-mode", "navigate")]),
            headers(&[("accept", "text/html,*/*")]),
            headers(&[("accept", "TEXT/HTML")]),
        ] {
            assert!(is_navigation(&navigation), "{navigation:?}");
        }
        for background in [
            headers(&[("sec-fetch-dest", "empty"), ("sec-fetch-mode", "cors")]),
            headers(&[("sec-fetch-mode", "cors"), ("accept", "text/html")]),
            headers(&[("sec-fetch-site", "same-origin"), ("accept", "text/html")]),
            headers(&[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ]),
            headers(&[("accept", "application/json")]),
            headers(&[]),
        ] {
            assert!(!is_navigation(&background), "{background:?}");
        }
    }

    #[test]
    fn page_loads_are_get_or_head_navigations() {
        let nav = headers(&[("sec-fetch-mode", "navigate")]);
        assert!(Fetch::of(&Method::GET, &nav).page_load);
        assert!(Fetch::of(&Method::HEAD, &nav).page_load);
        let post = Fetch::of(&Method::POST, &nav);
        assert!(post.navigation && !post.page_load);
    }

    #[test]
    fn speculative_loads_are_recognised() {
        assert!(is_speculative(&headers(&[("sec-purpose", "prefetch")])));
        assert!(is_speculative(&headers(&[(
            "sec-purpose",
            "prefetch;prerender"
        )])));
        assert!(is_speculative(&headers(&[("purpose", "Prefetch")])));
        assert!(!is_speculative(&headers(&[("sec-fetch-mode", "navigate")])));
    }
}
