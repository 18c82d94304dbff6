//! The sweeper: a task that acts on deadlines as they pass.
//!
//! Every tick it asks the store to handle what came due, in chunks, yielding between
//! chunks so that expiring a large batch never starves request handling. Correctness
//! does not depend on it (lookups check deadlines themselves); it makes ends, hooks
//! and metrics happen on time, within a second of each deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store::SessionStore;
use super::Clock;

/// How often the sweeper looks for due deadlines.
pub const TICK: Duration = Duration::from_millis(250);

/// Deadlines handled per chunk before yielding.
pub const CHUNK: usize = 2048;

/// Runs until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn SessionStore>, clock: Clock, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        while store.sweep(clock.now(), CHUNK) == CHUNK {
            tokio::task::yield_now().await;
        }
    }
}
