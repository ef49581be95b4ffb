//! The ledger: every outstanding checkout, every waiting acquire, and what
//! each call site recorded, of one pool. It is the only shared mutable
//! state in poolwatch, and it **records only**: it imports nothing above
//! it (no events, metrics, reports or background threads). Reactions
//! (`observe`), readers (`view`) and the background threads (`sampler`,
//! `watchdog`) call it.
//!
//! It is split into a few shards, each a spin lock ([`ShardLock`]) around a
//! [`ShardState`]. A thread always opens its checkouts in the same shard,
//! so two threads checking out at once neither contend for a lock nor
//! bounce a cache line; a guard closes its record in the shard that opened
//! it, whichever thread drops it. Readers never merge under a shard lock:
//! a drain swaps a shard's deltas out in O(1) and the [`Archive`] adds them
//! up under its own lock, which the hot path never takes.
//!
//! Each shard carries an attachment of the pool layer's choosing (`A`:
//! what a guard's drop reacts with), which the ledger stores and never
//! looks at.

pub(crate) mod archive;
mod common;
pub(crate) mod connection;
mod lag;
#[cfg(test)]
mod model;
mod records;
mod seqlock;
mod shard;
mod stats;
mod ticks;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::panic::Location;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::outcome::{AcquireFailure, Outcome};
use crate::site::SpanRef;

use archive::Archive;
pub(crate) use archive::{ArchiveView, Episode, SnapshotParts, Summary, TickRecord, TickStatus};
pub(crate) use common::{Common, ConnectionDirectory, Sites, Waiting};
#[cfg(feature = "postgres")]
pub(crate) use connection::ConnectionActivity;
pub(crate) use lag::{LagReadings, LagRecorder};
pub(crate) use records::{Checkout, Closed, Holder, TransactionEnded, Waiter};
use shard::ShardState;
pub(crate) use shard::WaitEnding;
#[cfg(feature = "leak-report")]
pub(crate) use shard::{Cutoffs, Overdue, Unreported};
pub(crate) use stats::{Counts, DatabaseCounts, StatsKey, TransactionEnding, Usage};
pub(crate) use ticks::Ticks;

/// The shard lock: a spin lock that yields while it waits. Uncontended (the
/// common case: a shard is its thread's) its release is a plain store where a
/// parking mutex needs an atomic read-modify-write, about 9 ns on the
/// machines measured, twice per checkout; readers hold it for microseconds
/// (bounded scans, O(1) drains), so a waiter yields rather than parks.
pub(crate) type ShardLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// One lock's worth of the ledger. Guards reach their shard through a
/// [`ShardRef`], which touches no reference count.
///
/// Aligned to 128 bytes (two cache lines, the unit x86 prefetches in), so
/// that two shards' allocations never share a line: one thread's lock and
/// reference count would otherwise evict the other's.
#[repr(align(128))]
pub(crate) struct Shard<A> {
    index: u64,
    count: u64,
    state: ShardLock<ShardState>,
    common: Arc<Common>,
    /// The shard's reference to itself, so that it outlives its ledger
    /// while records are open in it (their guards hold [`ShardRef`]s).
    /// Dropped by whoever sees the ledger gone and the last record closed.
    keep_alive: Mutex<Option<Arc<Shard<A>>>>,
    /// The ledger was dropped. Written and read under `state`'s lock, so
    /// that exactly one of the ledger's drop and the last close sees the
    /// shard both abandoned and empty.
    abandoned: AtomicBool,
    /// The pool layer's attachment (see the module docs).
    pub(crate) attached: A,
}

/// A guard's handle on the shard that holds its record: a pointer, so the
/// checkout and the return touch no reference count (an `Arc` clone and
/// drop were two atomic read-modify-writes on every checkout).
///
/// Valid while the record it was made for is open: a shard keeps itself
/// alive (`Shard::keep_alive`) until its ledger is gone *and* no record is
/// open, and the close of the last one keeps that reference until the
/// closer's reaction returns ([`ShardRef::close`]). So a holder must not use
/// it after closing its record, except inside that reaction.
pub(crate) struct ShardRef<A>(NonNull<Shard<A>>);

// SAFETY: a `ShardRef` is a shared reference to a `Shard`, valid for as
// long as its holder's record is open (see above); it may move and be
// shared between threads when `&Shard` may.
unsafe impl<A: Send + Sync> Send for ShardRef<A> {}
// SAFETY: as for `Send`.
unsafe impl<A: Send + Sync> Sync for ShardRef<A> {}

