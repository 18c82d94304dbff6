//! A per-client-address limit on session creation.
//!
//! Without it one address could mint sessions until `max_sessions` is reached, and
//! then either lock everyone else out (`when_full = "reject"`) or push real users out
//! (`"evict"`). Each address has a token bucket of `per_minute` tokens refilled
//! continuously; IPv6 addresses are grouped by their /64, which is what one host or
//! home network usually gets.
//!
//! IPv6 grouping: one bucket per /64. A client holding a whole /48 (or more) can
//! spread over up to 65,536 buckets; that is what the table's bound and
//! `session.max_per_client` / `max_sessions` (and, with `when_full = "evict"`, the
//! fair-share eviction) are for. The client address is the peer's, or behind
//! `listen.trusted_proxies` the one they name ([`crate::web::forwarded`]); behind a
//! load balancer that is not trusted, every client shares its address's bucket.
//!
//! The table is bounded: it keeps the `capacity` most recently admitting addresses
//! (LRU, O(1) per admission); a new address over it pushes out the least recently
//! seen one, which comes back with a full bucket. Nobody is ever admitted without a
//! bucket, and nobody is refused because the table is full. Buckets that have
//! refilled completely carry no information and are dropped periodically.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::Millis;

/// A token bucket, in thousandths of a token so integer arithmetic suffices.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    at: Millis,
}

/// The per-address creation limiter.
pub struct CreationLimiter {
    per_minute: u64,
    buckets: Mutex<LruCache<IpAddr, Bucket>>,
}

/// A refused creation: how long until the address may create again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Millis);

impl CreationLimiter {
    /// `per_minute = 0` disables the limit; at most `capacity` addresses are tracked.
    pub fn new(per_minute: u32, capacity: usize) -> Self {
        CreationLimiter {
            per_minute: u64::from(per_minute),
            buckets: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Takes one creation for `client` at `now`, or says how long to wait.
    pub fn admit(&self, client: IpAddr, now: Millis) -> Result<(), RetryAfter> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let client = group(client);
        let full = self.per_minute.saturating_mul(1000);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.get_or_insert_mut(client, || Bucket {
            milli_tokens: full,
            at: now,
        });
        bucket.milli_tokens = refilled(self.per_minute, *bucket, now);
        bucket.at = bucket.at.max(now);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            Ok(())
        } else {
            // One token takes 60 000 / per_minute ms to refill.
            let missing = 1000 - bucket.milli_tokens;
            Err(RetryAfter((missing * 60).div_ceil(self.per_minute)))
        }
    }

    /// How many addresses are tracked.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops buckets that have refilled: they would behave exactly like new ones.
    pub fn forget_full(&self, now: Millis) {
        let full = self.per_minute.saturating_mul(1000);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let refilled_ones: Vec<IpAddr> = buckets
            .iter()
            .filter(|(_, bucket)| refilled(self.per_minute, **bucket, now) >= full)
            .map(|(address, _)| *address)
            .collect();
        for address in &refilled_ones {
            buckets.pop(address);
        }
    }
}

/// A bucket's milli-tokens at `now`: per_minute tokens per 60 000 ms = per_minute /
/// 60 milli-tokens per ms, up to a full bucket.
fn refilled(per_minute: u64, bucket: Bucket, now: Millis) -> u64 {
    let gained = now.saturating_sub(bucket.at).saturating_mul(per_minute) / 60;
    bucket
        .milli_tokens
        .saturating_add(gained)
        .min(per_minute.saturating_mul(1000))
}

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64 (an IPv4-mapped
/// IPv6 address counts as its IPv4 address).
pub(crate) fn group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// A client group ([`group`]) packed for [`crate::session::Session`]: a kind
/// (2 bits) and 64 bits of address. Kinds: [`GROUP_NONE`] (not counted), [`GROUP_V4`]
/// (the IPv4 address in the low 32 bits), [`GROUP_V6`] (the /64 prefix, the upper
/// half of the address). The kind tells the two address families apart, so the
/// packing is collision-free: `unpack(pack(g)) == g` for every group `g`.
pub(crate) const GROUP_NONE: u8 = 0;
pub(crate) const GROUP_V4: u8 = 1;
pub(crate) const GROUP_V6: u8 = 2;

/// Packs `client`'s group (see [`group`]; an address that is not a group yet is
/// grouped first) as `(kind, bits)`.
pub(crate) fn pack(client: Option<IpAddr>) -> (u8, u64) {
    match client.map(group) {
        None => (GROUP_NONE, 0),
        Some(IpAddr::V4(v4)) => (GROUP_V4, u64::from(u32::from(v4))),
        // The upper half of 128 bits always fits 64: the fallback is never taken.
        Some(IpAddr::V6(v6)) => (
            GROUP_V6,
            u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX),
        ),
    }
}

