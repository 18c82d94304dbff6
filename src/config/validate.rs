//! Semantic checks on a deserialized [`Config`].
//!
//! Deserialization only proves that every value has the right shape; this module
//! checks what serde cannot: ranges, cross-key rules, URL and header syntax, and
//! files that must exist. Every problem is returned (never just the first) as a
//! `(key, reason)` pair; [`load`](mod@super::load) attaches the source that supplied the
//! key. Reasons are short and name the offending value, except for secrets.

use std::net::SocketAddr;
use std::path::Path;

use http::uri::{Authority, Uri};

use super::{Cidr, Config, Duration, Heartbeat, OnTimeout, SessionMode, LANGUAGES};
use crate::lifetime::millis;
use std::time::Duration as StdDuration;

/// hyper refuses (panics on) a read buffer smaller than this.
const MIN_HEADER_BYTES: usize = 8192;
/// Far beyond any sane request head; a bigger limit is almost certainly a typo.
const MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;
/// RFC 9113 §6.5.2: `SETTINGS_MAX_CONCURRENT_STREAMS` is a 31-bit stream count.
const MAX_STREAMS: u32 = (1 << 31) - 1;
/// tokio's semaphore cannot hold more permits than this.
const MAX_IN_FLIGHT: usize = tokio::sync::Semaphore::MAX_PERMITS;
/// A bearer token shorter than this is guessable by brute force over the network.
const MIN_TOKEN_CHARS: usize = 16;
/// Longest `browser.text` value: every page carries the overrides in its agent tag.
const MAX_TEXT_CHARS: usize = 300;
/// WCAG 2.2 SC 2.2.1 (Timing Adjustable): at least 20 seconds to extend a time limit.
const MIN_COUNTDOWN: StdDuration = StdDuration::from_secs(20);

/// The heartbeat intervals the agent keeps (`src/agent/PROTOCOL.md`): a configured
/// interval outside them would silently not be the one in force.
const HEARTBEAT_RANGE: std::ops::RangeInclusive<StdDuration> =
    StdDuration::from_secs(1)..=StdDuration::from_secs(600);

/// Checks `config` and returns every problem found as `(key, reason)`, in key order.
/// An empty vector means the configuration is usable.
pub fn validate(config: &Config) -> Vec<(String, String)> {
    let mut problems = Problems::default();
    check_listen(config, &mut problems);
    check_upstream(config, &mut problems);
    check_session(config, &mut problems);
    check_browser(config, &mut problems);
    check_hooks(config, &mut problems);
    check_admin(config, &mut problems);
    check_log(config, &mut problems);
    check_persist(config, &mut problems);
    check_store(config, &mut problems);
    problems.0
}

#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push((key.to_owned(), reason.into()));
    }

    fn positive(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.add(key, "must be greater than 0s");
        }
    }
}

fn check_listen(config: &Config, p: &mut Problems) {
    let listen = &config.listen;
    if listen.max_connections < 1 {
        p.add("listen.max_connections", "must be at least 1");
    }
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&listen.max_header_bytes) {
        p.add(
            "listen.max_header_bytes",
            format!(
                "{} is out of range: must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} (16 MiB)",
                listen.max_header_bytes
            ),
        );
    }
    p.positive("listen.header_timeout", listen.header_timeout);
    p.positive("listen.idle_timeout", listen.idle_timeout);
    p.positive("listen.body_timeout", listen.body_timeout);
    if !(1..=MAX_STREAMS).contains(&listen.max_streams) {
        p.add(
            "listen.max_streams",
            format!(
                "{} is out of range: must be between 1 and {MAX_STREAMS}",
                listen.max_streams
            ),
        );
    }
    for proxy in &listen.trusted_proxies {
        if let Err(reason) = proxy.parse::<Cidr>() {
            p.add("listen.trusted_proxies", reason.to_string());
        }
    }
    for origin in &listen.origins {
        if let Err(reason) = check_origin(origin) {
            p.add("listen.origins", format!("{origin:?}: {reason}"));
        }
    }
    if let Some(tls) = &listen.tls {
        if let Err(reason) = check_readable_file(&tls.cert) {
            p.add("listen.tls.cert", reason);
        }
        if let Err(reason) = check_readable_file(&tls.key) {
            p.add("listen.tls.key", reason);
        }
    }
}

