//! Which hook job runs next: per-session order and the global concurrency limit.
//!
//! Pure bookkeeping, owned by the actor (no locks, no I/O, tested on its own). A
//! session is *busy* while one of its jobs is running or waiting for a slot; further
//! jobs of a busy session wait in its FIFO queue, in the order the store reported
//! the events, which is what keeps start before timeout before end. Idle sessions
//! have no entry at all, so memory follows the work in flight. Among sessions waiting
//! for a slot, `start` and `timeout` go first: a request (or a countdown) waits on
//! them, while `end` is background work.
//!
//! The jobs waiting (queued behind a session's running job, or for a slot) are
//! bounded, so a backend that cannot keep up, or a flood of sessions, cannot grow
//! them without limit. The overflow policy never loses an `end` before anything else
//! and never reorders a session's jobs (it only leaves some out):
//! - once half the backlog waits, a `timeout` for a session that already has a
//!   `timeout` queued is merged into it: the newer payload (its idle period) takes the
//!   queued job's place, so the backend is asked once, about the latest period;
//! - once `backlog` jobs wait, new `start` and `timeout` jobs are dropped (a request
//!   waiting on a dropped `start` goes on at once, as when the hook fails);
//! - `end` jobs are still taken up to `4 × backlog` waiting jobs; only past that is an
//!   `end` dropped.
//!
//! Every job left out is counted by the caller (`sessiongate_hook_dropped_total`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use super::gate::Pending;
use super::payload::Payload;
use super::HookKind;
use crate::session::Handle;

/// Collections shrink back once they are empty and this much larger than that, so a
/// burst of ends does not pin its peak memory.
const SHRINK_ABOVE: usize = 1024;

/// One hook call to make (with its retries).
#[derive(Debug)]
pub(crate) struct Job {
    pub payload: Payload,
    /// For `start`: holds the session's gate open until the job is dropped.
    pub gate: Option<Pending>,
}

impl Job {
    pub(crate) fn new(payload: Payload, gate: Option<Pending>) -> Self {
        Job { payload, gate }
    }

    pub(crate) fn kind(&self) -> HookKind {
        self.payload.event
    }

    pub(crate) fn session(&self) -> Handle {
        self.payload.session
    }
}

/// Waiting jobs past which new `end` jobs are dropped, as a multiple of the backlog.
const END_ROOM: usize = 4;

/// What became of a pushed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Queued,
    /// A `timeout` merged into the one its session already has queued.
    Merged,
    /// Left out: the backlog is full.
    Dropped,
}

/// The actor's queues.
#[derive(Debug)]
pub(crate) struct Schedule {
    /// Busy sessions and the jobs queued behind the one running or waiting for a slot.
    busy: HashMap<Handle, VecDeque<Job>>,
    /// Heads of busy sessions waiting for a slot: start and timeout jobs …
    urgent: VecDeque<Job>,
    /// … and end jobs, which yield to those.
    background: VecDeque<Job>,
    running: usize,
    limit: usize,
    /// Jobs waiting (in `busy` queues, `urgent` or `background`), not running.
    waiting: usize,
    backlog: usize,
}

impl Schedule {
    /// At most `limit` jobs run at once; `backlog` bounds the jobs waiting.
    pub(crate) fn new(limit: usize, backlog: usize) -> Self {
        Schedule {
            busy: HashMap::new(),
            urgent: VecDeque::new(),
            background: VecDeque::new(),
            running: 0,
            limit: limit.max(1),
            waiting: 0,
            backlog: backlog.max(1),
        }
    }

    /// Adds a job behind its session's earlier ones, or leaves it out (see the
    /// module's overflow policy). A job left out is dropped here, and with it any
    /// start gate.
    pub(crate) fn push(&mut self, job: Job) -> Admission {
        let room = match job.kind() {
            HookKind::Start | HookKind::Timeout => self.backlog,
            HookKind::End => self.backlog.saturating_mul(END_ROOM),
        };
        match self.busy.entry(job.session()) {
            Entry::Occupied(mut queue) => {
                let queue = queue.get_mut();
                if job.kind() == HookKind::Timeout && self.waiting >= self.backlog / 2 {
                    if let Some(queued) = queue
                        .iter_mut()
                        .find(|queued| queued.kind() == HookKind::Timeout)
                    {
                        // The newer question (its idle period) replaces the older one.
                        queued.payload = job.payload;
                        return Admission::Merged;
                    }
                }
                if self.waiting >= room {
                    return Admission::Dropped;
                }
                queue.push_back(job);
            }
            Entry::Vacant(slot) => {
                if self.waiting >= room {
                    return Admission::Dropped;
                }
                slot.insert(VecDeque::new());
                self.wait_for_slot(job);
            }
        }
        self.waiting += 1;
        Admission::Queued
    }

    /// Jobs waiting, not running.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// The next job to start, if a slot is free; the caller must report it
    /// [`finished`](Schedule::finished).
    pub(crate) fn next(&mut self) -> Option<Job> {
        if self.running >= self.limit {
            return None;
        }
        let job = self
            .urgent
            .pop_front()
            .or_else(|| self.background.pop_front())?;
        self.running += 1;
        self.waiting = self.waiting.saturating_sub(1);
        Some(job)
    }

    /// A job of `session` is done: its slot is free and the session's next job (if
    /// any) may go.
    pub(crate) fn finished(&mut self, session: Handle) {
        self.running = self.running.saturating_sub(1);
        let Entry::Occupied(mut queue) = self.busy.entry(session) else {
            return;
        };
        match queue.get_mut().pop_front() {
            Some(next) => self.wait_for_slot(next),
            None => {
                queue.remove();
                self.shrink_if_idle();
            }
        }
    }

