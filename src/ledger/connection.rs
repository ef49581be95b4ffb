//! [`ConnectionActivity`]: what one pooled connection has done, as a
//! database integration observes it on the connection itself (for
//! PostgreSQL: the protocol messages, see `src/postgres/wire/`), whatever
//! code path sent the statements.
//!
//! The integration is the only writer (from the task that drives the
//! connection); the ledger, the sampler and the readers only read. One
//! small mutex per connection: the writer takes it once per batch of
//! protocol messages, a reader once per hold, tick or view. Totals only
//! grow, so a reader takes the difference between two readings for a hold
//! or a tick.
//!
//! The vocabulary is the database's, not PostgreSQL's: a *request* is one
//! round trip the server answers with "ready" (PostgreSQL: a `Query` or a
//! `Sync` answered by `ReadyForQuery`); *busy* is time with at least one
//! request unanswered; *idle in transaction* is time inside a transaction
//! with none unanswered.

// The seam a database integration writes; without one nothing does.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

use std::any::Any;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use super::seqlock::SeqLock;
use super::ticks::Ticks;

/// The transaction state the server last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TransactionState {
    /// Nothing reported yet (the connection is still starting up).
    #[default]
    Unknown,
    /// Not in a transaction.
    Idle,
    /// Inside a transaction block.
    Open,
    /// Inside a failed transaction block (statements are refused until
    /// it ends).
    Failed,
}

impl TransactionState {
    /// Inside a transaction block, failed or not.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, TransactionState::Open | TransactionState::Failed)
    }
}

/// The activity record of one connection. Created by the integration when
/// it opens the connection; shared (`Arc`) with the ledger.
#[derive(Debug)]
pub(crate) struct ConnectionActivity {
    state: Mutex<ActivityState>,
    /// What the end of a hold reads, as the writer's last batch left it:
    /// the return path copies it out without taking `state`'s lock (an
    /// uncontended lock and unlock cost as much as the rest of the
    /// record's close).
    published: SeqLock<PUBLISHED_WORDS>,
    /// Readings taken at the last accounting points; see
    /// [`ConnectionActivity::end_hold`] and [`ConnectionActivity::tick_mark`].
    /// Written and read only by the ledger under the lock of the shard
    /// holding the connection's current hold (a hold's start follows the
    /// previous one's end through the pool's own synchronization).
    hold_mark: Mark,
    tick_mark: Mark,
    /// Keeps the allocation behind the integration's connection key from
    /// being freed (and its address reused by another connection) while
    /// this record exists; its strong count says whether the pooled object
    /// is still alive. Set once, when the connection is linked to its
    /// pooled object.
    reservation: OnceLock<Weak<dyn Any + Send + Sync>>,
}

#[derive(Debug, Default)]
struct ActivityState {
    /// The connection ended (closed, failed, or its task went away), or
    /// the integration lost track of it (`observation_lost`).
    closed: bool,
    /// The integration stopped following the connection's protocol (see
    /// [`ActivityWriter::lost`]), and why.
    observation_lost: bool,
    lost_reason: Option<&'static str>,
    /// The loss was handed to a reader to report (once per connection).
    lost_reported: bool,
    backend_pid: Option<i32>,
    /// Requests sent and not answered yet.
    in_flight: u32,
    /// When `in_flight` last went from 0 to 1.
    busy_since: Option<Ticks>,
    /// When `in_flight` last went back to 0: the last call's end.
    last_call_ended: Option<Ticks>,
    /// Busy time up to `busy_since` (or up to now, when idle), in ns.
    busy_ns: u64,
    transaction: TransactionState,
    /// When the current transaction block began (as the server reported
    /// it: the first "ready" inside it).
    transaction_since: Option<Ticks>,
    /// Since when the connection has sat inside a transaction with
    /// nothing in flight.
    idle_in_transaction_since: Option<Ticks>,
    idle_in_transaction_ns: u64,
    /// Statements sent so far.
    statements: u64,
    /// The text of the last one, as sent (sanitized only when shown).
    last_statement: Option<Arc<str>>,
    /// A dropped transaction queued its `ROLLBACK` on the client, ahead of
    /// anything a later user of the connection sends: the open transaction
    /// the server last reported is ending, and no one else will run inside
    /// it. Cleared by the server's next report of no transaction.
    rollback_queued: bool,
    /// ... and went out: it is in flight, and needs no more than its
    /// answer (a next user waits behind it for microseconds, not behind
    /// work).
    rollback_sent: bool,
    /// The oldest request in flight failed: the server reported its error
    /// and skips to its "ready", which follows with no more work. The
    /// caller has its answer, so nothing runs that a next user would wait
    /// behind.
    front_failed: bool,
    /// The SQLSTATE of an error the server reported since the transaction
    /// (or, outside one, the last statement) began; [`FAILED_UNKNOWN`] when
    /// the server said the transaction failed without the error being read.
    failed: Option<[u8; 5]>,
}

