//! The ledger data behind one shard's lock: outstanding checkouts, waiting
//! acquires, and what each origin recorded since the last drain. Every
//! method is a small state transition, run under the shard's mutex by
//! [`super::Shard`]; nothing here formats, emits or merges.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;

use super::common::Common;
use super::connection::{ConnectionActivity, HoldEnd};
use super::records::TransactionEnded;
use super::records::{Checkout, Closed, EndedActivity, HeldActivity, Holder, TaskId, Waiter};
use super::stats::{SiteDelta, StatsKey, TransactionEnding};
use super::ticks::Ticks;
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::{CallSite, SpanInfo, SpanRef};
#[cfg(feature = "leak-report")]
use crate::{stack::RawStack, stack_mode::StackMode};

/// No connection slot.
const NO_CONNECTION: u32 = u32::MAX;

/// A checkout that has not ended yet. Its acquire time is kept apart, in
/// [`ShardState::acquired`], the column the watchdog scans.
///
/// Kept small (40 bytes, 56 with `leak-report`): the call site, span name
/// and statistics slot are one 4-byte index into [`ShardState::origins`],
/// the connection a 4-byte slot of [`ConnectionCache`].
#[derive(Debug)]
pub(crate) struct Outstanding {
    /// Never 0, which lets the slab keep a free slot in the same 8 bytes.
    id: NonZeroU64,
    /// The span's id; its name is the origin's.
    span_id: Option<NonZeroU64>,
    task: TaskId,
    origin: u32,
    connection: u32,
    /// Acquired while the thread was unwinding.
    opened_while_panicking: bool,
    /// Its acquire had to wait: a call dropped mid-way at the caller's
    /// deadline then is the wait's doing as much as the caller's.
    opened_after_wait: bool,
    /// Its task waits right now for a second connection of the pool while
    /// holding this one (a nested checkout).
    nested_waiting: bool,
    /// How long its task's nested waits that ended took, in milliseconds
    /// (saturating at about a minute, which keeps the entry in its size):
    /// a hold mostly spent so is that wait's doing.
    nested_waited_ms: u16,
    /// Escalation levels the watchdog's scan marked, and reported.
    #[cfg(feature = "leak-report")]
    flagged: u8,
    #[cfg(feature = "leak-report")]
    reported: u8,
    /// The stack that acquired it, when one was captured.
    #[cfg(feature = "leak-report")]
    stack: Option<RawStack>,
}

impl Outstanding {
    /// The guard's id.
    #[cfg(test)]
    pub(crate) fn id(&self) -> u64 {
        self.id.get()
    }
}

/// An acquire waiting for a connection.
#[derive(Debug)]
struct Pending {
    origin: u32,
    span_id: Option<NonZeroU64>,
    since: Ticks,
    nested: bool,
    /// Queued for a connection every one of which was in use (saturation),
    /// rather than waiting for one being opened.
    queued: bool,
}

/// Where checkouts come from: a call site within a span, and the key its
/// statistics go under (the overflow bucket's, past the cap on sites).
#[derive(Clone, Copy, Debug)]
struct Origin {
    location: &'static Location<'static>,
    span: Option<&'static tracing::Metadata<'static>>,
    key: StatsKey,
    /// The site's rank among admitted sites (`None`: overflow).
    rank: Option<u32>,
}

impl Origin {
    fn span(&self, id: Option<NonZeroU64>) -> Option<SpanInfo> {
        match (self.span, id) {
            (Some(metadata), Some(id)) => Some(SpanInfo {
                name: metadata.name(),
                id: id.get(),
            }),
            _ => None,
        }
    }
}

/// A `Location` (or metadata) is `'static` and its address is a fine hash
/// key; the real identity check is done by the interner on first sight.
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

type AddressMap<K, V> = HashMap<K, V, BuildHasherDefault<AddressHasher>>;

/// The activity records of the connections this shard's checkouts used,
/// by the integration's connection key; a checkout keeps a 4-byte slot.
#[derive(Default)]
struct ConnectionCache {
    slots: Vec<Option<Cached>>,
    by_key: AddressMap<usize, u32>,
    free: Vec<u32>,
}

