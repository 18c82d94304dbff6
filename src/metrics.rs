//! Prometheus metrics (DESIGN.md §9), served on the admin listener only.
//!
//! Label values are fixed sets (reasons, routes, status classes): never a path, token,
//! handle or address. Every known label value is created at start so dashboards show
//! zeros instead of gaps. All updates are atomic increments; rendering `/metrics`
//! takes no lock that request handling needs.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::session::events::{SessionEvent, SessionObserver};
use crate::session::jar::Dropped;
use crate::session::{CreatedKind, EndReason, State};

/// Where a response came from (label `route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Proxy,
    Reserved,
    Bootstrap,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Proxy => "proxy",
            Route::Reserved => "reserved",
            Route::Bootstrap => "bootstrap",
        }
    }
}

pub use crate::web::body::ClientFailure;
use crate::web::refusal::Refusal;
pub use crate::web::refusal::UpstreamError;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub sessions_active: IntGaugeVec,
    pub sessions_created: IntCounterVec,
    pub sessions_ended: IntCounterVec,
    pub session_duration: HistogramVec,
    pub heartbeats: IntCounter,
    pub countdowns: IntCounterVec,
    pub bootstraps: IntCounterVec,
    pub requests: IntCounterVec,
    pub upstream_duration: Histogram,
    pub upstream_errors: IntCounterVec,
    /// Requests waiting for an upstream slot (`upstream.max_in_flight`).
    pub upstream_waiting: IntGauge,
    /// Upgraded (WebSocket) tunnels open now.
    pub tunnels_open: IntGauge,
    /// Hook jobs dropped or merged because a bound was reached, by hook.
    pub hook_dropped: IntCounterVec,
    pub client_errors: IntCounterVec,
    pub injections: IntCounterVec,
    pub hook_calls: IntCounterVec,
    pub refusals: IntCounterVec,
    /// Requests whose handling (or response body) panicked.
    pub panics: IntCounter,
    /// Upstream cookies the session cookie jars did not keep, by reason.
    pub jar_dropped: IntCounterVec,
    /// Failed calls to the shared session store (Redis), by operation.
    pub store_errors: IntCounterVec,
    /// `end` hooks this replica took over from one that stopped before firing them.
    pub end_hooks_taken_over: IntCounter,
    hot: Hot,
}

