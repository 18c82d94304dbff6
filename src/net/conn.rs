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
//!
//! A panic while a request is handled is caught here, for every handler: before the
//! response exists, the client gets the gateway's 500 ([`Refusal::Internal`]); while
//! its body streams, the body breaks off (the client sees an incomplete response,
//! never a clean end). Either way it is logged at error level with the request id
//! (never a token), counted ([`Handler::panicked`], `sessiongate_panics_total`), and
//! the connection's other requests, other connections and the process carry on.
//! (This needs the default `panic = "unwind"`; a profile with `panic = "abort"` would
//! take the process down.)

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
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
use crate::web::body::{self, BoxError, ProxyBody, STREAM_BUFFER};
use crate::web::headers::{request_id, RequestId, X_REQUEST_ID};
use crate::web::refusal::Refusal;

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
        // Settled before the handler runs, so that a panic is logged with the id the
        // handler would have used.
        let id = request_id(request.headers());
        request.extensions_mut().insert(RequestId(id.clone()));
        let handler = Arc::clone(&handler);
        let http1 = request.version() < http::Version::HTTP_2;
        let draining = draining.clone();
        async move {
            let handled = AssertUnwindSafe(Arc::clone(&handler).handle(request, info))
                .catch_unwind()
                .await;
            drop(in_flight);
            let response = match handled {
                Ok(mut response) => {
                    if http1 && draining.is_cancelled() {
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    response.map(|body| Guarded {
                        inner: body,
                        handler,
                        id,
                        broken: false,
                    })
                }
                Err(panic) => {
                    panicked(
                        &*handler,
                        &id,
                        &*panic,
                        "handling the request panicked; answered 500",
                    );
                    let mut response = Refusal::Internal.into_response();
                    response.headers_mut().insert(X_REQUEST_ID, id.clone());
                    body::mark_own(response.headers_mut());
                    response.map(|body| Guarded {
                        inner: body,
                        handler,
                        id,
                        broken: false,
                    })
                }
            };
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

/// Counts and logs a panic of request `id`'s handling.
fn panicked<H: Handler>(handler: &H, id: &HeaderValue, payload: &(dyn Any + Send), what: &str) {
    handler.panicked();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(id = id.to_str().unwrap_or(""), panic = message, "{what}");
}

/// The error a response body ends with when producing it panicked.
#[derive(Debug, thiserror::Error)]
#[error("producing the response body panicked")]
struct BodyPanicked;

/// A response body whose panics are caught: the body ends with an error (the client's
/// response breaks off) and the panic is counted and logged with the request id.
struct Guarded<H> {
    inner: ProxyBody,
    handler: Arc<H>,
    id: HeaderValue,
    /// It panicked: never polled again.
    broken: bool,
}

impl<H: Handler> Body for Guarded<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(None);
        }
        let inner = &mut this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll_frame(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                this.broken = true;
                panicked(
                    &*this.handler,
                    &this.id,
                    &*panic,
                    "producing the response body panicked; response broken off",
                );
                Poll::Ready(Some(Err(Box::new(BodyPanicked))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.broken || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.broken {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Panics on `/panic` before answering, and in the body on `/body`.
    #[derive(Default)]
    struct Panicky {
        panics: AtomicUsize,
    }

    impl Handler for Panicky {
        async fn handle(
            self: Arc<Self>,
            request: Request<Incoming>,
            _: ConnInfo,
        ) -> Response<ProxyBody> {
            match request.uri().path() {
                "/panic" => panic!("boom in the handler"),
                "/body" => Response::new(PanicsAfterOneFrame(false).boxed_unsync()),
                _ => body::text(StatusCode::OK, "fine"),
            }
        }

        fn panicked(&self) {
            self.panics.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A body that yields one frame, then panics.
    struct PanicsAfterOneFrame(bool);

    impl Body for PanicsAfterOneFrame {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 {
                panic!("boom in the body");
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first part;")))))
        }
    }

    /// Serves `handler` with the real accept loop on a loopback port.
    async fn serving(handler: Arc<Panicky>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
            max_connections: 16,
            max_header_bytes: 16 * 1024,
            max_streams: 16,
        };
        tokio::spawn(super::super::serve(
            listener,
            None,
            handler,
            limits,
            CancellationToken::new(),
        ));
        addr
    }

    /// Reads one response with a `Content-Length` body from a kept-alive stream.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut buffer = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    return String::from_utf8_lossy(&buffer).into_owned();
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .expect("answered in time")
                .unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Log lines written while the guard lives (on this thread: the tests run on a
    /// current-thread runtime, so every task logs here).
    fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Sink {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&logs));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_everything_else_carries_on() {
        let (logs, _guard) = capture_logs();
        let handler = Arc::new(Panicky::default());
        let addr = serving(Arc::clone(&handler)).await;

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /panic HTTP/1.1\r\nHost: gw\r\nX-Request-Id: trace-42\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
        assert!(answer.contains("x-request-id: trace-42\r\n"), "{answer}");
        assert!(answer.contains("500 Internal Server Error"), "{answer}");
        assert_eq!(handler.panics.load(Ordering::SeqCst), 1);

        // The same connection serves its next request, and so does another one.
        stream
            .write_all(b"GET /fine HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        let mut other = TcpStream::connect(addr).await.unwrap();
        other
            .write_all(b"GET /fine HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut other).await.starts_with("HTTP/1.1 200 "));

        let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        let line = logs
            .lines()
            .find(|line| line.contains("panicked"))
            .unwrap_or_else(|| panic!("no panic logged: {logs}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains("id=\"trace-42\"") || line.contains("id=trace-42"),
            "{line}"
        );
        assert!(line.contains("boom in the handler"), "{line}");
    }

    /// Over HTTP/2 each stream is its own task: a panicking one is answered 500 and
    /// the connection's other streams are served.
    #[tokio::test]
    async fn a_panicking_http2_stream_is_answered_500_and_the_connection_carries_on() {
        let handler = Arc::new(Panicky::default());
        let addr = serving(Arc::clone(&handler)).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let get = |path: &str| {
            Request::get(format!("http://{addr}{path}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap()
        };
        let response = sender.send_request(get("/panic")).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(X_REQUEST_ID));
        let response = sender.send_request(get("/fine")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"fine\n");
        assert_eq!(handler.panics.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_response_body_breaks_the_response_off() {
        let (logs, _guard) = capture_logs();
        let handler = Arc::new(Panicky::default());
        let addr = serving(Arc::clone(&handler)).await;

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /body HTTP/1.1\r\nHost: gw\r\nX-Request-Id: body-7\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the broken response closed its connection")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        // hyper may not have flushed the head and first chunk yet (then nothing came);
        // if it had, the last chunk never comes.
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 200 "),
            "{answer}"
        );
        assert!(!answer.ends_with("0\r\n\r\n"), "ended cleanly: {answer:?}");
        assert_eq!(handler.panics.load(Ordering::SeqCst), 1);

        let mut other = TcpStream::connect(addr).await.unwrap();
        other
            .write_all(b"GET /fine HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut other).await.starts_with("HTTP/1.1 200 "));
        let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(
            logs.lines()
                .any(|line| line.contains("body-7") && line.contains("boom in the body")),
            "{logs}"
        );
    }
}
