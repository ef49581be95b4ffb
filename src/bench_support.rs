//! **Not public API.** Hooks into poolwatch's internals for its own benches
//! (`benches/`) and the memory test (`tests/guard_memory.rs`). Hidden from
//! the docs, exempt from semver, and may change or disappear in any
//! release: do not use it.

use std::panic::Location;
use std::sync::Arc;
use std::time::Instant;

use crate::config::WatchConfig;
use crate::ledger::{self, Checkout, Ticks};

/// A pool's ledger without a pool: outstanding checkouts opened directly,
/// as `WatchedPool::get` would open them.
pub struct Ledger(Arc<ledger::Ledger>);

impl Ledger {
    /// A ledger with `config` (its stack mode decides what
    /// [`open`](Self::open) captures under `leak-report`).
    pub fn new(config: &WatchConfig) -> Self {
        Self(Arc::new(ledger::Ledger::new(config)))
    }

    /// Opens `n` checkouts acquired now at the caller's line, no span,
    /// zero wait, in this thread's shard, and never closes them. Under
    /// `leak-report` each captures a stack if the stack mode wants it.
    /// Returns the acquire time they all share.
    #[track_caller]
    pub fn open(&self, n: usize) -> Instant {
        let location: &'static Location<'static> = Location::caller();
        let shard = self.0.local_shard();
        let acquired_at = Instant::now();
        for _ in 0..n {
            let (_key, _id) = shard.open(Checkout {
                location,
                span: None,
                waited: std::time::Duration::ZERO,
                acquired: Ticks::of(acquired_at),
            });
            #[cfg(feature = "leak-report")]
            shard.capture_stack(_key);
        }
        acquired_at
    }

    /// One checkout record opened and closed as a guard does on the hot
    /// path (span lookup, shard, `Arc`, close with a clock read and the
    /// checks of the report), without a pool: the bookkeeping's own cost.
    #[track_caller]
    #[inline(never)]
    pub fn open_close(&self) {
        let location: &'static Location<'static> = Location::caller();
        let shard = self.0.local_shard();
        let (key, id) = shard.open(Checkout {
            location,
            span: crate::site::SpanRef::current(),
            waited: std::time::Duration::ZERO,
            acquired: Ticks::now(),
        });
        let record = crate::guard::Record {
            shard: Arc::clone(shard),
            key,
            id,
        };
        record.finish(crate::outcome::Outcome::Returned);
    }

    /// Checkouts outstanding in the ledger.
    pub fn outstanding(&self) -> usize {
        self.0.outstanding_count()
    }

    /// One watchdog scan of this ledger's outstanding checkouts as of
    /// `now` with hold threshold `threshold` (the ledger part of the
    /// watchdog's round: one pass per shard under its lock); returns how
    /// many guards it flagged.
    #[cfg(feature = "leak-report")]
    pub fn scan(&self, now: Instant, threshold: std::time::Duration) -> usize {
        self.0.flag_overdue(Ticks::of(now), threshold).len()
    }
}

/// Bytes of one outstanding-checkout entry in the ledger's slab.
pub fn entry_size() -> usize {
    std::mem::size_of::<ledger::Outstanding>()
}

/// Captures the current stack as a checkout does under `leak-report`;
/// returns the number of frames captured.
#[cfg(feature = "leak-report")]
#[inline(never)]
pub fn capture_stack() -> usize {
    std::hint::black_box(crate::stack::capture()).len()
}

/// How many stack captures so far fell back from the fast walk to
/// `backtrace` (Linux x86_64; see `stack::capture`).
#[cfg(feature = "leak-report")]
pub fn slow_stack_captures() -> u64 {
    crate::stack::SLOW_CAPTURES.load(std::sync::atomic::Ordering::Relaxed)
}
