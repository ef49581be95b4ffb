//! The diagnosis: walks the debugging order for you and says whether the
//! pool suffers from a **leak**, a **long hold** or **concurrency growth**
//! (or is healthy), naming the call sites and spans that carry the evidence.
//!
//! [`WatchedPool::report`](crate::WatchedPool::report) builds a [`Report`]
//! from the ledger and the pressure timeline. It prints as an aligned table
//! (`Display`), serialises to JSON (feature `serde`) and draws the timeline
//! as SVG ([`Report::timeline_svg`]).
//!
//! # The rules
//!
//! More than one verdict can apply; each names its sites/spans and numbers.
//!
//! **Leak** — connections borrowed and not given back, or given back by an
//! error path:
//! * a guard is still out past the hold threshold (it may yet come back:
//!   the report lists it under *flagged*; the watchdog of the
//!   `leak-report` feature flags it while held);
//! * holds ended on an error path: dropped while panicking, transaction
//!   rolled back by drop, transaction left open at return, call in flight
//!   at drop;
//! * in the timeline, connections in use grew by at least a quarter of the
//!   pool (and at least one) from the first third of the window to the last
//!   while the checkout rate did not grow by more than a quarter.
//!
//! **Long hold** — connections come back, but late:
//! * a call site's p99 hold is at or past the hold threshold; or
//! * its mean hold is at least 50 ms and under half of it was spent in the
//!   database (busy ratio < 0.5, known for `postgres` pools used through
//!   the instrumented methods); or
//! * its transactions were idle (no call in flight) more than half of their
//!   open time, over at least 100 ms in all;
//! * a span (request handler or job) holding more than half of all
//!   connection time with a p99 hold past the threshold is named too.
//!
//! **Concurrency growth** — holds are short, demand is high: no long-hold
//! evidence, waiters were seen (in the timeline, a timeout, or a p99 wait of
//! 10 ms or more), and Little's law at the busiest tick — checkout rate ×
//! mean hold time — reaches 80 % of the pool's maximum size. Growing the
//! pool (or smoothing the demand) is the fix; fixing code is not.
//!
//! **Healthy** — none of the above.

mod render;
mod svg;
mod verdict;

use std::time::Duration;

use crate::snapshot::{PoolSnapshot, PoolStatus, SiteSnapshot};
use crate::timeline::PressureSample;

pub use verdict::{Evidence, Verdict, VerdictKind};

/// Busy share of the hold; unknown (`None`) when no database call was
/// timed, i.e. the pool is not a postgres pool used through the
/// instrumented methods.
fn busy_ratio(busy: Duration, held: Duration) -> Option<f64> {
    (!busy.is_zero() && !held.is_zero()).then(|| (busy.as_secs_f64() / held.as_secs_f64()).min(1.0))
}

/// Milliseconds as `f64`, the unit of durations in reports.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The diagnosis of one pool. See the [module docs](self) for the rules.
///
/// ```no_run
/// # async fn demo(pool: poolwatch::postgres::Pool) {
/// let report = pool.report();
/// println!("{report}");
/// for verdict in &report.verdicts {
///     println!("{:?}: {}", verdict.kind, verdict.reason);
/// }
/// std::fs::write("pool.svg", report.timeline_svg()).unwrap();
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Report {
    /// The pool's name.
    pub pool: String,
    /// The hold threshold the verdicts used, in milliseconds.
    pub hold_threshold_ms: f64,
    /// deadpool's status when the report was made.
    pub status: PoolStatus,
    /// A summary of the timeline.
    pub pressure: Pressure,
    /// The pressure timeline, oldest sample first.
    pub timeline: Vec<PressureSample>,
    /// What is wrong, with evidence; `Healthy` alone when nothing is.
    pub verdicts: Vec<Verdict>,
    /// Call sites, most connection time held first.
    pub sites: Vec<SiteLine>,
    /// Tracing spans (request handlers, jobs), most connection time first.
    pub spans: Vec<SpanLine>,
    /// Guards held right now past the hold threshold, longest first.
    pub flagged: Vec<FlaggedGuard>,
}

