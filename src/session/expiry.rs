//! The deadline index: which sessions may need attention soon.
//!
//! A coarse timing wheel: buckets of [`BUCKET_MS`] in a `BTreeMap`, each a list of
//! handles. The invariant is that every session with any deadline is filed in a bucket
//! at or before its next due time. Touches move deadlines *later*, so they never write
//! here — a request or heartbeat is only a `fetch_max` on the session. Only the sweeper
//! (re-filing what it popped too early) and deadline-*lowering* operations (a shorter
//! per-session timeout) take the lock. Sweep cost therefore grows with the sessions
//! that come due, not with all sessions.
//!
//! A session records the bucket it is filed in (`Session::filed_in`); an entry found
//! in any other bucket is a leftover from before a lowering and is skipped.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::{Handle, Millis, Session};

/// Bucket width. Buckets are popped once they lie wholly in the past, so a deadline
/// is acted on at most one bucket plus one sweep tick after it passes.
pub const BUCKET_MS: Millis = 250;

/// A bucket number: `due / BUCKET_MS`. 32 bits cover 34 years of uptime, and keep
/// `Session` small; a due time beyond that is filed in the last bucket, which is
/// early, and early is always safe (the sweeper re-files).
pub type Bucket = u32;

pub(crate) const NOT_FILED: Bucket = Bucket::MAX;

fn bucket_of(due: Millis) -> Bucket {
    Bucket::try_from(due / BUCKET_MS).unwrap_or(NOT_FILED - 1)
}

/// Handles filed by due-time bucket.
#[derive(Debug, Default)]
pub struct DeadlineIndex {
    buckets: Mutex<BTreeMap<Bucket, Vec<Handle>>>,
}

/// One popped entry: the handle and the bucket it was filed in.
#[derive(Debug, Clone, Copy)]
pub struct DueEntry {
    pub handle: Handle,
    pub bucket: Bucket,
}

impl DueEntry {
    /// Whether the session is still filed where this entry was (otherwise the entry
    /// is a leftover from before a lowering, and the session is filed earlier).
    pub fn is_current(&self, session: &Session) -> bool {
        session.filed_in.load(Ordering::Acquire) == self.bucket
    }
}

impl DeadlineIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Bucket, Vec<Handle>>> {
        // A panic while holding this lock leaves the map consistent (pushes and pops
        // are single operations), so a poisoned lock is safe to keep using.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files `session` for `due` if that is earlier than where it is filed now.
    pub fn file_earlier(&self, session: &Session, due: Millis) {
        let bucket = bucket_of(due);
        let mut buckets = self.lock();
        if bucket < session.filed_in.load(Ordering::Acquire) {
            buckets.entry(bucket).or_default().push(session.handle());
            session.filed_in.store(bucket, Ordering::Release);
        }
    }

    /// Re-files a session the sweeper popped from `popped_from`, unless something
    /// filed it elsewhere meanwhile. `None` means it has no deadline any more.
    pub fn refile(&self, session: &Session, popped_from: Bucket, due: Option<Millis>) {
        let mut buckets = self.lock();
        if session.filed_in.load(Ordering::Acquire) != popped_from {
            return;
        }
        match due {
            Some(due) => {
                let bucket = bucket_of(due);
                buckets.entry(bucket).or_default().push(session.handle());
                session.filed_in.store(bucket, Ordering::Release);
            }
            None => session.filed_in.store(NOT_FILED, Ordering::Release),
        }
    }

    /// Pops up to `max` entries from buckets that lie wholly before `now`.
    pub fn pop_due(&self, now: Millis, max: usize, out: &mut Vec<DueEntry>) {
        let mut buckets = self.lock();
        while out.len() < max {
            let Some(mut entry) = buckets.first_entry() else {
                break;
            };
            let bucket = *entry.key();
            if (u64::from(bucket) + 1) * BUCKET_MS > now {
                break;
            }
            let handles = entry.get_mut();
            let take = (max - out.len()).min(handles.len());
            let start = handles.len() - take;
            out.extend(
                handles
                    .drain(start..)
                    .map(|handle| DueEntry { handle, bucket }),
            );
            if handles.is_empty() {
                entry.remove();
            }
        }
    }

    /// Number of filed entries (including leftovers); for tests and benchmarks.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
