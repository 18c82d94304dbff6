//! Snapshots: a round trip keeps every session and token working, damaged files are
//! refused (never a panic), files are written atomically with mode 0600, and sessions
//! whose deadlines passed while down end with their reasons on the first sweep.

use std::sync::Mutex;

use proptest::prelude::*;

use super::*;
use crate::config::{Duration as Cfg, SessionConfig, WhenFull};
use crate::lifetime::Lifetime;
use crate::session::events::{SessionEvent, SessionObserver};
use crate::session::store::SessionStore;
use crate::session::{BrowserKey, CreatedKind, EndReason, Touch};

/// Records end events.
#[derive(Default)]
struct Ends(Mutex<Vec<(Handle, EndReason)>>);

impl SessionObserver for Ends {
    fn observe(&self, event: &SessionEvent<'_>) {
        if let SessionEvent::Ended {
            session, reason, ..
        } = *event
        {
            self.0.lock().unwrap().push((session.handle(), reason));
        }
    }
}

fn store_with(secrets: &Secrets, ends: Arc<Ends>) -> MemoryStore {
    let config = SessionConfig {
        timeout: Cfg::from_secs(60),
        ..SessionConfig::default()
    };
    MemoryStore::new(Lifetime::from_config(&config), 1000, WhenFull::Reject, ends)
        .unwrap()
        .with_secrets(secrets)
}

fn bytes_of(store: &MemoryStore, clock: &Clock, secrets: &Secrets) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, &store.view(), clock, secrets).unwrap();
    out
}

#[test]
fn a_round_trip_keeps_sessions_tokens_and_rotations() {
    let secrets = Secrets::generate().unwrap();
    let clock = Clock::new();
    let store = store_with(&secrets, Arc::default());
    let (browser, other) = (
        BrowserKey::generate().unwrap(),
        BrowserKey::generate().unwrap(),
    );
    let now = clock.now();
    let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let v6: std::net::IpAddr = "2001:db8::".parse().unwrap();
    let parent = store
        .create(&browser, None, CreatedKind::New, Some(v4), now)
        .unwrap();
    let fork = store
        .create(
            &browser,
            Some(parent.session.handle()),
            CreatedKind::Fork,
            Some(v6),
            now,
        )
        .unwrap();
    fork.session.parent_once();
    let rotated = store
        .create(&other, None, CreatedKind::New, None, now)
        .unwrap();
    let new_token = store.rotate(&rotated.session, now).unwrap();
    let gone = store
        .create(&other, None, CreatedKind::New, None, now)
        .unwrap();
    store.end(&gone.session, EndReason::Admin, now);
    store.set_timeout(&parent.session, 5_000, now);

    let bytes = bytes_of(&store, &clock, &secrets);
    let snapshot = decode(&bytes).unwrap();
    assert_eq!(snapshot.sessions.len(), 3);
    assert_eq!(snapshot.secrets, secrets);
    assert!(snapshot.sessions.iter().all(|r| r.jar.is_none()));

    let resumed = Clock::resuming(snapshot.zero_wall).unwrap_or(clock);
    let again = store_with(&snapshot.secrets, Arc::default());
    let report = again.restore(snapshot.table(&resumed), resumed.now());
    assert_eq!(report.active, 3);
    let now = resumed.now();
    for (created, key) in [(&parent, &browser), (&fork, &browser)] {
        let found = again
            .resolve(&created.token, key, now)
            .expect("token works");
        assert_eq!(found.session.handle(), created.session.handle());
        assert_eq!(found.session.parts(), created.session.parts());
    }
    // Bound to its browser still.
    assert!(again.resolve(&parent.token, &other, now).is_none());
    // The rotated session: the current token works, the one it replaced retired at
    // the restart, and no token was saved to hand out.
    let found = again
        .resolve(&new_token, &other, now)
        .expect("current token");
    assert_eq!(found.session.handle(), rotated.session.handle());
    assert!(found.newer_token.is_none());
    assert!(again.resolve(&rotated.token, &other, now).is_none());
    // The ended session is remembered as ended, not restored.
    assert!(again.resolve(&gone.token, &other, now).is_none());
    assert!(again.ended_recently(&gone.token, now));
    // The parent handle was sent upstream already; the timeout is the session's own.
    let fork_again = again.get(&fork.session.handle(), now).unwrap();
    assert_eq!(fork_again.parent_once(), None);
    assert_eq!(
        again.get(&parent.session.handle(), now).unwrap().timeout(),
        5_000
    );
    assert_eq!(again.live_for(v4), 1);
    assert_eq!(again.live_for(v6), 1);
    // No token is in the file.
    for token in [&parent.token, &fork.token, &rotated.token, &new_token] {
        let raw = token.encode();
        assert!(!bytes.windows(raw.len()).any(|w| w == raw.as_bytes()));
    }
}

