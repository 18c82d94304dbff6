//! Identity parsing: tokens, browser keys, tickets and challenges, cookies and the
//! query string never panic, and nothing made up is ever accepted.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sessiongate::session::ticket::{Kind, Tickets};
use sessiongate::session::{BrowserKey, Token};
use sessiongate::web::headers::cookie_values;
use sessiongate::web::query::{param, strip_proxy_params};

fn tickets() -> &'static (Tickets, BrowserKey) {
    static TICKETS: OnceLock<(Tickets, BrowserKey)> = OnceLock::new();
    TICKETS.get_or_init(|| {
        let tickets = Tickets::new(1024).expect("OS randomness");
        let key = BrowserKey::generate().expect("OS randomness");
        (tickets, key)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(token) = Token::parse(text) {
        assert_eq!(
            Token::parse(&token.encode()).map(|t| t.encode()),
            Some(token.encode())
        );
    }
    let _ = BrowserKey::parse(text);
    let (tickets, key) = tickets();
    for kind in [Kind::Ticket, Kind::Challenge] {
        assert!(
            tickets.peek(kind, text, key, 0).is_err(),
            "made-up value accepted"
        );
        assert!(
            tickets.redeem(kind, text, key, 0).is_err(),
            "made-up value redeemed"
        );
    }
    let _ = param(text, "__sg_t");
    if let Some(kept) = strip_proxy_params(text) {
        assert!(
            !kept.split('&').any(|p| p
                .split('=')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
                .starts_with("__sg")),
            "a proxy parameter survived in {kept:?}"
        );
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.append("cookie", value);
        for value in cookie_values(&headers, "sg_browser") {
            let _ = BrowserKey::parse(value);
        }
    }
});