    /// Nothing queued or running.
    pub(crate) fn is_idle(&self) -> bool {
        self.busy.is_empty()
    }

    fn wait_for_slot(&mut self, job: Job) {
        match job.kind() {
            HookKind::Start | HookKind::Timeout => self.urgent.push_back(job),
            HookKind::End => self.background.push_back(job),
        }
    }

    fn shrink_if_idle(&mut self) {
        if self.busy.is_empty() && self.busy.capacity() > SHRINK_ABOVE {
            self.busy.shrink_to_fit();
        }
        for queue in [&mut self.urgent, &mut self.background] {
            if queue.is_empty() && queue.capacity() > SHRINK_ABOVE {
                queue.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: HookKind, session: u128) -> Job {
        Job::new(
            Payload {
                event: kind,
                session: Handle::from_u128(session),
                parent: None,
                reason: None,
                created: 0,
                last_activity: 0,
                at: 0,
                idle_since: 0,
            },
            None,
        )
    }

    fn started(schedule: &mut Schedule) -> Vec<(HookKind, u128)> {
        std::iter::from_fn(|| schedule.next())
            .map(|job| (job.kind(), job.session().as_u128()))
            .collect()
    }

    #[test]
    fn one_job_per_session_at_a_time_in_order() {
        let mut s = Schedule::new(8, 100);
        for (kind, session) in [
            (HookKind::Start, 1),
            (HookKind::Timeout, 1),
            (HookKind::End, 1),
            (HookKind::End, 2),
        ] {
            assert_eq!(s.push(job(kind, session)), Admission::Queued);
        }
        assert_eq!(started(&mut s), [(HookKind::Start, 1), (HookKind::End, 2)]);
        s.finished(Handle::from_u128(1));
        assert_eq!(started(&mut s), [(HookKind::Timeout, 1)]);
        s.finished(Handle::from_u128(2));
        assert!(started(&mut s).is_empty());
        s.finished(Handle::from_u128(1));
        assert_eq!(started(&mut s), [(HookKind::End, 1)]);
        assert!(!s.is_idle());
        s.finished(Handle::from_u128(1));
        assert!(s.is_idle(), "drained sessions leave no entry");
    }

    #[test]
    fn limit_holds_and_start_goes_before_end() {
        let mut s = Schedule::new(2, 100);
        for session in 1..=3 {
            assert_eq!(s.push(job(HookKind::End, session)), Admission::Queued);
        }
        assert_eq!(s.push(job(HookKind::Start, 4)), Admission::Queued);
        assert_eq!(started(&mut s), [(HookKind::Start, 4), (HookKind::End, 1)]);
        s.finished(Handle::from_u128(4));
        assert_eq!(started(&mut s), [(HookKind::End, 2)]);
        s.finished(Handle::from_u128(1));
        s.finished(Handle::from_u128(2));
        assert_eq!(started(&mut s), [(HookKind::End, 3)]);
        s.finished(Handle::from_u128(3));
        assert!(s.is_idle());
    }

    #[test]
    fn timeouts_merge_per_session() {
        let mut s = Schedule::new(1, 6);
        for (kind, session) in [
            (HookKind::Start, 1),
            (HookKind::Timeout, 1),
            (HookKind::Start, 2),
            (HookKind::Timeout, 2),
        ] {
            // Below half the backlog every timeout is kept.
            assert_eq!(s.push(job(kind, session)), Admission::Queued);
        }
        // Past it, a session's timeouts merge into the one it has queued.
        for _ in 0..1000 {
            assert_eq!(s.push(job(HookKind::Timeout, 1)), Admission::Merged);
        }
        assert_eq!(s.push(job(HookKind::End, 1)), Admission::Queued);
        assert_eq!(s.waiting(), 5);
        let mut order = Vec::new();
        while let Some(next) = s.next() {
            order.push((next.kind(), next.session().as_u128()));
            s.finished(next.session());
        }
        assert_eq!(
            order,
            [
                (HookKind::Start, 1),
                (HookKind::Start, 2),
                (HookKind::Timeout, 1),
                (HookKind::Timeout, 2),
                (HookKind::End, 1)
            ]
        );
        assert!(s.is_idle());
        assert_eq!(s.waiting(), 0);
    }

    /// A flood past the backlog: what waits stays bounded, `end` keeps its extra room
    /// and each session's jobs keep their order.
    #[test]
    fn a_flood_stays_within_the_backlog_and_keeps_ends() {
        let backlog = 16;
        let mut s = Schedule::new(1, backlog);
        let mut dropped = [0usize; 3];
        for session in 0..10_000u128 {
            for kind in [HookKind::Start, HookKind::Timeout, HookKind::End] {
                if s.push(job(kind, session)) == Admission::Dropped {
                    dropped[kind as usize] += 1;
                }
                assert!(s.waiting() <= backlog * END_ROOM, "{}", s.waiting());
            }
        }
        assert_eq!(s.waiting(), backlog * END_ROOM);
        assert!(dropped[HookKind::Start as usize] > 9_000, "{dropped:?}");
        // Ends were taken until the extra room was full: 3 × backlog more than starts.
        let ends_taken = 10_000 - dropped[HookKind::End as usize];
        let starts_taken = 10_000 - dropped[HookKind::Start as usize];
        assert!(
            ends_taken >= starts_taken + 2 * backlog,
            "{ends_taken} {starts_taken}"
        );

        // Draining runs every session's remaining jobs in order.
        let mut last: HashMap<u128, HookKind> = HashMap::new();
        while let Some(next) = s.next() {
            let session = next.session().as_u128();
            if let Some(before) = last.insert(session, next.kind()) {
                assert!((before as usize) < (next.kind() as usize), "{session}");
            }
            s.finished(next.session());
        }
        assert!(s.is_idle());
    }
}