/// [`ActivityState::failed`] of a failed transaction whose error was not
/// read (it cannot be a SQLSTATE: those are digits and capitals).
const FAILED_UNKNOWN: [u8; 5] = *b"?????";

/// What a dropped transaction left: its `ROLLBACK` is queued; whether the
/// server had reported an error inside it first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DroppedTransaction {
    /// The transaction failed in the database before it was dropped: a
    /// `?` on a database error, not an early return of the code's own.
    pub(crate) after_error: bool,
    /// The error's SQLSTATE, when it was read.
    pub(crate) sqlstate: Option<[u8; 5]>,
}

impl Default for ConnectionActivity {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            published: SeqLock::new(ActivityState::default().published()),
            hold_mark: Mark::default(),
            tick_mark: Mark::default(),
            reservation: OnceLock::new(),
        }
    }
}

/// Words of [`ActivityState::published`].
const PUBLISHED_WORDS: usize = 7;
/// An absent instant in a published word.
const NO_TICKS: u64 = u64::MAX;

/// The words of [`ActivityState::published`], read in place: the end of
/// a hold decodes only what it uses.
#[derive(Clone, Copy)]
struct Published([u64; PUBLISHED_WORDS]);

impl Published {
    fn counters(&self, now: Ticks) -> Counters {
        let running = |since: u64| {
            if since == NO_TICKS {
                0
            } else {
                Ticks::from_raw(since).nanos_until(now)
            }
        };
        let w = &self.0;
        Counters {
            busy_ns: w[0].saturating_add(running(w[1])),
            idle_in_transaction_ns: w[2].saturating_add(running(w[3])),
            statements: w[4],
        }
    }

    fn in_flight(&self) -> u32 {
        self.0[5] as u32
    }

    fn transaction(&self) -> TransactionState {
        match (self.0[5] >> 32) & 0xff {
            1 => TransactionState::Idle,
            2 => TransactionState::Open,
            3 => TransactionState::Failed,
            _ => TransactionState::Unknown,
        }
    }

    /// A loss is still to be reported (which takes the lock).
    fn lost_pending(&self) -> bool {
        (self.0[5] >> 40) & 1 == 1
    }

    fn backend_pid(&self) -> Option<i32> {
        (self.0[6] >> 32 == 1).then_some(self.0[6] as u32 as i32)
    }
}

/// [`Counters`] in atomics (see [`ConnectionActivity::hold_mark`]).
#[derive(Debug, Default)]
struct Mark {
    busy_ns: AtomicU64,
    idle_in_transaction_ns: AtomicU64,
    statements: AtomicU64,
}

impl Mark {
    #[inline]
    fn load(&self) -> Counters {
        Counters {
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            idle_in_transaction_ns: self.idle_in_transaction_ns.load(Ordering::Relaxed),
            statements: self.statements.load(Ordering::Relaxed),
        }
    }

    #[inline]
    fn store(&self, counters: Counters) {
        self.busy_ns.store(counters.busy_ns, Ordering::Relaxed);
        self.idle_in_transaction_ns
            .store(counters.idle_in_transaction_ns, Ordering::Relaxed);
        self.statements
            .store(counters.statements, Ordering::Relaxed);
    }
}

/// [`Totals`] as the state keeps them, and as the end of a hold hands
/// them on: nanoseconds, summed and subtracted without `Duration`'s
/// normalization (a division) at every step of every return.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) busy_ns: u64,
    pub(crate) idle_in_transaction_ns: u64,
    pub(crate) statements: u64,
}

impl Counters {
    /// What happened between `earlier` and `self`.
    fn minus(self, earlier: Counters) -> Counters {
        Counters {
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            idle_in_transaction_ns: self
                .idle_in_transaction_ns
                .saturating_sub(earlier.idle_in_transaction_ns),
            statements: self.statements.saturating_sub(earlier.statements),
        }
    }

    /// [`Self::minus`], as [`Totals`].
    fn since(self, earlier: Counters) -> Totals {
        self.minus(earlier).totals()
    }