impl<A> std::ops::Deref for ShardRef<A> {
    type Target = Shard<A>;

    #[inline]
    fn deref(&self) -> &Shard<A> {
        // SAFETY: the shard is alive while the holder's record is open
        // (see the type's docs), and holders deref only then.
        unsafe { self.0.as_ref() }
    }
}

impl<A> ShardRef<A> {
    /// Closes record `key` and hands what closing returned to `react`,
    /// after the lock. The shard stays alive until `react` returns, even
    /// when this was the last record of a shard whose ledger is gone: the
    /// close then takes the shard's own reference and drops it last, here,
    /// where no reference to the shard is live (freeing it under a `&self`
    /// of its own would be undefined behaviour).
    #[inline]
    pub(crate) fn close<R>(
        &self,
        key: usize,
        outcome: Outcome,
        now: Ticks,
        react: impl FnOnce(Option<&Closed>) -> R,
    ) -> R {
        let (reacted, keep_alive) = (**self).close_keeping(key, outcome, now, react);
        drop(keep_alive);
        reacted
    }
}

impl<A> Shard<A> {
    /// Opens a checkout record: its slab key, guard id and the site's rank
    /// (`None` for the overflow bucket).
    #[inline]
    pub(crate) fn open(&self, checkout: Checkout) -> (usize, u64, Option<u32>) {
        self.state
            .lock()
            .open((self.index, self.count), checkout, &self.common)
    }

    /// [`Self::open`], and the handle its guard keeps.
    #[inline]
    pub(crate) fn open_held(
        self: &Arc<Self>,
        checkout: Checkout,
    ) -> (ShardRef<A>, usize, u64, Option<u32>) {
        let (key, id, rank) = self.open(checkout);
        (ShardRef(NonNull::from(&**self)), key, id, rank)
    }

    /// Closes record `key` and hands what closing returned to `react`,
    /// after the lock. With `react`'s result, when this was the last
    /// record of a shard whose ledger is gone, the shard's own reference:
    /// [`ShardRef::close`] drops it once no `&Shard` is live.
    ///
    /// `react` reads the record where the close built it: moving it out
    /// of the lock's scope cost a store-forwarding stall on every return.
    #[inline]
    fn close_keeping<R>(
        &self,
        key: usize,
        outcome: Outcome,
        now: Ticks,
        react: impl FnOnce(Option<&Closed>) -> R,
    ) -> (R, Option<Arc<Self>>) {
        let mut state = self.state.lock();
        let closed = state.close(key, outcome, now);
        let last = self.abandoned.load(Ordering::Relaxed) && state.outstanding_count() == 0;
        drop(state);
        let keep_alive = if last {
            self.keep_alive.lock().take()
        } else {
            None
        };
        (react(closed.as_ref()), keep_alive)
    }

