//! The ledger data that must be protected by a lock: one shard's
//! outstanding checkouts and call-site statistics. Every method is a small,
//! plain state transition, run under the shard's mutex by [`super::Ledger`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::Location;
#[cfg(feature = "leak-report")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "leak-report")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::activity::{Activity, ActivitySummary, TransactionEnded, TransactionEnding};
use super::stats::SiteStats;
use super::Settings;
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::{CallSite, SpanInfo, SpanRef};
#[cfg(feature = "leak-report")]
use crate::{stack::RawStack, stack_mode::StackMode};

/// A checkout that has not ended yet.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    pub(crate) id: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanRef>,
    pub(crate) acquired_at: Instant,
    /// Index into [`ShardState::sites`], resolved once at checkout.
    stats_slot: u32,
    /// What the holder did with the connection (database integrations).
    /// Boxed, and only once the holder makes an instrumented database
    /// call: plain checkouts keep the entry small and allocate nothing.
    pub(crate) activity: Option<Box<Activity>>,
    /// How many times the watchdog (or a closing pool) flagged it: 0 to
    /// [`Cutoffs::LEVELS`].
    #[cfg(feature = "leak-report")]
    flagged: u8,
    /// The stack that acquired it, when one was captured.
    #[cfg(feature = "leak-report")]
    stack: Option<RawStack>,
}

static IDLE_ACTIVITY: Activity = Activity::IDLE;
static IDLE_SUMMARY: ActivitySummary = ActivitySummary::IDLE;

impl Outstanding {
    pub(crate) fn site(&self) -> CallSite {
        CallSite::from(self.location)
    }

    /// What the holder did in the database (idle when nothing).
    pub(crate) fn activity(&self) -> &Activity {
        self.activity.as_deref().unwrap_or(&IDLE_ACTIVITY)
    }

    fn activity_mut(&mut self) -> &mut Activity {
        self.activity
            .get_or_insert_with(|| Box::new(Activity::IDLE))
    }
}

impl Closed {
    /// The database side of the hold (idle when the holder made no
    /// instrumented call).
    pub(crate) fn activity(&self) -> &ActivitySummary {
        self.activity.as_deref().unwrap_or(&IDLE_SUMMARY)
    }
}

/// A successful acquire, as the pool saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checkout {
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanRef>,
    pub(crate) waited: Duration,
    pub(crate) acquired_at: Instant,
}

/// What closing a checkout tells the event layer.
#[derive(Clone, Debug)]
pub(crate) struct Closed {
    pub(crate) id: u64,
    pub(crate) site: CallSite,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) held: Duration,
    pub(crate) location: &'static Location<'static>,
    /// The database side of the hold (all zero for plain pools).
    /// `None` when the holder made no instrumented database call.
    pub(crate) activity: Option<Box<ActivitySummary>>,
    /// The connection must not go back to the pool (a call may still run
    /// on it, or it sits in a transaction nobody will clean up).
    pub(crate) evict: bool,
    /// Whether it had been flagged while held.
    #[cfg(feature = "leak-report")]
    pub(crate) flagged: bool,
    #[cfg(feature = "leak-report")]
    pub(crate) stack: Option<RawStack>,
}

/// The instants a scan compares acquire times with, computed once per scan:
/// a guard acquired before `at[k]` has been held past the threshold times
/// [`Cutoffs::FACTORS`]`[k]`.
#[cfg(feature = "leak-report")]
pub(crate) struct Cutoffs {
    pub(crate) now: Instant,
    at: [Option<Instant>; Cutoffs::LEVELS as usize],
}

#[cfg(feature = "leak-report")]
impl Cutoffs {
    /// Bounded escalation: flagged at 1×, 4× and 16× the threshold.
    pub(crate) const FACTORS: [u32; 3] = [1, 4, 16];
    pub(crate) const LEVELS: u8 = 3;

    pub(crate) fn new(now: Instant, threshold: Duration) -> Self {
        let at = Self::FACTORS.map(|k| {
            threshold
                .checked_mul(k)
                .and_then(|held| now.checked_sub(held))
        });
        Self { now, at }
    }

