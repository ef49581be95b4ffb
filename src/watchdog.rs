//! The watchdog (`leak-report`): one background thread per process, serving
//! every watched pool, that flags guards while they are still held.
//!
//! Pools register a [`Weak`] reference; the thread starts with the first
//! registration and exits once every registered pool is gone. Each round it
//! scans every pool's ledger (one pass per shard under that shard's lock),
//! emits its events with no lock held, then sleeps for an interval derived
//! from the smallest hold threshold, or until woken by a new pool, a
//! threshold change or a pool going away.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::ledger::Ticks;

/// What the watchdog needs of one pool.
pub(crate) trait Watched: Send + Sync {
    /// The pool's hold threshold now.
    fn hold_threshold(&self) -> Duration;
    /// Flags and reports the guards held past the threshold as of `now`.
    fn scan(&self, now: Ticks);
}

struct Registry {
    pools: Vec<Weak<dyn Watched>>,
    /// A thread is running (or about to) for these pools.
    running: bool,
    /// Something changed since the thread last looked.
    woken: bool,
}

static REGISTRY: Mutex<Registry> = parking_lot::const_mutex(Registry {
    pools: Vec::new(),
    running: false,
    woken: false,
});
static WAKE: Condvar = Condvar::new();

/// The watchdog's name, as threads are listed by the OS and debuggers.
pub(crate) const THREAD_NAME: &str = "poolwatch-watchdog";

/// Scans no more often than this, however small the threshold.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Scans at least this often, so a lowered threshold applies promptly.
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// A quarter of the smallest hold threshold: a guard is flagged at most
/// 25 % past it.
fn interval(thresholds: impl Iterator<Item = Duration>) -> Duration {
    let smallest = thresholds.min().unwrap_or(MAX_INTERVAL);
    (smallest / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Watches a pool until its last strong reference goes away; starts the
/// thread if none runs.
pub(crate) fn register(pool: Weak<dyn Watched>) {
    let mut registry = REGISTRY.lock();
    registry.pools.push(pool);
    registry.woken = true;
    WAKE.notify_one();
    if registry.running {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(run);
    match spawned {
        Ok(_) => registry.running = true,
        Err(error) => {
            drop(registry);
            crate::events::watchdog_unavailable(&error);
        }
    }
}

/// Makes the thread look again now: a threshold changed or a pool went
/// away.
pub(crate) fn wake() {
    let mut registry = REGISTRY.lock();
    registry.woken = true;
    WAKE.notify_one();
}

/// Whether poolwatch's watchdog thread is running.
///
/// With the `leak-report` feature the thread starts with the first
/// [`WatchedPool`](crate::WatchedPool) and stops soon after the last one
/// (every clone) is dropped. Without the feature there is no watchdog and
/// this is always `false`.
///
/// ```
/// // No pool exists in this program, so no watchdog runs.
/// assert!(!poolwatch::watchdog_running());
/// ```
pub fn watchdog_running() -> bool {
    REGISTRY.lock().running
}

fn run() {
    let mut registry = REGISTRY.lock();
    loop {
        registry.pools.retain(|pool| pool.strong_count() > 0);
        let pools: Vec<Arc<dyn Watched>> =
            registry.pools.iter().filter_map(Weak::upgrade).collect();
        if pools.is_empty() {
            registry.running = false;
            return;
        }
        registry.woken = false;
        let interval = interval(pools.iter().map(|pool| pool.hold_threshold()));
        // Scan and report without the registry lock; dropping `pools` may
        // run a pool's last `Drop`, which wakes us through that lock.
        MutexGuard::unlocked(&mut registry, move || {
            let now = Ticks::now();
            for pool in &pools {
                // A bug in a scan must not end the watchdog for every pool.
                let _ = catch_unwind(AssertUnwindSafe(|| pool.scan(now)));
            }
        });
        if !registry.woken {
            WAKE.wait_for(&mut registry, interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_follows_the_smallest_threshold() {
        let ms = Duration::from_millis;
        assert_eq!(interval([ms(400), ms(2000)].into_iter()), ms(100));
        assert_eq!(interval([ms(1)].into_iter()), MIN_INTERVAL);
        assert_eq!(
            interval([Duration::from_secs(60)].into_iter()),
            MAX_INTERVAL
        );
        assert_eq!(interval(std::iter::empty()), MAX_INTERVAL / 4);
    }
}
