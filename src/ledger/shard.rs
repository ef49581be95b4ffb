//! The ledger data that must be protected by a lock: one shard's
//! outstanding checkouts and call-site statistics. Every method is a small,
//! plain state transition, run under the shard's mutex by [`super::Ledger`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;
use std::panic::Location;
#[cfg(feature = "leak-report")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "leak-report")]
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;

use super::activity::{
    Activity, ActivitySummary, StatementText, TransactionEnded, TransactionEnding,
};
use super::stats::SiteStats;
use super::ticks::Ticks;
use super::Settings;
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::{CallSite, SpanInfo, SpanRef};
#[cfg(feature = "leak-report")]
use crate::{stack::RawStack, stack_mode::StackMode};

/// A checkout that has not ended yet. Its acquire time is kept apart, in
/// [`ShardState::acquired`], the column the watchdog scans.
///
/// Kept small (48 bytes, 64 with `leak-report`): the call site and its
/// statistics slot are one 4-byte index into [`ShardState::origins`].
#[derive(Debug)]
pub(crate) struct Outstanding {
    /// Never 0, which lets the slab keep a free slot in the same 8 bytes
    /// (an entry with a tag word would be 8 bytes larger).
    id: NonZeroU64,
    pub(crate) span: Option<SpanRef>,
    /// Index into [`ShardState::origins`], resolved once at checkout.
    origin: u32,
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

/// Where checkouts come from: a call site (within a span name) and the
/// statistics slot its records go to. Several origins share a slot when
/// their sites overflow the interner's cap.
#[derive(Clone, Copy, Debug)]
struct Origin {
    location: &'static Location<'static>,
    stats_slot: u32,
}

/// An outstanding checkout as the ledger's readers see it: the entry with
/// its call site and acquire time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held<'a> {
    pub(crate) entry: &'a Outstanding,
    pub(crate) location: &'static Location<'static>,
    pub(crate) acquired: Ticks,
}

impl Held<'_> {
    pub(crate) fn site(&self) -> CallSite {
        CallSite::from(self.location)
    }

    /// How long it has been held at `now`.
    pub(crate) fn held(&self, now: Ticks) -> Duration {
        self.acquired.until(now)
    }
}

impl std::ops::Deref for Held<'_> {
    type Target = Outstanding;

    fn deref(&self) -> &Outstanding {
        self.entry
    }
}

/// The holder of a checkout whose transaction just ended, copied out of
/// the ledger for the event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TransactionHolder {
    pub(crate) id: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanRef>,
    pub(crate) backend_pid: Option<i32>,
    pub(crate) last_statement: StatementText,
}

static IDLE_ACTIVITY: Activity = Activity::IDLE;
static IDLE_SUMMARY: ActivitySummary = ActivitySummary::IDLE;

impl Outstanding {
    /// The guard's id.
    pub(crate) fn id(&self) -> u64 {
        self.id.get()
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
    pub(crate) fn site(&self) -> CallSite {
        CallSite::from(self.location)
    }

    pub(crate) fn span(&self) -> Option<SpanInfo> {
        self.span.map(SpanRef::info)
    }

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
    pub(crate) acquired: Ticks,
}

/// What closing a checkout tells the event layer. Kept small: it is
/// returned through the hot path on every return.
#[derive(Clone, Debug)]
pub(crate) struct Closed {
    pub(crate) id: u64,
    pub(crate) location: &'static Location<'static>,
    span: Option<SpanRef>,
    pub(crate) held: Duration,
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
    pub(crate) now: Ticks,
    at: [Option<Ticks>; Cutoffs::LEVELS as usize],
}

#[cfg(feature = "leak-report")]
impl Cutoffs {
    /// Bounded escalation: flagged at 1×, 4× and 16× the threshold.
    pub(crate) const FACTORS: [u32; 3] = [1, 4, 16];
    pub(crate) const LEVELS: u8 = 3;

    pub(crate) fn new(now: Ticks, threshold: Duration) -> Self {
        let at = Self::FACTORS.map(|k| {
            threshold
                .checked_mul(k)
                .and_then(|held| now.checked_sub(held))
        });
        Self { now, at }
    }