#[test]
fn a_jar_slot_round_trips() {
    let record = SessionRecord {
        parts: SessionParts {
            handle: Handle::new_v4(),
            parent: None,
            binding: 7,
            created: 10,
            last_activity: 11,
            last_seen: 12,
            timeout: 60_000,
            idle_mark: Some(11),
            asked_mark: None,
            state: State::Warning,
            parent_sent: false,
            cookies_at: 10,
            client: None,
        },
        jar: Some(b"jar bytes".to_vec()),
    };
    let mut buf = Vec::new();
    encode_session(&mut buf, &record, |at| at + 1_000);
    let decoded = decode_session(&mut Reader { bytes: &buf }).unwrap();
    assert_eq!(decoded.jar, record.jar);
    assert_eq!(decoded.parts.last_seen, 1_012);
    assert_eq!(decoded.parts.idle_mark, Some(1_011));
    assert_eq!(decoded.parts.state, State::Warning);
}

#[test]
fn jars_in_the_view_come_back_in_the_restored_table() {
    let secrets = Secrets::generate().unwrap();
    let clock = Clock::new();
    let store = store_with(&secrets, Arc::default());
    let key = BrowserKey::generate().unwrap();
    let with_jar = store
        .create(&key, None, CreatedKind::New, None, clock.now())
        .unwrap();
    store
        .create(&key, None, CreatedKind::New, None, clock.now())
        .unwrap();
    let mut view = store.view();
    let handle = with_jar.session.handle();
    view.jars.push((handle, b"serialized jar".to_vec()));
    let mut bytes = Vec::new();
    encode(&mut bytes, &view, &clock, &secrets).unwrap();
    let table = decode(&bytes).unwrap().table(&clock);
    assert_eq!(table.sessions.len(), 2);
    assert_eq!(table.jars, [(handle, b"serialized jar".to_vec())]);
}

#[test]
fn a_sessions_cookie_jar_survives_the_file_and_a_jar_over_its_bounds_does_not() {
    use crate::session::jar::{Jar, Site, MAX_COOKIES};
    let secrets = Secrets::generate().unwrap();
    let clock = Clock::new();
    let store = store_with(&secrets, Arc::default());
    let key = BrowserKey::generate().unwrap();
    let site = Site {
        host: "app.example",
        path: "/",
        secure: false,
    };
    let kept = store
        .create(&key, None, CreatedKind::New, None, clock.now())
        .unwrap();
    store.update_jar(&kept.session, &mut |jar| {
        let jar = jar.get_or_insert_with(Jar::default);
        assert!(jar
            .store(b"PHPSESSID=abc123; Path=/; HttpOnly", &site, 0)
            .is_empty());
    });
    let tampered = store
        .create(&key, None, CreatedKind::New, None, clock.now())
        .unwrap();
    let mut view = store.view();
    // A file edited by hand (the checksum fixed up): more cookies than a jar holds.
    let mut big = Jar::default();
    for i in 0..MAX_COOKIES {
        big.store(format!("c{i}=v").as_bytes(), &site, 0);
    }
    let mut json = serde_json::to_value(&big).unwrap();
    let cookies = json["cookies"].as_array_mut().unwrap();
    let extra = cookies[0].clone();
    cookies.push(extra);
    view.jars.push((
        tampered.session.handle(),
        serde_json::to_vec(&json).unwrap(),
    ));
    let mut bytes = Vec::new();
    encode(&mut bytes, &view, &clock, &secrets).unwrap();

    let again = store_with(&secrets, Arc::default());
    let report = again.restore(decode(&bytes).unwrap().table(&clock), clock.now());
    assert_eq!(report.active, 2);
    assert_eq!(report.jars_dropped, 1);
    let mut jar = again
        .jar(&kept.session.handle())
        .expect("the jar came back");
    assert_eq!(
        jar.header(&site, 0).as_deref(),
        Some("PHPSESSID=abc123"),
        "the restored jar sends its cookie"
    );
    assert!(again.jar(&tampered.session.handle()).is_none());
}