/// The pressure timeline, summarised.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Pressure {
    /// Samples in the timeline.
    pub samples: usize,
    /// Seconds the timeline covers.
    pub window_secs: f64,
    /// The pool's maximum size (latest sample, or status).
    pub max_size: usize,
    /// Most connections in use at one sample.
    pub peak_in_use: usize,
    /// Mean connections in use.
    pub mean_in_use: f64,
    /// Most callers waiting at one sample.
    pub peak_waiting: usize,
    /// Share of samples with every connection in use.
    pub saturated_share: f64,
    /// Mean checkouts per second over the window.
    pub mean_checkout_rate: f64,
    /// Checkouts per second at the busiest sample.
    pub peak_checkout_rate: f64,
    /// Mean hold time of ended holds, in milliseconds.
    pub mean_hold_ms: f64,
    /// Little's law at the busiest sample: connections the demand needs
    /// (peak checkout rate × mean hold).
    pub peak_demand: f64,
}

/// One call site's line in the report.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SiteLine {
    /// `file:line:column`.
    pub site: String,
    /// Successful acquires.
    pub checkouts: u64,
    /// Held right now.
    pub outstanding: u64,
    /// Connection time held by ended holds, in seconds.
    pub connection_secs: f64,
    /// Mean hold, in milliseconds.
    pub hold_mean_ms: f64,
    /// Median hold, in milliseconds.
    pub hold_p50_ms: f64,
    /// 99th percentile hold, in milliseconds.
    pub hold_p99_ms: f64,
    /// Longest hold, in milliseconds.
    pub hold_max_ms: f64,
    /// 99th percentile wait, in milliseconds.
    pub wait_p99_ms: f64,
    /// Failed acquires that timed out.
    pub timeouts: u64,
    /// Share of the hold spent in database calls, when measured.
    pub busy_ratio: Option<f64>,
    /// Time inside transactions, in milliseconds.
    pub transaction_ms: f64,
    /// Of that, idle (no call in flight), in milliseconds.
    pub transaction_idle_ms: f64,
    /// Error-path endings, by kind.
    pub error_paths: ErrorPaths,
}

/// Holds that ended on an error or cleanup path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ErrorPaths {
    /// Dropped while the thread was panicking.
    pub panicked: u64,
    /// Transactions rolled back by `Drop` (a `?` early return).
    pub rolled_back_by_drop: u64,
    /// Returned with a transaction still open.
    pub open_transaction_at_return: u64,
    /// Dropped with a database call in flight.
    pub in_flight_at_drop: u64,
}

impl ErrorPaths {
    /// All error-path endings.
    pub fn total(&self) -> u64 {
        self.panicked
            + self.rolled_back_by_drop
            + self.open_transaction_at_return
            + self.in_flight_at_drop
    }
}

/// One tracing span's line: request handler vs background job.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SpanLine {
    /// The span's name (`(none)` for checkouts outside any span).
    pub span: String,
    /// Successful acquires.
    pub checkouts: u64,
    /// Held right now.
    pub outstanding: u64,
    /// Connection time held by ended holds, in seconds.
    pub connection_secs: f64,
    /// 99th percentile hold, in milliseconds.
    pub hold_p99_ms: f64,
    /// Longest hold, in milliseconds.
    pub hold_max_ms: f64,
    /// Share of the hold spent in database calls, when measured.
    pub busy_ratio: Option<f64>,
}

/// A guard held right now past the hold threshold.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct FlaggedGuard {
    /// The guard's id.
    pub guard: u64,
    /// Where it was acquired.
    pub site: String,
    /// The span it was acquired in.
    pub span: Option<String>,
    /// Held so far, in milliseconds.
    pub held_ms: f64,
}

impl SiteLine {
    fn from_snapshot(s: &SiteSnapshot) -> Self {
        SiteLine {
            site: s.site.to_string(),
            checkouts: s.checkouts,
            outstanding: s.outstanding,
            connection_secs: s.hold_total.as_secs_f64(),
            hold_mean_ms: ms(s.hold.mean),
            hold_p50_ms: ms(s.hold.p50),
            hold_p99_ms: ms(s.hold.p99),
            hold_max_ms: ms(s.hold.max),
            wait_p99_ms: ms(s.wait.p99),
            timeouts: s.failures.timeouts,
            busy_ratio: busy_ratio(s.database.busy_total, s.hold_total),
            transaction_ms: ms(s.database.transaction_total),
            transaction_idle_ms: ms(s.database.transaction_idle_total),
            error_paths: ErrorPaths {
                panicked: s.outcomes.dropped_while_panicking,
                rolled_back_by_drop: s.database.rolled_back_by_drop,
                open_transaction_at_return: s.database.open_transaction_at_return,
                in_flight_at_drop: s.database.in_flight_at_drop,
            },
        }
    }
}

