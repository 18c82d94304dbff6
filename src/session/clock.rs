//! The gateway's notion of time: monotonic milliseconds since start.
//!
//! Sessions keep their timestamps as `u64` milliseconds in atomics, so a touch is one
//! `fetch_max`. The clock is built on `tokio::time::Instant`, which follows
//! `tokio::time::pause()`/`advance()`, so lifetime tests run on a paused clock instead
//! of sleeping; wall-clock jumps never change a deadline. Wall time is only used to
//! report instants to browsers and operators.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the clock's origin (see [`crate::lifetime::Millis`]).
pub use crate::lifetime::Millis;

/// A monotonic millisecond clock with a fixed mapping to wall time for reporting.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    /// Wall time (ms since the Unix epoch) at `origin`.
    wall_at_origin: u64,
}

impl Clock {
    pub fn new() -> Self {
        let wall_at_origin = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            origin: Instant::now(),
            wall_at_origin,
        }
    }

    /// Monotonic now. Starts at 1 so that 0 can mean "never" in atomics.
    pub fn now(&self) -> Millis {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// The wall-clock time (ms since the Unix epoch) of a monotonic instant.
    pub fn wall(&self, at: Millis) -> u64 {
        self.wall_at_origin.saturating_add(at)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