    pub(crate) fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns)
    }

    pub(crate) fn idle_in_transaction(&self) -> Duration {
        Duration::from_nanos(self.idle_in_transaction_ns)
    }

    pub(crate) fn totals(self) -> Totals {
        Totals {
            busy: self.busy(),
            idle_in_transaction: self.idle_in_transaction(),
            statements: self.statements,
        }
    }
}

/// The growing totals of a connection, at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) busy: Duration,
    pub(crate) idle_in_transaction: Duration,
    pub(crate) statements: u64,
}

/// What [`ConnectionActivity::end_hold`] returns: only what the end of a
/// hold needs (it runs on every return, so it copies out little).
#[derive(Clone, Debug, Default)]
pub(crate) struct HoldEnd {
    /// Since the hold began.
    pub(crate) hold: Counters,
    /// Since the last tick mark (or the hold's start, if later).
    pub(crate) tick: Counters,
    pub(crate) in_flight: u32,
    pub(crate) transaction: TransactionState,
    pub(crate) backend_pid: Option<i32>,
    /// Set only by the locked path: the last statement's text, when the
    /// hold sent statements and left the connection poisoned (a call in
    /// flight or a transaction open: the one case that reports it); why
    /// observation was lost, the first time a hold ends after the loss (so
    /// it is reported once per connection).
    pub(crate) details: Option<Box<EndingDetails>>,
}

/// The rare parts of a hold's ending, boxed where they travel (see
/// `EndedActivity::details`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EndingDetails {
    /// The hold's last statement, kept only when the ending needs it (a
    /// call in flight, an open transaction): cloning it at every return
    /// would cost more than the rest of the record.
    pub(crate) last_statement: Option<Arc<str>>,
    /// Where a watched transaction still open at return was begun.
    pub(crate) transaction_site: Option<&'static Location<'static>>,
    /// Observation of this connection was lost during the hold (reported
    /// once per connection): why.
    pub(crate) observation_lost: Option<&'static str>,
}

impl HoldEnd {
    #[cfg(test)]
    fn last_statement(&self) -> Option<&str> {
        self.details.as_ref()?.last_statement.as_deref()
    }

    #[cfg(test)]
    fn observation_lost(&self) -> Option<&'static str> {
        self.details.as_ref()?.observation_lost
    }

    /// A call still in flight or a transaction left open: the next caller
    /// must not get this connection.
    pub(crate) fn poisoned(&self) -> bool {
        self.in_flight > 0 || self.transaction.is_open()
    }
}

/// A connection's state at one instant, as plain data.
#[derive(Clone, Debug, Default)]
pub(crate) struct ActivityReading {
    pub(crate) totals: Totals,
    /// Requests sent and not answered yet.
    pub(crate) in_flight: u32,
    /// As a later user meets it: a transaction whose `ROLLBACK` is queued
    /// is over.
    pub(crate) transaction: TransactionState,
    pub(crate) transaction_since: Option<Ticks>,
    pub(crate) backend_pid: Option<i32>,
    pub(crate) closed: bool,
    pub(crate) last_statement: Option<Arc<str>>,
    /// When the last call (of any hold) ended.
    pub(crate) last_call_ended: Option<Ticks>,
}

impl ActivityState {
    fn counters(&self, now: Ticks) -> Counters {
        let running = |since: Option<Ticks>| since.map_or(0, |since| since.nanos_until(now));
        Counters {
            busy_ns: self.busy_ns.saturating_add(running(self.busy_since)),
            idle_in_transaction_ns: self
                .idle_in_transaction_ns
                .saturating_add(running(self.idle_in_transaction_since)),
            statements: self.statements,
        }
    }

    /// Requests a later user of the connection would wait behind: those in
    /// flight but one already failed (its "ready" is on its way).
    fn in_flight_for_next_user(&self) -> u32 {
        let answered = u32::from(self.front_failed) + u32::from(self.rollback_sent);
        self.in_flight.saturating_sub(answered)
    }

    /// The transaction state as a later user of the connection meets it:
    /// a transaction whose `ROLLBACK` is queued is over for them.
    fn transaction_for_next_user(&self) -> TransactionState {
        if self.rollback_queued && self.transaction.is_open() {
            TransactionState::Idle
        } else {
            self.transaction
        }
    }

