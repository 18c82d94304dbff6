//! Where sessions are kept: the [`SessionStore`] interface the request path, the
//! sweeper and the admin API use, and the pieces that implement it.
//!
//! - [`Storage`] (`storage.rs`): what a backing store provides — sessions by handle,
//!   slots for `max_sessions`, the deadline index, the side tables of rotated tokens
//!   and of cookie jars ([`crate::session::jar`], one per session that has one).
//! - [`MemoryStorage`] (`memory.rs`): that, in this process (a `DashMap` and the
//!   [`DeadlineIndex`](super::expiry::DeadlineIndex)); [`MemoryStore`] is the policy
//!   on top of it, the store the gateway runs.
//! - [`Sessions`] (`policy.rs`): the lifetime policy, written once over any storage:
//!   transitions and their events, verdicts on lookup, `max_sessions`, rotation
//!   grace, sweeping, and the memory of recently ended tokens.
//!
//! The request path only talks to the trait, so a shared store (several gateway
//! replicas, DESIGN.md §10) is another [`Storage`], without touching it.

mod memory;
mod policy;
pub mod redis;
mod storage;

use std::sync::Arc;

pub use memory::{MemoryStorage, MemoryStore};
pub use policy::{RestoreReport, RestoredTable, Sessions, TableView, ENDED_AGE, ENDED_CAP};
pub use storage::{Alias, EndClaim, OwedEnd, Rotation, Storage};

use super::jar::Jar;
use super::{
    BrowserKey, CreatedKind, EndReason, Handle, Lifetime, Millis, Session, SessionError, State,
    Token, Touch,
};

/// How long a token replaced by `X-Session-Rotate` keeps working (requests in flight).
pub const ROTATION_GRACE: Millis = 10_000;

/// A newly created session and the token only its creator learns.
#[derive(Debug)]
pub struct Created {
    pub session: Arc<Session>,
    pub token: Token,
}

/// A session found by its token.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub session: Arc<Session>,
    /// Set when the token presented has been replaced by a rotation: the new one,
    /// which the response must hand to the browser.
    pub newer_token: Option<Token>,
}

/// The operations the request path, the sweeper and the admin API need.
pub trait SessionStore: Send + Sync {
    /// The lifetime rules every session follows.
    fn rules(&self) -> &Lifetime;

    /// Creates a session bound to `browser`, counted against `client` (an address
    /// group, see [`crate::session::limit::group`]) under `session.max_per_client`
    /// until it ends; `None` is not counted.
    fn create(
        &self,
        browser: &BrowserKey,
        parent: Option<Handle>,
        kind: CreatedKind,
        client: Option<std::net::IpAddr>,
        now: Millis,
    ) -> Result<Created, SessionError>;

    /// Whether `client` (an address group) may hold one more live session under
    /// `session.max_per_client` — asked before anything single-use is spent on a
    /// creation; [`SessionStore::create`] enforces it again.
    fn client_room(&self, client: std::net::IpAddr) -> Result<(), SessionError> {
        let _ = client;
        Ok(())
    }

    /// The live session for `token`, if the token is known (or replaced less than
    /// [`ROTATION_GRACE`] ago), bound to `browser`, and its session is within its
    /// deadlines at `now` (a session found past a deadline is ended on the spot:
    /// lookups never depend on the sweeper being on time).
    fn resolve(&self, token: &Token, browser: &BrowserKey, now: Millis) -> Option<Resolved>;

    /// The live session with this handle, with the same deadline check.
    fn get(&self, handle: &Handle, now: Millis) -> Option<Arc<Session>>;

    /// The live session with this handle if it is bound to `browser` (tickets).
    fn get_bound(&self, handle: &Handle, browser: &BrowserKey, now: Millis)
        -> Option<Arc<Session>>;

    /// Records a signal or activity and returns the session's state afterwards.
    fn touch(&self, session: &Session, touch: Touch, now: Millis) -> State;

    /// Ends a session; `true` if this call ended it.
    fn end(&self, session: &Session, reason: EndReason, now: Millis) -> bool;

    /// Sets one session's idle timeout (0 = never).
    fn set_timeout(&self, session: &Session, timeout: Millis, now: Millis);

    /// Issues a new token for the session (`X-Session-Rotate`); the old one keeps
    /// working for [`ROTATION_GRACE`].
    fn rotate(&self, session: &Session, now: Millis) -> Result<Token, SessionError>;

    /// The `timeout` hook answered `handled` for the idle period that began at
    /// `idle_since`: keep the session (as `on_timeout = "keep"` would).
    fn timeout_handled(&self, handle: &Handle, idle_since: Millis, now: Millis);

    /// The `end` hook of the session with this handle is over (answered or given
    /// up): a shared store stops holding it as owed, so no other replica fires it.
    fn end_hook_done(&self, handle: &Handle) {
        let _ = handle;
    }

    /// Handles up to `max` due deadlines; returns how many entries it looked at.
    fn sweep(&self, now: Millis, max: usize) -> usize;

    /// Whether `token` belonged to a session that ended recently (it is remembered
    /// by digest for a while, boundedly): a late request with it is told `ended`.
    fn ended_recently(&self, token: &Token, now: Millis) -> bool;

    /// Periodic housekeeping of side tables (retired tokens, ended sessions).
    fn maintain(&self, now: Millis);

    /// Live sessions ordered by handle, starting after `after`.
    fn page(&self, after: Option<Handle>, limit: usize) -> Vec<Arc<Session>>;

    /// Calls `visit` with every session in the table, in no particular order (the
    /// admin API's filtered, counted listing): with a shared store, every replica's
    /// sessions (one this process does not hold in the state the rules give it at
    /// `now`), or [`SessionError::StoreDown`] when it cannot be read whole. `visit`
    /// must not call the store; this may block on the shared store.
    fn for_each(
        &self,
        now: Millis,
        visit: &mut dyn FnMut(&Arc<Session>),
    ) -> Result<(), SessionError>;

    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes `session`'s cookie jar under its lock (see [`Storage::update_jar`]):
    /// `change` sees `None` when it has none, and may create or drop it; it may run
    /// more than once (a shared store tries it again on a jar another replica changed
    /// meanwhile), and only its last run counts. Nothing is kept for a session that
    /// has ended (or ends meanwhile).
    fn update_jar(&self, session: &Session, change: &mut dyn FnMut(&mut Option<Jar>));

    /// A copy of the cookie jar of the session with this handle.
    fn jar(&self, handle: &Handle) -> Option<Jar>;

    /// Jars stored (at most one per live session).
    fn jar_count(&self) -> usize;

    /// Whether the backing storage can serve (`/readyz`): `false` while a shared
    /// store (Redis) is unreachable.
    fn ready(&self) -> bool {
        true
    }

    /// Where redeemed tickets and challenges are recorded across replicas (a shared
    /// store); `None`: this process's own table is the whole truth.
    fn ledger(&self) -> Option<Arc<dyn super::ticket::SpentLedger>> {
        None
    }
}
