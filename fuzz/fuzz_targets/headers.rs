//! Header scrubbing: whatever a client sends, after `Scrubber::scrub_request` no
//! header of the `X-Session*` namespace and no spelling of a configured
//! `upstream.header` outside it (any case, `_` or `-`), no hop-by-hop header and no
//! header named in a `Connection` line is left, and `remove_cookies` leaves none of
//! the proxy's cookies (with or without `__Host-`).
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sessiongate::web::headers::{cookie_values, is_session_header, remove_cookies, Scrubber};

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    // Lines of `name: value`.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    Scrubber::new(&HeaderName::from_static("x-app-session")).scrub_request(&mut headers);
    for name in headers.keys() {
        assert!(!is_session_header(name), "{name} survived");
        assert!(!HOP_BY_HOP.contains(&name.as_str()), "{name} survived");
        assert!(
            !named.iter().any(|n| n == name.as_str()),
            "{name} was named in Connection"
        );
        let folded = name.as_str().replace('_', "-");
        assert!(!folded.starts_with("x-session"), "{name} survived");
        assert_ne!(folded, "x-app-session", "a spelling of upstream.header survived");
    }
    const COOKIES: [&str; 4] = [
        "sg_browser",
        "sg_session",
        "__Host-sg_browser",
        "__Host-sg_session",
    ];
    remove_cookies(&mut headers, &COOKIES);
    for name in COOKIES {
        assert_eq!(cookie_values(&headers, name).count(), 0, "{name} survived");
    }
    assert!(headers.get_all("cookie").iter().count() <= 1);
});