    /// How many levels a guard acquired at `acquired_at` has crossed.
    fn level_of(&self, acquired_at: Instant) -> u8 {
        self.at
            .iter()
            .take_while(|cutoff| cutoff.is_some_and(|c| acquired_at <= c))
            .count() as u8
    }
}

/// A guard reported while still held, copied out of the ledger.
#[cfg(feature = "leak-report")]
#[derive(Clone, Debug)]
pub(crate) struct Flagged {
    pub(crate) id: u64,
    pub(crate) site: CallSite,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) held: Duration,
    /// 1 to [`Cutoffs::LEVELS`].
    pub(crate) level: u8,
    pub(crate) stack: Option<RawStack>,
}

#[cfg(feature = "leak-report")]
impl Flagged {
    fn of(entry: &Outstanding, now: Instant) -> Self {
        Self {
            id: entry.id,
            site: entry.site(),
            span: entry.span.map(SpanRef::info),
            held: now.saturating_duration_since(entry.acquired_at),
            level: entry.flagged,
            stack: entry.stack.clone(),
        }
    }
}

/// A `Location` is `'static` and its address is a fine hash key; the real
/// identity check is done by the interner on first sight.
#[derive(Default)]
pub(crate) struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_usize(&mut self, n: usize) {
        // Fibonacci hashing spreads aligned addresses across buckets.
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) struct ShardState {
    pub(crate) outstanding: Slab<Outstanding>,
    next_seq: u64,
    /// (address of the `Location`, address of the span name) → slot.
    slot_of: HashMap<(usize, usize), u32, BuildHasherDefault<AddressHasher>>,
    /// The last key looked up and its slot: a loop checking out at one
    /// line skips the hash lookup. `(0, 0)` (no `Location` is at address
    /// 0) until the first lookup.
    last_slot: ((usize, usize), u32),
    pub(crate) sites: Vec<SiteStats>,
    /// Checkouts seen per call site across all shards, parallel to
    /// `sites`: decides `sample:N` and `first:N` stack capture.
    #[cfg(feature = "leak-report")]
    stack_counters: Vec<Arc<AtomicU64>>,
}

impl ShardState {
    pub(crate) fn new() -> Self {
        Self {
            outstanding: Slab::new(),
            next_seq: 0,
            slot_of: HashMap::default(),
            last_slot: ((0, 0), 0),
            sites: Vec::new(),
            #[cfg(feature = "leak-report")]
            stack_counters: Vec::new(),
        }
    }

    /// The statistics slot of a call site within a span, creating it on
    /// first sight. Spans are static names, so their number is bounded by
    /// the program; sites are bounded by the interner's cap.
    #[inline]
    fn stats_slot(
        &mut self,
        location: &'static Location<'static>,
        span: Option<SpanInfo>,
        settings: &Settings,
    ) -> u32 {
        let span_name = span.map(|s| s.name);
        let key = (
            location as *const Location<'static> as usize,
            span_name.map_or(0, |name| name.as_ptr() as usize),
        );
        if self.last_slot.0 == key {
            return self.last_slot.1;
        }
        self.stats_slot_lookup(key, location, span_name, settings)
    }

    /// [`Self::stats_slot`] when the key is not the last one looked up.
    #[inline(never)]
    fn stats_slot_lookup(
        &mut self,
        key: (usize, usize),
        location: &'static Location<'static>,
        span_name: Option<&'static str>,
        settings: &Settings,
    ) -> u32 {
        if let Some(&slot) = self.slot_of.get(&key) {
            self.last_slot = (key, slot);
            return slot;
        }
        let (site, rank) = settings.interner.admit(CallSite::from(location));
        // Another address of the same site (or the overflow bucket) may
        // already have a slot in this shard.
        let existing = self
            .sites
            .iter()
            .position(|s| s.site == site && s.span == span_name);
        let slot = match existing {
            Some(slot) => slot as u32,
            None => {
                #[cfg(feature = "metrics")]
                let stats =
                    SiteStats::new(site, span_name, settings.metrics.site_handles(site, rank));
                #[cfg(not(feature = "metrics"))]
                let stats = {
                    let _ = rank;
                    SiteStats::new(site, span_name)
                };
                self.sites.push(stats);
                #[cfg(feature = "leak-report")]
                self.stack_counters
                    .push(settings.interner.stack_counter(site));
                (self.sites.len() - 1) as u32
            }
        };
        self.slot_of.insert(key, slot);
        self.last_slot = (key, slot);
        slot
    }

