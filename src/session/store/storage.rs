//! What a backing store provides: the [`Storage`] trait and the records it keeps for
//! rotated tokens.
//!
//! Storage knows where sessions are, not how long they live: it gets, inserts,
//! removes and scans sessions, counts them against a limit, keeps the deadline index
//! and the side tables of rotated tokens and of cookie jars. Every decision (which deadline applies,
//! when a token retires, which session to evict, which event to emit) is made once,
//! above it, by [`Sessions`](super::Sessions).
//!
//! Sessions are shared as `Arc<Session>` whose mutable fields are atomics, so the
//! policy updates a session in place and storage has no session update; `update`
//! exists for the side-table records, which are plain values.

use std::sync::Arc;

use crate::session::expiry::{Bucket, DueEntry};
use crate::session::jar::Jar;
use crate::session::{EndReason, Handle, Millis, Session, SessionError, Token};

/// What committing an end to the storage every replica shares came to
/// ([`Storage::claim_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndClaim {
    /// This process ended it: it alone emits the `Ended` event (and the `end` hook).
    Won,
    /// Another replica ended it first: drop it here, silently.
    Gone,
    /// The shared record shows more recent activity than this process had seen (it
    /// was merged into the session): it is not due after all.
    Stale,
    /// The shared store could not be asked: nothing is ended because of that.
    Unreachable,
}

/// An `end` hook a replica that stopped still owed, taken over by this one: the
/// session as the shared store kept it, why and when it ended.
#[derive(Debug)]
pub struct OwedEnd {
    pub session: Arc<Session>,
    pub reason: EndReason,
    pub at: Millis,
}

/// A session whose token was rotated: what the current token derives to, the token
/// itself (for a browser still presenting the old one), and when each older token
/// stops working.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub current: Handle,
    /// `None` for a rotation restored from a snapshot (tokens are never saved): its
    /// older tokens retired at the restart.
    pub token: Option<Token>,
    /// When the session's original token (the one its handle derives from) retires.
    pub original_retires_at: Millis,
}

/// A token that came from a rotation: the session it belongs to, and when it retires
/// (`Millis::MAX` while it is the current one).
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    pub session: Handle,
    pub retires_at: Millis,
}

/// The operations a backing store provides.
///
/// Implementations are called from many threads at once. Reads return copies, so
/// no lock is held once a call returns; the `update_*` closures may run under the
/// one record's lock, so they only change that record.
pub trait Storage: Send + Sync {
    // Replica safety (DESIGN.md §10): what a store shared by several gateway
    // processes must decide once for all of them. In one process the policy's
    // compare-and-swaps on the session are authoritative, so the defaults agree.

    /// Whether a new session may be created now; a shared store that cannot be
    /// reached refuses ([`SessionError::StoreDown`]).
    fn admit(&self) -> Result<(), SessionError> {
        Ok(())
    }

    /// Commits the end of `session` (already marked ended in this process) where
    /// every replica sees it; only [`EndClaim::Won`] may emit the event.
    fn claim_end(&self, session: &Session, reason: EndReason, now: Millis) -> EndClaim {
        let _ = (session, reason, now);
        EndClaim::Won
    }

    /// Claims the announcement (`Idle` event, `timeout` hook) of the idle period
    /// that began at `since`: `true` for exactly one caller across replicas.
    fn claim_idle(&self, session: &Session, since: Millis) -> bool {
        let _ = (session, since);
        true
    }

    /// The `end` hook of a session this process ended is over: a shared store stops
    /// holding it as owed.
    fn end_delivered(&self, handle: &Handle) {
        let _ = handle;
    }

    /// Moves into `out` the `end` hooks this process has taken over from replicas
    /// that stopped before firing them (a shared store finds them while sweeping).
    fn owed_ends(&self, out: &mut Vec<OwedEnd>) {
        let _ = out;
    }

    /// A touch moved the session's timestamps (a shared store batches these).
    fn touched(&self, session: &Session) {
        let _ = session;
    }

    /// The session's own timeout or its kept idle period changed (a shared store
    /// writes it through).
    fn changed(&self, session: &Session) {
        let _ = session;
    }

    /// Whether the storage can serve (a shared store: whether it is reachable).
    fn ready(&self) -> bool {
        true
    }

    /// The ledger of spent tickets and challenges shared by replicas, if any.
    fn ledger(&self) -> Option<Arc<dyn crate::session::ticket::SpentLedger>> {
        None
    }

    // Sessions, by handle.

    /// The session stored under `handle`.
    fn get(&self, handle: &Handle) -> Option<Arc<Session>>;

    /// The session under `handle` if this process holds it, without asking a shared
    /// store (the same as [`Storage::get`] for a local one).
    fn cached(&self, handle: &Handle) -> Option<Arc<Session>> {
        self.get(handle)
    }

    /// Whether a session is stored under `handle`.
    fn contains(&self, handle: &Handle) -> bool;

    /// Stores a new session under its handle; `false`, changing nothing, if that
    /// handle is taken.
    fn insert(&self, session: Arc<Session>) -> bool;

    /// Removes the session stored under `handle` (not its slot, see [`release`]).
    ///
    /// [`release`]: Storage::release
    fn remove(&self, handle: &Handle) -> Option<Arc<Session>>;

