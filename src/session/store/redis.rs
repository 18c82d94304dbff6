//! Sessions shared by several gateway replicas through Redis (`store.backend =
//! "redis"`, DESIGN.md §10): [`RedisStorage`], a [`Storage`] that keeps a local cache
//! (a [`MemoryStorage`] of the sessions this replica has seen) in front of Redis, and
//! [`RedisStore`], the lifetime policy over it.
//!
//! The policy ([`Sessions`]) stays the single decision-maker; what must happen once
//! across replicas is committed by a Lua script that checks the stored inputs:
//!
//! - **end**: [`Storage::claim_end`] turns the session's hash into a tombstone unless
//!   it is one already (another replica won: drop it here silently) or, for a timeout
//!   or abandonment, unless Redis holds newer activity (merged here; not due after
//!   all). Only the winner emits `Ended`, so the `end` hook fires once; it publishes
//!   the handle on `{prefix}ended`, and every other replica drops its copy at once.
//! - **timeout announcement** (`Idle`, the `timeout` hook): claimed per idle period.
//! - **start**: only the creating replica emits it.
//! - **`end` hook**: owed until the winner says it is over
//!   ([`Storage::end_delivered`], sent with the next flush); meanwhile the session's
//!   deadline entry is a lease on it, as long as the hook's attempts can take. A
//!   replica that pops an ended session whose hook is still owed takes the hook over
//!   ([`Storage::owed_ends`]: the policy emits `EndOwed`, the hooks fire it).
//!
//! Keys (every per-session key carries the handle as its Cluster hash tag):
//! `{prefix}s:{<handle>}` the session hash · `{prefix}a:{<derived>}` a rotated token's
//! alias · `{prefix}e:{<derived>}` a recently ended token · `{prefix}d:{<n>}` deadline
//! shard `n` (a sorted set, [`SHARDS`]) · `{prefix}i:{<n>}` index shard `n` (a set
//! of the live sessions' handles, for the admin API's listing) · `{prefix}secrets`,
//! `{prefix}clock` the shared keys and clock scale · `{prefix}t:<mac>` a spent ticket
//! or challenge.
//!
//! **Cluster**: if the node `store.url` names has `cluster_enabled:1`, the replica
//! talks to the Cluster (commands routed by slot); batches are then sent command by
//! command and scripts whole (`EVAL`), since one batch spans many slots.
//!
//! **Request path**: a session in the cache costs no Redis call; a miss (the first
//! request a replica sees for a session) loads the hash, one round trip on the
//! calling thread (bounded by [`IO_TIMEOUT`]). Touches only mark the session dirty;
//! every [`FLUSH_INTERVAL`] one pipeline per replica max-merges the dirty sessions'
//! `last_seen`/`last_activity` into Redis, files their next deadline and reads back
//! what other replicas changed (a tombstone: dropped; newer activity, timeout,
//! rotation: merged). So Redis load grows with active sessions, not with requests.
//!
//! **Cookie jars** are the hash's `jar` field (JSON) with a version `jv`: read on
//! every request of a jarred session, changed by compare-and-set ([`JAR`]): a change
//! made on a jar another replica changed meanwhile is made again on the newer one.
//! While Redis is unreachable the replica's own copy serves and takes changes, which
//! the next flush that reaches Redis writes back.
//!
//! **Sweeping**: each replica sweeps its cached sessions with the local index, and
//! every [`REMOTE_SWEEP`] pops due entries from the shared sorted sets with an atomic
//! pop-and-lease (the entry is re-filed [`LEASE`] ahead): a session whose replica died
//! is loaded and swept by another; if that one dies too, the lease runs out and a
//! third takes it. The end claim makes the `end` event happen once whatever the
//! number of sweepers.
//!
//! **Client**: redis-rs (`redis` 1.x, the stable line; fred was the other choice):
//! its `Script` (EVALSHA with the source at hand), pipelines, Cluster client (slot
//! routing, `MOVED` followed) and rustls TLS cover what this store needs, with fewer
//! moving parts than fred's pool and event tasks. The calls are synchronous because
//! [`Storage`] is: the lifetime policy decides with compare-and-swaps on the session
//! and never awaits, and with the cache and the batched flush the request path rarely
//! calls Redis at all (a cache miss, a creation, a claim, a jar). Each call runs on a
//! connection of this replica's own pool ([`POOL`]; a connection that failed is
//! dropped and made again at the next call, scripts reloaded) with
//! [`CONNECT_TIMEOUT`] and [`IO_TIMEOUT`], batches go out as one pipeline, and a call
//! made on a runtime worker moves the worker's other tasks to another thread while it
//! waits (`block_in_place`), so a slow Redis delays only the requests that need it.
//! The invalidation subscription is redis-rs's async (tokio) pub/sub connection.
//!
//! **Outage**: a failed call marks the link down; for [`RETRY_AFTER_FAILURE`] calls
//! fail fast, then one is tried again. While down, cached sessions keep working for
//! `store.outage_grace`, within their own deadlines, then are refused until Redis
//! answers (a session found past a deadline is refused but not ended: nothing
//! ends because Redis was unreachable, the sweeper ends it when Redis is back), no
//! session is created ([`SessionError::StoreDown`], 503 with `Retry-After`), touches
//! stay dirty (at most one entry per cached session) and are flushed on return, when
//! every cached session is written back whole (a Redis that came back empty is
//! refilled, jars and the session index included) and the shared keys are put back.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::{Cmd, ConnectionLike, RedisResult, Script, Value};
use tokio_util::sync::CancellationToken;

use super::memory::MemoryStorage;
use super::policy::Sessions;
use super::storage::{Alias, EndClaim, OwedEnd, Rotation, Storage};
use crate::config::{StoreConfig, WhenFull};
use crate::session::clock::{wall_now, Clock};
use crate::session::events::SessionObserver;
use crate::session::expiry::{Bucket, DueEntry};
use crate::session::jar::Jar;
use crate::session::ticket::SpentLedger;
use crate::session::token::Secrets;
use crate::session::{
    EndReason, Handle, Lifetime, Millis, Session, SessionError, SessionParts, State, Verdict,
};

/// The lifetime policy over Redis-backed storage.
pub type RedisStore = Sessions<RedisStorage>;

/// How often each replica writes its batched touches (and reads back what changed).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest one call may wait for its answer.
pub const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, calls fail at once for this long before one is tried again.
pub const RETRY_AFTER_FAILURE: Millis = 500;
/// Sorted sets the shared deadline index, and sets the index of every session, are
/// each spread over (one Cluster slot each).
pub const SHARDS: u8 = 16;
/// Handles asked for per `SSCAN` (and sessions loaded per pipeline) when listing.
const LIST_BATCH: usize = 500;
/// How often a replica pops due entries from the shared index.
pub const REMOTE_SWEEP: Millis = 500;
/// How far ahead a popped entry is re-filed: the time a replica has to handle it
/// before another may.
pub const LEASE: Millis = 30_000;
/// Entries popped per shard per remote sweep.
const POP_PER_SHARD: usize = 256;
/// How long an ended session's tombstone and an ended token's record stay in Redis.
pub const TOMBSTONE: Millis = 60 * 60 * 1000;
/// Added to an `end` hook's longest run for its lease: slack for a busy replica.
const OWED_MARGIN: Millis = 1_000;
/// Synchronous connections per replica (each used by one caller at a time).
const POOL: usize = 8;

