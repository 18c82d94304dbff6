//! Upgraded connections (WebSocket and other `Upgrade` protocols) after the upstream
//! answered `101 Switching Protocols`.
//!
//! Once upgraded, a connection leaves hyper's hands, so hyper's graceful shutdown no
//! longer sees it: tunnels are tracked here and closed when the gateway stops. An open
//! tunnel is a sign of life for its session (it signals `last_seen` periodically), and
//! a tunnel whose session has ended is closed.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session::store::SessionStore;
use crate::session::{Clock, Session, State, Touch};

/// How often an open tunnel signals its session.
const SIGNAL_EVERY: Duration = Duration::from_secs(5);

/// The set of open tunnels.
#[derive(Debug, Default)]
pub struct Tunnels {
    tracker: TaskTracker,
    close: CancellationToken,
}

impl Tunnels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the client and upstream halves once both upgrades complete.
    pub fn spawn(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        session: Option<(Arc<Session>, Arc<dyn SessionStore>, Clock)>,
    ) {
        let close = self.close.clone();
        self.tracker.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            let mut copy = std::pin::pin!(copy);
            let mut signal = tokio::time::interval(SIGNAL_EVERY);
            loop {
                tokio::select! {
                    result = &mut copy => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "tunnel closed with an error");
                        }
                        return;
                    }
                    _ = close.cancelled() => return,
                    _ = signal.tick() => {
                        if let Some((session, store, clock)) = &session {
                            if store.touch(session, Touch::Signal, clock.now()) == State::Ended {
                                return;
                            }
                        }
                    }
                }
            }
        });
    }

    /// Closes every tunnel and waits until their tasks are gone. Called once the HTTP
    /// connections have drained: a WebSocket has no natural end to wait for.
    pub async fn close_all(&self) {
        self.tracker.close();
        self.close.cancel();
        self.tracker.wait().await;
    }
}
