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

use super::stats::SiteStats;
use super::SiteInterner;
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::{CallSite, SpanInfo};
#[cfg(feature = "leak-report")]
use crate::{stack::RawStack, stack_mode::StackMode};

/// A checkout that has not ended yet.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    pub(crate) id: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) acquired_at: Instant,
    /// Index into [`ShardState::sites`], resolved once at checkout.
    stats_slot: u32,
    /// How many times the watchdog (or a closing pool) flagged it: 0 to
    /// [`Cutoffs::LEVELS`].
    #[cfg(feature = "leak-report")]
    flagged: u8,
    /// The stack that acquired it, when one was captured.
    #[cfg(feature = "leak-report")]
    stack: Option<RawStack>,
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
#[derive(Clone, Debug)]
pub(crate) struct Closed {
    pub(crate) id: u64,
    pub(crate) site: CallSite,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) held: Duration,
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
            span: entry.span,
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
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) struct ShardState {
    pub(crate) outstanding: Slab<Outstanding>,
    next_seq: u64,
    slot_of_location: HashMap<usize, u32, BuildHasherDefault<AddressHasher>>,
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
            slot_of_location: HashMap::default(),
            sites: Vec::new(),
            #[cfg(feature = "leak-report")]
            stack_counters: Vec::new(),
        }
    }

    /// The statistics slot of a call site, creating it on first sight.
    fn stats_slot(&mut self, location: &'static Location<'static>, interner: &SiteInterner) -> u32 {
        let address = location as *const Location<'static> as usize;
        if let Some(&slot) = self.slot_of_location.get(&address) {
            return slot;
        }
        let site = interner.admit(CallSite::from(location));
        // Another address of the same site (or the overflow bucket) may
        // already have a slot in this shard.
        let slot = match self.sites.iter().position(|s| s.site == site) {
            Some(slot) => slot as u32,
            None => {
                self.sites.push(SiteStats::new(site));
                #[cfg(feature = "leak-report")]
                self.stack_counters.push(interner.stack_counter(site));
                (self.sites.len() - 1) as u32
            }
        };
        self.slot_of_location.insert(address, slot);
        slot
    }

    /// Opens a checkout record; returns its slab key and guard id.
    /// Guard ids interleave the shards (`seq * shards + shard + 1`), so they
    /// are unique per pool without a shared counter, and never 0.
    pub(crate) fn open(
        &mut self,
        (shard_index, shard_count): (u64, u64),
        checkout: Checkout,
        interner: &SiteInterner,
    ) -> (usize, u64) {
        let id = self.next_seq * shard_count + shard_index + 1;
        self.next_seq += 1;
        let stats_slot = self.stats_slot(checkout.location, interner);
        self.sites[stats_slot as usize].record_checkout(checkout.waited);
        let key = self.outstanding.insert(Outstanding {
            id,
            location: checkout.location,
            span: checkout.span,
            acquired_at: checkout.acquired_at,
            stats_slot,
            #[cfg(feature = "leak-report")]
            flagged: 0,
            #[cfg(feature = "leak-report")]
            stack: None,
        });
        (key, id)
    }

    /// Closes a checkout record. `None` only if the key is not outstanding,
    /// which the guard's ownership of its key rules out.
    pub(crate) fn close(&mut self, key: usize, outcome: Outcome, now: Instant) -> Option<Closed> {
        let entry = self.outstanding.try_remove(key)?;
        let held = now.saturating_duration_since(entry.acquired_at);
        self.sites[entry.stats_slot as usize].record_close(held, outcome);
        Some(Closed {
            id: entry.id,
            site: entry.site(),
            span: entry.span,
            held,
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
        waited: Duration,
        failure: AcquireFailure,
        interner: &SiteInterner,
    ) {
        let slot = self.stats_slot(location, interner);
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
