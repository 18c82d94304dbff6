//! Snapshots of the session table (`persist.path`, DESIGN.md §10): written every
//! `persist.interval` and at shutdown, read back at start, so a restart ends no
//! session.
//!
//! **What is saved**: every live session ([`SessionParts`]: handle, parent, browser
//! binding, timestamps, its own timeout, idle/announce marks, state, flags, the
//! client group it is counted against), the rotation side tables (the handles newer
//! tokens derive to — digests, never tokens), the recently-ended table (digests),
//! and the [`Secrets`] every handle, binding, ticket and challenge is derived or
//! MACed under (without them no token issued before the restart would work). The
//! file is as sensitive as those keys: mode 0600, on a volume only the gateway reads.
//!
//! **Time**: instants are saved as wall-clock milliseconds and converted back on the
//! new process's clock, which resumes the old scale ([`Clock::resuming`]); so the
//! time spent down counts as time without a signal, and a session whose deadline
//! passed meanwhile is ended by the first sweep, with its proper reason and `end`
//! hook, by the same rules as always. If the scale cannot be resumed (the wall clock
//! went back), instants clamp into the new scale and the ticket key is replaced
//! (a ticket's expiry is an instant of the old scale).
//!
//! **Format** (version 1, little-endian, hand-written rather than serde + bincode:
//! the records are fixed fields plus a few optional ones, a flag byte says which, so
//! a session costs ~66 bytes and no allocation to encode; the decoder checks every
//! length against what is left, so a damaged file cannot make it allocate or read
//! out of bounds):
//!
//! ```text
//! magic "SGSNAP\r\n" · version u32 · payload · payload length u64 · CRC-32 u32
//! payload = written_at u64 · clock zero u64 · secrets [96]
//!         · n u64 · n session records · n u64 · n rotations (handle, current, retires u64)
//!         · n u64 · n aliases (derived, session, retires u64, u64::MAX = current)
//!         · n u64 · n ended (derived, at u64)
//! session = handle [16] · binding u64 · created, last_activity, last_seen,
//!           cookies_at u64 (wall ms) · timeout u64 (ms) · flags u8 · state u8
//!           · [parent 16] · [idle mark u64] · [asked mark u64] · [client 4 | 16]
//!           · [jar: len u32, bytes]
//! ```
//!
//! The CRC-32 (over everything before it) catches truncation and bit rot; anything
//! that fails to decode — wrong magic, other version, bad checksum, a length past
//! the end — is a [`PersistError`], and [`load_or_set_aside`] moves such a file to
//! `<path>.corrupt-<unix time>` and starts empty. Never a crash.
//!
//! **Writing** never stalls requests: the table is copied as `Arc`s shard by shard
//! ([`Sessions::view`]), then encoded and written on a blocking thread — to a
//! temporary file in the same directory (mode 0600), `fsync`ed, renamed over the
//! old one, and the directory `fsync`ed, so a crash at any point leaves either the
//! old or the new snapshot, complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::clock::{wall_now, Clock};
use super::store::{Alias, MemoryStore, RestoredTable, Rotation, TableView};
use super::token::Secrets;
use super::{Handle, Millis, SessionParts, State};

/// The first bytes of every snapshot (`\r\n` catches a text-mode copy).
pub const MAGIC: &[u8; 8] = b"SGSNAP\r\n";
/// The format this build writes and reads.
pub const VERSION: u32 = 1;

const HEADER: usize = MAGIC.len() + 4;
const TRAILER: usize = 8 + 4;
/// The smallest session record (no optional field).
const MIN_RECORD: usize = 16 + 8 + 4 * 8 + 8 + 2;