struct Cached {
    key: usize,
    /// `None`: the integration does not know this connection.
    activity: Option<Arc<ConnectionActivity>>,
    /// Outstanding checkouts on it (at most one, unless detached objects
    /// are reused: counted to know when the slot may go).
    users: u32,
}

impl ConnectionCache {
    /// The slot of connection `key` for a new checkout on it.
    #[inline]
    fn checkout(&mut self, key: usize, common: &Common) -> u32 {
        let slot = match self.by_key.get(&key) {
            Some(&slot) => slot,
            None => self.insert(key, common),
        };
        if let Some(Some(cached)) = self.slots.get_mut(slot as usize) {
            cached.users += 1;
        }
        slot
    }

    #[cold]
    fn insert(&mut self, key: usize, common: &Common) -> u32 {
        if self.free.is_empty() && self.slots.len() >= 32 && self.slots.len().is_power_of_two() {
            self.prune();
        }
        let cached = Cached {
            key,
            activity: common.find_connection(key),
            users: 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(cached);
                slot
            }
            None => {
                self.slots.push(Some(cached));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_key.insert(key, slot);
        slot
    }

    /// Forgets connections whose pooled object is gone and that no
    /// outstanding checkout uses (the record's reservation keeps a dead
    /// connection's key from being reused until then).
    fn prune(&mut self) {
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let gone = entry.as_ref().is_some_and(|c| {
                c.users == 0 && c.activity.as_ref().is_none_or(|a| !a.object_alive())
            });
            if gone {
                if let Some(cached) = entry.take() {
                    self.by_key.remove(&cached.key);
                }
                self.free.push(slot as u32);
            }
        }
    }

    fn activity(&self, slot: u32) -> Option<&Arc<ConnectionActivity>> {
        self.slots.get(slot as usize)?.as_ref()?.activity.as_ref()
    }

    /// A checkout on `slot` ended at `now`: what its hold did, when the
    /// connection is observed. One lookup for both.
    #[inline]
    fn end_hold(&mut self, slot: u32, now: Ticks) -> Option<HoldEnd> {
        let cached = self.slots.get_mut(slot as usize)?.as_mut()?;
        cached.users = cached.users.saturating_sub(1);
        cached.activity.as_ref().map(|a| a.end_hold(now))
    }
}

/// A watched transaction in progress (the integration's `Transaction`).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
struct OpenTransaction {
    key: usize,
    since: Ticks,
    site: &'static Location<'static>,
    /// The connection's idle-in-transaction total when it began.
    idle_at_start: Option<Duration>,
    depth: u32,
}

pub(crate) struct ShardState {
    /// Outstanding checkouts; the slab's key is the guard's record key.
    pub(crate) outstanding: Slab<Outstanding>,
    /// The acquire time of the checkout at each slab key
    /// ([`Ticks::NEVER`] for a free key): a dense column the watchdog scans
    /// at 8 bytes a guard instead of walking the entries.
    acquired: Vec<Ticks>,
    next_seq: u64,
    /// (address of the `Location`, address of the span's metadata) →
    /// origin.
    origin_of: AddressMap<(usize, usize), u32>,
    /// The last key looked up and its origin: a loop checking out at one
    /// line skips the hash lookup. `(0, 0)` (no `Location` is at address
    /// 0) until the first lookup.
    last_origin: ((usize, usize), u32),
    origins: Vec<Origin>,
    /// What each origin recorded since the last drain, parallel to
    /// `origins`.
    pub(crate) deltas: Vec<SiteDelta>,
    /// The origins whose delta was touched since the last drain, so the
    /// drain's merge visits only those.
    touched: Vec<u32>,
    pending: Slab<Pending>,
    connections: ConnectionCache,
    transactions: Vec<OpenTransaction>,
    /// The last drain: the tick boundary this shard's records are split at.
    drained_at: Ticks,
    /// Checkouts seen per call site across all shards, parallel to
    /// `origins`: decides `sample:N` and `first:N` stack capture.
    #[cfg(feature = "leak-report")]
    stack_counters: Vec<Arc<std::sync::atomic::AtomicU64>>,
}

