//! The timeline sampler: one background thread per process, serving every
//! pool whose timeline is on. It wakes at the smallest tick among them,
//! samples each pool whose tick has come (deadpool's status and the
//! checkout count: a few uncontended locks), and exits once every pool is
//! gone. Pools with the timeline off never start it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::ledger::Ledger;

struct Registry {
    pools: Vec<Weak<Ledger>>,
    running: bool,
}

static REGISTRY: Mutex<Registry> = parking_lot::const_mutex(Registry {
    pools: Vec::new(),
    running: false,
});
static WAKE: Condvar = Condvar::new();

/// The sampler thread's name, as the OS and debuggers list it.
pub(crate) const THREAD_NAME: &str = "poolwatch-timeline";

/// Samples a pool's timeline until the pool is dropped.
pub(crate) fn register(ledger: &Arc<Ledger>) {
    if ledger.timeline.is_none() {
        return;
    }
    let mut registry = REGISTRY.lock();
    registry.pools.push(Arc::downgrade(ledger));
    WAKE.notify_all();
    if registry.running {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(run);
    // Without a thread the timeline stays empty; the report says so by
    // having no samples. Nothing else depends on it.
    registry.running = spawned.is_ok();
}

/// A pool went away: let the thread notice now rather than at its next tick.
pub(crate) fn wake() {
    let _registry = REGISTRY.lock();
    WAKE.notify_all();
}

fn run() {
    let mut registry = REGISTRY.lock();
    loop {
        registry.pools.retain(|p| p.strong_count() > 0);
        let live: Vec<Arc<Ledger>> = registry.pools.iter().filter_map(Weak::upgrade).collect();
        if live.is_empty() {
            registry.running = false;
            return;
        }
        let tick = live
            .iter()
            .filter_map(|l| l.timeline.as_ref().map(|t| t.tick))
            .min()
            .unwrap_or(Duration::from_secs(1));
        // Sample with the registry unlocked: a pool being created or
        // dropped meanwhile must not wait for the sampling.
        parking_lot::MutexGuard::unlocked(&mut registry, || {
            let now = Instant::now();
            for ledger in &live {
                ledger.sample_timeline(now);
            }
            drop(live);
        });
        WAKE.wait_for(&mut registry, tick);
    }
}

/// Whether the sampler thread is running (for tests and diagnostics).
pub(crate) fn running() -> bool {
    REGISTRY.lock().running
}