    /// The ledger is going away: the shard frees itself now if no record
    /// is open, else with the last close.
    fn abandon(&self) {
        let state = self.state.lock();
        self.abandoned.store(true, Ordering::Relaxed);
        let empty = state.outstanding_count() == 0;
        drop(state);
        if empty {
            let own = self.keep_alive.lock().take();
            drop(own);
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index as usize
    }

    /// An acquire at `location` had to wait, since `since`. `nested`: its
    /// task already holds a guard of this pool; `queued`: every connection
    /// was in use (else it waits for one being opened, which is no
    /// saturation).
    pub(crate) fn wait_started(
        &self,
        location: &'static Location<'static>,
        span: Option<SpanRef>,
        since: Ticks,
        nested: bool,
        queued: bool,
    ) -> usize {
        if queued {
            self.common.waiting.started();
        }
        self.state
            .lock()
            .wait_started(location, span, since, nested, queued, &self.common)
    }

    /// The pending acquire `key` ended; returns how long it waited.
    pub(crate) fn wait_ended(
        &self,
        key: usize,
        now: Ticks,
        ending: WaitEnding,
    ) -> Option<Duration> {
        let (waited, queued) = self.state.lock().wait_ended(key, now, ending)?;
        if queued {
            self.common.waiting.ended();
        }
        Some(waited)
    }

    /// An acquire failed without having waited.
    pub(crate) fn record_failure(
        &self,
        location: &'static Location<'static>,
        span: Option<SpanRef>,
        failure: AcquireFailure,
    ) {
        self.state
            .lock()
            .record_failure(location, span, failure, &self.common);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn transaction_began(&self, key: usize, site: &'static Location<'static>) {
        self.state.lock().transaction_began(key, site, Ticks::now());
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn transaction_ended(
        &self,
        key: usize,
        ending: TransactionEnding,
    ) -> Option<TransactionEnded> {
        self.state
            .lock()
            .transaction_ended(key, ending, Ticks::now())
    }

    /// Captures the stack of a checkout just opened, if `mode` wants it:
    /// the decision under the lock, the capture outside it.
    #[cfg(feature = "leak-report")]
    pub(crate) fn capture_stack(&self, key: usize, mode: crate::stack_mode::StackMode) {
        use crate::stack_mode::StackMode;
        let wanted = match mode {
            StackMode::Off => false,
            StackMode::Always => true,
            mode => self.state.lock().stack_wanted(key, mode),
        };
        if wanted {
            let stack = crate::stack::capture();
            self.state.lock().attach_stack(key, stack);
        }
    }

    /// Confirms a watchdog flag right before it is reported (see
    /// `ShardState::confirm_flag`).
    #[cfg(feature = "leak-report")]
    pub(crate) fn confirm_flag(
        &self,
        overdue: &Overdue,
        now: Ticks,
    ) -> Option<(Holder, Option<crate::stack::RawStack>)> {
        self.state
            .lock()
            .confirm_flag(overdue.key, overdue.id, overdue.level, now)
    }
}

/// How a ledger is laid out: sites, window, timeline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LedgerConfig {
    pub(crate) max_sites: usize,
    /// The window reports describe.
    pub(crate) window: Duration,
    /// Ticks kept in the timeline.
    pub(crate) timeline_capacity: usize,
}

pub(crate) struct Ledger<A> {
    common: Arc<Common>,
    shards: Box<[Arc<Shard<A>>]>,
    archive: Mutex<Archive>,
}

impl<A> Drop for Ledger<A> {
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            shard.abandon();
        }
    }
}

/// Threads are spread over shards round-robin, in order of first checkout.
static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // No destructor, so it stays readable while other thread-locals are
    // destroyed (a checkout from a thread-local's `Drop`).
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
}

impl<A> Ledger<A> {
    /// A ledger whose shard `i` carries `attach(i)`.
    pub(crate) fn new(config: LedgerConfig, mut attach: impl FnMut(usize) -> A) -> Self {
        Ticks::init(); // calibrate now, not at the first checkout
        let now = Ticks::now();
        let common = Arc::new(Common {
            sites: Sites {
                max_sites: config.max_sites,
                known: Mutex::new(HashMap::new()),
                #[cfg(feature = "leak-report")]
                stack_counters: Mutex::default(),
            },
            directory: OnceLock::new(),
            waiting: Waiting::default(),
            lag: Arc::default(),
        });
        // One shard per core (a power of two, at most 16) keeps threads
        // apart without multiplying the per-origin deltas needlessly.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = cores.next_power_of_two().clamp(2, 16);
        let shards = (0..count)
            .map(|index| {
                let shard = Arc::new(Shard {
                    index: index as u64,
                    count: count as u64,
                    state: ShardLock::new(ShardState::new(now)),
                    common: Arc::clone(&common),
                    keep_alive: Mutex::new(None),
                    abandoned: AtomicBool::new(false),
                    attached: attach(index),
                });
                *shard.keep_alive.lock() = Some(Arc::clone(&shard));
                shard
            })
            .collect();
        Self {
            common,
            shards,
            archive: Mutex::new(Archive::new(
                now,
                count,
                config.window,
                config.timeline_capacity,
            )),
        }
    }