const HAS_PARENT: u8 = 1;
const PARENT_SENT: u8 = 1 << 1;
const HAS_IDLE_MARK: u8 = 1 << 2;
const HAS_ASKED_MARK: u8 = 1 << 3;
const CLIENT_V4: u8 = 1 << 4;
const CLIENT_V6: u8 = 1 << 5;
const HAS_JAR: u8 = 1 << 6;
const KNOWN_FLAGS: u8 = (1 << 7) - 1;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("snapshot file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("not a sessiongate snapshot (wrong magic bytes)")]
    Foreign,
    #[error("snapshot format version {0}; this build reads version {VERSION}")]
    Version(u32),
    #[error("damaged snapshot: {0}")]
    Corrupt(&'static str),
}

impl PersistError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> PersistError + '_ {
        move |source| PersistError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One saved session: its parts with instants in wall-clock ms, and the slot the
/// cookie-jar side table fills (always `None` until then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub parts: SessionParts,
    /// COOKIE JAR (merge): the session's serialized jar, written and restored here.
    pub jar: Option<Vec<u8>>,
}

/// A decoded snapshot, instants still in wall-clock ms.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub written_at: u64,
    /// Wall time of instant 0 of the writer's clock.
    pub zero_wall: u64,
    pub secrets: Secrets,
    pub sessions: Vec<SessionRecord>,
    /// `(session handle, current derived handle, original token retires at)`.
    pub rotations: Vec<(Handle, Handle, u64)>,
    /// `(derived handle, session handle, retires at; u64::MAX = current token)`.
    pub aliases: Vec<(Handle, Handle, u64)>,
    /// `(derived handle, ended at)`.
    pub ended: Vec<(Handle, u64)>,
}

/// What writing a snapshot took.
#[derive(Debug, Clone, Copy)]
pub struct WriteStats {
    pub sessions: usize,
    pub bytes: u64,
    /// Copying the table (the only part that touches the store's locks).
    pub view: Duration,
    /// Encoding, writing, `fsync` and rename.
    pub write: Duration,
}

// ---------------------------------------------------------------------------------
// Encoding

/// Counts and checksums what passes through to the file.
struct Checked<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len = self.len.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_u64(out: &mut impl Write, value: u64) -> io::Result<()> {
    out.write_all(&value.to_le_bytes())
}

fn put_count(out: &mut impl Write, n: usize) -> io::Result<()> {
    put_u64(out, n as u64)
}

/// Encodes one session (instants converted with `wall`) into `buf`.
fn encode_session(buf: &mut Vec<u8>, record: &SessionRecord, wall: impl Fn(Millis) -> u64) {
    let p = &record.parts;
    let mut flags = 0u8;
    if p.parent.is_some() {
        flags |= HAS_PARENT;
    }
    if p.parent_sent {
        flags |= PARENT_SENT;
    }
    if p.idle_mark.is_some() {
        flags |= HAS_IDLE_MARK;
    }
    if p.asked_mark.is_some() {
        flags |= HAS_ASKED_MARK;
    }
    match p.client {
        Some(IpAddr::V4(_)) => flags |= CLIENT_V4,
        Some(IpAddr::V6(_)) => flags |= CLIENT_V6,
        None => {}
    }
    if record.jar.is_some() {
        flags |= HAS_JAR;
    }
    buf.extend_from_slice(p.handle.as_bytes());
    buf.extend_from_slice(&p.binding.to_le_bytes());
    for at in [p.created, p.last_activity, p.last_seen, p.cookies_at] {
        buf.extend_from_slice(&wall(at).to_le_bytes());
    }
    buf.extend_from_slice(&p.timeout.to_le_bytes());
    buf.push(flags);
    buf.push(p.state as u8);
    if let Some(parent) = p.parent {
        buf.extend_from_slice(parent.as_bytes());
    }
    for mark in [p.idle_mark, p.asked_mark].into_iter().flatten() {
        buf.extend_from_slice(&wall(mark).to_le_bytes());
    }
    match p.client {
        Some(IpAddr::V4(ip)) => buf.extend_from_slice(&ip.octets()),
        Some(IpAddr::V6(ip)) => buf.extend_from_slice(&ip.octets()),
        None => {}
    }
    if let Some(jar) = &record.jar {
        let len = u32::try_from(jar.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&jar[..len as usize]);
    }
}

