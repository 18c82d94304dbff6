//! The browser side of sessiongate, embedded in the binary.
//!
//! - [`AGENT_JS`] is the agent the gateway serves at `P/agent.js?v=`[`version()`]
//!   and names in the `<script>` tag it injects into every forwarded HTML page: it
//!   keeps the tab's token, adds it to same-origin fetch/XHR, carries tickets on
//!   navigations, sends heartbeats and shows the countdown (DESIGN.md §3, §4, §6).
//! - [`bootstrap_page`] (with [`bootstrap_csp`]) is what a `tab`-mode navigation
//!   without identity gets: a page whose inline script finds the tab's session in
//!   sessionStorage, or starts a new one, and comes back with a ticket.
//! - [`loop_page`] replaces it after too many bootstrap hops; [`ended_page`] answers
//!   a form posted from a tab whose session has ended.
//!
//! The wire protocol between these scripts and the gateway is `PROTOCOL.md` in this
//! directory.

/// The agent script, served as `P/agent.js` (immutable under its versioned URL).
pub const AGENT_JS: &str = include_str!("agent.js");

/// The bootstrap page's script, inlined into [`bootstrap_page`] behind its nonce.
pub const BOOTSTRAP_JS: &str = include_str!("bootstrap.js");

/// 64-bit FNV-1a, in a const context so the agent's version is computed at build time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const fn hex(value: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

const VERSION: [u8; 16] = hex(fnv1a(AGENT_JS.as_bytes()));

/// A short content hash of [`AGENT_JS`] (16 hex digits) for the `?v=` of its URL,
/// so a new agent is never hidden behind a cached old one.
pub fn version() -> &'static str {
    // Always ASCII hex digits.
    std::str::from_utf8(&VERSION).unwrap_or("0")
}

/// Escapes text for HTML content and double- or single-quoted attribute values
/// (the bootstrap page here, the demo app's pages).
pub fn escape_html(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The style of the bootstrap and loop pages.
const PAGE_STYLE: &str = "\
body{margin:0;font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;\
color:#1b1b1f;background:#fff}\
main{max-width:34rem;margin:15vh auto 0;padding:0 1.25rem}\
h1{font-size:1.3rem;margin:0 0 .5rem}\
a{color:#1f5fd1;font-weight:600}\
@media (prefers-color-scheme:dark){body{color:#ececf1;background:#1b1b1f}a{color:#8fb3ff}}";

/// The bootstrap page (PROTOCOL.md, "The bootstrap page"): served with `200`,
/// `X-Session-State: none`, `Cache-Control: no-store` and [`bootstrap_csp`] for the
/// same `nonce`. `share_duplicates` is `session.duplicate_tab = "share"`.
pub fn bootstrap_page(
    challenge: &str,
    nonce: &str,
    prefix: &str,
    share_duplicates: bool,
) -> String {
    let duplicate = if share_duplicates { "share" } else { "new" };
    let nonce = escape_html(nonce);
    format!(
        "<!doctype html>\n\
<html lang=\"en\">\n\
<head>\n\
<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta name=\"robots\" content=\"noindex\">\n\
<meta name=\"sessiongate-challenge\" content=\"{challenge}\">\n\
<meta name=\"sessiongate-prefix\" content=\"{prefix}\">\n\
<meta name=\"sessiongate-duplicate-tab\" content=\"{duplicate}\">\n\
<title>Starting session</title>\n\
<style nonce=\"{nonce}\">{PAGE_STYLE}</style>\n\
</head>\n\
<body>\n\
<main id=\"sessiongate\" aria-live=\"polite\">\n\
<noscript><p>This application keeps one session per browser tab and needs \
JavaScript and cookies to do so. Please enable them and reload the page.</p></noscript>\n\
</main>\n\
<script nonce=\"{nonce}\">\n{BOOTSTRAP_JS}</script>\n\
</body>\n\
</html>\n",
        challenge = escape_html(challenge),
        prefix = escape_html(prefix),
    )
}

/// The bootstrap page's Content-Security-Policy (PROTOCOL.md). The nonce is kept
/// to base64 characters, so it cannot add directives; the gateway's nonces are
/// base64 anyway.
pub fn bootstrap_csp(nonce: &str) -> String {
    let nonce: String = nonce
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_'))
        .collect();
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    )
}

/// The page served instead of the bootstrap page when a navigation would get it a
/// third time (`__sg_b >= 2`): cookies or JavaScript are not working. No script.
/// "Try again" drops the query (and with it `__sg_b`), as a page without script
/// cannot rebuild the URL without only that parameter.
pub fn loop_page() -> String {
    "<!doctype html>\n\
<html lang=\"en\">\n\
<head>\n\
<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta name=\"robots\" content=\"noindex\">\n\
<title>Session could not start</title>\n\
</head>\n\
<body>\n\
<main>\n\
<h1>Your session could not start</h1>\n\
<p>This application keeps one session per browser tab and needs cookies and \
JavaScript to do so. They seem to be blocked in this browser. Please allow cookies \
and JavaScript for this site, then try again.</p>\n\
<p><a href=\"?\">Try again</a></p>\n\
</main>\n\
</body>\n\
</html>\n"
        .to_string()
}

