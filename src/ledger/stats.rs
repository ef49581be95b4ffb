//! Per-call-site statistics kept in each shard and merged on read.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::activity::{ActivitySummary, TransactionEnded, TransactionEnding};
use crate::outcome::{AcquireFailure, FailureCounts, Outcome, OutcomeCounts};
use crate::site::CallSite;
use crate::snapshot::{DatabaseStats, LatencySummary, SiteSnapshot, SpanSnapshot};

/// Two significant figures (under 1 % error) with auto-resize: a histogram
/// starts at a few kilobytes and grows only to the largest value seen.
const SIGNIFICANT_FIGURES: u8 = 2;

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
    if h.record(micros).is_err() {
        h.saturating_record(micros);
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGNIFICANT_FIGURES).expect("2 significant figures is a valid histogram")
}

/// Statistics of one call site within one shard.
#[derive(Clone, Debug)]
pub(crate) struct SiteStats {
    pub(crate) site: CallSite,
    /// The span name the checkouts were made in.
    pub(crate) span: Option<&'static str>,
    pub(crate) checkouts: u64,
    /// Acquires that completed without waiting: counted here and added to
    /// `wait` only when read, since most checkouts on a healthy pool are
    /// these and a counter is cheaper than a histogram record.
    pub(crate) zero_waits: u64,
    pub(crate) wait: Histogram<u64>,
    pub(crate) hold: Histogram<u64>,
    pub(crate) hold_total: Duration,
    pub(crate) outcomes: OutcomeCounts,
    pub(crate) failures: FailureCounts,
    pub(crate) database: DatabaseStats,
    /// Opt-in per-site metric handles.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::export::SiteMetrics>,
}

impl SiteStats {
    pub(crate) fn new(
        site: CallSite,
        span: Option<&'static str>,
        #[cfg(feature = "metrics")] metrics: Option<crate::export::SiteMetrics>,
    ) -> Self {
        Self {
            site,
            span,
            checkouts: 0,
            zero_waits: 0,
            wait: new_histogram(),
            hold: new_histogram(),
            hold_total: Duration::ZERO,
            outcomes: OutcomeCounts::default(),
            failures: FailureCounts::default(),
            database: DatabaseStats::default(),
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    #[inline]
    pub(crate) fn record_checkout(&mut self, waited: Duration) {
        self.checkouts += 1;
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.wait_time.record(waited.as_secs_f64());
        }
        if waited.is_zero() {
            self.zero_waits += 1;
        } else {
            record(&mut self.wait, waited);
        }
    }

    pub(crate) fn record_failure(&mut self, waited: Duration, failure: AcquireFailure) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.wait_time.record(waited.as_secs_f64());
        }
        self.failures.add(failure);
        record(&mut self.wait, waited);
    }

    #[inline]
    pub(crate) fn record_close(&mut self, held: Duration, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.use_time.record(held.as_secs_f64());
        }
        self.outcomes.add(outcome);
        record(&mut self.hold, held);
        self.hold_total += held;
    }

    pub(crate) fn record_activity(&mut self, activity: &ActivitySummary) {
        let db = &mut self.database;
        db.busy_total += activity.busy;
        db.open_transaction_at_return += u64::from(activity.open_transaction);
        db.in_flight_at_drop += u64::from(activity.in_flight);
    }

    pub(crate) fn record_transaction(&mut self, ended: &TransactionEnded) {
        self.record_savepoint(ended.ending);
        self.database.transaction_total += ended.duration;
        self.database.transaction_idle_total += ended.idle;
    }

    pub(crate) fn record_savepoint(&mut self, ending: TransactionEnding) {
        let db = &mut self.database;
        match ending {
            TransactionEnding::Committed => db.committed += 1,
            TransactionEnding::RolledBack => db.rolled_back += 1,
            TransactionEnding::RolledBackByDrop => db.rolled_back_by_drop += 1,
        }
    }

    pub(crate) fn record_unreported_open_transaction(&mut self) {
        self.database.open_transaction_at_return += 1;
    }

    /// Adds another shard's statistics of the same site.
    pub(crate) fn merge(&mut self, other: &SiteStats) {
        self.checkouts += other.checkouts;
        self.zero_waits += other.zero_waits;
        // Both are auto-resizing, so adding cannot fail for lack of range.
        let _ = self.wait.add(&other.wait);
        let _ = self.hold.add(&other.hold);
        self.hold_total += other.hold_total;
        self.outcomes.merge(&other.outcomes);
        self.failures.merge(&other.failures);
        self.database.merge(&other.database);
    }

    /// The wait histogram with the zero waits added back in.
    fn full_wait(&self) -> Histogram<u64> {
        let mut wait = self.wait.clone();
        if self.zero_waits > 0 {
            let _ = wait.record_n(0, self.zero_waits);
        }
        wait
    }

    pub(crate) fn to_span_snapshot(&self, outstanding: u64) -> SpanSnapshot {
        SpanSnapshot {
            span: self.span,
            checkouts: self.checkouts,
            outstanding,
            wait: summarize(&self.full_wait()),
            hold: summarize(&self.hold),
            hold_total: self.hold_total,
            outcomes: self.outcomes,
            database: self.database,
        }
    }

    pub(crate) fn to_snapshot(&self, outstanding: u64) -> SiteSnapshot {
        let wait = self.full_wait();
        SiteSnapshot {
            site: self.site,
            checkouts: self.checkouts,
            outstanding,
            wait: summarize(&wait),
            hold: summarize(&self.hold),
            hold_total: self.hold_total,
            outcomes: self.outcomes,
            failures: self.failures,
            database: self.database,
        }
    }
}

fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let at = |q: f64| Duration::from_micros(h.value_at_quantile(q));
    LatencySummary {
        count: h.len(),
        mean: Duration::from_secs_f64(h.mean() / 1e6),
        p50: at(0.5),
        p99: at(0.99),
        max: Duration::from_micros(h.max()),
    }
}
