//! The lifetime policy, written once over any [`Storage`]: [`Sessions`].
//!
//! Storage keeps sessions; this decides what happens to them. It turns the rules'
//! verdicts into transitions (active → warning → active, and the one end), emits
//! each transition to the [`SessionObserver`] exactly once (the caller that wins the
//! session's atomic state change), ends a session found past a deadline on lookup
//! (lookups never depend on the sweeper being on time), enforces `max_sessions`
//! (reject, or evict the least recently seen — preferring a client over its fair
//! share), counts live sessions per client address (`session.max_per_client`),
//! gives rotated tokens their
//! grace, keeps an idle period the `timeout` hook handled, and sweeps what the
//! deadline index says is due.
//!
//! Storage is only ever asked for copies (`Arc<Session>`, `Copy` records), so no
//! storage lock is held while the policy calls another storage operation or an
//! observer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::storage::{Alias, EndClaim, Rotation, Storage};
use super::{Created, Resolved, SessionStore, ROTATION_GRACE};
use crate::config::{OnTimeout, WhenFull};
use crate::session::events::{SessionEvent, SessionObserver};
use crate::session::expiry::DueEntry;
use crate::session::jar::Jar;
use crate::session::token::{Binder, Deriver, Secrets};
use crate::session::{
    BrowserKey, CreatedKind, EndReason, Handle, Lifetime, Millis, Session, SessionError,
    SessionParts, State, Token, Touch, Verdict,
};

/// `(stamp, handle)` pairs, smallest stamp on top.
type EvictionHeap = BinaryHeap<Reverse<(Millis, Handle)>>;

/// Least recently seen sessions an eviction looks at for one whose client is over
/// its fair share before it takes the least recently seen of all.
const EVICTION_CANDIDATES: usize = 32;

/// Slack over twice the live sessions the eviction heap may reach before entries of
/// ended sessions are pruned from it (so pruning is amortised O(1) per creation).
const HEAP_SLACK: usize = 1024;

/// Sessions following the lifetime rules, kept in `S`.
///
/// Sessions are filed under the handle their token derives to ([`Deriver`]), so
/// storage keeps no token; only rotated sessions have side-table entries.
pub struct Sessions<S> {
    storage: S,
    rules: Lifetime,
    binder: Binder,
    deriver: Deriver,
    max_sessions: usize,
    /// Only under `when_full = "evict"`: every session with the `last_seen` it had
    /// when filed (a stamp never above its current `last_seen`), smallest first.
    /// Its size stays O(live sessions): entries of ended sessions are pruned once it
    /// exceeds twice the live sessions (plus [`HEAP_SLACK`]).
    eviction: Option<Mutex<EvictionHeap>>,
    observer: Arc<dyn SessionObserver>,
    /// At most this many recently ended tokens are remembered ([`ENDED_CAP`]).
    ended_cap: usize,
    /// For this long: `abandon` of the configured timeout, at least [`ENDED_AGE`].
    ended_age: Millis,
    /// `session.max_per_client`; 0 = no limit.
    max_per_client: usize,
    /// Live sessions per client address group; an entry exists only while its group
    /// has a live session, so it never holds more than `max_sessions` entries.
    per_client: DashMap<IpAddr, usize>,
}

/// A copy of the table for a snapshot (see [`Sessions::view`]).
#[derive(Debug, Default)]
pub struct TableView {
    pub sessions: Vec<Arc<Session>>,
    pub rotations: Vec<(Handle, Rotation)>,
    pub aliases: Vec<(Handle, Alias)>,
    pub ended: Vec<(Handle, Millis)>,
    /// Per-session cookie jars, serialized, by handle (none until the jar lands).
    pub jars: Vec<(Handle, Vec<u8>)>,
}

/// A snapshot's table, on this process's clock (see [`Sessions::restore`]).
#[derive(Debug, Default)]
pub struct RestoredTable {
    pub sessions: Vec<SessionParts>,
    pub rotations: Vec<(Handle, Rotation)>,
    pub aliases: Vec<(Handle, Alias)>,
    pub ended: Vec<(Handle, Millis)>,
    /// Per-session cookie jars, serialized, by handle.
    pub jars: Vec<(Handle, Vec<u8>)>,
}

/// What [`Sessions::restore`] put back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    /// Sessions restored in state `active`.
    pub active: usize,
    /// Sessions restored in state `warning` (their countdown continues).
    pub warning: usize,
    /// Sessions that did not fit under `max_sessions`.
    pub dropped: usize,
    /// Cookie jars that did not decode or broke the jar bounds (their sessions
    /// are restored with an empty jar).
    pub jars_dropped: usize,
}

/// How many recently ended sessions the store remembers (by token digest), so that a
/// late request is told `ended` rather than `none`: at the cap the table holds about
/// 4.7 MiB (hash map 3.2 MiB, age queue 1.5 MiB).
/// Past the cap the oldest are forgotten first (those requests are told `none`).
pub const ENDED_CAP: usize = 65_536;

/// How long an ended session is remembered at least (longer if `abandon` is).
pub const ENDED_AGE: Millis = 10 * 60 * 1000;

impl<S: Storage> Sessions<S> {
    pub fn with_storage(
        storage: S,
        rules: Lifetime,
        max_sessions: usize,
        when_full: WhenFull,
        observer: Arc<dyn SessionObserver>,
    ) -> Result<Self, SessionError> {
        Ok(Sessions {
            storage,
            binder: Binder::new()?,
            deriver: Deriver::new()?,
            max_sessions,
            eviction: (when_full == WhenFull::Evict).then(|| Mutex::new(BinaryHeap::new())),
            observer,
            max_per_client: 0,
            per_client: DashMap::new(),
            ended_cap: ENDED_CAP,
            ended_age: rules.abandon_for(rules.timeout).max(ENDED_AGE),
            rules,
        })
    }

    /// The same store with `session.max_per_client` live sessions per client
    /// address group (0 = no limit).
    pub fn with_max_per_client(mut self, max_per_client: u32) -> Self {
        self.max_per_client = usize::try_from(max_per_client).unwrap_or(usize::MAX);
        self
    }

    /// Live sessions counted for `client` (an address group).
    pub fn live_for(&self, client: IpAddr) -> usize {
        self.per_client.get(&client).map_or(0, |count| *count)
    }

    /// How many client address groups hold live sessions.
    pub fn clients(&self) -> usize {
        self.per_client.len()
    }

    /// Entries in the eviction heap (0 without `when_full = "evict"`).
    pub fn eviction_len(&self) -> usize {
        self.eviction.as_ref().map_or(0, |heap| {
            heap.lock().unwrap_or_else(|e| e.into_inner()).len()
        })
    }

    /// Counts a new session for `client`, or refuses it over `max_per_client`.
    fn count_client(&self, client: Option<IpAddr>) -> Result<(), SessionError> {
        let Some(client) = client else {
            return Ok(());
        };
        // A refused client already has an entry (its count is at the limit, so above
        // zero): nothing is left behind.
        let mut count = self.per_client.entry(client).or_insert(0);
        if self.max_per_client > 0 && *count >= self.max_per_client {
            return Err(SessionError::PerClient(self.max_per_client));
        }
        *count = count.saturating_add(1);
        Ok(())
    }

    /// Gives back a session counted for `client`.
    fn uncount_client(&self, client: Option<IpAddr>) {
        let Some(client) = client else {
            return;
        };
        if let Some(mut count) = self.per_client.get_mut(&client) {
            *count = count.saturating_sub(1);
        }
        self.per_client.remove_if(&client, |_, n| *n == 0);
    }