    /// Guard ids interleave the shards (`seq * shards + shard + 1`), so they
    /// are unique per pool without a shared counter, and never 0.
    #[inline]
    pub(crate) fn open(
        &mut self,
        (shard_index, shard_count): (u64, u64),
        checkout: Checkout,
        settings: &Settings,
    ) -> (usize, u64) {
        let id = self.next_seq * shard_count + shard_index + 1;
        self.next_seq += 1;
        let stats_slot = self.stats_slot(
            checkout.location,
            checkout.span.map(SpanRef::info),
            settings,
        );
        self.sites[stats_slot as usize].record_checkout(checkout.waited);
        let key = self.outstanding.insert(Outstanding {
            id,
            location: checkout.location,
            span: checkout.span,
            acquired_at: checkout.acquired_at,
            stats_slot,
            activity: None,
            #[cfg(feature = "leak-report")]
            flagged: 0,
            #[cfg(feature = "leak-report")]
            stack: None,
        });
        (key, id)
    }

    /// Closes a checkout record. `None` only if the key is not outstanding,
    /// which the guard's ownership of its key rules out.
    #[inline]
    pub(crate) fn close(&mut self, key: usize, outcome: Outcome, now: Instant) -> Option<Closed> {
        let entry = self.outstanding.try_remove(key)?;
        let held = now.saturating_duration_since(entry.acquired_at);
        let activity = entry.activity.as_ref().map(|a| Box::new(a.summary(now)));
        let stats = &mut self.sites[entry.stats_slot as usize];
        stats.record_close(held, outcome);
        if let Some(activity) = &activity {
            stats.record_activity(activity);
        }
        Some(Closed {
            id: entry.id,
            site: entry.site(),
            span: entry.span.map(SpanRef::info),
            held,
            location: entry.location,
            activity,
            evict: false,
            #[cfg(feature = "leak-report")]
            flagged: entry.flagged > 0,
            #[cfg(feature = "leak-report")]
            stack: entry.stack,
        })
    }

    /// Whether this checkout of its site gets a stack under `mode`
    /// (counts the checkout for `sample:N` and `first:N`).
    #[cfg(feature = "leak-report")]
    pub(crate) fn stack_wanted(&self, key: usize, mode: StackMode) -> bool {
        let Some(entry) = self.outstanding.get(key) else {
            return false;
        };
        let seen = self.stack_counters[entry.stats_slot as usize].fetch_add(1, Ordering::Relaxed);
        mode.wants(seen)
    }

    /// Attaches a stack captured outside the lock.
    #[cfg(feature = "leak-report")]
    pub(crate) fn attach_stack(&mut self, key: usize, stack: RawStack) {
        if let Some(entry) = self.outstanding.get_mut(key) {
            entry.stack = Some(stack);
        }
    }

