//! **Not public API.** Hooks into poolwatch's internals for its own benches
//! (`benches/`) and the memory test (`tests/guard_memory.rs`). Hidden from
//! the docs, exempt from semver, and may change or disappear in any
//! release: do not use it.

use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::WatchConfig;
use crate::ledger::{self, Checkout, Ticks};
use crate::observe::Disposal;
use crate::shared::Shared;

/// A pool's ledger without a pool: outstanding checkouts opened directly,
/// as `WatchedPool::get` would open them.
pub struct Ledger(Arc<Shared>);

impl Ledger {
    /// A ledger with `config` (its stack mode decides what
    /// [`open`](Self::open) captures under `leak-report`).
    pub fn new(config: &WatchConfig) -> Self {
        Self(Shared::new(config))
    }

    /// Opens `n` checkouts acquired now at the caller's line, no span,
    /// zero wait, in this thread's shard, and never closes them. Under
    /// `leak-report` each captures a stack if the stack mode wants it.
    /// Returns the acquire time they all share.
    #[track_caller]
    pub fn open(&self, n: usize) -> Instant {
        let location: &'static Location<'static> = Location::caller();
        let shard = self.0.ledger.local_shard();
        let acquired_at = Instant::now();
        for _ in 0..n {
            let (_key, _id, _rank) = shard.open(Checkout {
                location,
                span: None,
                task: None,
                waited: Duration::ZERO,
                acquired: Ticks::of(acquired_at),
                connection: None,
                panicking: false,
            });
            #[cfg(feature = "leak-report")]
            shard.capture_stack(_key, self.0.stacks.get());
        }
        acquired_at
    }

    /// One checkout record opened and closed as a guard does on the hot
    /// path (span and task lookup, shard, `Arc`, close with a clock read
    /// and the observer's checks), without a pool: the bookkeeping's own
    /// cost.
    #[track_caller]
    #[inline(never)]
    pub fn open_close(&self) {
        let location: &'static Location<'static> = Location::caller();
        let shard = self.0.ledger.local_shard();
        let (handle, key, _id, _rank) = shard.open_held(Checkout {
            location,
            span: crate::site::SpanRef::current(),
            task: crate::task::current(),
            waited: Duration::ZERO,
            acquired: Ticks::now(),
            connection: None,
            panicking: std::thread::panicking(),
        });
        handle.close(
            key,
            crate::outcome::Outcome::Returned,
            Ticks::now(),
            |closed| {
                if let Some(closed) = closed {
                    handle.attached.closed(closed, Disposal::Returned);
                }
            },
        );
    }

    /// Checkouts outstanding in the ledger.
    pub fn outstanding(&self) -> usize {
        self.0.ledger.outstanding_count()
    }

    /// One watchdog scan of this ledger's outstanding checkouts as of
    /// `now` with hold threshold `threshold` (the ledger part of the
    /// watchdog's round: short passes per shard under its lock); returns
    /// how many guards it flagged.
    #[cfg(feature = "leak-report")]
    pub fn scan(&self, now: Instant, threshold: Duration) -> usize {
        let (flagged, unreported) =
            self.0
                .ledger
                .flag_overdue(Ticks::of(now), threshold, 1024, usize::MAX);
        flagged.len() + unreported.total() as usize
    }
}

#[cfg(feature = "leak-report")]
impl Ledger {
    /// [`Self::scan`] with the watchdog's bound on keys per lock hold and
    /// budget, returning how long each shard-lock hold lasted.
    pub fn scan_lock_holds(&self, now: Instant, threshold: Duration) -> Vec<Duration> {
        let mut holds = Vec::new();
        self.0
            .ledger
            .flag_overdue_timed(Ticks::of(now), threshold, 1024, 32, |d| holds.push(d));
        holds
    }
}

/// Bytes of one outstanding-checkout entry in the ledger's slab.
pub fn entry_size() -> usize {
    ledger::outstanding_entry_size()
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
