//! In-process storage: [`MemoryStorage`], and [`MemoryStore`], the lifetime policy
//! on top of it that the gateway runs.
//!
//! One `DashMap` (handle → session) plus the [`DeadlineIndex`]; tokens are not stored
//! at all but derive to their session's handle, and the rare rotated sessions sit in
//! two small side maps. Per session that leaves the `Arc<Session>`, one map entry and
//! one deadline-index entry.
//!
//! DashMap guards are never held across another map operation: values are copied
//! out first (`Arc`, `Copy`), which keeps the storage deadlock-free.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::policy::Sessions;
use super::storage::{Alias, Rotation, Storage};
use crate::config::WhenFull;
use crate::session::events::SessionObserver;
use crate::session::expiry::{Bucket, DeadlineIndex, DueEntry};
use crate::session::jar::Jar;
use crate::session::{Handle, Lifetime, Millis, Session, SessionError};

/// The lifetime policy over in-memory storage: the store the gateway runs.
pub type MemoryStore = Sessions<MemoryStorage>;

impl MemoryStore {
    pub fn new(
        rules: Lifetime,
        max_sessions: usize,
        when_full: WhenFull,
        observer: Arc<dyn SessionObserver>,
    ) -> Result<Self, SessionError> {
        Sessions::with_storage(
            MemoryStorage::default(),
            rules,
            max_sessions,
            when_full,
            observer,
        )
    }

    /// The deadline index (benchmarks and tests look at its size).
    pub fn index(&self) -> &DeadlineIndex {
        &self.storage().index
    }
}

/// Sessions, their deadlines and the rotated-token side tables, in this process.
#[derive(Default)]
pub struct MemoryStorage {
    sessions: Sharded<Handle, Arc<Session>>,
    rotations: DashMap<Handle, Rotation>,
    aliases: DashMap<Handle, Alias>,
    index: DeadlineIndex,
    /// Recently ended sessions (see [`Storage::remember_ended`]).
    ended: Mutex<EndedTable>,
    /// Cookie jars of the sessions that have one (see [`Storage::update_jar`]).
    jars: DashMap<Handle, Jar>,
    /// Slots taken (see [`Storage::reserve`]). Every create and end writes it, so it
    /// sits on lines of its own, away from what every lookup reads.
    live: OwnLines<AtomicUsize>,
}

/// Recently ended sessions: digest → end instant, and the digests in the order they
/// ended (ends are recorded with a monotonic clock, so that order is by age too).
/// Only the end path and late lookups take the lock.
#[derive(Default)]
struct EndedTable {
    at: HashMap<Handle, Millis>,
    order: VecDeque<(Handle, Millis)>,
}

impl EndedTable {
    /// Drops the oldest entry; stale order entries (re-remembered digests) skip.
    fn pop_oldest(&mut self) -> Option<Millis> {
        let (handle, at) = self.order.pop_front()?;
        if self.at.get(&handle) == Some(&at) {
            self.at.remove(&handle);
        }
        Some(at)
    }
}

/// Shards of the session map: a snapshot copies the table shard by shard under
/// each shard's read lock, which holds up inserts and removals in that shard (never
/// lookups) for as long as copying its `Arc`s takes. DashMap's default (4 × CPUs,
/// 8 on a 2-core machine) makes that 125,000 sessions per shard at 1,000,000; 64
/// shards make it ~16,000 (see `cargo bench --bench snapshot`).
const SESSION_SHARDS: usize = 64;

/// A `DashMap` with [`SESSION_SHARDS`] shards.
struct Sharded<K, V>(DashMap<K, V>);

impl<K: Eq + std::hash::Hash, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Sharded(DashMap::with_shard_amount(SESSION_SHARDS))
    }
}

impl<K, V> std::ops::Deref for Sharded<K, V> {
    type Target = DashMap<K, V>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A value on cache lines of its own: 128 B, as CPUs prefetch lines in pairs.
#[derive(Default)]
#[repr(align(128))]
struct OwnLines<T>(T);

#[cfg(test)]
impl MemoryStorage {
    /// Entries in the alias side table.
    pub(crate) fn alias_count(&self) -> usize {
        self.aliases.len()
    }

    /// Entries in the rotation side table.
    pub(crate) fn rotation_count(&self) -> usize {
        self.rotations.len()
    }
}

impl Storage for MemoryStorage {
    fn get(&self, handle: &Handle) -> Option<Arc<Session>> {
        self.sessions.get(handle).map(|s| Arc::clone(&s))
    }

    fn contains(&self, handle: &Handle) -> bool {
        self.sessions.contains_key(handle)
    }

    fn insert(&self, session: Arc<Session>) -> bool {
        match self.sessions.entry(session.handle()) {
            dashmap::Entry::Vacant(slot) => {
                slot.insert(session);
                true
            }
            dashmap::Entry::Occupied(_) => false,
        }
    }

    fn remove(&self, handle: &Handle) -> Option<Arc<Session>> {
        self.sessions.remove(handle).map(|(_, session)| session)
    }

    fn scan(&self, after: Option<Handle>, limit: usize) -> Vec<Arc<Session>> {
        // A bounded max-heap of the `limit` smallest handles after the cursor: one pass,
        // O(n log limit), no copy of the whole table.
        let mut heap = BinaryHeap::with_capacity(limit + 1);
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
            .filter_map(|handle| self.get(&handle))
            .collect()
    }