impl Report {
    /// Builds the report from a snapshot and the timeline.
    pub(crate) fn build(
        snapshot: &PoolSnapshot,
        timeline: Vec<PressureSample>,
        hold_threshold: Duration,
    ) -> Report {
        let sites: Vec<SiteLine> = snapshot.sites.iter().map(SiteLine::from_snapshot).collect();
        let spans = snapshot.spans.iter().map(SpanLine::from_snapshot).collect();
        let flagged = snapshot
            .outstanding
            .iter()
            .filter(|g| g.held >= hold_threshold)
            .map(|g| FlaggedGuard {
                guard: g.id,
                site: g.site.to_string(),
                span: g.span.map(|s| s.name.to_owned()),
                held_ms: ms(g.held),
            })
            .collect();
        let pressure = Pressure::summarize(&timeline, snapshot, &sites);
        let mut report = Report {
            pool: snapshot.pool.clone(),
            hold_threshold_ms: ms(hold_threshold),
            status: snapshot.status,
            pressure,
            timeline,
            verdicts: Vec::new(),
            sites,
            spans,
            flagged,
        };
        report.verdicts = verdict::diagnose(&report);
        report
    }

    /// The verdict kinds, in the order found.
    pub fn kinds(&self) -> Vec<VerdictKind> {
        self.verdicts.iter().map(|v| v.kind).collect()
    }

    /// The pressure timeline as a self-contained SVG picture: connections in
    /// use, idle and waiting over time, against the pool's maximum size.
    pub fn timeline_svg(&self) -> String {
        svg::timeline(&self.pool, &self.timeline)
    }
}

impl SpanLine {
    fn from_snapshot(s: &crate::snapshot::SpanSnapshot) -> Self {
        SpanLine {
            span: s.span.unwrap_or("(none)").to_owned(),
            checkouts: s.checkouts,
            outstanding: s.outstanding,
            connection_secs: s.hold_total.as_secs_f64(),
            hold_p99_ms: ms(s.hold.p99),
            hold_max_ms: ms(s.hold.max),
            busy_ratio: busy_ratio(s.database.busy_total, s.hold_total),
        }
    }
}

impl Pressure {
    fn summarize(timeline: &[PressureSample], snapshot: &PoolSnapshot, sites: &[SiteLine]) -> Self {
        let held_secs: f64 = sites.iter().map(|s| s.connection_secs).sum();
        let holds: u64 = snapshot.sites.iter().map(|s| s.hold.count).sum();
        let mean_hold_ms = if holds == 0 {
            0.0
        } else {
            held_secs * 1000.0 / holds as f64
        };
        let n = timeline.len();
        let max_size = timeline
            .last()
            .map_or(snapshot.status.max_size, |s| s.max_size);
        let window_ms: u64 = timeline.iter().map(|s| s.interval_ms).sum();
        let checkouts: u64 = timeline.iter().map(|s| s.checkouts).sum();
        let peak_checkout_rate = timeline
            .iter()
            .map(PressureSample::checkout_rate)
            .fold(0.0, f64::max);
        Pressure {
            samples: n,
            window_secs: window_ms as f64 / 1000.0,
            max_size,
            peak_in_use: timeline.iter().map(|s| s.in_use).max().unwrap_or(0),
            mean_in_use: if n == 0 {
                0.0
            } else {
                timeline.iter().map(|s| s.in_use as f64).sum::<f64>() / n as f64
            },
            peak_waiting: timeline.iter().map(|s| s.waiting).max().unwrap_or(0),
            saturated_share: if n == 0 {
                0.0
            } else {
                timeline
                    .iter()
                    .filter(|s| s.max_size > 0 && s.in_use >= s.max_size)
                    .count() as f64
                    / n as f64
            },
            mean_checkout_rate: if window_ms == 0 {
                0.0
            } else {
                checkouts as f64 * 1000.0 / window_ms as f64
            },
            peak_checkout_rate,
            mean_hold_ms,
            peak_demand: peak_checkout_rate * mean_hold_ms / 1000.0,
        }
    }
}