/// An origin as browsers send it in `Origin`: `scheme://host[:port]`, nothing else.
/// Browsers serialize it in lowercase and without a default port, so anything else
/// could never match and would silently refuse every request.
fn check_origin(origin: &str) -> Result<(), String> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err("expected scheme://host[:port], e.g. \"https://app.example.com\"".into());
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme must be http or https, not {scheme:?}"));
    }
    if let Some(at) = rest.find(['/', '?', '#']) {
        return Err(format!(
            "an origin has no path, query or trailing slash; remove {:?}",
            &rest[at..]
        ));
    }
    if rest.contains('@') {
        return Err("an origin has no user name or password".into());
    }
    let authority: Authority = rest
        .parse()
        .map_err(|e| format!("invalid host or port: {e}"))?;
    if authority.host().is_empty() {
        return Err("missing host".into());
    }
    check_port(&authority)?;
    if origin != origin.to_ascii_lowercase() {
        return Err("write it in lowercase, as browsers send it".into());
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    if authority.port_u16() == Some(default_port) {
        return Err(format!(
            "remove the default port :{default_port}; browsers omit it"
        ));
    }
    Ok(())
}

/// `http` accepts any text after the host's colon and then reports no port at all,
/// so `host:x` would silently mean the default port.
fn check_port(authority: &Authority) -> Result<(), String> {
    let after_host = authority
        .as_str()
        .rsplit('@')
        .next()
        .and_then(|hostport| hostport.strip_prefix(authority.host()))
        .unwrap_or_default();
    match after_host.strip_prefix(':') {
        None if after_host.is_empty() => Ok(()),
        Some(port) if port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!(
            "invalid port {:?}",
            after_host.trim_start_matches(':')
        )),
    }
}

fn check_readable_file(path: &Path) -> Result<(), String> {
    // Opening (not just stat-ing) proves the process may read it, which is what the
    // TLS setup will do at startup; failing here gives a message naming the key.
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!("{} is a directory", path.display())),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn check_upstream(config: &Config, p: &mut Problems) {
    let upstream = &config.upstream;
    if let Err(reason) = check_upstream_url(&upstream.url) {
        p.add("upstream.url", reason);
    }
    if let Err(reason) = check_session_header(&upstream.header) {
        p.add("upstream.header", reason);
    }
    p.positive("upstream.connect_timeout", upstream.connect_timeout);
    p.positive("upstream.response_timeout", upstream.response_timeout);
    if !(1..=MAX_IN_FLIGHT).contains(&upstream.max_in_flight) {
        p.add(
            "upstream.max_in_flight",
            format!(
                "{} is out of range: must be between 1 and {MAX_IN_FLIGHT}",
                upstream.max_in_flight
            ),
        );
    }
    for reason in super::cookie_jar::check(&upstream.cookie_jar) {
        p.add("upstream.cookie_jar", reason);
    }
}

fn check_upstream_url(url: &str) -> Result<(), String> {
    // `http::Uri` silently drops a fragment, so look for it in the raw text.
    if url.contains('#') {
        return Err(format!("{url:?} must not have a fragment (#...)"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https upstreams are not supported yet; terminate TLS in front of the upstream or use http"
                    .into(),
            )
        }
        Some(other) => {
            return Err(format!(
                "{url:?} has scheme {other:?}; expected an http:// URL such as \"http://127.0.0.1:3000\""
            ))
        }
        None => {
            return Err(format!(
                "{url:?} is not an absolute URL; expected e.g. \"http://127.0.0.1:3000\""
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{url:?} has no host"));
    };
    if authority.host().is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?} contains credentials; they are not supported"
        ));
    }
    check_port(authority).map_err(|reason| format!("{url:?}: {reason}"))?;
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query (?...)"));
    }
    Ok(())
}

/// Headers that are hop-by-hop (RFC 9110 §7.6.1), framing-relevant, or that the gateway
/// itself sets on the upstream request: using one of them for the session handle would
/// be stripped, corrupt the request, or collide with the gateway's own value.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-session-parent",
];

fn check_session_header(name: &str) -> Result<(), String> {
    let header = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid HTTP header name"))?;
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err(format!(
            "{name:?} is a hop-by-hop or gateway-managed header; choose another name such as \"X-Session\""
        ));
    }
    Ok(())
}

