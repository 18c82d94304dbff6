//! Sessions: what they are, how long they live, and where they are kept.
//!
//! - [`Session`]: one session's identity and timestamps, all in atomics so that a
//!   request or heartbeat touches it without a lock.
//! - [`Lifetime`] (from [`crate::lifetime`]): the rules that turn timestamps into a
//!   state or an end.
//! - [`store`]: the [`SessionStore`](store::SessionStore) interface the request path
//!   uses, and the in-memory implementation with its deadline index ([`expiry`]).
//! - [`identity`]: which session a request belongs to.
//! - [`events`]: what the store reports when sessions start, warn, and end.
//! - [`jar`]: the per-session cookie jar (`upstream.cookie_jar`), kept by the store
//!   in a side table next to the session.

pub mod clock;
pub mod events;
pub mod expiry;
pub mod identity;
pub mod jar;
pub mod limit;
pub mod persist;
pub mod store;
pub mod sweeper;
pub mod ticket;
pub mod token;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use serde::Serialize;
use uuid::Uuid;

pub use clock::{Clock, Millis};
pub use token::{BrowserKey, Token};

pub use crate::lifetime::Lifetime;
use crate::lifetime::OnTimeout;
use crate::web::refusal::Refusal;

/// The value sent upstream in `X-Session`: a UUID, not a secret.
pub type Handle = Uuid;

/// Errors from the session layer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the OS random number generator failed: {0}")]
    Entropy(String),
    #[error("the session limit ({0}) is reached")]
    Full(usize),
    #[error("too many new sessions from this client address; retry in {0} ms")]
    Limited(Millis),
    #[error("this client address holds its limit of {0} live sessions")]
    PerClient(usize),
    #[error("the shared session store is unreachable")]
    StoreDown,
}

impl SessionError {
    /// The gateway's answer to this error.
    pub fn refusal(&self) -> Refusal {
        match self {
            SessionError::Entropy(_) => Refusal::Internal,
            SessionError::Full(_) => Refusal::SessionsFull,
            SessionError::Limited(retry_ms) => Refusal::Limited {
                retry_ms: *retry_ms,
            },
            // Sessions end by themselves; a minute is a fair time to look again.
            SessionError::PerClient(_) => Refusal::Limited { retry_ms: 60_000 },
            SessionError::StoreDown => Refusal::StoreDown,
        }
    }
}

/// A live session's state as browsers and operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Active,
    Warning,
    Ended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Warning => "warning",
            State::Ended => "ended",
        }
    }

    fn from_u8(value: u8) -> State {
        match value {
            0 => State::Active,
            1 => State::Warning,
            _ => State::Ended,
        }
    }
}

/// Why a session ended (metric label and hook field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// The countdown ran out (or `on_timeout = "end"`).
    Timeout,
    /// No signal at all for `abandon`: tab closed, device off, network gone.
    Abandoned,
    /// `max_lifetime` reached.
    Lifetime,
    /// The agent's end() or the countdown's "End" button.
    Ended,
    /// The backend sent `X-Session-End`.
    Upstream,
    /// The admin API.
    Admin,
    /// Pushed out by `max_sessions` with `when_full = "evict"`.
    Evicted,
}