/// Why the Redis store could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("store.url: {0}")]
    Url(redis::RedisError),
    #[error("Redis at store.url is unreachable: {0}")]
    Unreachable(redis::RedisError),
    #[error("the shared keys in Redis are damaged ({0}); delete {1} to start afresh")]
    Damaged(&'static str, String),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// The shard of the deadline index and of the session index a session is in.
fn shard_of(handle: &Handle) -> u8 {
    handle.as_bytes()[0] % SHARDS
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn session(&self, handle: &Handle) -> String {
        format!("{}s:{{{handle}}}", self.prefix)
    }
    fn alias(&self, derived: &Handle) -> String {
        format!("{}a:{{{derived}}}", self.prefix)
    }
    fn ended(&self, derived: &Handle) -> String {
        format!("{}e:{{{derived}}}", self.prefix)
    }
    fn deadlines(&self, shard: u8) -> String {
        format!("{}d:{{{shard}}}", self.prefix)
    }
    fn deadlines_of(&self, handle: &Handle) -> String {
        self.deadlines(shard_of(handle))
    }
    fn index(&self, shard: u8) -> String {
        format!("{}i:{{{shard}}}", self.prefix)
    }
    fn index_of(&self, handle: &Handle) -> String {
        self.index(shard_of(handle))
    }
    fn secrets(&self) -> String {
        format!("{}secrets", self.prefix)
    }
    fn clock(&self) -> String {
        format!("{}clock", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}ended", self.prefix)
    }
    fn spent(&self, id: &str) -> String {
        format!("{}t:{id}", self.prefix)
    }
}

/// Max-merges a replica's timestamps into the session hash and answers what Redis
/// holds; writes the whole record back if it is gone (Redis came back empty).
/// KEYS[1] session · ARGV la, ls, then the record (b c p ip to ps ca).
const FLUSH: &str = r"
local st = redis.call('HGET', KEYS[1], 'st')
if st == '2' then return {'2'} end
if not st then
  redis.call('HSET', KEYS[1], 'la', ARGV[1], 'ls', ARGV[2], 'b', ARGV[3], 'c', ARGV[4],
    'p', ARGV[5], 'ip', ARGV[6], 'to', ARGV[7], 'ps', ARGV[8], 'ca', ARGV[9], 'st', '0')
  return {'0', ARGV[1], ARGV[2], ARGV[7], ''}
end
local la = redis.call('HGET', KEYS[1], 'la') or '0'
local ls = redis.call('HGET', KEYS[1], 'ls') or '0'
if tonumber(ARGV[1]) > tonumber(la) then la = ARGV[1]; redis.call('HSET', KEYS[1], 'la', la) end
if tonumber(ARGV[2]) > tonumber(ls) then ls = ARGV[2]; redis.call('HSET', KEYS[1], 'ls', ls) end
return {st, la, ls, redis.call('HGET', KEYS[1], 'to') or ARGV[7], redis.call('HGET', KEYS[1], 'rot') or ''}
";

/// Claims a session's end. KEYS[1] session · ARGV la, ls, to (what the decision was
/// based on), ended at, tombstone ms, check ('1': a timeout or abandonment, refused
/// if Redis holds newer activity or another timeout), reason, owed ('1': an `end`
/// hook is configured, and owed until its replica says it is over).
const END: &str = r"
local st = redis.call('HGET', KEYS[1], 'st')
if st == '2' then return {'gone'} end
if st and ARGV[6] == '1' then
  local la = redis.call('HGET', KEYS[1], 'la') or '0'
  local ls = redis.call('HGET', KEYS[1], 'ls') or '0'
  local to = redis.call('HGET', KEYS[1], 'to') or ARGV[3]
  if tonumber(la) > tonumber(ARGV[1]) or tonumber(ls) > tonumber(ARGV[2]) or to ~= ARGV[3] then
    return {'stale', la, ls, to}
  end
end
local rot = redis.call('HGET', KEYS[1], 'rot') or ''
redis.call('HSET', KEYS[1], 'st', '2', 'ea', ARGV[4], 'er', ARGV[7])
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'eh', '1') end
redis.call('HDEL', KEYS[1], 'jar', 'rot')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'won', rot}
";

/// Claims the announcement of one idle period. KEYS[1] session · ARGV since.
const IDLE: &str = r"
local st = redis.call('HGET', KEYS[1], 'st')
if st == '2' then return 0 end
if redis.call('HGET', KEYS[1], 'am') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'am', ARGV[1])
return 1
";

/// Pops due entries of one deadline shard and leases them. KEYS[1] shard ·
/// ARGV now, lease until, max.
const POP: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, h in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], h) end
return due
";

/// Writes a session's cookie jar. KEYS[1] session · ARGV mode, version read, the
/// jar as JSON ('' drops it). Modes: `cas` writes only if the jar is still at the
/// version read, `any` whatever it is, `absent` only if Redis holds no jar. Each write
/// moves the version on. Returns 1 written, 0 not (read again), -1 the session is
/// gone or ended (nothing to keep).
const JAR: &str = r"
local st = redis.call('HGET', KEYS[1], 'st')
if not st or st == '2' then return -1 end
local v = tonumber(redis.call('HGET', KEYS[1], 'jv') or '0')
if ARGV[1] == 'cas' and v ~= tonumber(ARGV[2]) then return 0 end
if ARGV[1] == 'absent' and redis.call('HEXISTS', KEYS[1], 'jar') == 1 then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], 'jar') else redis.call('HSET', KEYS[1], 'jar', ARGV[3]) end
redis.call('HSET', KEYS[1], 'jv', v + 1)
return 1
";

/// Which jar write [`JAR`] makes.
#[derive(Debug, Clone, Copy)]
enum JarWrite {
    /// Only over the version read (a change on the request path).
    IfVersion(u64),
    /// Whatever Redis holds (a change made here while Redis was unreachable).
    Always,
    /// Only where Redis has none (refilling a Redis that came back empty).
    IfAbsent,
}

/// What a jar write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JarWritten {
    Yes,
    /// Another replica changed the jar since it was read.
    Raced,
    /// The session is gone from Redis or ended.
    Gone,
}

/// Reads of a jar a change is tried on before this replica falls back to its own
/// copy (written back by the next flush, last writer winning).
const JAR_ATTEMPTS: usize = 4;

/// A Lua script: its source (sent whole with `EVAL` to a Cluster, whose nodes
/// cannot all be loaded ahead) and its digest (`EVALSHA` on a standalone Redis,
/// where every connection loads the scripts first).
struct Lua {
    source: &'static str,
    script: Script,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Lua {
            source,
            script: Script::new(source),
        }
    }
}

struct Scripts {
    flush: Lua,
    end: Lua,
    idle: Lua,
    pop: Lua,
    jar: Lua,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            flush: Lua::new(FLUSH),
            end: Lua::new(END),
            idle: Lua::new(IDLE),
            pop: Lua::new(POP),
            jar: Lua::new(JAR),
        }
    }

    fn load(&self, conn: &mut dyn ConnectionLike) -> RedisResult<()> {
        for lua in [&self.flush, &self.end, &self.idle, &self.pop, &self.jar] {
            lua.script.load(conn)?;
        }
        Ok(())
    }
}