    /// Whether `session`'s client holds more than its fair share of `max_sessions`
    /// (an equal part for every client address group with live sessions).
    fn over_fair_share(&self, session: &Session) -> bool {
        let Some(client) = session.client() else {
            return false;
        };
        let share = self.max_sessions / self.per_client.len().max(1);
        self.live_for(client) > share.max(1)
    }

    /// The same store remembering at most `cap` ended sessions (tests of the bound).
    pub fn with_ended_cap(mut self, cap: usize) -> Self {
        self.ended_cap = cap;
        self
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The same store deriving handles and bindings under `secrets` (restored from a
    /// snapshot, so the tokens and browser keys issued before a restart still map to
    /// their sessions). Before any session is created.
    pub fn with_secrets(mut self, secrets: &Secrets) -> Self {
        self.deriver = secrets.deriver();
        self.binder = secrets.binder();
        self
    }

    /// A copy of the table for a snapshot (`session::persist`), taken without
    /// stopping anyone: the sessions' `Arc`s shard by shard (a shard's read lock is
    /// held only while its `Arc`s are cloned), then the side tables. Sessions are
    /// read field by field later, off every lock.
    pub fn view(&self) -> TableView {
        let mut sessions = Vec::with_capacity(self.storage.len());
        self.storage
            .for_each(&mut |session| sessions.push(Arc::clone(session)));
        TableView {
            sessions,
            rotations: self.storage.rotations(),
            aliases: self.storage.aliases(),
            ended: self.storage.ended(),
            // Entry by entry, no lock held across shards; a jar that cannot be
            // encoded (it always can: plain strings and numbers) is left out.
            jars: self
                .storage
                .jars()
                .into_iter()
                .filter_map(|(handle, jar)| Some((handle, serde_json::to_vec(&jar).ok()?)))
                .collect(),
        }
    }

    /// Puts a snapshot's table back, before the gateway serves: every session that
    /// was live, with its slot, its client's count and its deadline filed, so the
    /// first sweep ends (with their proper reasons and events) those whose deadlines
    /// passed while the gateway was down. Restored sessions emit no `Started` (they
    /// started before). Sessions over `max_sessions` (a smaller table configured
    /// since) are dropped, least recently seen first, and counted in the report.
    ///
    /// Rotations come back without tokens (none is ever saved): the older tokens of
    /// a session rotated less than [`ROTATION_GRACE`] before the snapshot retire at
    /// the restart instead of at the end of their grace; the current token works.
    pub fn restore(&self, mut table: RestoredTable, now: Millis) -> RestoreReport {
        let mut report = RestoreReport::default();
        // Most recently seen first, so a full table keeps those.
        table
            .sessions
            .sort_unstable_by_key(|parts| Reverse(parts.last_seen));
        for parts in &table.sessions {
            if parts.state == State::Ended || self.storage.contains(&parts.handle) {
                continue;
            }
            if !self.storage.reserve(self.max_sessions) {
                report.dropped += 1;
                continue;
            }
            let session = Arc::new(Session::from_parts(parts));
            if !self.storage.insert(Arc::clone(&session)) {
                self.storage.release();
                continue;
            }
            // Counted, not limited: these sessions exist already.
            if let Some(client) = session.client() {
                let mut count = self.per_client.entry(client).or_insert(0);
                *count = count.saturating_add(1);
            }
            if let Some(due) = session.next_due(&self.rules, now) {
                self.storage.file_earlier(&session, due);
            }
            if let Some(heap) = &self.eviction {
                heap.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Reverse((session.last_seen(), session.handle())));
            }
            match session.stored_state() {
                State::Warning => report.warning += 1,
                _ => report.active += 1,
            }
        }
        for (handle, rotation) in table.rotations {
            if self.storage.contains(&handle) {
                self.storage.put_rotation(
                    handle,
                    Rotation {
                        token: None,
                        original_retires_at: rotation.original_retires_at.min(now),
                        ..rotation
                    },
                );
            }
        }
        for (derived, alias) in table.aliases {
            // Only a session's current token (never retiring) survives a restart.
            if alias.retires_at == Millis::MAX && self.storage.contains(&alias.session) {
                self.storage.put_alias(derived, alias);
            }
        }
        table.ended.sort_by_key(|&(_, at)| at);
        for (derived, at) in table.ended {
            self.storage.remember_ended(derived, at, self.ended_cap);
        }
        for (handle, jar) in table.jars {
            if !self.storage.contains(&handle) {
                continue;
            }
            // The checksum catches damage, not a hand-edited file: a jar comes back
            // only if it decodes and keeps the jar bounds.
            match serde_json::from_slice::<Jar>(&jar) {
                Ok(jar) if jar.within_bounds() => self.storage.put_jar(handle, jar),
                _ => report.jars_dropped += 1,
            }
        }
        report
    }

    /// Takes a slot under `max_sessions`, evicting if so configured.
    fn reserve_slot(&self, now: Millis) -> Result<(), SessionError> {
        while !self.storage.reserve(self.max_sessions) {
            if !self.evict_one(now) {
                return Err(SessionError::Full(self.max_sessions));
            }
        }
        Ok(())
    }

    /// Ends the least recently seen session — or, among the [`EVICTION_CANDIDATES`]
    /// least recently seen, the first whose client holds more than its fair share.
    ///
    /// Exactly least recently seen: pop the smallest stamp; a session seen since it
    /// was stamped goes back with its new `last_seen`; the first one whose stamp is
    /// still its `last_seen` has the smallest `last_seen` of all (every other stamp,
    /// and so every other `last_seen`, is at least as large). Touches never write the
    /// heap; each one costs at most one re-push here. Candidates passed over go back
    /// with their stamps.
    fn evict_one(&self, now: Millis) -> bool {
        let Some(heap) = &self.eviction else {
            return false;
        };
        let victim = {
            let mut heap = heap.lock().unwrap_or_else(|e| e.into_inner());
            let mut candidates: Vec<(Millis, Arc<Session>)> = Vec::new();
            let mut chosen = None;
            while candidates.len() < EVICTION_CANDIDATES {
                let Some(Reverse((stamp, handle))) = heap.pop() else {
                    break;
                };
                let Some(session) = self.storage.get(&handle) else {
                    continue; // ended meanwhile
                };
                let last_seen = session.last_seen();
                if last_seen > stamp {
                    heap.push(Reverse((last_seen, handle)));
                } else if self.over_fair_share(&session) {
                    chosen = Some(session);
                    break;
                } else {
                    candidates.push((stamp, session));
                }
            }
            if chosen.is_none() && !candidates.is_empty() {
                chosen = Some(candidates.remove(0).1);
            }
            for (stamp, session) in candidates {
                heap.push(Reverse((stamp, session.handle())));
            }
            chosen
        };
        victim.is_some_and(|session| self.end(&session, EndReason::Evicted, now))
    }

    /// Files a new session in the eviction heap; drops the entries of ended
    /// sessions once the heap holds more than twice the live sessions.
    fn file_for_eviction(&self, session: &Session, now: Millis) {
        let Some(heap) = &self.eviction else {
            return;
        };
        let mut heap = heap.lock().unwrap_or_else(|e| e.into_inner());
        heap.push(Reverse((now, session.handle())));
        let live = self.storage.len();
        if heap.len() > live.saturating_mul(2).saturating_add(HEAP_SLACK) {
            heap.retain(|Reverse((_, handle))| self.storage.contains(handle));
        }
    }

    /// Stores a new session under the handle a fresh token derives to.
    fn insert_new(
        &self,
        browser: &BrowserKey,
        parent: Option<Handle>,
        client: Option<IpAddr>,
        now: Millis,
    ) -> Result<Created, SessionError> {
        let binding = self.binder.bind(browser);
        loop {
            let token = Token::generate()?;
            let handle = self.deriver.handle_of(&token);
            let session = Arc::new(
                Session::new(handle, parent, binding, self.rules.timeout, now).with_client(client),
            );
            // A collision of 122-bit handles will not happen, but if it did, the
            // existing session must not be replaced.
            if self.storage.insert(Arc::clone(&session)) {
                return Ok(Created { session, token });
            }
        }
    }

    /// The one place a session changes state on time: brings the stored state to
    /// what the rules say at `now`, emitting each transition's event, and returns
    /// the stored state afterwards — the state every reader (responses, heartbeats,
    /// status, admin, gauges) reports. Lookups, touches, timeout changes and the
    /// sweeper all come through here, so no reply can say `warning` before its
    /// `warned` event was emitted: a reply reports the stored state, and the stored
    /// state becomes `warning` only by the compare-and-swap whose winner emits it.
    ///
    /// Order within an idle period: `Idle` when the timeout is reached (the `timeout`
    /// hook fires on it), then — under `countdown`, once the hook had `consult` ms to
    /// answer and did not handle it — `Warned`. Activity (or a raised timeout) during
    /// the countdown moves it back with `Extended`.
    fn settle(&self, session: &Session, now: Millis) -> State {
        let verdict = session.verdict(&self.rules, now);
        match verdict {
            Verdict::Due(reason) => return self.end_due(session, reason, now),
            Verdict::Live(State::Ended) => return State::Ended,
            Verdict::Live(_) => {}
        }
        // Announced where someone listens for it: under `keep`, or when a `timeout`
        // hook is asked before the countdown (`consult`).
        let announce = self.rules.on_timeout == OnTimeout::Keep || self.rules.consult > 0;
        if announce
            && session.idle_reached(&self.rules, now)
            && session.announce_idle_period()
            && self.storage.claim_idle(session, session.last_activity())
        {
            self.observer.observe(&SessionEvent::Idle { session });
        }
        match verdict {
            Verdict::Live(State::Warning) if session.transition(State::Active, State::Warning) => {
                self.observer.observe(&SessionEvent::Warned { session });
            }
            Verdict::Live(State::Active) if session.transition(State::Warning, State::Active) => {
                // The countdown is left: the session is filed for the countdown's
                // end, but the new idle period may warn before that (a countdown
                // longer than the timeout), so it is filed earlier too — else no
                // `warned`, no timeout hook and no `extended` for the next one.
                if let Some(due) = session.next_due(&self.rules, now) {
                    self.storage.file_earlier(session, due);
                }
                self.observer.observe(&SessionEvent::Extended { session });
            }
            _ => {}
        }
        session.stored_state()
    }

    /// Ends a session found past a deadline, and returns its state afterwards. With
    /// a shared store the end may not happen: the store showed newer activity
    /// (merged into the session, so it is judged once more), or it could not be
    /// reached — then the session, past its deadline here, is reported ended but
    /// nothing is ended because of an outage: the sweeper ends it once the store is
    /// back.
    fn end_due(&self, session: &Session, reason: EndReason, now: Millis) -> State {
        let mut reason = reason;
        for _ in 0..2 {
            if self.end(session, reason, now) || session.stored_state() == State::Ended {
                return State::Ended;
            }
            match session.verdict(&self.rules, now) {
                Verdict::Due(again) => reason = again,
                Verdict::Live(_) => return self.settle(session, now),
            }
        }
        State::Ended
    }

    /// Settles a looked-up session: `None` if it is (or just was) ended.
    fn check(&self, session: Arc<Session>, now: Millis) -> Option<Arc<Session>> {
        (self.settle(&session, now) != State::Ended).then_some(session)
    }

    /// The session handle a token stands for at `now`, and the newer token if it was
    /// rotated away.
    fn handle_for(&self, token: &Token, now: Millis) -> Option<(Handle, Option<Token>)> {
        let derived = self.deriver.handle_of(token);
        if let Some(alias) = self.storage.alias(&derived) {
            if now >= alias.retires_at {
                self.storage.remove_alias(&derived);
                return None;
            }
            let newer = (alias.retires_at != Millis::MAX)
                .then(|| self.storage.rotation(&alias.session).and_then(|r| r.token))
                .flatten();
            return Some((alias.session, newer));
        }
        match self.storage.rotation(&derived) {
            None => Some((derived, None)),
            Some(rotation) if now < rotation.original_retires_at => Some((derived, rotation.token)),
            Some(_) => None,
        }
    }

    /// Forgets, in this process only and without an event, a session another
    /// replica ended (its end was claimed there, so its `Ended` was emitted there).
    /// The session must already be marked ended here.
    pub(crate) fn drop_local(&self, session: &Session, now: Millis) {
        let handle = session.handle();
        if self.storage.remove(&handle).is_none() {
            return; // dropped already (or never stored here)
        }
        self.storage.remove_jar(&handle);
        self.storage.remember_ended(handle, now, self.ended_cap);
        if let Some(rotation) = self.storage.remove_rotation(&handle) {
            self.storage.remove_alias(&rotation.current);
        }
        self.storage.release();
        self.uncount_client(session.client());
    }

    /// A session another replica ended: marked ended and forgotten here, silently.
    pub fn ended_elsewhere(&self, handle: &Handle, now: Millis) {
        if let Some(session) = self.storage.cached(handle) {
            // Whoever marks it ended here cleans up (a local end racing with this
            // one already did, or will).
            if session.mark_ended().is_some() {
                self.drop_local(&session, now);
            }
        }
    }

    fn sweep_one(&self, entry: &DueEntry, now: Millis) {
        let Some(session) = self.storage.get(&entry.handle) else {
            return;
        };
        if !entry.is_current(&session) {
            return; // a leftover entry: the session is filed earlier elsewhere
        }
        // A session past its deadline whose end the store could not commit (a shared
        // store unreachable) is reported ended but is not: it stays filed, so the
        // sweeper ends it once the store is back.
        if self.settle(&session, now) == State::Ended && session.stored_state() == State::Ended {
            return;
        }
        self.storage
            .refile(&session, entry.bucket, session.next_due(&self.rules, now));
    }
}

impl<S: Storage> SessionStore for Sessions<S> {
    fn rules(&self) -> &Lifetime {
        &self.rules
    }

