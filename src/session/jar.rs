//! Per-session cookie jars (`upstream.cookie_jar`): the upstream cookies a session
//! keeps on the gateway instead of in the browser, so that an unmodified PHP,
//! ASP.NET or Java app — which keys its state on its own cookie (`PHPSESSID`,
//! `ASP.NET_SessionId`, `JSESSIONID`, …) — gets one backend session per tab.
//!
//! - [`Jarred`]: which cookie names the jar takes (built-in list, explicit names, or
//!   all); names compare case-sensitively, as browsers compare them.
//! - [`Jar`]: one session's cookies. A `Set-Cookie` for a jarred name is parsed with
//!   the `cookie` crate and stored with the RFC 6265 §5.3 storage model — the subset
//!   a single-origin server-side jar needs: `Domain` (host-only unless given, refused
//!   unless it domain-matches the request host), `Path` (default-path of the request,
//!   path-match on sending), `Expires`/`Max-Age` (Max-Age wins; an expiry in the past,
//!   `Max-Age=0` included, deletes), `Secure` (sent only when the browser reached the
//!   gateway over https; refused from an http page, as browsers do since RFC 6265bis)
//!   and `HttpOnly` (kept as an attribute: everything in the jar is HTTP-only by
//!   construction). Not modelled: a public suffix list (a jar belongs to one session
//!   of one upstream, so a "supercookie" reaches nothing the session could not) and
//!   `SameSite` (the jar is only ever sent with requests that carry the tab's own
//!   session, which a cross-site page cannot).
//!
//! The `cookie_store` crate was weighed and not used: it keeps no creation order
//! (needed to drop the oldest cookie first and for the RFC 6265 §5.4 order of the
//! `Cookie` header), computes expiry against the wall clock of the moment rather
//! than the gateway's clock, needs a parsed `Url` for every request, and keeps three
//! levels of hash maps per jar — a lot for the one or two cookies a legacy app sets.
//! Here a jar is a `Vec` bounded to [`MAX_COOKIES`], so matching is a short scan.
//!
//! Bounds (like browsers' per-site limits): at most [`MAX_COOKIES`] cookies and
//! [`MAX_BYTES`] in all per jar, the least recently set dropped first; a cookie over
//! [`MAX_COOKIE_BYTES`] is refused. Sizes count name, value, domain and path.
//! Every drop is reported as a [`Dropped`] reason (the metric
//! `sessiongate_jar_dropped_total{reason}`).
//!
//! A jar is `Serialize + Deserialize` so that a snapshot or a shared store can keep
//! it; expiry instants are wall-clock milliseconds since the Unix epoch for the same
//! reason (monotonic instants mean nothing to another process).

use serde::{Deserialize, Serialize};

/// Most cookies one session's jar holds (browsers keep 50 to 180 per site).
pub const MAX_COOKIES: usize = 50;
/// Most bytes (names, values, domains and paths) one jar holds.
pub const MAX_BYTES: usize = 8 * 1024;
/// Largest cookie (name, value, domain and path) a jar accepts, as browsers' 4 KiB.
pub const MAX_COOKIE_BYTES: usize = 4 * 1024;

/// The built-in list (`cookie_jar = "builtin"`): session-id cookies of well-known
/// server frameworks. Authentication cookies (`.ASPXAUTH`, `.AspNetCore.Cookies`)
/// and cookies page scripts read (`XSRF-TOKEN`, `csrftoken`) are left out on
/// purpose: a login is the browser's, not the tab's, and a script cannot read a
/// cookie the browser never gets. List them explicitly to jar them too.
pub const BUILTIN: [&str; 11] = [
    "PHPSESSID",           // PHP (plain, Symfony, WordPress plugins, …)
    "ASP.NET_SessionId",   // ASP.NET (Web Forms, MVC) session state
    ".AspNetCore.Session", // ASP.NET Core session middleware
    "JSESSIONID",          // Java servlet containers (Tomcat, Jetty, WildFly, WebLogic)
    "connect.sid",         // Node.js express-session
    "laravel_session",     // Laravel
    "ci_session",          // CodeIgniter
    "CAKEPHP",             // CakePHP
    "_session_id",         // Ruby on Rails (ActiveRecord session store)
    "rack.session",        // Rack / Sinatra
    "sessionid",           // Django
];