    /// Connects the integration's connection table; the first call wins.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn set_directory(&self, directory: Arc<dyn ConnectionDirectory>) {
        let _ = self.common.directory.set(directory);
    }

    /// The shard this thread opens its checkouts in. Readable from
    /// thread-local destructors (see `THREAD_SLOT`); shard 0 if not.
    #[inline]
    pub(crate) fn local_shard(&self) -> &Arc<Shard<A>> {
        let slot = THREAD_SLOT.try_with(|slot| *slot).unwrap_or(0);
        &self.shards[slot & (self.shards.len() - 1)]
    }

    pub(crate) fn shard(&self, index: usize) -> Option<&Arc<Shard<A>>> {
        self.shards.get(index)
    }

    /// Where the runtime's scheduling delay is recorded.
    pub(crate) fn lag(&self) -> &Arc<LagRecorder> {
        &self.common.lag
    }

    /// Most callers waiting at once since the last tick.
    pub(crate) fn waiting_peak(&self) -> usize {
        self.common.waiting.peak()
    }

    pub(crate) fn outstanding_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.state.lock().outstanding_count())
            .sum()
    }

    /// How long the longest-held outstanding checkout has been held as of
    /// `now` (zero when none): one shard lock at a time, no copy.
    pub(crate) fn oldest_hold(&self, now: Ticks) -> Duration {
        self.shards
            .iter()
            .filter_map(|s| s.state.lock().oldest_acquired())
            .min()
            .map_or(Duration::ZERO, |acquired| acquired.until(now))
    }

    /// How long the longest-waiting acquire has waited as of `now` (zero
    /// when none): one shard lock at a time, no copy (for a scrape; the
    /// sampler copies the waiters anyway).
    #[cfg(feature = "metrics")]
    pub(crate) fn oldest_wait(&self, now: Ticks) -> Duration {
        self.shards
            .iter()
            .filter_map(|s| s.state.lock().oldest_pending())
            .min()
            .map_or(Duration::ZERO, |since| since.until(now))
    }

    /// Every outstanding checkout, longest held first; one shard lock at
    /// a time, sorted outside.
    pub(crate) fn holders(&self, now: Ticks) -> Vec<Holder> {
        let mut holders = Vec::new();
        for shard in self.shards.iter() {
            shard.state.lock().holders(now, &mut holders);
        }
        holders.sort_by(|a, b| a.acquired.cmp(&b.acquired).then(a.id.cmp(&b.id)));
        holders
    }

    /// Every waiting acquire, longest waiting first.
    pub(crate) fn waiters(&self) -> Vec<Waiter> {
        let mut waiters = Vec::new();
        for shard in self.shards.iter() {
            shard.state.lock().waiters(&mut waiters);
        }
        waiters.sort_by_key(|w| w.since);
        waiters
    }

    /// The first guard `task` holds, if any, marked as held while the task
    /// waits for a second connection (asked only by acquires that have to
    /// wait: is this a nested checkout?).
    pub(crate) fn nested_holder(&self, task: NonZeroU64, now: Ticks) -> Option<Holder> {
        self.shards
            .iter()
            .find_map(|shard| shard.state.lock().nested_holder(task, now))
    }

    /// The nested wait of `task` ended after `waited`.
    pub(crate) fn nested_wait_ended(&self, task: NonZeroU64, waited: Duration) {
        // `any` stops at the shard that holds the guard.
        let _ = self
            .shards
            .iter()
            .any(|shard| shard.state.lock().nested_wait_ended(task, waited));
    }

    /// Drains every shard into the archive: one shard lock at a time, each
    /// held for a swap and a pass over what is outstanding.
    fn drain(&self, archive: &mut Archive, now: Ticks) {
        for shard in self.shards.iter() {
            let spare = archive.take_spare(shard.index());
            let drained = shard.state.lock().drain(now, spare);
            archive.absorb(shard.index(), drained);
        }
    }

    /// The sampler's tick: drains, then closes the tick with `status`.
    pub(crate) fn tick(&self, now: Ticks, mut status: TickStatus, tick: Duration) -> TickRecord {
        let mut archive = self.archive.lock();
        self.drain(&mut archive, now);
        status.peak_waiting = status.peak_waiting.max(self.common.waiting.take_peak());
        status.lag = self.common.lag.take(now);
        archive.close_tick(now, status, tick)
    }

    /// What readers see: drains first, so the view is current to `now`.
    pub(crate) fn view(&self, now: Ticks) -> (ArchiveView, SnapshotParts) {
        let mut archive = self.archive.lock();
        self.drain(&mut archive, now);
        (archive.view(), archive.snapshot_parts())
    }

    /// What a snapshot needs: drains first, then the window's totals per
    /// site and span (no per-pair copy).
    pub(crate) fn snapshot_parts(&self, now: Ticks) -> SnapshotParts {
        let mut archive = self.archive.lock();
        self.drain(&mut archive, now);
        archive.snapshot_parts()
    }

    /// Marks the guards held past `threshold` (at bounded escalation
    /// levels) as of `now`, shard by shard in short lock holds of at most
    /// `keys_per_lock` slab keys; copies at most `budget` of them out
    /// (with their shard's index) and counts the rest.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_overdue(
        &self,
        now: Ticks,
        threshold: Duration,
        keys_per_lock: usize,
        budget: usize,
    ) -> (Vec<(usize, Overdue)>, Unreported) {
        self.flag_overdue_timed(now, threshold, keys_per_lock, budget, |_| {})
    }

    /// [`Self::flag_overdue`], calling `held` with how long each shard-lock
    /// hold lasted (the longest a checkout could wait behind the scan).
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_overdue_timed(
        &self,
        now: Ticks,
        threshold: Duration,
        keys_per_lock: usize,
        mut budget: usize,
        mut held: impl FnMut(Duration),
    ) -> (Vec<(usize, Overdue)>, Unreported) {
        let cutoffs = Cutoffs::new(now, threshold);
        let mut flagged = Vec::new();
        let mut unreported = Unreported::default();
        for shard in self.shards.iter() {
            let mut start = Some(0);
            while let Some(from) = start {
                let mut out = Vec::new();
                let mut state = shard.state.lock();
                let locked = Ticks::now();
                start = state.flag_overdue(
                    &cutoffs,
                    from,
                    keys_per_lock,
                    &mut budget,
                    &mut out,
                    &mut unreported,
                );
                drop(state);
                held(locked.until(Ticks::now()));
                flagged.extend(out.into_iter().map(|o| (shard.index(), o)));
            }
        }
        (flagged, unreported)
    }

    /// Every outstanding guard, marked reported, longest held first: the
    /// never-returned report.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_all(&self, now: Ticks) -> Vec<(Holder, Option<crate::stack::RawStack>)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            shard.state.lock().flag_all(now, &mut all);
        }
        all.sort_by(|a, b| a.0.acquired.cmp(&b.0.acquired).then(a.0.id.cmp(&b.0.id)));
        all
    }
}