/// A snapshot of a few sessions to damage.
fn sample() -> Vec<u8> {
    let secrets = Secrets::generate().unwrap();
    let clock = Clock::new();
    let store = store_with(&secrets, Arc::default());
    let key = BrowserKey::generate().unwrap();
    for i in 0..5u8 {
        let parent = (i > 0).then(Handle::new_v4);
        let client = Some(std::net::IpAddr::from([10, 0, 0, i]));
        let created = store
            .create(&key, parent, CreatedKind::New, client, clock.now())
            .unwrap();
        if i == 3 {
            store.rotate(&created.session, clock.now()).unwrap();
        }
    }
    bytes_of(&store, &clock, &secrets)
}

#[test]
fn foreign_versions_and_truncations_are_named() {
    let good = sample();
    assert!(decode(&good).is_ok());
    assert!(matches!(decode(b""), Err(PersistError::Foreign)));
    assert!(matches!(
        decode(b"{\"json\": 1}"),
        Err(PersistError::Foreign)
    ));
    let mut other = good.clone();
    other[MAGIC.len()..HEADER].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(decode(&other), Err(PersistError::Version(2))));
    for cut in [HEADER, HEADER + 5, good.len() / 2, good.len() - 1] {
        assert!(
            matches!(decode(&good[..cut]), Err(PersistError::Corrupt(_))),
            "{cut}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any truncation, any flipped bit, any garbage after the magic: an error, never
    /// a panic or a huge allocation.
    #[test]
    fn prop_damaged_snapshots_are_refused(
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        garbage in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let good = sample();
        let cut = cut.index(good.len());
        prop_assert!(decode(&good[..cut]).is_err());
        let mut flipped = good.clone();
        flipped[flip.index(good.len())] ^= 1 << bit;
        prop_assert!(decode(&flipped).is_err());
        let mut junk = MAGIC.to_vec();
        junk.extend_from_slice(&VERSION.to_le_bytes());
        junk.extend_from_slice(&garbage);
        prop_assert!(decode(&junk).is_err());
    }

    /// Records that pass the checksum but lie about lengths (a writer bug, or a
    /// forged file with a recomputed CRC) still cannot make the decoder panic.
    #[test]
    fn prop_lying_records_are_refused_without_panic(
        garbage in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&VERSION.to_le_bytes());
        body.extend_from_slice(&garbage);
        let payload = (body.len() - HEADER) as u64;
        body.extend_from_slice(&payload.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let _ = decode(&body);
    }
}

#[cfg(unix)]
#[test]
fn files_are_written_atomically_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.snap");
    let secrets = Secrets::generate().unwrap();
    let clock = Clock::new();
    let store = store_with(&secrets, Arc::default());
    let key = BrowserKey::generate().unwrap();
    store
        .create(&key, None, CreatedKind::New, None, clock.now())
        .unwrap();
    // A leftover temporary file with a loose mode is replaced, not trusted.
    let temp = dir
        .path()
        .join(format!(".sessions.snap.tmp-{}", std::process::id()));
    fs::write(&temp, b"old").unwrap();
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).unwrap();
    let (sessions, bytes) = write_file(&path, &store.view(), &clock, &secrets).unwrap();
    assert_eq!(sessions, 1);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), bytes);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!temp.exists(), "the temporary file was renamed");
    // Written again over the old one.
    store
        .create(&key, None, CreatedKind::New, None, clock.now())
        .unwrap();
    write_file(&path, &store.view(), &clock, &secrets).unwrap();
    let snapshot = read_file(&path).unwrap().unwrap();
    assert_eq!(snapshot.sessions.len(), 2);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the snapshot is left"
    );
}

