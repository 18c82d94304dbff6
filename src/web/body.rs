//! The body type every response of the gateway has, small canned responses, and
//! the deadline every request body is read under.
//!
//! Upstream bodies stream through untouched (boxed, never collected); the gateway's
//! own answers (errors, reserved endpoints) are small in-memory bodies.
//!
//! hyper has no timeout on reading a request body: a client that declares a
//! `Content-Length` and sends nothing holds its connection (and a connection slot)
//! forever. Every request body is therefore read through [`Deadline`], which fails
//! the body when the client sends nothing for `listen.body_timeout` while the
//! gateway is waiting for it, and records in a shared [`Progress`] how the body went:
//! the forwarding side uses it to start the upstream's response timeout only once the
//! body has been sent, and to tell a client's failure from the upstream's.
//!
//! Buffering is bounded so that a slow or stalled reader costs a fixed amount of memory
//! ([`STREAM_BUFFER`]): hyper polls a response body only when its write buffer has
//! room, the upstream connection reads only when its body is polled, so a client that
//! does not read stops the upstream read (backpressure), and what sits in between is
//! at most one buffer on each side.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, REFERRER_POLICY, SERVER,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// The most response bytes buffered per direction of a request in flight (like
/// nginx's default `proxy_buffers 8 4k`): the upstream connection's read buffer (and
/// so the largest chunk it hands on) and, on HTTP/2, a stream's send buffer and
/// receive window. On HTTP/1 hyper's write buffer towards the client is bounded by
/// `max_buf_size`, i.e. `listen.max_header_bytes` (64 KiB by default). A stalled
/// reader of a streamed response thus holds at most about 64 + 2 × 32 = 128 KiB of
/// buffers with the defaults (plus the kernel's socket buffers, outside the process);
/// measured with connection state included: about 185 KiB per stalled connection.
/// The HTML injector may hold up to [`SEARCH_LIMIT`](crate::inject::SEARCH_LIMIT)
/// more while it looks for the place of the tag, before anything is sent.
pub const STREAM_BUFFER: usize = 32 * 1024;

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends. `Unsync` because the streaming HTML
/// rewriter is `Send` but not `Sync`.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Marks an answer the gateway wrote itself (refusals, reserved replies, its pages):
/// `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, and no `Server`
/// banner. Upstream answers are the application's and are left as they are.
pub fn mark_own(headers: &mut HeaderMap) {
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.remove(SERVER);
}

/// A short plain-text answer from the gateway itself.
pub fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON answer from the gateway itself (never cached: it describes a session).
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ProxyBody> {
    // The gateway's own reply types always serialize; `{}` is a safe stand-in.
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json(status, &serde_json::json!({ "error": message }))
}

/// `405` with the `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Why a small request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("body too large")]
    TooLarge,
    #[error("body could not be read")]
    Unreadable,
    #[error("the client stopped sending the body")]
    TimedOut,
}

/// Reads a request body of at most `max` bytes (the gateway's own endpoints only;
/// proxied bodies stream), each wait for the client bounded by `timeout` (see
/// [`Deadline`]; `progress` learns how the client failed, if it did). A declared
/// `Content-Length` over the limit is refused before anything is read.
pub async fn read_limited(
    request: Request<Incoming>,
    max: usize,
    timeout: Duration,
    progress: Arc<Progress>,
) -> Result<Bytes, ReadError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(ReadError::TooLarge);
    }
    let body = Deadline::new(request.into_body(), timeout, Arc::clone(&progress));
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Err(_) if progress.failure() == Some(ClientFailure::TimedOut) => Err(ReadError::TimedOut),
        Err(_) => Err(ReadError::Unreadable),
    }
}

/// How a request body failed because of the client (label `kind` of
/// `sessiongate_client_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFailure {
    /// Nothing arrived for `listen.body_timeout`.
    TimedOut,
    /// The client broke off (or garbled) its body: a reset connection, a truncated
    /// or malformed chunk.
    Aborted,
}

impl ClientFailure {
    pub const ALL: [ClientFailure; 2] = [ClientFailure::TimedOut, ClientFailure::Aborted];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientFailure::TimedOut => "body_timeout",
            ClientFailure::Aborted => "body_aborted",
        }
    }
}

/// The error a [`Deadline`] body fails with when the client sends nothing in time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client sent nothing of its request body for {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// Told once when the client fails a body (to count it: the request's own task may
/// be gone by then, e.g. when the client closed the connection mid-body).
pub type FailureObserver = Box<dyn Fn(ClientFailure) + Send + Sync>;

