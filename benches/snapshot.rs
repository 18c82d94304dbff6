//! The snapshot benchmark: writing and restoring `persist.path` at 1,000,000 sessions.
//!
//! ```text
//! cargo bench --bench snapshot                       # 1,000,000 sessions
//! cargo bench --bench snapshot -- --sessions 200000
//! ```
//!
//! Fills a [`MemoryStore`] (one in ten sessions forked, so it carries a parent; one in
//! four counted against a client address), then writes snapshots with the gateway's
//! own [`Persister`] — the table copied as `Arc`s shard by shard, encoded and written
//! (`fsync`, rename, `fsync` of the directory) on a blocking thread — while two
//! threads do what requests do, `resolve(token, key)` + `touch`, and a third creates
//! sessions (inserts are what a shard's read lock, held while its `Arc`s are copied,
//! can hold up). Reports the file size, the copy and write times, and the longest
//! single operation of each kind during the writes against the same threads' longest
//! in an equal window before them (the machine's own noise). Then reads the file back
//! and restores it into a fresh store (the restart's cost).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiongate::config::{Duration as Cfg, SessionConfig, WhenFull};
use sessiongate::session::events::Observers;
use sessiongate::session::persist::{self, Persister};
use sessiongate::session::store::{MemoryStore, SessionStore};
use sessiongate::session::token::Secrets;
use sessiongate::session::{BrowserKey, Clock, CreatedKind, Lifetime, Token, Touch};

fn store(secrets: &Secrets, max: usize) -> MemoryStore {
    let config = SessionConfig {
        timeout: Cfg::from_secs(3600),
        max_sessions: max,
        ..SessionConfig::default()
    };
    MemoryStore::new(
        Lifetime::from_config(&config),
        max,
        WhenFull::Reject,
        Arc::new(Observers::new()),
    )
    .expect("entropy")
    .with_secrets(secrets)
}

/// Longest single operation, in µs, during snapshot writes and in a quiet window.
#[derive(Default)]
struct Worst {
    quiet: AtomicU64,
    during: AtomicU64,
    ops_during: AtomicU64,
}

