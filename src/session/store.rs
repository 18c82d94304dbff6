//! Where sessions are kept: the [`SessionStore`] interface and its in-memory
//! implementation.
//!
//! The request path only talks to the trait, so a shared store (several gateway
//! replicas, DESIGN.md §10) can be added without touching it. The in-memory store is
//! two `DashMap`s (handle → session, token → handle) plus the [`DeadlineIndex`].
//! DashMap guards are never held across another map operation or an `.await`:
//! values are cloned out first (`Arc`, `Copy`), which keeps the store deadlock-free.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::events::{SessionEvent, SessionObserver};
use super::expiry::{DeadlineIndex, DueEntry};
use super::token::Binder;
use super::{
    BrowserKey, CreatedKind, EndReason, Handle, Lifetime, Millis, Session, SessionError, State,
    Token, Touch, Verdict,
};
use crate::config::WhenFull;

/// A newly created session and the token only its creator learns.
#[derive(Debug)]
pub struct Created {
    pub session: Arc<Session>,
    pub token: Token,
}

/// The operations the request path, the sweeper and the admin API need.
pub trait SessionStore: Send + Sync {
    /// The lifetime rules every session follows.
    fn rules(&self) -> &Lifetime;

    /// Creates a session bound to `browser`.
    fn create(
        &self,
        browser: &BrowserKey,
        parent: Option<Handle>,
        kind: CreatedKind,
        now: Millis,
    ) -> Result<Created, SessionError>;

    /// The live session for `token`, if the token is known, bound to `browser`, and its
    /// session is within its deadlines at `now` (a session found past a deadline is
    /// ended on the spot: lookups never depend on the sweeper being on time).
    fn resolve(&self, token: &Token, browser: &BrowserKey, now: Millis) -> Option<Arc<Session>>;

    /// The live session with this handle (admin API), with the same deadline check.
    fn get(&self, handle: &Handle, now: Millis) -> Option<Arc<Session>>;

    /// Records a signal or activity and returns the session's state afterwards.
    fn touch(&self, session: &Session, touch: Touch, now: Millis) -> State;

    /// Ends a session; `true` if this call ended it.
    fn end(&self, session: &Session, reason: EndReason, now: Millis) -> bool;

    /// Sets one session's idle timeout (0 = never).
    fn set_timeout(&self, session: &Session, timeout: Millis, now: Millis);

    /// Handles up to `max` due deadlines; returns how many entries it looked at.
    fn sweep(&self, now: Millis, max: usize) -> usize;

    /// Live sessions ordered by handle, starting after `after`.
    fn page(&self, after: Option<Handle>, limit: usize) -> Vec<Arc<Session>>;

    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many sessions the evict policy samples to find one least recently seen
/// (approximate LRU, as Redis does: exact LRU would need an ordered index that every
/// touch writes to).
const EVICTION_SAMPLE: usize = 32;

/// The in-memory session store.
pub struct MemoryStore {
    sessions: DashMap<Handle, Arc<Session>>,
    tokens: DashMap<Token, Handle>,
    index: DeadlineIndex,
    rules: Lifetime,
    binder: Binder,
    live: AtomicUsize,
    max_sessions: usize,
    when_full: WhenFull,
    observer: Arc<dyn SessionObserver>,
}

impl MemoryStore {
    pub fn new(
        rules: Lifetime,
        max_sessions: usize,
        when_full: WhenFull,
        observer: Arc<dyn SessionObserver>,
    ) -> Self {
        MemoryStore {
            sessions: DashMap::new(),
            tokens: DashMap::new(),
            index: DeadlineIndex::default(),
            rules,
            binder: Binder::new(),
            live: AtomicUsize::new(0),
            max_sessions,
            when_full,
            observer,
        }
    }

    /// The deadline index (benchmarks and tests look at its size).
    pub fn index(&self) -> &DeadlineIndex {
        &self.index
    }

    /// Takes a slot under `max_sessions`, evicting if so configured.
    fn reserve_slot(&self, now: Millis) -> Result<(), SessionError> {
        loop {
            let live = self.live.load(Ordering::Acquire);
            if live < self.max_sessions {
                if self
                    .live
                    .compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if self.when_full == WhenFull::Reject || !self.evict_one(now) {
                return Err(SessionError::Full(self.max_sessions));
            }
        }
    }

    /// Ends the least recently seen of a sample of sessions.
    fn evict_one(&self, now: Millis) -> bool {
        let victim = self
            .sessions
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|entry| entry.value().last_seen())
            .map(|entry| Arc::clone(entry.value()));
        victim.is_some_and(|session| self.end(&session, EndReason::Evicted, now))
    }