/// The group [`pack`] packed (an unknown kind is no group).
pub(crate) fn unpack(kind: u8, bits: u64) -> Option<IpAddr> {
    match kind {
        GROUP_V4 => Some(IpAddr::V4(u32::try_from(bits).unwrap_or(u32::MAX).into())),
        GROUP_V6 => Some(IpAddr::V6((u128::from(bits) << 64).into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_refill_rate() {
        let limiter = CreationLimiter::new(60, 100);
        for _ in 0..60 {
            assert!(limiter.admit(ip("10.0.0.1"), 0).is_ok());
        }
        assert_eq!(limiter.admit(ip("10.0.0.1"), 0), Err(RetryAfter(1000)));
        // Another address is unaffected.
        assert!(limiter.admit(ip("10.0.0.2"), 0).is_ok());
        // One token per second comes back.
        assert!(limiter.admit(ip("10.0.0.1"), 999).is_err());
        assert!(limiter.admit(ip("10.0.0.1"), 1000).is_ok());
        assert!(limiter.admit(ip("10.0.0.1"), 1000).is_err());
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_v4_as_v4() {
        let limiter = CreationLimiter::new(1, 100);
        assert!(limiter.admit(ip("2001:db8:1:2::1"), 0).is_ok());
        assert!(limiter.admit(ip("2001:db8:1:2:ffff::9"), 0).is_err());
        assert!(limiter.admit(ip("2001:db8:1:3::1"), 0).is_ok());
        assert!(limiter.admit(ip("::ffff:10.0.0.1"), 0).is_ok());
        assert!(limiter.admit(ip("10.0.0.1"), 0).is_err());
    }

    #[test]
    fn the_table_stays_bounded_and_never_fails_open() {
        let limiter = CreationLimiter::new(1, 10);
        for i in 0..1000u32 {
            let _ = limiter.admit(IpAddr::from(i.to_be_bytes()), 0);
        }
        assert_eq!(limiter.len(), 10);
        // A table full of others' buckets still limits a recent address: the
        // least recently seen entry goes, not the limit.
        assert!(limiter.admit(ip("10.9.9.9"), 0).is_ok());
        assert!(limiter.admit(ip("10.9.9.9"), 0).is_err());
        assert_eq!(limiter.len(), 10);
        // After a minute every bucket is full again and can be forgotten.
        limiter.forget_full(60_000);
        assert!(limiter.is_empty());
    }

    #[test]
    fn zero_means_unlimited_and_tracks_nothing() {
        let limiter = CreationLimiter::new(0, 10);
        for _ in 0..1000 {
            assert!(limiter.admit(ip("10.0.0.1"), 0).is_ok());
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn packed_groups_round_trip_and_never_collide() {
        let cases = [
            None,
            Some(ip("0.0.0.0")),
            Some(ip("255.255.255.255")),
            Some(ip("192.0.2.1")),
            Some(ip("0.0.0.1")),
            Some(ip("::")),
            Some(ip("ffff:ffff:ffff:ffff::")),
            Some(ip("2001:db8:1:2::")),
            // An IPv6 group whose bits equal an IPv4 address's packed bits.
            Some(ip("0:0:0:1::")),
            Some(ip("0:0:c000:201::")),
        ];
        let mut seen = std::collections::HashSet::new();
        for client in cases {
            let grouped = client.map(group);
            let packed = pack(client);
            assert_eq!(unpack(packed.0, packed.1), grouped, "{client:?}");
            assert!(seen.insert(packed), "{client:?} collides");
        }
        // `::c000:201` is in the /64 `::`, a group distinct from 192.0.2.1.
        assert_eq!(pack(Some(ip("::c000:201"))), pack(Some(ip("::"))));
        assert_ne!(pack(Some(ip("::1"))), pack(Some(ip("0.0.0.0"))));
        assert_ne!(pack(Some(ip("::1"))), pack(None));
    }

    #[test]
    fn packing_groups_first() {
        // A whole address packs as its group: the host half of IPv6 is dropped, and
        // an IPv4-mapped address is its IPv4 address.
        let (kind, bits) = pack(Some(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")));
        assert_eq!(unpack(kind, bits), Some(ip("2001:db8:1:2::")));
        assert_eq!(
            pack(Some(ip("::ffff:10.0.0.1"))),
            pack(Some(ip("10.0.0.1")))
        );
        assert_eq!(
            pack(Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))),
            (GROUP_V6, u64::MAX)
        );
        // Unknown kinds and out-of-range IPv4 bits saturate, never panic.
        assert_eq!(unpack(3, 7), None);
        assert_eq!(unpack(GROUP_V4, u64::MAX), Some(ip("255.255.255.255")));
    }
}
