//! The gateway under test: the test app behind the real gateway, in-process, on
//! ephemeral loopback ports (so a test can read the session store and the metrics).

use sessiongate::config::{Config, SessionMode};
use sessiongate::server::{self, Running};

use crate::app::App;
use crate::common::{metric_value, metrics_of, test_config};

/// The test app and a gateway in front of it.
pub struct Gate {
    pub app: App,
    pub gateway: Running,
}

impl Gate {
    /// Starts the app and a gateway in `mode`, after `tweak` adjusts the config.
    pub async fn start(mode: SessionMode, tweak: impl FnOnce(&mut Config)) -> Gate {
        let app = App::start().await;
        let mut config = test_config(&app.url());
        config.session.mode = mode;
        tweak(&mut config);
        let gateway = server::start(config).await.expect("gateway starts");
        Gate { app, gateway }
    }

    /// A URL on the gateway's public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.public_addr, path)
    }

    /// A URL on the gateway's admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.admin_addr, path)
    }

    /// One sample of the gateway's metrics, e.g.
    /// `sessiongate_sessions_ended_total{reason="timeout"}`; 0 when not rendered yet.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = metrics_of(self.gateway.admin_addr).await;
        metric_value(&text, sample).unwrap_or(0.0)
    }

    /// The state (`active`, `warning`) of the live session `handle` in the
    /// gateway's store, or `None` when there is no such live session.
    pub fn session_state(&self, handle: &str) -> Option<&'static str> {
        let handle = uuid::Uuid::parse_str(handle).ok()?;
        let store = &self.gateway.store;
        let now = self.gateway.clock.now();
        let session = store.get(&handle, now)?;
        Some(session.stored_state().as_str())
    }

    /// How many live sessions the gateway holds.
    pub fn live_sessions(&self) -> usize {
        self.gateway.store.len()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.gateway.shutdown();
    }
}
