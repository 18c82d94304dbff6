//! Hooks: HTTP calls into the upstream when sessions start, time out, and end —
//! ASP.NET's `Session_Start`/`Session_End`, Wisej's `SessionTimeout` (DESIGN.md §7).
//!
//! The store reports transitions synchronously through [`SessionObserver`], and an
//! observer must never block. So [`Hooks`] only turns each transition that has a hook
//! configured into a small job and `try_send`s it, in event order, to one actor task
//! over a bounded channel; a full channel drops the job (counted and logged) rather than
//! stall the store. The actor keeps a FIFO queue only for sessions with a job in
//! flight, runs each session's jobs one after another (start before timeout before end,
//! even when a session ends while its start hook is still running) and different
//! sessions concurrently, up to a fixed number of calls at once.
//! The jobs waiting there are bounded ([`Tuning::backlog`]): past the bound `timeout`
//! jobs merge or drop first, then `start`; `end` has four times the room; per-session
//! order is never changed. Left-out jobs are counted in `sessiongate_hook_dropped_total`.
//!
//! - `start` is awaited by a session's first request through [`Hooks::ready`],
//!   bounded by `hooks.budget`; later requests do not wait; a failure is counted and
//!   logged and the request goes on.
//! - `timeout` fires on `warning` (and once per idle period under `keep`); a 2xx answer
//!   `{"handled": true}` calls the [`TimeoutHandled`] handler.
//! - `end` fires once per session, is retried with exponential backoff, and never
//!   blocks a request; [`Hooks::drain`] waits for pending ones at shutdown. When it
//!   is over (answered or given up) the [`EndDone`] handler is told, so a store
//!   shared by replicas stops holding it as owed (one that fires an `end` hook another
//!   replica owed reports it as [`SessionEvent::EndOwed`]).
//!
//! Submodules: `target` (where a hook goes), `payload` (the JSON body), `call` (one POST
//! within the budget, and its metric), `gate` (what `ready` waits on), `schedule`
//! (per-session ordering and the concurrency limit) and `actor` (the task running it).

mod actor;
mod call;
mod gate;
mod payload;
mod schedule;
mod target;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::events::{SessionEvent, SessionObserver};
use crate::session::{Clock, Handle, Millis};

use actor::{Message, Retry, Runner};
use call::{Caller, Counters, Outcome};
use gate::Gates;
use payload::Payload;
use schedule::Job;
use target::Targets;

/// Which hook (the `event` field of the payload and the `hook` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    Start,
    Timeout,
    End,
}

impl HookKind {
    pub const ALL: [HookKind; 3] = [HookKind::Start, HookKind::Timeout, HookKind::End];

    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Start => "start",
            HookKind::Timeout => "timeout",
            HookKind::End => "end",
        }
    }
}

/// Told when a `timeout` hook answered `{"handled": true}`: the backend wants the
/// session kept (as under `on_timeout = "keep"`). Called from a hook task, so it must
/// not block; the session may have ended meanwhile, which the implementation checks.
/// `idle_since` is the session's `last_activity` when the hook fired: the idle
/// period the answer is about.
pub trait TimeoutHandled: Send + Sync {
    fn handled(&self, session: Handle, idle_since: Millis);
}

impl<F: Fn(Handle, Millis) + Send + Sync> TimeoutHandled for F {
    fn handled(&self, session: Handle, idle_since: Millis) {
        self(session, idle_since)
    }
}

/// Told when a session's `end` hook is over — answered, or given up after its
/// attempts — so a shared store can stop holding it as owed (another replica would
/// take it over otherwise). Called from a hook task: must not block for long.
pub trait EndDone: Send + Sync {
    fn done(&self, session: Handle);
}

impl<F: Fn(Handle) + Send + Sync> EndDone for F {
    fn done(&self, session: Handle) {
        self(session)
    }
}

/// Why the hooks cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("{key} {target:?}: {reason}")]
    Target {
        key: &'static str,
        target: String,
        reason: &'static str,
    },
    #[error("upstream.header {0:?} is not a valid header name")]
    Header(String),
    #[error("a timeout-handled callback is already set")]
    HandlerAlreadySet,
    #[error("an end-done callback is already set")]
    EndDoneAlreadySet,
}

