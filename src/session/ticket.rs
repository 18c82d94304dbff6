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
//! Single use needs memory, but only for values actually redeemed: their MAC is
//! remembered until it would have expired anyway. So that no client can exhaust that
//! memory for others, it is partitioned by the browser key the value is bound to
//! (which its MAC already proves):
//!
//! - each browser remembers at most [`SPENT_PER_BROWSER`] live spent values; past
//!   that, *that browser's* redemptions fail closed until its oldest expire (a real
//!   tab redeems a handful per navigation; a script that spends hundreds of values a
//!   minute under one key only locks itself out);
//! - at most `max_browsers` browsers are remembered (least recently redeeming first
//!   out, O(1) each). Forgetting a browser's partition can only let *that same
//!   browser* — a value is worthless under any other browser key — replay one of
//!   its own values within the value's remaining lifetime (≤ 2 min); nobody is ever
//!   refused because the table is full.
//!
//! Memory: at most `max_browsers × SPENT_PER_BROWSER` MACs (24 bytes each with
//! their expiry) plus about 100 bytes per browser; pruning expired entries is
//! periodic and never on the request path.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use lru::LruCache;
use ring::hmac;

use super::token::constant_time_eq;
use super::{BrowserKey, Handle, Millis, SessionError};

/// How long an unused ticket or challenge stays valid (DESIGN.md §2: ≤ 2 min).
pub const TICKET_TTL: Millis = 120_000;

/// Live spent values one browser key may have at once (see the module doc).
pub const SPENT_PER_BROWSER: usize = 64;

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
    #[error("this browser redeemed too many values recently")]
    Full,
}

/// Per browser key: (MAC, expiry) of its redeemed, not yet expired values.
type SpentByBrowser = LruCache<BrowserKey, Vec<([u8; MAC_BYTES], Millis)>>;

/// Where spent values are recorded across gateway replicas (a shared store): the
/// local table only knows this process's redemptions.
pub trait SpentLedger: Send + Sync {
    /// Records `id` as spent until `ttl` ms from now: `Some(true)` the first time
    /// anywhere, `Some(false)` if it was spent already, `None` if the ledger cannot
    /// be reached (the value is then refused: single use is not given up).
    fn spend(&self, id: &str, ttl: Millis) -> Option<bool>;
}

/// Issues and redeems tickets and challenges.
pub struct Tickets {
    key: hmac::Key,
    spent: Mutex<SpentByBrowser>,
    ledger: Option<Arc<dyn SpentLedger>>,
}

