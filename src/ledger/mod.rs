//! The ledger: every outstanding checkout and the per-call-site statistics
//! of one pool. It is the only shared mutable state in poolwatch; events,
//! snapshots (and the watchdog) only read it.
//!
//! It is split into a few shards, each a [`parking_lot::Mutex`] around a
//! [`ShardState`]. A thread always opens its checkouts in the same shard, so
//! two threads checking out at once neither contend for a lock nor bounce a
//! cache line; a guard closes its record in the shard that opened it,
//! whichever thread drops it.

mod shard;
mod stats;

use std::collections::HashSet;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::WatchConfig;
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::CallSite;
use crate::snapshot::{OutstandingGuard, SiteSnapshot};
use crate::stack_mode::{AtomicStackMode, StackMode};

use shard::ShardState;
pub(crate) use shard::{Checkout, Closed, Outstanding};
#[cfg(feature = "leak-report")]
pub(crate) use shard::{Cutoffs, Flagged};
use stats::SiteStats;

/// Decides which call sites get statistics of their own (bounded memory).
pub(crate) struct SiteInterner {
    max_sites: usize,
    known: Mutex<HashSet<CallSite>>,
    /// Checkouts per site, shared by the shards (`leak-report` sampling).
    #[cfg(feature = "leak-report")]
    stack_counters: Mutex<std::collections::HashMap<CallSite, Arc<AtomicU64>>>,
}

impl SiteInterner {
    /// The site itself while under the cap (or already known), else the
    /// overflow bucket. Runs once per site and shard, never on the hot path.
    pub(crate) fn admit(&self, site: CallSite) -> CallSite {
        let mut known = self.known.lock();
        if known.contains(&site) || known.len() < self.max_sites {
            known.insert(site);
            site
        } else {
            CallSite::OVERFLOW
        }
    }

    /// The checkout counter of an admitted site (or of the overflow
    /// bucket). Runs once per site and shard.
    #[cfg(feature = "leak-report")]
    pub(crate) fn stack_counter(&self, site: CallSite) -> Arc<AtomicU64> {
        Arc::clone(self.stack_counters.lock().entry(site).or_default())
    }
}

/// What every shard needs to read: the pool's name and thresholds.
pub(crate) struct Settings {
    pub(crate) pool_name: String,
    hold_threshold_ns: AtomicU64,
    slow_acquire_ns: AtomicU64,
    stacks: AtomicStackMode,
    pub(crate) interner: SiteInterner,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Settings {
    pub(crate) fn hold_threshold(&self) -> Duration {
        Duration::from_nanos(self.hold_threshold_ns.load(Ordering::Relaxed))
    }
    pub(crate) fn slow_acquire(&self) -> Duration {
        Duration::from_nanos(self.slow_acquire_ns.load(Ordering::Relaxed))
    }
    pub(crate) fn set_hold_threshold(&self, d: Duration) {
        self.hold_threshold_ns.store(nanos(d), Ordering::Relaxed);
    }
    pub(crate) fn set_slow_acquire(&self, d: Duration) {
        self.slow_acquire_ns.store(nanos(d), Ordering::Relaxed);
    }
    pub(crate) fn stack_mode(&self) -> StackMode {
        self.stacks.get()
    }
    pub(crate) fn set_stack_mode(&self, mode: StackMode) {
        self.stacks.set(mode);
    }
}

/// One lock's worth of the ledger. Guards keep an `Arc` of their shard, so
/// the reference count they touch is per shard too.
pub(crate) struct Shard {
    index: u64,
    count: u64,
    state: Mutex<ShardState>,
    pub(crate) settings: Arc<Settings>,
}

impl Shard {
    pub(crate) fn open(&self, checkout: Checkout) -> (usize, u64) {
        let interner = &self.settings.interner;
        self.state
            .lock()
            .open((self.index, self.count), checkout, interner)
    }

    pub(crate) fn close(&self, key: usize, outcome: Outcome, now: Instant) -> Option<Closed> {
        self.state.lock().close(key, outcome, now)
    }

    /// Captures the stack of a checkout just opened, if the stack mode
    /// wants it: the decision under the lock, the capture outside it.
    #[cfg(feature = "leak-report")]
    pub(crate) fn capture_stack(&self, key: usize) {
        let wanted = match self.settings.stack_mode() {
            StackMode::Off => false,
            StackMode::Always => true,
            mode => self.state.lock().stack_wanted(key, mode),
        };
        if wanted {
            let stack = crate::stack::capture();
            self.state.lock().attach_stack(key, stack);
        }
    }
}

pub(crate) struct Ledger {
    pub(crate) settings: Arc<Settings>,
    shards: Box<[Arc<Shard>]>,
}

/// Threads are spread over shards round-robin, in order of first checkout.
static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
}