/// Writes `view` (the table at `clock`'s instants) as a complete snapshot to `out`.
pub fn encode(
    out: impl Write,
    view: &TableView,
    clock: &Clock,
    secrets: &Secrets,
) -> io::Result<(usize, u64)> {
    let mut out = Checked {
        inner: out,
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    put_u64(&mut out, wall_now())?;
    put_u64(&mut out, clock.zero_wall())?;
    out.write_all(&secrets.to_bytes())?;

    let live: Vec<_> = view
        .sessions
        .iter()
        .filter(|s| s.stored_state() != State::Ended)
        .collect();
    put_count(&mut out, live.len())?;
    let mut buf = Vec::with_capacity(256);
    let wall = |at: Millis| clock.wall(at);
    // COOKIE JAR: each session's serialized jar, from the view's copy of the side table.
    let jars: std::collections::HashMap<Handle, &Vec<u8>> = view
        .jars
        .iter()
        .map(|(handle, jar)| (*handle, jar))
        .collect();
    for session in &live {
        buf.clear();
        let record = SessionRecord {
            parts: session.parts(),
            jar: jars.get(&session.handle()).map(|jar| (*jar).clone()),
        };
        encode_session(&mut buf, &record, wall);
        out.write_all(&buf)?;
    }
    put_count(&mut out, view.rotations.len())?;
    for (handle, rotation) in &view.rotations {
        out.write_all(handle.as_bytes())?;
        out.write_all(rotation.current.as_bytes())?;
        put_u64(&mut out, clock.wall(rotation.original_retires_at))?;
    }
    put_count(&mut out, view.aliases.len())?;
    for (derived, alias) in &view.aliases {
        out.write_all(derived.as_bytes())?;
        out.write_all(alias.session.as_bytes())?;
        let retires = match alias.retires_at {
            Millis::MAX => u64::MAX,
            at => clock.wall(at),
        };
        put_u64(&mut out, retires)?;
    }
    put_count(&mut out, view.ended.len())?;
    for (derived, at) in &view.ended {
        out.write_all(derived.as_bytes())?;
        put_u64(&mut out, clock.wall(*at))?;
    }
    let payload = out.len - HEADER as u64;
    let mut trailer = [0u8; TRAILER];
    trailer[..8].copy_from_slice(&payload.to_le_bytes());
    out.inner.write_all(&trailer[..8])?;
    out.crc.update(&trailer[..8]);
    let crc = out.crc.clone().finalize();
    out.inner.write_all(&crc.to_le_bytes())?;
    out.inner.flush()?;
    Ok((live.len(), out.len + TRAILER as u64))
}

// ---------------------------------------------------------------------------------
// Decoding

/// A cursor over the payload that fails, never panics, past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        if n > self.bytes.len() {
            return Err(PersistError::Corrupt("a record runs past the end"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PersistError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PersistError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PersistError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, PersistError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn handle(&mut self) -> Result<Handle, PersistError> {
        Ok(Handle::from_bytes(self.array()?))
    }

    /// A count of records of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize) -> Result<usize, PersistError> {
        let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
        if n > self.bytes.len() / min.max(1) {
            return Err(PersistError::Corrupt("a count exceeds the file"));
        }
        Ok(n)
    }
}

fn decode_session(r: &mut Reader<'_>) -> Result<SessionRecord, PersistError> {
    let handle = r.handle()?;
    let binding = r.u64()?;
    let [created, last_activity, last_seen, cookies_at] = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    let timeout = r.u64()?;
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 || flags & CLIENT_V4 != 0 && flags & CLIENT_V6 != 0 {
        return Err(PersistError::Corrupt("unknown session flags"));
    }
    let state = match r.u8()? {
        0 => State::Active,
        1 => State::Warning,
        2 => State::Ended,
        _ => return Err(PersistError::Corrupt("unknown session state")),
    };
    let parent = (flags & HAS_PARENT != 0).then(|| r.handle()).transpose()?;
    let idle_mark = (flags & HAS_IDLE_MARK != 0).then(|| r.u64()).transpose()?;
    let asked_mark = (flags & HAS_ASKED_MARK != 0).then(|| r.u64()).transpose()?;
    let client = if flags & CLIENT_V4 != 0 {
        Some(IpAddr::from(r.array::<4>()?))
    } else if flags & CLIENT_V6 != 0 {
        Some(IpAddr::from(r.array::<16>()?))
    } else {
        None
    };
    let jar = if flags & HAS_JAR != 0 {
        let len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        Some(r.take(len)?.to_vec())
    } else {
        None
    };
    Ok(SessionRecord {
        parts: SessionParts {
            handle,
            parent,
            binding,
            created,
            last_activity,
            last_seen,
            timeout,
            idle_mark,
            asked_mark,
            state,
            parent_sent: flags & PARENT_SENT != 0,
            cookies_at,
            client,
        },
        jar,
    })
}

/// Decodes a whole snapshot file's bytes.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, PersistError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(PersistError::Foreign);
    }
    if bytes.len() < HEADER + TRAILER {
        return Err(PersistError::Corrupt("truncated"));
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[MAGIC.len()..HEADER]);
    let version = u32::from_le_bytes(version);
    if version != VERSION {
        return Err(PersistError::Version(version));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut expected = [0u8; 4];
    expected.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_le_bytes(expected) {
        return Err(PersistError::Corrupt(
            "checksum mismatch (truncated or altered)",
        ));
    }
    let (framed, length) = body.split_at(body.len() - 8);
    let mut declared = [0u8; 8];
    declared.copy_from_slice(length);
    if u64::from_le_bytes(declared) != (framed.len() - HEADER) as u64 {
        return Err(PersistError::Corrupt("length mismatch"));
    }
    let mut r = Reader {
        bytes: &framed[HEADER..],
    };
    let written_at = r.u64()?;
    let zero_wall = r.u64()?;
    let secrets = Secrets::from_bytes(&r.array::<{ Secrets::LEN }>()?);
    let n = r.count(MIN_RECORD)?;
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(decode_session(&mut r)?);
    }
    let n = r.count(40)?;
    let mut rotations = Vec::with_capacity(n);
    for _ in 0..n {
        rotations.push((r.handle()?, r.handle()?, r.u64()?));
    }
    let n = r.count(40)?;
    let mut aliases = Vec::with_capacity(n);
    for _ in 0..n {
        aliases.push((r.handle()?, r.handle()?, r.u64()?));
    }
    let n = r.count(24)?;
    let mut ended = Vec::with_capacity(n);
    for _ in 0..n {
        ended.push((r.handle()?, r.u64()?));
    }
    if !r.bytes.is_empty() {
        return Err(PersistError::Corrupt("bytes after the last record"));
    }
    Ok(Snapshot {
        written_at,
        zero_wall,
        secrets,
        sessions,
        rotations,
        aliases,
        ended,
    })
}