/// What a drain hands the archive: the deltas it swapped out (now holding
/// the in-progress holds' and waits' share of the tick too).
pub(crate) struct Drained {
    pub(crate) at: Ticks,
    pub(crate) deltas: Vec<SiteDelta>,
    /// The indices into `deltas` that hold anything.
    pub(crate) touched: Vec<u32>,
}

impl ShardState {
    pub(crate) fn new(now: Ticks) -> Self {
        Self {
            outstanding: Slab::new(),
            acquired: Vec::new(),
            next_seq: 0,
            origin_of: HashMap::default(),
            last_origin: ((0, 0), 0),
            origins: Vec::new(),
            deltas: Vec::new(),
            touched: Vec::new(),
            pending: Slab::new(),
            connections: ConnectionCache::default(),
            transactions: Vec::new(),
            drained_at: now,
            #[cfg(feature = "leak-report")]
            stack_counters: Vec::new(),
        }
    }

    /// The origin of a checkout at a call site within a span, created (with
    /// its delta slot) on first sight. Both are static, so their number is
    /// bounded by the program.
    #[inline]
    fn origin(
        &mut self,
        location: &'static Location<'static>,
        span: Option<&'static tracing::Metadata<'static>>,
        common: &Common,
    ) -> u32 {
        let key = (
            location as *const Location<'static> as usize,
            span.map_or(0, |m| m as *const tracing::Metadata<'static> as usize),
        );
        if self.last_origin.0 == key {
            return self.last_origin.1;
        }
        self.origin_lookup(key, location, span, common)
    }

    #[inline(never)]
    fn origin_lookup(
        &mut self,
        key: (usize, usize),
        location: &'static Location<'static>,
        span: Option<&'static tracing::Metadata<'static>>,
        common: &Common,
    ) -> u32 {
        let origin = match self.origin_of.get(&key) {
            Some(&origin) => origin,
            None => {
                let (site, rank) = common.sites.admit(CallSite::from(location));
                let stats_key = StatsKey {
                    site,
                    span: span.map(|m| m.name()),
                };
                self.origins.push(Origin {
                    location,
                    span,
                    key: stats_key,
                    rank,
                });
                self.deltas.push(SiteDelta::new(stats_key));
                #[cfg(feature = "leak-report")]
                self.stack_counters.push(common.sites.stack_counter(site));
                let origin = (self.origins.len() - 1) as u32;
                self.origin_of.insert(key, origin);
                origin
            }
        };
        self.last_origin = (key, origin);
        origin
    }

    fn span_parts(
        span: Option<SpanRef>,
    ) -> (
        Option<&'static tracing::Metadata<'static>>,
        Option<NonZeroU64>,
    ) {
        match span {
            Some(span) => (Some(span.metadata), Some(span.id)),
            None => (None, None),
        }
    }

    /// An origin's delta, marked touched (listed for the drain on its
    /// first touch).
    #[inline]
    fn delta(&mut self, origin: u32) -> &mut SiteDelta {
        let delta = &mut self.deltas[origin as usize];
        if !delta.touched {
            delta.touched = true;
            self.touched.push(origin);
        }
        delta
    }

    /// Opens a checkout record. Guard ids interleave the shards
    /// (`seq * shards + shard + 1`), so they are unique per pool without a
    /// shared counter, and never 0.
    #[inline]
    pub(crate) fn open(
        &mut self,
        (shard_index, shard_count): (u64, u64),
        checkout: Checkout,
        common: &Common,
    ) -> (usize, u64, Option<u32>) {
        let id = self.next_seq * shard_count + shard_index + 1;
        self.next_seq += 1;
        let (metadata, span_id) = Self::span_parts(checkout.span);
        let origin = self.origin(checkout.location, metadata, common);
        self.delta(origin).record_checkout(checkout.waited);
        let connection = match checkout.connection {
            Some(key) => self.connections.checkout(key, common),
            None => NO_CONNECTION,
        };
        let key = self.outstanding.insert(Outstanding {
            id: NonZeroU64::new(id).expect("ids start at 1"),
            span_id,
            task: checkout.task,
            origin,
            connection,
            opened_while_panicking: checkout.panicking,
            opened_after_wait: !checkout.waited.is_zero(),
            nested_waiting: false,
            nested_waited_ms: 0,
            #[cfg(feature = "leak-report")]
            flagged: 0,
            #[cfg(feature = "leak-report")]
            reported: 0,
            #[cfg(feature = "leak-report")]
            stack: None,
        });
        match self.acquired.get_mut(key) {
            Some(slot) => *slot = checkout.acquired,
            None => self.acquired.push(checkout.acquired), // the slab grew by one
        }
        (key, id, self.origins[origin as usize].rank)
    }

    /// Closes a checkout record. `None` only if the key is not outstanding,
    /// which the guard's ownership of its key rules out.
    #[inline]
    pub(crate) fn close(&mut self, key: usize, outcome: Outcome, now: Ticks) -> Option<Closed> {
        let entry = self.outstanding.try_remove(key)?;
        let acquired = std::mem::replace(&mut self.acquired[key], Ticks::NEVER);
        let held_ns = acquired.nanos_until(now);
        // A checkout made while already unwinding is not a hold the panic
        // dropped.
        let outcome = match outcome {
            Outcome::DroppedWhilePanicking if entry.opened_while_panicking => Outcome::Returned,
            outcome => outcome,
        };
        let in_tick_ns = acquired.max(self.drained_at).nanos_until(now);
        let mut ended = self.end_activity(&entry, now);
        if !self.transactions.is_empty() {
            // A watched transaction still open at return (leaked): its
            // site names where it was begun.
            if let Some(open) = self.transactions.iter().position(|t| t.key == key) {
                let open = self.transactions.swap_remove(open);
                if let Some((_, activity)) = &mut ended {
                    activity.details.get_or_insert_default().transaction_site = Some(open.site);
                }
            }
        }
        let origin = self.origins[entry.origin as usize];
        let delta = self.delta(entry.origin);
        delta.record_close(held_ns, outcome);
        // Ended while its task waited for a second connection, or such
        // waits took at least half of it.
        let across_nested_wait = entry.nested_waiting
            || (entry.nested_waited_ms > 0
                && u64::from(entry.nested_waited_ms).saturating_mul(2_000_000) >= held_ns);
        delta.counts.holds_across_nested_wait += u64::from(across_nested_wait);
        // Read in place: the activity record is moved once, into `Closed`.
        let poisoned = match &ended {
            Some((tick, activity)) => {
                delta.add_closed_hold(
                    in_tick_ns,
                    Some((tick.busy_ns, tick.idle_in_transaction_ns)),
                );
                let hold = &activity.hold;
                delta.add_database_time(hold.busy_ns, hold.idle_in_transaction_ns);
                let db = &mut delta.counts.database;
                db.observed_holds += 1;
                db.statements += hold.statements;
                let in_flight = activity.in_flight > 0;
                let open = activity.transaction.is_open();
                db.in_flight_at_return += u64::from(in_flight);
                db.in_flight_after_wait += u64::from(in_flight && entry.opened_after_wait);
                db.open_transaction_at_return += u64::from(open);
                in_flight || open
            }
            None => {
                delta.add_closed_hold(in_tick_ns, None);
                false
            }
        };
        Some(Closed {
            id: entry.id.get(),
            site_rank: origin.rank,
            location: origin.location,
            span: origin.span(entry.span_id),
            outcome,
            held: Duration::from_nanos(held_ns),
            activity: ended.map(|(_, activity)| activity),
            poisoned,
            #[cfg(feature = "leak-report")]
            flagged: entry.reported,
            #[cfg(feature = "leak-report")]
            stack: entry.stack,
        })
    }

    /// Ends the hold on the entry's connection: the tick's part and what
    /// the hold did.
    #[inline]
    fn end_activity(
        &mut self,
        entry: &Outstanding,
        now: Ticks,
    ) -> Option<(super::connection::Counters, EndedActivity)> {
        if entry.connection == NO_CONNECTION {
            return None;
        }
        let end = self.connections.end_hold(entry.connection, now)?;
        Some((
            end.tick,
            EndedActivity {
                hold: end.hold,
                in_flight: end.in_flight,
                transaction: end.transaction,
                backend_pid: end.backend_pid,
                details: end.details,
            },
        ))
    }

    fn holder(&self, key: usize, entry: &Outstanding, now: Ticks) -> Holder {
        let origin = self.origins[entry.origin as usize];
        let acquired = self.acquired[key];
        let activity = self.connections.activity(entry.connection).map(|a| {
            let (so_far, reading) = a.hold_so_far(now);
            HeldActivity {
                last_call_ended: reading
                    .last_call_ended
                    .filter(|&ended| ended >= acquired && so_far.statements > 0),
                last_statement: if so_far.statements > 0 {
                    reading.last_statement
                } else {
                    None
                },
                so_far,
                in_flight: reading.in_flight,
                transaction: reading.transaction,
                backend_pid: reading.backend_pid,
            }
        });
        Holder {
            id: entry.id.get(),
            location: origin.location,
            key: origin.key,
            span: origin.span(entry.span_id),
            acquired,
            activity,
            nested_waiting: entry.nested_waiting,
            nested_waited: Duration::from_millis(entry.nested_waited_ms.into()),
        }
    }

    /// Copies every outstanding checkout into `out`.
    pub(crate) fn holders(&self, now: Ticks, out: &mut Vec<Holder>) {
        out.extend(
            self.outstanding
                .iter()
                .map(|(key, entry)| self.holder(key, entry, now)),
        );
    }

    /// Copies every waiting acquire into `out`.
    pub(crate) fn waiters(&self, out: &mut Vec<Waiter>) {
        out.extend(self.pending.iter().map(|(_, p)| {
            let origin = self.origins[p.origin as usize];
            Waiter {
                location: origin.location,
                span: origin.span(p.span_id),
                since: p.since,
                nested: p.nested,
                queued: p.queued,
            }
        }));
    }

    /// The first outstanding checkout held by `task`, if any, marked as
    /// held while its task waits for a second one (a nested wait).
    pub(crate) fn nested_holder(&mut self, task: NonZeroU64, now: Ticks) -> Option<Holder> {
        let (key, entry) = self
            .outstanding
            .iter_mut()
            .find(|(_, e)| e.task == Some(task))?;
        entry.nested_waiting = true;
        let entry = &self.outstanding[key];
        Some(self.holder(key, entry, now))
    }

    /// The nested wait of `task` (see [`Self::nested_holder`]) ended after
    /// `waited`. Whether its held guard is in this shard.
    pub(crate) fn nested_wait_ended(&mut self, task: NonZeroU64, waited: Duration) -> bool {
        let Some((_, entry)) = self
            .outstanding
            .iter_mut()
            .find(|(_, e)| e.task == Some(task) && e.nested_waiting)
        else {
            return false;
        };
        entry.nested_waiting = false;
        // Rounded up: a wait of any length counts.
        let waited_ms = u16::try_from(waited.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        entry.nested_waited_ms = entry.nested_waited_ms.saturating_add(waited_ms);
        true
    }

    pub(crate) fn outstanding_count(&self) -> usize {
        self.outstanding.len()
    }

    /// When the longest-held outstanding checkout was acquired, if any: a
    /// scan of the `acquired` column (free slots hold [`Ticks::NEVER`]).
    pub(crate) fn oldest_acquired(&self) -> Option<Ticks> {
        self.acquired
            .iter()
            .copied()
            .min()
            .filter(|t| *t != Ticks::NEVER)
    }

    /// When the longest-waiting pending acquire started waiting, if any.
    #[cfg(feature = "metrics")]
    pub(crate) fn oldest_pending(&self) -> Option<Ticks> {
        self.pending.iter().map(|(_, p)| p.since).min()
    }

    /// An acquire had to wait: it is pending until [`Self::wait_ended`].
    pub(crate) fn wait_started(
        &mut self,
        location: &'static Location<'static>,
        span: Option<SpanRef>,
        since: Ticks,
        nested: bool,
        queued: bool,
        common: &Common,
    ) -> usize {
        let (metadata, span_id) = Self::span_parts(span);
        let origin = self.origin(location, metadata, common);
        if nested {
            self.delta(origin).record_nested();
        }
        self.pending.insert(Pending {
            origin,
            span_id,
            since,
            nested,
            queued,
        })
    }

    /// A pending acquire ended at `now`: served, failed or cancelled. Its
    /// share of the tick is recorded here; a failure or cancellation also
    /// counts against its site (a served one is counted by its checkout).
    pub(crate) fn wait_ended(
        &mut self,
        key: usize,
        now: Ticks,
        ending: WaitEnding,
    ) -> Option<(Duration, bool)> {
        let pending = self.pending.try_remove(key)?;
        let waited = pending.since.until(now);
        let in_tick = pending.since.max(self.drained_at).until(now);
        let delta = self.delta(pending.origin);
        if pending.queued {
            delta.record_waited_in_tick(in_tick);
        }
        match ending {
            WaitEnding::Served => {}
            WaitEnding::Failed(failure) => delta.record_failure(waited, failure),
            WaitEnding::Cancelled => delta.record_cancelled(waited),
        }
        Some((waited, pending.queued))
    }

    /// An acquire failed without having waited.
    pub(crate) fn record_failure(
        &mut self,
        location: &'static Location<'static>,
        span: Option<SpanRef>,
        failure: AcquireFailure,
        common: &Common,
    ) {
        let (metadata, _) = Self::span_parts(span);
        let origin = self.origin(location, metadata, common);
        self.delta(origin).record_failure(Duration::ZERO, failure);
    }

    /// Swaps the deltas out (for `spare`, reset and as long as `origins`),
    /// adds the share of the tick of the holds and waits still in
    /// progress, and moves the tick boundary to `now`.
    pub(crate) fn drain(&mut self, now: Ticks, mut spare: Vec<SiteDelta>) -> Drained {
        // New origins since the last drain get their slot (the only
        // allocation under the lock, once per origin).
        for origin in &self.origins[spare.len().min(self.origins.len())..] {
            spare.push(SiteDelta::new(origin.key));
        }
        std::mem::swap(&mut self.deltas, &mut spare);
        let mut touched = std::mem::take(&mut self.touched);
        for &origin in &touched {
            spare[origin as usize].settle();
        }
        let since = self.drained_at;
        let mut touch = |spare: &mut Vec<SiteDelta>, origin: u32| {
            let delta = &mut spare[origin as usize];
            if !delta.touched {
                delta.touched = true;
                touched.push(origin);
            }
        };
        for (key, entry) in self.outstanding.iter() {
            let in_tick = self.acquired[key].max(since).until(now);
            let observed = self.connections.activity(entry.connection).map(|a| {
                let tick = a.tick_mark(now);
                (tick.busy, tick.idle_in_transaction)
            });
            touch(&mut spare, entry.origin);
            spare[entry.origin as usize]
                .usage
                .add_hold(in_tick, observed);
        }
        for (_, pending) in self.pending.iter().filter(|(_, p)| p.queued) {
            touch(&mut spare, pending.origin);
            spare[pending.origin as usize]
                .record_waited_in_tick(pending.since.max(since).until(now));
        }
        self.drained_at = now;
        Drained {
            at: now,
            deltas: spare,
            touched,
        }
    }

    /// A watched transaction began on checkout `key` (nested ones only
    /// count their ending).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn transaction_began(
        &mut self,
        key: usize,
        site: &'static Location<'static>,
        now: Ticks,
    ) {
        let Some(entry) = self.outstanding.get(key) else {
            return;
        };
        if let Some(open) = self.transactions.iter_mut().find(|t| t.key == key) {
            open.depth += 1;
            return;
        }
        let idle_at_start = self
            .connections
            .activity(entry.connection)
            .map(|a| a.reading(now).totals.idle_in_transaction);
        self.transactions.push(OpenTransaction {
            key,
            since: now,
            site,
            idle_at_start,
            depth: 0,
        });
    }

    /// A watched transaction of checkout `key` ended. Returns the
    /// outermost one's record, for its event.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn transaction_ended(
        &mut self,
        key: usize,
        ending: TransactionEnding,
        now: Ticks,
    ) -> Option<TransactionEnded> {
        let entry = self.outstanding.get(key)?;
        let (origin_index, connection, id, span_id) = (
            entry.origin,
            entry.connection,
            entry.id.get(),
            entry.span_id,
        );
        let index = self.transactions.iter().position(|t| t.key == key)?;
        let outermost = self.transactions[index].depth == 0;
        // A dropped transaction queued its rollback: the connection is no
        // longer inside it for anyone after this holder, and a `?` on a
        // database error is told apart from an early return of the code's
        // own.
        let mut sqlstate = None;
        let ending = match ending {
            TransactionEnding::RolledBackByDrop => {
                let dropped = self
                    .connections
                    .activity(connection)
                    .map(|a| a.transaction_dropped(outermost, now))
                    .unwrap_or_default();
                sqlstate = dropped.sqlstate;
                if dropped.after_error {
                    TransactionEnding::RolledBackAfterError
                } else {
                    ending
                }
            }
            ending => ending,
        };
        let open = &mut self.transactions[index];
        if !outermost {
            open.depth -= 1;
            self.delta(origin_index).record_transaction(
                ending,
                Duration::ZERO,
                Duration::ZERO,
                false,
            );
            return None;
        }
        let open = self.transactions.swap_remove(index);
        let duration = open.since.until(now);
        let reading = self
            .connections
            .activity(connection)
            .map(|a| a.reading(now));
        let idle = match (&reading, open.idle_at_start) {
            (Some(r), Some(start)) => Some(
                r.totals
                    .idle_in_transaction
                    .saturating_sub(start)
                    .min(duration),
            ),
            _ => None,
        };
        self.delta(origin_index).record_transaction(
            ending,
            duration,
            idle.unwrap_or_default(),
            true,
        );
        let origin = self.origins[origin_index as usize];
        Some(TransactionEnded {
            guard: id,
            location: origin.location,
            span: origin.span(span_id),
            ending,
            site: open.site,
            duration,
            idle,
            backend_pid: reading.as_ref().and_then(|r| r.backend_pid),
            last_statement: reading.and_then(|r| r.last_statement),
            sqlstate,
        })
    }

