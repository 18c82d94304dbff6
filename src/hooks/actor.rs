//! The hook actor: one task that owns the [`Schedule`], takes jobs from the observer's
//! channel, and spawns one task per job it starts; each job task reports back when it
//! is done, and only then does that session's next job go.
//!
//! A job task reports completion from a `Drop` guard, so a panic (or a runtime
//! shutting down) cannot leave a session's queue stuck behind a job that is gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::call::{CallError, Caller, Counters, Outcome, Reply};
use super::schedule::{Admission, Job, Schedule};
use super::target::Targets;
use super::{EndDone, HookKind, TimeoutHandled};
use crate::session::Handle;

/// What the actor receives.
pub(crate) enum Message {
    Job(Job),
    /// Answer once nothing is queued or running.
    Flush(oneshot::Sender<()>),
}

/// Attempts and backoff for `end`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    pub attempts: u32,
    pub backoff: Duration,
}

impl Retry {
    /// The pause after failed attempt number `attempt` (1-based): backoff × 2^(n-1).
    fn pause(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
    }

    /// Every attempt taking all of `budget`, with the pauses between them.
    pub(crate) fn worst_case(&self, budget: Duration) -> Duration {
        let mut total = budget;
        for attempt in 1..self.attempts {
            if total == Duration::MAX {
                break;
            }
            total = total
                .saturating_add(self.pause(attempt))
                .saturating_add(budget);
        }
        total
    }
}

/// Everything a job task needs, shared by all of them.
pub(crate) struct Runner {
    pub caller: Caller,
    pub targets: Targets,
    pub counters: Counters,
    pub retry: Retry,
    pub handler: OnceLock<Arc<dyn TimeoutHandled>>,
    pub end_done: OnceLock<Arc<dyn EndDone>>,
    /// `sessiongate_hook_dropped_total`, by hook.
    pub dropped: [prometheus::IntCounter; 3],
    /// Jobs waiting in the schedule, as of the actor's last turn.
    pub waiting: AtomicUsize,
}

impl Runner {
    /// Counts a job left out (merged or dropped) at a bound.
    pub(crate) fn left_out(&self, kind: HookKind) {
        self.dropped[kind as usize].inc();
    }
}