/// Limits that are not in the config file (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Capacity of the channel from observers to the actor. The actor moves jobs out
    /// of it at once, so this only has to absorb bursts between two of its turns.
    pub queue: usize,
    /// Hook jobs in flight at once, over all sessions. An `end` job keeps its slot
    /// through the pauses between its attempts; `start` and `timeout` jobs waiting
    /// for a slot go before `end` jobs.
    pub concurrency: usize,
    /// Attempts for one `end` hook, the first included.
    pub end_attempts: u32,
    /// Pause after the first failed `end` attempt; doubled after each further one.
    pub end_backoff: Duration,
    /// Jobs that may wait (behind a session's running job, or for a slot) before
    /// new `start` and `timeout` jobs are dropped; `end` jobs get four times this.
    /// See `schedule` for the whole overflow policy. A waiting job takes about
    /// 200 bytes, so the default bounds the queues to about 13 MiB.
    pub backlog: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            queue: 8192,
            concurrency: 64,
            end_attempts: 3,
            end_backoff: Duration::from_millis(200),
            backlog: 16_384,
        }
    }
}

/// The hooks of one gateway: a [`SessionObserver`] feeding the hook actor, plus what
/// the request path ([`ready`](Hooks::ready)) and shutdown ([`drain`](Hooks::drain))
/// need. Dropping it lets the actor finish what is in flight and stop.
pub struct Hooks {
    runner: Arc<Runner>,
    inbox: mpsc::Sender<Message>,
    gates: Arc<Gates>,
    clock: Clock,
    budget: Duration,
    dropped: AtomicU64,
}

impl Hooks {
    /// Hooks from `config.hooks` and `config.upstream`, with default [`Tuning`].
    /// Spawns the actor, so it must be called inside a tokio runtime.
    pub fn new(config: &Config, clock: Clock, metrics: &Metrics) -> Result<Self, HooksError> {
        Self::with_tuning(config, clock, metrics, Tuning::default())
    }