fn check_session(config: &Config, p: &mut Problems) {
    let session = &config.session;
    if session.max_sessions < 1 {
        p.add("session.max_sessions", "must be at least 1");
    }
    for prefix in &session.require {
        if !prefix.starts_with('/') {
            p.add(
                "session.require",
                format!("{prefix:?} must be a path prefix starting with \"/\""),
            );
        }
    }
    let timeout = session.timeout.get();
    if !timeout.is_zero() && session.lifetime().abandon_for(millis(timeout)) == 0 {
        p.add(
            "session.abandon",
            "must be greater than 0s when session.timeout is set (0s would abandon every session at once)",
        );
    }
}

fn check_browser(config: &Config, p: &mut Problems) {
    let browser = &config.browser;
    check_texts(config, p);
    if let Err(reason) = check_prefix(&browser.prefix) {
        p.add("browser.prefix", format!("{:?} {reason}", browser.prefix));
    }
    if let Heartbeat::Every(every) = browser.heartbeat {
        let timeout = config.session.timeout.get();
        let abandon = Duration::from(StdDuration::from_millis(
            config.lifetime().abandon_for(millis(timeout)),
        ));
        if !HEARTBEAT_RANGE.contains(&every.get()) {
            p.add(
                "browser.heartbeat",
                format!("{every} is outside what the agent keeps: use 1s to 10m (or \"auto\")"),
            );
        } else if !timeout.is_zero() && every.get().saturating_mul(2) > abandon.get() {
            // Tabs signal only by heartbeat while the user is away; with fewer than two
            // beats per abandon period one delayed beat ends a session whose tab is open.
            p.add(
                "browser.heartbeat",
                format!(
                    "{every} is more than half of the abandon time ({abandon}); use at most {} or \"auto\"",
                    Duration::from(abandon.get() / 2)
                ),
            );
        }
    }
}

/// `browser.language` and `browser.text`: a language with built-in texts, or any
/// well-formed tag when every text is given; texts non-empty and short.
fn check_texts(config: &Config, p: &mut Problems) {
    let browser = &config.browser;
    let language = browser.language.trim();
    if language != "auto" {
        match primary_language(language) {
            None => p.add(
                "browser.language",
                format!(
                    "{:?} is not a language tag; use \"auto\" or a tag such as \"de\" or \"pt-BR\"",
                    browser.language
                ),
            ),
            Some(primary) if !LANGUAGES.contains(&primary.as_str()) => {
                let missing: Vec<&str> = browser
                    .text
                    .entries()
                    .iter()
                    .filter(|(_, value)| value.is_none())
                    .map(|(key, _)| *key)
                    .collect();
                if !missing.is_empty() {
                    p.add(
                        "browser.language",
                        format!(
                            "{:?} has no built-in texts (built in: {}); use one of those, \"auto\", or give every browser.text key (missing: {})",
                            browser.language,
                            LANGUAGES.join(", "),
                            missing.join(", ")
                        ),
                    );
                }
            }
            Some(_) => {}
        }
    }
    for (key, value) in browser.text.entries() {
        let Some(value) = value else { continue };
        let chars = value.chars().count();
        if value.trim().is_empty() {
            p.add(&format!("browser.text.{key}"), "must not be empty");
        } else if chars > MAX_TEXT_CHARS {
            p.add(
                &format!("browser.text.{key}"),
                format!("is {chars} characters long; at most {MAX_TEXT_CHARS}"),
            );
        }
    }
}

