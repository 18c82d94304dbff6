//! One client connection: optional TLS, protocol detection, and the watchdog that
//! enforces the connection timeouts hyper does not.
//!
//! hyper's HTTP/1 `header_read_timeout` covers a slow request head (it needs the timer
//! installed to work at all). What it does not cover, the watchdog does:
//! - a connection that sends no complete request within `header_timeout` of being
//!   accepted (including one stalled during protocol detection, which the auto
//!   builder does without any timeout) is closed;
//! - a connection with no request for `idle_timeout` is asked to shut down
//!   gracefully (a response still streaming finishes first) — and closed once no
//!   byte has moved for twice that;
//! - on shutdown (or a hand-off to a new process) every HTTP/1 answer from then on
//!   says `Connection: close`, so a client looping requests learns to reconnect from
//!   an answer instead of finding its next request cut off; a connection with no
//!   request for [`DRAIN_GRACE`] is asked to shut down gracefully (HTTP/2: GOAWAY);
//!   past the drain deadline, dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{ConnInfo, Handler, Lease, Limits};
use crate::web::body::STREAM_BUFFER;

/// On shutdown, a connection without a request for this long is closed; until then
/// its next request is still answered (with `Connection: close`). Closing an idle
/// HTTP/1 connection at once would cut off a request already on its way — the
/// keep-alive race clients can only survive by retrying.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// What the watchdog knows about a connection: when bytes last moved, when a
/// request last started or got its answer, and how many wait for their answer.
/// Times are milliseconds since `opened`, plus one so that 0 means "never".
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    last_io: AtomicU64,
    last_request: AtomicU64,
    /// Requests whose response head is not ready yet (waiting on the upstream moves
    /// no bytes, and must not count as an idle connection).
    in_flight: AtomicUsize,
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.mark(&activity.last_request);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.mark(&self.0.last_request);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_io: AtomicU64::new(0),
            last_request: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    fn mark(&self, field: &AtomicU64) {
        field.fetch_max(self.now(), Ordering::Relaxed);
    }

    /// Time since `field` was last marked (since the connection opened if never).
    fn since(&self, field: &AtomicU64) -> Duration {
        Duration::from_millis(
            self.now()
                .saturating_sub(field.load(Ordering::Relaxed).max(1)),
        )
    }

    /// Time since a byte last moved on the socket.
    pub(crate) fn io_idle(&self) -> Duration {
        self.since(&self.last_io)
    }

    fn saw_request(&self) -> bool {
        self.last_request.load(Ordering::Relaxed) != 0
    }

    fn waiting(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }
}

/// An IO stream that records when bytes move.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.mark(&this.activity.last_io);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.mark(&this.activity.last_io);
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.mark(&this.activity.last_io);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves one accepted connection to completion.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    force: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let lease = Lease {
        activity: Arc::clone(&activity),
        _permit: Arc::new(permit),
    };
    let io = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    match tls {
        None => {
            let info = ConnInfo {
                peer,
                scheme: "http",
            };
            drive(io, info, handler, &limits, lease, shutdown, force).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(io));
            let io = tokio::select! {
                _ = force.cancelled() => return,
                result = handshake => match result {
                    Ok(Ok(io)) => io,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let info = ConnInfo {
                peer,
                scheme: "https",
            };
            drive(io, info, handler, &limits, lease, shutdown, force).await;
        }
    }
}

async fn drive<H, I>(
    io: I,
    info: ConnInfo,
    handler: Arc<H>,
    limits: &Limits,
    lease: Lease,
    shutdown: CancellationToken,
    force: CancellationToken,
) where
    H: Handler,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Both the request head limit and the write buffer towards the client: a body
        // is polled only while less than this is buffered (64 KiB by default).
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // hyper's default is 200 streams, each of which may become an upstream request.
        .max_concurrent_streams(limits.max_streams.max(1))
        // Bounded buffering per stream (web::body::STREAM_BUFFER): what a stream may
        // queue towards a slow reader, and what a client may send ahead of a slow
        // upstream (per stream, and for the whole connection).
        .max_send_buf_size(STREAM_BUFFER)
        .initial_stream_window_size(STREAM_BUFFER as u32)
        .initial_connection_window_size((4 * STREAM_BUFFER) as u32)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_timeout);

    let activity = Arc::clone(&lease.activity);
    let draining = shutdown.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let in_flight = InFlight::start(&lease.activity);
        request.extensions_mut().insert(lease.clone());
        let handler = Arc::clone(&handler);
        let http1 = request.version() < http::Version::HTTP_2;
        let draining = draining.clone();
        async move {
            let mut response = handler.handle(request, info).await;
            if http1 && draining.is_cancelled() {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            drop(in_flight);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);

    let check_every =
        (limits.header_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(50));
    let mut closing = false;
    let mut draining = false;
    let grace = tokio::time::sleep(Duration::ZERO);
    let mut grace = std::pin::pin!(grace);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                grace.as_mut().reset(Instant::now() + DRAIN_GRACE);
            }
            _ = grace.as_mut(), if draining && !closing => {
                // Quiet since the last request started or ended (or since the
                // connection opened: its first request may be on its way).
                let quiet = activity.since(&activity.last_request);
                if activity.waiting() {
                    grace.as_mut().reset(Instant::now() + DRAIN_GRACE);
                } else if quiet < DRAIN_GRACE {
                    let left = (DRAIN_GRACE - quiet).max(Duration::from_millis(10));
                    grace.as_mut().reset(Instant::now() + left);
                } else {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = force.cancelled() => return,
            _ = tokio::time::sleep(check_every) => {
                if !activity.saw_request() && activity.opened.elapsed() >= limits.header_timeout {
                    tracing::debug!(peer = %info.peer, "no request within header_timeout; closing");
                    return;
                }
                if activity.waiting() {
                    continue;
                }
                // Idle means no request for a while. Bytes alone do not count: HTTP/2
                // keep-alive pings move bytes on a connection nobody uses.
                if !closing && activity.saw_request() && activity.since(&activity.last_request) >= limits.idle_timeout {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                } else if closing && activity.since(&activity.last_io) >= limits.idle_timeout * 2 {
                    // Asked to close (a response may still be streaming), and nothing
                    // has moved for a long time: the peer is gone.
                    return;
                }
            }
        }
    }
}