/// Counts a failed Redis operation (`sessiongate_store_errors_total{op}`).
pub type ErrorSink = Box<dyn Fn(&'static str) + Send + Sync>;

/// Every label the store error metric can carry.
pub const ERROR_OPS: [&str; 11] = [
    "connect",
    "load",
    "list",
    "create",
    "flush",
    "end",
    "claim",
    "sweep",
    "rotate",
    "jar",
    "subscribe",
];

/// One connection: to a standalone Redis, or to a Cluster (routing each command by
/// its key's slot).
type Conn = Box<dyn ConnectionLike + Send>;

/// Connections to Redis and whether it answers.
pub struct Link {
    /// The node `store.url` names: every connection of a standalone Redis, and the
    /// pub/sub subscription (a Cluster passes published messages to every node).
    client: redis::Client,
    /// Set when that node has `cluster_enabled:1`.
    cluster: OnceLock<redis::cluster::ClusterClient>,
    keys: Keys,
    scripts: Scripts,
    pool: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
    up: AtomicBool,
    /// Wall ms of the last failure (0: none since the last success).
    failed_at: AtomicU64,
    /// Wall ms of the first failure since the last success (0: up).
    down_since: AtomicU64,
    /// `store.outage_grace` in ms.
    outage_grace: Millis,
    on_error: OnceLock<ErrorSink>,
    /// Set when the link comes back after being down: the flusher writes the whole
    /// cache back.
    came_back: AtomicBool,
}

impl Link {
    fn new(config: &StoreConfig) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(RedisStoreError::Url)?;
        Ok(Link {
            client,
            cluster: OnceLock::new(),
            keys: Keys {
                prefix: config.prefix.clone(),
            },
            scripts: Scripts::new(),
            pool: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            failed_at: AtomicU64::new(0),
            down_since: AtomicU64::new(0),
            outage_grace: crate::lifetime::millis(config.outage_grace.get()),
            on_error: OnceLock::new(),
            came_back: AtomicBool::new(false),
        })
    }

    /// Asks the node `store.url` names whether it is part of a Cluster, and if so
    /// talks to the Cluster from then on (once, at start).
    fn detect_cluster(&self) -> RedisResult<()> {
        let mut conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        let info: String = redis::cmd("INFO").arg("cluster").query(&mut conn)?;
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            let cluster = redis::cluster::ClusterClient::builder(vec![self
                .client
                .get_connection_info()
                .clone()])
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(IO_TIMEOUT)
            .build()?;
            let _ = self.cluster.set(cluster);
            tracing::info!("store.url is a Redis Cluster node: using the Cluster");
        }
        Ok(())
    }

    fn is_cluster(&self) -> bool {
        self.cluster.get().is_some()
    }

    fn connect(&self) -> RedisResult<Conn> {
        if let Some(cluster) = self.cluster.get() {
            return Ok(Box::new(cluster.get_connection()?));
        }
        let mut conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        self.scripts.load(&mut conn)?;
        Ok(Box::new(conn))
    }

    /// A call of `lua` with one key: `EVALSHA` (standalone, loaded on connect) or
    /// `EVAL` (Cluster); the caller adds the arguments.
    fn eval(&self, lua: &Lua, key: &str) -> Cmd {
        let mut cmd = if self.is_cluster() {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(lua.source);
            cmd
        } else {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(lua.script.get_hash());
            cmd
        };
        cmd.arg(1).arg(key);
        cmd
    }

    /// Sends `cmds` and returns their replies in order: one pipeline on a
    /// standalone Redis; one by one on a Cluster (each routed by its key: the
    /// commands of one batch live in different slots).
    fn batch(
        conn: &mut dyn ConnectionLike,
        cmds: Vec<Cmd>,
        cluster: bool,
    ) -> RedisResult<Vec<Value>> {
        if cluster {
            return cmds.iter().map(|cmd| cmd.query::<Value>(conn)).collect();
        }
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        pipe.query(conn)
    }

    /// Counts a failure without marking the link down (the subscriber has its own
    /// connection and retry loop).
    fn count(&self, op: &'static str) {
        if let Some(sink) = self.on_error.get() {
            sink(op);
        }
    }

    fn failed(&self, op: &'static str) {
        let now = wall_now().max(1);
        self.failed_at.store(now, Ordering::Release);
        let _ = self
            .down_since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        self.up.store(false, Ordering::Release);
        if let Some(sink) = self.on_error.get() {
            sink(op);
        }
    }

    /// Runs `f` on a pooled connection; `None` (counted under `op`) if Redis could
    /// not be reached or answered with an error. Fails at once within
    /// [`RETRY_AFTER_FAILURE`] of the last failure.
    fn run<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<T>,
    ) -> Option<T> {
        let failed_at = self.failed_at.load(Ordering::Acquire);
        if failed_at != 0 && wall_now().saturating_sub(failed_at) < RETRY_AFTER_FAILURE {
            return None;
        }
        off_the_runtime(|| self.call(op, f))
    }

    /// [`Link::run`]'s call, on whatever thread it is made.
    fn call<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<T>,
    ) -> Option<T> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // The first free connection from a rotating start; all busy: wait for one.
        let mut slot = (0..POOL)
            .find_map(|i| self.pool[(start + i) % POOL].try_lock().ok())
            .unwrap_or_else(|| {
                self.pool[start % POOL]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            });
        if slot.is_none() {
            match self.connect() {
                Ok(conn) => *slot = Some(conn),
                Err(error) => {
                    tracing::debug!(%error, "Redis: cannot connect");
                    self.failed("connect");
                    return None;
                }
            }
        }
        let conn = slot.as_mut()?;
        match f(conn.as_mut()) {
            Ok(value) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!("Redis is reachable again");
                    self.came_back.store(true, Ordering::Release);
                }
                self.failed_at.store(0, Ordering::Release);
                self.down_since.store(0, Ordering::Release);
                Some(value)
            }
            Err(error) => {
                tracing::warn!(%error, op, "Redis call failed");
                // A fresh connection (scripts loaded again) for the next call: an
                // error may have left this one mid-reply, or without the scripts.
                *slot = None;
                self.failed(op);
                None
            }
        }
    }

    /// Whether Redis has been unreachable for longer than `store.outage_grace`: the
    /// sessions held here are then refused (not ended) until it answers again.
    fn past_grace(&self) -> bool {
        let since = self.down_since.load(Ordering::Acquire);
        since != 0 && wall_now().saturating_sub(since) > self.outage_grace
    }

    /// Whether the last call succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// Runs `blocking` (a call to Redis, or a wait for a pooled connection) so that it
/// holds up no other task: on a worker of a multi-thread runtime (the gateway's), the
/// worker's other tasks move to another thread meanwhile (`block_in_place`);
/// elsewhere (a blocking-pool thread, a current-thread runtime in tests) it just runs.
fn off_the_runtime<T>(blocking: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(blocking)
        }
        _ => blocking(),
    }
}

/// The shared clock scale and keys: those already in Redis, or this replica's, put
/// there first (`SET NX`, so concurrent first starts agree on one).
fn shared_clock_and_secrets(link: &Link) -> Result<(Clock, Secrets), RedisStoreError> {
    link.detect_cluster()
        .map_err(RedisStoreError::Unreachable)?;
    let mut conn = link.connect().map_err(RedisStoreError::Unreachable)?;
    let conn = conn.as_mut();
    let fresh = Clock::new();
    let _: bool = redis::cmd("SET")
        .arg(link.keys.clock())
        .arg(fresh.zero_wall())
        .arg("NX")
        .query::<Option<String>>(conn)
        .map(|r| r.is_some())
        .map_err(RedisStoreError::Unreachable)?;
    let zero: u64 = redis::cmd("GET")
        .arg(link.keys.clock())
        .query(conn)
        .map_err(RedisStoreError::Unreachable)?;
    let clock = if zero == fresh.zero_wall() {
        fresh
    } else {
        Clock::resuming(zero).ok_or(RedisStoreError::Damaged("clock", link.keys.clock()))?
    };
    let mine = Secrets::generate()?;
    let _: Option<String> = redis::cmd("SET")
        .arg(link.keys.secrets())
        .arg(&mine.to_bytes()[..])
        .arg("NX")
        .query(conn)
        .map_err(RedisStoreError::Unreachable)?;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(link.keys.secrets())
        .query(conn)
        .map_err(RedisStoreError::Unreachable)?;
    let bytes: &[u8; Secrets::LEN] = stored
        .as_slice()
        .try_into()
        .map_err(|_| RedisStoreError::Damaged("secrets", link.keys.secrets()))?;
    Ok((clock, Secrets::from_bytes(bytes)))
}

/// Puts this replica's clock scale and keys back into a Redis that lost them.
fn republish(
    conn: &mut dyn ConnectionLike,
    keys: &Keys,
    clock: &Clock,
    secrets: &Secrets,
    cluster: bool,
) -> RedisResult<()> {
    let mut zero = redis::cmd("SET");
    zero.arg(keys.clock()).arg(clock.zero_wall()).arg("NX");
    let mut shared = redis::cmd("SET");
    shared
        .arg(keys.secrets())
        .arg(&secrets.to_bytes()[..])
        .arg("NX");
    Link::batch(conn, vec![zero, shared], cluster).map(drop)
}

