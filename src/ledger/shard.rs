//! The ledger data that must be protected by a lock: one shard's
//! outstanding checkouts and call-site statistics. Every method is a small,
//! plain state transition, run under the shard's mutex by [`super::Ledger`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::Location;
use std::time::{Duration, Instant};

use slab::Slab;

use super::activity::{Activity, ActivitySummary, TransactionEnded, TransactionEnding};
use super::stats::SiteStats;
use super::Settings;
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::{CallSite, SpanInfo};

/// A checkout that has not ended yet.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    pub(crate) id: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) acquired_at: Instant,
    /// Index into [`ShardState::sites`], resolved once at checkout.
    stats_slot: u32,
    /// What the holder did with the connection (database integrations).
    pub(crate) activity: Activity,
}

impl Outstanding {
    pub(crate) fn site(&self) -> CallSite {
        CallSite::from(self.location)
    }
}

/// A successful acquire, as the pool saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checkout {
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) waited: Duration,
    pub(crate) acquired_at: Instant,
}

/// What closing a checkout tells the event layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Closed {
    pub(crate) id: u64,
    pub(crate) site: CallSite,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) held: Duration,
    pub(crate) location: &'static Location<'static>,
    /// The database side of the hold (all zero for plain pools).
    pub(crate) activity: ActivitySummary,
    /// The connection must not go back to the pool (a call may still run
    /// on it, or it sits in a transaction nobody will clean up).
    pub(crate) evict: bool,
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
    pub(crate) sites: Vec<SiteStats>,
}

impl ShardState {
    pub(crate) fn new() -> Self {
        Self {
            outstanding: Slab::new(),
            next_seq: 0,
            slot_of: HashMap::default(),
            sites: Vec::new(),
        }
    }

    /// The statistics slot of a call site within a span, creating it on
    /// first sight. Spans are static names, so their number is bounded by
    /// the program; sites are bounded by the interner's cap.
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
        if let Some(&slot) = self.slot_of.get(&key) {
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
                (self.sites.len() - 1) as u32
            }
        };
        self.slot_of.insert(key, slot);
        slot
    }

    /// Guard ids interleave the shards (`seq * shards + shard + 1`), so they
    /// are unique per pool without a shared counter, and never 0.
    pub(crate) fn open(
        &mut self,
        (shard_index, shard_count): (u64, u64),
        checkout: Checkout,
        settings: &Settings,
    ) -> (usize, u64) {
        let id = self.next_seq * shard_count + shard_index + 1;
        self.next_seq += 1;
        let stats_slot = self.stats_slot(checkout.location, checkout.span, settings);
        self.sites[stats_slot as usize].record_checkout(checkout.waited);
        let key = self.outstanding.insert(Outstanding {
            id,
            location: checkout.location,
            span: checkout.span,
            acquired_at: checkout.acquired_at,
            stats_slot,
            activity: Activity::IDLE,
        });
        (key, id)
    }

    /// Closes a checkout record. `None` only if the key is not outstanding,
    /// which the guard's ownership of its key rules out.
    pub(crate) fn close(&mut self, key: usize, outcome: Outcome, now: Instant) -> Option<Closed> {
        let entry = self.outstanding.try_remove(key)?;
        let held = now.saturating_duration_since(entry.acquired_at);
        let activity = entry.activity.summary(now);
        let stats = &mut self.sites[entry.stats_slot as usize];
        stats.record_close(held, outcome);
        stats.record_activity(&activity);
        Some(Closed {
            id: entry.id,
            site: entry.site(),
            span: entry.span,
            held,
            location: entry.location,
            activity,
            evict: false,
        })
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
                entry.activity.call_started(now, statement);
                entry.activity.connection == 0
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
            entry.activity.call_ended(now, completed);
            if let (true, Some(open)) = (completed, transaction_effect) {
                entry.activity.raw_transaction = open;
            }
        }
    }

    pub(crate) fn set_connection(&mut self, key: usize, connection: usize, pid: Option<i32>) {
        if let Some(entry) = self.outstanding.get_mut(key) {
            entry.activity.connection = connection;
            entry.activity.backend_pid = pid;
        }
    }

    pub(crate) fn transaction_began(
        &mut self,
        key: usize,
        now: Instant,
        site: &'static Location<'static>,
    ) {
        if let Some(entry) = self.outstanding.get_mut(key) {
            entry.activity.transaction_began(now, site);
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
        let ended = entry.activity.transaction_ended(now, ending)?;
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
