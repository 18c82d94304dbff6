//! Wiring: builds the store, metrics, gateway and admin API from a [`Config`], binds
//! both listeners, and runs them with the sweeper until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::sessions::SessionApi;
use crate::admin::Admin;
use crate::config::Config;
use crate::hooks::{Hooks, HooksError};
use crate::metrics::Metrics;
use crate::net::{self, Limits};
use crate::proxy::tunnel::Tunnels;
use crate::proxy::{Gateway, GatewayError};
use crate::session::events::{LogObserver, Observers};
use crate::session::store::{MemoryStore, SessionStore};
use crate::session::{sweeper, Clock, Lifetime};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {what} address {address}: {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] net::tls::TlsError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Hooks(#[from] HooksError),
}

/// A started gateway.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: Arc<dyn SessionStore>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub hooks: Arc<Hooks>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    tunnels: Arc<Tunnels>,
    drain_timeout: std::time::Duration,
}

impl Running {
    /// Starts a graceful shutdown: stop accepting, drain, stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every listener has drained and stopped.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tunnels.close_all().await;
        // Sessions are not ended on shutdown, but end hooks already due (and their
        // retries) should still reach the backend.
        if !self.hooks.drain(self.drain_timeout).await {
            tracing::warn!("shutting down with hook calls still pending");
        }
    }
}

/// Binds the listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let clock = Clock::new();
    let metrics = Arc::new(Metrics::new()?);
    let hooks = Arc::new(Hooks::new(&config, clock, &metrics)?);
    let observers = Observers::new()
        .with(Arc::clone(&metrics) as _)
        .with(Arc::new(LogObserver))
        .with(Arc::clone(&hooks) as _);
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(
        Lifetime::from_config(&config.session),
        config.session.max_sessions,
        config.session.when_full,
        Arc::new(observers),
    ));
    // The store reaches the hooks through its observers, so the hooks hold the store
    // weakly: no reference cycle.
    let weak_store = Arc::downgrade(&store);
    hooks.on_timeout_handled(Arc::new(move |handle, idle_since| {
        if let Some(store) = weak_store.upgrade() {
            store.timeout_handled(&handle, idle_since, clock.now());
        }
    }))?;
    let gateway = Arc::new(Gateway::new(
        &config,
        Arc::clone(&store),
        clock,
        Arc::clone(&metrics),
        Arc::clone(&hooks),
    )?);
    let tls = config
        .listen
        .tls
        .as_ref()
        .map(net::tls::acceptor)
        .transpose()?;

    let bind = |what: &'static str, address: SocketAddr| async move {
        TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind {
                what,
                address,
                source,
            })
    };
    let public = bind("listen", config.listen.address).await?;
    let admin_listener = bind("admin", config.admin.address).await?;
    let public_addr = local_addr(&public, "listen", config.listen.address)?;
    let admin_addr = local_addr(&admin_listener, "admin", config.admin.address)?;

    let admin = Arc::new(Admin::new(
        Arc::clone(&metrics),
        gateway.upstream.authority().as_str().to_string(),
        config.upstream.connect_timeout.get(),
        SessionApi {
            store: Arc::clone(&store),
            clock,
            mode: config.session.mode,
        },
        config.admin.token.clone(),
    ));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let tunnels = Arc::clone(&gateway.tunnels);
    let gateway_for_housekeeping = Arc::clone(&gateway);
    let limits = Limits::from_config(&config.listen);
    tasks.spawn(net::serve(
        public,
        tls,
        gateway,
        limits.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(net::serve(
        admin_listener,
        None,
        admin,
        limits,
        shutdown.clone(),
    ));
    tasks.spawn(sweeper::run(Arc::clone(&store), clock, shutdown.clone()));
    tasks.spawn(housekeeping(
        Arc::clone(&gateway_for_housekeeping),
        clock,
        shutdown.clone(),
    ));

    tracing::info!(listen = %public_addr, admin = %admin_addr, upstream = %config.upstream.url, mode = %config.session.mode, "sessiongate started");
    Ok(Running {
        public_addr,
        admin_addr,
        store,
        metrics,
        clock,
        hooks,
        shutdown,
        tasks,
        tunnels,
        drain_timeout: config.listen.drain_timeout.get(),
    })
}

/// How often side tables (spent tickets, rate-limit buckets, retired tokens) are
/// pruned. They are bounded anyway; pruning only keeps them small.
const HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(10);

async fn housekeeping(gateway: Arc<Gateway>, clock: Clock, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(HOUSEKEEPING);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = clock.now();
        gateway.store.maintain(now);
        gateway.resolver.maintain(now);
    }
}

fn local_addr(
    listener: &TcpListener,
    what: &'static str,
    address: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        address,
        source,
    })
}