/// Bytes of one outstanding-checkout entry (benches, memory test).
pub(crate) fn outstanding_entry_size() -> usize {
    std::mem::size_of::<shard::Outstanding>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-guard memory budget: 48 bytes with the acquire-time column
    /// (8), 64 with `leak-report` (stack pointer included; the frames
    /// themselves live behind it).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn outstanding_entry_stays_small() {
        let entry = std::mem::size_of::<shard::Outstanding>();
        let column = std::mem::size_of::<Ticks>();
        let budget = if cfg!(feature = "leak-report") {
            64
        } else {
            48
        };
        assert!(entry + column <= budget, "{entry} + {column} bytes");
    }

    fn ledger(attachment: &Arc<()>) -> Ledger<Arc<()>> {
        let config = LedgerConfig {
            max_sites: 16,
            window: Duration::from_secs(60),
            timeline_capacity: 4,
        };
        Ledger::new(config, |_| Arc::clone(attachment))
    }

    fn checkout() -> Checkout {
        Checkout {
            location: Location::caller(),
            span: None,
            task: None,
            waited: Duration::ZERO,
            acquired: Ticks::now(),
            connection: None,
            panicking: false,
        }
    }

    /// A ledger with no open record frees its shards when dropped: their
    /// references to themselves do not leak them.
    #[test]
    fn shards_go_with_their_ledger() {
        let attachment = Arc::new(());
        let ledger = ledger(&attachment);
        let (handle, key, _, _) = ledger.local_shard().open_held(checkout());
        let closed = handle.close(key, Outcome::Returned, Ticks::now(), |c| c.is_some());
        assert!(closed);
        drop(ledger);
        assert_eq!(Arc::strong_count(&attachment), 1, "a shard leaked");
    }

    /// A record open when its ledger goes keeps its shard alive until it
    /// closes, and the last close keeps it through its reaction.
    #[test]
    fn an_open_record_outlives_its_ledger() {
        let attachment = Arc::new(());
        let ledger = ledger(&attachment);
        let shards = ledger.shards.len();
        let (first, first_key, _, _) = ledger.local_shard().open_held(checkout());
        let (second, second_key, _, _) = ledger.local_shard().open_held(checkout());
        drop(ledger);
        // The other shards went; this one stays for its records.
        assert_eq!(Arc::strong_count(&attachment), 2, "of {shards} shards");
        let closed = first.close(first_key, Outcome::Returned, Ticks::now(), |c| c.is_some());
        assert!(closed);
        assert_eq!(Arc::strong_count(&attachment), 2, "a record is still open");
        let alive_while_reacting = second.close(second_key, Outcome::Returned, Ticks::now(), |c| {
            assert!(c.is_some());
            // Still usable until the reaction returns.
            assert_eq!(second.attached.as_ref(), &());
            Arc::strong_count(&attachment)
        });
        assert_eq!(alive_while_reacting, 2, "the last close keeps the shard");
        assert_eq!(Arc::strong_count(&attachment), 1, "the shard leaked");
    }
}
