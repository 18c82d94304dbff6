//! Tickets and challenges: single-use, short-lived values that may appear in URLs.
//!
//! A **ticket** (`__sg_t`) carries a session across one request that cannot set a
//! header: a full-page navigation, a WebSocket, an EventSource, a beacon. A
//! **challenge** (`__sg_c`, on the bootstrap page) lets that page's script ask for
//! its session. Both are issued without storing anything: a value is
//! `kind ‖ handle ‖ expiry ‖ nonce ‖ MAC`, the MAC (HMAC-SHA256, truncated to 128 bits)
//! keyed by a per-process secret and computed over the fields *and* the browser key
//! of the browser it was issued to. So a value is worthless in another
//! browser, after its expiry, or once altered — and issuing one costs no memory, which
//! matters for challenges: anyone may load a page.
//!
//! Single use needs memory, but only for values actually redeemed: their MAC goes into
//! a "spent" set until it would have expired anyway. The set is capped; when it is
//! full of live entries, redemption fails closed (the browser falls back to the
//! bootstrap page, which still works).

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use ring::hmac;

use super::token::constant_time_eq;
use super::{BrowserKey, Handle, Millis, SessionError};

/// How long an unused ticket or challenge stays valid (DESIGN.md §2: ≤ 2 min).
pub const TICKET_TTL: Millis = 120_000;

const MAC_BYTES: usize = 16;
const RAW_BYTES: usize = 1 + 16 + 8 + 8 + MAC_BYTES;

/// What a value was issued for; a ticket never passes as a challenge or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Ticket = 1,
    Challenge = 2,
}

/// Why a value was not accepted (all of them mean "treat as absent").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("malformed")]
    Malformed,
    #[error("not issued by this gateway to this browser")]
    Forged,
    #[error("expired")]
    Expired,
    #[error("already used")]
    Spent,
    #[error("too many values redeemed recently")]
    Full,
}

/// Issues and redeems tickets and challenges.
pub struct Tickets {
    key: hmac::Key,
    /// MAC → expiry of every redeemed, not yet expired value.
    spent: DashMap<[u8; MAC_BYTES], Millis>,
    spent_len: AtomicUsize,
    max_spent: usize,
}