/// The page for a write (a form POST) that arrived from a tab whose session has
/// ended: it was not forwarded, so nothing was saved, and going back usually finds
/// what was typed still in the form. `restart` (a path of this site) is where
/// "Start again" leads. No script.
pub fn ended_page(restart: &str) -> String {
    format!(
        "<!doctype html>\n\
<html lang=\"en\">\n\
<head>\n\
<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta name=\"robots\" content=\"noindex\">\n\
<title>Your session has ended</title>\n\
</head>\n\
<body>\n\
<main>\n\
<h1>Your session has ended</h1>\n\
<p>What you sent arrived after this tab's session had ended, so it was not passed \
on and nothing was saved. Go back to the previous page: what you entered is usually \
still there. Copy it, then start again.</p>\n\
<p><a href=\"{restart}\">Start again</a></p>\n\
</main>\n\
</body>\n\
</html>\n",
        restart = escape_html(restart),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_a_stable_hex_hash_of_the_agent() {
        let v = version();
        assert_eq!(v.len(), 16);
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(v, version());
        assert_eq!(v, format!("{:016x}", fnv1a(AGENT_JS.as_bytes())));
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn page_carries_the_meta_tags_and_the_nonce() {
        let page = bootstrap_page("Ch4ll-enge_1", "n0nce", "/__sessiongate", false);
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("<meta charset=\"utf-8\">"));
        assert!(page.contains("<meta name=\"sessiongate-challenge\" content=\"Ch4ll-enge_1\">"));
        assert!(page.contains("<meta name=\"sessiongate-prefix\" content=\"/__sessiongate\">"));
        assert!(page.contains("<meta name=\"sessiongate-duplicate-tab\" content=\"new\">"));
        assert!(page.contains("<script nonce=\"n0nce\">"));
        assert!(page.contains("<style nonce=\"n0nce\">"));
        assert!(page.contains("<noscript>"));
        assert!(page.contains("needs JavaScript and cookies"));
        assert!(page.contains(BOOTSTRAP_JS));
        let shared = bootstrap_page("c", "n", "/p", true);
        assert!(shared.contains("<meta name=\"sessiongate-duplicate-tab\" content=\"share\">"));
    }

    #[test]
    fn hostile_values_are_escaped() {
        let evil = "\"><script>alert(1)</script><meta x='";
        let page = bootstrap_page(evil, evil, evil, false);
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("\"><"));
        assert!(!page.contains("x='"));
        assert!(page.contains("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;meta x=&#39;"));
        // Exactly one script element: the bootstrap's own.
        assert_eq!(page.matches("<script").count(), 1);
        assert_eq!(
            escape_html("a&b<c>d\"e'f"),
            "a&amp;b&lt;c&gt;d&quot;e&#39;f"
        );
    }

    #[test]
    fn inline_script_cannot_close_its_element() {
        let lower = BOOTSTRAP_JS.to_ascii_lowercase();
        assert!(!lower.contains("</script"));
        assert!(!lower.contains("<!--"));
        assert!(!lower.contains("<script"));
    }

    #[test]
    fn csp_is_the_protocol_policy_with_the_nonce() {
        assert_eq!(
            bootstrap_csp("abc+/="),
            "default-src 'none'; script-src 'nonce-abc+/='; style-src 'nonce-abc+/='; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
        );
        let csp = bootstrap_csp("x'; script-src *");
        assert!(csp.contains("'nonce-xscript-src'"));
        assert_eq!(csp.matches(';').count(), 6);
    }

    #[test]
    fn loop_page_has_no_script_and_a_way_back() {
        let page = loop_page();
        assert!(page.starts_with("<!doctype html>"));
        assert!(!page.to_ascii_lowercase().contains("<script"));
        assert!(page.contains("cookies"));
        assert!(page.contains("JavaScript"));
        assert!(page.contains("<a href=\"?\">Try again</a>"));
    }

    #[test]
    fn ended_page_has_no_script_and_an_escaped_way_back() {
        let page = ended_page("/form?a=1&b=\"x\"");
        assert!(page.starts_with("<!doctype html>"));
        assert!(!page.to_ascii_lowercase().contains("<script"));
        assert!(page.contains("nothing was saved"));
        assert!(page.contains("<a href=\"/form?a=1&amp;b=&quot;x&quot;\">Start again</a>"));
    }

    #[test]
    fn agent_reads_its_settings_and_guards_against_a_second_load() {
        for needle in [
            "document.currentScript",
            "Symbol.for(\"sessiongate.agent\")",
            "X-Session-Token",
            "X-Sessiongate-Agent",
            "__sg_t",
            "sessiongate.leader",
        ] {
            assert!(AGENT_JS.contains(needle), "agent.js lacks {needle}");
        }
        assert!(!AGENT_JS.contains("innerHTML"));
        assert!(!AGENT_JS.contains("console."));
    }

    /// Every language `browser.language` accepts has built-in texts, each with every
    /// key `browser.text` can override, and the message has its `{seconds}`.
    #[test]
    fn agent_has_texts_for_every_configurable_language() {
        let table = &AGENT_JS[AGENT_JS.find("const TEXTS = {").expect("TEXTS")..];
        let table = &table[..table.find("\n  };").expect("end of TEXTS")];
        for language in crate::config::LANGUAGES {
            let start = table
                .find(&format!("\n    {language}: {{"))
                .unwrap_or_else(|| panic!("no texts for {language}"));
            let block = &table[start..];
            let block = &block[..block.find("\n    },").expect("end of a language")];
            for (key, _) in crate::config::BrowserText::default().entries() {
                assert!(
                    block.contains(&format!("\n      {key}: \"")),
                    "{language} has no {key}"
                );
            }
            assert!(
                block.contains("{seconds}"),
                "{language}: message without {{seconds}}"
            );
        }
    }
}
