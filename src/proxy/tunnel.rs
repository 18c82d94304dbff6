//! Upgraded connections (WebSocket and other `Upgrade` protocols) after the upstream
//! answered `101 Switching Protocols`.
//!
//! Once upgraded, a connection leaves hyper's hands, so neither hyper's graceful
//! shutdown nor the connection task sees it any more. A tunnel therefore:
//! - holds its client connection's [`Lease`], and with it the `listen.max_connections`
//!   permit, until it closes — tunnels count against the connection limit;
//! - closes after `listen.idle_timeout` without a byte moving on the client socket in
//!   either direction (nginx's `proxy_read_timeout` for WebSockets): applications that
//!   keep idle sockets open send pings;
//! - is counted in `sessiongate_tunnels_open`;
//! - on shutdown gets `listen.drain_timeout` to finish by itself, then is closed;
//! - is a sign of life for its session: at most once per heartbeat interval it touches
//!   the session with a signal (no per-byte work), and once more when it closes, so the
//!   abandon clock runs from the moment the last tunnel closed;
//! - is closed when its session has ended (checked at least once a second).

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::lifetime::Lifetime;
use crate::metrics::Metrics;
use crate::net::Lease;
use crate::session::store::SessionStore;
use crate::session::{Clock, Session, State, Touch};

/// A tunnel never signals its session more often than this, whatever the heartbeat.
const MIN_SIGNAL_EVERY: Duration = Duration::from_secs(1);

/// The session an open tunnel keeps alive.
pub type TunnelSession = (Arc<Session>, Arc<dyn SessionStore>, Clock);

/// The set of open tunnels.
#[derive(Debug)]
pub struct Tunnels {
    tracker: TaskTracker,
    close: CancellationToken,
    idle_timeout: Duration,
    lifetime: Lifetime,
    open: IntGauge,
}

/// Counts a tunnel in the gauge while it lives.
struct Open(IntGauge);

impl Open {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Tunnels {
    pub fn new(config: &Config, metrics: &Metrics) -> Self {
        Tunnels {
            tracker: TaskTracker::new(),
            close: CancellationToken::new(),
            idle_timeout: config.listen.idle_timeout.get(),
            lifetime: config.lifetime(),
            open: metrics.tunnels_open.clone(),
        }
    }

    /// How often a tunnel of a session whose timeout is `timeout` ms signals it: the
    /// heartbeat interval the agent would use.
    fn signal_every(&self, timeout: u64) -> Duration {
        Duration::from_millis(self.lifetime.heartbeat_for(timeout)).max(MIN_SIGNAL_EVERY)
    }

    /// Joins the client and upstream halves once both upgrades complete. The tunnel
    /// holds `lease` (its connection permit) until it closes.
    pub fn spawn(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        lease: Lease,
        session: Option<TunnelSession>,
    ) {
        let close = self.close.clone();
        let idle_timeout = self.idle_timeout;
        let signal_every = session
            .as_ref()
            .map(|(session, _, _)| self.signal_every(session.timeout()));
        let gauge = self.open.clone();
        self.tracker.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let _open = Open::new(&gauge);
            run(
                client,
                upstream,
                &lease,
                idle_timeout,
                close,
                session.as_ref().zip(signal_every),
            )
            .await;
            // The abandon clock of the session runs from the moment it closed.
            if let Some((session, store, clock)) = &session {
                store.touch(session, Touch::Signal, clock.now());
            }
            drop(lease);
        });
    }

    /// Closes every tunnel still open `drain` after `shutdown` and waits until their
    /// tasks are gone. A WebSocket has no natural end to wait for, but it gets the
    /// same time as an in-flight request to finish by itself.
    pub async fn close_after(&self, shutdown: CancellationToken, drain: Duration) {
        shutdown.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::debug!(open = self.tracker.len(), "closing tunnels at shutdown");
            self.close.cancel();
            self.tracker.wait().await;
        }
    }

    /// Closes every tunnel now and waits until their tasks are gone.
    pub async fn close_all(&self) {
        self.tracker.close();
        self.close.cancel();
        self.tracker.wait().await;
    }
}

/// Copies both ways until either side closes, the tunnel has been idle for
/// `idle_timeout`, the gateway closes it, or its session has ended.
async fn run(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    lease: &Lease,
    idle_timeout: Duration,
    close: CancellationToken,
    session: Option<(&TunnelSession, Duration)>,
) {
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut copy = std::pin::pin!(copy);
    let never = Duration::from_secs(86_400 * 365);
    let mut signal = tokio::time::interval(session.map_or(never, |(_, every)| every));
    signal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Cheap (two atomic loads), so often enough that an ended session's tunnel goes
    // within a second.
    let check_every = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut copy => {
                if let Err(error) = result {
                    tracing::debug!(%error, "tunnel closed with an error");
                }
                return;
            }
            _ = close.cancelled() => return,
            _ = check.tick() => {
                // Every byte either way crosses the client socket, which the lease sees.
                if lease.idle_for() >= idle_timeout {
                    tracing::debug!("tunnel idle for listen.idle_timeout; closing");
                    return;
                }
                if session.is_some_and(|((session, _, _), _)| session.stored_state() == State::Ended) {
                    return;
                }
            }
            _ = signal.tick() => {
                if let Some(((session, store, clock), _)) = session {
                    if store.touch(session, Touch::Signal, clock.now()) == State::Ended {
                        return;
                    }
                }
            }
        }
    }
}