fn main() {
    let mut sessions = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--sessions" {
            sessions = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--sessions N");
        }
    }
    let secrets = Secrets::generate().expect("entropy");
    let clock = Clock::new();
    let table = Arc::new(store(&secrets, sessions * 2));
    let started = Instant::now();
    let mut credentials: Vec<(Token, BrowserKey)> = Vec::with_capacity(sessions);
    let key = BrowserKey::generate().expect("entropy");
    let mut last = None;
    for i in 0..sessions {
        let parent = (i % 10 == 9).then_some(last).flatten();
        let client = (i % 4 == 0).then(|| std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8]));
        let created = table
            .create(&key, parent, CreatedKind::New, client, clock.now())
            .expect("created");
        last = Some(created.session.handle());
        credentials.push((created.token, key));
    }
    eprintln!("filled {sessions} sessions in {:.1?}", started.elapsed());

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sessions.snap");
    let persister = Persister::new(path.clone(), Arc::clone(&table), clock, secrets.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let credentials = Arc::new(credentials);
    let stop = Arc::new(AtomicBool::new(false));
    // 1 while a snapshot is written, 3 in the quiet baseline window, 0 otherwise.
    let phase = Arc::new(AtomicU64::new(0));
    let lookups = Arc::new(Worst::default());
    let inserts = Arc::new(Worst::default());
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (table, credentials, stop, phase, worst) = (
            Arc::clone(&table),
            Arc::clone(&credentials),
            Arc::clone(&stop),
            Arc::clone(&phase),
            Arc::clone(&lookups),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = (t as usize * 7919) % credentials.len();
            while !stop.load(Ordering::Relaxed) {
                let (token, key) = &credentials[i];
                let op = Instant::now();
                let now = clock.now();
                if let Some(found) = table.resolve(token, key, now) {
                    table.touch(&found.session, Touch::Activity, now);
                }
                record(&worst, &phase, op.elapsed());
                i = (i + 104_729) % credentials.len();
            }
        }));
    }
    {
        let (table, stop, phase, worst) = (
            Arc::clone(&table),
            Arc::clone(&stop),
            Arc::clone(&phase),
            Arc::clone(&inserts),
        );
        threads.push(std::thread::spawn(move || {
            let key = BrowserKey::generate().expect("entropy");
            while !stop.load(Ordering::Relaxed) {
                let op = Instant::now();
                let created = table.create(&key, None, CreatedKind::New, None, clock.now());
                record(&worst, &phase, op.elapsed());
                if let Ok(created) = created {
                    table.end(
                        &created.session,
                        sessiongate::session::EndReason::Admin,
                        clock.now(),
                    );
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(500));
    let mut results = Vec::new();
    for _ in 0..3 {
        phase.store(1, Ordering::Relaxed);
        let write_started = Instant::now();
        let stats = runtime
            .block_on(persister.save())
            .expect("snapshot written");
        let window = write_started.elapsed();
        phase.store(0, Ordering::Relaxed);
        results.push((stats, window));
        phase.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
    }
    // The quiet baseline: the same threads, as long as one write, no snapshot.
    let quiet = results[0].1;
    phase.store(3, Ordering::Relaxed);
    std::thread::sleep(quiet);
    phase.store(0, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("worker");
    }

    let bytes = std::fs::metadata(&path).expect("written").len();
    println!("snapshot of {sessions} sessions:");
    println!(
        "  file size          {bytes} bytes ({:.1} MB, {:.1} B/session)",
        bytes as f64 / 1e6,
        bytes as f64 / sessions as f64
    );
    for (i, (stats, window)) in results.iter().enumerate() {
        println!(
            "  write {}            copy {:.1?} + encode/write/fsync/rename {:.1?} = {:.1?}",
            i + 1,
            stats.view,
            stats.write,
            window
        );
    }
    println!(
        "  longest resolve+touch: {} µs during writes ({} ops), {} µs in an equal quiet window",
        lookups.during.load(Ordering::Relaxed),
        lookups.ops_during.load(Ordering::Relaxed),
        lookups.quiet.load(Ordering::Relaxed),
    );
    println!(
        "  longest create:        {} µs during writes ({} ops), {} µs in an equal quiet window",
        inserts.during.load(Ordering::Relaxed),
        inserts.ops_during.load(Ordering::Relaxed),
        inserts.quiet.load(Ordering::Relaxed),
    );

    // The restart's side: read, decode, restore.
    let started = Instant::now();
    let snapshot = persist::read_file(&path)
        .expect("readable")
        .expect("present");
    let read = started.elapsed();
    let resumed = Clock::resuming(snapshot.zero_wall).unwrap_or(clock);
    let fresh = store(&snapshot.secrets, sessions * 2);
    let started = Instant::now();
    let report = fresh.restore(snapshot.table(&resumed), resumed.now());
    let restore = started.elapsed();
    println!(
        "  restart: read+decode {read:.1?}, restore {restore:.1?} ({} sessions)",
        report.active + report.warning
    );
    if let Some(peak) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_owned)
        })
    {
        println!(
            "  peak RSS of the bench (two tables): {}",
            peak.trim_start_matches("VmHWM:").trim()
        );
    }
}

/// Phase 1 (a write in progress) counts as "during"; phase 3 is the quiet window.
fn record(worst: &Worst, phase: &AtomicU64, took: Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    match phase.load(Ordering::Relaxed) {
        1 => {
            worst.during.fetch_max(us, Ordering::Relaxed);
            worst.ops_during.fetch_add(1, Ordering::Relaxed);
        }
        3 => {
            worst.quiet.fetch_max(us, Ordering::Relaxed);
        }
        _ => {}
    }
}