/// Runs until every [`Hooks`](super::Hooks) sender is gone and the work is done.
pub(crate) async fn run(
    mut inbox: mpsc::Receiver<Message>,
    runner: Arc<Runner>,
    limit: usize,
    backlog: usize,
) {
    // Unbounded but bounded in practice: each running job sends exactly one message.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Handle>();
    let mut schedule = Schedule::new(limit, backlog);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    while open || !schedule.is_idle() {
        tokio::select! {
            // Completions first: they free slots and release sessions' next jobs.
            biased;
            Some(session) = done_rx.recv() => schedule.finished(session),
            message = inbox.recv(), if open => match message {
                Some(Message::Job(job)) => {
                    let kind = job.kind();
                    match schedule.push(job) {
                        Admission::Queued => {}
                        Admission::Merged => runner.left_out(kind),
                        Admission::Dropped => {
                            runner.left_out(kind);
                            tracing::debug!(hook = %kind.as_str(), "hook backlog full; job dropped");
                        }
                    }
                }
                Some(Message::Flush(reply)) => flushes.push(reply),
                None => open = false,
            },
            else => break,
        }
        while let Some(job) = schedule.next() {
            spawn(job, &runner, &done_tx);
        }
        runner.waiting.store(schedule.waiting(), Ordering::Relaxed);
        if schedule.is_idle() {
            for reply in flushes.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

fn spawn(job: Job, runner: &Arc<Runner>, done: &mpsc::UnboundedSender<Handle>) {
    let guard = Done {
        session: job.session(),
        done: done.clone(),
    };
    let runner = Arc::clone(runner);
    tokio::spawn(async move {
        let _guard = guard;
        runner.execute(job).await;
    });
}

/// Tells the actor that a job of `session` is over, however it ended.
struct Done {
    session: Handle,
    done: mpsc::UnboundedSender<Handle>,
}

impl Drop for Done {
    fn drop(&mut self) {
        // Fails only if the actor is gone, and then nobody is waiting.
        let _ = self.done.send(self.session);
    }
}

/// Whether a `timeout` hook's body says `{"handled": true}`. Anything else — another
/// shape, another type, not JSON at all — means no. Read as a `Value` rather than a
/// derived struct, which would also accept the array `[true]`.
fn handled(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|answer| answer.get("handled") == Some(&serde_json::Value::Bool(true)))
}

/// Whether another `end` attempt can help after this one. A 4xx other than 408/429
/// is the backend refusing the call as such; repeating it would change nothing.
fn worth_retrying(result: &Result<Reply, CallError>) -> bool {
    match result {
        Ok(reply) => {
            let status = reply.status.as_u16();
            !(reply.status.is_success()
                || (reply.status.is_client_error() && status != 408 && status != 429))
        }
        Err(CallError::Build(_)) => false,
        Err(_) => true,
    }
}

impl Runner {
    async fn execute(&self, job: Job) {
        let Job { payload, gate } = job;
        let kind = payload.event;
        let Some(uri) = self.targets.get(kind) else {
            return;
        };
        let body = match serde_json::to_vec(&payload) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::error!(hook = %kind.as_str(), session = %payload.session, %error, "cannot encode hook payload");
                return;
            }
        };
        let (session, idle_since) = (payload.session, payload.idle_since);
        match kind {
            HookKind::Start => {
                // Counted and logged by `attempt`; the request goes on either way.
                let _ = self.attempt(kind, uri, session, body, None).await;
                // Opens the way for the session's first request (`Hooks::ready`).
                drop(gate);
            }
            HookKind::Timeout => {
                let result = self.attempt(kind, uri, session, body, None).await;
                let keep = matches!(&result, Ok(reply) if reply.status.is_success() && handled(&reply.body));
                if keep {
                    if let Some(handler) = self.handler.get() {
                        handler.handled(session, idle_since);
                    }
                }
            }
            HookKind::End => {
                self.end(uri, session, body).await;
                if let Some(done) = self.end_done.get() {
                    done.done(session);
                }
            }
        }
    }

    /// The `end` hook with its retries.
    async fn end(&self, uri: &http::Uri, session: Handle, body: Bytes) {
        let attempts = self.retry.attempts;
        for attempt in 1..=attempts {
            let result = self
                .attempt(HookKind::End, uri, session, body.clone(), Some(attempt))
                .await;
            if !worth_retrying(&result) {
                return;
            }
            if attempt < attempts {
                tokio::time::sleep(self.retry.pause(attempt)).await;
            }
        }
        tracing::warn!(%session, attempts, "end hook failed; giving up");
    }

    /// One call: counted, and logged unless it worked.
    async fn attempt(
        &self,
        kind: HookKind,
        uri: &http::Uri,
        session: Handle,
        body: Bytes,
        attempt: Option<u32>,
    ) -> Result<Reply, CallError> {
        let result = self.caller.post(uri, kind, session, body).await;
        let outcome = Outcome::of(&result);
        self.counters.count(kind, outcome);
        let hook = kind.as_str();
        match &result {
            Ok(reply) if outcome == Outcome::Ok => {
                tracing::debug!(%hook, %session, status = reply.status.as_u16(), "hook called");
            }
            Ok(reply) => tracing::warn!(
                %hook,
                %session,
                attempt,
                status = reply.status.as_u16(),
                "hook answered with an error status"
            ),
            Err(error) => tracing::warn!(%hook, %session, attempt, %error, "hook call failed"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_handled_true_counts() {
        assert!(handled(br#"{"handled": true}"#));
        assert!(handled(br#"{"handled": true, "note": "kept"}"#));
        for no in [
            &br#"{"handled": false}"#[..],
            br#"{}"#,
            br#"{"handled": "true"}"#,
            br#"{"handled": 1}"#,
            br#"[true]"#,
            b"true",
            b"handled",
            b"",
            b"\xff\xfe",
        ] {
            assert!(!handled(no), "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn backoff_doubles_and_never_overflows() {
        let retry = Retry {
            attempts: 3,
            backoff: Duration::from_millis(200),
        };
        assert_eq!(retry.pause(1), Duration::from_millis(200));
        assert_eq!(retry.pause(2), Duration::from_millis(400));
        assert_eq!(retry.pause(3), Duration::from_millis(800));
        let huge = Retry {
            attempts: u32::MAX,
            backoff: Duration::MAX,
        };
        assert_eq!(huge.pause(u32::MAX), Duration::MAX);
    }

    #[test]
    fn worst_case_adds_every_attempt_and_pause() {
        let retry = Retry {
            attempts: 3,
            backoff: Duration::from_millis(200),
        };
        // 2 s + 0.2 s + 2 s + 0.4 s + 2 s.
        assert_eq!(
            retry.worst_case(Duration::from_secs(2)),
            Duration::from_millis(6_600)
        );
        let once = Retry {
            attempts: 1,
            ..retry
        };
        assert_eq!(
            once.worst_case(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        let huge = Retry {
            attempts: u32::MAX,
            backoff: Duration::MAX,
        };
        assert_eq!(huge.worst_case(Duration::MAX), Duration::MAX);
    }
}
