//! What [`Hooks::ready`](super::Hooks::ready) waits on: one gate per session whose
//! `start` hook is pending.
//!
//! A gate is opened by the observer, synchronously, when the store reports the start,
//! and closed when the start job is done — or dropped for any reason (channel full,
//! panic, shutdown). Closing happens in `Drop`, so a request can never wait on a job
//! that no longer exists, and the map only holds sessions whose start is in flight.
//! The first request to wait takes the gate out of the map: only a session's first
//! request waits for its start hook.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::session::Handle;

/// The sessions whose start hook is pending. A gate is a `watch` channel on which
/// nothing is ever sent: the sender being dropped is the signal.
#[derive(Default)]
pub(crate) struct Gates(DashMap<Handle, watch::Receiver<()>>);

impl Gates {
    /// Opens the gate of `session`; it closes when the returned value is dropped.
    pub(crate) fn open(self: &Arc<Self>, session: Handle) -> Pending {
        let (done, waiting) = watch::channel(());
        self.0.insert(session, waiting);
        Pending {
            gates: Arc::clone(self),
            session,
            _done: done,
        }
    }

    /// Waits up to `budget` for the gate of `session` to close (at once if none).
    /// Only the first caller waits: it takes the gate out of the map, so a session's
    /// later requests — concurrent ones included — do not queue behind its start hook.
    pub(crate) async fn wait(&self, session: Handle, budget: Duration) {
        // Taken out: a map guard must never be held across an await.
        let Some((_, mut waiting)) = self.0.remove(&session) else {
            return;
        };
        // `changed` fails once the sender is gone, which is the only way it returns.
        let _ = tokio::time::timeout(budget, waiting.changed()).await;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// A start job's hold on its session's gate.
pub(crate) struct Pending {
    gates: Arc<Gates>,
    session: Handle,
    /// Dropped after the map entry is removed, which wakes every waiter.
    _done: watch::Sender<()>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.gates.0.remove(&self.session);
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}
