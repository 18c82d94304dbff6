//! Secrets the proxy mints for browsers: session tokens and browser keys.
//!
//! Both are 32 bytes from the OS CSPRNG, carried as 43 characters of unpadded
//! base64url. Parsing is strict (exact length and alphabet): anything else is treated
//! as absent, never repaired. Neither value is ever logged (their `Debug` is redacted)
//! nor put in a URL or a metric.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use subtle::ConstantTimeEq;

use super::SessionError;

const SECRET_BYTES: usize = 32;
const ENCODED_LEN: usize = 43;

fn random_secret() -> Result<[u8; SECRET_BYTES], SessionError> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| SessionError::Entropy(e.to_string()))?;
    Ok(bytes)
}

fn decode_secret(text: &str) -> Option<[u8; SECRET_BYTES]> {
    if text.len() != ENCODED_LEN {
        return None;
    }
    let mut bytes = [0u8; SECRET_BYTES];
    match URL_SAFE_NO_PAD.decode_slice(text.as_bytes(), &mut bytes) {
        Ok(SECRET_BYTES) => Some(bytes),
        _ => None,
    }
}

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name([u8; SECRET_BYTES]);

        impl $name {
            /// A fresh value from the OS CSPRNG.
            pub fn generate() -> Result<Self, SessionError> {
                random_secret().map(Self)
            }

            /// Strictly parses the 43-character base64url form; `None` for anything else.
            pub fn parse(text: &str) -> Option<Self> {
                decode_secret(text).map(Self)
            }

            /// The 43-character base64url form, for a cookie or a response body only.
            pub fn encode(&self) -> String {
                URL_SAFE_NO_PAD.encode(self.0)
            }

            /// The raw bytes (for MACs that bind a value to this secret).
            #[allow(dead_code)] // only browser keys are MAC'd today
            pub(crate) fn as_bytes(&self) -> &[u8; SECRET_BYTES] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_type!(
    /// The browser's secret for one session.
    Token
);
secret_type!(
    /// The HttpOnly cookie value that binds tokens to one browser profile.
    BrowserKey
);

/// The gateway's keys: what handles, browser bindings, tickets and challenges are
/// derived or MACed under. 256 bits each from the OS CSPRNG, never logged; a fresh
/// set per process, unless `persist.path` restores the set of the process that wrote
/// the snapshot (without it every token, cookie and ticket issued before a restart
/// would stop working). The snapshot is the only place they are ever stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    handles: [u8; SECRET_BYTES],
    bindings: [u8; SECRET_BYTES],
    tickets: [u8; SECRET_BYTES],
}

impl Secrets {
    /// Bytes in [`Secrets::to_bytes`].
    pub const LEN: usize = 3 * SECRET_BYTES;

    /// A fresh set from the OS CSPRNG.
    pub fn generate() -> Result<Self, SessionError> {
        Ok(Secrets {
            handles: random_secret()?,
            bindings: random_secret()?,
            tickets: random_secret()?,
        })
    }

    /// The set as saved in a snapshot.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..SECRET_BYTES].copy_from_slice(&self.handles);
        out[SECRET_BYTES..2 * SECRET_BYTES].copy_from_slice(&self.bindings);
        out[2 * SECRET_BYTES..].copy_from_slice(&self.tickets);
        out
    }

    /// The set [`Secrets::to_bytes`] saved.
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
        let mut secrets = Secrets {
            handles: [0; SECRET_BYTES],
            bindings: [0; SECRET_BYTES],
            tickets: [0; SECRET_BYTES],
        };
        secrets.handles.copy_from_slice(&bytes[..SECRET_BYTES]);
        secrets
            .bindings
            .copy_from_slice(&bytes[SECRET_BYTES..2 * SECRET_BYTES]);
        secrets.tickets.copy_from_slice(&bytes[2 * SECRET_BYTES..]);
        secrets
    }

    /// This set with a fresh ticket key (values issued under the old one stop
    /// working), the handle and binding keys kept.
    pub fn with_fresh_tickets(mut self) -> Result<Self, SessionError> {
        self.tickets = random_secret()?;
        Ok(self)
    }

    pub fn deriver(&self) -> Deriver {
        Deriver(DerivationKey::from_secret(&self.handles))
    }

    pub fn binder(&self) -> Binder {
        Binder(DerivationKey::from_secret(&self.bindings))
    }

    /// The key tickets and challenges are MACed under (see `session::ticket`).
    pub fn tickets(&self) -> &[u8; SECRET_BYTES] {
        &self.tickets
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

/// A key under which handles or bindings are derived (see [`Secrets`]), so derived
/// values cannot be computed (or inverted) without it.
#[derive(Clone)]
struct DerivationKey(hmac::Key);

impl DerivationKey {
    fn generate() -> Result<Self, SessionError> {
        random_secret().map(|secret| Self::from_secret(&secret))
    }

    fn from_secret(secret: &[u8; SECRET_BYTES]) -> Self {
        DerivationKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// HMAC-SHA256 over a domain label and `secret`, truncated to 128 bits. The label
    /// keeps handles and bindings of the same bytes unrelated.
    fn derive(&self, label: &[u8], secret: &[u8; SECRET_BYTES]) -> [u8; 16] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(label);
        context.update(secret);
        let tag = context.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }
}

impl fmt::Debug for DerivationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivationKey(<redacted>)")
    }
}