    /// Like [`new`](Hooks::new) with explicit limits.
    pub fn with_tuning(
        config: &Config,
        clock: Clock,
        metrics: &Metrics,
        tuning: Tuning,
    ) -> Result<Self, HooksError> {
        let targets = Targets::resolve(&config.hooks, &config.upstream.url)?;
        let header = HeaderName::from_bytes(config.upstream.header.as_bytes())
            .map_err(|_| HooksError::Header(config.upstream.header.clone()))?;
        let budget = config.hooks.budget.get();
        // A connect that cannot finish within the budget is useless anyway.
        let connect_timeout = config.upstream.connect_timeout.get().min(budget);
        let concurrency = tuning.concurrency.max(1);
        let runner = Arc::new(Runner {
            caller: Caller::new(
                header,
                budget,
                connect_timeout,
                concurrency,
                &config.hooks.secret,
            ),
            targets,
            counters: Counters::new(metrics),
            retry: Retry {
                attempts: tuning.end_attempts.max(1),
                backoff: tuning.end_backoff,
            },
            handler: OnceLock::new(),
            end_done: OnceLock::new(),
            dropped: HookKind::ALL
                .map(|hook| metrics.hook_dropped.with_label_values(&[hook.as_str()])),
            waiting: AtomicUsize::new(0),
        });
        let (inbox, receiver) = mpsc::channel(tuning.queue.max(1));
        tokio::spawn(actor::run(
            receiver,
            Arc::clone(&runner),
            concurrency,
            tuning.backlog,
        ));
        Ok(Hooks {
            runner,
            inbox,
            gates: Arc::new(Gates::default()),
            clock,
            budget,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether a hook is configured for `kind`.
    pub fn enabled(&self, kind: HookKind) -> bool {
        self.runner.targets.get(kind).is_some()
    }

    /// Sets what a `timeout` hook answering `{"handled": true}` calls. Set once, after
    /// the store exists (the store observes through these hooks, so the handler cannot
    /// be passed in at construction; hold the store weakly to avoid a cycle).
    pub fn on_timeout_handled(&self, handler: Arc<dyn TimeoutHandled>) -> Result<(), HooksError> {
        self.runner
            .handler
            .set(handler)
            .map_err(|_| HooksError::HandlerAlreadySet)
    }

    /// Sets what is told when an `end` hook is over (set once, like
    /// [`on_timeout_handled`](Hooks::on_timeout_handled)).
    pub fn on_end_done(&self, handler: Arc<dyn EndDone>) -> Result<(), HooksError> {
        self.runner
            .end_done
            .set(handler)
            .map_err(|_| HooksError::EndDoneAlreadySet)
    }

    /// The longest an `end` hook can take, all its attempts and pauses included:
    /// how long a replica that fired one may still be at it.
    pub fn end_worst_case(&self) -> Duration {
        self.runner.retry.worst_case(self.budget)
    }

    /// Returns when the `start` hook of `session` has completed or failed, or after
    /// `hooks.budget`, whichever comes first; at once if none is pending for it. The
    /// request path awaits this before forwarding a request; only the first caller
    /// for a session waits (its first request), later ones go on at once.
    pub async fn ready(&self, session: Handle) {
        if self.enabled(HookKind::Start) {
            self.gates.wait(session, self.budget).await;
        }
    }

    /// Waits up to `within` until no hook job is queued or running (pending `end`
    /// retries included); `true` if that happened in time. For graceful shutdown,
    /// after the listeners and the sweeper have stopped.
    pub async fn drain(&self, within: Duration) -> bool {
        let (reply, drained) = oneshot::channel();
        let flush = async {
            self.inbox.send(Message::Flush(reply)).await.ok()?;
            drained.await.ok()
        };
        matches!(tokio::time::timeout(within, flush).await, Ok(Some(())))
    }

    /// Hook jobs waiting in the actor's schedule (bounded by [`Tuning::backlog`]).
    pub fn waiting(&self) -> usize {
        self.runner.waiting.load(Ordering::Relaxed)
    }

    /// Hook jobs dropped because the actor's channel was full (or closed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands a job to the actor without ever waiting.
    fn submit(&self, job: Job) {
        let (kind, session) = (job.kind(), job.session());
        let why = match self.inbox.try_send(Message::Job(job)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "queue full",
            Err(mpsc::error::TrySendError::Closed(_)) => "hook task stopped",
        };
        // The job, and with it any start gate, is gone: a request waiting in `ready`
        // goes on at once. Counted as a failed call so dashboards see it.
        self.runner.counters.count(kind, Outcome::Error);
        self.runner.left_out(kind);
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Logged at 1, 2, 4, 8, … drops: a burst must not turn into a log flood.
        if dropped.is_power_of_two() {
            tracing::warn!(
                hook = %kind.as_str(),
                %session,
                dropped,
                why,
                "hook event dropped"
            );
        }
    }
}

impl SessionObserver for Hooks {
    fn observe(&self, event: &SessionEvent<'_>) {
        let (kind, session, reason, at) = match *event {
            SessionEvent::Started { session, .. } => (HookKind::Start, session, None, None),
            // The app is asked when the timeout is reached, before any countdown.
            SessionEvent::Idle { session } => (HookKind::Timeout, session, None, None),
            SessionEvent::Warned { .. }
            | SessionEvent::Extended { .. }
            | SessionEvent::Handled { .. } => return,
            SessionEvent::Ended {
                session,
                reason,
                at,
                ..
            }
            | SessionEvent::EndOwed {
                session,
                reason,
                at,
            } => (HookKind::End, session, Some(reason), Some(at)),
        };
        // No hook, no work: nothing is queued or remembered for this session.
        if !self.enabled(kind) {
            return;
        }
        let at = at.unwrap_or_else(|| self.clock.now());
        let payload = Payload::capture(kind, session, reason, at, &self.clock);
        // Opened here, synchronously, so that the request which created the session
        // finds the gate in `ready` even before the actor has seen the job.
        let gate = (kind == HookKind::Start).then(|| self.gates.open(session.handle()));
        self.submit(Job::new(payload, gate));
    }
}