/// The primary language subtag of a well-formed tag (`ll`, `lll`, optionally
/// followed by `-` subtags of 1–8 letters and digits), lowercased.
fn primary_language(tag: &str) -> Option<String> {
    let mut parts = tag.split(['-', '_']);
    let primary = parts.next()?;
    let well_formed = (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|part| {
            (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    well_formed.then(|| primary.to_ascii_lowercase())
}

/// Settings that work but deserve a second look, as `(key, reason)`: `sessiongate
/// check` and the start of the gateway print them; they never stop it.
pub fn warnings(config: &Config) -> Vec<(String, String)> {
    let mut warnings = Problems::default();
    let session = &config.session;
    let timeout = session.timeout.get();
    if !timeout.is_zero() && session.on_timeout == OnTimeout::Countdown {
        let countdown = StdDuration::from_millis(config.lifetime().countdown_for(millis(timeout)));
        if countdown < MIN_COUNTDOWN {
            let derived = if session.countdown.is_none() {
                " (= session.timeout)"
            } else {
                ""
            };
            warnings.add(
                "session.countdown",
                format!(
                    "{}{derived} is under 20s: people who need more time to read and react \
                     may not make it to \"Stay\" (WCAG 2.2.1 asks for at least 20 seconds)",
                    Duration::from(countdown)
                ),
            );
        }
    }
    if config.session.mode == SessionMode::Tab && !session.cookie_lifetime.is_zero() {
        warnings.add(
            "session.cookie_lifetime",
            "is ignored in tab mode (a tab's session lives in the tab, not in a cookie)",
        );
    }
    warnings.0
}

/// The reserved prefix is compared after the request path is normalized and
/// lowercased, so only a canonical, lowercase prefix can ever match.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with \"/\"");
    }
    if prefix == "/" {
        return Err("must be longer than \"/\" (it would reserve every path)");
    }
    if prefix.ends_with('/') {
        return Err("must not end with \"/\"");
    }
    if prefix.contains("//") {
        return Err("must not contain \"//\"");
    }
    let allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '/');
    if !prefix.chars().all(allowed) {
        return Err("may contain only lowercase letters, digits, \"_\", \"-\" and \"/\"");
    }
    Ok(())
}

fn check_hooks(config: &Config, p: &mut Problems) {
    let hooks = &config.hooks;
    for (key, target) in [
        ("hooks.start", &hooks.start),
        ("hooks.timeout", &hooks.timeout),
        ("hooks.end", &hooks.end),
    ] {
        if let Err(reason) = check_hook_target(target) {
            p.add(key, format!("{target:?} {reason}"));
        }
    }
    p.positive("hooks.budget", hooks.budget);
}

fn check_hook_target(target: &str) -> Result<(), &'static str> {
    const EXPECTED: &str =
        "must be empty, a path on the upstream starting with \"/\", or an absolute http:// URL";
    if target.is_empty() {
        return Ok(());
    }
    if target.starts_with("//") {
        // A network-path reference would silently point at another host.
        return Err(EXPECTED);
    }
    if target.starts_with('/') {
        return target.parse::<Uri>().map(drop).map_err(|_| EXPECTED);
    }
    let uri: Uri = target.parse().map_err(|_| EXPECTED)?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) if !authority.host().is_empty() => Ok(()),
        (Some("https"), _) => {
            Err("is an https URL; https hooks are not supported yet, use http or a path")
        }
        _ => Err(EXPECTED),
    }
}

fn check_admin(config: &Config, p: &mut Problems) {
    let admin = &config.admin;
    let listen = config.listen.address;
    if collides(admin.address, listen) {
        p.add(
            "admin.address",
            format!(
                "{} collides with listen.address {listen}; the admin API needs its own port",
                admin.address
            ),
        );
    }
    if admin.token.is_empty() && !admin.address.ip().to_canonical().is_loopback() {
        p.add(
            "admin.address",
            format!(
                "{} is not a loopback address: the admin API would be open to the network; set admin.token",
                admin.address
            ),
        );
    }
    // The token itself is never echoed: this message may end up in logs.
    let chars = admin.token.chars().count();
    if chars > 0 && chars < MIN_TOKEN_CHARS {
        p.add(
            "admin.token",
            format!("is too short ({chars} characters); use at least {MIN_TOKEN_CHARS}"),
        );
    }
}

/// Longest `store.prefix`: it is part of every key.
const MAX_STORE_PREFIX: usize = 64;

fn check_store(config: &Config, p: &mut Problems) {
    let store = &config.store;
    if store.prefix.len() > MAX_STORE_PREFIX {
        p.add(
            "store.prefix",
            format!(
                "is {} bytes; at most {MAX_STORE_PREFIX}",
                store.prefix.len()
            ),
        );
    }
    if store.prefix.contains(['{', '}']) || store.prefix.chars().any(char::is_control) {
        p.add(
            "store.prefix",
            "must not contain braces (they delimit Redis Cluster hash tags) or control characters",
        );
    }
    p.positive("store.outage_grace", store.outage_grace);
    if config.store.backend != crate::config::StoreBackend::Redis {
        return;
    }
    if !(store.url.starts_with("redis://") || store.url.starts_with("rediss://")) {
        p.add("store.url", "must start with redis:// or rediss://");
    } else if let Err(error) = redis::IntoConnectionInfo::into_connection_info(store.url.as_str()) {
        p.add("store.url", format!("is not a Redis URL: {error}"));
    }
    if config.persist.snapshot_path().is_some() {
        p.add(
            "persist.path",
            "must be empty with store.backend = \"redis\": Redis keeps the sessions",
        );
    }
}

