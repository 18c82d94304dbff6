//! Secrets the proxy mints for browsers: session tokens and browser keys.
//!
//! Both are 32 bytes from the OS CSPRNG, carried as 43 characters of unpadded
//! base64url. Parsing is strict (exact length and alphabet): anything else is treated
//! as absent, never repaired. Neither value is ever logged (their `Debug` is redacted)
//! nor put in a URL or a metric.

use std::fmt;
use std::hash::{BuildHasher, RandomState};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

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

/// Turns browser keys into compact bindings stored with each session.
///
/// A session keeps a 64-bit keyed hash of its browser key instead of the key itself
/// (8 bytes instead of 32 per session). The hash key is random per process, so an
/// attacker holding a stolen token cannot compute a matching browser key offline and
/// would have to guess among 2^64 values online.
#[derive(Debug, Clone, Default)]
pub struct Binder(RandomState);

impl Binder {
    pub fn new() -> Self {
        Binder(RandomState::new())
    }

    pub fn bind(&self, key: &BrowserKey) -> u64 {
        self.0.hash_one(key.0)
    }
}

/// Compares two secrets without an early exit, so the time taken tells an attacker
/// nothing about how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Derives a session's handle from its token.
///
/// The store keeps no token at all: a session is filed under the handle its token
/// derives to, so a lookup is "derive, then find the handle". The derivation is a
/// 128-bit keyed hash (two independent SipHash keys, random per process): without
/// the keys nobody can compute it offline, a handle (which the upstream sees) reveals
/// nothing about the token, and the table holds 48 bytes less per session than a
/// token → handle map would.
#[derive(Debug, Clone, Default)]
pub struct Deriver(RandomState, RandomState);

impl Deriver {
    pub fn new() -> Self {
        Deriver(RandomState::new(), RandomState::new())
    }

    /// The handle `token` stands for.
    pub fn handle_of(&self, token: &Token) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.0.hash_one(token.0).to_le_bytes());
        bytes[8..].copy_from_slice(&self.1.hash_one(token.0).to_le_bytes());
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
        let deriver = Deriver::new();
        assert_eq!(deriver.handle_of(&a), deriver.handle_of(&a));
        assert_ne!(deriver.handle_of(&a), deriver.handle_of(&b));
        assert_ne!(deriver.handle_of(&a), Deriver::new().handle_of(&a));
        assert_eq!(deriver.handle_of(&a).get_version_num(), 4);
    }

    #[test]
    fn binding_depends_on_the_key() {
        let binder = Binder::new();
        let a = BrowserKey::generate().unwrap();
        let b = BrowserKey::generate().unwrap();
        assert_eq!(binder.bind(&a), binder.bind(&a));
        assert_ne!(binder.bind(&a), binder.bind(&b));
    }
}
