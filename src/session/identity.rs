//! Which session does a request belong to? (DESIGN.md §3)
//!
//! First match wins:
//! 1. the `X-Session-Token` header (the agent's fetch/XHR, reserved endpoints);
//! 2. a single-use ticket `__sg_t` in the query (navigations, WebSocket, EventSource,
//!    beacons) — checked but not spent by a prefetch;
//! 3. `browser` mode: the session cookie; a request without a valid one gets a new
//!    session (as ASP.NET does on first access);
//! 4. `tab` mode, a navigation from a browser without a browser key: first contact,
//!    a new session whose token goes into the page;
//! 5. `tab` mode, any other navigation without identity: the bootstrap page, whose
//!    script finds the tab's session in `sessionStorage`;
//! 6. anything else: no session.
//!
//! Except: in `tab` mode a write (POST and any method but GET, HEAD and OPTIONS)
//! that carries a tab identity — `X-Session-Token` or a `__sg_t` ticket — which names
//! no live session is [`Outcome::Ended`]: its tab's session is over (or the value
//! was never good), and forwarding it without a session would hand what the user
//! sent to a fresh, empty session.
//!
//! Every token and ticket is only valid together with the browser key cookie it was
//! bound to; one that is malformed, unknown, expired or bound elsewhere is treated as
//! absent — never adopted — so a session cannot be fixed from outside. Speculative
//! loads (`Sec-Purpose: prefetch`/`prerender`) never mint or spend anything.

use std::net::IpAddr;
use std::sync::Arc;

use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue};

use super::limit::{self, CreationLimiter};
use super::store::{Created, Resolved, SessionStore};
use super::ticket::{Kind, Tickets};
use super::{BrowserKey, CreatedKind, Handle, Millis, Session, SessionError, Token, Touch};
use crate::config::{DuplicateTab, SessionMode};
use crate::web::forwarded::Scheme;
use crate::web::headers::{cookie_values, X_SESSION_TOKEN};
use crate::web::query;

/// The query parameter that carries a ticket.
pub const TICKET_PARAM: &str = "__sg_t";
/// The query parameter that counts bootstrap hops (the loop guard).
pub const HOP_PARAM: &str = "__sg_b";
/// Bootstrap hops after which a navigation gets an error page instead.
pub const MAX_HOPS: u32 = 2;

/// The proxy's cookies, `sg_browser` and `sg_session`, in both spellings: plain
/// under http, `__Host-` prefixed (and `Secure`) under https. Which one a request
/// reads and gets set depends on its public scheme, which is decided per request
/// (see [`crate::web::forwarded`]); both are removed from what goes upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct CookieNames;

/// The plain spelling (public scheme http).
const PLAIN: Spelling = Spelling {
    browser: "sg_browser",
    session: "sg_session",
    secure: false,
};

/// The `__Host-` spelling (public scheme https): the browser accepts it only with
/// `Secure`, `Path=/` and no `Domain`, so a sibling subdomain cannot plant it.
const HOST_PREFIXED: Spelling = Spelling {
    browser: "__Host-sg_browser",
    session: "__Host-sg_session",
    secure: true,
};

impl CookieNames {
    /// Every name the proxy's cookies can have, in either spelling: what is removed
    /// from the `Cookie` header sent upstream.
    pub const fn both(&self) -> [&'static str; 4] {
        [
            PLAIN.browser,
            PLAIN.session,
            HOST_PREFIXED.browser,
            HOST_PREFIXED.session,
        ]
    }

    /// The spelling in force for a request whose public scheme is `scheme`.
    pub fn spelled(&self, scheme: Scheme) -> Spelling {
        if scheme.is_secure() {
            HOST_PREFIXED
        } else {
            PLAIN
        }
    }
}

/// The names of the proxy's cookies for one public scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spelling {
    pub browser: &'static str,
    pub session: &'static str,
    secure: bool,
}

