//! The gateway's notion of time: monotonic milliseconds on a scale that can continue
//! across restarts.
//!
//! Sessions keep their timestamps as `u64` milliseconds in atomics, so a touch is one
//! `fetch_max`. The clock is built on `tokio::time::Instant`, which follows
//! `tokio::time::pause()`/`advance()`, so lifetime tests run on a paused clock instead
//! of sleeping; wall-clock jumps never change a deadline while the process runs.
//!
//! A fresh clock starts at 1 (0 means "never" in atomics). A restored gateway
//! ([`crate::session::persist`]) resumes the scale of the process that wrote the
//! snapshot ([`Clock::resuming`]): its instant 0 stays the same wall-clock moment, so
//! every instant saved (as wall time) converts back to a representable, positive
//! instant, and values that carry an instant (tickets, challenges) keep their
//! expiry. Conversions between instants and wall time saturate; an instant before
//! the scale's zero becomes 1, one in the future becomes now.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the clock's origin (see [`crate::lifetime::Millis`]).
pub use crate::lifetime::Millis;

/// The longest scale a restored clock resumes (about 30 years): the deadline index
/// files instants in 32-bit buckets of 250 ms (34 years); a snapshot claiming an
/// older zero is not trusted with the scale.
pub const MAX_RESUMED_SCALE: Millis = 30 * 365 * 24 * 3600 * 1000;

/// A monotonic millisecond clock with a fixed mapping to wall time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    /// The instant [`Clock::now`] reports at `origin`.
    at_origin: Millis,
    /// Wall time (ms since the Unix epoch) of instant 0.
    zero_wall: u64,
}

/// Wall time now, in ms since the Unix epoch (0 if the system clock is before it).
pub fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Clock {
    pub fn new() -> Self {
        Self::starting_at(wall_now(), 1)
    }

    /// A clock reporting `at_origin` now, with wall time `wall` now.
    fn starting_at(wall: u64, at_origin: Millis) -> Self {
        Clock {
            origin: Instant::now(),
            at_origin,
            zero_wall: wall.saturating_sub(at_origin),
        }
    }

    /// A clock continuing the scale whose instant 0 was wall time `zero_wall` (a
    /// snapshot's [`Clock::zero_wall`]), if that scale is usable: its zero lies in
    /// the past, no more than [`MAX_RESUMED_SCALE`] ago. `None` otherwise (the wall
    /// clock went back, or the value is not to be trusted): start a fresh scale.
    pub fn resuming(zero_wall: u64) -> Option<Self> {
        Self::resuming_at(zero_wall, wall_now())
    }

    fn resuming_at(zero_wall: u64, wall: u64) -> Option<Self> {
        let at_origin = wall.checked_sub(zero_wall)?;
        (1..=MAX_RESUMED_SCALE)
            .contains(&at_origin)
            .then(|| Self::starting_at(wall, at_origin))
    }

    /// Monotonic now; never below 1, so that 0 can mean "never" in atomics.
    pub fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_origin.saturating_add(elapsed).max(1)
    }

    /// The wall-clock time (ms since the Unix epoch) of instant 0.
    pub fn zero_wall(&self) -> u64 {
        self.zero_wall
    }

    /// The wall-clock time (ms since the Unix epoch) of a monotonic instant.
    pub fn wall(&self, at: Millis) -> u64 {
        self.zero_wall.saturating_add(at)
    }

    /// The instant of wall-clock time `wall`, on this clock's scale, clamped to
    /// `1..=now`: an instant before the scale's zero (which a resumed scale makes
    /// rare) becomes the earliest one, an instant after now (the wall clock went
    /// back) becomes now — a restored timestamp never lies in the future.
    pub fn from_wall(&self, wall: u64) -> Millis {
        wall.saturating_sub(self.zero_wall).clamp(1, self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_fresh_clock_starts_at_one_and_follows_paused_time() {
        let clock = Clock::new();
        assert_eq!(clock.now(), 1);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), 1_501);
        assert_eq!(clock.from_wall(clock.wall(700)), 700);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_clock_continues_the_old_scale() {
        let wall = 1_800_000_000_000;
        // The old process started 1 h before `wall` and is gone; a new one resumes.
        let zero = wall - 3_600_000;
        let clock = Clock::resuming_at(zero, wall).expect("resumable");
        assert_eq!(clock.now(), 3_600_000);
        assert_eq!(clock.zero_wall(), zero);
        // An instant the old process saved (as wall time) comes back as itself.
        assert_eq!(clock.from_wall(zero + 1_234), 1_234);
        assert_eq!(clock.wall(1_234), zero + 1_234);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(clock.now(), 3_600_010);
    }

    #[test]
    fn unusable_scales_are_not_resumed() {
        let wall = 1_800_000_000_000;
        assert!(
            Clock::resuming_at(wall + 1, wall).is_none(),
            "zero in the future"
        );
        assert!(Clock::resuming_at(wall, wall).is_none(), "zero is now");
        assert!(Clock::resuming_at(0, wall).is_none(), "zero in 1970");
        assert!(Clock::resuming_at(wall - MAX_RESUMED_SCALE, wall).is_some());
        assert!(Clock::resuming_at(wall - MAX_RESUMED_SCALE - 1, wall).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn conversions_saturate_and_clamp() {
        let wall = 1_800_000_000_000;
        let clock = Clock::starting_at(wall, 1);
        // Before the scale's zero (a "negative" instant): the earliest instant.
        assert_eq!(clock.from_wall(0), 1);
        assert_eq!(clock.from_wall(wall - 10_000), 1);
        // In the future: now.
        assert_eq!(clock.from_wall(u64::MAX), clock.now());
        assert_eq!(clock.from_wall(wall + 60_000), clock.now());
        // Wall time of absurd instants saturates instead of wrapping.
        assert_eq!(clock.wall(Millis::MAX), u64::MAX);
        // A clock whose wall time is before its scale's length (a system clock at
        // 1970) still starts: zero saturates at the epoch.
        let early = Clock::starting_at(5, 100);
        assert_eq!(early.zero_wall(), 0);
        assert_eq!(early.now(), 100);
    }
}
