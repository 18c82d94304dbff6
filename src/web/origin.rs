//! Which origins may open WebSockets and call the reserved POST endpoints.
//!
//! Cookies ride along with cross-site requests, so a state-changing request or a
//! WebSocket handshake is only honoured from the page's own origin (or, when
//! `listen.origins` is set, exactly those origins). Browsers always send `Origin` on
//! these requests; `Sec-Fetch-Site: cross-site` is refused outright.

use http::header::{HOST, ORIGIN};
use http::HeaderMap;

/// The allowed origins.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Empty: the request's own scheme and Host only.
    allowed: Vec<String>,
}

impl OriginPolicy {
    pub fn new(allowed: Vec<String>) -> Self {
        OriginPolicy { allowed }
    }

    /// Whether the request may act from where it says it comes from.
    pub fn allows(&self, headers: &HeaderMap, scheme: &str, authority: Option<&str>) -> bool {
        if headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return false;
        }
        let Some(origin) = headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else {
            // Not a browser's cross-origin request (browsers send Origin on POST and
            // WebSocket handshakes); non-browser clients have no ambient cookies to abuse.
            return true;
        };
        if !self.allowed.is_empty() {
            return self.allowed.iter().any(|allowed| allowed == origin);
        }
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or(authority)
            .unwrap_or("");
        origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|origin_host| !host.is_empty() && origin_host.eq_ignore_ascii_case(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn own_origin_only_by_default() {
        let policy = OriginPolicy::default();
        let own = headers(&[
            ("host", "app.example:8080"),
            ("origin", "http://app.example:8080"),
        ]);
        assert!(policy.allows(&own, "http", None));
        assert!(!policy.allows(&own, "https", None), "scheme matters");
        let foreign = headers(&[("host", "app.example"), ("origin", "http://evil.example")]);
        assert!(!policy.allows(&foreign, "http", None));
        let null = headers(&[("host", "app.example"), ("origin", "null")]);
        assert!(!policy.allows(&null, "http", None));
        let cross = headers(&[("host", "app.example"), ("sec-fetch-site", "cross-site")]);
        assert!(!policy.allows(&cross, "http", None));
        let h2 = headers(&[("origin", "https://app.example")]);
        assert!(policy.allows(&h2, "https", Some("app.example")));
    }

    #[test]
    fn configured_origins_are_exact() {
        let policy = OriginPolicy::new(vec!["https://app.example".into()]);
        let ok = headers(&[("host", "internal:8080"), ("origin", "https://app.example")]);
        assert!(policy.allows(&ok, "http", None));
        let own = headers(&[
            ("host", "internal:8080"),
            ("origin", "http://internal:8080"),
        ]);
        assert!(
            !policy.allows(&own, "http", None),
            "non-empty list means exactly these"
        );
    }
}