    fn for_each(&self, visit: &mut dyn FnMut(&Arc<Session>)) {
        for entry in self.sessions.iter() {
            visit(entry.value());
        }
    }

    fn reserve(&self, max: usize) -> bool {
        self.live
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < max).then_some(live + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.live.0.fetch_sub(1, Ordering::AcqRel);
    }

    fn len(&self) -> usize {
        self.live.0.load(Ordering::Acquire)
    }

    fn file_earlier(&self, session: &Session, due: Millis) {
        self.index.file_earlier(session, due);
    }

    fn refile(&self, session: &Session, popped_from: Bucket, due: Option<Millis>) {
        self.index.refile(session, popped_from, due);
    }

    fn pop_due(&self, now: Millis, max: usize, out: &mut Vec<DueEntry>) {
        self.index.pop_due(now, max, out);
    }

    fn alias(&self, derived: &Handle) -> Option<Alias> {
        self.aliases.get(derived).map(|a| *a)
    }

    fn put_alias(&self, derived: Handle, alias: Alias) {
        self.aliases.insert(derived, alias);
    }

    fn update_alias(&self, derived: &Handle, change: impl FnOnce(&mut Alias)) {
        if let Some(mut alias) = self.aliases.get_mut(derived) {
            change(&mut alias);
        }
    }

    fn remove_alias(&self, derived: &Handle) {
        self.aliases.remove(derived);
    }

    fn prune_aliases(&self, now: Millis) {
        self.aliases.retain(|_, alias| alias.retires_at > now);
    }

    fn rotation(&self, handle: &Handle) -> Option<Rotation> {
        self.rotations.get(handle).map(|r| *r)
    }

    fn put_rotation(&self, handle: Handle, rotation: Rotation) -> Option<Rotation> {
        self.rotations.insert(handle, rotation)
    }

    fn update_rotation(&self, handle: &Handle, change: impl FnOnce(&mut Rotation)) {
        if let Some(mut rotation) = self.rotations.get_mut(handle) {
            change(&mut rotation);
        }
    }

    fn remove_rotation(&self, handle: &Handle) -> Option<Rotation> {
        self.rotations.remove(handle).map(|(_, rotation)| rotation)
    }

    fn remember_ended(&self, derived: Handle, at: Millis, cap: usize) {
        if cap == 0 {
            return;
        }
        let mut table = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        // Every entry of `at` has its (newest) twin in `order`, so bounding `order`
        // bounds both; stale twins of re-remembered digests are dropped with it.
        while table.order.len() >= cap {
            if table.pop_oldest().is_none() {
                break;
            }
        }
        table.at.insert(derived, at);
        table.order.push_back((derived, at));
    }

    fn ended_at(&self, derived: &Handle) -> Option<Millis> {
        let table = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        table.at.get(derived).copied()
    }

    fn forget_ended(&self, before: Millis) {
        let mut table = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while table.order.front().is_some_and(|&(_, at)| at < before) {
            table.pop_oldest();
        }
    }

    fn ended_len(&self) -> usize {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .at
            .len()
    }

    fn jar(&self, handle: &Handle) -> Option<Jar> {
        self.jars.get(handle).map(|jar| jar.clone())
    }

    fn put_jar(&self, handle: Handle, jar: Jar) {
        self.jars.insert(handle, jar);
    }

    fn update_jar<R>(&self, handle: &Handle, mut change: impl FnMut(&mut Option<Jar>) -> R) -> R {
        match self.jars.entry(*handle) {
            dashmap::Entry::Occupied(mut entry) => {
                let mut slot = Some(std::mem::take(entry.get_mut()));
                let result = change(&mut slot);
                match slot {
                    Some(jar) => *entry.get_mut() = jar,
                    None => {
                        entry.remove();
                    }
                }
                result
            }
            dashmap::Entry::Vacant(entry) => {
                let mut slot = None;
                let result = change(&mut slot);
                if let Some(jar) = slot {
                    entry.insert(jar);
                }
                result
            }
        }
    }

    fn remove_jar(&self, handle: &Handle) -> Option<Jar> {
        self.jars.remove(handle).map(|(_, jar)| jar)
    }

    fn jar_count(&self) -> usize {
        self.jars.len()
    }

    fn rotations(&self) -> Vec<(Handle, Rotation)> {
        self.rotations
            .iter()
            .map(|r| (*r.key(), *r.value()))
            .collect()
    }

    fn aliases(&self) -> Vec<(Handle, Alias)> {
        self.aliases
            .iter()
            .map(|a| (*a.key(), *a.value()))
            .collect()
    }

    fn jars(&self) -> Vec<(Handle, Jar)> {
        self.jars
            .iter()
            .map(|jar| (*jar.key(), jar.value().clone()))
            .collect()
    }

    fn ended(&self) -> Vec<(Handle, Millis)> {
        let table = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        // The order queue may hold stale twins of re-remembered digests: only the
        // entry the map agrees with is current.
        table
            .order
            .iter()
            .filter(|(handle, at)| table.at.get(handle) == Some(at))
            .copied()
            .collect()
    }
}