impl Spelling {
    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure under https.
    /// `None` as the value expires the cookie; `max_age` (seconds) makes it
    /// persistent, else it is a session cookie.
    pub fn set(
        &self,
        name: &'static str,
        value: Option<String>,
        max_age: Option<u64>,
    ) -> HeaderValue {
        let expire = value.is_none();
        let mut cookie = Cookie::build((name, value.unwrap_or_default()))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path("/")
            .secure(self.secure);
        if expire {
            cookie = cookie.max_age(cookie::time::Duration::ZERO);
        } else if let Some(seconds) = max_age {
            let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
            cookie = cookie.max_age(cookie::time::Duration::seconds(seconds));
        }
        // Names are constants and values base64url, so this never fails; an empty
        // header would only mean no cookie.
        HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
    }

    fn name(&self, which: Which) -> &'static str {
        match which {
            Which::Browser => self.browser,
            Which::Session => self.session,
        }
    }
}

/// One of the proxy's two cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `sg_browser`: the browser key.
    Browser,
    /// `sg_session`: the session token (`browser` mode).
    Session,
}

/// A cookie the answer must set (or, with no value, expire). It is written out
/// when the answer is finished, in the spelling of the request's public scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub which: Which,
    /// `None`: expire the cookie.
    pub value: Option<String>,
    /// `Max-Age` in seconds (`session.cookie_lifetime`); `None`: a session cookie.
    pub max_age: Option<u64>,
}

impl SetCookie {
    /// The `Set-Cookie` header value in `spelling`.
    pub fn render(&self, spelling: Spelling) -> HeaderValue {
        spelling.set(spelling.name(self.which), self.value.clone(), self.max_age)
    }
}

/// How the session reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Header,
    Ticket,
    Cookie,
    /// Created by this request.
    Minted,
}

/// The outcome of identity resolution for one request.
#[derive(Debug, Default)]
pub struct Identity {
    pub session: Option<Arc<Session>>,
    pub carrier: Option<Carrier>,
    /// A token the browser does not know yet (first contact, rotation): it goes
    /// into the page (`data-token`), the `X-Session-Token` response header, or the
    /// reserved endpoint's reply.
    pub new_token: Option<Token>,
    /// Cookies the response must set (written in the request's spelling when the
    /// answer is finished).
    pub set_cookies: Vec<SetCookie>,
    /// No session, but the request presented the token of one that ended recently:
    /// the answer says `X-Session-State: ended`, not `none`.
    pub ended: bool,
}

impl Identity {
    fn found(resolved: Resolved, carrier: Carrier) -> Identity {
        Identity {
            session: Some(resolved.session),
            carrier: Some(carrier),
            new_token: resolved.newer_token,
            set_cookies: Vec::new(),
            ended: false,
        }
    }
}

/// What a request carries that may name its session.
#[derive(Debug, Clone, Copy)]
pub struct Carried<'a> {
    pub headers: &'a HeaderMap,
    /// The query, where a ticket may be (`None` where tickets are not accepted).
    pub query: Option<&'a str>,
    /// A prefetch or prerender: never mints or spends anything.
    pub speculative: bool,
    /// The request's public scheme: which spelling of the cookies it carries.
    pub scheme: Scheme,
}

/// What a request to be forwarded needs to know about itself to be identified.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub carried: Carried<'a>,
    /// A GET or HEAD top-level page load (link, address bar, reload).
    pub navigation: bool,
    /// A write: any method but GET, HEAD and OPTIONS.
    pub write: bool,
    /// The client address creation limits apply to.
    pub client: IpAddr,
}

/// Where identification leads.
#[derive(Debug)]
pub enum Outcome {
    /// Forward (with or without a session).
    Forward(Identity),
    /// Serve the bootstrap page to this browser.
    Bootstrap { browser: BrowserKey },
    /// Too many bootstrap hops: serve the error page.
    Loop,
    /// `tab` mode: a write whose tab identity names no live session. Answered as
    /// ended, never forwarded.
    Ended,
}

