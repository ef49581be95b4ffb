//! The ledger: every outstanding checkout and the per-call-site statistics
//! of one pool. It is the only shared mutable state in poolwatch; events,
//! snapshots (and the watchdog) only read it.
//!
//! It is split into a few shards, each a [`parking_lot::Mutex`] around a
//! [`ShardState`]. A thread always opens its checkouts in the same shard, so
//! two threads checking out at once neither contend for a lock nor bounce a
//! cache line; a guard closes its record in the shard that opened it,
//! whichever thread drops it.

pub(crate) mod activity;
// Driven by the connection observer of `src/postgres/` (being wired in).
#[allow(dead_code)]
pub(crate) mod connection;
pub(crate) mod connections;
#[cfg(test)]
mod model;
mod shard;
mod stats;
mod ticks;

use std::collections::HashMap;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::WatchConfig;
use crate::outcome::{AcquireFailure, Outcome};
use crate::ratelimit::RateLimit;
use crate::report::Report;
use crate::site::{CallSite, SpanInfo, SpanRef};
use crate::snapshot::{OutstandingGuard, PoolSnapshot, PoolStatus, SiteSnapshot, SpanSnapshot};
use crate::stack_mode::{AtomicStackMode, StackMode};
use crate::timeline::Timeline;

use activity::TransactionEnding;
use connections::{Connections, LastHolder};
use shard::ShardState;
pub(crate) use shard::{Checkout, Closed, Held, Outstanding, TransactionHolder};
#[cfg(feature = "leak-report")]
pub(crate) use shard::{Cutoffs, Flagged};
use stats::SiteStats;
pub(crate) use ticks::Ticks;

/// Decides which call sites get statistics of their own (bounded memory).
pub(crate) struct SiteInterner {
    max_sites: usize,
    /// Each admitted site with its rank (order of first sight).
    known: Mutex<HashMap<CallSite, usize>>,
    /// Checkouts per site, shared by the shards (`leak-report` sampling).
    #[cfg(feature = "leak-report")]
    stack_counters: Mutex<std::collections::HashMap<CallSite, Arc<AtomicU64>>>,
}

impl SiteInterner {
    /// The site itself and its rank while under the cap (or already known),
    /// else the overflow bucket. Runs once per site and shard, never on the
    /// hot path.
    pub(crate) fn admit(&self, site: CallSite) -> (CallSite, usize) {
        let mut known = self.known.lock();
        let next_rank = known.len();
        match known.get(&site) {
            Some(&rank) => (site, rank),
            None if next_rank < self.max_sites => {
                known.insert(site, next_rank);
                (site, next_rank)
            }
            None => (CallSite::OVERFLOW, self.max_sites),
        }
    }

