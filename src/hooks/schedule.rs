//! Which hook job runs next: per-session order and the global concurrency limit.
//!
//! Pure bookkeeping, owned by the actor (no locks, no I/O, tested on its own). A
//! session is *busy* while one of its jobs is running or waiting for a slot; further
//! jobs of a busy session wait in its FIFO queue, in the order the store reported
//! the events, which is what keeps start before timeout before end. Idle sessions
//! have no entry at all, so memory follows the work in flight. Among sessions waiting
//! for a slot, `start` and `timeout` go first: a request (or a countdown) waits on
//! them, while `end` is background work.

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
}

impl Schedule {
    pub(crate) fn new(limit: usize) -> Self {
        Schedule {
            busy: HashMap::new(),
            urgent: VecDeque::new(),
            background: VecDeque::new(),
            running: 0,
            limit: limit.max(1),
        }
    }

    /// Adds a job behind its session's earlier ones.
    pub(crate) fn push(&mut self, job: Job) {
        match self.busy.entry(job.session()) {
            Entry::Occupied(mut queue) => queue.get_mut().push_back(job),
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                self.wait_for_slot(job);
            }
        }
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
        let mut s = Schedule::new(8);
        s.push(job(HookKind::Start, 1));
        s.push(job(HookKind::Timeout, 1));
        s.push(job(HookKind::End, 1));
        s.push(job(HookKind::End, 2));
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
        let mut s = Schedule::new(2);
        for session in 1..=3 {
            s.push(job(HookKind::End, session));
        }
        s.push(job(HookKind::Start, 4));
        assert_eq!(started(&mut s), [(HookKind::Start, 4), (HookKind::End, 1)]);
        s.finished(Handle::from_u128(4));
        assert_eq!(started(&mut s), [(HookKind::End, 2)]);
        s.finished(Handle::from_u128(1));
        s.finished(Handle::from_u128(2));
        assert_eq!(started(&mut s), [(HookKind::End, 3)]);
        s.finished(Handle::from_u128(3));
        assert!(s.is_idle());
    }
}