    fn create(
        &self,
        browser: &BrowserKey,
        parent: Option<Handle>,
        kind: CreatedKind,
        client: Option<IpAddr>,
        now: Millis,
    ) -> Result<Created, SessionError> {
        // A shared store that cannot be reached mints nothing.
        self.storage.admit()?;
        // The per-client limit answers before anything is reserved or evicted.
        self.count_client(client)?;
        if let Err(error) = self.reserve_slot(now) {
            self.uncount_client(client);
            return Err(error);
        }
        let created = match self.insert_new(browser, parent, client, now) {
            Ok(created) => created,
            Err(error) => {
                self.storage.release();
                self.uncount_client(client);
                return Err(error);
            }
        };
        let session = &created.session;
        if let Some(due) = session.next_due(&self.rules, now) {
            self.storage.file_earlier(session, due);
        }
        self.file_for_eviction(session, now);
        self.observer
            .observe(&SessionEvent::Started { session, kind });
        Ok(created)
    }

    fn client_room(&self, client: IpAddr) -> Result<(), SessionError> {
        if self.max_per_client > 0 && self.live_for(client) >= self.max_per_client {
            return Err(SessionError::PerClient(self.max_per_client));
        }
        Ok(())
    }

    fn resolve(&self, token: &Token, browser: &BrowserKey, now: Millis) -> Option<Resolved> {
        let (handle, newer_token) = self.handle_for(token, now)?;
        let session = self.get_bound(&handle, browser, now)?;
        Some(Resolved {
            session,
            newer_token,
        })
    }

