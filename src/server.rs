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
use crate::hooks::{HookKind, Hooks, HooksError};
use crate::metrics::Metrics;
use crate::net::{self, Limits};
use crate::proxy::tunnel::Tunnels;
use crate::proxy::{Gateway, GatewayError};
use crate::session::events::{LogObserver, Observers};
use crate::session::store::{MemoryStore, SessionStore};
use crate::session::{sweeper, Clock, Lifetime};

/// Why the gateway could not start. A cause is reported through `source()`, never
/// repeated in the message, so a printed error chain names it once.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {what} address {address}")]
    Bind {
        /// `listen` or `admin`: the config section of the address.
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] net::tls::TlsError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("cannot register the metrics")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Hooks(#[from] HooksError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
}

impl StartError {
    /// What the operator can do about it, when there is an obvious answer.
    pub fn hint(&self) -> Option<String> {
        match self {
            StartError::Bind { what, address, .. } => {
                let example = SocketAddr::new(address.ip(), address.port().wrapping_add(1).max(1));
                let var = format!("SESSIONGATE_{}__ADDRESS", what.to_ascii_uppercase());
                Some(format!(
                    "choose another address, e.g. {var}={example}, or set {what}.address in the config file"
                ))
            }
            _ => None,
        }
    }
}

/// How a listener takes its configured address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Bind {
    /// Exactly that address; if it is taken, the gateway does not start.
    #[default]
    Exact,
    /// That address, or a free port on the same IP when it is in use. For addresses
    /// nobody chose (`sessiongate demo`'s defaults), never for configured ones.
    OrFreePort,
}

/// How [`start_with`] binds its two listeners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binds {
    pub listen: Bind,
    pub admin: Bind,
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

/// Binds the listeners (exactly the configured addresses) and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, Binds::default()).await
}

/// [`start`], with a choice of what happens when an address is taken.
pub async fn start_with(config: Config, binds: Binds) -> Result<Running, StartError> {
    let clock = Clock::new();
    let metrics = Arc::new(Metrics::new()?);
    let hooks = Arc::new(Hooks::new(&config, clock, &metrics)?);
    let observers = Observers::new()
        .with(Arc::clone(&metrics) as _)
        .with(Arc::new(LogObserver))
        .with(Arc::clone(&hooks) as _);
    // With a `timeout` hook the app is asked first: the countdown waits for its
    // answer, for `hooks.budget` at most.
    let mut rules = Lifetime::from_config(&config.session);
    if hooks.enabled(HookKind::Timeout) {
        rules = rules.with_consult(config.hooks.budget.get());
    }
    let store: Arc<dyn SessionStore> = Arc::new(
        MemoryStore::new(
            rules,
            config.session.max_sessions,
            config.session.when_full,
            Arc::new(observers),
        )?
        .with_max_per_client(config.session.max_per_client),
    );
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

    let public = bind("listen", config.listen.address, binds.listen).await?;
    let admin_listener = bind("admin", config.admin.address, binds.admin).await?;
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
    {
        let tunnels = Arc::clone(&tunnels);
        let (shutdown, drain) = (shutdown.clone(), config.listen.drain_timeout.get());
        tasks.spawn(async move { tunnels.close_after(shutdown, drain).await });
    }
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

/// Binds `address`, or with [`Bind::OrFreePort`] a free port on its IP when it is in use.
async fn bind(
    what: &'static str,
    address: SocketAddr,
    how: Bind,
) -> Result<TcpListener, StartError> {
    let error = match TcpListener::bind(address).await {
        Ok(listener) => return Ok(listener),
        Err(error) => error,
    };
    if how == Bind::Exact || error.kind() != std::io::ErrorKind::AddrInUse {
        return Err(StartError::Bind {
            what,
            address,
            source: error,
        });
    }
    let any_port = SocketAddr::new(address.ip(), 0);
    let listener = TcpListener::bind(any_port)
        .await
        .map_err(|source| StartError::Bind {
            what,
            address: any_port,
            source,
        })?;
    if let Ok(instead) = listener.local_addr() {
        tracing::warn!(%address, %instead, "{what} address in use; listening on a free port instead");
    }
    Ok(listener)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_address_falls_back_only_when_allowed() {
        let held = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let taken = held.local_addr().expect("addr");

        let error = bind("listen", taken, Bind::Exact)
            .await
            .expect_err("the address is taken");
        let text = error.to_string();
        assert_eq!(text, format!("cannot listen on listen address {taken}"));
        let cause = std::error::Error::source(&error).expect("the cause");
        assert!(!text.contains(&cause.to_string()), "cause twice: {text}");
        let hint = error.hint().expect("a hint");
        assert!(hint.contains("SESSIONGATE_LISTEN__ADDRESS="), "{hint}");

        let listener = bind("admin", taken, Bind::OrFreePort)
            .await
            .expect("falls back");
        let got = listener.local_addr().expect("addr");
        assert_eq!(got.ip(), taken.ip());
        assert_ne!(got.port(), taken.port());

        // A free address is taken as it is, whatever the mode.
        drop((held, listener));
        let again = bind("listen", taken, Bind::OrFreePort).await.expect("free");
        assert_eq!(again.local_addr().expect("addr"), taken);
    }
}
