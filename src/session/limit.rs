//! A per-client-address limit on session creation.
//!
//! Without it one address could mint sessions until `max_sessions` is reached, and
//! then either lock everyone else out (`when_full = "reject"`) or push real users out
//! (`"evict"`). Each address has a token bucket of `per_minute` tokens refilled
//! continuously; IPv6 addresses are grouped by their /64, which is what one host or
//! home network usually gets.
//!
//! The table is bounded: when it reaches its capacity, buckets that have refilled
//! completely (they carry no information) are dropped; if it is still full, a new
//! address is admitted without a bucket rather than refused, since under a flood from
//! that many addresses a per-address limit protects nothing anyway, while refusing
//! would lock out real users arriving during it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

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
    buckets: DashMap<IpAddr, Bucket>,
    len: AtomicUsize,
    capacity: usize,
}

/// A refused creation: how long until the address may create again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Millis);

impl CreationLimiter {
    /// `per_minute = 0` disables the limit; at most `capacity` addresses are tracked.
    pub fn new(per_minute: u32, capacity: usize) -> Self {
        CreationLimiter {
            per_minute: u64::from(per_minute),
            buckets: DashMap::new(),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    /// Takes one creation for `client` at `now`, or says how long to wait.
    pub fn admit(&self, client: IpAddr, now: Millis) -> Result<(), RetryAfter> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let client = group(client);
        let full = self.per_minute * 1000;
        if !self.buckets.contains_key(&client) && self.len.load(Ordering::Acquire) >= self.capacity
        {
            self.forget_full(now);
            if self.len.load(Ordering::Acquire) >= self.capacity {
                return Ok(());
            }
        }
        let mut entry = self.buckets.entry(client).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::AcqRel);
            Bucket {
                milli_tokens: full,
                at: now,
            }
        });
        let bucket = entry.value_mut();
        bucket.milli_tokens = self.refilled(*bucket, now);
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
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops buckets that have refilled: they would behave exactly like new ones.
    pub fn forget_full(&self, now: Millis) {
        let full = self.per_minute * 1000;
        self.buckets.retain(|_, bucket| {
            let keep = self.refilled(*bucket, now) < full;
            if !keep {
                self.len.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        });
    }

    fn refilled(&self, bucket: Bucket, now: Millis) -> u64 {
        // per_minute tokens per 60 000 ms = per_minute / 60 milli-tokens per ms.
        let gained = now
            .saturating_sub(bucket.at)
            .saturating_mul(self.per_minute)
            / 60;
        bucket
            .milli_tokens
            .saturating_add(gained)
            .min(self.per_minute * 1000)
    }
}

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64.
fn group(address: IpAddr) -> IpAddr {
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
    fn the_table_stays_bounded() {
        let limiter = CreationLimiter::new(1, 10);
        for i in 0..1000u32 {
            let _ = limiter.admit(IpAddr::from(i.to_be_bytes()), 0);
        }
        assert_eq!(limiter.len(), 10);
        // After a minute every bucket is full again and can be forgotten.
        let _ = limiter.admit(ip("192.0.2.1"), 60_000);
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn zero_means_unlimited_and_tracks_nothing() {
        let limiter = CreationLimiter::new(0, 10);
        for _ in 0..1000 {
            assert!(limiter.admit(ip("10.0.0.1"), 0).is_ok());
        }
        assert!(limiter.is_empty());
    }
}