/// Turns browser keys into compact bindings stored with each session.
///
/// A session keeps a 64-bit keyed MAC of its browser key instead of the key itself
/// (8 bytes instead of 32 per session): HMAC-SHA256 under a random per-process key,
/// truncated. So an attacker holding a stolen token cannot compute a matching
/// browser key offline and would have to guess among 2^64 values online.
#[derive(Debug, Clone)]
pub struct Binder(DerivationKey);

impl Binder {
    pub fn new() -> Result<Self, SessionError> {
        DerivationKey::generate().map(Binder)
    }

    pub fn bind(&self, key: &BrowserKey) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.0.derive(b"sessiongate binding", &key.0)[..8]);
        u64::from_le_bytes(bytes)
    }
}

/// Compares two secrets without an early exit (`subtle`), so the time taken tells an
/// attacker nothing about how much of a guess was right. Only the length, which is
/// public (fixed formats, or the configured token's length), may leak.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Derives a session's handle from its token.
///
/// The store keeps no token at all: a session is filed under the handle its token
/// derives to, so a lookup is "derive, then find the handle". The derivation is
/// HMAC-SHA256 under one random 256-bit per-process key from the OS CSPRNG,
/// truncated to 128 bits (with a v4 UUID's version and variant bits set): without the
/// key nobody can compute it offline, a handle (which the upstream sees) reveals
/// nothing about the token, and the table holds 48 bytes less per session than a
/// token → handle map would.
#[derive(Debug, Clone)]
pub struct Deriver(DerivationKey);

impl Deriver {
    pub fn new() -> Result<Self, SessionError> {
        DerivationKey::generate().map(Deriver)
    }

    /// The handle `token` stands for.
    pub fn handle_of(&self, token: &Token) -> uuid::Uuid {
        let bytes = self.0.derive(b"sessiongate handle", &token.0);
        // Pseudo-random bytes with the version and variant bits of a v4 UUID.
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_43_chars() {
        let token = Token::generate().unwrap();
        let text = token.encode();
        assert_eq!(text.len(), 43);
        assert_eq!(Token::parse(&text), Some(token));
    }

    #[test]
    fn rejects_anything_but_the_exact_form() {
        let text = Token::generate().unwrap().encode();
        assert_eq!(Token::parse(&text[1..]), None);
        assert_eq!(Token::parse(&format!("{text}A")), None);
        assert_eq!(Token::parse(&format!("{}=", &text[..42])), None);
        assert_eq!(Token::parse(&"+".repeat(43)), None);
        assert_eq!(Token::parse(""), None);
    }

    #[test]
    fn tokens_are_distinct_and_debug_is_redacted() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(&a.encode()));
    }

    #[test]
    fn handles_derive_stably_and_differ_per_token_and_process() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        let deriver = Deriver::new().unwrap();
        assert_eq!(deriver.handle_of(&a), deriver.handle_of(&a));
        assert_ne!(deriver.handle_of(&a), deriver.handle_of(&b));
        assert_ne!(deriver.handle_of(&a), Deriver::new().unwrap().handle_of(&a));
        assert_eq!(deriver.handle_of(&a).get_version_num(), 4);
    }

    #[test]
    fn binding_depends_on_the_key() {
        let binder = Binder::new().unwrap();
        let a = BrowserKey::generate().unwrap();
        let b = BrowserKey::generate().unwrap();
        assert_eq!(binder.bind(&a), binder.bind(&a));
        assert_ne!(binder.bind(&a), binder.bind(&b));
        assert_ne!(binder.bind(&a), Binder::new().unwrap().bind(&a));
    }

    #[test]
    fn handles_are_hmac_sha256_of_the_token_truncated() {
        // Same key, same bytes: the derivation is exactly HMAC-SHA256 over the label
        // and the token, truncated to 128 bits with the v4 bits set.
        let secret = [7u8; SECRET_BYTES];
        let key = DerivationKey(hmac::Key::new(hmac::HMAC_SHA256, &secret));
        let token = Token([9u8; SECRET_BYTES]);
        let mut message = b"sessiongate handle".to_vec();
        message.extend_from_slice(&token.0);
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), &message);
        let mut expected = [0u8; 16];
        expected.copy_from_slice(&tag.as_ref()[..16]);
        let expected = uuid::Builder::from_random_bytes(expected).into_uuid();
        assert_eq!(Deriver(key).handle_of(&token), expected);
    }

    #[test]
    fn restored_secrets_derive_the_same_values() {
        let secrets = Secrets::generate().unwrap();
        let again = Secrets::from_bytes(&secrets.to_bytes());
        assert_eq!(again, secrets);
        let (token, key) = (Token::generate().unwrap(), BrowserKey::generate().unwrap());
        assert_eq!(
            again.deriver().handle_of(&token),
            secrets.deriver().handle_of(&token)
        );
        assert_eq!(again.binder().bind(&key), secrets.binder().bind(&key));
        let other = Secrets::generate().unwrap();
        assert_ne!(
            other.deriver().handle_of(&token),
            secrets.deriver().handle_of(&token)
        );
        let fresh = secrets.clone().with_fresh_tickets().unwrap();
        assert_ne!(fresh.tickets(), secrets.tickets());
        assert_eq!(
            fresh.deriver().handle_of(&token),
            secrets.deriver().handle_of(&token)
        );
        assert_eq!(format!("{secrets:?}"), "Secrets(<redacted>)");
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
