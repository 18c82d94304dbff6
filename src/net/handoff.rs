//! Listening sockets that outlive a process: the zero-downtime hand-off between an
//! old and a new gateway (`persist.handoff`), and systemd socket activation.
//!
//! **Hand-off** (Unix only). A running gateway listens on the Unix socket
//! `persist.handoff` (mode 0600: only its own user may take over). A new process
//! started with `--takeover` connects and asks; the old one stops accepting (its
//! listening sockets stay open, so connections arriving meanwhile wait in the
//! kernel's backlog, never refused), writes its final snapshot, and sends both
//! listening sockets over the Unix socket (`SCM_RIGHTS`). The new process restores
//! the snapshot and accepts on the very same sockets, while the old one drains its
//! connections (in-flight requests finish, keep-alive connections close) and exits.
//! With no gateway to take over from, `--takeover` simply binds.
//!
//! **Socket activation**: with `LISTEN_PID` = this process and `LISTEN_FDS` ≥ 1
//! (systemd's protocol), fd 3 is the public listener and fd 4, if passed, the admin
//! listener.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;

/// What the new process sends to ask for the listeners.
const REQUEST: &[u8; 12] = b"SGTAKEOVER1\n";
/// What the old process answers, with the listeners attached.
const READY: &[u8; 8] = b"SGREADY1";
/// At most this many descriptors travel (public, admin).
const MAX_FDS: usize = 2;

/// How long a new process waits for the old one to write its snapshot and answer.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(120);
/// How long the old process waits for a connected peer's request.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// Listening sockets received from another process (or systemd).
#[derive(Debug)]
pub struct Inherited {
    pub public: StdListener,
    /// Absent when systemd passed only one socket: the admin listener is bound.
    pub admin: Option<StdListener>,
}

/// A listener from an inherited descriptor, checked to be a bound socket.
fn listener_from(fd: OwnedFd) -> io::Result<StdListener> {
    let listener = StdListener::from(fd);
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

// ---------------------------------------------------------------------------------
// SCM_RIGHTS

/// Sends `data` with `fds` attached.
fn send_with_fds(socket: &StdUnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &rights,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != data.len() {
        return Err(io::Error::other("short send"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and the descriptors attached (close-on-exec).
fn recv_with_fds(socket: &StdUnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!([RawFd; MAX_FDS]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: descriptors that arrived with SCM_RIGHTS are new in this
            // process and owned by nobody else; each is wrapped exactly once.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if message.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("descriptors were truncated"));
    }
    Ok((message.bytes, fds))
}

// ---------------------------------------------------------------------------------
// The new process

/// Why a takeover failed.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("hand-off socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("hand-off socket {0}: the running gateway answered something else")]
    Protocol(PathBuf),
}

/// Asks the gateway listening on `path` for its listeners. `Ok(None)`: nobody
/// listens there (no socket file, or a stale one), so there is nothing to take
/// over. Blocking: waits up to [`TAKEOVER_WAIT`] while the old process writes its
/// snapshot.
pub fn take_over(path: &Path) -> Result<Option<Inherited>, TakeoverError> {
    let io_error = |source| TakeoverError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut socket = match StdUnixStream::connect(path) {
        Ok(socket) => socket,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(io_error(error)),
    };
    socket
        .set_read_timeout(Some(TAKEOVER_WAIT))
        .map_err(io_error)?;
    socket
        .set_write_timeout(Some(REQUEST_WAIT))
        .map_err(io_error)?;
    socket.write_all(REQUEST).map_err(io_error)?;
    let mut answer = [0u8; READY.len()];
    let (n, fds) = recv_with_fds(&socket, &mut answer).map_err(io_error)?;
    if n != READY.len() || &answer != READY || fds.is_empty() {
        return Err(TakeoverError::Protocol(path.to_path_buf()));
    }
    let mut fds = fds.into_iter();
    let public = fds
        .next()
        .map(listener_from)
        .transpose()
        .map_err(io_error)?
        .ok_or_else(|| TakeoverError::Protocol(path.to_path_buf()))?;
    let admin = fds
        .next()
        .map(listener_from)
        .transpose()
        .map_err(io_error)?;
    // Tell the old process the sockets arrived (it may drop its copies now).
    let _ = socket.write_all(b"K");
    Ok(Some(Inherited { public, admin }))
}

// ---------------------------------------------------------------------------------
// The old process

/// The hand-off socket a running gateway listens on.
pub struct HandoffListener {
    listener: UnixListener,
    path: PathBuf,
}

/// A connected process that asked for the listeners.
pub struct HandoffRequest {
    stream: StdUnixStream,
}

impl HandoffListener {
    /// Listens on `path` (mode 0600), replacing a socket file left there (the one of
    /// the process this one took over from, or of a crashed one).
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = UnixListener::bind(path)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(HandoffListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next process asking for the listeners (peers that connect and say
    /// anything else, or nothing within a few seconds, are dropped).
    pub async fn next(&self) -> io::Result<HandoffRequest> {
        loop {
            let (mut stream, _) = self.listener.accept().await?;
            let mut request = [0u8; REQUEST.len()];
            match tokio::time::timeout(REQUEST_WAIT, stream.read_exact(&mut request)).await {
                Ok(Ok(_)) if &request == REQUEST => {}
                _ => {
                    tracing::warn!("hand-off socket: a peer sent no valid request; ignored");
                    continue;
                }
            }
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            return Ok(HandoffRequest { stream });
        }
    }
}

impl HandoffRequest {
    /// Sends the listening sockets, and waits (briefly) until the peer has them.
    /// Blocking; call from a blocking thread.
    pub fn send(mut self, public: &OwnedFd, admin: &OwnedFd) -> io::Result<()> {
        self.stream.set_write_timeout(Some(REQUEST_WAIT))?;
        send_with_fds(
            &self.stream,
            READY,
            &[public.as_raw_fd(), admin.as_raw_fd()],
        )?;
        self.stream.set_read_timeout(Some(REQUEST_WAIT))?;
        let mut ack = [0u8; 1];
        self.stream.read_exact(&mut ack)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// systemd

/// The listeners systemd passed (`LISTEN_PID`/`LISTEN_FDS`), if any for this process.
pub fn from_systemd() -> io::Result<Option<Inherited>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if !for_us || count == 0 {
        return Ok(None);
    }
    const FIRST: RawFd = 3;
    // SAFETY: systemd passes `count` open descriptors from fd 3 on, for this process
    // (LISTEN_PID) alone; each is taken over exactly once.
    let public = listener_from(unsafe { OwnedFd::from_raw_fd(FIRST) })?;
    let admin = if count >= 2 {
        // SAFETY: as above.
        Some(listener_from(unsafe { OwnedFd::from_raw_fd(FIRST + 1) })?)
    } else {
        None
    };
    Ok(Some(Inherited { public, admin }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_travel_over_a_unix_socket() {
        let (a, b) = StdUnixStream::pair().unwrap();
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send_with_fds(&a, READY, &[listener.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], READY);
        assert_eq!(fds.len(), 1);
        drop(listener);
        // The received descriptor is the same listening socket.
        let received = listener_from(fds.into_iter().next().unwrap()).unwrap();
        assert_eq!(received.local_addr().unwrap(), addr);
        let client = std::net::TcpStream::connect(addr).unwrap();
        received.set_nonblocking(false).unwrap();
        let (_, peer) = received.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[test]
    fn nobody_to_take_over_from_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        assert!(take_over(&path).unwrap().is_none());
        // A stale socket file (its process gone) refuses: also nothing to take over.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(take_over(&path).unwrap().is_none());
    }
}