    /// The statistics bucket a site's records went to.
    pub(crate) fn bucket_of(&self, site: CallSite) -> CallSite {
        if self.known.lock().contains_key(&site) {
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

/// Reads the wrapped pool's status without knowing its manager type.
pub(crate) type StatusSource = Box<dyn Fn() -> Option<PoolStatus> + Send + Sync>;

/// What every shard needs to read: the pool's name and thresholds.
pub(crate) struct Settings {
    pub(crate) pool_name: String,
    hold_threshold_ns: AtomicU64,
    slow_acquire_ns: AtomicU64,
    stacks: AtomicStackMode,
    pub(crate) interner: SiteInterner,
    /// Set once the pool exists (the ledger may be made first, for hooks).
    status: OnceLock<StatusSource>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::export::PoolMetrics,
    /// Backend pid and last holder of each connection (database pools).
    pub(crate) connections: Connections,
    /// A connection returned inside a transaction is evicted, unless a
    /// recycle hook that rolls it back is installed (then this is false).
    pub(crate) evict_open_transactions: AtomicBool,
    /// Budgets for the events a storm could flood: slow acquires, failed
    /// acquires, holds past the threshold.
    pub(crate) slow_acquire_events: RateLimit,
    pub(crate) failed_acquire_events: RateLimit,
    pub(crate) held_past_threshold_events: RateLimit,
}

/// Per pool and kind of event: enough to see a pattern, few enough to read.
const EVENTS_PER_SECOND: u64 = 5;

#[inline]
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
    /// Compared in nanoseconds: cheaper on the hot path than building a
    /// `Duration` from the atomic.
    #[inline]
    pub(crate) fn exceeds_hold_threshold(&self, held: Duration) -> bool {
        nanos(held) > self.hold_threshold_ns.load(Ordering::Relaxed)
    }
    #[inline]
    pub(crate) fn exceeds_slow_acquire(&self, waited: Duration) -> bool {
        nanos(waited) > self.slow_acquire_ns.load(Ordering::Relaxed)
    }
    /// The wrapped pool's status, if the pool still exists.
    pub(crate) fn pool_status(&self) -> Option<PoolStatus> {
        self.status.get().and_then(|status| status())
    }

    /// Connects the ledger to its pool's status; the first call wins.
    pub(crate) fn set_status_source(&self, status: StatusSource) {
        let _ = self.status.set(status);
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
///
/// Aligned to 128 bytes (two cache lines, the unit x86 prefetches in), so
/// that two shards' allocations never share a line: one thread's lock and
/// reference count would otherwise evict the other's.
#[repr(align(128))]
pub(crate) struct Shard {
    index: u64,
    count: u64,
    state: Mutex<ShardState>,
    pub(crate) settings: Arc<Settings>,
}

impl Shard {
    #[inline]
    pub(crate) fn open(&self, checkout: Checkout) -> (usize, u64) {
        self.state
            .lock()
            .open((self.index, self.count), checkout, &self.settings)
    }

    #[inline]
    pub(crate) fn close(&self, key: usize, outcome: Outcome, now: Ticks) -> Option<Closed> {
        let mut closed = self.state.lock().close(key, outcome, now)?;
        let Some(activity) = closed.activity.as_deref() else {
            return Some(closed); // no database call: nothing to decide
        };
        let evict_open = self
            .settings
            .evict_open_transactions
            .load(Ordering::Relaxed);
        let evict = activity.in_flight || (activity.open_transaction && evict_open);
        if activity.connection != 0 && !evict {
            let holder = LastHolder {
                guard: closed.id,
                location: closed.location,
                reported_open_transaction: activity.open_transaction,
            };
            self.settings
                .connections
                .returned(activity.connection, holder);
        }
        closed.evict = evict;
        Some(closed)
    }

    /// A database call started; the first one also learns the connection
    /// (`connection`: its identity) and its backend pid.
    pub(crate) fn call_started(&self, key: usize, statement: Option<&str>, connection: usize) {
        let unknown = self.state.lock().call_started(key, Ticks::now(), statement);
        if unknown {
            let pid = self.settings.connections.backend_pid(connection);
            self.state.lock().set_connection(key, connection, pid);
        }
    }

    pub(crate) fn call_ended(&self, key: usize, completed: bool, transaction_effect: Option<bool>) {
        self.state
            .lock()
            .call_ended(key, Ticks::now(), completed, transaction_effect);
    }

    pub(crate) fn transaction_began(&self, key: usize, site: &'static Location<'static>) {
        self.state.lock().transaction_began(key, Ticks::now(), site);
    }

    pub(crate) fn transaction_ended(
        &self,
        key: usize,
        ending: TransactionEnding,
    ) -> Option<(TransactionHolder, activity::TransactionEnded)> {
        self.state
            .lock()
            .transaction_ended(key, Ticks::now(), ending)
    }

    pub(crate) fn savepoint_ended(&self, key: usize, ending: TransactionEnding) {
        self.state.lock().savepoint_ended(key, ending);
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
    /// The pressure timeline, when configured.
    pub(crate) timeline: Option<Timeline>,
    /// How often the sampler emits the report through tracing.
    report_every: Option<Duration>,
    last_report: Mutex<Instant>,
}

/// Threads are spread over shards round-robin, in order of first checkout.
static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
}

impl Ledger {
    pub(crate) fn new(config: &WatchConfig) -> Self {
        Ticks::init(); // calibrate now, not at the first checkout
        let settings = Arc::new(Settings {
            pool_name: config.pool_name.clone(),
            hold_threshold_ns: AtomicU64::new(nanos(config.hold_threshold)),
            slow_acquire_ns: AtomicU64::new(nanos(config.slow_acquire)),
            stacks: AtomicStackMode::new(config.stacks),
            interner: SiteInterner {
                max_sites: config.max_sites,
                known: Mutex::new(HashMap::new()),
                #[cfg(feature = "leak-report")]
                stack_counters: Mutex::default(),
            },
            status: OnceLock::new(),
            #[cfg(feature = "metrics")]
            metrics: crate::export::PoolMetrics::new(&config.pool_name, config.metrics_site_labels),
            connections: Connections::default(),
            evict_open_transactions: AtomicBool::new(true),
            slow_acquire_events: RateLimit::new(EVENTS_PER_SECOND),
            failed_acquire_events: RateLimit::new(EVENTS_PER_SECOND),
            held_past_threshold_events: RateLimit::new(EVENTS_PER_SECOND),
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
        let timeline = config
            .timeline_tick
            .map(|tick| Timeline::new(tick, config.timeline_window, Instant::now()));
        Self {
            settings,
            shards,
            timeline,
            report_every: config.report_every,
            last_report: Mutex::new(Instant::now()),
        }
    }

    /// Successful checkouts so far, over all shards.
    pub(crate) fn total_checkouts(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.state
                    .lock()
                    .sites
                    .iter()
                    .map(|st| st.checkouts)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Takes a timeline sample if one is due, and emits the periodic report
    /// if that is due.
    pub(crate) fn sample_timeline(&self, now: Instant) {
        let Some(timeline) = &self.timeline else {
            return;
        };
        let Some(status) = self.settings.pool_status() else {
            return;
        };
        if timeline.due(now) {
            timeline.record(now, status, self.total_checkouts());
        }
        if let Some(every) = self.report_every {
            let mut last = self.last_report.lock();
            if now.saturating_duration_since(*last) >= every {
                *last = now;
                drop(last);
                crate::events::periodic_report(&self.report(status));
            }
        }
    }

    /// The pool's state now, as plain data.
    pub(crate) fn snapshot(&self, status: PoolStatus) -> PoolSnapshot {
        PoolSnapshot {
            pool: self.settings.pool_name.clone(),
            status,
            outstanding: self.outstanding(),
            sites: self.sites(),
            spans: self.spans(),
        }
    }

    /// The diagnosis of the pool now.
    pub(crate) fn report(&self, status: PoolStatus) -> Report {
        let timeline = self
            .timeline
            .as_ref()
            .map(|t| t.samples())
            .unwrap_or_default();
        Report::build(
            &self.snapshot(status),
            timeline,
            self.settings.hold_threshold(),
        )
    }

    /// The shard this thread opens its checkouts in.
    pub(crate) fn local_shard(&self) -> &Arc<Shard> {
        let slot = THREAD_SLOT.with(|slot| *slot);
        &self.shards[slot & (self.shards.len() - 1)]
    }

    pub(crate) fn record_failure(
        &self,
        location: &'static Location<'static>,
        span: Option<SpanInfo>,
        waited: Duration,
        failure: AcquireFailure,
    ) {
        let shard = self.local_shard();
        shard
            .state
            .lock()
            .record_failure(location, span, waited, failure, &self.settings);
    }

    /// An open transaction found at recycle that its last holder did not
    /// report itself: counted against the holder's call site.
    pub(crate) fn record_unreported_open_transaction(&self, location: &'static Location<'static>) {
        self.local_shard()
            .state
            .lock()
            .record_unreported_open_transaction(location, &self.settings);
    }

    /// Calls `f` on every outstanding checkout, one shard lock at a time.
    pub(crate) fn for_each_outstanding(&self, mut f: impl FnMut(Held<'_>)) {
        for shard in self.shards.iter() {
            let state = shard.state.lock();
            state.iter_held().for_each(&mut f);
        }
    }

    /// Flags the guards held past the threshold (at bounded escalation
    /// levels) since the last scan. Each shard's lock is held for one pass
    /// over its outstanding table.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_overdue(&self, now: Ticks, threshold: Duration) -> Vec<Flagged> {
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
    pub(crate) fn flag_all(&self, now: Ticks) -> Vec<Flagged> {
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
    pub(crate) fn outstanding(&self) -> Vec<OutstandingGuard> {
        let now = Ticks::now();
        let mut guards = Vec::new();
        self.for_each_outstanding(|entry| {
            guards.push(OutstandingGuard {
                id: entry.id(),
                site: entry.site(),
                span: entry.span.map(SpanRef::info),
                held: entry.held(now),
                busy: entry.activity().busy(now),
                backend_pid: entry.activity().backend_pid,
                last_statement: entry.activity().last_statement.to_display(),
                in_transaction: entry.activity().open_transaction(),
            });
        });
        guards.sort_by(|a, b| b.held.cmp(&a.held).then(a.id.cmp(&b.id)));
        guards
    }

    /// Statistics per call site (over all spans), merged over the shards,
    /// busiest first (by connection time held).
    pub(crate) fn sites(&self) -> Vec<SiteSnapshot> {
        let (merged, outstanding) = self.merge_stats(
            |s| (s.site, None),
            |e| (self.settings.interner.bucket_of(e.site()), None),
        );
        let mut sites: Vec<SiteSnapshot> = merged
            .iter()
            .map(|stats| stats.to_snapshot(count_of(&outstanding, &(stats.site, None))))
            .collect();
        sites.sort_by(|a, b| b.hold_total.cmp(&a.hold_total).then(a.site.cmp(&b.site)));
        sites
    }

    /// Statistics per span name (over all sites), busiest first.
    pub(crate) fn spans(&self) -> Vec<SpanSnapshot> {
        let (merged, outstanding) = self.merge_stats(
            |s| (CallSite::OVERFLOW, s.span),
            |e| (CallSite::OVERFLOW, e.span.map(|s| s.info().name)),
        );
        let mut spans: Vec<SpanSnapshot> = merged
            .iter()
            .map(|stats| {
                stats.to_span_snapshot(count_of(&outstanding, &(CallSite::OVERFLOW, stats.span)))
            })
            .collect();
        spans.sort_by(|a, b| b.hold_total.cmp(&a.hold_total).then(a.span.cmp(&b.span)));
        spans
    }

    /// Merges every shard's statistics by `key_of_stats`, and counts the
    /// outstanding checkouts by `key_of_entry`, one shard lock at a time.
    fn merge_stats(
        &self,
        key_of_stats: impl Fn(&SiteStats) -> StatsKey,
        key_of_entry: impl Fn(Held<'_>) -> StatsKey,
    ) -> (Vec<SiteStats>, Vec<(StatsKey, u64)>) {
        let mut merged: Vec<SiteStats> = Vec::new();
        let mut outstanding: Vec<(StatsKey, u64)> = Vec::new();
        for shard in self.shards.iter() {
            let state = shard.state.lock();
            for stats in &state.sites {
                let key = key_of_stats(stats);
                match merged.iter_mut().find(|m| key_of_stats(m) == key) {
                    Some(m) => m.merge(stats),
                    None => {
                        let mut first = stats.clone();
                        (first.site, first.span) = key;
                        merged.push(first);
                    }
                }
            }
            for entry in state.iter_held() {
                let key = key_of_entry(entry);
                match outstanding.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => outstanding.push((key, 1)),
                }
            }
        }
        (merged, outstanding)
    }
}

/// What statistics are merged by: a site, a span name, or both.
type StatsKey = (CallSite, Option<&'static str>);

fn count_of(counts: &[(StatsKey, u64)], key: &StatsKey) -> u64 {
    counts.iter().find(|(k, _)| k == key).map_or(0, |(_, n)| *n)
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if self.timeline.is_some() {
            crate::sampler::wake();
        }
    }
}