    /// Whether this checkout of its site gets a stack under `mode`
    /// (counts the checkout for `sample:N` and `first:N`).
    #[cfg(feature = "leak-report")]
    pub(crate) fn stack_wanted(&self, key: usize, mode: StackMode) -> bool {
        let Some(entry) = self.outstanding.get(key) else {
            return false;
        };
        let counter = &self.stack_counters[entry.origin as usize];
        mode.wants(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// Attaches a stack captured outside the lock.
    #[cfg(feature = "leak-report")]
    pub(crate) fn attach_stack(&mut self, key: usize, stack: RawStack) {
        if let Some(entry) = self.outstanding.get_mut(key) {
            entry.stack = Some(stack);
        }
    }
}

/// How a pending acquire ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitEnding {
    Served,
    Failed(AcquireFailure),
    Cancelled,
}

#[cfg(feature = "leak-report")]
pub(crate) use flags::{Cutoffs, Overdue, Unreported};

/// The watchdog's side (`leak-report`): marking overdue guards during a
/// scan, confirming a flag just before it is reported.
#[cfg(feature = "leak-report")]
mod flags {
    use super::*;

    /// The instants a scan compares acquire times with, computed once per
    /// scan: a guard acquired before `at[k]` has been held past the
    /// threshold times [`Cutoffs::FACTORS`]`[k]`.
    pub(crate) struct Cutoffs {
        at: [Option<Ticks>; Cutoffs::LEVELS as usize],
    }

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
            Self { at }
        }

