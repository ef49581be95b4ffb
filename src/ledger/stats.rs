//! Statistics, as plain data: what a shard records per origin between two
//! drains ([`SiteDelta`]), and the mergeable parts the archive keeps
//! ([`Counts`], [`Usage`], [`Distributions`]).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::outcome::{AcquireFailure, FailureCounts, Outcome, OutcomeCounts};
use crate::site::CallSite;

/// Two significant figures (under 1 % error) with auto-resize: a histogram
/// starts at a few kilobytes and grows only to the largest value seen.
const SIGNIFICANT_FIGURES: u8 = 2;

/// What statistics are kept by: a call site (or the overflow bucket) and
/// the name of the span it was reached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StatsKey {
    pub(crate) site: CallSite,
    pub(crate) span: Option<&'static str>,
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGNIFICANT_FIGURES).expect("2 significant figures is a valid histogram")
}

/// Latencies are recorded in microseconds. `record` grows an auto-resizing
/// histogram (`saturating_record` would clamp to its current range); the
/// clamp is only a fallback for values past what any histogram can hold.
#[inline]
fn record(h: &mut Histogram<u64>, d: Duration) {
    // u64 arithmetic (`as_micros` is u128); saturates after 584 000 years.
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    record_micros(h, micros);
}

/// [`record`] of a duration in nanoseconds.
#[inline]
fn record_nanos(h: &mut Histogram<u64>, nanos: u64) {
    record_micros(h, nanos / 1_000);
}

#[inline]
fn record_micros(h: &mut Histogram<u64>, micros: u64) {
    if h.record(micros).is_err() {
        h.saturating_record(micros);
    }
}

/// What the holds did in the database, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DatabaseCounts {
    /// Ended holds whose connection was observed.
    pub(crate) observed_holds: u64,
    pub(crate) busy_total: Duration,
    pub(crate) idle_in_transaction_total: Duration,
    pub(crate) statements: u64,
    pub(crate) open_transaction_at_return: u64,
    pub(crate) in_flight_at_return: u64,
    /// Of those, holds whose acquire had waited (a request deadline that
    /// the wait used up, then cut the call).
    pub(crate) in_flight_after_wait: u64,
    pub(crate) committed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) rolled_back_by_drop: u64,
    /// Dropped after the database failed them (a `?` on a database error):
    /// rolled back as they should be, no error path of the code's own.
    pub(crate) rolled_back_after_error: u64,
    /// Time inside watched transactions (outermost), and the idle part.
    pub(crate) transaction_total: Duration,
    pub(crate) transaction_idle_total: Duration,
}

impl DatabaseCounts {
    pub(crate) fn merge(&mut self, other: &DatabaseCounts) {
        self.observed_holds += other.observed_holds;
        self.busy_total += other.busy_total;
        self.idle_in_transaction_total += other.idle_in_transaction_total;
        self.statements += other.statements;
        self.open_transaction_at_return += other.open_transaction_at_return;
        self.in_flight_at_return += other.in_flight_at_return;
        self.in_flight_after_wait += other.in_flight_after_wait;
        self.committed += other.committed;
        self.rolled_back += other.rolled_back;
        self.rolled_back_by_drop += other.rolled_back_by_drop;
        self.rolled_back_after_error += other.rolled_back_after_error;
        self.transaction_total += other.transaction_total;
        self.transaction_idle_total += other.transaction_idle_total;
    }
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
pub(crate) enum TransactionEnding {
    Committed,
    RolledBack,
    /// Dropped without commit or rollback: the `?` early-return path.
    RolledBackByDrop,
    /// Dropped after a statement in it failed in the database: the `?` on
    /// that error, the transaction's normal end.
    RolledBackAfterError,
}

impl TransactionEnding {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TransactionEnding::Committed => "committed",
            TransactionEnding::RolledBack => "rolled_back",
            TransactionEnding::RolledBackByDrop => "rolled_back_by_drop",
            TransactionEnding::RolledBackAfterError => "rolled_back_after_error",
        }
    }
}