    /// Flags every guard that crossed a new escalation level and copies it
    /// into `out`. One comparison per guard; stacks are `Arc` clones.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_overdue(&mut self, cutoffs: &Cutoffs, out: &mut Vec<Flagged>) {
        for (_, entry) in self.outstanding.iter_mut() {
            let level = cutoffs.level_of(entry.acquired_at);
            if level > entry.flagged {
                entry.flagged = level;
                out.push(Flagged::of(entry, cutoffs.now));
            }
        }
    }

    /// A database call started on checkout `key`. Returns whether the
    /// checkout does not know its connection yet (the caller then looks up
    /// the backend pid and calls [`Self::set_connection`]).
    pub(crate) fn call_started(
        &mut self,
        key: usize,
        now: Instant,
        statement: Option<&str>,
    ) -> bool {
        match self.outstanding.get_mut(key) {
            Some(entry) => {
                entry.activity_mut().call_started(now, statement);
                entry.activity().connection == 0
            }
            None => false,
        }
    }

    /// A call ended: ran to completion, or was dropped mid-call. A
    /// completed call's `transaction_effect` (raw `BEGIN`/`COMMIT`) applies.
    pub(crate) fn call_ended(
        &mut self,
        key: usize,
        now: Instant,
        completed: bool,
        transaction_effect: Option<bool>,
    ) {
        if let Some(entry) = self.outstanding.get_mut(key) {
            entry.activity_mut().call_ended(now, completed);
            if let (true, Some(open)) = (completed, transaction_effect) {
                entry.activity_mut().raw_transaction = open;
            }
        }
    }

    pub(crate) fn set_connection(&mut self, key: usize, connection: usize, pid: Option<i32>) {
        if let Some(entry) = self.outstanding.get_mut(key) {
            entry.activity_mut().connection = connection;
            entry.activity_mut().backend_pid = pid;
        }
    }

    pub(crate) fn transaction_began(
        &mut self,
        key: usize,
        now: Instant,
        site: &'static Location<'static>,
    ) {
        if let Some(entry) = self.outstanding.get_mut(key) {
            entry.activity_mut().transaction_began(now, site);
        }
    }

    /// The instrumented transaction of checkout `key` ended; its time goes
    /// to the checkout's call-site statistics.
    pub(crate) fn transaction_ended(
        &mut self,
        key: usize,
        now: Instant,
        ending: TransactionEnding,
    ) -> Option<(Outstanding, TransactionEnded)> {
        let entry = self.outstanding.get_mut(key)?;
        let ended = entry.activity_mut().transaction_ended(now, ending)?;
        self.sites[entry.stats_slot as usize].record_transaction(&ended);
        Some((entry.clone(), ended))
    }

    /// A nested transaction (savepoint) ended; only its ending is counted.
    pub(crate) fn savepoint_ended(&mut self, key: usize, ending: TransactionEnding) {
        if let Some(entry) = self.outstanding.get(key) {
            self.sites[entry.stats_slot as usize].record_savepoint(ending);
        }
    }

    /// An open transaction was found at recycle that the holder's own
    /// tracking had not reported: count it against the holder's site.
    pub(crate) fn record_unreported_open_transaction(
        &mut self,
        location: &'static Location<'static>,
        settings: &Settings,
    ) {
        // The recycle hook does not know the holder's span.
        let slot = self.stats_slot(location, None, settings);
        self.sites[slot as usize].record_unreported_open_transaction();
    }

    /// Copies every outstanding guard into `out` for the never-returned
    /// report, marking each as flagged so its return (if any) says so.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_all(&mut self, now: Instant, out: &mut Vec<Flagged>) {
        for (_, entry) in self.outstanding.iter_mut() {
            entry.flagged = entry.flagged.max(1);
            out.push(Flagged::of(entry, now));
        }
    }

    pub(crate) fn record_failure(
        &mut self,
        location: &'static Location<'static>,
        span: Option<SpanInfo>,
        waited: Duration,
        failure: AcquireFailure,
        settings: &Settings,
    ) {
        let slot = self.stats_slot(location, span, settings);
        self.sites[slot as usize].record_failure(waited, failure);
    }
}

#[cfg(test)]
mod tests {
    /// The per-guard memory budget: 64 bytes, plus the stack's pointer
    /// under `leak-report` (the frames themselves live behind it).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn outstanding_entry_stays_small() {
        let entry = std::mem::size_of::<super::Outstanding>();
        let budget = if cfg!(feature = "leak-report") {
            80
        } else {
            64
        };
        assert!(entry <= budget, "{entry} bytes");
    }
}