    /// The fields the end of a hold needs, as words for the seqlock.
    fn published(&self) -> [u64; PUBLISHED_WORDS] {
        let ticks = |t: Option<Ticks>| t.map_or(NO_TICKS, Ticks::raw);
        let transaction = match self.transaction_for_next_user() {
            TransactionState::Unknown => 0u64,
            TransactionState::Idle => 1,
            TransactionState::Open => 2,
            TransactionState::Failed => 3,
        };
        let lost_pending = !self.lost_reported && self.lost_reason.is_some();
        [
            self.busy_ns,
            ticks(self.busy_since),
            self.idle_in_transaction_ns,
            ticks(self.idle_in_transaction_since),
            self.statements,
            u64::from(self.in_flight_for_next_user())
                | transaction << 32
                | u64::from(lost_pending) << 40,
            self.backend_pid
                .map_or(0, |pid| 1 << 32 | u64::from(pid as u32)),
        ]
    }

    fn totals(&self, now: Ticks) -> Totals {
        self.counters(now).since(Counters::default())
    }

    fn reading(&self, now: Ticks) -> ActivityReading {
        ActivityReading {
            totals: self.totals(now),
            in_flight: self.in_flight,
            transaction: self.transaction_for_next_user(),
            transaction_since: self.transaction_since,
            backend_pid: self.backend_pid,
            closed: self.closed,
            last_statement: self.last_statement.clone(),
            last_call_ended: self.last_call_ended,
        }
    }

    /// Idle-in-transaction time runs while inside a transaction with
    /// nothing in flight (and no `ROLLBACK` queued to end it).
    fn settle_idle_in_transaction(&mut self, now: Ticks) {
        let idle =
            self.transaction_for_next_user().is_open() && self.in_flight == 0 && !self.closed;
        match (idle, self.idle_in_transaction_since) {
            (true, None) => self.idle_in_transaction_since = Some(now),
            (false, Some(since)) => {
                self.idle_in_transaction_ns = self
                    .idle_in_transaction_ns
                    .saturating_add(since.nanos_until(now));
                self.idle_in_transaction_since = None;
            }
            _ => {}
        }
    }
}

/// The writer's handle: one lock for a batch of protocol messages, whose
/// result is published when the handle drops.
pub(crate) struct ActivityWriter<'a> {
    state: MutexGuard<'a, ActivityState>,
    published: &'a SeqLock<PUBLISHED_WORDS>,
}

impl Drop for ActivityWriter<'_> {
    fn drop(&mut self) {
        // Still under the lock: writes to the seqlock are serialized.
        self.published.write(self.state.published());
    }
}

impl ActivityWriter<'_> {
    /// A request went out that the server answers with one "ready".
    pub(crate) fn request_sent(&mut self, now: Ticks) {
        let state = &mut *self.state;
        if state.in_flight == 0 {
            state.busy_since = Some(now);
        }
        state.in_flight = state.in_flight.saturating_add(1);
        state.settle_idle_in_transaction(now);
    }

    /// A statement's text went out (or a prepared statement it refers to
    /// was bound). Counts the statement.
    pub(crate) fn statement(&mut self, text: Arc<str>) {
        let state = &mut *self.state;
        if state.rollback_queued && !state.rollback_sent && &*text == "ROLLBACK" {
            // The dropped transaction's own (tokio-postgres sends it so),
            // going out after its hold ended: none of the next hold's
            // statements or busy time (holds are measured between their
            // ends).
            state.rollback_sent = true;
            if state.in_flight == 1 {
                state.busy_since = None;
            }
            return;
        }
        state.statements += 1;
        state.last_statement = Some(text);
    }

    /// The server answered one request and is ready, reporting its
    /// transaction state.
    pub(crate) fn ready(&mut self, now: Ticks, transaction: TransactionState) {
        self.request_ended(now);
        self.transaction_reported(now, transaction);
    }

    /// A request reported as sent will never be answered (PostgreSQL
    /// ignores a `Sync` that arrives during `COPY FROM STDIN`): it stops
    /// counting as in flight, as if answered now, and the transaction state
    /// stays as it was.
    pub(crate) fn request_withdrawn(&mut self, now: Ticks) {
        self.request_ended(now);
        self.state.settle_idle_in_transaction(now);
    }

    /// The server reported its transaction state without answering a
    /// request of the connection's user (the "ready" that ends the
    /// connection's startup).
    pub(crate) fn transaction_reported(&mut self, now: Ticks, transaction: TransactionState) {
        let state = &mut *self.state;
        match (state.transaction.is_open(), transaction.is_open()) {
            (false, true) => state.transaction_since = Some(now),
            (true, false) => state.transaction_since = None,
            _ => {}
        }
        state.transaction = transaction;
        match transaction {
            TransactionState::Failed => {
                state.failed.get_or_insert(FAILED_UNKNOWN);
            }
            // Out of the transaction, or back in a good one (a rollback
            // to a savepoint).
            _ => state.failed = None,
        }
        if !transaction.is_open() {
            state.rollback_queued = false;
            state.rollback_sent = false;
        }
        state.settle_idle_in_transaction(now);
    }

    /// The server reported an error (SQLSTATE `sqlstate`) for a request of
    /// the connection's user.
    pub(crate) fn call_failed(&mut self, sqlstate: [u8; 5]) {
        let state = &mut *self.state;
        state.failed = Some(sqlstate);
        state.front_failed = state.in_flight > 0;
    }

    fn request_ended(&mut self, now: Ticks) {
        let state = &mut *self.state;
        state.in_flight = state.in_flight.saturating_sub(1);
        state.front_failed = false;
        if state.in_flight == 0 {
            state.last_call_ended = Some(now);
            if let Some(since) = state.busy_since.take() {
                state.busy_ns = state.busy_ns.saturating_add(since.nanos_until(now));
            }
        }
    }

    /// The server told the connection's backend process id.
    pub(crate) fn backend_pid(&mut self, pid: i32) {
        self.state.backend_pid = Some(pid);
    }

    /// The connection ended: closed, failed, or its task was dropped.
    /// Open intervals stop here.
    pub(crate) fn closed(&mut self, now: Ticks) {
        let state = &mut *self.state;
        if state.closed {
            return;
        }
        if let Some(since) = state.busy_since.take() {
            state.busy_ns = state.busy_ns.saturating_add(since.nanos_until(now));
        }
        state.closed = true;
        state.settle_idle_in_transaction(now);
    }

    /// The integration can no longer follow the connection (its protocol
    /// went somewhere it cannot read): from here on nothing is reported,
    /// so the record stops as if closed, with the transaction state
    /// unknown, and says why through
    /// [`ConnectionActivity::observation_lost`].
    pub(crate) fn lost(&mut self, now: Ticks, reason: &'static str) {
        self.closed(now);
        let state = &mut *self.state;
        state.observation_lost = true;
        state.lost_reason = Some(reason);
        state.transaction = TransactionState::Unknown;
        state.transaction_since = None;
    }
}