/// Sessions in a local cache in front of Redis (see the module docs).
pub struct RedisStorage {
    local: MemoryStorage,
    link: Arc<Link>,
    rules: Lifetime,
    max_sessions: usize,
    /// Sessions touched since the last flush: at most one entry per cached session.
    dirty: Mutex<HashSet<Handle>>,
    /// Sessions whose jar this replica changed without reaching Redis: its copy is
    /// the truth until the next flush writes it back (one entry per cached jar).
    jars_pending: Mutex<HashSet<Handle>>,
    /// This process, in invalidation messages (its own are skipped).
    replica: String,
    /// How long an `end` hook this replica fires is its own before another replica
    /// may take it over (ms; 0: no `end` hook, nothing is owed).
    end_hook_lease: AtomicU64,
    /// Sessions whose `end` hook this replica got through (or gave up on) since the
    /// last flush: no longer owed.
    delivered: Mutex<HashSet<Handle>>,
    /// `end` hooks taken over by the last remote sweep, for the policy to fire.
    owed: Mutex<Vec<OwedEnd>>,
    /// Wall ms of the last remote sweep.
    swept_at: AtomicU64,
}

fn text(value: impl std::fmt::Display) -> String {
    value.to_string()
}

fn opt_mark(mark: Option<Millis>) -> String {
    mark.map(text).unwrap_or_default()
}

impl RedisStorage {
    fn record(&self, session: &Session) -> Vec<(&'static str, String)> {
        let p = session.parts();
        vec![
            ("la", text(p.last_activity)),
            ("ls", text(p.last_seen)),
            ("b", text(p.binding)),
            ("c", text(p.created)),
            ("p", p.parent.map(text).unwrap_or_default()),
            ("ip", p.client.map(text).unwrap_or_default()),
            ("to", text(p.timeout)),
            ("ps", text(u8::from(p.parent_sent))),
            ("ca", text(p.cookies_at)),
            ("st", text(p.state as u8)),
            ("im", opt_mark(p.idle_mark)),
            ("am", opt_mark(p.asked_mark)),
        ]
    }