        /// The first cutoff: a guard acquired after it is not overdue at
        /// all (the scan's one comparison for almost every guard).
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

    /// A guard that crossed a new escalation level: what the watchdog
    /// reports once it confirms the guard is still held.
    #[derive(Clone, Debug)]
    pub(crate) struct Overdue {
        pub(crate) key: usize,
        pub(crate) id: u64,
        pub(crate) level: u8,
        /// Copied for the reporter to symbolise before it confirms.
        pub(crate) stack: Option<RawStack>,
    }

    /// What a scan marked but did not copy out, per site.
    #[derive(Debug, Default)]
    pub(crate) struct Unreported {
        pub(crate) by_site: Vec<(CallSite, u64, Ticks)>,
        /// Guards flagged for the first time (level 1), copied or not.
        pub(crate) first_flags: u64,
    }

    impl Unreported {
        pub(crate) fn total(&self) -> u64 {
            self.by_site.iter().map(|(_, n, _)| n).sum()
        }

        fn add(&mut self, site: CallSite, acquired: Ticks) {
            match self.by_site.iter_mut().find(|(s, _, _)| *s == site) {
                Some((_, n, oldest)) => {
                    *n += 1;
                    *oldest = (*oldest).min(acquired);
                }
                None => self.by_site.push((site, 1, acquired)),
            }
        }
    }

