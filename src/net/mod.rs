//! Listeners: accepting connections and serving HTTP/1.1 and HTTP/2 on them.
//!
//! One accept loop per listener ([`serve`]) hands each connection to its own task
//! ([`conn`]), optionally after a TLS handshake ([`tls`]). Connections are bounded by
//! a semaphore (`listen.max_connections`); the loop survives accept errors such as
//! `EMFILE` by backing off instead of exiting. An HTTP/2 connection announces at most
//! `listen.max_streams` concurrent streams. Shutdown stops accepting, asks every
//! connection to finish its in-flight requests, and closes what is left after
//! `listen.drain_timeout`.
//!
//! Listening sockets can come from another process instead of `bind`
//! ([`handoff`]: the zero-downtime hand-off, and systemd socket activation).
//!
//! Every request carries a [`Lease`] on its connection in its extensions: a request
//! that becomes an upgraded tunnel takes it along, so the tunnel keeps holding its
//! connection's `max_connections` permit (and can see when bytes last moved on the
//! client socket) after hyper has let go of the connection.

pub mod conn;
#[cfg(unix)]
pub mod handoff;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenConfig;
use crate::web::body::ProxyBody;

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `"http"` or `"https"`: the scheme the client used to reach us.
    pub scheme: &'static str,
}

/// A request's hold on its connection: the connection's `max_connections` permit,
/// released when the connection task *and* every lease (an upgraded tunnel's) are
/// gone, and when bytes last moved on the client socket.
#[derive(Clone)]
pub struct Lease {
    pub(crate) activity: Arc<conn::Activity>,
    pub(crate) _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl Lease {
    /// How long since a byte was last read from or written to the client socket.
    pub fn idle_for(&self) -> Duration {
        self.activity.io_idle()
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("idle_for", &self.idle_for())
            .finish_non_exhaustive()
    }
}

/// Something that answers requests: the gateway, or the admin API.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;

    /// Told when handling a request, or producing its response body, panicked (the
    /// connection has answered 500 or broken the response off, and logged it): to
    /// count it (`sessiongate_panics_total`).
    fn panicked(&self);
}

/// Connection-level limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// HTTP/2 concurrent streams per connection, announced in SETTINGS.
    pub max_streams: u32,
}

impl Limits {
    pub fn from_config(listen: &ListenConfig) -> Self {
        Limits {
            header_timeout: listen.header_timeout.get(),
            idle_timeout: listen.idle_timeout.get(),
            drain_timeout: listen.drain_timeout.get(),
            max_connections: listen.max_connections,
            max_header_bytes: listen.max_header_bytes,
            max_streams: listen.max_streams,
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, then drains.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    // Cancelled when the drain deadline passes: connections still open are dropped.
    let force = CancellationToken::new();
    let local = listener.local_addr().ok();

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_per_connection_error(&error) {
                        // EMFILE, ENFILE, ENOBUFS...: the process is out of something;
                        // wait for connections to close instead of spinning or exiting.
                        tracing::warn!(%error, "accept failed; backing off");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        tracker.spawn(conn::serve_connection(
            stream,
            peer,
            tls.clone(),
            Arc::clone(&handler),
            Arc::clone(&limits),
            shutdown.clone(),
            force.clone(),
            permit,
        ));
    }

    drop(listener);
    tracker.close();
    tracing::info!(
        address = local.map(tracing::field::display),
        open = tracker.len(),
        "listener closed; draining connections"
    );
    if tokio::time::timeout(limits.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "drain deadline passed; closing the remaining connections"
        );
        force.cancel();
        tracker.wait().await;
    }
}

/// Errors that concern only the connection being accepted (the peer gave up).
fn is_per_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