/// Which upstream cookies go into the jar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jarred {
    /// None: cookies go to the browser as they always did.
    Off,
    /// These names, compared case-sensitively.
    Names(Vec<Box<[u8]>>),
    /// Every cookie (except the gateway's own, which never reach the upstream).
    All,
}

impl Jarred {
    /// From `upstream.cookie_jar`.
    pub fn from_config(config: &crate::config::CookieJar) -> Jarred {
        use crate::config::CookieJar;
        let names =
            |names: &[&str]| Jarred::Names(names.iter().map(|n| n.as_bytes().into()).collect());
        match config {
            CookieJar::Off => Jarred::Off,
            CookieJar::Builtin => names(&BUILTIN),
            CookieJar::All => Jarred::All,
            CookieJar::Names(list) => names(&list.iter().map(String::as_str).collect::<Vec<_>>()),
        }
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, Jarred::Off)
    }

    /// Whether a cookie of this name belongs in the jar.
    pub fn covers(&self, name: &[u8]) -> bool {
        match self {
            Jarred::Off => false,
            Jarred::All => true,
            Jarred::Names(names) => names.iter().any(|n| **n == *name),
        }
    }
}

/// Why a cookie was not kept (label `reason` of `sessiongate_jar_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Over [`MAX_COOKIE_BYTES`]: refused.
    TooLarge,
    /// A `Set-Cookie` the jar cannot read (no `name=`, not UTF-8): refused.
    Invalid,
    /// A `Domain` that does not domain-match the request host: refused.
    Domain,
    /// `Secure` set on a page the browser loaded over http: refused.
    Insecure,
    /// The oldest cookie, for one over [`MAX_COOKIES`].
    Count,
    /// The oldest cookie, for bytes over [`MAX_BYTES`].
    Bytes,
    /// Set on a response to a request without a session: there is no jar to keep it
    /// in, and a jarred cookie never reaches the browser.
    NoSession,
}

impl Dropped {
    pub const ALL: [Dropped; 7] = [
        Dropped::TooLarge,
        Dropped::Invalid,
        Dropped::Domain,
        Dropped::Insecure,
        Dropped::Count,
        Dropped::Bytes,
        Dropped::NoSession,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::TooLarge => "too_large",
            Dropped::Invalid => "invalid",
            Dropped::Domain => "domain",
            Dropped::Insecure => "insecure",
            Dropped::Count => "count",
            Dropped::Bytes => "bytes",
            Dropped::NoSession => "no_session",
        }
    }
}

/// The request a cookie is set from or sent with, as the jar sees it: the host the
/// upstream is addressed as (`Host`, without port), the path the upstream sees, and
/// whether the browser reached the gateway over https.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub secure: bool,
}

/// One cookie in a jar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JarCookie {
    pub name: String,
    pub value: String,
    /// Lowercase; the request host itself for a host-only cookie.
    pub domain: String,
    /// Sent only to exactly `domain` (no `Domain` attribute was given).
    pub host_only: bool,
    pub path: String,
    /// Wall-clock ms since the Unix epoch; `None` keeps it as long as the session.
    pub expires: Option<u64>,
    pub secure: bool,
    pub http_only: bool,
    /// Creation order within the jar (kept when a cookie is replaced, RFC 6265 §5.3
    /// step 11.3): the order of the `Cookie` header.
    pub created: u64,
    /// When it was last set, in the same order: the least recently set goes first.
    pub set: u64,
}

impl JarCookie {
    /// What it counts against the jar's bounds: name, value, domain and path.
    pub fn size(&self) -> usize {
        self.name
            .len()
            .saturating_add(self.value.len())
            .saturating_add(self.domain.len())
            .saturating_add(self.path.len())
    }

    fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// RFC 6265 §5.4 step 1: whether this cookie goes with a request to `site`.
    fn matches(&self, site: &Site<'_>) -> bool {
        let host_ok = if self.host_only {
            self.domain == site.host
        } else {
            domain_match(site.host, &self.domain)
        };
        host_ok && path_match(site.path, &self.path) && (site.secure || !self.secure)
    }

    fn same_slot(&self, other: &JarCookie) -> bool {
        self.name == other.name && self.domain == other.domain && self.path == other.path
    }
}

/// One session's cookies, at most [`MAX_COOKIES`] and [`MAX_BYTES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jar {
    cookies: Vec<JarCookie>,
    /// The next creation/set number.
    next: u64,
}

impl Jar {
    /// The cookies, in no particular order.
    pub fn cookies(&self) -> &[JarCookie] {
        &self.cookies
    }

    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    /// Whether the jar keeps the bounds every jar is held to ([`MAX_COOKIES`],
    /// [`MAX_BYTES`], [`MAX_COOKIE_BYTES`] each): a jar read back from elsewhere (a
    /// snapshot) is checked with this.
    pub fn within_bounds(&self) -> bool {
        self.len() <= MAX_COOKIES
            && self.bytes() <= MAX_BYTES
            && self.cookies.iter().all(|c| c.size() <= MAX_COOKIE_BYTES)
    }

    /// Bytes counted against [`MAX_BYTES`].
    pub fn bytes(&self) -> usize {
        self.cookies
            .iter()
            .fold(0usize, |sum, c| sum.saturating_add(c.size()))
    }

    /// Stores one upstream `Set-Cookie` value received for a request to `site` at
    /// `now` (wall ms) — RFC 6265 §5.2 and §5.3 — and returns whatever was dropped
    /// for it (the cookie itself if refused, else the oldest ones past a bound).
    pub fn store(&mut self, set_cookie: &[u8], site: &Site<'_>, now: u64) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        match self.parse(set_cookie, site, now) {
            Err(reason) => dropped.push(reason),
            Ok(cookie) => {
                let slot = self.cookies.iter().position(|c| c.same_slot(&cookie));
                let expired = cookie.expired(now);
                match (slot, expired) {
                    // Deletion: an expiry in the past removes the cookie it names.
                    (Some(at), true) => {
                        self.cookies.swap_remove(at);
                    }
                    (None, true) => {}
                    (Some(at), false) => {
                        let created = self.cookies[at].created;
                        self.cookies[at] = JarCookie { created, ..cookie };
                    }
                    (None, false) => {
                        // Exactly one more: a `Vec` would otherwise make room for four,
                        // and most jars hold one cookie (see `cargo bench --bench
                        // sessions`, 1b).
                        self.cookies.reserve_exact(1);
                        self.cookies.push(cookie);
                    }
                }
                self.purge(now);
                self.bound(&mut dropped);
            }
        }
        dropped
    }

    /// The `Cookie` pairs (`name=value; …`) for a request to `site` at `now` (wall
    /// ms), longer paths first, then older first (RFC 6265 §5.4); expired cookies are
    /// removed on the way. `None` when no cookie matches.
    pub fn header(&mut self, site: &Site<'_>, now: u64) -> Option<String> {
        self.purge(now);
        let mut sent: Vec<&JarCookie> = self.cookies.iter().filter(|c| c.matches(site)).collect();
        if sent.is_empty() {
            return None;
        }
        sent.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then(a.created.cmp(&b.created))
        });
        let mut header = String::with_capacity(sent.iter().map(|c| c.size() + 3).sum());
        for cookie in sent {
            if !header.is_empty() {
                header.push_str("; ");
            }
            header.push_str(&cookie.name);
            header.push('=');
            header.push_str(&cookie.value);
        }
        Some(header)
    }

    /// Removes every cookie expired at `now`.
    fn purge(&mut self, now: u64) {
        self.cookies.retain(|c| !c.expired(now));
    }

    /// Drops the least recently set cookies until both bounds hold.
    fn bound(&mut self, dropped: &mut Vec<Dropped>) {
        while self.cookies.len() > MAX_COOKIES {
            self.drop_oldest();
            dropped.push(Dropped::Count);
        }
        while self.bytes() > MAX_BYTES && !self.cookies.is_empty() {
            self.drop_oldest();
            dropped.push(Dropped::Bytes);
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(at) = self
            .cookies
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.set)
            .map(|(at, _)| at)
        {
            self.cookies.remove(at);
        }
    }

    /// RFC 6265 §5.2 (parsing, with the `cookie` crate) and §5.3 steps 3–10.
    fn parse(
        &mut self,
        set_cookie: &[u8],
        site: &Site<'_>,
        now: u64,
    ) -> Result<JarCookie, Dropped> {
        let text = std::str::from_utf8(set_cookie).map_err(|_| Dropped::Invalid)?;
        let parsed = cookie::Cookie::parse(text).map_err(|_| Dropped::Invalid)?;
        let (domain, host_only) = match parsed.domain().map(str::to_ascii_lowercase) {
            Some(domain) if !domain.is_empty() => {
                if !domain_match(site.host, &domain) {
                    return Err(Dropped::Domain);
                }
                (domain, false)
            }
            _ => (site.host.to_owned(), true),
        };
        let path = match parsed.path() {
            Some(path) if path.starts_with('/') => path.to_owned(),
            _ => default_path(site.path).to_owned(),
        };
        let expires = if let Some(max_age) = parsed.max_age() {
            // Max-Age wins over Expires; zero or less expires at once.
            let ms = max_age.whole_milliseconds().clamp(0, i128::from(u64::MAX));
            Some(now.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX)))
        } else {
            parsed.expires_datetime().map(|at| {
                let ms = at.unix_timestamp_nanos() / 1_000_000;
                u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
            })
        };
        let secure = parsed.secure().unwrap_or(false);
        if secure && !site.secure {
            return Err(Dropped::Insecure);
        }
        let stamp = self.next;
        self.next = self.next.saturating_add(1);
        let cookie = JarCookie {
            name: parsed.name().to_owned(),
            value: parsed.value().to_owned(),
            domain,
            host_only,
            path,
            expires,
            secure,
            http_only: parsed.http_only().unwrap_or(false),
            created: stamp,
            set: stamp,
        };
        if cookie.size() > MAX_COOKIE_BYTES {
            return Err(Dropped::TooLarge);
        }
        Ok(cookie)
    }
}