    fn get(&self, handle: &Handle, now: Millis) -> Option<Arc<Session>> {
        let session = self.storage.get(handle)?;
        self.check(session, now)
    }

    fn get_bound(
        &self,
        handle: &Handle,
        browser: &BrowserKey,
        now: Millis,
    ) -> Option<Arc<Session>> {
        let session = self.storage.get(handle)?;
        if !session.is_bound_to(self.binder.bind(browser)) {
            return None;
        }
        self.check(session, now)
    }

    fn touch(&self, session: &Session, touch: Touch, now: Millis) -> State {
        // Whatever was due before this touch happens first (an end, or the `Idle` and
        // `Warned` of a period the touch ends), so that a touch in the countdown is
        // counted as `extended` even if the sweeper had not got to the session yet.
        if self.settle(session, now) == State::Ended {
            return State::Ended;
        }
        // Activity after a kept (or reported) idle period starts a new one whose
        // warning is due before whatever the session is filed for: the one case where
        // a touch moves a deadline earlier, so the one case it writes the index.
        let leaves_kept_period = touch == Touch::Activity && session.idle_period_marked();
        session.touch(touch, now);
        self.storage.touched(session);
        if leaves_kept_period {
            if let Some(due) = session.next_due(&self.rules, now) {
                self.storage.file_earlier(session, due);
            }
        }
        self.settle(session, now)
    }

    fn end(&self, session: &Session, reason: EndReason, now: Millis) -> bool {
        let Some(was) = session.mark_ended() else {
            return false;
        };
        match self.storage.claim_end(session, reason, now) {
            EndClaim::Won => {}
            EndClaim::Gone => {
                self.drop_local(session, now);
                return false;
            }
            EndClaim::Stale | EndClaim::Unreachable => {
                // Not ended after all: back to the state it had.
                session.transition(State::Ended, was);
                return false;
            }
        }
        let handle = session.handle();
        self.storage.remove(&handle);
        self.storage.remove_jar(&handle);
        self.storage.remember_ended(handle, now, self.ended_cap);
        if let Some(rotation) = self.storage.remove_rotation(&handle) {
            self.storage.remove_alias(&rotation.current);
            self.storage
                .remember_ended(rotation.current, now, self.ended_cap);
        }
        self.storage.release();
        self.uncount_client(session.client());
        self.observer.observe(&SessionEvent::Ended {
            session,
            reason,
            at: now,
            was,
        });
        true
    }

    fn set_timeout(&self, session: &Session, timeout: Millis, now: Millis) {
        session.set_timeout(timeout);
        self.storage.changed(session);
        if let Some(due) = session.next_due(&self.rules, now) {
            self.storage.file_earlier(session, due);
        }
        self.settle(session, now);
    }

    fn rotate(&self, session: &Session, now: Millis) -> Result<Token, SessionError> {
        let handle = session.handle();
        let (token, current) = loop {
            let token = Token::generate()?;
            let derived = self.deriver.handle_of(&token);
            if derived != handle && !self.storage.contains(&derived) {
                break (token, derived);
            }
        };
        let retires_at = now + ROTATION_GRACE;
        let alias = Alias {
            session: handle,
            retires_at: Millis::MAX,
        };
        self.storage.put_alias(current, alias);
        let rotation = Rotation {
            current,
            token: Some(token),
            original_retires_at: retires_at,
        };
        if let Some(previous) = self.storage.put_rotation(handle, rotation) {
            // The token before this one retires now + grace; the original one keeps
            // the retirement it already had.
            self.storage
                .update_alias(&previous.current, |alias| alias.retires_at = retires_at);
            self.storage.update_rotation(&handle, |rotation| {
                rotation.original_retires_at = previous.original_retires_at;
            });
        }
        if session.stored_state() == State::Ended {
            // Ended while rotating: forget what was just added.
            self.storage.remove_rotation(&handle);
            self.storage.remove_alias(&current);
        }
        Ok(token)
    }

    fn timeout_handled(&self, handle: &Handle, idle_since: Millis, now: Millis) {
        let Some(session) = self.get(handle, now) else {
            return;
        };
        if !session.keep_idle_period(idle_since) {
            return;
        }
        self.storage.changed(&session);
        // Answered within the budget: the countdown never starts. Answered later:
        // it is called off.
        let from_warning = session.transition(State::Warning, State::Active);
        self.observer.observe(&SessionEvent::Handled {
            session: &session,
            from_warning,
        });
    }

    fn sweep(&self, now: Millis, max: usize) -> usize {
        let mut due = Vec::with_capacity(max.min(4096));
        self.storage.pop_due(now, max, &mut due);
        for entry in &due {
            self.sweep_one(entry, now);
        }
        let mut owed = Vec::new();
        self.storage.owed_ends(&mut owed);
        for end in &owed {
            self.observer.observe(&SessionEvent::EndOwed {
                session: &end.session,
                reason: end.reason,
                at: end.at,
            });
        }
        due.len()
    }

    fn end_hook_done(&self, handle: &Handle) {
        self.storage.end_delivered(handle);
    }

    fn maintain(&self, now: Millis) {
        self.storage.prune_aliases(now);
        self.storage
            .forget_ended(now.saturating_sub(self.ended_age));
    }

    fn ended_recently(&self, token: &Token, now: Millis) -> bool {
        let derived = self.deriver.handle_of(token);
        self.storage
            .ended_at(&derived)
            .is_some_and(|at| now < at.saturating_add(self.ended_age))
    }

    fn page(&self, after: Option<Handle>, limit: usize) -> Vec<Arc<Session>> {
        self.storage.scan(after, limit)
    }

    fn for_each(
        &self,
        now: Millis,
        visit: &mut dyn FnMut(&Arc<Session>),
    ) -> Result<(), SessionError> {
        self.storage.for_each_shared(now, visit)
    }

    fn len(&self) -> usize {
        self.storage.len()
    }

    fn update_jar(&self, session: &Session, change: &mut dyn FnMut(&mut Option<Jar>)) {
        let handle = session.handle();
        if session.stored_state() == State::Ended {
            return;
        }
        self.storage.update_jar(&handle, change);
        // Ended meanwhile: `end` marks the session ended before it removes the jar,
        // so either it removed this one, or the mark is seen here.
        if session.stored_state() == State::Ended {
            self.storage.remove_jar(&handle);
        }
    }

    fn jar(&self, handle: &Handle) -> Option<Jar> {
        self.storage.jar(handle)
    }

    fn jar_count(&self) -> usize {
        self.storage.jar_count()
    }

    fn ready(&self) -> bool {
        self.storage.ready()
    }

    fn ledger(&self) -> Option<Arc<dyn crate::session::ticket::SpentLedger>> {
        self.storage.ledger()
    }
}

#[cfg(test)]
mod tests {
    //! Lifetime rules on a paused tokio clock: every transition and end reason,
    //! without sleeping for real.

    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::{Duration as Cfg, OnTimeout, SessionConfig};
    use crate::session::store::MemoryStore;
    use crate::session::Clock;