/// How `POST session` found the tab's session (the reply's `reason` and the label of
/// `sessiongate_bootstraps_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapReason {
    /// The stored token is still good: the same session goes on.
    Resumed,
    /// A first session for the tab.
    New,
    /// A duplicated tab got its own session, a child of the original's.
    Forked,
    /// The stored token's session is gone; a new one replaces it.
    Expired,
}

impl BootstrapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BootstrapReason::Resumed => "resumed",
            BootstrapReason::New => "new",
            BootstrapReason::Forked => "forked",
            BootstrapReason::Expired => "expired",
        }
    }
}

/// The answer to a bootstrap: the session, and its token when the tab must learn it
/// (new, forked, expired, or rotated since the tab stored it).
#[derive(Debug)]
pub struct Bootstrapped {
    pub reason: BootstrapReason,
    pub session: Arc<Session>,
    pub token: Option<Token>,
}

/// Whether a request carries a tab identity at all, good or not: an
/// `X-Session-Token` header or a `__sg_t` ticket in the query.
fn carries_identity(carried: &Carried<'_>) -> bool {
    carried.headers.contains_key(X_SESSION_TOKEN)
        || carried
            .query
            .is_some_and(|q| query::param(q, TICKET_PARAM).is_some())
}

/// Persistent cookies (`session.cookie_lifetime`) are given again at most this often
/// (or at half their lifetime, if that is shorter).
const COOKIE_REFRESH: Millis = 60 * 60 * 1000;

/// Resolves requests to sessions.
pub struct Resolver {
    store: Arc<dyn SessionStore>,
    mode: SessionMode,
    pub cookies: CookieNames,
    pub tickets: Arc<Tickets>,
    limiter: CreationLimiter,
    /// `session.cookie_lifetime` in `browser` mode (0: session cookies).
    cookie_lifetime: Millis,
    /// Bootstrap pages (challenges) per client address group: each one can be
    /// redeemed once, so issuing them freely would let one address spend without
    /// limit (see [`Tickets`]).
    challenges: CreationLimiter,
}