/// What one request body has done so far, shared between the [`Deadline`] reading
/// it and whoever waits for the upstream's answer.
pub struct Progress {
    base: Instant,
    /// When the body last moved (a frame passed, or its end), in ms since `base`.
    moved: AtomicU64,
    /// The body is waiting for the client right now (its deadline is running).
    waiting: AtomicBool,
    /// 0: none; else a [`ClientFailure`] (1 timed out, 2 aborted).
    failure: AtomicU8,
    observer: Option<FailureObserver>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("last_moved", &self.last_moved())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("failure", &self.failure())
            .finish_non_exhaustive()
    }
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Progress::build(None)
    }

    /// A progress record that tells `observer` when the client fails the body.
    pub fn observed(observer: impl Fn(ClientFailure) + Send + Sync + 'static) -> Arc<Progress> {
        Progress::build(Some(Box::new(observer)))
    }

    fn build(observer: Option<FailureObserver>) -> Arc<Progress> {
        Arc::new(Progress {
            base: Instant::now(),
            moved: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            failure: AtomicU8::new(0),
            observer,
        })
    }

    /// How the client failed the body, if it did.
    pub fn failure(&self) -> Option<ClientFailure> {
        match self.failure.load(Ordering::Acquire) {
            1 => Some(ClientFailure::TimedOut),
            2 => Some(ClientFailure::Aborted),
            _ => None,
        }
    }

    /// When the body last moved (its creation if it never did).
    pub fn last_moved(&self) -> Instant {
        self.base
            .checked_add(Duration::from_millis(self.moved.load(Ordering::Acquire)))
            .unwrap_or(self.base)
    }

    /// Resolves once the other side has had `timeout` to act without the client
    /// holding it up: `timeout` after the body last moved, not counting time spent
    /// waiting for the client (that wait is bounded by the body's own deadline). The
    /// upstream's response timeout runs on this, so a slow honest upload does not
    /// eat into it.
    pub async fn quiet_for(&self, timeout: Duration) {
        loop {
            if self.waiting.load(Ordering::Acquire) {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let deadline = self.last_moved().checked_add(timeout);
            match deadline {
                Some(deadline) if Instant::now() < deadline => {
                    tokio::time::sleep_until(deadline).await;
                }
                _ => return,
            }
        }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved.fetch_max(ms, Ordering::AcqRel);
        self.waiting.store(false, Ordering::Release);
    }

    fn fail(&self, failure: ClientFailure) {
        let code = match failure {
            ClientFailure::TimedOut => 1,
            ClientFailure::Aborted => 2,
        };
        self.waiting.store(false, Ordering::Release);
        // The first failure is the cause; later ones are consequences.
        let first = self
            .failure
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            if let Some(observer) = &self.observer {
                observer(failure);
            }
        }
    }
}

/// A request body read under a deadline: whenever the reader waits for the client,
/// the client has `timeout` to deliver the next frame (or the end), else the body
/// fails with [`BodyTimedOut`]. Time the reader spends not asking (an upstream that
/// reads slowly) is not counted against the client. An error from the inner body is
/// the client's ([`ClientFailure::Aborted`]). Both are recorded in the [`Progress`].
pub struct Deadline<B> {
    inner: B,
    timeout: Duration,
    /// Made on the first wait (a body that never waits never allocates a timer);
    /// `armed` while a wait is being timed.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    progress: Arc<Progress>,
    /// After the end or a failure, nothing more is read.
    done: bool,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, timeout: Duration, progress: Arc<Progress>) -> Self {
        Deadline {
            inner,
            timeout,
            sleep: None,
            armed: false,
            progress,
            done: false,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                this.progress.moved();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.done = true;
                this.progress.fail(ClientFailure::Aborted);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.progress.moved();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = Instant::now()
                    .checked_add(this.timeout)
                    .unwrap_or_else(Instant::now);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    sleep.as_mut().reset(deadline);
                    this.armed = true;
                    this.progress.waiting.store(true, Ordering::Release);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        this.progress.fail(ClientFailure::TimedOut);
                        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A body fed by a channel: `Ok` chunks, an `Err` aborts; dropping the sender
    /// ends it.
    struct Fed(mpsc::Receiver<Result<Bytes, BoxError>>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(Frame::data)))
        }
    }

    fn fed(
        timeout_ms: u64,
    ) -> (
        mpsc::Sender<Result<Bytes, BoxError>>,
        Deadline<Fed>,
        Arc<Progress>,
    ) {
        let (tx, rx) = mpsc::channel(8);
        let progress = Progress::new();
        let body = Deadline::new(
            Fed(rx),
            Duration::from_millis(timeout_ms),
            Arc::clone(&progress),
        );
        (tx, body, progress)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout() {
        let (_tx, body, progress) = fed(500);
        let started = Instant::now();
        let error = body.collect().await.expect_err("times out");
        assert!(error.is::<BodyTimedOut>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(progress.failure(), Some(ClientFailure::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_steady_body_is_read_whole() {
        let (tx, body, progress) = fed(500);
        tokio::spawn(async move {
            for i in 0..5u8 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                tx.send(Ok(Bytes::from(vec![b'a' + i]))).await.unwrap();
            }
        });
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(
            &bytes[..],
            b"abcde",
            "2 s in all, never 500 ms without a byte"
        );
        assert_eq!(progress.failure(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_inner_error_is_the_clients_abort() {
        let (tx, body, progress) = fed(500);
        tx.send(Ok(Bytes::from_static(b"half"))).await.unwrap();
        tx.send(Err("connection reset".into())).await.unwrap();
        assert!(body.collect().await.is_err());
        assert_eq!(progress.failure(), Some(ClientFailure::Aborted));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_for_does_not_count_waiting_for_the_client() {
        let (tx, mut body, progress) = fed(1_000);
        let reader = tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                frame.unwrap();
            }
        });
        let started = Instant::now();
        let uploads = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
            }
        });
        // 1.2 s of upload, then the body ends: 200 ms of quiet count from there.
        progress.quiet_for(Duration::from_millis(200)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1_400), "{waited:?}");
        assert!(waited <= Duration::from_millis(1_700), "{waited:?}");
        uploads.await.unwrap();
        reader.await.unwrap();
    }
}