impl Tickets {
    /// A new issuer with a fresh secret; the spent values of at most `max_browsers`
    /// browsers are remembered at once.
    pub fn new(max_browsers: usize) -> Result<Self, SessionError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| SessionError::Entropy(e.to_string()))?;
        Ok(Self::with_secret(max_browsers, &secret))
    }

    /// An issuer under a given secret ([`crate::session::token::Secrets::tickets`]),
    /// so that values issued before a restart still verify after it. Spent values
    /// are not carried over: like a browser pushed out of the spent table, a browser
    /// could replay one of its own values once within its remaining lifetime.
    pub fn with_secret(max_browsers: usize, secret: &[u8; 32]) -> Self {
        Tickets {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            spent: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_browsers).unwrap_or(NonZeroUsize::MIN),
            )),
            ledger: None,
        }
    }

    /// The same issuer, recording every redemption in a ledger shared by replicas.
    pub fn with_ledger(mut self, ledger: Option<Arc<dyn SpentLedger>>) -> Self {
        self.ledger = ledger;
        self
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
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        // A new browser makes room by pushing out the least recently redeeming one.
        let values = spent.get_or_insert_mut(*browser, Vec::new);
        if values.iter().any(|(seen, _)| constant_time_eq(seen, &mac)) {
            return Err(Rejected::Spent);
        }
        if values.len() >= SPENT_PER_BROWSER {
            values.retain(|(_, until)| *until > now);
            if values.len() >= SPENT_PER_BROWSER {
                return Err(Rejected::Full);
            }
        }
        values.push((mac, expires));
        drop(spent);
        if let Some(ledger) = &self.ledger {
            let id = URL_SAFE_NO_PAD.encode(mac);
            if ledger.spend(&id, expires.saturating_sub(now)) != Some(true) {
                return Err(Rejected::Spent);
            }
        }
        Ok(handle)
    }

    /// Forgets spent values that have expired anyway, and browsers left with none
    /// (called periodically, off the request path).
    pub fn prune(&self, now: Millis) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let mut empty = Vec::new();
        for (browser, values) in spent.iter_mut() {
            values.retain(|(_, until)| *until > now);
            if values.is_empty() {
                empty.push(*browser);
            } else {
                values.shrink_to_fit();
            }
        }
        for browser in &empty {
            spent.pop(browser);
        }
    }

    /// How many redeemed values are remembered.
    pub fn spent_len(&self) -> usize {
        let spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.iter().map(|(_, values)| values.len()).sum()
    }

    /// How many browsers have spent values remembered.
    pub fn browsers(&self) -> usize {
        self.spent.lock().unwrap_or_else(|e| e.into_inner()).len()
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
    fn a_value_verifies_under_the_same_secret_only() {
        let secret = [5u8; 32];
        let (before, after) = (
            Tickets::with_secret(10, &secret),
            Tickets::with_secret(10, &secret),
        );
        let (browser, handle) = (key(), Handle::new_v4());
        let ticket = before.issue(Kind::Ticket, handle, &browser, 1_000);
        assert_eq!(
            after.redeem(Kind::Ticket, &ticket, &browser, 2_000),
            Ok(handle)
        );
        let other = Tickets::with_secret(10, &[6u8; 32]);
        assert_eq!(
            other.peek(Kind::Ticket, &ticket, &browser, 2_000),
            Err(Rejected::Forged)
        );
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
    fn one_browser_filling_its_partition_locks_out_only_itself() {
        let t = Tickets::new(1000).unwrap();
        let h = Handle::new_v4();
        let (greedy, other) = (key(), key());
        for _ in 0..SPENT_PER_BROWSER {
            let value = t.issue(Kind::Challenge, h, &greedy, 0);
            assert!(t.redeem(Kind::Challenge, &value, &greedy, 1).is_ok());
        }
        let one_more = t.issue(Kind::Challenge, h, &greedy, 0);
        assert_eq!(
            t.redeem(Kind::Challenge, &one_more, &greedy, 1),
            Err(Rejected::Full)
        );
        let theirs = t.issue(Kind::Challenge, h, &other, 0);
        assert_eq!(t.redeem(Kind::Challenge, &theirs, &other, 1), Ok(h));
        // Once the greedy browser's values expire, it may redeem again.
        let later = t.issue(Kind::Challenge, h, &greedy, TICKET_TTL);
        assert!(t
            .redeem(Kind::Challenge, &later, &greedy, TICKET_TTL + 1)
            .is_ok());
        t.prune(TICKET_TTL + 1);
        assert_eq!((t.spent_len(), t.browsers()), (1, 1));
    }

    #[test]
    fn the_browser_table_is_bounded_and_never_refuses_a_new_browser() {
        let t = Tickets::new(10).unwrap();
        let h = Handle::new_v4();
        let mine = key();
        let kept = t.issue(Kind::Ticket, h, &mine, 0);
        assert!(t.redeem(Kind::Ticket, &kept, &mine, 1).is_ok());
        for _ in 0..1000 {
            let k = key();
            let value = t.issue(Kind::Challenge, h, &k, 0);
            assert!(t.redeem(Kind::Challenge, &value, &k, 1).is_ok());
        }
        assert_eq!(t.browsers(), 10);
        assert_eq!(t.spent_len(), 10);
        t.prune(TICKET_TTL);
        assert_eq!(t.browsers(), 0);
    }
}
