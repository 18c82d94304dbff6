//! Lifetime arithmetic, in one place: how a session's idle timeout turns into its
//! countdown, its abandon time and the agent's heartbeat interval (DESIGN.md §4).
//!
//! This is session vocabulary with no dependencies at all, so that configuration
//! validation (which reports impossible combinations), the session layer (which
//! turns timestamps into states and deadlines) and the reserved endpoints (which
//! tell the agent how often to beat) all derive the same numbers from the same
//! function. A per-session timeout (`X-Session-Timeout`, admin PATCH) scales the
//! countdown and abandon time too, unless those are configured explicitly.

use serde::{Deserialize, Serialize};

/// Milliseconds: durations, and instants on the gateway's monotonic clock.
pub type Millis = u64;

/// What happens when a session has been idle for `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Countdown,
    Keep,
    End,
}

/// What counts as user activity (resets the idle timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    Interaction,
    Request,
}

/// The heartbeat interval rule: derived from the timeout, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// `clamp(timeout / 4, 15 s, 60 s)`, at most a third of the abandon time.
    Auto,
    Every(Millis),
}

/// The lifetime rules every session follows, in milliseconds.
#[derive(Debug, Clone)]
pub struct Lifetime {
    /// The configured idle timeout (0 = never); a session may override its own.
    pub timeout: Millis,
    pub on_timeout: OnTimeout,
    /// `None`: scaled with the session's timeout (equal to it).
    countdown: Option<Millis>,
    /// `None`: scaled with the session's timeout (twice it).
    abandon: Option<Millis>,
    /// 0 = no absolute limit.
    pub max_lifetime: Millis,
    pub activity: Activity,
    beat: Beat,
    /// How long the app is given to answer the `timeout` hook before the countdown
    /// starts (0: no `timeout` hook, the countdown starts at the timeout). It is
    /// `hooks.budget` when a `timeout` hook is configured.
    pub consult: Millis,
}

/// Longest duration kept in milliseconds; sums of a few of them never wrap.
const MAX_MILLIS: Millis = u64::MAX / 4;

/// A duration in milliseconds, saturating far below `u64::MAX` so that adding a few
/// of them to an instant cannot wrap.
pub fn millis(duration: std::time::Duration) -> Millis {
    duration.as_millis().min(u128::from(MAX_MILLIS)) as Millis
}

impl Lifetime {
    pub fn new(
        timeout: std::time::Duration,
        on_timeout: OnTimeout,
        countdown: Option<std::time::Duration>,
        abandon: Option<std::time::Duration>,
        max_lifetime: std::time::Duration,
        activity: Activity,
    ) -> Self {
        Lifetime {
            timeout: millis(timeout),
            on_timeout,
            countdown: countdown.map(millis),
            abandon: abandon.map(millis),
            max_lifetime: millis(max_lifetime),
            activity,
            beat: Beat::Auto,
            consult: 0,
        }
    }

    /// The same rules with the app consulted for `consult` (a `timeout` hook with
    /// this budget) before a countdown starts.
    pub fn with_consult(mut self, consult: std::time::Duration) -> Self {
        self.consult = millis(consult);
        self
    }

    /// The same rules with this heartbeat rule.
    pub fn with_beat(mut self, beat: Beat) -> Self {
        self.beat = beat;
        self
    }

    /// The countdown for a session whose timeout is `timeout` (scaled unless set).
    pub fn countdown_for(&self, timeout: Millis) -> Millis {
        self.countdown.unwrap_or(timeout)
    }

    /// The abandon time for a session whose timeout is `timeout` (scaled unless set).
    pub fn abandon_for(&self, timeout: Millis) -> Millis {
        self.abandon.unwrap_or(timeout.saturating_mul(2))
    }

    /// The heartbeat interval for a session whose timeout is `timeout`.
    ///
    /// `Auto` is `clamp(timeout / 4, 15 s, 60 s)` (DESIGN.md §4), but never more than
    /// a third of the abandon time, so that short test and demo timeouts still get two
    /// missed beats of slack before a live tab would count as gone; at least 1 s. With
    /// no timeout, one beat a minute keeps `last_seen` meaningful for operators.
    pub fn heartbeat_for(&self, timeout: Millis) -> Millis {
        match self.beat {
            Beat::Every(every) => every,
            Beat::Auto if timeout == 0 => 60_000,
            Beat::Auto => (timeout / 4)
                .clamp(15_000, 60_000)
                .min(self.abandon_for(timeout) / 3)
                .max(1_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rules(countdown: Option<u64>, abandon: Option<u64>) -> Lifetime {
        Lifetime::new(
            Duration::from_secs(120),
            OnTimeout::Countdown,
            countdown.map(Duration::from_secs),
            abandon.map(Duration::from_secs),
            Duration::ZERO,
            Activity::Interaction,
        )
    }

    #[test]
    fn countdown_and_abandon_scale_with_the_timeout_unless_set() {
        let scaled = rules(None, None);
        assert_eq!(scaled.countdown_for(10_000), 10_000);
        assert_eq!(scaled.abandon_for(10_000), 20_000);
        assert_eq!(scaled.abandon_for(u64::MAX), u64::MAX);
        let fixed = rules(Some(30), Some(90));
        assert_eq!(fixed.countdown_for(10_000), 30_000);
        assert_eq!(fixed.abandon_for(10_000), 90_000);
    }

    #[test]
    fn heartbeat_is_a_quarter_of_the_timeout_within_bounds() {
        let auto = rules(None, None);
        assert_eq!(auto.heartbeat_for(120_000), 30_000);
        assert_eq!(auto.heartbeat_for(3_600_000), 60_000);
        assert_eq!(auto.heartbeat_for(0), 60_000);
        // Short timeouts: a third of the abandon time, at least a second.
        assert_eq!(auto.heartbeat_for(6_000), 4_000);
        assert_eq!(auto.heartbeat_for(600), 1_000);
        let fixed = rules(None, None).with_beat(Beat::Every(5_000));
        assert_eq!(fixed.heartbeat_for(120_000), 5_000);
    }

    #[test]
    fn huge_durations_saturate() {
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