impl EndReason {
    pub const ALL: [EndReason; 7] = [
        EndReason::Timeout,
        EndReason::Abandoned,
        EndReason::Lifetime,
        EndReason::Ended,
        EndReason::Upstream,
        EndReason::Admin,
        EndReason::Evicted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Timeout => "timeout",
            EndReason::Abandoned => "abandoned",
            EndReason::Lifetime => "lifetime",
            EndReason::Ended => "ended",
            EndReason::Upstream => "upstream",
            EndReason::Admin => "admin",
            EndReason::Evicted => "evicted",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a session came to be (label of `sessiongate_sessions_created_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedKind {
    New,
    Fork,
    ResumeMiss,
}

impl CreatedKind {
    pub const ALL: [CreatedKind; 3] =
        [CreatedKind::New, CreatedKind::Fork, CreatedKind::ResumeMiss];

    pub fn as_str(self) -> &'static str {
        match self {
            CreatedKind::New => "new",
            CreatedKind::Fork => "fork",
            CreatedKind::ResumeMiss => "resume_miss",
        }
    }
}

/// What a touch means for the idle timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The tab is alive (heartbeat, background request): resets `abandon` only.
    Signal,
    /// The user did something: resets the idle timeout as well.
    Activity,
}

/// What the rules say about a session at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Live(State),
    /// Past a deadline: the session must end for this reason.
    Due(EndReason),
}

/// A session's deadlines, in monotonic milliseconds (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadlines {
    /// When the idle timeout is reached and announced (the `timeout` hook fires),
    /// unless the timeout ends the session right away.
    pub idle_at: Option<Millis>,
    /// When the warning (countdown) starts: the idle timeout, plus the time the app
    /// is given to answer the `timeout` hook (`consult`).
    pub warn_at: Option<Millis>,
    /// When the session ends if nothing but signals arrive.
    pub end_at: Option<Millis>,
    /// When it is abandoned if no signal at all arrives.
    pub abandon_at: Option<Millis>,
}

/// One session. Timestamps are monotonic [`Millis`]; everything a request changes is
/// an atomic, so the hot path never takes a lock.
///
/// Kept small (see the assertion below): a gateway holds a million of these. Rare
/// values live behind a pointer (the parent, only forks have one); the client group
/// is packed into 64 bits plus a kind in `flags` ([`limit::pack`]).
pub struct Session {
    handle: Handle,
    /// Only forked sessions have a parent: boxed, so the others pay 8 bytes, not 17.
    parent: Option<Box<Handle>>,
    /// Keyed hash of the browser key the session is bound to (see [`token::Binder`]).
    binding: u64,
    created: Millis,
    last_activity: AtomicU64,
    last_seen: AtomicU64,
    /// This session's idle timeout (0 = never); starts as the configured one.
    timeout: AtomicU64,
    /// The deadline-index bucket this session is filed in (`NOT_FILED`: none).
    pub(crate) filed_in: AtomicU32,
    /// `last_activity` of the idle period that was already dealt with as `keep`
    /// (the `timeout` hook answered `handled`, or `keep` mode reported it); an idle
    /// period ends with the next activity, which makes the mark stale by itself.
    idle_mark: AtomicU64,
    /// `last_activity` of the idle period whose timeout was already announced (the
    /// `Idle` event, on which the `timeout` hook fires): once per idle period.
    asked_mark: AtomicU64,
    state: AtomicU8,
    /// [`PARENT_SENT`], and the client group's kind ([`limit::pack`]) in the bits
    /// [`CLIENT_KIND`] (set once, before the session is shared).
    flags: AtomicU8,
    /// When persistent cookies (`session.cookie_lifetime`) were last given to the
    /// browser for this session: they are refreshed at most once per interval.
    cookies_at: AtomicU64,
    /// The client address group that created it (see [`limit::group`]), counted
    /// against `session.max_per_client` until it ends, packed by [`limit::pack`]
    /// (its kind is in `flags`; kind `GROUP_NONE`: not counted).
    client: u64,
}

// A gateway holds a million sessions: every byte here is a megabyte there (the
// million-session figure in the README). A field that grows `Session` past this must
// find room elsewhere (a side table, or a box only the rare sessions pay for).
const _: () = assert!(std::mem::size_of::<Session>() <= 104);

/// Everything a session is, as plain values: what a snapshot saves and restores
/// ([`persist`]). Instants are on the clock's scale; marks are `None` when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParts {
    pub handle: Handle,
    pub parent: Option<Handle>,
    pub binding: u64,
    pub created: Millis,
    pub last_activity: Millis,
    pub last_seen: Millis,
    pub timeout: Millis,
    pub idle_mark: Option<Millis>,
    pub asked_mark: Option<Millis>,
    pub state: State,
    /// The parent handle has been sent upstream already.
    pub parent_sent: bool,
    pub cookies_at: Millis,
    pub client: Option<std::net::IpAddr>,
}

/// `Session::flags`: the parent handle has been sent upstream once.
const PARENT_SENT: u8 = 1;
/// `Session::flags`: where the client group's kind is kept.
const CLIENT_SHIFT: u32 = 1;
const CLIENT_KIND: u8 = 0b11 << CLIENT_SHIFT;
const NO_MARK: Millis = u64::MAX;

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("handle", &self.handle)
            .field("state", &self.stored_state())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        handle: Handle,
        parent: Option<Handle>,
        binding: u64,
        timeout: Millis,
        now: Millis,
    ) -> Self {
        Session {
            handle,
            parent: parent.map(Box::new),
            binding,
            created: now,
            last_activity: AtomicU64::new(now),
            last_seen: AtomicU64::new(now),
            timeout: AtomicU64::new(timeout),
            filed_in: AtomicU32::new(expiry::NOT_FILED),
            idle_mark: AtomicU64::new(NO_MARK),
            asked_mark: AtomicU64::new(NO_MARK),
            state: AtomicU8::new(0),
            flags: AtomicU8::new(0),
            cookies_at: AtomicU64::new(now),
            client: 0,
        }
    }

    /// A session as [`Session::parts`] described it (a restored one).
    pub(crate) fn from_parts(parts: &SessionParts) -> Self {
        let mark = |m: Option<Millis>| AtomicU64::new(m.unwrap_or(NO_MARK));
        let (kind, client) = limit::pack(parts.client);
        let sent = if parts.parent_sent { PARENT_SENT } else { 0 };
        Session {
            handle: parts.handle,
            parent: parts.parent.map(Box::new),
            binding: parts.binding,
            created: parts.created,
            last_activity: AtomicU64::new(parts.last_activity),
            last_seen: AtomicU64::new(parts.last_seen),
            timeout: AtomicU64::new(parts.timeout),
            filed_in: AtomicU32::new(expiry::NOT_FILED),
            idle_mark: mark(parts.idle_mark),
            asked_mark: mark(parts.asked_mark),
            state: AtomicU8::new(parts.state as u8),
            flags: AtomicU8::new(sent | (kind << CLIENT_SHIFT)),
            cookies_at: AtomicU64::new(parts.cookies_at),
            client,
        }
    }

    /// The session as plain values, read field by field (each one atomically; a
    /// touch racing with this may be half seen, which a snapshot tolerates: it is
    /// never older than the touch before).
    pub fn parts(&self) -> SessionParts {
        let mark = |m: &AtomicU64| Some(m.load(Ordering::Acquire)).filter(|&m| m != NO_MARK);
        SessionParts {
            handle: self.handle,
            parent: self.parent(),
            binding: self.binding,
            created: self.created,
            last_activity: self.last_activity(),
            last_seen: self.last_seen(),
            timeout: self.timeout(),
            idle_mark: mark(&self.idle_mark),
            asked_mark: mark(&self.asked_mark),
            state: self.stored_state(),
            parent_sent: self.flags.load(Ordering::Acquire) & PARENT_SENT != 0,
            cookies_at: self.cookies_at.load(Ordering::Acquire),
            client: self.client(),
        }
    }

    /// The same session, counted against its creating client's address group.
    /// (An address that is not a group yet is counted as its group.)
    pub(crate) fn with_client(mut self, client: Option<std::net::IpAddr>) -> Self {
        let (kind, bits) = limit::pack(client);
        let flags = self.flags.get_mut();
        *flags = (*flags & !CLIENT_KIND) | (kind << CLIENT_SHIFT);
        self.client = bits;
        self
    }

    /// The client address group that created it, if counted.
    pub(crate) fn client(&self) -> Option<std::net::IpAddr> {
        let kind = (self.flags.load(Ordering::Acquire) & CLIENT_KIND) >> CLIENT_SHIFT;
        limit::unpack(kind, self.client)
    }

    pub fn handle(&self) -> Handle {
        self.handle
    }

    pub fn parent(&self) -> Option<Handle> {
        self.parent.as_deref().copied()
    }

    pub fn created(&self) -> Millis {
        self.created
    }

    pub fn last_activity(&self) -> Millis {
        self.last_activity.load(Ordering::Acquire)
    }

    pub fn last_seen(&self) -> Millis {
        self.last_seen.load(Ordering::Acquire)
    }

    /// This session's idle timeout in ms (0 = never).
    pub fn timeout(&self) -> Millis {
        self.timeout.load(Ordering::Acquire)
    }

    pub(crate) fn set_timeout(&self, timeout: Millis) {
        self.timeout.store(timeout, Ordering::Release);
    }

    /// The parent handle, the first time it is asked for only: a forked session's
    /// first forwarded request carries `X-Session-Parent`, later ones do not.
    pub(crate) fn parent_once(&self) -> Option<Handle> {
        let parent = self.parent()?;
        let before = self.flags.fetch_or(PARENT_SENT, Ordering::AcqRel);
        (before & PARENT_SENT == 0).then_some(parent)
    }

    /// Marks the idle period that began at `idle_since` as kept; `false` if the user
    /// has been active since (a new period, which must not be kept).
    pub(crate) fn keep_idle_period(&self, idle_since: Millis) -> bool {
        self.idle_mark.store(idle_since, Ordering::Release);
        self.last_activity() == idle_since
    }

    /// Marks the current idle period's timeout as announced; `true` if this call did.
    pub(crate) fn announce_idle_period(&self) -> bool {
        let since = self.last_activity();
        self.asked_mark.swap(since, Ordering::AcqRel) != since
    }

    /// Whether the current idle period was kept (see `idle_mark`) or its timeout
    /// announced (see `asked_mark`).
    pub(crate) fn idle_period_marked(&self) -> bool {
        let since = self.last_activity();
        self.idle_mark.load(Ordering::Acquire) == since
            || self.asked_mark.load(Ordering::Acquire) == since
    }

    /// Whether the current idle period was kept (the `timeout` hook handled it).
    fn idle_period_kept(&self) -> bool {
        self.idle_mark.load(Ordering::Acquire) == self.last_activity()
    }

    /// What happens at the end of the current idle period: the configured rule,
    /// unless this period has been kept.
    pub fn on_timeout(&self, rules: &Lifetime) -> OnTimeout {
        if rules.on_timeout == OnTimeout::Countdown && self.idle_period_kept() {
            OnTimeout::Keep
        } else {
            rules.on_timeout
        }
    }

    pub(crate) fn is_bound_to(&self, binding: u64) -> bool {
        self.binding == binding
    }

    /// The session's state: the one the store last recorded, with the event of every
    /// change emitted. Every reader reports this (the store settles a session on each
    /// lookup and touch, and the sweeper on its deadlines).
    pub fn stored_state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Records a transition; `true` if this call made it (so it alone emits the event).
    pub(crate) fn transition(&self, from: State, to: State) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the session ended. Only the one caller that ended it gets `Some`: the
    /// state the session was in until then.
    pub(crate) fn mark_ended(&self) -> Option<State> {
        match State::from_u8(self.state.swap(State::Ended as u8, Ordering::AcqRel)) {
            State::Ended => None,
            was => Some(was),
        }
    }

    /// Records a signal or activity at `now`. Timestamps only move forward.
    pub(crate) fn touch(&self, touch: Touch, now: Millis) {
        self.last_seen.fetch_max(now, Ordering::AcqRel);
        if touch == Touch::Activity {
            self.last_activity.fetch_max(now, Ordering::AcqRel);
        }
    }

    /// Claims a refresh of the session's persistent cookies: `true` (for exactly one
    /// caller) if they were last set at least `every` ms before `now`.
    pub(crate) fn claim_cookie_refresh(&self, every: Millis, now: Millis) -> bool {
        let last = self.cookies_at.load(Ordering::Acquire);
        now.saturating_sub(last) >= every
            && self
                .cookies_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// How long the session can live at most from `now` (`max_lifetime`), if limited.
    pub fn lives_at_most(&self, rules: &Lifetime, now: Millis) -> Option<Millis> {
        self.lifetime_at(rules).map(|end| end.saturating_sub(now))
    }

    /// The instant `max_lifetime` ends the session, if it is limited.
    fn lifetime_at(&self, rules: &Lifetime) -> Option<Millis> {
        (rules.max_lifetime > 0).then(|| self.created.saturating_add(rules.max_lifetime))
    }

    /// The session's deadlines under `rules`. All sums saturate: a timestamp or
    /// timeout near `Millis::MAX` puts a deadline at the end of time, never (by
    /// wrapping) in the past.
    pub fn deadlines(&self, rules: &Lifetime) -> Deadlines {
        let timeout = self.timeout();
        let lifetime_at = self.lifetime_at(rules);
        if timeout == 0 {
            return Deadlines {
                idle_at: None,
                warn_at: None,
                end_at: lifetime_at,
                abandon_at: None,
            };
        }
        let idle_at = self.last_activity().saturating_add(timeout);
        let on_timeout = self.on_timeout(rules);
        let countdown_at = idle_at.saturating_add(rules.consult);
        let timeout_end = match on_timeout {
            OnTimeout::Countdown => Some(countdown_at.saturating_add(rules.countdown_for(timeout))),
            OnTimeout::End => Some(idle_at),
            OnTimeout::Keep => None,
        };
        let abandon_at = self.last_seen().saturating_add(rules.abandon_for(timeout));
        Deadlines {
            idle_at: (on_timeout != OnTimeout::End).then_some(idle_at),
            warn_at: (on_timeout == OnTimeout::Countdown).then_some(countdown_at),
            end_at: min_opt(timeout_end, lifetime_at),
            abandon_at: Some(abandon_at),
        }
    }

    /// What the rules say about this session at `now` (sums saturate, as in
    /// [`Session::deadlines`]).
    pub fn verdict(&self, rules: &Lifetime, now: Millis) -> Verdict {
        if self.stored_state() == State::Ended {
            return Verdict::Live(State::Ended);
        }
        if self.lifetime_at(rules).is_some_and(|at| now >= at) {
            return Verdict::Due(EndReason::Lifetime);
        }
        let timeout = self.timeout();
        if timeout == 0 {
            return Verdict::Live(State::Active);
        }
        if now >= self.last_seen().saturating_add(rules.abandon_for(timeout)) {
            return Verdict::Due(EndReason::Abandoned);
        }
        let idle_at = self.last_activity().saturating_add(timeout);
        let countdown_at = idle_at.saturating_add(rules.consult);
        match self.on_timeout(rules) {
            OnTimeout::End if now >= idle_at => Verdict::Due(EndReason::Timeout),
            OnTimeout::Countdown
                if now >= countdown_at.saturating_add(rules.countdown_for(timeout)) =>
            {
                Verdict::Due(EndReason::Timeout)
            }
            OnTimeout::Countdown if now >= countdown_at => Verdict::Live(State::Warning),
            _ => Verdict::Live(State::Active),
        }
    }

    /// Whether the idle timeout of the current idle period has been reached at `now`
    /// (what the `Idle` event announces), under a rule that does not end it at once.
    pub(crate) fn idle_reached(&self, rules: &Lifetime, now: Millis) -> bool {
        self.deadlines(rules).idle_at.is_some_and(|at| now >= at)
    }

    /// The next instant after `now` at which the verdict can change, if any.
    pub fn next_due(&self, rules: &Lifetime, now: Millis) -> Option<Millis> {
        let d = self.deadlines(rules);
        // Before the idle timeout and the warning, those are the next events.
        let idle = d.idle_at.filter(|&w| w > now);
        let warn = d.warn_at.filter(|&w| w > now);
        min_opt(min_opt(min_opt(idle, warn), d.end_at), d.abandon_at)
    }
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifetime::Activity;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Milliseconds biased towards the edges where sums wrap.
    fn extreme() -> impl Strategy<Value = Millis> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(Millis::MAX),
            Just(Millis::MAX - 1),
            Just(Millis::MAX / 2),
            Just(Millis::MAX / 4),
            0..10_000_000u64,
            any::<Millis>(),
        ]
    }

    fn on_timeout() -> impl Strategy<Value = OnTimeout> {
        prop_oneof![
            Just(OnTimeout::Countdown),
            Just(OnTimeout::End),
            Just(OnTimeout::Keep)
        ]
    }

    /// The verdict computed in 128 bits, where nothing wraps.
    fn exact_verdict(session: &Session, rules: &Lifetime, now: Millis) -> Verdict {
        let sum = |a: Millis, b: Millis| u128::from(a) + u128::from(b);
        let now = u128::from(now);
        if rules.max_lifetime > 0 && now >= sum(session.created(), rules.max_lifetime) {
            return Verdict::Due(EndReason::Lifetime);
        }
        let timeout = session.timeout();
        if timeout == 0 {
            return Verdict::Live(State::Active);
        }
        if now >= sum(session.last_seen(), rules.abandon_for(timeout)) {
            return Verdict::Due(EndReason::Abandoned);
        }
        let idle_at = sum(session.last_activity(), timeout);
        let countdown_at = idle_at + u128::from(rules.consult);
        let countdown_end = countdown_at + u128::from(rules.countdown_for(timeout));
        match session.on_timeout(rules) {
            OnTimeout::End if now >= idle_at => Verdict::Due(EndReason::Timeout),
            OnTimeout::Countdown if now >= countdown_end => Verdict::Due(EndReason::Timeout),
            OnTimeout::Countdown if now >= countdown_at => Verdict::Live(State::Warning),
            _ => Verdict::Live(State::Active),
        }
    }

    #[test]
    fn an_upstream_sized_timeout_does_not_end_the_session() {
        // X-Session-Timeout: 9223372036854775807 used to wrap `last_seen + abandon`
        // into the past: the session was abandoned on the spot.
        let rules = Lifetime::new(
            Duration::from_secs(120),
            OnTimeout::Countdown,
            None,
            None,
            Duration::ZERO,
            Activity::Interaction,
        );
        let session = Session::new(Handle::nil(), None, 0, 120_000, 1_000);
        session.set_timeout(u64::MAX);
        assert_eq!(session.verdict(&rules, 2_000), Verdict::Live(State::Active));
        assert_eq!(session.deadlines(&rules).abandon_at, Some(Millis::MAX));
        assert_eq!(session.next_due(&rules, 2_000), Some(Millis::MAX));
    }

    #[test]
    fn the_compact_fields_round_trip_through_parts() {
        let ip = |text: &str| -> std::net::IpAddr { text.parse().unwrap() };
        let parent = Handle::from_u128(7);
        for client in [None, Some(ip("192.0.2.1")), Some(ip("2001:db8:1:2::"))] {
            let session =
                Session::new(Handle::from_u128(1), Some(parent), 3, 60_000, 5).with_client(client);
            assert_eq!(session.client(), client);
            assert_eq!(session.parent(), Some(parent));
            // Sending the parent sets its flag without touching the client's kind.
            assert_eq!(session.parent_once(), Some(parent));
            assert_eq!(session.parent_once(), None);
            assert_eq!(session.client(), client);
            let parts = session.parts();
            assert!(parts.parent_sent);
            assert_eq!(parts.client, client);
            assert_eq!(Session::from_parts(&parts).parts(), parts);
        }
        let orphan = Session::new(Handle::from_u128(2), None, 3, 60_000, 5);
        assert_eq!(
            (orphan.parent(), orphan.parent_once(), orphan.client()),
            (None, None, None)
        );
        // A whole address is kept as its group.
        let whole = orphan.with_client(Some(ip("2001:db8:1:2:3:4:5:6")));
        assert_eq!(whole.client(), Some(ip("2001:db8:1:2::")));
    }

    proptest! {
        #[test]
        fn prop_extreme_values_neither_panic_nor_wrap(
            created in extreme(),
            activity_after in extreme(),
            seen_after in extreme(),
            timeout in extreme(),
            on_timeout in on_timeout(),
            countdown in proptest::option::of(extreme()),
            abandon in proptest::option::of(extreme()),
            max_lifetime in extreme(),
            now in extreme(),
        ) {
            let rules = Lifetime::new(
                Duration::from_millis(timeout),
                on_timeout,
                countdown.map(Duration::from_millis),
                abandon.map(Duration::from_millis),
                Duration::from_millis(max_lifetime),
                Activity::Interaction,
            );
            let session = Session::new(Handle::nil(), None, 0, timeout, created);
            session.set_timeout(timeout);
            session.touch(Touch::Activity, created.saturating_add(activity_after));
            session.touch(Touch::Signal, created.saturating_add(seen_after));

            let deadlines = session.deadlines(&rules);
            let next = session.next_due(&rules, now);
            let verdict = session.verdict(&rules, now);
            if now < Millis::MAX {
                // Saturation only ever moves a deadline to the end of time.
                prop_assert_eq!(verdict, exact_verdict(&session, &rules, now));
            }
            // No deadline lies before the instants it is counted from.
            for at in [deadlines.idle_at, deadlines.warn_at, deadlines.end_at, deadlines.abandon_at]
                .into_iter()
                .flatten()
            {
                prop_assert!(at >= session.created());
            }
            if let Some(abandon_at) = deadlines.abandon_at {
                prop_assert!(abandon_at >= session.last_seen());
            }
            if let Some(next) = next {
                prop_assert!(next >= session.created().min(now));
            }
            // Before the earliest deadline, nothing is due.
            let earliest = [deadlines.end_at, deadlines.abandon_at]
                .into_iter()
                .flatten()
                .min();
            // (A deadline at instant 0 has no instant before it.)
            let early = match earliest {
                Some(0) => None,
                Some(at) => Some((at - 1).min(now)),
                None => Some(now),
            };
            if let Some(early) = early.filter(|&early| early >= session.last_seen()) {
                prop_assert!(
                    !matches!(session.verdict(&rules, early), Verdict::Due(_)),
                    "due at {early} before its deadline {earliest:?}"
                );
            }
        }
    }
}