    /// Up to `limit` sessions ordered by handle, starting after `after`.
    fn scan(&self, after: Option<Handle>, limit: usize) -> Vec<Arc<Session>>;

    /// Calls `visit` with every stored session, in no particular order.
    fn for_each(&self, visit: &mut dyn FnMut(&Arc<Session>));

    /// Calls `visit` with every session of every replica (the admin API's listing),
    /// in no particular order: the same as [`Storage::for_each`] for a local store;
    /// a shared store walks what it shares (a session this process does not hold in
    /// the state the rules give it at `now`), and fails ([`SessionError::StoreDown`])
    /// rather than answer with part of it.
    fn for_each_shared(
        &self,
        now: Millis,
        visit: &mut dyn FnMut(&Arc<Session>),
    ) -> Result<(), SessionError> {
        let _ = now;
        self.for_each(visit);
        Ok(())
    }

    // Slots: the count `max_sessions` is checked against.

    /// Takes one of `max` slots for a session about to be inserted; `false` if all
    /// are taken.
    fn reserve(&self, max: usize) -> bool;

    /// Gives a slot back: its session was removed, or never inserted.
    fn release(&self);

    /// Slots taken: the sessions stored, and those being inserted.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // The deadline index (see `session::expiry`).

    /// Files `session` for `due` if that is earlier than where it is filed now.
    fn file_earlier(&self, session: &Session, due: Millis);

    /// Re-files a session popped from `popped_from`, unless it was filed elsewhere
    /// meanwhile; `None`: it has no deadline any more.
    fn refile(&self, session: &Session, popped_from: Bucket, due: Option<Millis>);

    /// Pops up to `max` entries filed for before `now` into `out`.
    fn pop_due(&self, now: Millis, max: usize, out: &mut Vec<DueEntry>);

    // Rotated tokens: aliases (by the handle a newer token derives to) and
    // rotations (by the session's own handle).

    fn alias(&self, derived: &Handle) -> Option<Alias>;

    fn put_alias(&self, derived: Handle, alias: Alias);

    /// Changes the alias under `derived`, if there is one.
    fn update_alias(&self, derived: &Handle, change: impl FnOnce(&mut Alias));

    fn remove_alias(&self, derived: &Handle);

    /// Removes every alias whose `retires_at` is at or before `now`.
    fn prune_aliases(&self, now: Millis);

    fn rotation(&self, handle: &Handle) -> Option<Rotation>;

    /// Stores the session's rotation; returns the one it replaces.
    fn put_rotation(&self, handle: Handle, rotation: Rotation) -> Option<Rotation>;

    /// Changes the rotation under `handle`, if there is one.
    fn update_rotation(&self, handle: &Handle, change: impl FnOnce(&mut Rotation));

    fn remove_rotation(&self, handle: &Handle) -> Option<Rotation>;

    // Recently ended sessions, by the handle a token of theirs derives to: a keyed
    // digest of the token, never the token. A late request with that token is then
    // told `ended` rather than `none`. The table is bounded: at most `cap` entries,
    // the oldest going first.

    /// Remembers that the token deriving to `derived` belonged to a session that
    /// ended at `at`; with `cap` entries already, the oldest is forgotten first.
    fn remember_ended(&self, derived: Handle, at: Millis, cap: usize);

    /// When the session of the token deriving to `derived` ended, if remembered.
    fn ended_at(&self, derived: &Handle) -> Option<Millis>;

    /// Forgets every session that ended before `before`.
    fn forget_ended(&self, before: Millis);

    /// Entries in the ended table.
    fn ended_len(&self) -> usize;

    // Cookie jars (`upstream.cookie_jar`), by session handle: a side table, so a
    // session without a jar costs nothing. An entry exists only while its session is
    // stored (the policy removes it on every end), so the table holds at most
    // `max_sessions` jars, each bounded by `session::jar`.

    /// A copy of the session's jar.
    fn jar(&self, handle: &Handle) -> Option<Jar>;

    /// Stores the session's jar, replacing any.
    fn put_jar(&self, handle: Handle, jar: Jar);

    /// Changes the session's jar: `change` sees `None` when there is none, and may
    /// create one (`Some`) or drop it (`None`). Two requests of one session setting
    /// cookies at once are applied one after the other, so neither update is lost: in
    /// one process under the jar's lock; in a shared store by compare-and-set, so
    /// `change` may run again on a jar another replica changed meanwhile (only its
    /// last run counts: it must start from what it is given).
    fn update_jar<R>(&self, handle: &Handle, change: impl FnMut(&mut Option<Jar>) -> R) -> R;

    fn remove_jar(&self, handle: &Handle) -> Option<Jar>;

    /// Jars stored.
    fn jar_count(&self) -> usize;

    // Copies for a snapshot (`session::persist`): each taken entry by entry, no lock
    // held longer than one shard's copy.

    /// Every rotation, by the session's handle.
    fn rotations(&self) -> Vec<(Handle, Rotation)>;

    /// Every alias, by the handle its token derives to.
    fn aliases(&self) -> Vec<(Handle, Alias)>;

    /// The ended table, oldest first: `(derived handle, ended at)`.
    fn ended(&self) -> Vec<(Handle, Millis)>;

    /// Every cookie jar, by session handle.
    fn jars(&self) -> Vec<(Handle, Jar)>;
}