impl ConnectionActivity {
    /// A record for a connection being opened.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Locks the record for a batch of updates (the integration's side).
    pub(crate) fn writer(&self) -> ActivityWriter<'_> {
        ActivityWriter {
            state: self.state.lock(),
            published: &self.published,
        }
    }

    /// A watched transaction on this connection was dropped: its
    /// `ROLLBACK` (or `ROLLBACK TO SAVEPOINT`, when `outermost` is false)
    /// is queued. Says whether the transaction had failed in the database.
    pub(crate) fn transaction_dropped(&self, outermost: bool, now: Ticks) -> DroppedTransaction {
        let mut writer = self.writer();
        let state = &mut *writer.state;
        // A failed transaction always has `failed` set (see
        // `transaction_reported`).
        let failed = state.failed;
        if outermost && state.transaction.is_open() {
            state.rollback_queued = true;
            state.settle_idle_in_transaction(now);
        }
        DroppedTransaction {
            after_error: failed.is_some(),
            sqlstate: failed.filter(|code| *code != FAILED_UNKNOWN),
        }
    }

    /// The connection's state now.
    pub(crate) fn reading(&self, now: Ticks) -> ActivityReading {
        self.state.lock().reading(now)
    }

    /// Ends a hold at `now`: what the connection did since the previous
    /// hold ended (or since it opened) and since the last tick mark, and
    /// its state now. The next hold counts from here. Reads the published
    /// copy, without the lock, unless the connection is poisoned (its last
    /// statement is wanted) or a loss is still to be reported.
    #[inline]
    pub(crate) fn end_hold(&self, now: Ticks) -> HoldEnd {
        let Some(published) = self.published.try_read().map(Published) else {
            return self.end_hold_locked(now);
        };
        if published.lost_pending() {
            return self.end_hold_locked(now);
        }
        let totals = published.counters(now);
        let end = self.hold_end(
            totals,
            published.in_flight(),
            published.transaction(),
            published.backend_pid(),
        );
        if end.poisoned() && end.hold.statements > 0 {
            return self.end_hold_locked(now);
        }
        self.move_marks(totals);
        end
    }

    /// [`Self::end_hold`] under the lock: for the last statement's text and
    /// the loss report, which the published copy does not carry.
    #[cold]
    fn end_hold_locked(&self, now: Ticks) -> HoldEnd {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let totals = state.counters(now);
        let mut end = self.hold_end(
            totals,
            state.in_flight_for_next_user(),
            state.transaction_for_next_user(),
            state.backend_pid,
        );
        self.move_marks(totals);
        if end.poisoned() && end.hold.statements > 0 {
            end.details.get_or_insert_default().last_statement = state.last_statement.clone();
        }
        if !state.lost_reported && state.lost_reason.is_some() {
            state.lost_reported = true;
            end.details.get_or_insert_default().observation_lost = state.lost_reason;
            self.published.write(state.published());
        }
        end
    }

    /// The end of a hold whose connection's `totals` are these now: the
    /// hold's and the tick's part of them (the marks move to `totals`
    /// once the caller keeps this end).
    #[inline]
    fn hold_end(
        &self,
        totals: Counters,
        in_flight: u32,
        transaction: TransactionState,
        backend_pid: Option<i32>,
    ) -> HoldEnd {
        HoldEnd {
            hold: totals.minus(self.hold_mark.load()),
            tick: totals.minus(self.tick_mark.load()),
            in_flight,
            transaction,
            backend_pid,
            details: None,
        }
    }

    /// The next hold and tick count from `totals`.
    #[inline]
    fn move_marks(&self, totals: Counters) {
        self.hold_mark.store(totals);
        self.tick_mark.store(totals);
    }

    /// What the current hold has done so far, without ending it.
    pub(crate) fn hold_so_far(&self, now: Ticks) -> (Totals, ActivityReading) {
        let state = self.state.lock();
        let reading = state.reading(now);
        (state.counters(now).since(self.hold_mark.load()), reading)
    }

    /// Ends a tick at `now` for the hold in progress: what the connection
    /// did since the previous tick mark (or the hold's start).
    pub(crate) fn tick_mark(&self, now: Ticks) -> Totals {
        let counters = self.state.lock().counters(now);
        let during = counters.since(self.tick_mark.load());
        self.tick_mark.store(counters);
        during
    }

    /// Whether the record stopped because the integration could no longer
    /// follow the connection rather than because it ended: its readings
    /// are then incomplete from that moment on (`closed` is set too).
    pub(crate) fn observation_lost(&self) -> bool {
        self.state.lock().observation_lost
    }

    /// Whether the connection ended (or observation was lost): the cheap
    /// form of `reading(now).closed`.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Links the record to the pooled object it belongs to; see
    /// [`ConnectionActivity::reservation`]. The first call wins.
    pub(crate) fn reserve(&self, alive: Weak<dyn Any + Send + Sync>) {
        let _ = self.reservation.set(alive);
    }

    /// Whether the pooled object this record belongs to still exists
    /// (`true` before it is linked).
    pub(crate) fn object_alive(&self) -> bool {
        self.reservation
            .get()
            .is_none_or(|alive| alive.strong_count() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn at(start: Instant, ms: u64) -> Ticks {
        Ticks::of(start + Duration::from_millis(ms))
    }

    /// A connection whose `BEGIN` went out at 0 and was answered at 1.
    fn in_transaction(start: Instant) -> Arc<ConnectionActivity> {
        let activity = ConnectionActivity::new();
        let mut w = activity.writer();
        w.request_sent(at(start, 0));
        w.ready(at(start, 1), TransactionState::Open);
        drop(w);
        activity
    }

    #[test]
    fn busy_counts_overlapping_requests_once() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 0));
            w.request_sent(at(start, 5));
            w.ready(at(start, 10), TransactionState::Idle);
            w.ready(at(start, 20), TransactionState::Idle);
        }
        let reading = activity.reading(at(start, 100));
        assert_eq!(reading.totals.busy, Duration::from_millis(20));
        assert_eq!(reading.in_flight, 0);
        // A request in flight counts up to the reading.
        activity.writer().request_sent(at(start, 100));
        let reading = activity.reading(at(start, 130));
        assert_eq!(reading.totals.busy, Duration::from_millis(50));
        assert_eq!(reading.in_flight, 1);
    }

    #[test]
    fn a_dropped_transactions_queued_rollback_ends_it_for_the_next_user() {
        Ticks::init();
        let start = Instant::now();
        let activity = in_transaction(start);
        // A nested savepoint's drop leaves the outer transaction open.
        let nested = activity.transaction_dropped(false, at(start, 5));
        assert_eq!(nested, DroppedTransaction::default());
        assert!(activity.end_hold(at(start, 6)).poisoned());
        let dropped = activity.transaction_dropped(true, at(start, 10));
        assert!(!dropped.after_error);
        // At return: not inside a transaction for whoever comes next, and
        // no longer idle in one.
        let end = activity.end_hold(at(start, 20));
        assert!(!end.poisoned(), "{:?}", end.transaction);
        let reading = activity.reading(at(start, 40));
        assert_eq!(reading.totals.idle_in_transaction, Duration::from_millis(9));
        // The ROLLBACK goes out during the next hold, which does nothing
        // itself: no call in flight for it, no statement, no busy time.
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 50));
            w.statement(Arc::from("ROLLBACK"));
        }
        let end = activity.end_hold(at(start, 52));
        assert!(!end.poisoned());
        assert_eq!((end.hold.statements, end.hold.busy_ns), (0, 0));
        // Answered: an ordinary idle connection.
        activity
            .writer()
            .ready(at(start, 53), TransactionState::Idle);
        assert_eq!(activity.end_hold(at(start, 54)).hold.busy_ns, 0);
        // The next transaction is watched afresh.
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 60));
            w.ready(at(start, 61), TransactionState::Open);
        }
        assert!(activity.end_hold(at(start, 70)).poisoned());
    }

    #[test]
    fn a_failed_request_awaiting_its_ready_is_no_call_in_flight() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 0));
            w.call_failed(*b"23505"); // the caller has its error
        }
        let end = activity.end_hold(at(start, 1));
        assert_eq!(end.in_flight, 0);
        assert!(!end.poisoned());
        // Behind a pipelined request that is still running, it is one.
        {
            let mut w = activity.writer();
            w.ready(at(start, 2), TransactionState::Idle);
            w.request_sent(at(start, 3));
            w.request_sent(at(start, 3));
            w.call_failed(*b"23505");
        }
        assert_eq!(activity.end_hold(at(start, 4)).in_flight, 1);
        activity
            .writer()
            .ready(at(start, 5), TransactionState::Idle);
        assert_eq!(activity.end_hold(at(start, 6)).in_flight, 1);
    }

    #[test]
    fn a_transaction_dropped_after_a_database_error_says_which() {
        Ticks::init();
        let start = Instant::now();
        let activity = in_transaction(start);
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 2)); // UPDATE: lock timeout
            w.call_failed(*b"55P03");
        }
        // Dropped on the error, before its "ready" was read.
        let dropped = activity.transaction_dropped(true, at(start, 3));
        assert_eq!(
            dropped,
            DroppedTransaction {
                after_error: true,
                sqlstate: Some(*b"55P03")
            }
        );
        // A failed transaction whose error was not read, and one that
        // recovered through a savepoint.
        let activity = ConnectionActivity::new();
        activity
            .writer()
            .transaction_reported(at(start, 0), TransactionState::Failed);
        let dropped = activity.transaction_dropped(true, at(start, 1));
        assert_eq!((dropped.after_error, dropped.sqlstate), (true, None));
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 0));
            w.call_failed(*b"23505");
            w.ready(at(start, 1), TransactionState::Failed);
            w.request_sent(at(start, 2)); // ROLLBACK TO SAVEPOINT
            w.ready(at(start, 3), TransactionState::Open);
        }
        assert!(!activity.transaction_dropped(true, at(start, 4)).after_error);
    }

    #[test]
    fn idle_in_transaction_runs_between_requests_inside_a_transaction() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 0)); // BEGIN
            w.ready(at(start, 1), TransactionState::Open);
            w.request_sent(at(start, 101)); // UPDATE, 100 ms later
            w.ready(at(start, 103), TransactionState::Open);
        }
        let reading = activity.reading(at(start, 203));
        assert_eq!(
            reading.totals.idle_in_transaction,
            Duration::from_millis(200)
        );
        assert_eq!(reading.transaction, TransactionState::Open);
        assert_eq!(reading.transaction_since, Some(at(start, 1)));
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 203)); // COMMIT
            w.ready(at(start, 204), TransactionState::Idle);
        }
        let reading = activity.reading(at(start, 500));
        assert_eq!(
            reading.totals.idle_in_transaction,
            Duration::from_millis(200)
        );
        assert_eq!(reading.transaction_since, None);
    }

    #[test]
    fn holds_and_ticks_take_differences() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 0));
            w.statement(Arc::from("SELECT 1"));
            w.ready(at(start, 10), TransactionState::Idle);
        }
        assert_eq!(
            activity.tick_mark(at(start, 15)).busy,
            Duration::from_millis(10)
        );
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 20));
            w.ready(at(start, 25), TransactionState::Idle);
        }
        let end = activity.end_hold(at(start, 30));
        assert_eq!(end.hold.busy(), Duration::from_millis(15));
        assert_eq!(end.tick.busy(), Duration::from_millis(5));
        assert_eq!(end.hold.statements, 1);
        // Returned clean: the text is not copied out.
        assert_eq!(end.last_statement(), None);
        // The next hold starts from zero.
        let (next, _) = activity.hold_so_far(at(start, 40));
        assert_eq!(next, Totals::default());
    }

    /// The end of a hold reads the published copy; it agrees with the
    /// locked state in every case, and the cases the copy does not carry
    /// (the last statement of a poisoned hold, a loss) still come out.
    #[test]
    fn hold_ends_agree_with_the_locked_state() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.backend_pid(4242);
            w.transaction_reported(at(start, 0), TransactionState::Idle);
        }
        // A transaction left open, a call still in flight.
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 10));
            w.statement(Arc::from("BEGIN"));
            w.ready(at(start, 12), TransactionState::Open);
            w.request_sent(at(start, 20));
            w.statement(Arc::from("UPDATE t SET v = 1"));
        }
        let end = activity.end_hold(at(start, 30));
        assert!(end.poisoned());
        assert_eq!(
            (end.in_flight, end.transaction),
            (1, TransactionState::Open)
        );
        assert_eq!(end.backend_pid, Some(4242));
        assert_eq!(end.hold.statements, 2);
        assert_eq!(end.hold.busy(), Duration::from_millis(12));
        assert_eq!(end.hold.idle_in_transaction(), Duration::from_millis(8));
        assert_eq!(end.last_statement(), Some("UPDATE t SET v = 1"));
        // A clean hold after it, read from the copy: only its own part.
        {
            let mut w = activity.writer();
            w.ready(at(start, 40), TransactionState::Idle);
        }
        let end = activity.end_hold(at(start, 50));
        assert!(!end.poisoned());
        assert_eq!(end.hold.busy(), Duration::from_millis(10));
        assert_eq!(end.hold.statements, 0);
        assert_eq!(end.last_statement(), None);
        // A loss is reported with the first hold end after it, once.
        activity.writer().lost(at(start, 60), "a test");
        assert_eq!(
            activity.end_hold(at(start, 70)).observation_lost(),
            Some("a test")
        );
        assert_eq!(activity.end_hold(at(start, 80)).observation_lost(), None);
    }

    #[test]
    fn a_withdrawn_request_stops_counting_and_keeps_the_state() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.transaction_reported(at(start, 0), TransactionState::Open);
            w.request_sent(at(start, 10));
            w.request_sent(at(start, 10));
            w.request_withdrawn(at(start, 10));
            w.ready(at(start, 30), TransactionState::Open);
        }
        let reading = activity.reading(at(start, 40));
        assert_eq!(reading.in_flight, 0);
        assert_eq!(reading.totals.busy, Duration::from_millis(20));
        assert_eq!(reading.transaction, TransactionState::Open);
        assert_eq!(reading.transaction_since, Some(at(start, 0)));
        // Idle in transaction: 0..10 and 30..40.
        assert_eq!(
            reading.totals.idle_in_transaction,
            Duration::from_millis(20)
        );
    }

    #[test]
    fn a_state_report_answers_no_request() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 0));
            w.transaction_reported(at(start, 5), TransactionState::Idle);
        }
        let reading = activity.reading(at(start, 10));
        assert_eq!(reading.in_flight, 1);
        assert_eq!(reading.transaction, TransactionState::Idle);
        assert_eq!(reading.totals.busy, Duration::from_millis(10));
    }

    #[test]
    fn lost_observation_stops_the_clocks_and_forgets_the_state() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.transaction_reported(at(start, 0), TransactionState::Open);
            w.request_sent(at(start, 0));
            w.lost(at(start, 5), "a test");
        }
        let reading = activity.reading(at(start, 100));
        assert!(reading.closed);
        assert!(activity.is_closed());
        assert!(activity.observation_lost());
        assert_eq!(reading.transaction, TransactionState::Unknown);
        assert_eq!(reading.transaction_since, None);
        assert_eq!(reading.totals.busy, Duration::from_millis(5));
    }

    #[test]
    fn closing_stops_the_clocks() {
        Ticks::init();
        let start = Instant::now();
        let activity = ConnectionActivity::new();
        {
            let mut w = activity.writer();
            w.request_sent(at(start, 0));
            w.closed(at(start, 7));
        }
        let reading = activity.reading(at(start, 100));
        assert!(reading.closed);
        assert_eq!(reading.totals.busy, Duration::from_millis(7));
    }
}