/// The per-request and per-transition series, resolved from their vectors at start.
/// Indexed by the enums' discriminants (`Route as usize`, `UpstreamError as usize`),
/// which follow the order the arrays are built in.
struct Hot {
    requests: [[IntCounter; 5]; 3],
    upstream_errors: [IntCounter; 4],
    client_errors: [IntCounter; 2],
    active: IntGauge,
    warning: IntGauge,
    injected: IntCounter,
    skipped: IntCounter,
}

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// Builds and registers every metric. Fails only on a programming error (a
    /// duplicate or invalid metric definition).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let level = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };

        let sessions_active = gauge(
            "sessiongate_sessions_active",
            "Live sessions by state.",
            &["state"],
        )?;
        let requests = counter(
            "sessiongate_requests_total",
            "Responses by route and status class.",
            &["route", "code"],
        )?;
        let upstream_errors = counter(
            "sessiongate_upstream_errors_total",
            "Failed upstream exchanges by kind.",
            &["kind"],
        )?;
        let client_errors = counter(
            "sessiongate_client_errors_total",
            "Request bodies the client failed, by kind (body_timeout, body_aborted).",
            &["kind"],
        )?;
        let injections = counter(
            "sessiongate_injections_total",
            "HTML responses by agent injection outcome.",
            &["outcome"],
        )?;
        // Resolved once: the request path bumps these without hashing label values.
        let hot = Hot {
            requests: [Route::Proxy, Route::Reserved, Route::Bootstrap].map(|route| {
                CODE_CLASSES.map(|code| requests.with_label_values(&[route.as_str(), code]))
            }),
            upstream_errors: UpstreamError::ALL
                .map(|kind| upstream_errors.with_label_values(&[kind.as_str()])),
            client_errors: ClientFailure::ALL
                .map(|kind| client_errors.with_label_values(&[kind.as_str()])),
            active: sessions_active.with_label_values(&["active"]),
            warning: sessions_active.with_label_values(&["warning"]),
            injected: injections.with_label_values(&["injected"]),
            skipped: injections.with_label_values(&["skipped"]),
        };

        let metrics = Metrics {
            sessions_active,
            requests,
            upstream_errors,
            client_errors,
            hot,
            upstream_waiting: level(
                "sessiongate_upstream_waiting",
                "Requests waiting for a free upstream slot (upstream.max_in_flight).",
            )?,
            tunnels_open: level(
                "sessiongate_tunnels_open",
                "Upgraded (WebSocket) tunnels open now.",
            )?,
            store_errors: counter(
                "sessiongate_store_errors_total",
                "Failed calls to the shared session store (store.backend = redis), by operation.",
                &["op"],
            )?,
            end_hooks_taken_over: {
                let c = IntCounter::new(
                    "sessiongate_end_hooks_taken_over_total",
                    "End hooks taken over from a replica that stopped before firing them (store.backend = redis).",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            hook_dropped: counter(
                "sessiongate_hook_dropped_total",
                "Hook jobs not made because a queue bound was reached (timeout) or merged into a queued one, by hook.",
                &["hook"],
            )?,
            sessions_created: counter(
                "sessiongate_sessions_created_total",
                "Sessions created, by kind.",
                &["kind"],
            )?,
            sessions_ended: counter(
                "sessiongate_sessions_ended_total",
                "Sessions ended, by reason.",
                &["reason"],
            )?,
            session_duration: histogram(
                "sessiongate_session_duration_seconds",
                "How long sessions lived, by end reason.",
                &["reason"],
                vec![
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
                    28800.0, 86400.0,
                ],
            )?,
            heartbeats: {
                let c = IntCounter::new("sessiongate_heartbeats_total", "Heartbeats received.")?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            countdowns: counter(
                "sessiongate_countdowns_total",
                "Countdowns by outcome.",
                &["outcome"],
            )?,
            bootstraps: counter(
                "sessiongate_bootstraps_total",
                "Bootstrap exchanges by outcome.",
                &["outcome"],
            )?,
            upstream_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "sessiongate_upstream_duration_seconds",
                        "Time from sending a request upstream to its response head.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0,
                    ]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            injections,
            hook_calls: counter(
                "sessiongate_hook_calls_total",
                "Hook calls by hook and outcome.",
                &["hook", "outcome"],
            )?,
            refusals: counter(
                "sessiongate_refusals_total",
                "Requests the gateway refused or failed on itself, by reason.",
                &["reason"],
            )?,
            panics: {
                let c = IntCounter::new(
                    "sessiongate_panics_total",
                    "Requests whose handling or response body panicked (answered 500, or the response broken off).",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            jar_dropped: counter(
                "sessiongate_jar_dropped_total",
                "Upstream cookies a session's cookie jar refused or dropped (upstream.cookie_jar), by reason.",
                &["reason"],
            )?,
            registry,
        };

        let process = prometheus::process_collector::ProcessCollector::for_self();
        metrics.registry.register(Box::new(process))?;
        metrics.initialise_labels();
        Ok(metrics)
    }

    /// Creates every known label combination at zero.
    fn initialise_labels(&self) {
        for state in ["active", "warning"] {
            self.sessions_active.with_label_values(&[state]);
        }
        for kind in CreatedKind::ALL {
            self.sessions_created.with_label_values(&[kind.as_str()]);
        }
        for reason in EndReason::ALL {
            self.sessions_ended.with_label_values(&[reason.as_str()]);
            self.session_duration.with_label_values(&[reason.as_str()]);
        }
        for outcome in ["extended", "expired", "handled"] {
            self.countdowns.with_label_values(&[outcome]);
        }
        for outcome in ["resumed", "new", "forked", "expired", "loop"] {
            self.bootstraps.with_label_values(&[outcome]);
        }
        for route in [Route::Proxy, Route::Reserved, Route::Bootstrap] {
            for code in CODE_CLASSES {
                self.requests.with_label_values(&[route.as_str(), code]);
            }
        }
        for kind in UpstreamError::ALL {
            self.upstream_errors.with_label_values(&[kind.as_str()]);
        }
        for kind in ClientFailure::ALL {
            self.client_errors.with_label_values(&[kind.as_str()]);
        }
        for op in crate::session::store::redis::ERROR_OPS {
            self.store_errors.with_label_values(&[op]);
        }
        for outcome in ["injected", "skipped"] {
            self.injections.with_label_values(&[outcome]);
        }
        for hook in ["start", "timeout", "end"] {
            for outcome in ["ok", "error", "timeout"] {
                self.hook_calls.with_label_values(&[hook, outcome]);
            }
        }
        for hook in ["start", "timeout", "end"] {
            self.hook_dropped.with_label_values(&[hook]);
        }
        for reason in Refusal::LABELS {
            self.refusals.with_label_values(&[reason]);
        }
        for reason in Dropped::ALL {
            self.jar_dropped.with_label_values(&[reason.as_str()]);
        }
    }

    /// Counts one cookie a session's jar refused or dropped.
    pub fn jar_dropped(&self, reason: Dropped) {
        self.jar_dropped.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts one response.
    pub fn request(&self, route: Route, status: http::StatusCode) {
        // 1xx..5xx map to 0..4; anything outside (hyper never sends it) counts as 5xx.
        let class = usize::from(status.as_u16() / 100)
            .saturating_sub(1)
            .min(CODE_CLASSES.len() - 1);
        self.hot.requests[route as usize][class].inc();
    }

    /// Counts one refusal by its label (see [`Refusal::label`]).
    pub fn refused(&self, reason: &str) {
        self.refusals.with_label_values(&[reason]).inc();
    }

    /// Counts one HTML page that got the agent (`true`) or should have and did not.
    pub fn injection(&self, injected: bool) {
        if injected {
            self.hot.injected.inc();
        } else {
            self.hot.skipped.inc();
        }
    }

    /// Counts a request whose handling (or response body) panicked.
    pub fn panicked(&self) {
        self.panics.inc();
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.hot.upstream_errors[kind as usize].inc();
    }

    /// Counts a request body the client failed (timed out or broke off).
    pub fn client_error(&self, kind: ClientFailure) {
        self.hot.client_errors[kind as usize].inc();
    }

    pub fn upstream_latency(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metrics; an error would leave
        // a partial page, which Prometheus reports as a scrape error.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn state_gauge(&self, state: State) -> Option<&IntGauge> {
        match state {
            State::Active => Some(&self.hot.active),
            State::Warning => Some(&self.hot.warning),
            State::Ended => None,
        }
    }
}

impl SessionObserver for Metrics {
    fn observe(&self, event: &SessionEvent<'_>) {
        match *event {
            SessionEvent::Started { kind, .. } => {
                self.sessions_created
                    .with_label_values(&[kind.as_str()])
                    .inc();
                if let Some(g) = self.state_gauge(State::Active) {
                    g.inc();
                }
            }
            SessionEvent::Warned { .. } => {
                if let Some(g) = self.state_gauge(State::Active) {
                    g.dec();
                }
                if let Some(g) = self.state_gauge(State::Warning) {
                    g.inc();
                }
            }
            // The timeout is reached but the session is still active: no gauge moves.
            SessionEvent::Idle { .. } => {}
            SessionEvent::Extended { .. } => {
                if let Some(g) = self.state_gauge(State::Warning) {
                    g.dec();
                }
                if let Some(g) = self.state_gauge(State::Active) {
                    g.inc();
                }
                self.countdowns.with_label_values(&["extended"]).inc();
            }
            SessionEvent::Handled { from_warning, .. } => {
                if from_warning {
                    if let Some(g) = self.state_gauge(State::Warning) {
                        g.dec();
                    }
                    if let Some(g) = self.state_gauge(State::Active) {
                        g.inc();
                    }
                }
                self.countdowns.with_label_values(&["handled"]).inc();
            }

            SessionEvent::Ended {
                session,
                reason,
                at,
                was,
            } => {
                if let Some(g) = self.state_gauge(was) {
                    g.dec();
                }
                if reason == EndReason::Timeout && was == State::Warning {
                    self.countdowns.with_label_values(&["expired"]).inc();
                }
                self.sessions_ended
                    .with_label_values(&[reason.as_str()])
                    .inc();
                let lived = at.saturating_sub(session.created());
                self.session_duration
                    .with_label_values(&[reason.as_str()])
                    .observe(lived as f64 / 1000.0);
            }
            // Counted where it ended; here only the hook is taken over.
            SessionEvent::EndOwed { .. } => self.end_hooks_taken_over.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-resolved series must be the ones their labels name.
    #[test]
    fn hot_counters_land_on_their_labels() {
        let metrics = Metrics::new().unwrap();
        metrics.request(Route::Reserved, http::StatusCode::NOT_FOUND);
        metrics.request(Route::Proxy, http::StatusCode::SWITCHING_PROTOCOLS);
        metrics.upstream_error(UpstreamError::Reset);
        metrics.client_error(ClientFailure::Aborted);
        metrics.panicked();
        let page = metrics.render();
        for sample in [
            "sessiongate_requests_total{code=\"4xx\",route=\"reserved\"} 1",
            "sessiongate_requests_total{code=\"1xx\",route=\"proxy\"} 1",
            "sessiongate_requests_total{code=\"4xx\",route=\"proxy\"} 0",
            "sessiongate_upstream_errors_total{kind=\"reset\"} 1",
            "sessiongate_upstream_errors_total{kind=\"connect\"} 0",
            "sessiongate_client_errors_total{kind=\"body_aborted\"} 1",
            "sessiongate_client_errors_total{kind=\"body_timeout\"} 0",
            "sessiongate_upstream_waiting 0",
            "sessiongate_panics_total 1",
        ] {
            assert!(
                page.lines().any(|line| line == sample),
                "{sample} not in:\n{page}"
            );
        }
    }
}