impl Tickets {
    /// A new issuer with a fresh secret; at most `max_spent` redeemed values are
    /// remembered at once.
    pub fn new(max_spent: usize) -> Result<Self, SessionError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| SessionError::Entropy(e.to_string()))?;
        Ok(Tickets {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            spent: DashMap::new(),
            spent_len: AtomicUsize::new(0),
            max_spent: max_spent.max(1),
        })
    }

    /// Issues a value of `kind` for `handle` (challenges use the nil handle), valid
    /// until `now + TICKET_TTL`, for the browser with key `browser`.
    pub fn issue(&self, kind: Kind, handle: Handle, browser: &BrowserKey, now: Millis) -> String {
        let mut raw = [0u8; RAW_BYTES];
        raw[0] = kind as u8;
        raw[1..17].copy_from_slice(handle.as_bytes());
        raw[17..25].copy_from_slice(&(now + TICKET_TTL).to_be_bytes());
        // The nonce only has to make two values issued in the same millisecond
        // differ; uuid's fast RNG is plenty, the MAC is what makes values unforgeable.
        raw[25..33].copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
        let mac = self.mac(&raw[..33], browser);
        raw[33..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a value without spending it (a prefetch must not consume anything).
    pub fn peek(
        &self,
        kind: Kind,
        text: &str,
        browser: &BrowserKey,
        now: Millis,
    ) -> Result<Handle, Rejected> {
        self.verify(kind, text, browser, now)
            .map(|(handle, ..)| handle)
    }

    /// Checks a value and spends it: the same value is refused from now on.
    pub fn redeem(
        &self,
        kind: Kind,
        text: &str,
        browser: &BrowserKey,
        now: Millis,
    ) -> Result<Handle, Rejected> {
        let (handle, expires, mac) = self.verify(kind, text, browser, now)?;
        if self.spent_len.load(Ordering::Acquire) >= self.max_spent {
            self.prune(now);
            if self.spent_len.load(Ordering::Acquire) >= self.max_spent {
                return Err(Rejected::Full);
            }
        }
        match self.spent.entry(mac) {
            dashmap::Entry::Occupied(_) => Err(Rejected::Spent),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(expires);
                self.spent_len.fetch_add(1, Ordering::AcqRel);
                Ok(handle)
            }
        }
    }

    /// Forgets spent values that have expired anyway (called periodically).
    pub fn prune(&self, now: Millis) {
        self.spent.retain(|_, expires| {
            let keep = *expires > now;
            if !keep {
                self.spent_len.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        });
    }

    /// How many redeemed values are remembered.
    pub fn spent_len(&self) -> usize {
        self.spent_len.load(Ordering::Acquire)
    }

    fn verify(
        &self,
        kind: Kind,
        text: &str,
        browser: &BrowserKey,
        now: Millis,
    ) -> Result<(Handle, Millis, [u8; MAC_BYTES]), Rejected> {
        // Exact length first: decoding is linear, but there is no reason to decode
        // a 64 KiB query value at all.
        if text.len() != (RAW_BYTES * 4).div_ceil(3) {
            return Err(Rejected::Malformed);
        }
        let mut raw = [0u8; RAW_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut raw) {
            Ok(RAW_BYTES) => {}
            _ => return Err(Rejected::Malformed),
        }
        let expected = self.mac(&raw[..33], browser);
        if !constant_time_eq(&expected, &raw[33..]) {
            return Err(Rejected::Forged);
        }
        if raw[0] != kind as u8 {
            return Err(Rejected::Forged);
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&raw[17..25]);
        let expires = u64::from_be_bytes(expiry);
        if now >= expires {
            return Err(Rejected::Expired);
        }
        let mut handle = [0u8; 16];
        handle.copy_from_slice(&raw[1..17]);
        Ok((Handle::from_bytes(handle), expires, expected))
    }

    fn mac(&self, fields: &[u8], browser: &BrowserKey) -> [u8; MAC_BYTES] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(fields);
        context.update(browser.as_bytes());
        let tag = context.sign();
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Tickets {
        Tickets::new(1000).unwrap()
    }

    fn key() -> BrowserKey {
        BrowserKey::generate().unwrap()
    }

    #[test]
    fn a_ticket_is_redeemed_once_by_its_browser_before_expiry() {
        let t = issuer();
        let handle = Handle::new_v4();
        let (mine, other) = (key(), key());
        let ticket = t.issue(Kind::Ticket, handle, &mine, 1_000);
        assert_eq!(ticket.len(), 66);
        assert!(ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(t.peek(Kind::Ticket, &ticket, &mine, 1_001), Ok(handle));
        assert_eq!(
            t.redeem(Kind::Ticket, &ticket, &other, 1_001),
            Err(Rejected::Forged)
        );
        assert_eq!(t.redeem(Kind::Ticket, &ticket, &mine, 1_001), Ok(handle));
        assert_eq!(
            t.redeem(Kind::Ticket, &ticket, &mine, 1_002),
            Err(Rejected::Spent)
        );
        let late = t.issue(Kind::Ticket, handle, &mine, 1_000);
        assert_eq!(
            t.redeem(Kind::Ticket, &late, &mine, 1_000 + TICKET_TTL),
            Err(Rejected::Expired)
        );
    }

    #[test]
    fn kinds_do_not_mix_and_tampering_is_detected() {
        let t = issuer();
        let k = key();
        let challenge = t.issue(Kind::Challenge, Handle::nil(), &k, 0);
        assert_eq!(
            t.peek(Kind::Ticket, &challenge, &k, 1),
            Err(Rejected::Forged)
        );
        let mut bytes = challenge.clone().into_bytes();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            t.peek(Kind::Challenge, &tampered, &k, 1),
            Err(Rejected::Forged)
        );
        for junk in ["", "x", &"A".repeat(66), &"%".repeat(66), &challenge[..65]] {
            assert!(t.peek(Kind::Challenge, junk, &k, 1).is_err(), "{junk}");
        }
        let other_process = issuer();
        assert_eq!(
            other_process.peek(Kind::Challenge, &challenge, &k, 1),
            Err(Rejected::Forged)
        );
    }

    #[test]
    fn the_spent_set_is_bounded_and_pruned() {
        let t = Tickets::new(2).unwrap();
        let (h, k) = (Handle::new_v4(), key());
        let a = t.issue(Kind::Ticket, h, &k, 0);
        let b = t.issue(Kind::Ticket, h, &k, 0);
        let c = t.issue(Kind::Ticket, h, &k, 10);
        assert!(t.redeem(Kind::Ticket, &a, &k, 1).is_ok());
        assert!(t.redeem(Kind::Ticket, &b, &k, 1).is_ok());
        assert_eq!(t.redeem(Kind::Ticket, &c, &k, 1), Err(Rejected::Full));
        // Once a and b have expired, pruning frees their slots.
        assert!(t.redeem(Kind::Ticket, &c, &k, TICKET_TTL + 1).is_ok());
        assert_eq!(t.spent_len(), 1);
    }
}
