//! Which session does a request belong to? (DESIGN.md §3)
//!
//! First match wins: the `X-Session-Token` header (the agent, fetch/XHR, reserved
//! endpoints); then, in `browser` mode, the session cookie; a `browser`-mode request
//! without a valid cookie gets a new session (as ASP.NET does on first access). Every
//! token is only valid together with the browser key cookie it was bound to; a token
//! that is malformed, unknown, expired or bound elsewhere is treated as absent — never
//! adopted — so a session cannot be fixed from outside.

use std::sync::Arc;

use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue};

use super::store::SessionStore;
use super::{BrowserKey, CreatedKind, Millis, Session, SessionError, Token};
use crate::config::SessionMode;
use crate::proxy::headers::{cookie_values, X_SESSION_TOKEN};

/// Names of the proxy's cookies; `__Host-` prefixed (and `Secure`) under https.
#[derive(Debug, Clone)]
pub struct CookieNames {
    pub browser: &'static str,
    pub session: &'static str,
    secure: bool,
}

impl CookieNames {
    pub fn new(secure: bool) -> Self {
        if secure {
            CookieNames {
                browser: "__Host-sg_browser",
                session: "__Host-sg_session",
                secure,
            }
        } else {
            CookieNames {
                browser: "sg_browser",
                session: "sg_session",
                secure,
            }
        }
    }

    pub fn both(&self) -> [&'static str; 2] {
        [self.browser, self.session]
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure under https.
    /// `None` as the value expires the cookie.
    pub fn set(&self, name: &'static str, value: Option<String>) -> HeaderValue {
        let expire = value.is_none();
        let mut cookie = Cookie::build((name, value.unwrap_or_default()))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path("/")
            .secure(self.secure);
        if expire {
            cookie = cookie.max_age(cookie::time::Duration::ZERO);
        }
        // Names are constants and values base64url, so this never fails; an empty
        // header would only mean no cookie.
        HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
    }
}

/// How the session reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Header,
    Cookie,
    /// Created by this request.
    Minted,
}

/// The outcome of identity resolution for one request.
#[derive(Debug, Default)]
pub struct Identity {
    pub session: Option<Arc<Session>>,
    pub carrier: Option<Carrier>,
    /// `Set-Cookie` values the response must carry.
    pub set_cookies: Vec<HeaderValue>,
}

/// Resolves requests to sessions.
pub struct Resolver {
    store: Arc<dyn SessionStore>,
    mode: SessionMode,
    pub cookies: CookieNames,
}

impl Resolver {
    pub fn new(store: Arc<dyn SessionStore>, mode: SessionMode, secure: bool) -> Self {
        Resolver {
            store,
            mode,
            cookies: CookieNames::new(secure),
        }
    }

    /// The request's browser key, if it carries a well-formed one.
    pub fn browser_key(&self, headers: &HeaderMap) -> Option<BrowserKey> {
        cookie_values(headers, self.cookies.browser).find_map(BrowserKey::parse)
    }

    /// Finds the request's session. With `may_mint`, a `browser`-mode request without
    /// one gets a new session (and the cookies to carry it).
    pub fn resolve(
        &self,
        headers: &HeaderMap,
        may_mint: bool,
        now: Millis,
    ) -> Result<Identity, SessionError> {
        let key = self.browser_key(headers);
        if let Some(key) = &key {
            if let Some(session) = self.by_header(headers, key, now) {
                return Ok(Identity {
                    session: Some(session),
                    carrier: Some(Carrier::Header),
                    set_cookies: Vec::new(),
                });
            }
            if self.mode == SessionMode::Browser {
                if let Some(session) = self.by_cookie(headers, key, now) {
                    return Ok(Identity {
                        session: Some(session),
                        carrier: Some(Carrier::Cookie),
                        set_cookies: Vec::new(),
                    });
                }
            }
        }
        if may_mint && self.mode == SessionMode::Browser {
            return self.mint(key, CreatedKind::New, now);
        }
        Ok(Identity::default())
    }

    fn by_header(
        &self,
        headers: &HeaderMap,
        key: &BrowserKey,
        now: Millis,
    ) -> Option<Arc<Session>> {
        let token = headers
            .get_all(X_SESSION_TOKEN)
            .iter()
            .find_map(|v| v.to_str().ok().and_then(Token::parse))?;
        self.store.resolve(&token, key, now)
    }

    fn by_cookie(
        &self,
        headers: &HeaderMap,
        key: &BrowserKey,
        now: Millis,
    ) -> Option<Arc<Session>> {
        // Several cookies of the same name can arrive (cookie tossing from a sibling
        // subdomain); the first one that is valid for this browser wins.
        cookie_values(headers, self.cookies.session)
            .filter_map(Token::parse)
            .find_map(|token| self.store.resolve(&token, key, now))
    }

    /// Creates a session for this browser (and a browser key if it has none).
    pub fn mint(
        &self,
        key: Option<BrowserKey>,
        kind: CreatedKind,
        now: Millis,
    ) -> Result<Identity, SessionError> {
        let mut set_cookies = Vec::with_capacity(2);
        let key = match key {
            Some(key) => key,
            None => {
                let key = BrowserKey::generate()?;
                set_cookies.push(self.cookies.set(self.cookies.browser, Some(key.encode())));
                key
            }
        };
        let created = self.store.create(&key, None, kind, now)?;
        if self.mode == SessionMode::Browser {
            set_cookies.push(
                self.cookies
                    .set(self.cookies.session, Some(created.token.encode())),
            );
        }
        Ok(Identity {
            session: Some(created.session),
            carrier: Some(Carrier::Minted),
            set_cookies,
        })
    }

    /// The cookie that forgets an ended `browser`-mode session.
    pub fn expire_session_cookie(&self) -> Option<HeaderValue> {
        (self.mode == SessionMode::Browser).then(|| self.cookies.set(self.cookies.session, None))
    }
}
