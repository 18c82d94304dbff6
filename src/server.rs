//! Wiring: builds the store, metrics, gateway and admin API from a [`Config`], binds
//! both listeners (or takes them over from a predecessor), restores the session
//! snapshot, and runs them with the sweeper and the snapshot writer until shutdown.
//!
//! Shutdown (SIGTERM/SIGINT through the binary, or [`Running::shutdown`]): stop
//! accepting, drain connections within `listen.drain_timeout`, write the final
//! snapshot, deliver pending hooks in what is left of the drain time. A hand-off
//! (`persist.handoff`) instead writes the final snapshot as soon as accepting stops
//! and passes the listening sockets on, then drains the same way.

use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::sessions::SessionApi;
use crate::admin::Admin;
use crate::config::Config;
use crate::config::StoreBackend;
use crate::hooks::{HookKind, Hooks, HooksError};
use crate::metrics::Metrics;
use crate::net::{self, Limits};
use crate::proxy::tunnel::Tunnels;
use crate::proxy::{Gateway, GatewayError};
use crate::session::events::{LogObserver, Observers};
use crate::session::persist::{self, Persister, Snapshot};
use crate::session::store::redis::{self as redis_store, RedisStore};
use crate::session::store::{MemoryStore, SessionStore};
use crate::session::token::Secrets;
use crate::session::{sweeper, Clock, Lifetime, State};

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
    #[error(transparent)]
    Store(#[from] crate::session::store::redis::RedisStoreError),
    #[cfg(unix)]
    #[error("cannot take over from the running gateway")]
    Takeover(#[from] net::handoff::TakeoverError),
    #[error("cannot use the listening sockets passed by systemd (LISTEN_FDS)")]
    Inherited(#[source] std::io::Error),
    #[error("cannot listen on the hand-off socket {path}")]
    Handoff {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
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

/// How [`start_with_options`] gets its listening sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub binds: Binds,
    /// Take the listening sockets (and, through the snapshot, the sessions) over
    /// from the gateway listening on `persist.handoff`, if one does; else bind.
    pub takeover: bool,
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
    persister: Option<Arc<Persister>>,
    /// Set once the listeners went to a new process (which has the final snapshot).
    handed_off: Arc<AtomicBool>,
}

impl Running {
    /// Starts a graceful shutdown: stop accepting, drain, stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves once a shutdown has started: asked for, or a hand-off to a new process.
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await;
    }

    /// Whether the listening sockets were handed to a new process.
    pub fn handed_off(&self) -> bool {
        self.handed_off.load(Ordering::Acquire)
    }

    /// Waits until every listener has drained and stopped (within `drain_timeout`),
    /// writes the final snapshot (unless a successor took over: it has it), and
    /// delivers pending hook calls in what is left of the drain time.
    pub async fn wait(self) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        self.tasks.close();
        self.tasks.wait().await;
        self.tunnels.close_all().await;
        if let Some(persister) = &self.persister {
            if !self.handed_off() {
                persister.save_logged("shutdown").await;
            }
        }
        // Sessions are not ended on shutdown, but end hooks already due (and their
        // retries) should still reach the backend.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.hooks.drain(left).await {
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
    start_with_options(
        config,
        Options {
            binds,
            takeover: false,
        },
    )
    .await
}

/// The clock and keys to run with: those of the snapshot's writer when its clock
/// scale can be resumed; its handle and binding keys with a fresh ticket key when
/// not (a ticket's expiry is an instant of the old scale); fresh ones without one.
fn clock_and_secrets(snapshot: Option<&Snapshot>) -> Result<(Clock, Secrets), StartError> {
    let Some(snapshot) = snapshot else {
        return Ok((Clock::new(), Secrets::generate()?));
    };
    match Clock::resuming(snapshot.zero_wall) {
        Some(clock) => Ok((clock, snapshot.secrets.clone())),
        None => {
            tracing::warn!(
                "the snapshot's clock cannot be resumed (the wall clock went back?): instants are clamped and tickets issued before the restart are void"
            );
            Ok((Clock::new(), snapshot.secrets.clone().with_fresh_tickets()?))
        }
    }
}

/// Listening sockets from a predecessor: the hand-off (with `takeover`), or systemd.
#[cfg(unix)]
async fn inherit(
    config: &Config,
    takeover: bool,
) -> Result<Option<net::handoff::Inherited>, StartError> {
    if takeover {
        if let Some(path) = config.persist.handoff_path() {
            let path = path.to_path_buf();
            let taken = tokio::task::spawn_blocking(move || net::handoff::take_over(&path))
                .await
                .map_err(|join| StartError::Inherited(std::io::Error::other(join.to_string())))??;
            match &taken {
                Some(_) => tracing::info!("took over the listening sockets of the running gateway"),
                None => tracing::info!("no running gateway to take over from; binding"),
            }
            if taken.is_some() {
                return Ok(taken);
            }
        } else {
            tracing::warn!("--takeover without persist.handoff: binding");
        }
    }
    net::handoff::from_systemd().map_err(StartError::Inherited)
}

/// A tokio listener from an inherited one.
#[cfg(unix)]
fn adopt(listener: std::net::TcpListener) -> Result<TcpListener, StartError> {
    TcpListener::from_std(listener).map_err(StartError::Inherited)
}

/// Starts the gateway as [`Options`] say.
pub async fn start_with_options(config: Config, options: Options) -> Result<Running, StartError> {
    let binds = options.binds;
    #[cfg(unix)]
    let inherited = inherit(&config, options.takeover).await?;
    // After a hand-off, this is the snapshot the old process has just written.
    let snapshot = match config.persist.snapshot_path() {
        Some(path) => {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || persist::load_or_set_aside(&path))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    // With Redis, the clock scale and the keys are the ones every replica shares.
    let shared = match config.store.backend {
        StoreBackend::Memory => None,
        StoreBackend::Redis => {
            let store_config = config.store.clone();
            Some(
                tokio::task::spawn_blocking(move || redis_store::connect(&store_config))
                    .await
                    .map_err(|join| {
                        StartError::Inherited(std::io::Error::other(join.to_string()))
                    })??,
            )
        }
    };
    let (clock, secrets) = match &shared {
        Some((_, clock, secrets)) => (*clock, secrets.clone()),
        None => clock_and_secrets(snapshot.as_ref())?,
    };
    let metrics = Arc::new(Metrics::new()?);
    let hooks = Arc::new(Hooks::new(&config, clock, &metrics)?);
    let observers: Arc<dyn crate::session::events::SessionObserver> = Arc::new(
        Observers::new()
            .with(Arc::clone(&metrics) as _)
            .with(Arc::new(LogObserver))
            .with(Arc::clone(&hooks) as _),
    );
    // With a `timeout` hook the app is asked first: the countdown waits for its
    // answer, for `hooks.budget` at most.
    let mut rules = Lifetime::from_config(&config.session);
    if hooks.enabled(HookKind::Timeout) {
        rules = rules.with_consult(config.hooks.budget.get());
    }
    let (store, memory, redis): (Arc<dyn SessionStore>, _, _) = match shared {
        Some((link, ..)) => {
            let redis = Arc::new(
                RedisStore::with_link(
                    link,
                    rules,
                    config.session.max_sessions,
                    config.session.when_full,
                    observers,
                )?
                .with_secrets(&secrets)
                .with_max_per_client(config.session.max_per_client),
            );
            let errors = metrics.store_errors.clone();
            redis.on_store_error(Box::new(move |op| errors.with_label_values(&[op]).inc()));
            if hooks.enabled(HookKind::End) {
                redis.owe_end_hooks(hooks.end_worst_case());
            }
            (Arc::clone(&redis) as _, None, Some(redis))
        }
        None => {
            let memory = Arc::new(
                MemoryStore::new(
                    rules,
                    config.session.max_sessions,
                    config.session.when_full,
                    observers,
                )?
                .with_secrets(&secrets)
                .with_max_per_client(config.session.max_per_client),
            );
            (Arc::clone(&memory) as _, Some(memory), None)
        }
    };
    // The store reaches the hooks through its observers, so the hooks hold the store
    // weakly: no reference cycle.
    let weak_store = Arc::downgrade(&store);
    hooks.on_timeout_handled(Arc::new(move |handle, idle_since| {
        if let Some(store) = weak_store.upgrade() {
            store.timeout_handled(&handle, idle_since, clock.now());
        }
    }))?;
    let weak_store = Arc::downgrade(&store);
    hooks.on_end_done(Arc::new(move |handle| {
        if let Some(store) = weak_store.upgrade() {
            store.end_hook_done(&handle);
        }
    }))?;
    // With the hooks wired: restoring may end sessions (`end` hooks) and announce
    // idle ones (`timeout` hooks, whose answers come back through the callback above).
    if let (Some(snapshot), Some(memory)) = (&snapshot, &memory) {
        restore(memory, snapshot, clock, &metrics).await;
    }
    let gateway = Arc::new(Gateway::new(
        &config,
        Arc::clone(&store),
        clock,
        Arc::clone(&metrics),
        Arc::clone(&hooks),
        &secrets,
    )?);
    let tls = config
        .listen
        .tls
        .as_ref()
        .map(net::tls::acceptor)
        .transpose()?;

    #[cfg(unix)]
    let (public, admin_listener) = match inherited {
        Some(inherited) => {
            let public = adopt(inherited.public)?;
            let admin = match inherited.admin {
                Some(admin) => adopt(admin)?,
                None => bind("admin", config.admin.address, binds.admin).await?,
            };
            (public, admin)
        }
        None => (
            bind("listen", config.listen.address, binds.listen).await?,
            bind("admin", config.admin.address, binds.admin).await?,
        ),
    };
    #[cfg(not(unix))]
    let (public, admin_listener) = (
        bind("listen", config.listen.address, binds.listen).await?,
        bind("admin", config.admin.address, binds.admin).await?,
    );
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
    let handed_off = Arc::new(AtomicBool::new(false));
    let persister = config
        .persist
        .snapshot_path()
        .zip(memory.as_ref())
        .map(|(path, memory)| {
            Arc::new(Persister::new(
                path.to_path_buf(),
                Arc::clone(memory),
                clock,
                secrets.clone(),
            ))
        });
    if let Some(redis) = &redis {
        tasks.spawn(redis_store::run(
            Arc::clone(redis),
            clock,
            secrets.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(persister) = &persister {
        tasks.spawn(Arc::clone(persister).run(config.persist.interval.get(), shutdown.clone()));
    }
    #[cfg(unix)]
    if let (Some(path), Some(persister)) = (config.persist.handoff_path(), &persister) {
        // Copies of the listening sockets, kept to hand over: the accept loops close
        // theirs when they stop, these keep the sockets (and their backlogs) open.
        let dup = |listener: &TcpListener, what| {
            listener
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| StartError::Bind {
                    what,
                    address: config.listen.address,
                    source,
                })
        };
        let fds = (dup(&public, "listen")?, dup(&admin_listener, "admin")?);
        let handoff =
            net::handoff::HandoffListener::bind(path).map_err(|source| StartError::Handoff {
                path: path.to_path_buf(),
                source,
            })?;
        tasks.spawn(serve_handoff(
            handoff,
            fds,
            Arc::clone(persister),
            shutdown.clone(),
            Arc::clone(&handed_off),
        ));
    }
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
        persister,
        handed_off,
    })
}

/// Puts the snapshot's sessions back and ends, through the sweeper's rules (with
/// their reasons, events and `end` hooks), those whose deadlines passed while the
/// gateway was down.
async fn restore(memory: &Arc<MemoryStore>, snapshot: &Snapshot, clock: Clock, metrics: &Metrics) {
    let report = memory.restore(snapshot.table(&clock), clock.now());
    // Restored sessions emitted no `Started`: the state gauges learn of them here.
    for (state, count) in [
        (State::Active, report.active),
        (State::Warning, report.warning),
    ] {
        metrics
            .sessions_active
            .with_label_values(&[state.as_str()])
            .add(i64::try_from(count).unwrap_or(i64::MAX));
    }
    let mut overdue = 0;
    loop {
        let looked_at = memory.sweep(clock.now(), 4096);
        overdue += looked_at;
        if looked_at < 4096 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let live = memory.len();
    tracing::info!(
        restored = report.active + report.warning,
        dropped_over_max_sessions = report.dropped,
        jars_dropped = report.jars_dropped,
        due_at_restore = overdue,
        live,
        down_ms = persist_age(snapshot),
        "sessions restored from the snapshot"
    );
    if report.dropped > 0 {
        tracing::warn!(
            dropped = report.dropped,
            "the snapshot holds more sessions than session.max_sessions: the least recently seen were not restored"
        );
    }
}

/// How long ago the snapshot was written (ms).
fn persist_age(snapshot: &Snapshot) -> u64 {
    crate::session::clock::wall_now().saturating_sub(snapshot.written_at)
}

/// Waits for a new process on the hand-off socket; then stops accepting (the
/// listening sockets stay open through `fds`, so new connections wait in the
/// backlog), writes the final snapshot, and hands the sockets over. The caller's
/// [`Running::stopping`] then resolves, and the old process drains and exits.
#[cfg(unix)]
async fn serve_handoff(
    handoff: net::handoff::HandoffListener,
    fds: (OwnedFd, OwnedFd),
    persister: Arc<Persister>,
    shutdown: CancellationToken,
    handed_off: Arc<AtomicBool>,
) {
    let request = tokio::select! {
        _ = shutdown.cancelled() => return,
        request = handoff.next() => request,
    };
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            tracing::error!(path = %handoff.path().display(), %error, "hand-off socket failed; no zero-downtime restart");
            return;
        }
    };
    tracing::info!("hand-off: a new process takes over; stopping accepting");
    // Before anything stops: from here on, this process writes no snapshot but the
    // final one below (the new process writes the next).
    handed_off.store(true, Ordering::Release);
    shutdown.cancel();
    if !persister.save_logged("handoff").await {
        tracing::error!(
            "hand-off without a final snapshot: the new process restores the previous one"
        );
    }
    let (public, admin) = fds;
    let sent = tokio::task::spawn_blocking(move || request.send(&public, &admin)).await;
    match sent {
        Ok(Ok(())) => tracing::info!("hand-off: listening sockets passed on; draining"),
        Ok(Err(error)) => {
            tracing::error!(%error, "hand-off: could not pass the listening sockets on")
        }
        Err(error) => tracing::error!(%error, "hand-off: could not pass the listening sockets on"),
    }
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