    impl ShardState {
        /// Marks every guard that crossed a new escalation level, from
        /// slab key `start` on; copies at most `budget` of them into `out`
        /// (the rest are only marked, and counted in `unreported`). Stops
        /// after `limit` keys so one lock hold stays short; returns the
        /// next key to scan (`None` when done).
        pub(crate) fn flag_overdue(
            &mut self,
            cutoffs: &Cutoffs,
            start: usize,
            limit: usize,
            budget: &mut usize,
            out: &mut Vec<Overdue>,
            unreported: &mut Unreported,
        ) -> Option<usize> {
            let Some(first) = cutoffs.first() else {
                return None; // nothing can be that old yet
            };
            // Almost no chunk holds an overdue guard: one test per chunk
            // that the compiler turns into vector compares, then the
            // chunk's keys one by one only when it does.
            const CHUNK: usize = 16;
            let end = start
                .saturating_add(limit.max(CHUNK))
                .min(self.acquired.len());
            for base in (start..end).step_by(CHUNK) {
                let chunk = &self.acquired[base..(base + CHUNK).min(end)];
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
                    let key = base + offset;
                    let level = cutoffs.level_of(acquired);
                    let Some(entry) = self.outstanding.get_mut(key) else {
                        continue;
                    };
                    if level <= entry.flagged {
                        continue;
                    }
                    if entry.flagged == 0 {
                        unreported.first_flags += 1;
                    }
                    entry.flagged = level;
                    let site = CallSite::from(self.origins[entry.origin as usize].location);
                    if *budget > 0 {
                        *budget -= 1;
                        out.push(Overdue {
                            key,
                            id: entry.id.get(),
                            level,
                            stack: entry.stack.clone(),
                        });
                    } else {
                        unreported.add(site, acquired);
                    }
                }
            }
            (end < self.acquired.len()).then_some(end)
        }

        /// Confirms a flag right before it is reported: the guard is still
        /// held (same id) and the level not reported yet. Marks it
        /// reported and returns the guard and its stack.
        pub(crate) fn confirm_flag(
            &mut self,
            key: usize,
            id: u64,
            level: u8,
            now: Ticks,
        ) -> Option<(Holder, Option<RawStack>)> {
            let entry = self.outstanding.get_mut(key)?;
            if entry.id.get() != id || level <= entry.reported {
                return None;
            }
            entry.reported = level;
            let stack = entry.stack.clone();
            let entry = &self.outstanding[key];
            Some((self.holder(key, entry, now), stack))
        }

        /// Marks every outstanding guard reported (the pool closed or its
        /// last handle went: they were never returned) and copies them.
        pub(crate) fn flag_all(&mut self, now: Ticks, out: &mut Vec<(Holder, Option<RawStack>)>) {
            for (_, entry) in self.outstanding.iter_mut() {
                entry.flagged = entry.flagged.max(1);
                entry.reported = entry.reported.max(1);
            }
            out.extend(
                self.outstanding
                    .iter()
                    .map(|(key, entry)| (self.holder(key, entry, now), entry.stack.clone())),
            );
        }
    }
}
