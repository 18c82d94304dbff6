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
        session.state_at(&self.rules, now)
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

#[cfg(test)]
mod tests {
    //! Lifetime rules on a paused tokio clock: every transition and end reason,
    //! without sleeping for real.

    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::{Duration as Cfg, OnTimeout, SessionConfig};
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
                SessionEvent::Ended {
                    session,
                    reason,
                    at,
                    ..
                } => ("ended", session.handle(), Some(reason), at),
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
        );
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
                .create(&self.key, None, CreatedKind::New, self.clock.now())
                .unwrap()
        }

        /// Advances the paused clock and sweeps, as the sweeper task would.
        async fn advance(&self, ms: u64) {
            tokio::time::advance(Duration::from_millis(ms)).await;
            while self.store.sweep(self.clock.now(), 1024) == 1024 {}
        }

        fn state(&self, session: &Session) -> State {
            session.state_at(self.store.rules(), self.clock.now())
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
                .create(&w.key, None, CreatedKind::New, w.clock.now()),
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
            .create(&w.key, None, CreatedKind::New, w.clock.now())
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
}
