//! The million-session benchmark: what a large in-memory session population costs.
//!
//! ```text
//! cargo bench --bench sessions                      # 1,000,000 sessions, ~30 s
//! cargo bench --bench sessions -- --json            # also print the results as JSON
//! cargo bench --bench sessions -- --sessions 200000 --secs 1 --skip-gateway
//! ```
//!
//! It uses only the store's public interface ([`SessionStore`], [`MemoryStore::new`],
//! [`Lifetime::from_config`]) and the real gateway ([`server::start`]), so it keeps
//! measuring the same thing while the store's internals change. Sessions time out
//! after 120 s with `on_timeout = "end"`, so every session sits in the deadline index
//! and a due session ends (rather than starting a countdown).
//!
//! 1. **Memory.** Creates the sessions, each with its own browser key as real
//!    browsers would, and reports bytes per session two ways: live heap bytes from a
//!    counting global allocator in this binary (stable; the bytes asked for, before
//!    malloc's own per-block overhead of about 8–16 B) and resident memory from
//!    `/proc/self/statm` (what an operator sees; it misses capacity never written).
//!    Both include everything the store holds: sessions, the token and handle maps,
//!    the deadline index. The bench's own per-session tables (an `Arc` and a
//!    token/key pair) are subtracted. Hash tables grow in powers of two, so the
//!    figure depends on where the population sits between two resizes: just past one
//!    (as at 1,000,000) is the expensive end.
//!
//!    *With a cookie jar (1b):* then it gives every session a jar
//!    (`upstream.cookie_jar`) holding one PHP-style session cookie with a 32-byte
//!    value (`PHPSESSID=<32 hex digits>; Path=/; HttpOnly`), stored through the
//!    store's `update_jar` as the request path does, and reports what that adds per
//!    session, the same two ways. Sessions without a jar pay nothing for it (the jar
//!    is a side table), so the first figure is a session's cost either way.
//! 2. **Throughput.** Two threads for `--secs` each: `touch` (signal, then activity)
//!    on random pre-resolved sessions, then `resolve(token, key)` (the lookup every
//!    request does) with random credentials. `now` is read once per 256 operations.
//! 3. **Mass expiry.** One session in ten (100,000 of 1,000,000) is set to time out at
//!    the same instant (a per-session timeout via `set_timeout`, from a common
//!    activity instant), and the real sweeper ends them.
//!    - *Store level:* `sweeper::run` on its own runtime thread, ends recorded by an
//!      observer; meanwhile another thread does resolve + touch on live sessions in a
//!      loop. Reports how long after the deadline the first and last ends happened,
//!      the longest pause between two ends (a long one means the sweeper thread was
//!      descheduled, not that the sweep is slow), and lookup latency during the sweep
//!      against a baseline window just before the deadline.
//!    - *Gateway:* the real gateway (2 worker threads, sweeper included) in front of a
//!      trivial upstream, with 4 HTTP/1.1 clients on their own runtime sending
//!      requests that carry live sessions' tokens. Reports request latency during the
//!      sweep against the baseline window.
//!
//! Numbers are noisy on a shared machine; latency windows report their sample counts.
//! `cargo test` does not run this (bench targets are not tests), and the binary does
//! nothing unless `cargo bench` started it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sessiongate::config::{Config, Duration as CfgDuration, OnTimeout, SessionConfig, WhenFull};
use sessiongate::server;
use sessiongate::session::events::{SessionEvent, SessionObserver};
use sessiongate::session::jar::{Jar, Site};
use sessiongate::session::store::{MemoryStore, SessionStore};
use sessiongate::session::{
    sweeper, BrowserKey, Clock, CreatedKind, Lifetime, Millis, Session, Token, Touch,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------
// Counting allocator

/// The system allocator, counting live bytes and blocks.
struct CountingAlloc;

static HEAP_BYTES: AtomicIsize = AtomicIsize::new(0);
static HEAP_BLOCKS: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

fn counted(ptr: *mut u8, size: usize) -> *mut u8 {
    if !ptr.is_null() {
        HEAP_BYTES.fetch_add(size as isize, Ordering::Relaxed);
        HEAP_BLOCKS.fetch_add(1, Ordering::Relaxed);
    }
    ptr
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(unsafe { System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HEAP_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        HEAP_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            HEAP_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

/// Memory in use at one instant.
#[derive(Debug, Clone, Copy)]
struct Usage {
    heap_bytes: isize,
    heap_blocks: isize,
    /// 0 where `/proc/self/statm` is unavailable.
    rss_bytes: u64,
}

impl Usage {
    fn now() -> Usage {
        Usage {
            heap_bytes: HEAP_BYTES.load(Ordering::Relaxed),
            heap_blocks: HEAP_BLOCKS.load(Ordering::Relaxed),
            rss_bytes: rss_bytes(),
        }
    }
}

/// Resident set size: the second field of `/proc/self/statm`, in pages.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

// ---------------------------------------------------------------------------------
// Options and small helpers

struct Options {
    sessions: usize,
    secs: f64,
    json: bool,
    gateway: bool,
}

const USAGE: &str =
    "usage: cargo bench --bench sessions [-- --sessions N] [--secs S] [--json] [--skip-gateway]";

impl Options {
    /// `None` unless started by `cargo bench` (which passes `--bench`), so that
    /// `cargo test --all-targets` does not run a 40-second benchmark.
    fn parse() -> Result<Option<Options>> {
        let mut options = Options {
            sessions: 1_000_000,
            secs: 2.0,
            json: false,
            gateway: true,
        };
        let mut benching = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => benching = true,
                "--json" => options.json = true,
                "--skip-gateway" => options.gateway = false,
                "--sessions" => {
                    options.sessions = args.next().context(USAGE)?.parse().context(USAGE)?
                }
                "--secs" => options.secs = args.next().context(USAGE)?.parse().context(USAGE)?,
                _ => {} // cargo passes filters and flags meant for libtest harnesses
            }
        }
        if options.sessions < 1_000 {
            bail!("--sessions must be at least 1000");
        }
        Ok(benching.then_some(options))
    }
}

/// One session in [`EXPIRE_EVERY`] is made to expire in the mass-expiry runs.
const EXPIRE_EVERY: usize = 10;

fn expires(index: usize) -> bool {
    index.is_multiple_of(EXPIRE_EVERY)
}

/// xorshift64*: cheap, and good enough to pick sessions at random.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// A random index below `n` of a session that does not expire.
    fn live(&mut self, n: usize) -> usize {
        let index = self.below(n);
        if expires(index) {
            (index + 1) % n
        } else {
            index
        }
    }
}

fn session_config(sessions: usize) -> SessionConfig {
    SessionConfig {
        timeout: CfgDuration::from_secs(120),
        on_timeout: OnTimeout::End,
        max_sessions: sessions * 2,
        when_full: WhenFull::Reject,
        ..SessionConfig::default()
    }
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_sec(n: f64, elapsed: Duration) -> f64 {
    n / elapsed.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------------
// Latency samples and windows

/// One timed operation: when it started (µs since the bench's epoch) and how long it
/// took (ns, saturating at ~4 s).
#[derive(Debug, Clone, Copy)]
struct Sample {
    start_us: u32,
    latency_ns: u32,
}

impl Sample {
    fn new(epoch: Instant, start: Instant, end: Instant) -> Sample {
        Sample {
            start_us: start.duration_since(epoch).as_micros() as u32,
            latency_ns: u32::try_from(end.duration_since(start).as_nanos()).unwrap_or(u32::MAX),
        }
    }
}

/// Latency of the operations that started within a time window.
#[derive(Debug, Serialize)]
struct Window {
    from_ms: f64,
    to_ms: f64,
    samples: usize,
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

impl Window {
    /// `from` and `to` are offsets from the epoch the samples were taken against.
    fn of(samples: &[Sample], from: Duration, to: Duration) -> Window {
        let (lo, hi) = (from.as_micros() as u32, to.as_micros() as u32);
        let mut latencies: Vec<u32> = samples
            .iter()
            .filter(|s| (lo..=hi).contains(&s.start_us))
            .map(|s| s.latency_ns)
            .collect();
        latencies.sort_unstable();
        let quantile = |q: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let rank = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
            f64::from(latencies[rank - 1]) / 1e3
        };
        Window {
            from_ms: from.as_secs_f64() * 1e3,
            to_ms: to.as_secs_f64() * 1e3,
            samples: latencies.len(),
            per_sec: per_sec(latencies.len() as f64, to.saturating_sub(from)),
            p50_us: quantile(0.50),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            max_us: quantile(1.0),
        }
    }

    fn print(&self, label: &str) {
        println!(
            "   {label:<13} {:>9} {:>11}/s {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            thousands(self.samples as f64),
            thousands(self.per_sec),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        );
    }
}

fn print_window_header(what: &str) {
    println!(
        "   {what:<13} {:>9} {:>13} {:>9} {:>9} {:>9} {:>9}",
        "samples", "rate", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
}

// ---------------------------------------------------------------------------------
// Session ends, as the store reports them

/// Records when each `Ended` event happened.
struct EndCounter {
    epoch: Instant,
    /// Nanoseconds since `epoch`, in the order the events came.
    ends: Mutex<Vec<u64>>,
}

impl EndCounter {
    fn new(epoch: Instant) -> EndCounter {
        EndCounter {
            epoch,
            ends: Mutex::new(Vec::new()),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self) -> usize {
        self.times().len()
    }

    /// Offsets from the epoch of the first and the last end after the first
    /// `skip`, and the longest pause between two consecutive ones.
    fn span(&self, skip: usize) -> Option<(Duration, Duration, Duration)> {
        let times = self.times();
        let times = times.get(skip..)?;
        let (first, last) = (*times.first()?, *times.last()?);
        let gap = times.windows(2).map(|w| w[1].saturating_sub(w[0])).max();
        Some((
            Duration::from_nanos(first),
            Duration::from_nanos(last),
            Duration::from_nanos(gap.unwrap_or(0)),
        ))
    }
}

impl SessionObserver for EndCounter {
    fn observe(&self, event: &SessionEvent<'_>) {
        if let SessionEvent::Ended { .. } = event {
            let at = self.epoch.elapsed().as_nanos() as u64;
            self.times().push(at);
        }
    }
}

// ---------------------------------------------------------------------------------
// 1. Memory

/// A store full of sessions, and what the bench keeps to reach them.
struct Population {
    store: Arc<MemoryStore>,
    clock: Clock,
    ends: Arc<EndCounter>,
    sessions: Vec<Arc<Session>>,
    credentials: Vec<(Token, BrowserKey)>,
}

#[derive(Debug, Serialize)]
struct MemoryReport {
    sessions: usize,
    create_secs: f64,
    creates_per_sec: f64,
    heap_bytes_per_session: f64,
    heap_blocks_per_session: f64,
    rss_bytes_per_session: f64,
    session_struct_bytes: usize,
    target_bytes_per_session: usize,
}

fn memory(sessions: usize, epoch: Instant) -> Result<(Population, MemoryReport)> {
    let config = session_config(sessions);
    let ends = Arc::new(EndCounter::new(epoch));
    let clock = Clock::new();
    let before = Usage::now();
    let store = Arc::new(
        MemoryStore::new(
            Lifetime::from_config(&config),
            config.max_sessions,
            config.when_full,
            ends.clone(),
        )
        .expect("entropy"),
    );
    // The bench's own tables, subtracted below: sized exactly, filled completely.
    let mut arcs = Vec::with_capacity(sessions);
    let mut credentials = Vec::with_capacity(sessions);
    let own_bytes = arcs.capacity() * size_of::<Arc<Session>>()
        + credentials.capacity() * size_of::<(Token, BrowserKey)>();
    let started = Instant::now();
    for _ in 0..sessions {
        let key = BrowserKey::generate()?;
        let created = store.create(&key, None, CreatedKind::New, None, clock.now())?;
        arcs.push(created.session);
        credentials.push((created.token, key));
    }
    let create_time = started.elapsed();
    let after = Usage::now();
    if store.len() != sessions {
        bail!("the store holds {} sessions, not {sessions}", store.len());
    }

    let n = sessions as f64;
    let heap = (after.heap_bytes - before.heap_bytes) as f64 - own_bytes as f64;
    let own_blocks = 2; // the two tables
    let blocks = (after.heap_blocks - before.heap_blocks - own_blocks) as f64;
    let rss = after.rss_bytes as f64 - before.rss_bytes as f64 - own_bytes as f64;
    let report = MemoryReport {
        sessions,
        create_secs: create_time.as_secs_f64(),
        creates_per_sec: per_sec(n, create_time),
        heap_bytes_per_session: heap / n,
        heap_blocks_per_session: blocks / n,
        rss_bytes_per_session: rss / n,
        session_struct_bytes: size_of::<Session>(),
        target_bytes_per_session: 200,
    };
    println!(
        "1. Memory: {} live sessions (timeout 120 s: every one in the deadline index)",
        thousands(n)
    );
    println!(
        "   created in {:.2} s ({} sessions/s, each with its own browser key)",
        report.create_secs,
        thousands(report.creates_per_sec)
    );
    println!(
        "   heap (counting allocator)  {:>6.1} B/session in {:.2} blocks/session (+ malloc's ~8-16 B/block)",
        report.heap_bytes_per_session, report.heap_blocks_per_session
    );
    println!(
        "   resident (/proc statm)     {:>6.1} B/session",
        report.rss_bytes_per_session
    );
    println!(
        "   size_of::<Session>() = {} B (+16 B of Arc counts per session allocation)",
        report.session_struct_bytes
    );
    println!(
        "   target <= 200 B/session: {} (session, handle map and deadline index included; the bench's own {} B/session excluded)",
        if report.rss_bytes_per_session <= 200.0 && report.heap_bytes_per_session <= 200.0 {
            "met"
        } else {
            "NOT met"
        },
        own_bytes / sessions
    );
    let population = Population {
        store,
        clock,
        ends,
        sessions: arcs,
        credentials,
    };
    Ok((population, report))
}

#[derive(Debug, Serialize)]
struct JarReport {
    jars: usize,
    cookie_value_bytes: usize,
    heap_bytes_per_session: f64,
    heap_blocks_per_session: f64,
    rss_bytes_per_session: f64,
}

/// 1b. One jar with one 32-byte session cookie for every session.
fn jar_memory(population: &Population) -> Result<JarReport> {
    let site = Site {
        host: "app.example",
        path: "/",
        secure: false,
    };
    let now = population.clock.wall(population.clock.now());
    let before = Usage::now();
    let mut cookie = String::with_capacity(64);
    for (i, session) in population.sessions.iter().enumerate() {
        use std::fmt::Write as _;
        cookie.clear();
        let value = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let _ = write!(cookie, "PHPSESSID={value:032x}; Path=/; HttpOnly");
        population
            .store
            .update_jar(session, &mut |slot: &mut Option<Jar>| {
                slot.get_or_insert_with(Jar::default)
                    .store(cookie.as_bytes(), &site, now);
            });
    }
    let after = Usage::now();
    let jars = population.store.jar_count();
    if jars != population.sessions.len() {
        bail!("{jars} jars for {} sessions", population.sessions.len());
    }
    let n = jars as f64;
    let report = JarReport {
        jars,
        cookie_value_bytes: 32,
        heap_bytes_per_session: (after.heap_bytes - before.heap_bytes) as f64 / n,
        heap_blocks_per_session: (after.heap_blocks - before.heap_blocks) as f64 / n,
        rss_bytes_per_session: (after.rss_bytes as f64 - before.rss_bytes as f64) / n,
    };
    println!(
        "\n1b. Cookie jars: one PHPSESSID (32-byte value, Path=/, HttpOnly) in each of {} sessions",
        thousands(n)
    );
    println!(
        "   heap (counting allocator)  {:>6.1} B/session more in {:.2} blocks/session",
        report.heap_bytes_per_session, report.heap_blocks_per_session
    );
    println!(
        "   resident (/proc statm)     {:>6.1} B/session more",
        report.rss_bytes_per_session
    );
    Ok(report)
}

// ---------------------------------------------------------------------------------
// 2. Throughput

#[derive(Debug, Serialize)]
struct ThroughputReport {
    threads: usize,
    secs: f64,
    touch_signal_per_sec: f64,
    touch_activity_per_sec: f64,
    resolve_per_sec: f64,
}

const THREADS: usize = 2;

/// Runs `op` on [`THREADS`] threads for `secs`; returns operations per second.
fn run_threads(clock: Clock, secs: f64, op: impl Fn(&mut Rng, Millis) + Sync) -> f64 {
    const BATCH: u64 = 256;
    let run_for = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let total: u64 = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let op = &op;
                scope.spawn(move || {
                    let mut rng = Rng::new(t as u64 + 1);
                    let mut done = 0u64;
                    loop {
                        let now = clock.now();
                        for _ in 0..BATCH {
                            op(&mut rng, now);
                        }
                        done += BATCH;
                        if done.is_multiple_of(BATCH * 16) && started.elapsed() >= run_for {
                            return done;
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    per_sec(total as f64, started.elapsed())
}

fn throughput(population: &Population, secs: f64) -> ThroughputReport {
    let Population {
        store,
        clock,
        sessions,
        credentials,
        ..
    } = population;
    let n = sessions.len();
    let touch = |kind: Touch| {
        run_threads(*clock, secs, |rng, now| {
            std::hint::black_box(store.touch(&sessions[rng.below(n)], kind, now));
        })
    };
    let touch_signal_per_sec = touch(Touch::Signal);
    let touch_activity_per_sec = touch(Touch::Activity);
    let resolve_per_sec = run_threads(*clock, secs, |rng, now| {
        let (token, key) = &credentials[rng.below(n)];
        std::hint::black_box(store.resolve(token, key, now));
    });
    let report = ThroughputReport {
        threads: THREADS,
        secs,
        touch_signal_per_sec,
        touch_activity_per_sec,
        resolve_per_sec,
    };
    println!(
        "\n2. Throughput: {THREADS} threads, {secs} s each, random sessions among {}",
        thousands(n as f64)
    );
    println!(
        "   touch(Signal)         {:>12}/s",
        thousands(report.touch_signal_per_sec)
    );
    println!(
        "   touch(Activity)       {:>12}/s",
        thousands(report.touch_activity_per_sec)
    );
    println!(
        "   resolve(token, key)   {:>12}/s",
        thousands(report.resolve_per_sec)
    );
    report
}

// ---------------------------------------------------------------------------------
// 3. Mass expiry

/// How long after they are set the expiring sessions come due.
const EXPIRE_AFTER_MS: Millis = 2_000;
/// The baseline window: this long before the deadline, up to it.
const BASELINE: Duration = Duration::from_millis(1_500);
/// Give up waiting for the sweep this long after the deadline.
const SWEEP_GIVE_UP: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize)]
struct ExpiryReport {
    sessions: usize,
    expiring: usize,
    ended: usize,
    /// Setting the common deadline (touch + `set_timeout` for every expiring session).
    setup_ms: f64,
    /// From the deadline to the first and the last end.
    first_end_after_deadline_ms: f64,
    last_end_after_deadline_ms: f64,
    /// From the first end to the last: the sweep itself.
    sweep_ms: f64,
    ends_per_sec: f64,
    longest_pause_between_ends_ms: Option<f64>,
    /// Lookups or requests that found no session, or failed.
    misses: usize,
    baseline: Window,
    during_sweep: Window,
}

impl ExpiryReport {
    fn print(&self, what: &str) {
        println!(
            "   {} of {} sessions due at one instant (common deadline set in {:.1} ms)",
            thousands(self.expiring as f64),
            thousands(self.sessions as f64),
            self.setup_ms
        );
        println!(
            "   ended {}: first {:.0} ms after the deadline, last {:.0} ms after; the sweep took {:.1} ms ({} ends/s)",
            thousands(self.ended as f64),
            self.first_end_after_deadline_ms,
            self.last_end_after_deadline_ms,
            self.sweep_ms,
            thousands(self.ends_per_sec)
        );
        if let Some(pause) = self.longest_pause_between_ends_ms {
            println!("   longest pause between two consecutive ends: {pause:.1} ms");
        }
        print_window_header(what);
        self.baseline.print("baseline");
        self.during_sweep.print("during sweep");
        if self.misses > 0 {
            println!(
                "   !! {} operations found no live session or failed",
                self.misses
            );
        }
    }
}

/// Gives every expiring session the same deadline, `EXPIRE_AFTER_MS` from now.
/// Returns the deadline as an offset from `epoch`.
fn set_common_deadline(
    store: &dyn SessionStore,
    clock: Clock,
    expiring: &[Arc<Session>],
    epoch: Instant,
) -> Duration {
    let now = clock.now();
    let deadline = epoch.elapsed() + Duration::from_millis(EXPIRE_AFTER_MS);
    for session in expiring {
        // A common last activity, then a timeout that ends the session at now + 2 s.
        store.touch(session, Touch::Activity, now);
        store.set_timeout(session, EXPIRE_AFTER_MS, now);
    }
    deadline
}

/// What one mass-expiry run observed (offsets from the bench's epoch).
struct Sweep {
    sessions: usize,
    expiring: usize,
    ended: usize,
    setup: Duration,
    deadline: Duration,
    first_end: Duration,
    last_end: Duration,
    /// The longest pause between two consecutive ends, where each end is seen.
    longest_pause: Option<Duration>,
    misses: usize,
}

impl Sweep {
    fn report(&self, samples: &[Sample]) -> ExpiryReport {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let sweep = self.last_end.saturating_sub(self.first_end);
        ExpiryReport {
            sessions: self.sessions,
            expiring: self.expiring,
            ended: self.ended,
            setup_ms: ms(self.setup),
            first_end_after_deadline_ms: ms(self.first_end) - ms(self.deadline),
            last_end_after_deadline_ms: ms(self.last_end) - ms(self.deadline),
            sweep_ms: ms(sweep),
            ends_per_sec: per_sec(self.ended as f64, sweep),
            longest_pause_between_ends_ms: self.longest_pause.map(ms),
            misses: self.misses,
            baseline: Window::of(
                samples,
                self.deadline.saturating_sub(BASELINE),
                self.deadline,
            ),
            during_sweep: Window::of(samples, self.first_end, self.last_end),
        }
    }
}

/// Store level: the real sweeper task, and lookups from another thread.
fn store_expiry(population: &Population, epoch: Instant) -> Result<ExpiryReport> {
    let Population {
        store,
        clock,
        ends,
        sessions,
        credentials,
    } = population;
    let n = sessions.len();
    let expiring: Vec<Arc<Session>> = (0..n)
        .filter(|&i| expires(i))
        .map(|i| Arc::clone(&sessions[i]))
        .collect();
    let ended_before = ends.ended();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sweeper")
        .enable_time()
        .build()?;
    let shutdown = CancellationToken::new();
    let dyn_store: Arc<dyn SessionStore> = store.clone();
    runtime.spawn(sweeper::run(dyn_store, *clock, shutdown.clone()));

    let stop = AtomicBool::new(false);
    let (samples, misses, setup, deadline) = thread::scope(|scope| {
        let lookups = scope.spawn(|| {
            let mut rng = Rng::new(7);
            let mut samples = Vec::with_capacity(16 << 20);
            let mut misses = 0;
            while !stop.load(Ordering::Relaxed) {
                let (token, key) = &credentials[rng.live(n)];
                let now = clock.now();
                let start = Instant::now();
                match store.resolve(token, key, now) {
                    Some(resolved) => {
                        store.touch(&resolved.session, Touch::Signal, now);
                    }
                    None => misses += 1,
                }
                samples.push(Sample::new(epoch, start, Instant::now()));
            }
            (samples, misses)
        });
        thread::sleep(BASELINE + Duration::from_millis(200));
        let setup_started = Instant::now();
        let deadline = set_common_deadline(store.as_ref(), *clock, &expiring, epoch);
        let setup = setup_started.elapsed();
        let give_up = Instant::now() + Duration::from_millis(EXPIRE_AFTER_MS) + SWEEP_GIVE_UP;
        while ends.ended() - ended_before < expiring.len() && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let (samples, misses) = lookups.join().unwrap_or_default();
        (samples, misses, setup, deadline)
    });
    shutdown.cancel();
    runtime.shutdown_timeout(Duration::from_secs(1));

    let ended = ends.ended() - ended_before;
    let (first_end, last_end, pause) =
        ends.span(ended_before)
            .unwrap_or((deadline, deadline, Duration::ZERO));
    let report = Sweep {
        sessions: n,
        expiring: expiring.len(),
        ended,
        setup,
        deadline,
        first_end,
        last_end,
        longest_pause: Some(pause),
        misses,
    }
    .report(&samples);
    println!("\n3a. Mass expiry, store level: real sweeper::run (tick 250 ms, chunks of 2048) on its own thread");
    report.print("resolve+touch");
    if ended != expiring.len() {
        bail!(
            "only {ended} of {} sessions ended within {SWEEP_GIVE_UP:?}",
            expiring.len()
        );
    }
    Ok(report)
}

/// Concurrent HTTP clients in the gateway run.
const CLIENTS: usize = 4;

/// The upstream: 200 `ok` when the gateway sent a session handle, 409 otherwise.
async fn serve_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                if !request.headers().contains_key("x-session") {
                    *response.status_mut() = StatusCode::CONFLICT;
                }
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One client: requests as fast as answers come, each for a random live session.
async fn client(
    http: reqwest::Client,
    url: String,
    credentials: Arc<Vec<(HeaderValue, HeaderValue)>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> (Vec<Sample>, usize) {
    let mut rng = Rng::new(seed);
    let mut samples = Vec::with_capacity(1 << 20);
    let mut failures = 0;
    while !stop.load(Ordering::Relaxed) {
        let (token, cookie) = &credentials[rng.below(credentials.len())];
        let start = Instant::now();
        let answer = http
            .get(&url)
            .header("x-session-token", token.clone())
            .header("cookie", cookie.clone())
            .send()
            .await;
        let ok = match answer {
            Ok(response) => response.status() == StatusCode::OK && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        samples.push(Sample::new(epoch, start, Instant::now()));
        failures += usize::from(!ok);
    }
    (samples, failures)
}

/// The real gateway, with HTTP clients measuring request latency.
fn gateway_expiry(sessions: usize, epoch: Instant) -> Result<ExpiryReport> {
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load")
        .enable_all()
        .build()?;
    let upstream = load.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let upstream_addr = upstream.local_addr()?;
    load.spawn(serve_upstream(upstream));

    let mut config = Config::default();
    config.listen.address = "127.0.0.1:0".parse()?;
    config.admin.address = "127.0.0.1:0".parse()?;
    config.listen.drain_timeout = CfgDuration::from_secs(1);
    config.upstream.url = format!("http://{upstream_addr}");
    config.session = session_config(sessions);
    let gateway = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gateway")
        .enable_all()
        .build()?;
    let running = gateway.block_on(server::start(config))?;
    let store = Arc::clone(&running.store);
    let clock = running.clock;

    let mut expiring = Vec::with_capacity(sessions / EXPIRE_EVERY + 1);
    let mut credentials = Vec::new();
    for i in 0..sessions {
        let key = BrowserKey::generate()?;
        let created = store.create(&key, None, CreatedKind::New, None, clock.now())?;
        if expires(i) {
            expiring.push(created.session);
        } else if i % 100 == 1 {
            credentials.push((
                HeaderValue::from_str(&created.token.encode())?,
                HeaderValue::from_str(&format!("sg_browser={}", key.encode()))?,
            ));
        }
    }
    let credentials = Arc::new(credentials);

    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("http://{}/", running.public_addr);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            load.spawn(client(
                http.clone(),
                url.clone(),
                Arc::clone(&credentials),
                c as u64 + 11,
                Arc::clone(&stop),
                epoch,
            ))
        })
        .collect();
    drop(http);

    // Warm up, then a baseline window, then the deadline. Ends are seen by polling
    // the store's size (the gateway's observers are its own).
    thread::sleep(BASELINE + Duration::from_millis(500));
    let live_before = store.len();
    let setup_started = Instant::now();
    let deadline = set_common_deadline(store.as_ref(), clock, &expiring, epoch);
    let setup = setup_started.elapsed();
    let give_up = Instant::now() + Duration::from_millis(EXPIRE_AFTER_MS) + SWEEP_GIVE_UP;
    let mut first = None;
    let mut last = None;
    while Instant::now() < give_up {
        let ended = live_before.saturating_sub(store.len());
        if ended > 0 && first.is_none() {
            first = Some(epoch.elapsed());
        }
        if ended >= expiring.len() {
            last = Some(epoch.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut failures = 0;
    for handle in clients {
        let (mut s, f) = load.block_on(handle)?;
        samples.append(&mut s);
        failures += f;
    }
    let ended = live_before.saturating_sub(store.len());

    running.shutdown();
    let drained = gateway
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), running.wait()).await });
    if drained.is_err() {
        eprintln!("   (the gateway did not stop within 5 s)");
    }
    drop(store);
    gateway.shutdown_timeout(Duration::from_secs(1));
    load.shutdown_timeout(Duration::from_secs(1));

    let (Some(first_end), Some(last_end)) = (first, last) else {
        bail!(
            "only {ended} of {} sessions ended within {SWEEP_GIVE_UP:?}",
            expiring.len()
        );
    };
    let report = Sweep {
        sessions,
        expiring: expiring.len(),
        ended,
        setup,
        deadline,
        first_end,
        last_end,
        longest_pause: None,
        misses: failures,
    }
    .report(&samples);
    println!(
        "\n3b. Mass expiry, real gateway: 2 worker threads (sweeper included), {CLIENTS} HTTP/1.1 clients on another thread"
    );
    report.print("HTTP GET");
    println!("   (ends seen by polling the store's size every 1 ms)");
    Ok(report)
}

// ---------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Report {
    profile: &'static str,
    cores: usize,
    memory: MemoryReport,
    jar_memory: JarReport,
    throughput: ThroughputReport,
    store_expiry: ExpiryReport,
    gateway_expiry: Option<ExpiryReport>,
}

fn main() -> Result<()> {
    let Some(options) = Options::parse()? else {
        eprintln!("sessions benchmark: not started by `cargo bench`, nothing to do\n{USAGE}");
        return Ok(());
    };
    let epoch = Instant::now();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "sessiongate million-session benchmark ({profile} build, {cores} cores, {} sessions)\n",
        thousands(options.sessions as f64)
    );

    let (population, memory) = memory(options.sessions, epoch)?;
    let jar_memory = jar_memory(&population)?;
    let throughput = throughput(&population, options.secs);
    let store_expiry = store_expiry(&population, epoch)?;
    drop(population);
    let gateway_expiry = if options.gateway {
        Some(gateway_expiry(options.sessions, epoch)?)
    } else {
        None
    };

    if options.json {
        let report = Report {
            profile,
            cores,
            memory,
            jar_memory,
            throughput,
            store_expiry,
            gateway_expiry,
        };
        println!("\n{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