#[test]
fn unusable_files_are_moved_aside_and_missing_ones_are_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.snap");
    assert!(load_or_set_aside(&path).is_none());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

    let mut damaged = sample();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    fs::write(&path, &damaged).unwrap();
    assert!(load_or_set_aside(&path).is_none());
    assert!(!path.exists());
    let aside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(aside[0].starts_with("sessions.snap.corrupt-"), "{aside:?}");
    assert_eq!(fs::read(dir.path().join(&aside[0])).unwrap(), damaged);
}

#[tokio::test(start_paused = true)]
async fn deadlines_that_passed_while_down_end_on_the_first_sweep() {
    // Timeout 60 s, countdown 60 s, abandon 120 s (the defaults for a 60 s timeout).
    let secrets = Secrets::generate().unwrap();
    // A process that started an hour ago (on a fresh clock, instants minutes ago
    // would lie before its zero and clamp to it: the scale is resumed for that).
    let clock = Clock::resuming(crate::session::clock::wall_now() - 3_600_000).unwrap();
    let wall = |ago: u64| clock.wall(clock.now()).saturating_sub(ago);
    let parts = |last_activity_ago: u64, last_seen_ago: u64| SessionParts {
        handle: Handle::new_v4(),
        parent: None,
        binding: 1,
        created: wall(last_activity_ago.max(last_seen_ago)),
        last_activity: wall(last_activity_ago),
        last_seen: wall(last_seen_ago),
        timeout: 60_000,
        idle_mark: None,
        asked_mark: None,
        state: State::Active,
        parent_sent: false,
        cookies_at: wall(0),
        client: None,
    };
    // Down for 3 minutes without a signal: abandoned. Seen 10 s ago but idle for
    // 130 s: the countdown ran out. Active 10 s ago: lives on.
    let abandoned = parts(180_000, 180_000);
    let timed_out = parts(130_000, 10_000);
    let alive = parts(10_000, 10_000);
    let snapshot = Snapshot {
        written_at: wall(0),
        zero_wall: clock.zero_wall(),
        secrets: secrets.clone(),
        sessions: [abandoned, timed_out, alive]
            .into_iter()
            .map(|parts| SessionRecord { parts, jar: None })
            .collect(),
        rotations: Vec::new(),
        aliases: Vec::new(),
        ended: Vec::new(),
    };
    let ends = Arc::new(Ends::default());
    let store = store_with(&secrets, Arc::clone(&ends));
    let report = store.restore(snapshot.table(&clock), clock.now());
    assert_eq!(report.active, 3);
    assert!(ends.0.lock().unwrap().is_empty(), "restoring ends nothing");
    while store.sweep(clock.now(), 1024) == 1024 {}
    let mut got = ends.0.lock().unwrap().clone();
    got.sort_by_key(|(handle, _)| *handle != abandoned.handle);
    assert_eq!(
        got,
        [
            (abandoned.handle, EndReason::Abandoned),
            (timed_out.handle, EndReason::Timeout)
        ]
    );
    assert_eq!(store.len(), 1);
    let now = clock.now();
    let session = store.get(&alive.handle, now).expect("alive");
    // Its idle timeout continues from where it was: 50 s left.
    assert_eq!(session.deadlines(store.rules()).idle_at, Some(now + 50_000));
    store.touch(&session, Touch::Signal, now);
}