    fn mark_dirty(&self, handle: Handle) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle);
    }

    /// Loads a session from Redis into the cache (`None`: unknown, ended, or Redis
    /// unreachable).
    fn load(&self, handle: &Handle) -> Option<Arc<Session>> {
        let key = self.link.keys.session(handle);
        let fields: HashMap<String, String> = self
            .link
            .run("load", |conn| redis::cmd("HGETALL").arg(&key).query(conn))?;
        self.cache_record(handle, &fields)
    }

    /// The session a record read from Redis holds, put in the cache (unless it is
    /// full: then served, not cached) with its rotation, jar and deadline; `None`
    /// for a record that is gone or ended.
    fn cache_record(
        &self,
        handle: &Handle,
        fields: &HashMap<String, String>,
    ) -> Option<Arc<Session>> {
        let parts = parse_parts(*handle, fields)?;
        if parts.state == State::Ended {
            return None;
        }
        let session = Arc::new(Session::from_parts(&parts));
        if !self.local.reserve(self.max_sessions) {
            return Some(session); // served, not cached
        }
        if !self.local.insert(Arc::clone(&session)) {
            self.local.release();
            return self.local.get(handle);
        }
        if let Some(rotation) = fields.get("rot").and_then(|r| parse_rotation(r)) {
            self.local.put_rotation(*handle, rotation);
        }
        if let Some(jar) = fields
            .get("jar")
            .and_then(|j| serde_json::from_str::<Jar>(j).ok())
        {
            self.local.put_jar(*handle, jar);
        }
        if let Some(due) = session.next_due(&self.rules, 0) {
            self.local.file_earlier(&session, due);
        }
        Some(session)
    }

    /// Merges what Redis holds (from a flush or a refused end) into the session.
    fn merge(&self, session: &Session, la: &str, ls: &str, to: &str) {
        if let Ok(ls) = ls.parse() {
            session.touch(crate::session::Touch::Signal, ls);
        }
        if let Ok(la) = la.parse() {
            session.touch(crate::session::Touch::Activity, la);
        }
        if let Ok(to) = to.parse::<Millis>() {
            if to != session.timeout() {
                session.set_timeout(to);
            }
        }
    }

    /// Writes one session's whole record, lists it in the session index and files
    /// its deadline.
    fn write_record(&self, op: &'static str, session: &Session) -> bool {
        let handle = session.handle();
        let key = self.link.keys.session(&handle);
        let record = self.record(session);
        let due = session.next_due(&self.rules, 0);
        let zkey = self.link.keys.deadlines_of(&handle);
        let cluster = self.link.is_cluster();
        self.link
            .run(op, |conn| {
                let mut cmds = vec![
                    Cmd::hset_multiple(&key, &record),
                    Cmd::sadd(self.link.keys.index_of(&handle), handle.to_string()),
                ];
                if let Some(due) = due {
                    cmds.push(Cmd::zadd(&zkey, session.handle().to_string(), due));
                }
                Link::batch(conn, cmds, cluster).map(drop)
            })
            .is_some()
    }

    /// The periodic flush: batched touches out, other replicas' changes in. Returns
    /// the handles Redis holds as ended (dropped by the caller, which has the policy).
    fn flush(&self, clock: &Clock, secrets: &Secrets) -> Vec<Handle> {
        let came_back = self.link.came_back.swap(false, Ordering::AcqRel);
        if came_back {
            // Redis may have come back empty: put everything back.
            let keys = self.link.keys.clone();
            if self
                .link
                .run("flush", |conn| {
                    republish(conn, &keys, clock, secrets, self.link.is_cluster())
                })
                .is_none()
            {
                self.link.came_back.store(true, Ordering::Release);
            }
            let mut all = Vec::new();
            self.local.for_each(&mut |s| all.push(s.handle()));
            if !self.relist(&all) {
                self.link.came_back.store(true, Ordering::Release);
            }
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(all);
        }
        let ended = self.flush_touches();
        // After the touches: a session Redis lost has its record again.
        self.write_back_jars(came_back);
        self.flush_delivered();
        ended
    }

    /// Sends the batched touches (see [`RedisStorage::flush`]).
    fn flush_touches(&self) -> Vec<Handle> {
        let batch: Vec<Handle> = {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            if dirty.is_empty() {
                return Vec::new();
            }
            dirty.drain().collect()
        };
        let sessions: Vec<Arc<Session>> = batch.iter().filter_map(|h| self.local.get(h)).collect();
        let cluster = self.link.is_cluster();
        let replies: Option<Vec<Vec<String>>> = self.link.run("flush", |conn| {
            let mut cmds = Vec::with_capacity(sessions.len() * 2);
            let mut zadds = Vec::with_capacity(sessions.len());
            for session in &sessions {
                let p = session.parts();
                let mut cmd = self
                    .link
                    .eval(&self.link.scripts.flush, &self.link.keys.session(&p.handle));
                cmd.arg(p.last_activity)
                    .arg(p.last_seen)
                    .arg(p.binding)
                    .arg(p.created)
                    .arg(p.parent.map(text).unwrap_or_default())
                    .arg(p.client.map(text).unwrap_or_default())
                    .arg(p.timeout)
                    .arg(u8::from(p.parent_sent))
                    .arg(p.cookies_at);
                cmds.push(cmd);
                if let Some(due) = session.next_due(&self.rules, 0) {
                    zadds.push(Cmd::zadd(
                        self.link.keys.deadlines_of(&p.handle),
                        p.handle.to_string(),
                        due,
                    ));
                }
            }
            cmds.extend(zadds);
            let replies = Link::batch(conn, cmds, cluster)?;
            replies
                .into_iter()
                .take(sessions.len())
                .map(redis::from_redis_value::<Vec<String>>)
                .collect::<Result<_, _>>()
                .map_err(Into::into)
        });
        let Some(replies) = replies else {
            // Unreachable: keep them for the next flush.
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch);
            return Vec::new();
        };
        let mut ended = Vec::new();
        for (session, reply) in sessions.iter().zip(replies) {
            match reply.as_slice() {
                [st] if st == "2" => ended.push(session.handle()),
                [_, la, ls, to, rot] => {
                    self.merge(session, la, ls, to);
                    if let Some(rotation) = parse_rotation(rot) {
                        if self.local.rotation(&session.handle()).is_none() {
                            self.local.put_rotation(session.handle(), rotation);
                        }
                    }
                }
                _ => {}
            }
        }
        ended
    }

    /// The session records (hashes) of `handles`, read in one pipeline; `None` if
    /// Redis could not be read (counted under `op`).
    fn records<'a>(
        &self,
        op: &'static str,
        handles: impl Iterator<Item = &'a Handle>,
    ) -> Option<Vec<HashMap<String, String>>> {
        let cmds = handles
            .map(|handle| Cmd::hgetall(self.link.keys.session(handle)))
            .collect();
        self.link.run(op, |conn| {
            Link::batch(conn, cmds, self.link.is_cluster())?
                .into_iter()
                .map(redis::from_redis_value::<HashMap<String, String>>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(Into::into)
        })
    }

    /// Lists `handles` in the session index again (one `SADD` per shard).
    fn relist(&self, handles: &[Handle]) -> bool {
        let mut shards: Vec<Vec<String>> = vec![Vec::new(); usize::from(SHARDS)];
        for handle in handles {
            shards[usize::from(shard_of(handle))].push(handle.to_string());
        }
        let cmds: Vec<Cmd> = (0..SHARDS)
            .zip(shards)
            .filter(|(_, members)| !members.is_empty())
            .map(|(shard, members)| Cmd::sadd(self.link.keys.index(shard), members))
            .collect();
        cmds.is_empty()
            || self
                .link
                .run("flush", |conn| {
                    Link::batch(conn, cmds, self.link.is_cluster()).map(drop)
                })
                .is_some()
    }

    /// The sessions behind one page of index handles: this replica's copy where it
    /// holds one, the rest read from Redis in one pipeline (not cached: a listing
    /// does not fill the cache) and put in the state the rules give them at `now`
    /// (Redis keeps timestamps, not the state the replica holding a session settled
    /// it in). Handles whose session is gone or ended are returned as stale. `None`:
    /// Redis could not be read.
    fn listed(
        &self,
        handles: Vec<String>,
        now: Millis,
    ) -> Option<(Vec<Arc<Session>>, Vec<String>)> {
        let mut sessions = Vec::with_capacity(handles.len());
        let mut stale = Vec::new();
        let mut remote = Vec::new();
        for text in handles {
            match text.parse::<Handle>() {
                Ok(handle) => match self.local.get(&handle) {
                    Some(session) => sessions.push(session),
                    None => remote.push((handle, text)),
                },
                Err(_) => stale.push(text),
            }
        }
        if remote.is_empty() {
            return Some((sessions, stale));
        }
        let records = self.records("list", remote.iter().map(|(handle, _)| handle))?;
        for ((handle, text), fields) in remote.into_iter().zip(records) {
            match parse_parts(handle, &fields).filter(|p| p.state != State::Ended) {
                Some(mut parts) => {
                    let rules_say = Session::from_parts(&parts).verdict(&self.rules, now);
                    if let Verdict::Live(state) = rules_say {
                        parts.state = state;
                    }
                    sessions.push(Arc::new(Session::from_parts(&parts)));
                }
                None => stale.push(text),
            }
        }
        Some((sessions, stale))
    }

    /// Pops due entries of the shared index (every [`REMOTE_SWEEP`]) and files them
    /// in the local index, loading sessions this replica does not hold.
    fn remote_sweep(&self, now: Millis) {
        let wall = wall_now();
        let last = self.swept_at.load(Ordering::Acquire);
        if wall.saturating_sub(last) < REMOTE_SWEEP
            || self
                .swept_at
                .compare_exchange(last, wall, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let cluster = self.link.is_cluster();
        let popped: Option<Vec<Vec<String>>> = self.link.run("sweep", |conn| {
            let cmds = (0..SHARDS)
                .map(|shard| {
                    let mut cmd = self
                        .link
                        .eval(&self.link.scripts.pop, &self.link.keys.deadlines(shard));
                    cmd.arg(now)
                        .arg(now.saturating_add(self.lease()))
                        .arg(POP_PER_SHARD);
                    cmd
                })
                .collect();
            Link::batch(conn, cmds, cluster)?
                .into_iter()
                .map(redis::from_redis_value::<Vec<String>>)
                .collect::<Result<_, _>>()
                .map_err(Into::into)
        });
        let Some(popped) = popped else { return };
        let mut elsewhere = Vec::new();
        for handle in popped.into_iter().flatten() {
            let Ok(handle) = handle.parse::<Handle>() else {
                continue;
            };
            match self.local.get(&handle) {
                Some(session) => self.local.file_earlier(&session, now),
                None => elsewhere.push(handle),
            }
        }
        if elsewhere.is_empty() {
            return;
        }
        // Sessions this replica does not hold: loaded and swept here. Not a live
        // session: an ended one whose `end` hook is still owed (its replica stopped
        // before the hook was over; the pop has leased it to this one), or nothing
        // left to do. Unreadable: popped again once the lease is out.
        let Some(records) = self.records("sweep", elsewhere.iter()) else {
            return;
        };
        let take_over = self.end_hook_lease.load(Ordering::Relaxed) > 0;
        let (mut owed, mut gone) = (Vec::new(), Vec::new());
        for (handle, fields) in elsewhere.into_iter().zip(records) {
            if let Some(session) = self.cache_record(&handle, &fields) {
                self.local.file_earlier(&session, now);
            } else if let Some(end) = owed_end(handle, &fields).filter(|_| take_over) {
                owed.push(end);
            } else {
                gone.push(handle);
            }
        }
        self.owed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(owed);
        if !gone.is_empty() {
            let _ = self.link.run("sweep", |conn| {
                let cmds = gone
                    .iter()
                    .map(|handle| {
                        Cmd::zrem(self.link.keys.deadlines_of(handle), handle.to_string())
                    })
                    .collect();
                Link::batch(conn, cmds, cluster).map(drop)
            });
        }
    }

    /// How long a popped entry of the shared index is this replica's: [`LEASE`], or
    /// longer if an `end` hook can take longer.
    fn lease(&self) -> Millis {
        LEASE.max(self.end_hook_lease.load(Ordering::Relaxed))
    }

    /// Tells Redis which owed `end` hooks are over (part of the flush).
    fn flush_delivered(&self) {
        let delivered: Vec<Handle> = self
            .delivered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        if delivered.is_empty() {
            return;
        }
        let cmds = delivered
            .iter()
            .flat_map(|handle| {
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(self.link.keys.session(handle)).arg("eh");
                [
                    hdel,
                    Cmd::zrem(self.link.keys.deadlines_of(handle), handle.to_string()),
                ]
            })
            .collect();
        let sent = self.link.run("end", |conn| {
            Link::batch(conn, cmds, self.link.is_cluster())
        });
        if sent.is_none() {
            self.delivered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(delivered);
        }
    }

    /// The Redis link (readiness, error counting).
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }
}

impl SpentLedger for Link {
    /// `SET NX PX` on the spent value: the first replica to redeem it wins.
    fn spend(&self, id: &str, ttl: Millis) -> Option<bool> {
        let key = self.keys.spent(id);
        self.run("claim", |conn| {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl.max(1))
                .query::<Option<String>>(conn)
                .map(|r| r.is_some())
        })
    }
}

fn parse_parts(handle: Handle, f: &HashMap<String, String>) -> Option<SessionParts> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let mark = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let state = match f.get("st").map(String::as_str) {
        Some("0") => State::Active,
        Some("1") => State::Warning,
        Some(_) => State::Ended,
        None => return None,
    };
    Some(SessionParts {
        handle,
        parent: f.get("p").and_then(|p| p.parse().ok()),
        binding: num("b")?,
        created: num("c")?,
        last_activity: num("la")?,
        last_seen: num("ls")?,
        timeout: num("to")?,
        idle_mark: mark("im"),
        asked_mark: mark("am"),
        state,
        parent_sent: f.get("ps").is_some_and(|v| v == "1"),
        cookies_at: num("ca").unwrap_or(0),
        client: f.get("ip").and_then(|ip| ip.parse::<IpAddr>().ok()),
    })
}