    /// One recorded event: `(kind, handle, end reason, at)`.
    type Row = (&'static str, Handle, Option<EndReason>, Millis);

    /// Records every event.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Row>>);

    impl SessionObserver for Recorder {
        fn observe(&self, event: &SessionEvent<'_>) {
            let row = match *event {
                SessionEvent::Started { session, .. } => ("started", session.handle(), None, 0),
                SessionEvent::Warned { session } => ("warned", session.handle(), None, 0),
                SessionEvent::Idle { session } => ("idle", session.handle(), None, 0),
                SessionEvent::Extended { session } => ("extended", session.handle(), None, 0),
                SessionEvent::Handled { session, .. } => ("handled", session.handle(), None, 0),
                SessionEvent::Ended {
                    session,
                    reason,
                    at,
                    ..
                } => ("ended", session.handle(), Some(reason), at),
                SessionEvent::EndOwed {
                    session,
                    reason,
                    at,
                } => ("end owed", session.handle(), Some(reason), at),
            };
            self.0.lock().unwrap().push(row);
        }
    }

    impl Recorder {
        fn kinds(&self) -> Vec<&'static str> {
            self.0.lock().unwrap().iter().map(|r| r.0).collect()
        }

        fn ends(&self) -> Vec<(EndReason, Millis)> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|r| r.2.map(|reason| (reason, r.3)))
                .collect()
        }
    }

    struct World {
        store: MemoryStore,
        events: Arc<Recorder>,
        clock: Clock,
        key: BrowserKey,
    }

    fn world(tweak: impl FnOnce(&mut SessionConfig)) -> World {
        let mut config = SessionConfig {
            timeout: Cfg::from_secs(10),
            ..SessionConfig::default()
        };
        tweak(&mut config);
        let events = Arc::new(Recorder::default());
        let store = MemoryStore::new(
            Lifetime::from_config(&config),
            config.max_sessions,
            config.when_full,
            events.clone(),
        )
        .unwrap()
        .with_max_per_client(config.max_per_client);
        World {
            store,
            events,
            clock: Clock::new(),
            key: BrowserKey::generate().unwrap(),
        }
    }

    impl World {
        fn create(&self) -> Created {
            self.store
                .create(&self.key, None, CreatedKind::New, None, self.clock.now())
                .unwrap()
        }

        /// Advances the paused clock and sweeps, as the sweeper task would.
        async fn advance(&self, ms: u64) {
            tokio::time::advance(Duration::from_millis(ms)).await;
            while self.store.sweep(self.clock.now(), 1024) == 1024 {}
        }

        /// The state a reader sees now (a lookup settles the session first).
        fn state(&self, session: &Session) -> State {
            self.store
                .get(&session.handle(), self.clock.now())
                .map_or(State::Ended, |s| s.stored_state())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_session_warns_then_ends_with_timeout() {
        let w = world(|_| {});
        let created = w.create();
        let session = &created.session;
        // Heartbeats keep it from being abandoned, but are not activity.
        for _ in 0..3 {
            w.advance(3_000).await;
            assert_eq!(
                w.store.touch(session, Touch::Signal, w.clock.now()),
                State::Active
            );
        }
        w.advance(1_500).await; // 10.5 s idle
        assert_eq!(w.events.kinds(), ["started", "warned"]);
        assert_eq!(session.stored_state(), State::Warning);
        assert_eq!(
            w.store.touch(session, Touch::Signal, w.clock.now()),
            State::Warning
        );
        w.advance(9_000).await;
        assert_eq!(w.state(session), State::Warning);
        w.advance(1_000).await; // 20.5 s: countdown over
        assert_eq!(w.events.ends().len(), 1);
        assert_eq!(w.events.ends()[0].0, EndReason::Timeout);
        assert!(w
            .store
            .resolve(&created.token, &w.key, w.clock.now())
            .is_none());
        assert_eq!(w.store.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_during_the_countdown_extends() {
        let w = world(|_| {});
        let session = w.create().session;
        w.advance(11_000).await;
        assert_eq!(session.stored_state(), State::Warning);
        assert_eq!(
            w.store.touch(&session, Touch::Activity, w.clock.now()),
            State::Active
        );
        assert_eq!(w.events.kinds(), ["started", "warned", "extended"]);
        w.advance(9_000).await; // 9 s after the activity: still active
        assert_eq!(w.state(&session), State::Active);
        assert!(w.events.ends().is_empty());
    }

    /// "Stay" in a countdown longer than the timeout: the next idle period warns
    /// (and counts as a countdown) again, on time.
    #[tokio::test(start_paused = true)]
    async fn a_second_idle_period_warns_again_after_stay() {
        let w = world(|c| {
            c.countdown = Some(Cfg::from_secs(30));
            c.abandon = Some(Cfg::from_secs(60));
        });
        let session = w.create().session;
        w.advance(11_000).await;
        assert_eq!(session.stored_state(), State::Warning);
        w.store.touch(&session, Touch::Activity, w.clock.now());
        assert_eq!(w.events.kinds(), ["started", "warned", "extended"]);
        w.advance(11_000).await; // 11 s idle again; the first countdown ran to 40 s
        assert_eq!(session.stored_state(), State::Warning);
        assert_eq!(
            w.events.kinds(),
            ["started", "warned", "extended", "warned"]
        );
        w.store.touch(&session, Touch::Activity, w.clock.now());
        assert_eq!(
            w.events.kinds(),
            ["started", "warned", "extended", "warned", "extended"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_session_is_abandoned_after_twice_the_timeout() {
        let w = world(|c| c.on_timeout = OnTimeout::Keep);
        let session = w.create().session;
        w.advance(19_000).await;
        assert_eq!(w.state(&session), State::Active, "keep: no countdown");
        w.advance(1_500).await;
        let ends = w.events.ends();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].0, EndReason::Abandoned);
        // Ended within a sweep of the deadline (20 s after creation).
        assert!(ends[0].1 - session.created() <= 20_000 + 1_000, "{ends:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn default_countdown_without_signals_ends_as_abandoned() {
        // countdown = timeout and abandon = 2 × timeout coincide; no signal at all
        // means the tab is gone, which is what "abandoned" reports.
        let w = world(|_| {});
        w.create();
        w.advance(20_500).await;
        assert_eq!(w.events.ends()[0].0, EndReason::Abandoned);
    }

    #[tokio::test(start_paused = true)]
    async fn on_timeout_end_ends_at_once() {
        let w = world(|c| c.on_timeout = OnTimeout::End);
        w.create();
        w.advance(10_500).await;
        assert_eq!(w.events.kinds(), ["started", "ended"]);
        assert_eq!(w.events.ends()[0].0, EndReason::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_timeout_never_ends_but_max_lifetime_does() {
        let w = world(|c| c.timeout = Cfg::ZERO);
        let session = w.create().session;
        w.advance(30 * 24 * 3600 * 1000).await;
        assert_eq!(w.state(&session), State::Active);
        assert!(w.events.ends().is_empty());

        let w = world(|c| {
            c.timeout = Cfg::ZERO;
            c.max_lifetime = Cfg::from_secs(60);
        });
        let session = w.create().session;
        for _ in 0..5 {
            w.advance(11_000).await;
            w.store.touch(&session, Touch::Activity, w.clock.now());
        }
        w.advance(6_000).await;
        assert_eq!(w.events.ends()[0].0, EndReason::Lifetime);
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_never_return_a_session_past_its_deadline() {
        let w = world(|_| {});
        let created = w.create();
        // No sweep: the lookup itself must notice.
        tokio::time::advance(Duration::from_millis(20_001)).await;
        assert!(w
            .store
            .resolve(&created.token, &w.key, w.clock.now())
            .is_none());
        assert_eq!(w.events.ends()[0].0, EndReason::Abandoned);
        assert_eq!(w.store.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_bound_to_their_browser_key() {
        let w = world(|_| {});
        let created = w.create();
        let other = BrowserKey::generate().unwrap();
        assert!(w
            .store
            .resolve(&created.token, &other, w.clock.now())
            .is_none());
        assert!(w
            .store
            .resolve(&created.token, &w.key, w.clock.now())
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn explicit_end_happens_once() {
        let w = world(|_| {});
        let created = w.create();
        assert!(w
            .store
            .end(&created.session, EndReason::Ended, w.clock.now()));
        assert!(!w
            .store
            .end(&created.session, EndReason::Admin, w.clock.now()));
        assert_eq!(w.events.ends().len(), 1);
        assert!(w
            .store
            .resolve(&created.token, &w.key, w.clock.now())
            .is_none());
        w.advance(60_000).await;
        assert_eq!(
            w.events.ends().len(),
            1,
            "the sweeper does not end it again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lowered_timeout_is_swept_on_time() {
        let w = world(|c| c.timeout = Cfg::from_secs(3600));
        let session = w.create().session;
        w.store.set_timeout(&session, 2_000, w.clock.now());
        w.advance(2_500).await;
        assert_eq!(session.stored_state(), State::Warning);
        w.advance(2_000).await;
        assert_eq!(w.events.ends()[0].0, EndReason::Abandoned);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_work_follows_what_comes_due_not_the_table_size() {
        let w = world(|c| c.timeout = Cfg::ZERO);
        for _ in 0..10_000 {
            w.create();
        }
        assert!(
            w.store.index().is_empty(),
            "sessions without deadlines are not filed"
        );
        let w = world(|_| {});
        let sessions: Vec<_> = (0..1_000).map(|_| w.create().session).collect();
        // Touches never write the index.
        for s in &sessions {
            w.store.touch(s, Touch::Activity, w.clock.now());
        }
        assert_eq!(w.store.index().len(), 1_000);
        tokio::time::advance(Duration::from_millis(5_000)).await;
        assert_eq!(w.store.sweep(w.clock.now(), 10_000), 0, "nothing due yet");
    }

    #[tokio::test(start_paused = true)]
    async fn full_store_rejects_or_evicts_the_least_recently_seen() {
        let w = world(|c| c.max_sessions = 2);
        w.create();
        w.create();
        assert!(matches!(
            w.store
                .create(&w.key, None, CreatedKind::New, None, w.clock.now()),
            Err(SessionError::Full(2))
        ));

        let w = world(|c| {
            c.max_sessions = 2;
            c.when_full = WhenFull::Evict;
        });
        let old = w.create().session;
        tokio::time::advance(Duration::from_millis(10)).await;
        let recent = w.create().session;
        tokio::time::advance(Duration::from_millis(10)).await;
        w.create();
        assert_eq!(w.store.len(), 2);
        assert_eq!(old.stored_state(), State::Ended);
        assert_eq!(recent.stored_state(), State::Active);
        assert_eq!(w.events.ends()[0].0, EndReason::Evicted);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_task_ends_sessions_within_a_second_of_their_deadline() {
        let w = world(|c| c.on_timeout = OnTimeout::End);
        let store: Arc<dyn SessionStore> = Arc::new(w.store);
        let session = store
            .create(&w.key, None, CreatedKind::New, None, w.clock.now())
            .unwrap()
            .session;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(crate::session::sweeper::run(
            Arc::clone(&store),
            w.clock,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(12)).await;
        let ends = w.events.ends();
        assert_eq!(ends.len(), 1);
        let late_by = ends[0].1 - (session.created() + 10_000);
        assert!(late_by <= 1_000, "ended {late_by} ms after the deadline");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_rotated_token_replaces_the_old_one_after_a_grace() {
        let w = world(|_| {});
        let created = w.create();
        let old = created.token;
        let new = w.store.rotate(&created.session, w.clock.now()).unwrap();
        let by_old = w.store.resolve(&old, &w.key, w.clock.now()).unwrap();
        assert_eq!(by_old.session.handle(), created.session.handle());
        assert_eq!(
            by_old.newer_token,
            Some(new),
            "the old token learns the new"
        );
        let by_new = w.store.resolve(&new, &w.key, w.clock.now()).unwrap();
        assert_eq!(by_new.session.handle(), created.session.handle());
        assert_eq!(by_new.newer_token, None);
        // A second rotation retires the first new token too.
        tokio::time::advance(Duration::from_millis(5_000)).await;
        let newest = w.store.rotate(&created.session, w.clock.now()).unwrap();
        tokio::time::advance(Duration::from_millis(ROTATION_GRACE)).await;
        let now = w.clock.now();
        assert!(w.store.resolve(&old, &w.key, now).is_none());
        assert!(w.store.resolve(&new, &w.key, now).is_none());
        assert!(w.store.resolve(&newest, &w.key, now).is_some());
        w.store.maintain(now);
        assert_eq!(
            w.store.storage().alias_count(),
            1,
            "retired aliases are pruned"
        );
        w.store.end(&created.session, EndReason::Ended, now);
        assert!(w.store.resolve(&newest, &w.key, now).is_none());
        assert!(w.store.storage().alias_count() == 0 && w.store.storage().rotation_count() == 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handled_timeout_keeps_the_session_until_the_next_idle_period() {
        let w = world(|_| {});
        let session = w.create().session;
        w.advance(10_500).await;
        assert_eq!(session.stored_state(), State::Warning);
        let idle_since = session.last_activity();
        w.store
            .timeout_handled(&session.handle(), idle_since, w.clock.now());
        assert_eq!(session.stored_state(), State::Active);
        assert_eq!(w.events.kinds(), ["started", "warned", "handled"]);
        // Kept like `keep`: heartbeats keep it well past the countdown.
        for _ in 0..10 {
            w.advance(3_000).await;
            w.store.touch(&session, Touch::Signal, w.clock.now());
        }
        assert_eq!(w.state(&session), State::Active);
        // Activity starts a new idle period, which warns again.
        w.store.touch(&session, Touch::Activity, w.clock.now());
        w.advance(10_500).await;
        assert_eq!(session.stored_state(), State::Warning);
        // A late answer for an old idle period keeps nothing.
        w.store
            .timeout_handled(&session.handle(), idle_since, w.clock.now());
        assert_eq!(session.stored_state(), State::Warning);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_reports_each_idle_period_once() {
        let w = world(|c| c.on_timeout = OnTimeout::Keep);
        let session = w.create().session;
        for _ in 0..6 {
            w.advance(3_000).await;
            w.store.touch(&session, Touch::Signal, w.clock.now());
        }
        assert_eq!(w.events.kinds(), ["started", "idle"]);
        w.store.touch(&session, Touch::Activity, w.clock.now());
        for _ in 0..4 {
            w.advance(3_000).await;
            w.store.touch(&session, Touch::Signal, w.clock.now());
        }
        assert_eq!(w.events.kinds(), ["started", "idle", "idle"]);
        assert_eq!(w.state(&session), State::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_passes_over_recently_seen_sessions() {
        let w = world(|c| {
            c.max_sessions = 3;
            c.when_full = WhenFull::Evict;
            c.timeout = Cfg::ZERO;
        });
        // One millisecond apart: sessions seen in the same millisecond are equally
        // recent, and the order among them is arbitrary.
        let mut created = Vec::new();
        for _ in 0..3 {
            created.push(w.create().session);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let [a, b, c] = <[_; 3]>::try_from(created).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        // a is the oldest but was just seen: b goes first, then c, then a.
        w.store.touch(&a, Touch::Signal, w.clock.now());
        w.create();
        assert_eq!(b.stored_state(), State::Ended);
        w.create();
        assert_eq!(c.stored_state(), State::Ended);
        assert_eq!(a.stored_state(), State::Active);
        assert_eq!(w.store.len(), 3);
    }

    fn create_for(w: &World, client: &str) -> Result<Created, SessionError> {
        let client: IpAddr = client.parse().unwrap();
        w.store
            .create(&w.key, None, CreatedKind::New, Some(client), w.clock.now())
    }

    #[tokio::test(start_paused = true)]
    async fn live_sessions_per_client_are_capped_and_given_back_on_every_end() {
        let w = world(|c| {
            c.max_per_client = 2;
            c.on_timeout = OnTimeout::End;
        });
        let a = create_for(&w, "10.0.0.1").unwrap().session;
        let _b = create_for(&w, "10.0.0.1").unwrap().session;
        assert!(matches!(
            create_for(&w, "10.0.0.1"),
            Err(SessionError::PerClient(2))
        ));
        assert!(matches!(
            w.store.client_room("10.0.0.1".parse().unwrap()),
            Err(SessionError::PerClient(2))
        ));
        // Another address is unaffected, and a refusal reserves no slot.
        assert!(create_for(&w, "10.0.0.2").is_ok());
        assert_eq!(w.store.len(), 3);
        // An explicit end gives one back...
        w.store.end(&a, EndReason::Ended, w.clock.now());
        let c = create_for(&w, "10.0.0.1").unwrap().session;
        assert!(create_for(&w, "10.0.0.1").is_err());
        // ...and so does a timeout ended by the sweeper.
        w.advance(10_500).await;
        assert_eq!(c.stored_state(), State::Ended);
        assert_eq!(w.store.live_for("10.0.0.1".parse().unwrap()), 0);
        assert_eq!(w.store.clients(), 0, "empty counts are dropped");
        assert!(create_for(&w, "10.0.0.1").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_takes_the_client_over_its_share_first() {
        let w = world(|c| {
            c.max_sessions = 10;
            c.max_per_client = 0;
            c.when_full = WhenFull::Evict;
        });
        // A real user, created first (so least recently seen of all)...
        let user = create_for(&w, "192.0.2.7").unwrap().session;
        tokio::time::advance(Duration::from_millis(1)).await;
        // ...then a flood from one address fills the table and goes on.
        for _ in 0..50 {
            create_for(&w, "10.0.0.1").unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(user.stored_state(), State::Active, "the flooder went first");
        assert_eq!(w.store.len(), 10);
        assert_eq!(w.store.live_for("10.0.0.1".parse().unwrap()), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_eviction_heap_stays_proportional_to_live_sessions() {
        let w = world(|c| {
            c.max_sessions = 100_000;
            c.when_full = WhenFull::Evict;
        });
        let mut kept = Vec::new();
        for i in 0..20_000 {
            let session = w.create().session;
            if i % 100 == 0 {
                kept.push(session);
            } else {
                w.store.end(&session, EndReason::Ended, w.clock.now());
            }
        }
        assert_eq!(w.store.len(), 200);
        let bound = 2 * w.store.len() + HEAP_SLACK + 1;
        assert!(
            w.store.eviction_len() <= bound,
            "{} heap entries for {} live sessions",
            w.store.eviction_len(),
            w.store.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fork_names_its_parent_once() {
        let w = world(|_| {});
        let parent = w.create().session;
        let child = w
            .store
            .create(
                &w.key,
                Some(parent.handle()),
                CreatedKind::Fork,
                None,
                w.clock.now(),
            )
            .unwrap()
            .session;
        assert_eq!(child.parent_once(), Some(parent.handle()));
        assert_eq!(child.parent_once(), None);
        assert_eq!(parent.parent_once(), None);
    }

    /// The ended-token table stays at its cap under a flood of ended sessions, the
    /// oldest going first; entries are forgotten after their age; it keeps digests
    /// (handles), so a token that was never issued is never "ended".
    #[tokio::test(start_paused = true)]
    async fn the_ended_table_is_bounded_and_forgets_the_oldest_first() {
        const CAP: usize = 64;
        let w = world(|c| c.max_sessions = 1_000);
        let store = MemoryStore::new(
            w.store.rules().clone(),
            1_000,
            WhenFull::Reject,
            w.events.clone(),
        )
        .unwrap()
        .with_ended_cap(CAP);
        let mut tokens = Vec::new();
        for _ in 0..CAP * 3 {
            let created = store
                .create(&w.key, None, CreatedKind::New, None, w.clock.now())
                .unwrap();
            tokens.push(created.token);
            store.end(&created.session, EndReason::Ended, w.clock.now());
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(store.storage().ended_len() <= CAP);
        }
        let now = w.clock.now();
        assert_eq!(store.storage().ended_len(), CAP);
        let remembered: Vec<bool> = tokens
            .iter()
            .map(|t| store.ended_recently(t, now))
            .collect();
        // Exactly the newest CAP are remembered.
        assert!(remembered[..CAP * 2].iter().all(|r| !r));
        assert!(remembered[CAP * 2..].iter().all(|r| *r));
        assert!(!store.ended_recently(&Token::generate().unwrap(), now));
        // Past their age, they are not "ended" any more, and maintenance drops them.
        tokio::time::advance(Duration::from_millis(ENDED_AGE + 1_000)).await;
        let later = w.clock.now();
        assert!(!store.ended_recently(&tokens[CAP * 3 - 1], later));
        store.maintain(later);
        assert_eq!(store.storage().ended_len(), 0);
    }

    mod properties {
        //! Random sequences of what browsers, backends and time can do to sessions.

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Create,
            Touch(usize, bool),
            Heartbeat(usize),
            Extend(usize),
            End(usize),
            Rotate(usize),
            SetTimeout(usize, u64),
            Handled(usize),
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                2 => Just(Op::Create),
                3 => (0..8usize, any::<bool>()).prop_map(|(i, a)| Op::Touch(i, a)),
                3 => (0..8usize).prop_map(Op::Heartbeat),
                1 => (0..8usize).prop_map(Op::Extend),
                1 => (0..8usize).prop_map(Op::End),
                1 => (0..8usize).prop_map(Op::Rotate),
                1 => (0..8usize, 0..15_000u64).prop_map(|(i, t)| Op::SetTimeout(i, t)),
                1 => (0..8usize).prop_map(Op::Handled),
                4 => (0..12_000u64).prop_map(Op::Advance),
            ]
        }

        fn config() -> impl Strategy<Value = SessionConfig> {
            (
                prop_oneof![Just(0u64), 1..20u64],
                prop_oneof![
                    Just(OnTimeout::Countdown),
                    Just(OnTimeout::Keep),
                    Just(OnTimeout::End)
                ],
                prop_oneof![Just(0u64), 5..60u64],
            )
                .prop_map(|(timeout, on_timeout, lifetime)| SessionConfig {
                    timeout: Cfg::from_secs(timeout),
                    on_timeout,
                    max_lifetime: Cfg::from_secs(lifetime),
                    max_sessions: 6,
                    when_full: WhenFull::Evict,
                    ..SessionConfig::default()
                })
        }

        /// Per session: the token, whether the store said it ended, when it began.
        struct Tracked {
            token: Token,
            session: Arc<Session>,
        }

        fn run(config: SessionConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let w = world(|c| *c = config.clone());
                let max_lifetime = w.store.rules().max_lifetime;
                let mut tracked: Vec<Tracked> = Vec::new();
                let now = || w.clock.now();
                for op in ops {
                    let pick = |i: usize| tracked.get(i % tracked.len().max(1));
                    match op {
                        Op::Create => {
                            if let Ok(created) =
                                w.store.create(&w.key, None, CreatedKind::New, None, now())
                            {
                                tracked.push(Tracked {
                                    token: created.token,
                                    session: created.session,
                                });
                            }
                        }
                        Op::Touch(i, activity) => {
                            if let Some(t) = pick(i) {
                                let touch = if activity {
                                    Touch::Activity
                                } else {
                                    Touch::Signal
                                };
                                w.store.touch(&t.session, touch, now());
                            }
                        }
                        Op::Heartbeat(i) => {
                            if let Some(t) = pick(i) {
                                w.store.touch(&t.session, Touch::Signal, now());
                            }
                        }
                        Op::Extend(i) => {
                            if let Some(t) = pick(i) {
                                w.store.touch(&t.session, Touch::Activity, now());
                            }
                        }
                        Op::End(i) => {
                            if let Some(t) = pick(i) {
                                w.store.end(&t.session, EndReason::Ended, now());
                            }
                        }
                        Op::Rotate(i) => {
                            if let Some(t) =
                                pick(i).filter(|t| t.session.stored_state() != State::Ended)
                            {
                                let token = w.store.rotate(&t.session, now()).unwrap();
                                let session = Arc::clone(&t.session);
                                tracked.push(Tracked { token, session });
                            }
                        }
                        Op::SetTimeout(i, ms) => {
                            if let Some(t) = pick(i) {
                                w.store.set_timeout(&t.session, ms, now());
                            }
                        }
                        Op::Handled(i) => {
                            if let Some(t) = pick(i) {
                                let since = t.session.last_activity();
                                w.store.timeout_handled(&t.session.handle(), since, now());
                            }
                        }
                        Op::Advance(ms) => w.advance(ms).await,
                    }
                    // After every step: ended sessions are never found again, and no
                    // session is found at or past its max_lifetime.
                    let ended: std::collections::HashSet<Handle> = w
                        .events
                        .0
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|row| row.0 == "ended")
                        .map(|row| row.1)
                        .collect();
                    for t in &tracked {
                        let handle = t.session.handle();
                        let was_ended = ended.contains(&handle);
                        let found = w.store.resolve(&t.token, &w.key, now());
                        if was_ended {
                            prop_assert!(found.is_none(), "an ended session was found again");
                        }
                        if let Some(found) = found {
                            prop_assert_eq!(found.session.handle(), handle);
                            if max_lifetime > 0 {
                                prop_assert!(now() < t.session.created() + max_lifetime);
                            }
                        }
                    }
                }
                // Let every session run out (nothing signals any more), then check
                // each one's event history: started first, exactly one end, last.
                for t in &tracked {
                    w.store.end(&t.session, EndReason::Admin, now());
                }
                let rows = w.events.0.lock().unwrap().clone();
                for t in &tracked {
                    let history: Vec<&str> = rows
                        .iter()
                        .filter(|row| row.1 == t.session.handle())
                        .map(|row| row.0)
                        .collect();
                    prop_assert_eq!(history.first().copied(), Some("started"));
                    prop_assert_eq!(history.iter().filter(|k| **k == "started").count(), 1);
                    prop_assert_eq!(history.iter().filter(|k| **k == "ended").count(), 1);
                    prop_assert_eq!(history.last().copied(), Some("ended"));
                }
                prop_assert_eq!(w.store.len(), 0);
                Ok(())
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn sessions_end_once_and_stay_ended(
                config in config(),
                ops in proptest::collection::vec(op(), 1..60),
            ) {
                run(config, ops)?;
            }
        }
    }

    mod jars {
        //! The cookie-jar side table follows its session: every end drops it, and
        //! concurrent updates of one jar are applied one after the other.

        use std::sync::atomic::Ordering;

        use super::*;
        use crate::session::jar::{Jar, Site};

        const SITE: Site<'static> = Site {
            host: "h",
            path: "/",
            secure: false,
        };

        fn add(store: &MemoryStore, session: &Session, cookie: &str) {
            store.update_jar(session, &mut |slot: &mut Option<Jar>| {
                slot.get_or_insert_with(Jar::default)
                    .store(cookie.as_bytes(), &SITE, 1);
            });
        }

        fn has_jar(store: &MemoryStore, session: &Session) -> bool {
            store.jar(&session.handle()).is_some()
        }

        #[tokio::test(start_paused = true)]
        async fn every_end_drops_the_jar() {
            // Ended on purpose, by the app, by an operator.
            let w = world(|_| {});
            for reason in [EndReason::Ended, EndReason::Upstream, EndReason::Admin] {
                let created = w.create();
                add(&w.store, &created.session, "PHPSESSID=1");
                assert!(has_jar(&w.store, &created.session));
                assert!(w.store.end(&created.session, reason, w.clock.now()));
                assert!(!has_jar(&w.store, &created.session), "{reason:?}");
            }
            // By the sweeper (timeout), and on a lookup past the deadline.
            let swept = w.create();
            add(&w.store, &swept.session, "PHPSESSID=2");
            let looked_up = {
                let w2 = world(|_| {});
                let created = w2.create();
                add(&w2.store, &created.session, "PHPSESSID=3");
                tokio::time::advance(Duration::from_secs(60)).await;
                assert!(w2
                    .store
                    .get(&created.session.handle(), w2.clock.now())
                    .is_none());
                w2.store.jar_count()
            };
            assert_eq!(looked_up, 0, "ended on lookup");
            w.advance(0).await;
            assert!(!has_jar(&w.store, &swept.session), "ended by the sweeper");
            assert_eq!(w.store.jar_count(), 0);
            // Evicted to make room.
            let w = world(|c| {
                c.max_sessions = 1;
                c.when_full = WhenFull::Evict;
            });
            let old = w.create();
            add(&w.store, &old.session, "PHPSESSID=4");
            w.advance(10).await;
            let new = w.create();
            assert_eq!(w.events.ends()[0].0, EndReason::Evicted);
            assert!(!has_jar(&w.store, &old.session));
            assert!(
                !has_jar(&w.store, &new.session),
                "a new session starts empty"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn jars_never_outnumber_the_live_sessions() {
            let w = world(|c| {
                c.max_sessions = 4;
                c.when_full = WhenFull::Evict;
            });
            for i in 0..100 {
                let created = w.create();
                for c in 0..60 {
                    add(&w.store, &created.session, &format!("c{c}={i}"));
                }
                w.advance(1).await;
                assert!(w.store.jar_count() <= 4, "{} jars", w.store.jar_count());
                let jar = w.store.jar(&created.session.handle()).unwrap();
                assert!(jar.len() <= crate::session::jar::MAX_COOKIES);
            }
            assert_eq!(w.store.jar_count(), 4);
        }

        #[tokio::test(start_paused = true)]
        async fn an_ended_session_gets_no_jar() {
            let w = world(|_| {});
            let created = w.create();
            w.store
                .end(&created.session, EndReason::Ended, w.clock.now());
            add(&w.store, &created.session, "PHPSESSID=late");
            assert_eq!(w.store.jar_count(), 0);
        }

        #[test]
        fn racing_updates_of_one_jar_lose_nothing() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let w = rt.block_on(async { world(|_| {}) });
            let created = w.create();
            let session = &created.session;
            // How many updates are inside their closure at once: never more than one.
            let inside = std::sync::atomic::AtomicUsize::new(0);
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|scope| {
                for t in 0..8 {
                    let (store, inside, start) = (&w.store, &inside, &start);
                    scope.spawn(move || {
                        start.wait();
                        for i in 0..6 {
                            store.update_jar(session, &mut |slot: &mut Option<Jar>| {
                                let others = inside.fetch_add(1, Ordering::SeqCst);
                                let jar = slot.get_or_insert_with(Jar::default);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                jar.store(format!("t{t}c{i}={i}").as_bytes(), &SITE, 1);
                                inside.fetch_sub(1, Ordering::SeqCst);
                                assert_eq!(others, 0, "two updates of one jar at once");
                            });
                        }
                    });
                }
            });
            let jar = w.store.jar(&session.handle()).unwrap();
            assert_eq!(jar.len(), 48, "every update of every thread is kept");
        }
    }
}