impl Ledger {
    pub(crate) fn new(config: &WatchConfig) -> Self {
        let settings = Arc::new(Settings {
            pool_name: config.pool_name.clone(),
            hold_threshold_ns: AtomicU64::new(nanos(config.hold_threshold)),
            slow_acquire_ns: AtomicU64::new(nanos(config.slow_acquire)),
            stacks: AtomicStackMode::new(config.stacks),
            interner: SiteInterner {
                max_sites: config.max_sites,
                known: Mutex::new(HashSet::new()),
                #[cfg(feature = "leak-report")]
                stack_counters: Mutex::default(),
            },
        });
        // One shard per core (a power of two, at most 16) keeps threads
        // apart without multiplying the per-site histograms needlessly.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = cores.next_power_of_two().clamp(2, 16);
        let shards = (0..count)
            .map(|index| {
                Arc::new(Shard {
                    index: index as u64,
                    count: count as u64,
                    state: Mutex::new(ShardState::new()),
                    settings: Arc::clone(&settings),
                })
            })
            .collect();
        Self { settings, shards }
    }

    /// The shard this thread opens its checkouts in.
    pub(crate) fn local_shard(&self) -> &Arc<Shard> {
        let slot = THREAD_SLOT.with(|slot| *slot);
        &self.shards[slot & (self.shards.len() - 1)]
    }

    pub(crate) fn record_failure(
        &self,
        location: &'static Location<'static>,
        waited: Duration,
        failure: AcquireFailure,
    ) {
        let shard = self.local_shard();
        shard
            .state
            .lock()
            .record_failure(location, waited, failure, &self.settings.interner);
    }

    /// Calls `f` on every outstanding checkout, one shard lock at a time.
    pub(crate) fn for_each_outstanding(&self, mut f: impl FnMut(&Outstanding)) {
        for shard in self.shards.iter() {
            let state = shard.state.lock();
            for (_, entry) in state.outstanding.iter() {
                f(entry);
            }
        }
    }

    /// Flags the guards held past the threshold (at bounded escalation
    /// levels) since the last scan. Each shard's lock is held for one pass
    /// over its outstanding table.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_overdue(&self, now: Instant, threshold: Duration) -> Vec<Flagged> {
        let cutoffs = Cutoffs::new(now, threshold);
        let mut flagged = Vec::new();
        for shard in self.shards.iter() {
            shard.state.lock().flag_overdue(&cutoffs, &mut flagged);
        }
        flagged
    }

    /// Every outstanding guard, marked flagged, oldest first: the
    /// never-returned report.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_all(&self, now: Instant) -> Vec<Flagged> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            shard.state.lock().flag_all(now, &mut all);
        }
        all.sort_by(|a, b| b.held.cmp(&a.held).then(a.id.cmp(&b.id)));
        all
    }

    pub(crate) fn outstanding_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.state.lock().outstanding.len())
            .sum()
    }

    /// Every outstanding checkout, oldest first.
    pub(crate) fn outstanding(&self, now: Instant) -> Vec<OutstandingGuard> {
        let mut guards = Vec::new();
        self.for_each_outstanding(|entry| {
            guards.push(OutstandingGuard {
                id: entry.id,
                site: entry.site(),
                span: entry.span,
                held: now.saturating_duration_since(entry.acquired_at),
            });
        });
        guards.sort_by(|a, b| b.held.cmp(&a.held).then(a.id.cmp(&b.id)));
        guards
    }

    /// Statistics per call site, merged over the shards, busiest first
    /// (by connection time held).
    pub(crate) fn sites(&self) -> Vec<SiteSnapshot> {
        let mut merged: Vec<SiteStats> = Vec::new();
        let mut outstanding: Vec<(CallSite, u64)> = Vec::new();
        for shard in self.shards.iter() {
            let state = shard.state.lock();
            for stats in &state.sites {
                match merged.iter_mut().find(|m| m.site == stats.site) {
                    Some(m) => m.merge(stats),
                    None => merged.push(stats.clone()),
                }
            }
            for (_, entry) in state.outstanding.iter() {
                let site = self.settings.interner.bucket_of(entry.site());
                match outstanding.iter_mut().find(|(s, _)| *s == site) {
                    Some((_, n)) => *n += 1,
                    None => outstanding.push((site, 1)),
                }
            }
        }
        let mut sites: Vec<SiteSnapshot> = merged
            .iter()
            .map(|stats| {
                let n = outstanding
                    .iter()
                    .find(|(s, _)| *s == stats.site)
                    .map_or(0, |(_, n)| *n);
                stats.to_snapshot(n)
            })
            .collect();
        sites.sort_by(|a, b| b.hold_total.cmp(&a.hold_total).then(a.site.cmp(&b.site)));
        sites
    }
}

impl SiteInterner {
    /// The statistics bucket a site's records went to.
    pub(crate) fn bucket_of(&self, site: CallSite) -> CallSite {
        if self.known.lock().contains(&site) {
            site
        } else {
            CallSite::OVERFLOW
        }
    }
}