/// The `end` hook a tombstone says is still owed (`eh`), with what it needs: the
/// session's fields, the end reason (`er`) and time (`ea`).
fn owed_end(handle: Handle, f: &HashMap<String, String>) -> Option<OwedEnd> {
    if f.get("eh").is_none_or(|eh| eh != "1") {
        return None;
    }
    let parts = parse_parts(handle, f)?;
    let reason = f
        .get("er")
        .and_then(|r| EndReason::ALL.into_iter().find(|e| e.as_str() == r))?;
    Some(OwedEnd {
        session: Arc::new(Session::from_parts(&parts)),
        reason,
        at: f.get("ea")?.parse().ok()?,
    })
}

/// `rot` = "<current derived handle> <original retires at>".
fn parse_rotation(text: &str) -> Option<Rotation> {
    let (current, retires) = text.split_once(' ')?;
    Some(Rotation {
        current: current.parse().ok()?,
        token: None,
        original_retires_at: retires.parse().ok()?,
    })
}

/// `a:` value = "<session handle> <retires at>".
fn parse_alias(text: &str) -> Option<Alias> {
    let (session, retires) = text.split_once(' ')?;
    Some(Alias {
        session: session.parse().ok()?,
        retires_at: retires.parse().ok()?,
    })
}

impl Storage for RedisStorage {
    fn admit(&self) -> Result<(), SessionError> {
        // Asked every time (one round trip per creation, which writes to Redis
        // anyway): a replica that has been idle learns of an outage here, before it
        // mints a session no other replica could find. Within the retry interval
        // after a failure this fails at once.
        match self
            .link
            .run("create", |conn| redis::cmd("PING").query::<String>(conn))
        {
            Some(_) => Ok(()),
            None => Err(SessionError::StoreDown),
        }
    }

    fn claim_end(&self, session: &Session, reason: EndReason, now: Millis) -> EndClaim {
        let p = session.parts();
        let check = matches!(reason, EndReason::Timeout | EndReason::Abandoned);
        let lease = self.end_hook_lease.load(Ordering::Relaxed);
        let owed = lease > 0;
        let key = self.link.keys.session(&p.handle);
        let message = format!("{} {}", self.replica, p.handle);
        let reply: Option<Vec<String>> = self.link.run("end", |conn| {
            let reply: Vec<String> = self
                .link
                .eval(&self.link.scripts.end, &key)
                .arg(p.last_activity)
                .arg(p.last_seen)
                .arg(p.timeout)
                .arg(now)
                .arg(TOMBSTONE)
                .arg(if check { "1" } else { "0" })
                .arg(reason.as_str())
                .arg(if owed { "1" } else { "0" })
                .query(conn)?;
            if reply.first().is_some_and(|r| r == "won") {
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(self.link.keys.channel()).arg(&message);
                let (deadlines, member) =
                    (self.link.keys.deadlines_of(&p.handle), p.handle.to_string());
                // While its `end` hook is owed, the session's entry in the deadline
                // index is the hook's lease: if this replica stops before the hook is
                // over, another pops it once the lease is out and fires the hook.
                let entry = if owed {
                    Cmd::zadd(deadlines, member, now.saturating_add(lease))
                } else {
                    Cmd::zrem(deadlines, member)
                };
                let mut cmds = vec![
                    entry,
                    Cmd::srem(self.link.keys.index_of(&p.handle), p.handle.to_string()),
                    publish,
                ];
                // The current token's alias, which has no expiry of its own (this
                // replica may not hold the rotation).
                if let Some(rotation) = reply.get(1).and_then(|r| parse_rotation(r)) {
                    cmds.push(Cmd::del(self.link.keys.alias(&rotation.current)));
                }
                Link::batch(conn, cmds, self.link.is_cluster())?;
            }
            Ok(reply)
        });
        let Some(reply) = reply else {
            return EndClaim::Unreachable;
        };
        match reply.as_slice() {
            [won, ..] if won == "won" => EndClaim::Won,
            [gone] if gone == "gone" => EndClaim::Gone,
            [_, la, ls, to] => {
                self.merge(session, la, ls, to);
                EndClaim::Stale
            }
            _ => EndClaim::Unreachable,
        }
    }

    fn claim_idle(&self, session: &Session, since: Millis) -> bool {
        let key = self.link.keys.session(&session.handle());
        self.link
            .run("claim", |conn| {
                self.link
                    .eval(&self.link.scripts.idle, &key)
                    .arg(since)
                    .query::<i64>(conn)
            })
            .is_some_and(|won| won == 1)
    }

    fn touched(&self, session: &Session) {
        self.mark_dirty(session.handle());
    }

    fn end_delivered(&self, handle: &Handle) {
        if self.end_hook_lease.load(Ordering::Relaxed) > 0 {
            self.delivered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(*handle);
        }
    }