impl Snapshot {
    /// The table on `clock`'s scale (see [`Clock::from_wall`]).
    pub fn table(&self, clock: &Clock) -> RestoredTable {
        let at = |wall: u64| clock.from_wall(wall);
        RestoredTable {
            // COOKIE JAR: the jars go back through `Sessions::restore`.
            jars: self
                .sessions
                .iter()
                .filter_map(|record| Some((record.parts.handle, record.jar.clone()?)))
                .collect(),
            sessions: self
                .sessions
                .iter()
                .map(|record| {
                    let p = &record.parts;
                    SessionParts {
                        created: at(p.created),
                        last_activity: at(p.last_activity),
                        last_seen: at(p.last_seen),
                        cookies_at: at(p.cookies_at),
                        idle_mark: p.idle_mark.map(at),
                        asked_mark: p.asked_mark.map(at),
                        ..*p
                    }
                })
                .collect(),
            rotations: self
                .rotations
                .iter()
                .map(|&(handle, current, retires)| {
                    let rotation = Rotation {
                        current,
                        token: None,
                        original_retires_at: at(retires),
                    };
                    (handle, rotation)
                })
                .collect(),
            aliases: self
                .aliases
                .iter()
                .map(|&(derived, session, retires)| {
                    let retires_at = match retires {
                        u64::MAX => Millis::MAX,
                        wall => at(wall),
                    };
                    (
                        derived,
                        Alias {
                            session,
                            retires_at,
                        },
                    )
                })
                .collect(),
            ended: self
                .ended
                .iter()
                .map(|&(derived, wall)| (derived, at(wall)))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Files

/// Writes `view` to `path` atomically: a temporary file in the same directory (mode
/// 0600), `fsync`, rename over `path`, `fsync` of the directory.
pub fn write_file(
    path: &Path,
    view: &TableView,
    clock: &Clock,
    secrets: &Secrets,
) -> Result<(usize, u64), PersistError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or(PersistError::Corrupt("persist.path names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dir.join(temp_name);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&temp).map_err(PersistError::io(&temp))?;
        // A leftover temporary file keeps its old mode through `open`: set it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(PersistError::io(&temp))?;
        }
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let written = encode(&mut writer, view, clock, secrets).map_err(PersistError::io(&temp))?;
        let file = writer
            .into_inner()
            .map_err(|e| PersistError::io(&temp)(e.into_error()))?;
        file.sync_all().map_err(PersistError::io(&temp))?;
        fs::rename(&temp, path).map_err(PersistError::io(path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(PersistError::io(&dir))?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Reads and decodes `path`; `Ok(None)` if there is no such file.
pub fn read_file(path: &Path) -> Result<Option<Snapshot>, PersistError> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(PersistError::io(path)(error)),
    }
}

/// Where a snapshot that cannot be used is moved: `<path>.corrupt-<unix seconds>`.
pub fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".corrupt-{}", wall_now() / 1000));
    PathBuf::from(name)
}

/// The snapshot at `path`, if there is a usable one. One that cannot be read or
/// decoded is logged, moved aside ([`aside_path`]) and ignored: the gateway starts
/// empty rather than not at all.
pub fn load_or_set_aside(path: &Path) -> Option<Snapshot> {
    match read_file(path) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            let aside = aside_path(path);
            match fs::rename(path, &aside) {
                Ok(()) => tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    %error,
                    "the session snapshot is unusable: moved aside; starting with no sessions"
                ),
                Err(rename) => tracing::error!(
                    path = %path.display(),
                    %error,
                    %rename,
                    "the session snapshot is unusable and could not be moved aside; starting with no sessions"
                ),
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------
// The running gateway's snapshots

/// Writes the store's snapshots: on every tick of [`Persister::run`] and once more
/// at shutdown ([`Persister::save`]). Writes never overlap.
pub struct Persister {
    path: PathBuf,
    store: Arc<MemoryStore>,
    clock: Clock,
    secrets: Secrets,
    writing: tokio::sync::Mutex<()>,
}

impl Persister {
    pub fn new(path: PathBuf, store: Arc<MemoryStore>, clock: Clock, secrets: Secrets) -> Self {
        Persister {
            path,
            store,
            clock,
            secrets,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the table and writes it, all on a blocking thread.
    pub async fn save(&self) -> Result<WriteStats, PersistError> {
        let _one_at_a_time = self.writing.lock().await;
        let (path, store, clock, secrets) = (
            self.path.clone(),
            Arc::clone(&self.store),
            self.clock,
            self.secrets.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let view = store.view();
            let copied = started.elapsed();
            let (sessions, bytes) = write_file(&path, &view, &clock, &secrets)?;
            drop(view);
            Ok(WriteStats {
                sessions,
                bytes,
                view: copied,
                write: started.elapsed().saturating_sub(copied),
            })
        });
        match task.await {
            Ok(result) => result,
            Err(join) => Err(PersistError::Io {
                path: self.path.clone(),
                source: io::Error::other(join.to_string()),
            }),
        }
    }

    /// Saves and logs the outcome; `true` if the snapshot was written.
    pub async fn save_logged(&self, why: &'static str) -> bool {
        match self.save().await {
            Ok(stats) => {
                tracing::debug!(
                    why,
                    sessions = stats.sessions,
                    bytes = stats.bytes,
                    copy_ms = stats.view.as_millis() as u64,
                    write_ms = stats.write.as_millis() as u64,
                    "session snapshot written"
                );
                true
            }
            Err(error) => {
                tracing::error!(why, %error, "cannot write the session snapshot");
                false
            }
        }
    }

    /// Writes a snapshot every `interval` until `stop`.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate: nothing new to save yet
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            self.save_logged("interval").await;
        }
    }
}

#[cfg(test)]
mod tests;