/// Shortest `persist.interval`: writing the whole table more often than this buys
/// little and costs a full copy of it each time.
const MIN_PERSIST_INTERVAL: StdDuration = StdDuration::from_secs(1);

fn check_persist(config: &Config, p: &mut Problems) {
    let persist = &config.persist;
    if persist.interval.get() < MIN_PERSIST_INTERVAL {
        p.add(
            "persist.interval",
            format!("{} is too short: must be at least 1s", persist.interval),
        );
    }
    if let Some(path) = persist.snapshot_path() {
        if path.file_name().is_none() {
            p.add("persist.path", "must name a file, not a directory");
        }
    }
    if let Some(path) = persist.handoff_path() {
        if path.file_name().is_none() {
            p.add(
                "persist.handoff",
                "must name a socket file, not a directory",
            );
        }
        // sockaddr_un holds 108 bytes on Linux, including the terminating NUL.
        if path.as_os_str().len() > 107 {
            p.add(
                "persist.handoff",
                "is too long for a Unix socket path (at most 107 bytes)",
            );
        }
        if persist.snapshot_path().is_none() {
            p.add(
                "persist.handoff",
                "needs persist.path: the sessions are handed over through the snapshot",
            );
        }
    }
}

/// Whether two listeners would fight over the same port. Port 0 asks the OS for a
/// free port, so it never collides; a wildcard address overlaps every address.
fn collides(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || b.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    a == b || a.is_unspecified() || b.is_unspecified()
}