/// Why `POST session` got no session.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapFailed {
    /// The challenge was malformed, forged, expired, already spent, or its browser
    /// redeemed too many values recently.
    #[error("the challenge was not accepted")]
    Challenge,
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl Resolver {
    pub fn new(
        store: Arc<dyn SessionStore>,
        mode: SessionMode,
        tickets: Arc<Tickets>,
        limiter: CreationLimiter,
        challenges: CreationLimiter,
    ) -> Self {
        Resolver {
            store,
            mode,
            cookies: CookieNames,
            tickets,
            limiter,
            cookie_lifetime: 0,
            challenges,
        }
    }

    /// The same resolver giving `browser`-mode cookies this lifetime (0: session
    /// cookies, which end with the browser).
    pub fn with_cookie_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.cookie_lifetime = if self.mode == SessionMode::Browser {
            crate::lifetime::millis(lifetime)
        } else {
            0
        };
        self
    }

    /// The `Max-Age` (seconds) of `session`'s cookies at `now`: `cookie_lifetime`,
    /// never beyond what `max_lifetime` leaves; `None` for session cookies.
    fn cookie_max_age(&self, session: &Session, now: Millis) -> Option<u64> {
        if self.cookie_lifetime == 0 {
            return None;
        }
        let left = session
            .lives_at_most(self.store.rules(), now)
            .map_or(self.cookie_lifetime, |left| left.min(self.cookie_lifetime));
        Some(left / 1000)
    }

    /// Both cookies of a `browser`-mode session again, with a fresh `Max-Age`, if
    /// they are persistent and were last given at least an hour ago (half their
    /// lifetime, if shorter): one answer per interval carries them.
    fn refresh_cookies(
        &self,
        session: &Session,
        key: &BrowserKey,
        token: &Token,
        now: Millis,
    ) -> Vec<SetCookie> {
        let every = COOKIE_REFRESH.min(self.cookie_lifetime / 2).max(1_000);
        if self.cookie_lifetime == 0 || !session.claim_cookie_refresh(every, now) {
            return Vec::new();
        }
        let max_age = self.cookie_max_age(session, now);
        vec![
            SetCookie {
                which: Which::Browser,
                value: Some(key.encode()),
                max_age,
            },
            SetCookie {
                which: Which::Session,
                value: Some(token.encode()),
                max_age,
            },
        ]
    }

    pub fn mode(&self) -> SessionMode {
        self.mode
    }

    /// The request's browser key, if it carries a well-formed one in the spelling of
    /// its public scheme (an https request never reads the plain cookie, which a
    /// sibling subdomain could have planted).
    pub fn browser_key(&self, headers: &HeaderMap, scheme: Scheme) -> Option<BrowserKey> {
        let name = self.cookies.spelled(scheme).browser;
        cookie_values(headers, name).find_map(BrowserKey::parse)
    }

    /// Identifies a request that is to be forwarded (DESIGN.md §3, rules 1–6).
    pub fn identify(&self, ask: &Ask<'_>, now: Millis) -> Result<Outcome, SessionError> {
        let key = self.browser_key(ask.carried.headers, ask.carried.scheme);
        if let Some(identity) = key
            .as_ref()
            .and_then(|key| self.existing(&ask.carried, key, now))
        {
            return Ok(Outcome::Forward(identity));
        }
        if ask.carried.speculative {
            return Ok(Outcome::Forward(self.no_session(&ask.carried, now)));
        }
        if self.mode == SessionMode::Tab && ask.write && carries_identity(&ask.carried) {
            return Ok(Outcome::Ended);
        }
        match (self.mode, key) {
            (SessionMode::Browser, key) => self
                .mint(key, None, CreatedKind::New, ask.client, now)
                .map(Outcome::Forward),
            (SessionMode::Tab, None) if ask.navigation => self
                .mint(None, None, CreatedKind::New, ask.client, now)
                .map(Outcome::Forward),
            (SessionMode::Tab, Some(browser)) if ask.navigation => {
                let hops = ask
                    .carried
                    .query
                    .and_then(|q| query::param(q, HOP_PARAM))
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0);
                if hops >= MAX_HOPS {
                    return Ok(Outcome::Loop);
                }
                self.challenges
                    .admit(ask.client, now)
                    .map_err(|retry| SessionError::Limited(retry.0))?;
                Ok(Outcome::Bootstrap { browser })
            }
            _ => Ok(Outcome::Forward(self.no_session(&ask.carried, now))),
        }
    }

    /// A request forwarded without a session: `ended` if it presented the token of
    /// a session that ended recently.
    fn no_session(&self, carried: &Carried<'_>, now: Millis) -> Identity {
        Identity {
            ended: self.presents_ended(carried, now),
            ..Identity::default()
        }
    }

    /// Whether the request presents (in `X-Session-Token`, or in `browser` mode the
    /// session cookie) the token of a session that ended recently.
    pub fn presents_ended(&self, carried: &Carried<'_>, now: Millis) -> bool {
        if self
            .header_token(carried.headers)
            .is_some_and(|token| self.store.ended_recently(&token, now))
        {
            return true;
        }
        self.mode == SessionMode::Browser
            && cookie_values(
                carried.headers,
                self.cookies.spelled(carried.scheme).session,
            )
            .filter_map(Token::parse)
            .any(|token| self.store.ended_recently(&token, now))
    }

    /// The session a request already carries (header, ticket, cookie), never minting.
    pub fn existing(
        &self,
        carried: &Carried<'_>,
        key: &BrowserKey,
        now: Millis,
    ) -> Option<Identity> {
        if let Some(resolved) = self.by_header(carried.headers, key, now) {
            return Some(Identity::found(resolved, Carrier::Header));
        }
        if let Some(session) = self.by_ticket(carried, key, now) {
            return Some(Identity {
                session: Some(session),
                carrier: Some(Carrier::Ticket),
                ..Identity::default()
            });
        }
        if self.mode == SessionMode::Browser {
            if let Some((resolved, presented)) = self.by_cookie(carried, key, now) {
                let mut identity = Identity::found(resolved, Carrier::Cookie);
                let session = identity.session.as_deref()?;
                let current = identity.new_token.as_ref().unwrap_or(&presented);
                let mut set_cookies = self.refresh_cookies(session, key, current, now);
                if set_cookies.is_empty() {
                    if let Some(token) = &identity.new_token {
                        set_cookies.push(SetCookie {
                            which: Which::Session,
                            value: Some(token.encode()),
                            max_age: self.cookie_max_age(session, now),
                        });
                    }
                }
                identity.set_cookies = set_cookies;
                return Some(identity);
            }
        }
        None
    }

    /// The session of the token in `X-Session-Token`, if valid for this browser.
    pub fn by_header(
        &self,
        headers: &HeaderMap,
        key: &BrowserKey,
        now: Millis,
    ) -> Option<Resolved> {
        let token = self.header_token(headers)?;
        self.store.resolve(&token, key, now)
    }

    /// The well-formed token in `X-Session-Token`, valid or not.
    pub fn header_token(&self, headers: &HeaderMap) -> Option<Token> {
        headers
            .get_all(X_SESSION_TOKEN)
            .iter()
            .find_map(|v| v.to_str().ok().and_then(Token::parse))
    }

    fn by_ticket(
        &self,
        carried: &Carried<'_>,
        key: &BrowserKey,
        now: Millis,
    ) -> Option<Arc<Session>> {
        let ticket = query::param(carried.query?, TICKET_PARAM)?;
        let handle = if carried.speculative {
            self.tickets.peek(Kind::Ticket, &ticket, key, now)
        } else {
            self.tickets.redeem(Kind::Ticket, &ticket, key, now)
        }
        .ok()?;
        if carried.speculative {
            return None;
        }
        self.store.get_bound(&handle, key, now)
    }

    /// The session of the session cookie, and the token the cookie held.
    fn by_cookie(
        &self,
        carried: &Carried<'_>,
        key: &BrowserKey,
        now: Millis,
    ) -> Option<(Resolved, Token)> {
        // Several cookies of the same name can arrive (cookie tossing from a sibling
        // subdomain); the first one that is valid for this browser wins.
        let name = self.cookies.spelled(carried.scheme).session;
        cookie_values(carried.headers, name)
            .filter_map(Token::parse)
            .find_map(|token| Some((self.store.resolve(&token, key, now)?, token)))
    }

    /// `POST session` (DESIGN.md §3 rule 5): the bootstrap page of a tab whose
    /// challenge was already redeemed asks for its session, presenting the token it
    /// stored (if any). The one place that decides between resuming it, forking it
    /// (a duplicated tab under `duplicate_tab = "new"`), replacing an expired one,
    /// and minting a first one.
    ///
    /// `challenge` is the page's challenge; it is checked first and spent only once
    /// the per-client limits have let the request through, so a refused request
    /// spends nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn bootstrap(
        &self,
        browser: BrowserKey,
        challenge: &str,
        presented: Option<Token>,
        duplicate: bool,
        duplicate_tab: DuplicateTab,
        client: IpAddr,
        now: Millis,
    ) -> Result<Bootstrapped, BootstrapFailed> {
        self.tickets
            .peek(Kind::Challenge, challenge, &browser, now)
            .map_err(|_| BootstrapFailed::Challenge)?;
        let spend = || {
            self.tickets
                .redeem(Kind::Challenge, challenge, &browser, now)
                .map(drop)
                .map_err(|_| BootstrapFailed::Challenge)
        };
        let resolved = presented
            .as_ref()
            .and_then(|token| self.store.resolve(token, &browser, now));
        let fork = duplicate && duplicate_tab == DuplicateTab::New;
        let (reason, parent, kind) = match resolved {
            Some(resolved) if !fork => {
                spend()?;
                // A reload or navigation of the tab: the user is there.
                self.store.touch(&resolved.session, Touch::Activity, now);
                return Ok(Bootstrapped {
                    reason: BootstrapReason::Resumed,
                    session: resolved.session,
                    token: resolved.newer_token,
                });
            }
            Some(parent) => (
                BootstrapReason::Forked,
                Some(parent.session.handle()),
                CreatedKind::Fork,
            ),
            None if presented.is_some() => {
                (BootstrapReason::Expired, None, CreatedKind::ResumeMiss)
            }
            None => (BootstrapReason::New, None, CreatedKind::New),
        };
        self.admit(client, now)?;
        spend()?;
        let minted = self
            .store
            .create(&browser, parent, kind, Some(limit::group(client)), now)?;
        Ok(Bootstrapped {
            reason,
            session: minted.session,
            token: Some(minted.token),
        })
    }

    /// Creates a session for this browser (and a browser key if it has none),
    /// within the per-client creation limit.
    pub fn mint(
        &self,
        key: Option<BrowserKey>,
        parent: Option<Handle>,
        kind: CreatedKind,
        client: IpAddr,
        now: Millis,
    ) -> Result<Identity, SessionError> {
        let mut set_cookies = Vec::with_capacity(2);
        let (key, fresh) = match key {
            Some(key) => (key, false),
            None => (BrowserKey::generate()?, true),
        };
        let created = self.create(key, parent, kind, client, now)?;
        // Persistent cookies: the browser key is given again with the new session's
        // `Max-Age` (a session cookie left over would end with the browser).
        let max_age = self.cookie_max_age(&created.session, now);
        if fresh || max_age.is_some() {
            set_cookies.push(SetCookie {
                which: Which::Browser,
                value: Some(key.encode()),
                max_age,
            });
        }
        if self.mode == SessionMode::Browser {
            set_cookies.push(SetCookie {
                which: Which::Session,
                value: Some(created.token.encode()),
                max_age,
            });
        }
        Ok(Identity {
            session: Some(created.session),
            carrier: Some(Carrier::Minted),
            new_token: Some(created.token),
            set_cookies,
            ended: false,
        })
    }

    /// A new session bound to `browser`, within the per-client creation limit.
    fn create(
        &self,
        browser: BrowserKey,
        parent: Option<Handle>,
        kind: CreatedKind,
        client: IpAddr,
        now: Millis,
    ) -> Result<Created, SessionError> {
        self.admit(client, now)?;
        self.store
            .create(&browser, parent, kind, Some(limit::group(client)), now)
    }

    /// The per-client limits on creation: the rate (`session.new_per_client`), then
    /// the live count (`session.max_per_client`).
    fn admit(&self, client: IpAddr, now: Millis) -> Result<(), SessionError> {
        self.store.client_room(limit::group(client))?;
        self.limiter
            .admit(client, now)
            .map_err(|retry| SessionError::Limited(retry.0))
    }

    /// Rotates a session's token (`X-Session-Rotate`) and records the new token on
    /// the identity (and, in `browser` mode, the cookie that carries it).
    pub fn rotate(
        &self,
        session: &Session,
        identity: &mut Identity,
        now: Millis,
    ) -> Result<(), SessionError> {
        let token = self.store.rotate(session, now)?;
        if self.mode == SessionMode::Browser {
            identity.set_cookies.push(SetCookie {
                which: Which::Session,
                value: Some(token.encode()),
                max_age: self.cookie_max_age(session, now),
            });
        }
        identity.new_token = Some(token);
        Ok(())
    }

    /// Forgets expired bookkeeping (spent tickets, full rate-limit buckets).
    pub fn maintain(&self, now: Millis) {
        self.tickets.prune(now);
        self.limiter.forget_full(now);
        self.challenges.forget_full(now);
    }

    /// The cookie that forgets an ended `browser`-mode session.
    pub fn expire_session_cookie(&self) -> Option<SetCookie> {
        (self.mode == SessionMode::Browser).then_some(SetCookie {
            which: Which::Session,
            value: None,
            max_age: None,
        })
    }
}