/// Counters of one key: everything but distributions and connection time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) checkouts: u64,
    /// Holds that ended, and their time added up.
    pub(crate) holds: u64,
    pub(crate) hold_total: Duration,
    pub(crate) longest_hold: Duration,
    pub(crate) outcomes: OutcomeCounts,
    pub(crate) failures: FailureCounts,
    /// Acquires given up by their caller (the future dropped while it
    /// waited), and how long they had waited.
    pub(crate) cancelled: u64,
    pub(crate) cancelled_wait: Duration,
    /// Acquires that waited at all, and the longest wait.
    pub(crate) waits: u64,
    pub(crate) longest_wait: Duration,
    /// Checkouts requested while the same task already held a guard of
    /// the pool (self-deadlock risk).
    pub(crate) nested: u64,
    /// Holds that ended while their task waited for a second connection,
    /// or after such waits took at least half of the hold.
    pub(crate) holds_across_nested_wait: u64,
    pub(crate) database: DatabaseCounts,
}

impl Counts {
    pub(crate) fn merge(&mut self, other: &Counts) {
        self.checkouts += other.checkouts;
        self.holds += other.holds;
        self.hold_total += other.hold_total;
        self.longest_hold = self.longest_hold.max(other.longest_hold);
        self.outcomes.merge(&other.outcomes);
        self.failures.merge(&other.failures);
        self.cancelled += other.cancelled;
        self.cancelled_wait += other.cancelled_wait;
        self.waits += other.waits;
        self.longest_wait = self.longest_wait.max(other.longest_wait);
        self.nested += other.nested;
        self.holds_across_nested_wait += other.holds_across_nested_wait;
        self.database.merge(&other.database);
    }

    /// Holds that ended on an error or cleanup path.
    pub(crate) fn error_paths(&self) -> u64 {
        self.outcomes.dropped_while_panicking
            + self.database.rolled_back_by_drop
            + self.database.open_transaction_at_return
            + self.database.in_flight_at_return
    }
}

/// Connection time by what the holder was doing, and the time callers
/// spent waiting: the attribution of a tick, a window or an episode.
/// `held` = `busy` + `idle_in_transaction` + `outside` + `unobserved`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Connection time held.
    pub(crate) held: Duration,
    /// Of that, with a database call in flight.
    pub(crate) busy: Duration,
    /// Inside a transaction with no call in flight.
    pub(crate) idle_in_transaction: Duration,
    /// On a connection nobody observes (not a pool poolwatch built), so
    /// not known to be either.
    pub(crate) unobserved: Duration,
    /// Time callers waited for a connection.
    pub(crate) waited: Duration,
    /// Checkouts opened in the ticks this covers: a share of this time
    /// per checkout is taken over these, not over a window's all (whose
    /// calm checkouts would dilute a saturated usage).
    pub(crate) checkouts: u64,
}

impl Usage {
    pub(crate) fn merge(&mut self, other: &Usage) {
        self.held += other.held;
        self.busy += other.busy;
        self.idle_in_transaction += other.idle_in_transaction;
        self.unobserved += other.unobserved;
        self.waited += other.waited;
        self.checkouts += other.checkouts;
    }

    /// Held outside any database call and outside a transaction (known
    /// only for observed connections).
    pub(crate) fn outside(&self) -> Duration {
        self.held
            .saturating_sub(self.busy)
            .saturating_sub(self.idle_in_transaction)
            .saturating_sub(self.unobserved)
    }

    /// Connection time held in states that are not database work.
    pub(crate) fn not_database_work(&self) -> Duration {
        self.idle_in_transaction + self.outside()
    }