    fn owed_ends(&self, out: &mut Vec<OwedEnd>) {
        out.append(&mut self.owed.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn ledger(&self) -> Option<Arc<dyn SpentLedger>> {
        Some(Arc::clone(&self.link) as _)
    }

    fn changed(&self, session: &Session) {
        let p = session.parts();
        let key = self.link.keys.session(&p.handle);
        let written = self.link.run("flush", |conn| {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key)
                .arg("to")
                .arg(p.timeout)
                .arg("im")
                .arg(opt_mark(p.idle_mark));
            cmd.query::<()>(conn)
        });
        if written.is_none() {
            self.mark_dirty(p.handle);
        }
    }

    fn ready(&self) -> bool {
        // Asked (for `/readyz`), not remembered: an idle replica learns of an outage.
        self.link
            .run("connect", |conn| redis::cmd("PING").query::<String>(conn))
            .is_some()
    }

    fn get(&self, handle: &Handle) -> Option<Arc<Session>> {
        // Past the grace, a session is only served once Redis answers again (asked
        // at most every RETRY_AFTER_FAILURE, however many requests come).
        if self.link.past_grace()
            && self
                .link
                .run("connect", |conn| redis::cmd("PING").query::<String>(conn))
                .is_none()
        {
            return None;
        }
        self.local.get(handle).or_else(|| self.load(handle))
    }

    fn cached(&self, handle: &Handle) -> Option<Arc<Session>> {
        self.local.get(handle)
    }

    fn contains(&self, handle: &Handle) -> bool {
        self.local.contains(handle)
    }

    fn insert(&self, session: Arc<Session>) -> bool {
        if !self.local.insert(Arc::clone(&session)) {
            return false;
        }
        if !self.write_record("create", &session) {
            // Written by the next flush that reaches Redis.
            self.mark_dirty(session.handle());
        }
        true
    }

    fn remove(&self, handle: &Handle) -> Option<Arc<Session>> {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(handle);
        self.pending_jars().remove(handle);
        self.local.remove(handle)
    }

    fn scan(&self, after: Option<Handle>, limit: usize) -> Vec<Arc<Session>> {
        self.local.scan(after, limit)
    }

    fn for_each(&self, visit: &mut dyn FnMut(&Arc<Session>)) {
        self.local.for_each(visit);
    }

    fn for_each_shared(
        &self,
        now: Millis,
        visit: &mut dyn FnMut(&Arc<Session>),
    ) -> Result<(), SessionError> {
        // Every index shard, `SSCAN` page by page (a handle added or removed during the
        // walk may or may not be seen; every other one is seen once).
        for shard in 0..SHARDS {
            let key = self.link.keys.index(shard);
            let mut cursor = 0u64;
            loop {
                let (next, handles): (u64, Vec<String>) = self
                    .link
                    .run("list", |conn| {
                        redis::cmd("SSCAN")
                            .arg(&key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(LIST_BATCH)
                            .query(conn)
                    })
                    .ok_or(SessionError::StoreDown)?;
                let (sessions, stale) = self.listed(handles, now).ok_or(SessionError::StoreDown)?;
                for session in &sessions {
                    visit(session);
                }
                if !stale.is_empty() {
                    // Left by a replica that died between ending a session and
                    // unlisting it, or expired: unlisted now.
                    let _ = self.link.run("list", |conn| {
                        redis::cmd("SREM").arg(&key).arg(&stale).query::<()>(conn)
                    });
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    fn reserve(&self, max: usize) -> bool {
        self.local.reserve(max)
    }

    fn release(&self) {
        self.local.release();
    }

    fn len(&self) -> usize {
        self.local.len()
    }

    fn file_earlier(&self, session: &Session, due: Millis) {
        self.local.file_earlier(session, due);
        self.mark_dirty(session.handle());
    }

    fn refile(&self, session: &Session, popped_from: Bucket, due: Option<Millis>) {
        self.local.refile(session, popped_from, due);
        if due.is_some() {
            self.mark_dirty(session.handle());
        }
    }

    fn pop_due(&self, now: Millis, max: usize, out: &mut Vec<DueEntry>) {
        self.remote_sweep(now);
        self.local.pop_due(now, max, out);
    }

    fn alias(&self, derived: &Handle) -> Option<Alias> {
        if let Some(alias) = self.local.alias(derived) {
            return Some(alias);
        }
        if self.local.contains(derived) {
            return None; // the original token of a session held here
        }
        let key = self.link.keys.alias(derived);
        let text: Option<String> = self
            .link
            .run("load", |conn| redis::cmd("GET").arg(&key).query(conn))
            .flatten();
        let alias = parse_alias(&text?)?;
        self.local.put_alias(*derived, alias);
        Some(alias)
    }

    fn put_alias(&self, derived: Handle, alias: Alias) {
        self.local.put_alias(derived, alias);
        self.write_alias(derived, alias);
    }

    fn update_alias(&self, derived: &Handle, change: impl FnOnce(&mut Alias)) {
        self.local.update_alias(derived, change);
        if let Some(alias) = self.local.alias(derived) {
            self.write_alias(*derived, alias);
        }
    }

    fn remove_alias(&self, derived: &Handle) {
        self.local.remove_alias(derived);
        let key = self.link.keys.alias(derived);
        let _ = self.link.run("rotate", |conn| {
            redis::cmd("DEL").arg(&key).query::<()>(conn)
        });
    }

    fn prune_aliases(&self, now: Millis) {
        self.local.prune_aliases(now);
    }

    fn rotation(&self, handle: &Handle) -> Option<Rotation> {
        if !self.local.contains(handle) {
            // Loading the session brings its rotation along.
            self.get(handle)?;
        }
        self.local.rotation(handle)
    }

    fn put_rotation(&self, handle: Handle, rotation: Rotation) -> Option<Rotation> {
        let previous = self.local.put_rotation(handle, rotation);
        self.write_rotation(handle, rotation);
        previous
    }

    fn update_rotation(&self, handle: &Handle, change: impl FnOnce(&mut Rotation)) {
        self.local.update_rotation(handle, change);
        if let Some(rotation) = self.local.rotation(handle) {
            self.write_rotation(*handle, rotation);
        }
    }

    fn remove_rotation(&self, handle: &Handle) -> Option<Rotation> {
        let removed = self.local.remove_rotation(handle);
        if removed.is_some() {
            let key = self.link.keys.session(handle);
            let _ = self.link.run("rotate", |conn| {
                redis::cmd("HDEL").arg(&key).arg("rot").query::<()>(conn)
            });
        }
        removed
    }

    fn remember_ended(&self, derived: Handle, at: Millis, cap: usize) {
        self.local.remember_ended(derived, at, cap);
        let key = self.link.keys.ended(&derived);
        let _ = self.link.run("end", |conn| {
            redis::cmd("SET")
                .arg(&key)
                .arg(at)
                .arg("PX")
                .arg(TOMBSTONE)
                .query::<()>(conn)
        });
    }

    fn ended_at(&self, derived: &Handle) -> Option<Millis> {
        if let Some(at) = self.local.ended_at(derived) {
            return Some(at);
        }
        let key = self.link.keys.ended(derived);
        self.link
            .run("load", |conn| {
                redis::cmd("GET").arg(&key).query::<Option<u64>>(conn)
            })
            .flatten()
    }

    fn forget_ended(&self, before: Millis) {
        self.local.forget_ended(before);
    }

    fn ended_len(&self) -> usize {
        self.local.ended_len()
    }

    fn jar(&self, handle: &Handle) -> Option<Jar> {
        // Redis's jar, unless this replica holds a change Redis has not got yet or
        // Redis cannot be read: then its own copy.
        if !self.pending_jars().contains(handle) {
            if let Some((jar, _)) = self.read_jar(handle) {
                self.keep_jar(handle, jar.clone());
                return jar;
            }
        }
        self.local.jar(handle)
    }

    fn put_jar(&self, handle: Handle, jar: Jar) {
        self.local.put_jar(handle, jar);
        self.pending_jars().insert(handle);
    }

    fn update_jar<R>(&self, handle: &Handle, mut change: impl FnMut(&mut Option<Jar>) -> R) -> R {
        // Read, change, write back if still at the version read; another replica's
        // write in between: again on its jar.
        if !self.pending_jars().contains(handle) {
            for _ in 0..JAR_ATTEMPTS {
                let Some((read, version)) = self.read_jar(handle) else {
                    break;
                };
                let mut slot = read.clone();
                let result = change(&mut slot);
                if slot == read {
                    self.keep_jar(handle, slot);
                    return result;
                }
                match self.write_jar(handle, slot.as_ref(), JarWrite::IfVersion(version)) {
                    Some(JarWritten::Raced) => continue,
                    Some(JarWritten::Yes) => {
                        self.keep_jar(handle, slot);
                        return result;
                    }
                    Some(JarWritten::Gone) | None => {
                        // Unreachable mid-way, or the record is gone (ended elsewhere,
                        // or lost by a Redis that restarted empty): the change is kept
                        // here, and written back by the next flush that reaches Redis
                        // (where an ended session takes no jar).
                        self.keep_jar(handle, slot);
                        if self.local.contains(handle) {
                            self.pending_jars().insert(*handle);
                        }
                        return result;
                    }
                }
            }
        }
        // Redis unreachable, a change of ours not written back yet, or the jar changed
        // by others on every attempt: change this replica's copy, written back by the
        // next flush (a session this replica does not hold has no copy here: the
        // change is made on nothing kept).
        if !self.local.contains(handle) {
            return change(&mut None);
        }
        let mut changed = false;
        let result = self.local.update_jar(handle, |slot| {
            let before = slot.clone();
            let result = change(slot);
            changed = *slot != before;
            result
        });
        if changed {
            self.pending_jars().insert(*handle);
        }
        result
    }

    fn remove_jar(&self, handle: &Handle) -> Option<Jar> {
        self.pending_jars().remove(handle);
        self.local.remove_jar(handle)
    }

    fn jar_count(&self) -> usize {
        self.local.jar_count()
    }

    fn rotations(&self) -> Vec<(Handle, Rotation)> {
        self.local.rotations()
    }

    fn aliases(&self) -> Vec<(Handle, Alias)> {
        self.local.aliases()
    }

    fn ended(&self) -> Vec<(Handle, Millis)> {
        self.local.ended()
    }

    fn jars(&self) -> Vec<(Handle, Jar)> {
        self.local.jars()
    }
}

impl RedisStorage {
    fn write_alias(&self, derived: Handle, alias: Alias) {
        let key = self.link.keys.alias(&derived);
        let value = format!("{} {}", alias.session, alias.retires_at);
        let _ = self.link.run("rotate", |conn| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(&value);
            if alias.retires_at != Millis::MAX {
                // Kept a little past its retirement; retirement is checked on use.
                cmd.arg("PX").arg(ROTATION_KEEP);
            }
            cmd.query::<()>(conn)
        });
    }

    fn write_rotation(&self, handle: Handle, rotation: Rotation) {
        let key = self.link.keys.session(&handle);
        let value = format!("{} {}", rotation.current, rotation.original_retires_at);
        let _ = self.link.run("rotate", |conn| {
            redis::cmd("HSET")
                .arg(&key)
                .arg("rot")
                .arg(&value)
                .query::<()>(conn)
        });
    }

    fn pending_jars(&self) -> std::sync::MutexGuard<'_, HashSet<Handle>> {
        self.jars_pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets this replica's copy of a jar (what it falls back on while Redis is
    /// unreachable, and what a snapshot saves) — for a session it holds: the copies
    /// are bounded by the cache.
    fn keep_jar(&self, handle: &Handle, jar: Option<Jar>) {
        match jar {
            Some(jar) if self.local.contains(handle) => self.local.put_jar(*handle, jar),
            Some(_) => {}
            None => {
                self.local.remove_jar(handle);
            }
        }
    }

    /// The jar Redis holds for the session (`None` if it holds none, or one that does
    /// not decode or is over the bounds) and its version; `None` if Redis could not be
    /// read.
    fn read_jar(&self, handle: &Handle) -> Option<(Option<Jar>, u64)> {
        let key = self.link.keys.session(handle);
        let (text, version): (Option<String>, Option<u64>) = self.link.run("jar", |conn| {
            redis::cmd("HMGET")
                .arg(&key)
                .arg("jar")
                .arg("jv")
                .query(conn)
        })?;
        let jar = text
            .and_then(|text| serde_json::from_str::<Jar>(&text).ok())
            .filter(Jar::within_bounds);
        Some((jar, version.unwrap_or(0)))
    }

    /// Writes the session's jar (`None` drops it) as `how` says; `None` if Redis
    /// could not be reached.
    fn write_jar(&self, handle: &Handle, jar: Option<&Jar>, how: JarWrite) -> Option<JarWritten> {
        let key = self.link.keys.session(handle);
        let mut cmd = self.link.eval(&self.link.scripts.jar, &key);
        jar_args(&mut cmd, jar, how);
        let written: i64 = self.link.run("jar", |conn| cmd.query(conn))?;
        Some(match written {
            1 => JarWritten::Yes,
            0 => JarWritten::Raced,
            _ => JarWritten::Gone,
        })
    }

    /// After a flush: writes back the jars changed here while Redis was unreachable
    /// (whatever Redis holds: the last writer wins) and, when Redis came back, every
    /// other jar this replica holds where Redis lost it.
    fn write_back_jars(&self, refill: bool) {
        let pending: Vec<Handle> = self.pending_jars().drain().collect();
        let mut writes: Vec<(Handle, Option<Jar>, JarWrite)> = pending
            .iter()
            .map(|handle| (*handle, self.local.jar(handle), JarWrite::Always))
            .collect();
        if refill {
            writes.extend(
                self.local
                    .jars()
                    .into_iter()
                    .filter(|(handle, _)| !pending.contains(handle))
                    .map(|(handle, jar)| (handle, Some(jar), JarWrite::IfAbsent)),
            );
        }
        if writes.is_empty() {
            return;
        }
        let cmds = writes
            .iter()
            .map(|(handle, jar, how)| {
                let mut cmd = self
                    .link
                    .eval(&self.link.scripts.jar, &self.link.keys.session(handle));
                jar_args(&mut cmd, jar.as_ref(), *how);
                cmd
            })
            .collect();
        let sent = self.link.run("jar", |conn| {
            Link::batch(conn, cmds, self.link.is_cluster())
        });
        if sent.is_none() {
            // Still unreachable: kept for the next flush (a refill is asked for again
            // when Redis comes back).
            self.pending_jars().extend(pending);
        }
    }
}

/// The arguments of a [`JAR`] call.
fn jar_args(cmd: &mut Cmd, jar: Option<&Jar>, how: JarWrite) {
    let encoded = jar
        .and_then(|jar| serde_json::to_string(jar).ok())
        .unwrap_or_default();
    let (mode, version) = match how {
        JarWrite::IfVersion(version) => ("cas", version),
        JarWrite::Always => ("any", 0),
        JarWrite::IfAbsent => ("absent", 0),
    };
    cmd.arg(mode).arg(version).arg(encoded);
}

/// How long a retiring alias stays in Redis: the rotation grace, and some slack.
const ROTATION_KEEP: Millis = 2 * super::ROTATION_GRACE;

/// Connects to Redis and agrees with the other replicas on the clock scale and the
/// keys (blocking: called once at start, before the store is built).
pub fn connect(config: &StoreConfig) -> Result<(Arc<Link>, Clock, Secrets), RedisStoreError> {
    let link = Link::new(config)?;
    let (clock, secrets) = shared_clock_and_secrets(&link)?;
    Ok((Arc::new(link), clock, secrets))
}

impl RedisStore {
    /// The policy over a Redis-backed cache on `link`.
    pub fn with_link(
        link: Arc<Link>,
        rules: Lifetime,
        max_sessions: usize,
        when_full: WhenFull,
        observer: Arc<dyn SessionObserver>,
    ) -> Result<Self, SessionError> {
        let storage = RedisStorage {
            local: MemoryStorage::default(),
            link,
            rules: rules.clone(),
            max_sessions,
            dirty: Mutex::new(HashSet::new()),
            jars_pending: Mutex::new(HashSet::new()),
            replica: uuid::Uuid::new_v4().simple().to_string(),
            end_hook_lease: AtomicU64::new(0),
            delivered: Mutex::new(HashSet::new()),
            owed: Mutex::new(Vec::new()),
            swept_at: AtomicU64::new(0),
        };
        Sessions::with_storage(storage, rules, max_sessions, when_full, observer)
    }

    /// Counts failed Redis operations with `sink` (set once).
    pub fn on_store_error(&self, sink: ErrorSink) {
        let _ = self.storage().link.on_error.set(sink);
    }

    /// An `end` hook is configured, and takes at most `worst_case` (all attempts):
    /// each end this replica wins is owed until [`SessionStore::end_hook_done`] says
    /// its hook is over, and another replica takes it over if this one stops first.
    ///
    /// [`SessionStore::end_hook_done`]: super::SessionStore::end_hook_done
    pub fn owe_end_hooks(&self, worst_case: Duration) {
        // Past the worst case, a margin for the flush that tells Redis it is over.
        let lease = crate::lifetime::millis(worst_case)
            .saturating_add(crate::lifetime::millis(FLUSH_INTERVAL))
            .saturating_add(OWED_MARGIN);
        self.storage()
            .end_hook_lease
            .store(lease.max(1), Ordering::Relaxed);
    }
}

/// The store's background work until `shutdown`: the touch flush every
/// [`FLUSH_INTERVAL`] (then once more), and the invalidation subscriber.
pub async fn run(
    store: Arc<RedisStore>,
    clock: Clock,
    secrets: Secrets,
    shutdown: CancellationToken,
) {
    let subscriber = tokio::spawn(subscribe(Arc::clone(&store), clock, shutdown.clone()));
    let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let (store, secrets) = (Arc::clone(&store), secrets.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let ended = store.storage().flush(&clock, &secrets);
            for handle in ended {
                store.ended_elsewhere(&handle, clock.now());
            }
        })
        .await;
        if stopping {
            break;
        }
    }
    subscriber.abort();
}

/// Applies other replicas' ends as they are published.
async fn subscribe(store: Arc<RedisStore>, clock: Clock, shutdown: CancellationToken) {
    use futures_util::StreamExt;
    let link = Arc::clone(&store.storage().link);
    let channel = link.keys.channel();
    loop {
        match link.client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    let mut messages = pubsub.on_message();
                    loop {
                        let message = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        let Some((replica, handle)) = payload.split_once(' ') else {
                            continue;
                        };
                        if replica == store.storage().replica {
                            continue;
                        }
                        if let Ok(handle) = handle.parse::<Handle>() {
                            store.ended_elsewhere(&handle, clock.now());
                        }
                    }
                }
                Err(_) => link.count("subscribe"),
            },
            Err(_) => link.count("subscribe"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(RETRY_AFTER_FAILURE)) => {}
        }
    }
}