    /// The first cutoff: a guard acquired after it is not overdue at all
    /// (the scan's one comparison for almost every guard).
    #[inline]
    fn first(&self) -> Option<Ticks> {
        self.at[0]
    }

    /// How many levels a guard acquired at `acquired` has crossed.
    fn level_of(&self, acquired: Ticks) -> u8 {
        self.at
            .iter()
            .take_while(|cutoff| cutoff.is_some_and(|c| acquired <= c))
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
    fn of(held: Held<'_>, now: Ticks) -> Self {
        Self {
            id: held.id(),
            site: held.site(),
            span: held.span.map(SpanRef::info),
            held: held.acquired.until(now),
            level: held.flagged,
            stack: held.stack.clone(),
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
    /// Outstanding checkouts; the slab's key is the guard's `Record::key`.
    pub(crate) outstanding: Slab<Outstanding>,
    /// The acquire time of the checkout at each slab key
    /// ([`Ticks::NEVER`] for a free key): a dense column the watchdog scans
    /// at 8 bytes a guard instead of walking the entries.
    acquired: Vec<Ticks>,
    next_seq: u64,
    /// (address of the `Location`, address of the span name) → origin.
    origin_of: HashMap<(usize, usize), u32, BuildHasherDefault<AddressHasher>>,
    /// The last key looked up and its origin: a loop checking out at one
    /// line skips the hash lookup. `(0, 0)` (no `Location` is at address
    /// 0) until the first lookup.
    last_origin: ((usize, usize), u32),
    origins: Vec<Origin>,
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
            acquired: Vec::new(),
            next_seq: 0,
            origin_of: HashMap::default(),
            last_origin: ((0, 0), 0),
            origins: Vec::new(),
            sites: Vec::new(),
            #[cfg(feature = "leak-report")]
            stack_counters: Vec::new(),
        }
    }

    /// The origin of a checkout at a call site within a span, creating it
    /// (and its statistics slot) on first sight. Spans are static names,
    /// so their number is bounded by the program; statistics slots are
    /// bounded by the interner's cap on sites.
    #[inline]
    fn origin(
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
        if self.last_origin.0 == key {
            return self.last_origin.1;
        }
        self.origin_lookup(key, location, span_name, settings)
    }

    /// [`Self::origin`] when the key is not the last one looked up.
    #[inline(never)]
    fn origin_lookup(
        &mut self,
        key: (usize, usize),
        location: &'static Location<'static>,
        span_name: Option<&'static str>,
        settings: &Settings,
    ) -> u32 {
        let origin = match self.origin_of.get(&key) {
            Some(&origin) => origin,
            None => {
                let stats_slot = self.stats_slot(location, span_name, settings);
                self.origins.push(Origin {
                    location,
                    stats_slot,
                });
                let origin = (self.origins.len() - 1) as u32;
                self.origin_of.insert(key, origin);
                origin
            }
        };
        self.last_origin = (key, origin);
        origin
    }

    /// The statistics slot of a new origin: its site's (or the overflow
    /// bucket's) within its span name, created on first sight.
    fn stats_slot(
        &mut self,
        location: &'static Location<'static>,
        span_name: Option<&'static str>,
        settings: &Settings,
    ) -> u32 {
        let (site, rank) = settings.interner.admit(CallSite::from(location));
        // Another address of the same site (or the overflow bucket) may
        // already have a slot in this shard.
        let existing = self
            .sites
            .iter()
            .position(|s| s.site == site && s.span == span_name);
        if let Some(slot) = existing {
            return slot as u32;
        }
        #[cfg(feature = "metrics")]
        let stats = SiteStats::new(site, span_name, settings.metrics.site_handles(site, rank));
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

    /// The statistics of an origin.
    #[inline]
    fn stats_of(&mut self, origin: u32) -> &mut SiteStats {
        let slot = self.origins[origin as usize].stats_slot;
        &mut self.sites[slot as usize]
    }

    /// Every outstanding checkout, with its site and acquire time.
    pub(crate) fn iter_held(&self) -> impl Iterator<Item = Held<'_>> + '_ {
        self.outstanding.iter().map(|(key, entry)| Held {
            entry,
            location: self.origins[entry.origin as usize].location,
            acquired: self.acquired[key],
        })
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
        let origin = self.origin(
            checkout.location,
            checkout.span.map(SpanRef::info),
            settings,
        );
        self.stats_of(origin).record_checkout(checkout.waited);
        let key = self.outstanding.insert(Outstanding {
            id: NonZeroU64::new(id).expect("ids start at 1"),
            span: checkout.span,
            origin,
            activity: None,
            #[cfg(feature = "leak-report")]
            flagged: 0,
            #[cfg(feature = "leak-report")]
            stack: None,
        });
        let acquired = checkout.acquired;
        match self.acquired.get_mut(key) {
            Some(slot) => *slot = acquired,
            None => self.acquired.push(acquired), // the slab grew by one
        }
        (key, id)
    }

    /// Closes a checkout record. `None` only if the key is not outstanding,
    /// which the guard's ownership of its key rules out.
    #[inline]
    pub(crate) fn close(&mut self, key: usize, outcome: Outcome, now: Ticks) -> Option<Closed> {
        let entry = self.outstanding.try_remove(key)?;
        let acquired = std::mem::replace(&mut self.acquired[key], Ticks::NEVER);
        let held = acquired.until(now);
        let activity = entry.activity.as_ref().map(|a| Box::new(a.summary(now)));
        let location = self.origins[entry.origin as usize].location;
        let stats = self.stats_of(entry.origin);
        stats.record_close(held, outcome);
        if let Some(activity) = &activity {
            stats.record_activity(activity);
        }
        Some(Closed {
            id: entry.id.get(),
            location,
            span: entry.span,
            held,
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
        let slot = self.origins[entry.origin as usize].stats_slot;
        let seen = self.stack_counters[slot as usize].fetch_add(1, Ordering::Relaxed);
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
    /// into `out`. Reads the acquire-time column: one comparison per guard,
    /// and the entry itself only for the overdue ones.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_overdue(&mut self, cutoffs: &Cutoffs, out: &mut Vec<Flagged>) {
        let Some(first) = cutoffs.first() else {
            return; // nothing can have been held that long yet
        };
        // Almost no chunk holds an overdue guard: one test per chunk that
        // the compiler turns into vector compares, then the chunk's keys
        // one by one only when it does.
        const CHUNK: usize = 16;
        for (index, chunk) in self.acquired.chunks(CHUNK).enumerate() {
            // `fold`, not `any`: no early exit, so it vectorizes.
            let overdue = chunk
                .iter()
                .fold(false, |any, &acquired| any | (acquired <= first));
            if !overdue {
                continue; // none overdue (free keys are `NEVER`)
            }
            for (offset, &acquired) in chunk.iter().enumerate() {
                if acquired > first {
                    continue;
                }
                let level = cutoffs.level_of(acquired);
                let entry = &mut self.outstanding[index * CHUNK + offset];
                if level > entry.flagged {
                    entry.flagged = level;
                    let held = Held {
                        location: self.origins[entry.origin as usize].location,
                        entry,
                        acquired,
                    };
                    out.push(Flagged::of(held, cutoffs.now));
                }
            }
        }
    }

    /// A database call started on checkout `key`. Returns whether the
    /// checkout does not know its connection yet (the caller then looks up
    /// the backend pid and calls [`Self::set_connection`]).
    pub(crate) fn call_started(&mut self, key: usize, now: Ticks, statement: Option<&str>) -> bool {
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
        now: Ticks,
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
        now: Ticks,
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
        now: Ticks,
        ending: TransactionEnding,
    ) -> Option<(TransactionHolder, TransactionEnded)> {
        let entry = self.outstanding.get_mut(key)?;
        let ended = entry.activity_mut().transaction_ended(now, ending)?;
        let holder = TransactionHolder {
            id: entry.id.get(),
            location: self.origins[entry.origin as usize].location,
            span: entry.span,
            backend_pid: entry.activity().backend_pid,
            last_statement: entry.activity().last_statement,
        };
        let origin = entry.origin;
        self.stats_of(origin).record_transaction(&ended);
        Some((holder, ended))
    }

    /// A nested transaction (savepoint) ended; only its ending is counted.
    pub(crate) fn savepoint_ended(&mut self, key: usize, ending: TransactionEnding) {
        if let Some(origin) = self.outstanding.get(key).map(|e| e.origin) {
            self.stats_of(origin).record_savepoint(ending);
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
        let origin = self.origin(location, None, settings);
        self.stats_of(origin).record_unreported_open_transaction();
    }

    /// Copies every outstanding guard into `out` for the never-returned
    /// report, marking each as flagged so its return (if any) says so.
    #[cfg(feature = "leak-report")]
    pub(crate) fn flag_all(&mut self, now: Ticks, out: &mut Vec<Flagged>) {
        for (_, entry) in self.outstanding.iter_mut() {
            entry.flagged = entry.flagged.max(1);
        }
        out.extend(self.iter_held().map(|held| Flagged::of(held, now)));
    }

    pub(crate) fn record_failure(
        &mut self,
        location: &'static Location<'static>,
        span: Option<SpanInfo>,
        waited: Duration,
        failure: AcquireFailure,
        settings: &Settings,
    ) {
        let origin = self.origin(location, span, settings);
        self.stats_of(origin).record_failure(waited, failure);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "leak-report")]
    use super::*;
    #[cfg(feature = "leak-report")]
    use std::time::Instant;

    /// The scan reads the acquire-time column: a closed checkout's key is
    /// never flagged, and a key reused by a newer checkout carries the
    /// newer acquire time.
    #[test]
    #[cfg(feature = "leak-report")]
    fn scan_column_follows_opens_and_closes() {
        let config = crate::WatchConfig::builder()
            .timeline_tick(None)
            .build()
            .unwrap();
        let settings = Arc::clone(&super::super::Ledger::new(&config).settings);
        let mut state = ShardState::new();
        let threshold = Duration::from_secs(10);
        let base = Instant::now() + Duration::from_secs(100);
        let early = Ticks::of(base);
        let open = |state: &mut ShardState, at: Ticks| {
            let checkout = Checkout {
                location: Location::caller(),
                span: None,
                waited: Duration::ZERO,
                acquired: at,
            };
            state.open((0, 1), checkout, &settings)
        };
        let (_, first) = open(&mut state, early);
        let (middle_key, _) = open(&mut state, early);
        let (third_key, _) = open(&mut state, early);
        let (_, fourth) = open(&mut state, early);
        state.close(third_key, Outcome::Returned, early).unwrap();
        state.close(middle_key, Outcome::Returned, early).unwrap();
        // The freed key is reused by a checkout acquired much later.
        let late = Ticks::of(base + 3 * threshold);
        let (reused_key, _) = open(&mut state, late);
        assert_eq!(reused_key, middle_key);

        let mut flagged = Vec::new();
        // The early ones are overdue.
        let now = Ticks::of(base + 2 * threshold);
        state.flag_overdue(&Cutoffs::new(now, threshold), &mut flagged);
        let mut ids: Vec<u64> = flagged.iter().map(|f| f.id).collect();
        ids.sort();
        assert_eq!(ids, [first, fourth]);
        assert!(flagged
            .iter()
            .all(|f| f.level == 1 && f.held == 2 * threshold));

        // Flagged once per level: the same scan again flags nothing.
        flagged.clear();
        state.flag_overdue(&Cutoffs::new(now, threshold), &mut flagged);
        assert!(flagged.is_empty());
    }

    /// The per-guard memory budget: 64 bytes with the acquire-time column
    /// (8), stack pointer included (the frames themselves live behind it).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn outstanding_entry_stays_small() {
        let entry = std::mem::size_of::<super::Outstanding>();
        let column = std::mem::size_of::<super::Ticks>();
        let budget = if cfg!(feature = "leak-report") {
            64
        } else {
            48
        };
        assert!(entry + column <= budget, "{entry} + {column} bytes");
    }
}