/// RFC 6265 §5.1.3: `host` domain-matches `domain` (both lowercase) if they are the
/// same, or `host` ends in `.domain` and is a name, not an IP address.
fn domain_match(host: &str, domain: &str) -> bool {
    if host == domain {
        return true;
    }
    let Some(prefix) = host.strip_suffix(domain) else {
        return false;
    };
    prefix.ends_with('.') && !is_ip(host)
}

fn is_ip(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// RFC 6265 §5.1.4: the directory of the request path (up to, not including, its
/// last `/`), or `/`.
fn default_path(path: &str) -> &str {
    if !path.starts_with('/') {
        return "/";
    }
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(last) => &path[..last],
    }
}

/// RFC 6265 §5.1.4: `request` path-matches `cookie` if they are equal, or `cookie`
/// is a prefix of it that ends in `/` or is followed by `/`.
fn path_match(request: &str, cookie: &str) -> bool {
    match request.strip_prefix(cookie) {
        Some("") => true,
        Some(rest) => cookie.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn site(host: &'static str, path: &'static str) -> Site<'static> {
        Site {
            host,
            path,
            secure: false,
        }
    }

    fn set(jar: &mut Jar, value: &str, at: Site<'_>) -> Vec<Dropped> {
        jar.store(value.as_bytes(), &at, NOW)
    }

    #[test]
    fn path_defaults_and_matches() {
        assert_eq!(default_path("/a/b/c"), "/a/b");
        assert_eq!(default_path("/a"), "/");
        assert_eq!(default_path("/"), "/");
        assert_eq!(default_path(""), "/");
        assert!(path_match("/app", "/app"));
        assert!(path_match("/app/x", "/app"));
        assert!(path_match("/app/x", "/app/"));
        assert!(!path_match("/application", "/app"));
        assert!(!path_match("/", "/app"));

        let mut jar = Jar::default();
        set(&mut jar, "a=1", site("h", "/shop/cart"));
        set(&mut jar, "b=2; Path=/", site("h", "/shop/cart"));
        set(&mut jar, "c=3; Path=relative", site("h", "/x/y"));
        assert_eq!(
            jar.header(&site("h", "/shop/list"), NOW).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(jar.header(&site("h", "/"), NOW).as_deref(), Some("b=2"));
        assert_eq!(
            jar.header(&site("h", "/x/z"), NOW).as_deref(),
            Some("c=3; b=2")
        );
    }

    #[test]
    fn domains_host_only_and_foreign() {
        let mut jar = Jar::default();
        set(&mut jar, "host=1", site("www.example.com", "/"));
        set(
            &mut jar,
            "wide=2; Domain=.Example.COM",
            site("www.example.com", "/"),
        );
        assert_eq!(
            set(
                &mut jar,
                "evil=3; Domain=other.org",
                site("www.example.com", "/")
            ),
            [Dropped::Domain]
        );
        assert_eq!(
            set(
                &mut jar,
                "sub=4; Domain=api.example.com",
                site("www.example.com", "/")
            ),
            [Dropped::Domain]
        );
        assert_eq!(
            jar.header(&site("www.example.com", "/"), NOW).as_deref(),
            Some("host=1; wide=2")
        );
        assert_eq!(
            jar.header(&site("api.example.com", "/"), NOW).as_deref(),
            Some("wide=2")
        );
        assert_eq!(
            jar.header(&site("example.com", "/"), NOW).as_deref(),
            Some("wide=2")
        );
        assert_eq!(jar.header(&site("notexample.com", "/"), NOW), None);
        // An IP host only matches itself.
        assert!(!domain_match("1.2.3.4", "2.3.4"));
        assert!(domain_match("1.2.3.4", "1.2.3.4"));
    }

    #[test]
    fn expiry_and_deletion() {
        let mut jar = Jar::default();
        let at = site("h", "/");
        set(&mut jar, "short=1; Max-Age=2", at);
        set(
            &mut jar,
            "dated=2; Expires=Wed, 21 Oct 2099 07:28:00 GMT",
            at,
        );
        set(
            &mut jar,
            "both=3; Max-Age=1; Expires=Wed, 21 Oct 2099 07:28:00 GMT",
            at,
        );
        set(
            &mut jar,
            "past=4; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
            at,
        );
        assert_eq!(
            jar.header(&at, NOW).as_deref(),
            Some("short=1; dated=2; both=3")
        );
        assert_eq!(
            jar.header(&at, NOW + 1_000).as_deref(),
            Some("short=1; dated=2")
        );
        assert_eq!(jar.header(&at, NOW + 2_000).as_deref(), Some("dated=2"));
        assert_eq!(jar.len(), 1, "expired cookies are purged");
        // Deletion by Max-Age=0, by a negative one, and by a past Expires.
        set(&mut jar, "a=1", at);
        set(&mut jar, "b=1", at);
        set(&mut jar, "dated=x; Max-Age=0", at);
        set(&mut jar, "a=; Max-Age=-5", at);
        set(&mut jar, "b=; Expires=Thu, 01 Jan 1970 00:00:00 GMT", at);
        assert_eq!(jar.header(&at, NOW), None);
        assert!(jar.is_empty());
        // Deleting needs the same path: another path is another cookie.
        set(&mut jar, "p=1; Path=/a", at);
        set(&mut jar, "p=; Max-Age=0; Path=/b", at);
        assert_eq!(jar.header(&site("h", "/a"), NOW).as_deref(), Some("p=1"));
    }

    #[test]
    fn replacement_keeps_creation_order() {
        let mut jar = Jar::default();
        let at = site("h", "/");
        set(&mut jar, "a=1", at);
        set(&mut jar, "b=1", at);
        set(&mut jar, "a=2; HttpOnly", at);
        assert_eq!(jar.header(&at, NOW).as_deref(), Some("a=2; b=1"));
        assert_eq!(jar.len(), 2);
        assert!(jar.cookies().iter().any(|c| c.name == "a" && c.http_only));
    }

    #[test]
    fn secure_cookies_need_https() {
        let mut jar = Jar::default();
        assert_eq!(
            set(&mut jar, "s=1; Secure", site("h", "/")),
            [Dropped::Insecure]
        );
        let https = Site {
            host: "h",
            path: "/",
            secure: true,
        };
        assert!(jar.store(b"s=1; Secure", &https, NOW).is_empty());
        assert_eq!(jar.header(&site("h", "/"), NOW), None);
        assert_eq!(jar.header(&https, NOW).as_deref(), Some("s=1"));
    }

    #[test]
    fn unreadable_cookies_are_refused() {
        let mut jar = Jar::default();
        let at = site("h", "/");
        assert_eq!(set(&mut jar, "novalue", at), [Dropped::Invalid]);
        assert_eq!(set(&mut jar, "=v", at), [Dropped::Invalid]);
        assert_eq!(jar.store(b"a=\xff", &at, NOW), [Dropped::Invalid]);
        assert!(jar.is_empty());
    }

    #[test]
    fn a_cookie_over_4_kib_is_refused() {
        let mut jar = Jar::default();
        let at = site("h", "/");
        // name 1 + value + domain 1 + path 1 = 4096 fits; one more byte does not.
        let fits = format!("a={}", "v".repeat(MAX_COOKIE_BYTES - 3));
        let over = format!("b={}", "v".repeat(MAX_COOKIE_BYTES - 2));
        assert!(set(&mut jar, &fits, at).is_empty());
        assert_eq!(set(&mut jar, &over, at), [Dropped::TooLarge]);
        assert_eq!(jar.len(), 1);
    }

    #[test]
    fn at_most_50_cookies_oldest_out() {
        let mut jar = Jar::default();
        let at = site("h", "/");
        for i in 0..MAX_COOKIES {
            assert!(set(&mut jar, &format!("c{i}=1"), at).is_empty());
        }
        // Setting c0 again makes it the most recently set: c1 is the oldest now.
        set(&mut jar, "c0=2", at);
        assert_eq!(set(&mut jar, "new=1", at), [Dropped::Count]);
        assert_eq!(jar.len(), MAX_COOKIES);
        let names: Vec<&str> = jar.cookies().iter().map(|c| c.name.as_str()).collect();
        assert!(!names.contains(&"c1"), "the least recently set went first");
        assert!(names.contains(&"c0") && names.contains(&"new"));
        for i in 0..1000 {
            set(&mut jar, &format!("flood{i}=1"), at);
            assert!(jar.len() <= MAX_COOKIES);
        }
    }

    #[test]
    fn at_most_8_kib_oldest_out() {
        let mut jar = Jar::default();
        let at = site("h", "/");
        let big = |name: &str| format!("{name}={}", "v".repeat(3000));
        assert!(set(&mut jar, &big("a"), at).is_empty());
        assert!(set(&mut jar, &big("b"), at).is_empty());
        assert_eq!(set(&mut jar, &big("c"), at), [Dropped::Bytes]);
        assert!(jar.bytes() <= MAX_BYTES);
        let names: Vec<&str> = jar.cookies().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn names_are_case_sensitive() {
        let builtin = Jarred::from_config(&crate::config::CookieJar::Builtin);
        assert!(builtin.covers(b"PHPSESSID"));
        assert!(!builtin.covers(b"phpsessid"));
        assert!(!builtin.covers(b"XSRF-TOKEN"));
        assert!(Jarred::All.covers(b"anything"));
        assert!(!Jarred::Off.covers(b"PHPSESSID"));
    }

    #[test]
    fn jars_round_trip_through_serde() {
        let mut jar = Jar::default();
        set(
            &mut jar,
            "PHPSESSID=abc; Path=/; HttpOnly; Max-Age=60",
            site("h", "/"),
        );
        let json = serde_json::to_string(&jar).unwrap();
        let back: Jar = serde_json::from_str(&json).unwrap();
        assert_eq!(back, jar);
    }
}
