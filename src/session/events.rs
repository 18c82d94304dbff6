//! What the store reports as sessions start, warn, recover, and end.
//!
//! The store calls every [`SessionObserver`] synchronously at the moment a transition
//! is decided (exactly once per transition, by the caller that won it). Observers must
//! be cheap and never block: metrics bump atomics, the log writes a line, and anything
//! slow (hook calls) is handed to its own task.

use std::sync::Arc;

use super::{CreatedKind, EndReason, Millis, Session, State};

/// A session transition.
#[derive(Debug, Clone, Copy)]
pub enum SessionEvent<'a> {
    Started {
        session: &'a Session,
        kind: CreatedKind,
    },
    /// The countdown starts: the session is now `warning`. Always after the `Idle`
    /// of its idle period, and, with a `timeout` hook, only once the hook did not
    /// handle it within `hooks.budget`.
    Warned { session: &'a Session },
    /// Idle for its timeout (under `countdown` or `keep`); the session is still
    /// active. Emitted once per idle period; the `timeout` hook fires on it.
    Idle { session: &'a Session },
    /// Activity during the countdown: back to active.
    Extended { session: &'a Session },
    /// The `timeout` hook answered `{"handled": true}`: the countdown is called off
    /// and the session is kept for this idle period.
    Handled {
        session: &'a Session,
        /// `true` if the countdown had started (the session goes back from
        /// `warning`); `false` if the hook answered before it did.
        from_warning: bool,
    },
    Ended {
        session: &'a Session,
        reason: EndReason,
        at: Millis,
        /// The state it was in until it ended.
        was: State,
    },
    /// Not a transition here: a session another replica ended (shared store,
    /// DESIGN.md §10) whose `end` hook that replica did not get through before it
    /// stopped. This replica has taken the hook over and fires it (`session` is the
    /// session as the shared store kept it; `at` is when it ended).
    EndOwed {
        session: &'a Session,
        reason: EndReason,
        at: Millis,
    },
}

/// Receives session transitions.
pub trait SessionObserver: Send + Sync {
    fn observe(&self, event: &SessionEvent<'_>);
}

/// Fans an event out to several observers, in order.
#[derive(Default, Clone)]
pub struct Observers(Vec<Arc<dyn SessionObserver>>);

impl Observers {
    pub fn new() -> Self {
        Observers(Vec::new())
    }

    pub fn with(mut self, observer: Arc<dyn SessionObserver>) -> Self {
        self.0.push(observer);
        self
    }
}

impl SessionObserver for Observers {
    fn observe(&self, event: &SessionEvent<'_>) {
        for observer in &self.0 {
            observer.observe(event);
        }
    }
}

/// Logs session starts and ends with the handle (never the token).
pub struct LogObserver;

impl SessionObserver for LogObserver {
    fn observe(&self, event: &SessionEvent<'_>) {
        match *event {
            SessionEvent::Started { session, kind } => tracing::info!(
                session = %session.handle(),
                parent = session.parent().map(tracing::field::display),
                kind = %kind.as_str(),
                "session started"
            ),
            SessionEvent::Warned { session } => {
                tracing::debug!(session = %session.handle(), "session idle: countdown started")
            }
            SessionEvent::Idle { session } => {
                tracing::debug!(session = %session.handle(), "session idle: timeout reached")
            }
            SessionEvent::Extended { session } => {
                tracing::debug!(session = %session.handle(), "session active again")
            }
            SessionEvent::Handled { session, .. } => {
                tracing::debug!(session = %session.handle(), "timeout handled by the backend: kept")
            }
            SessionEvent::Ended {
                session,
                reason,
                at,
                ..
            } => tracing::info!(
                session = %session.handle(),
                reason = %reason.as_str(),
                lived_ms = at.saturating_sub(session.created()),
                "session ended"
            ),
            SessionEvent::EndOwed {
                session, reason, ..
            } => tracing::info!(
                session = %session.handle(),
                reason = %reason.as_str(),
                "end hook taken over from a replica that stopped"
            ),
        }
    }
}