    /// Adds one hold's share of a tick. `busy` and `idle` are clamped to
    /// what was held (readings of two clocks can disagree by a hair).
    pub(crate) fn add_hold(&mut self, held: Duration, observed: Option<(Duration, Duration)>) {
        self.held += held;
        match observed {
            Some((busy, idle)) => {
                let busy = busy.min(held);
                self.busy += busy;
                self.idle_in_transaction += idle.min(held - busy);
            }
            None => self.unobserved += held,
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// Wait and hold distributions.
#[derive(Clone, Debug)]
pub(crate) struct Distributions {
    /// Acquires that completed without waiting: counted here and added to
    /// `wait` only when read, since most checkouts on a healthy pool are
    /// these and a counter is cheaper than a histogram record.
    pub(crate) zero_waits: u64,
    pub(crate) wait: Histogram<u64>,
    pub(crate) hold: Histogram<u64>,
}

impl Default for Distributions {
    fn default() -> Self {
        Self {
            zero_waits: 0,
            wait: new_histogram(),
            hold: new_histogram(),
        }
    }
}

impl Distributions {
    pub(crate) fn merge(&mut self, other: &Distributions) {
        self.zero_waits += other.zero_waits;
        // Both are auto-resizing, so adding cannot fail for lack of range.
        let _ = self.wait.add(&other.wait);
        let _ = self.hold.add(&other.hold);
    }

    pub(crate) fn reset(&mut self) {
        self.zero_waits = 0;
        self.wait.reset();
        self.hold.reset();
    }
}

/// What the returns of one origin added up since the last drain, in
/// nanoseconds: a return adds integers here where `Duration` arithmetic
/// would normalize (a division) at every step. [`SiteDelta::settle`] moves
/// them into the delta's `counts` and `usage` before anything reads those.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unsettled {
    hold_total: u64,
    longest_hold: u64,
    held: u64,
    busy: u64,
    idle_in_transaction: u64,
    unobserved: u64,
    database_busy: u64,
    database_idle_in_transaction: u64,
}

/// What one shard recorded for one origin since the last drain. The hot
/// path writes here; a drain swaps the whole vector out.
#[derive(Clone, Debug)]
pub(crate) struct SiteDelta {
    pub(crate) key: StatsKey,
    /// Anything recorded since the last reset (untouched deltas are
    /// skipped by the merge).
    pub(crate) touched: bool,
    pub(crate) counts: Counts,
    /// Connection time of holds that ended (or waits that ended) in this
    /// tick, for their part inside the tick.
    pub(crate) usage: Usage,
    pub(crate) dist: Distributions,
    /// The returns' sums not yet in `counts` and `usage`.
    unsettled: Unsettled,
}

impl SiteDelta {
    pub(crate) fn new(key: StatsKey) -> Self {
        Self {
            key,
            touched: false,
            counts: Counts::default(),
            usage: Usage::default(),
            dist: Distributions::default(),
            unsettled: Unsettled::default(),
        }
    }

    pub(crate) fn reset(&mut self) {
        if self.touched {
            self.touched = false;
            self.counts = Counts::default();
            self.usage = Usage::default();
            self.dist.reset();
            self.unsettled = Unsettled::default();
        }
    }

    /// Moves the returns' nanosecond sums into `counts` and `usage`: done
    /// by the drain, so every reader of a delta sees them there.
    pub(crate) fn settle(&mut self) {
        let sums = std::mem::take(&mut self.unsettled);
        if sums == Unsettled::default() {
            return;
        }
        let d = Duration::from_nanos;
        let counts = &mut self.counts;
        counts.hold_total += d(sums.hold_total);
        counts.longest_hold = counts.longest_hold.max(d(sums.longest_hold));
        counts.database.busy_total += d(sums.database_busy);
        counts.database.idle_in_transaction_total += d(sums.database_idle_in_transaction);
        let usage = &mut self.usage;
        usage.held += d(sums.held);
        usage.busy += d(sums.busy);
        usage.idle_in_transaction += d(sums.idle_in_transaction);
        usage.unobserved += d(sums.unobserved);
    }

    #[inline]
    pub(crate) fn record_checkout(&mut self, waited: Duration) {
        self.touched = true;
        self.counts.checkouts += 1;
        if waited.is_zero() {
            self.dist.zero_waits += 1;
        } else {
            self.record_wait(waited);
        }
    }

    fn record_wait(&mut self, waited: Duration) {
        record(&mut self.dist.wait, waited);
        self.counts.waits += 1;
        self.counts.longest_wait = self.counts.longest_wait.max(waited);
    }

    /// An acquire that waited ended (served, failed or cancelled): its
    /// part inside the current tick.
    pub(crate) fn record_waited_in_tick(&mut self, in_tick: Duration) {
        self.touched = true;
        self.usage.waited += in_tick;
    }

    pub(crate) fn record_failure(&mut self, waited: Duration, failure: AcquireFailure) {
        self.touched = true;
        self.counts.failures.add(failure);
        self.record_wait(waited);
    }

    pub(crate) fn record_cancelled(&mut self, waited: Duration) {
        self.touched = true;
        self.counts.cancelled += 1;
        self.counts.cancelled_wait += waited;
        self.record_wait(waited);
    }

    pub(crate) fn record_nested(&mut self) {
        self.touched = true;
        self.counts.nested += 1;
    }

    /// A hold of `held_ns` ended with `outcome`.
    #[inline]
    pub(crate) fn record_close(&mut self, held_ns: u64, outcome: Outcome) {
        self.touched = true;
        self.counts.outcomes.add(outcome);
        self.counts.holds += 1;
        let sums = &mut self.unsettled;
        sums.hold_total = sums.hold_total.saturating_add(held_ns);
        sums.longest_hold = sums.longest_hold.max(held_ns);
        record_nanos(&mut self.dist.hold, held_ns);
    }

    /// The part inside this tick (`in_tick_ns`) of a hold that ended, and
    /// what its connection did in that part when observed (busy and idle in
    /// transaction), clamped like [`Usage::add_hold`].
    #[inline]
    pub(crate) fn add_closed_hold(&mut self, in_tick_ns: u64, observed: Option<(u64, u64)>) {
        let sums = &mut self.unsettled;
        sums.held = sums.held.saturating_add(in_tick_ns);
        match observed {
            Some((busy, idle)) => {
                let busy = busy.min(in_tick_ns);
                sums.busy = sums.busy.saturating_add(busy);
                let idle = idle.min(in_tick_ns - busy);
                sums.idle_in_transaction = sums.idle_in_transaction.saturating_add(idle);
            }
            None => sums.unobserved = sums.unobserved.saturating_add(in_tick_ns),
        }
    }

    /// What an observed hold did in the database, in nanoseconds.
    #[inline]
    pub(crate) fn add_database_time(&mut self, busy_ns: u64, idle_in_transaction_ns: u64) {
        let sums = &mut self.unsettled;
        sums.database_busy = sums.database_busy.saturating_add(busy_ns);
        sums.database_idle_in_transaction = sums
            .database_idle_in_transaction
            .saturating_add(idle_in_transaction_ns);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn record_transaction(
        &mut self,
        ending: TransactionEnding,
        total: Duration,
        idle: Duration,
        outermost: bool,
    ) {
        self.touched = true;
        let db = &mut self.counts.database;
        match ending {
            TransactionEnding::Committed => db.committed += 1,
            TransactionEnding::RolledBack => db.rolled_back += 1,
            TransactionEnding::RolledBackByDrop => db.rolled_back_by_drop += 1,
            TransactionEnding::RolledBackAfterError => db.rolled_back_after_error += 1,
        }
        if outermost {
            db.transaction_total += total;
            db.transaction_idle_total += idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StatsKey {
        StatsKey {
            site: CallSite::OVERFLOW,
            span: None,
        }
    }

    /// What returns add up in nanoseconds comes out of `settle` as the
    /// Durations readers see, clamped as `Usage::add_hold` clamps.
    #[test]
    fn returns_settle_into_counts_and_usage() {
        let mut delta = SiteDelta::new(key());
        let ms = |n: u64| n * 1_000_000;
        delta.record_close(ms(30), Outcome::Returned);
        delta.add_closed_hold(ms(30), Some((ms(10), ms(5))));
        delta.add_database_time(ms(10), ms(5));
        delta.record_close(ms(50), Outcome::Returned);
        // The readings of two clocks disagree by a hair: clamped to the hold.
        delta.add_closed_hold(ms(20), Some((ms(25), ms(3))));
        delta.add_database_time(ms(25), ms(3));
        delta.record_close(ms(7), Outcome::Returned);
        delta.add_closed_hold(ms(7), None);
        delta.settle();

        let d = Duration::from_millis;
        assert_eq!(delta.counts.holds, 3);
        assert_eq!(delta.counts.hold_total, d(87));
        assert_eq!(delta.counts.longest_hold, d(50));
        assert_eq!(delta.counts.database.busy_total, d(35));
        assert_eq!(delta.counts.database.idle_in_transaction_total, d(8));
        let mut expected = Usage::default();
        expected.add_hold(d(30), Some((d(10), d(5))));
        expected.add_hold(d(20), Some((d(25), d(3))));
        expected.add_hold(d(7), None);
        assert_eq!(delta.usage, expected);
        assert_eq!(delta.dist.hold.len(), 3);
        let hold = &delta.dist.hold;
        assert!(hold.equivalent(hold.max(), 50_000), "in microseconds");

        // Settling again adds nothing; a reset forgets the sums too.
        delta.settle();
        assert_eq!(delta.counts.hold_total, d(87));
        delta.record_close(ms(1), Outcome::Returned);
        delta.reset();
        delta.settle();
        assert_eq!(delta.counts.hold_total, Duration::ZERO);
    }
}