fn check_log(config: &Config, p: &mut Problems) {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = &config.log.level;
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
        p.add(
            "log.level",
            format!("{level:?} is not a valid log filter: {e}"),
        );
    } else if !level.contains(['=', ',', '['])
        && !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
    {
        // EnvFilter reads a bare word as a target name, so a misspelt level ("dbug")
        // would be accepted and silently log nothing useful.
        p.add(
            "log.level",
            format!(
                "{level:?} is not a level; use one of {} or a filter such as \"sessiongate=debug\"",
                LEVELS.join(", ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Heartbeat, TlsConfig};

    fn keys(config: &Config) -> Vec<String> {
        validate(config).into_iter().map(|(k, _)| k).collect()
    }

    fn reasons_for(config: &Config, key: &str) -> Vec<String> {
        validate(config)
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, r)| r)
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(validate(&Config::default()), Vec::<(String, String)>::new());
    }

    #[test]
    fn listen_limits() {
        let mut c = Config::default();
        c.listen.max_connections = 0;
        c.listen.max_header_bytes = 4096;
        c.listen.header_timeout = Duration::ZERO;
        c.listen.idle_timeout = Duration::ZERO;
        assert_eq!(
            keys(&c),
            [
                "listen.max_connections",
                "listen.max_header_bytes",
                "listen.header_timeout",
                "listen.idle_timeout"
            ]
        );
        c = Config::default();
        c.listen.max_header_bytes = 16 * 1024 * 1024 + 1;
        assert_eq!(keys(&c), ["listen.max_header_bytes"]);
        c.listen.max_header_bytes = 8192;
        assert!(keys(&c).is_empty());
    }

    #[test]
    fn body_timeout_and_streams() {
        let mut c = Config::default();
        c.listen.body_timeout = Duration::ZERO;
        c.listen.max_streams = 0;
        assert_eq!(keys(&c), ["listen.body_timeout", "listen.max_streams"]);
        c = Config::default();
        c.listen.max_streams = u32::MAX;
        let reasons = reasons_for(&c, "listen.max_streams");
        assert_eq!(reasons.len(), 1);
        assert!(
            reasons[0].contains("between 1 and 2147483647"),
            "{reasons:?}"
        );
        c.listen.max_streams = 1;
        c.listen.body_timeout = Duration::from_millis(100);
        assert!(keys(&c).is_empty());
    }

    #[test]
    fn trusted_proxies() {
        let mut c = Config::default();
        c.listen.trusted_proxies = vec![
            "10.0.0.0/8".into(),
            "192.0.2.7".into(),
            "2001:db8::/32".into(),
            "::1".into(),
        ];
        assert!(keys(&c).is_empty());
        c.listen.trusted_proxies = vec![
            "10.0.0.0/8".into(),
            "10.0.0.1/8".into(),
            "lb.internal".into(),
            "::/200".into(),
        ];
        let reasons = reasons_for(&c, "listen.trusted_proxies");
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].contains("did you mean \"10.0.0.0/8\""),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("\"lb.internal\""), "{reasons:?}");
        assert!(reasons[2].contains("0 to 128"), "{reasons:?}");
    }

    #[test]
    fn max_in_flight() {
        let mut c = Config::default();
        c.upstream.max_in_flight = 0;
        assert_eq!(keys(&c), ["upstream.max_in_flight"]);
        c.upstream.max_in_flight = usize::MAX;
        assert_eq!(keys(&c), ["upstream.max_in_flight"]);
        c.upstream.max_in_flight = 1;
        assert!(keys(&c).is_empty());
    }

    #[test]
    fn origins() {
        for good in [
            "https://app.example.com",
            "http://localhost:8080",
            "http://[::1]:3000",
        ] {
            assert_eq!(check_origin(good), Ok(()), "{good}");
        }
        for bad in [
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/app",
            "https://App.example.com",
            "https://app.example.com:443",
            "https://user@app.example.com",
            "https://",
            "https://app.example.com:x",
            "https://app.example.com:0",
            "https://app.example.com:",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        let mut c = Config::default();
        c.listen.origins = vec!["https://ok.example".into(), "https://bad.example/".into()];
        let reasons = reasons_for(&c, "listen.origins");
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("https://bad.example/"), "{reasons:?}");
    }

    #[test]
    fn tls_files_must_be_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "x").expect("write");
        let mut c = Config::default();
        c.listen.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: dir.path().join("missing.pem"),
        });
        assert_eq!(keys(&c), ["listen.tls.key"]);
        c.listen.tls = Some(TlsConfig {
            cert: dir.path().to_path_buf(),
            key: cert,
        });
        assert_eq!(keys(&c), ["listen.tls.cert"]);
    }

    #[test]
    fn upstream_url() {
        assert_eq!(check_upstream_url("http://127.0.0.1:3000"), Ok(()));
        assert_eq!(check_upstream_url("http://backend/app"), Ok(()));
        let https = check_upstream_url("https://backend").unwrap_err();
        assert!(https.starts_with("https upstreams are not supported yet"));
        for bad in [
            "ftp://x",
            "backend:3000",
            "/app",
            "http://backend/?a=1",
            "http://backend/#top",
            "http://user:pw@backend",
            "http://backend:http",
            "http://",
            "not a url",
        ] {
            assert!(check_upstream_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_header() {
        assert_eq!(check_session_header("X-Session"), Ok(()));
        assert_eq!(check_session_header("x-app-session"), Ok(()));
        for bad in [
            "",
            "X Session",
            "Connection",
            "Transfer-Encoding",
            "Host",
            "X-Request-Id",
        ] {
            assert!(check_session_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_rules() {
        let mut c = Config::default();
        c.session.max_sessions = 0;
        c.session.require = vec!["/app".into(), "admin".into()];
        c.session.abandon = Some(Duration::ZERO);
        assert_eq!(
            keys(&c),
            ["session.max_sessions", "session.require", "session.abandon"]
        );
        // With timeout = 0 sessions are never abandoned, so abandon does not matter.
        c = Config::default();
        c.session.timeout = Duration::ZERO;
        c.session.abandon = Some(Duration::ZERO);
        assert!(keys(&c).is_empty());
    }

    #[test]
    fn browser_prefix() {
        for good in ["/__sessiongate", "/_sg", "/a/b-c_1"] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        for bad in ["", "/", "__sg", "/sg/", "/Sg", "/a//b", "/a.b", "/a b"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn heartbeat() {
        let mut c = Config::default(); // timeout 120s, abandon 240s
        c.browser.heartbeat = Heartbeat::Every(Duration::from_secs(120));
        assert!(keys(&c).is_empty());
        c.browser.heartbeat = Heartbeat::Every(Duration::from_secs(121));
        assert_eq!(keys(&c), ["browser.heartbeat"]);
        c.session.abandon = Some(Duration::from_secs(600));
        assert!(keys(&c).is_empty());
        c.browser.heartbeat = Heartbeat::Every(Duration::ZERO);
        assert_eq!(keys(&c), ["browser.heartbeat"]);
        c.browser.heartbeat = Heartbeat::Every(Duration::from_millis(999));
        assert_eq!(
            keys(&c),
            ["browser.heartbeat"],
            "under what the agent keeps"
        );
        c.browser.heartbeat = Heartbeat::Every(Duration::from_secs(1));
        assert!(keys(&c).is_empty());
        // timeout = 0: never abandoned, any interval the agent keeps is fine.
        c.session.timeout = Duration::ZERO;
        c.browser.heartbeat = Heartbeat::Every(Duration::from_secs(600));
        assert!(keys(&c).is_empty());
        c.browser.heartbeat = Heartbeat::Every(Duration::from_secs(601));
        assert_eq!(keys(&c), ["browser.heartbeat"], "over what the agent keeps");
    }

    #[test]
    fn a_cookie_lifetime_in_tab_mode_is_warned_about() {
        let mut c = Config::default();
        c.session.cookie_lifetime = Duration::from_secs(86_400);
        let warned = warnings(&c);
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert_eq!(warned[0].0, "session.cookie_lifetime");
        c.session.mode = SessionMode::Browser;
        assert!(warnings(&c).is_empty());
    }

    #[test]
    fn browser_language_and_texts() {
        let mut c = Config::default();
        for good in ["auto", "de", "pt-BR", "de-CH", "en_GB", "PL", "nl-Latn-NL"] {
            c.browser.language = good.into();
            assert!(keys(&c).is_empty(), "{good}");
        }
        for bad in [
            "",
            "deutsch",
            "d",
            "de-",
            "de--CH",
            "de-toolongsubtag",
            "e1",
        ] {
            c.browser.language = bad.into();
            assert_eq!(keys(&c), ["browser.language"], "{bad:?}");
        }
        // Swedish has no built-in texts: fine once every text is given.
        c.browser.language = "sv".into();
        c.browser.text.title = Some("Din session tar snart slut".into());
        let reasons = reasons_for(&c, "browser.language");
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("missing: message, stay"), "{reasons:?}");
        let t = &mut c.browser.text;
        for (slot, value) in [
            (&mut t.message, "Sessionen avslutas om {seconds}."),
            (&mut t.stay, "Stanna"),
            (&mut t.end, "Avsluta"),
            (&mut t.ended, "Din session har avslutats."),
            (&mut t.restart, "Börja om"),
            (&mut t.kept, "Det du skrev finns kvar på sidan."),
            (&mut t.offline, "Servern kunde inte nås."),
        ] {
            *slot = Some(value.into());
        }
        assert!(keys(&c).is_empty(), "{:?}", validate(&c));

        c = Config::default();
        c.browser.text.stay = Some("  ".into());
        c.browser.text.message = Some("x".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(keys(&c), ["browser.text.message", "browser.text.stay"]);
    }

    #[test]
    fn short_countdowns_are_warned_about_not_refused() {
        let mut c = Config::default();
        assert!(warnings(&c).is_empty(), "default countdown: 120s");
        c.session.countdown = Some(Duration::from_secs(19));
        assert!(keys(&c).is_empty());
        let warned = warnings(&c);
        assert_eq!(warned.len(), 1);
        assert_eq!(warned[0].0, "session.countdown");
        assert!(warned[0].1.starts_with("19s is under 20s"), "{warned:?}");
        assert!(warned[0].1.contains("WCAG 2.2.1"), "{warned:?}");
        c.session.countdown = Some(Duration::from_secs(20));
        assert!(warnings(&c).is_empty());
        // Derived from a short timeout.
        c.session.countdown = None;
        c.session.timeout = Duration::from_secs(10);
        assert!(warnings(&c)[0].1.contains("(= session.timeout)"));
        // No countdown window at all: nothing to warn about.
        c.session.on_timeout = OnTimeout::Keep;
        assert!(warnings(&c).is_empty());
        c.session.on_timeout = OnTimeout::Countdown;
        c.session.timeout = Duration::ZERO;
        assert!(warnings(&c).is_empty());
    }

    #[test]
    fn hooks() {
        for good in ["", "/hooks/start", "http://hooks.internal:9000/start"] {
            assert_eq!(check_hook_target(good), Ok(()), "{good}");
        }
        for bad in [
            "hooks/start",
            "//other/start",
            "https://x/start",
            "ftp://x/y",
            "http://",
        ] {
            assert!(check_hook_target(bad).is_err(), "{bad}");
        }
        let mut c = Config::default();
        c.hooks.end = "end".into();
        c.hooks.budget = Duration::ZERO;
        assert_eq!(keys(&c), ["hooks.end", "hooks.budget"]);
    }

    #[test]
    fn store_rules() {
        let mut c = Config::default();
        assert!(keys(&c).is_empty(), "the memory store is the default");
        c.store.url = "http://x".into();
        assert!(keys(&c).is_empty(), "the URL is only checked for redis");
        c.store.backend = crate::config::StoreBackend::Redis;
        assert_eq!(keys(&c), ["store.url"]);
        c.store.url = "rediss://user:pw@cache.internal:6380/2".into();
        assert!(keys(&c).is_empty());
        c.store.url = "redis://[::1:6379".into();
        assert_eq!(keys(&c), ["store.url"]);
        c.store.url = "redis://127.0.0.1:6379/0".into();
        c.store.prefix = "app{1}:".into();
        assert_eq!(keys(&c), ["store.prefix"]);
        c.store.prefix = "x".repeat(65);
        assert_eq!(keys(&c), ["store.prefix"]);
        c.store.prefix = "sessiongate:".into();
        c.store.outage_grace = Duration::ZERO;
        assert_eq!(keys(&c), ["store.outage_grace"]);
        c.store.outage_grace = Duration::from_secs(300);
        c.persist.path = "/var/lib/sessiongate/sessions.snap".into();
        assert_eq!(keys(&c), ["persist.path"]);
    }

    #[test]
    fn persist_rules() {
        let mut c = Config::default();
        assert!(keys(&c).is_empty(), "persistence is off by default");
        c.persist.interval = Duration::from_millis(500);
        assert_eq!(keys(&c), ["persist.interval"]);
        c.persist.interval = Duration::from_secs(1);
        c.persist.handoff = "/run/sessiongate/handoff.sock".into();
        let reasons = reasons_for(&c, "persist.handoff");
        assert!(reasons[0].contains("needs persist.path"), "{reasons:?}");
        c.persist.path = "/var/lib/sessiongate/sessions.snap".into();
        assert!(keys(&c).is_empty(), "{:?}", validate(&c));
        c.persist.handoff = format!("/run/{}.sock", "x".repeat(120)).into();
        assert_eq!(keys(&c), ["persist.handoff"]);
        c.persist.handoff = "/".into();
        assert!(keys(&c).contains(&"persist.handoff".to_string()));
        c.persist.handoff = std::path::PathBuf::new();
        c.persist.path = "/".into();
        assert_eq!(keys(&c), ["persist.path"]);
    }

    #[test]
    fn admin_rules() {
        let mut c = Config::default();
        c.admin.address = "0.0.0.0:9090".parse().expect("addr");
        let reasons = reasons_for(&c, "admin.address");
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("set admin.token"), "{reasons:?}");

        c.admin.token = "s3cr3t".into();
        let reasons = reasons_for(&c, "admin.token");
        assert_eq!(reasons.len(), 1);
        assert!(
            !reasons[0].contains("s3cr3t"),
            "the token must not be echoed"
        );

        c.admin.token = "0123456789abcdef".into();
        assert!(keys(&c).is_empty());

        c.admin.address = "127.0.0.1:8080".parse().expect("addr"); // listen is 0.0.0.0:8080
        assert_eq!(keys(&c), ["admin.address"]);
        c.admin.address = "127.0.0.1:0".parse().expect("addr");
        c.listen.address = "127.0.0.1:0".parse().expect("addr");
        assert!(keys(&c).is_empty());
        assert!(collides(
            "[::]:80".parse().expect("addr"),
            "127.0.0.1:80".parse().expect("addr")
        ));
        assert!(!collides(
            "127.0.0.2:80".parse().expect("addr"),
            "127.0.0.1:80".parse().expect("addr")
        ));
    }

    #[test]
    fn log_level() {
        let mut c = Config::default();
        c.log.level = "sessiongate=debug,hyper=warn".into();
        assert!(keys(&c).is_empty());
        c.log.level = "WARN".into();
        assert!(keys(&c).is_empty());
        c.log.level = "dbug".into();
        assert_eq!(keys(&c), ["log.level"], "a misspelt level is not a target");
        c.log.level = "sessiongate=lots".into();
        assert_eq!(keys(&c), ["log.level"]);
    }
}