    /// Applies the verdict at `now`: ends a session that is past a deadline.
    fn check(&self, session: Arc<Session>, now: Millis) -> Option<Arc<Session>> {
        match session.verdict(&self.rules, now) {
            Verdict::Live(State::Ended) => None,
            Verdict::Live(_) => Some(session),
            Verdict::Due(reason) => {
                self.end(&session, reason, now);
                None
            }
        }
    }

    fn sweep_one(&self, entry: DueEntry, now: Millis) {
        let Some(session) = self.sessions.get(&entry.handle).map(|s| Arc::clone(&s)) else {
            return;
        };
        if session.filed_in.load(Ordering::Acquire) != entry.bucket {
            return; // a leftover entry: the session is filed earlier elsewhere
        }
        match session.verdict(&self.rules, now) {
            Verdict::Due(reason) => {
                self.end(&session, reason, now);
                return;
            }
            Verdict::Live(State::Warning) => {
                if session.transition(State::Active, State::Warning) {
                    self.observer
                        .observe(&SessionEvent::Warned { session: &session });
                }
            }
            Verdict::Live(_) => {}
        }
        self.index
            .refile(&session, entry.bucket, session.next_due(&self.rules, now));
    }
}

impl SessionStore for MemoryStore {
    fn rules(&self) -> &Lifetime {
        &self.rules
    }

    fn create(
        &self,
        browser: &BrowserKey,
        parent: Option<Handle>,
        kind: CreatedKind,
        now: Millis,
    ) -> Result<Created, SessionError> {
        let token = Token::generate()?;
        self.reserve_slot(now)?;
        let handle = Handle::new_v4();
        let session = Arc::new(Session::new(
            handle,
            parent,
            self.binder.bind(browser),
            token,
            self.rules.timeout,
            now,
        ));
        self.sessions.insert(handle, Arc::clone(&session));
        self.tokens.insert(token, handle);
        if let Some(due) = session.next_due(&self.rules, now) {
            self.index.file_earlier(&session, due);
        }
        self.observer.observe(&SessionEvent::Started {
            session: &session,
            kind,
        });
        Ok(Created { session, token })
    }

    fn resolve(&self, token: &Token, browser: &BrowserKey, now: Millis) -> Option<Arc<Session>> {
        let handle = *self.tokens.get(token)?;
        let session = self.sessions.get(&handle).map(|s| Arc::clone(&s))?;
        if !session.is_bound_to(self.binder.bind(browser)) {
            return None;
        }
        self.check(session, now)
    }

    fn get(&self, handle: &Handle, now: Millis) -> Option<Arc<Session>> {
        let session = self.sessions.get(handle).map(|s| Arc::clone(&s))?;
        self.check(session, now)
    }

    fn touch(&self, session: &Session, touch: Touch, now: Millis) -> State {
        if let Verdict::Due(reason) = session.verdict(&self.rules, now) {
            self.end(session, reason, now);
            return State::Ended;
        }
        session.touch(touch, now);
        if touch == Touch::Activity && session.transition(State::Warning, State::Active) {
            self.observer.observe(&SessionEvent::Extended { session });
        }
        match session.verdict(&self.rules, now) {
            Verdict::Live(state) => state,
            Verdict::Due(_) => State::Ended,
        }
    }

    fn end(&self, session: &Session, reason: EndReason, now: Millis) -> bool {
        let Some(was) = session.mark_ended() else {
            return false;
        };
        let token = *session.token.lock().unwrap_or_else(|e| e.into_inner());
        self.tokens.remove(&token);
        self.sessions.remove(&session.handle());
        self.live.fetch_sub(1, Ordering::AcqRel);
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
        if let Some(due) = session.next_due(&self.rules, now) {
            self.index.file_earlier(session, due);
        }
    }

    fn sweep(&self, now: Millis, max: usize) -> usize {
        let mut due = Vec::with_capacity(max.min(4096));
        self.index.pop_due(now, max, &mut due);
        for entry in &due {
            self.sweep_one(*entry, now);
        }
        due.len()
    }

    fn page(&self, after: Option<Handle>, limit: usize) -> Vec<Arc<Session>> {
        // A bounded max-heap of the `limit` smallest handles after the cursor: one pass,
        // O(n log limit), no copy of the whole table.
        let mut heap = std::collections::BinaryHeap::with_capacity(limit + 1);
        for entry in self.sessions.iter() {
            let handle = *entry.key();
            if after.is_some_and(|a| handle <= a) {
                continue;
            }
            if heap.len() < limit {
                heap.push(handle);
            } else if heap.peek().is_some_and(|top| handle < *top) {
                heap.pop();
                heap.push(handle);
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .filter_map(|handle| self.sessions.get(&handle).map(|s| Arc::clone(&s)))
            .collect()
    }

    fn len(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}
