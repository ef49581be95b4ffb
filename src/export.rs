//! Metrics export through the [`metrics`] facade, with OpenTelemetry
//! semantic-convention names, so any Prometheus or OTel backend aggregates
//! the pools of many service instances.
//!
//! | name | kind | unit | labels |
//! |---|---|---|---|
//! | `db.client.connection.count` | gauge | connections | `db.client.connection.state` = `idle` \| `used` |
//! | `db.client.connection.max` | gauge | connections | |
//! | `db.client.connection.pending_requests` | gauge | requests | |
//! | `db.client.connection.timeouts` | counter | timeouts | |
//! | `db.client.connection.wait_time` | histogram | seconds | |
//! | `db.client.connection.use_time` | histogram | seconds | |
//! | `poolwatch.acquire.failures` | counter | failures | `poolwatch.failure` = `timeout` \| `closed` \| `backend` \| `no_runtime` |
//! | `poolwatch.acquire.cancelled` | counter | acquires | (futures dropped while waiting) |
//! | `poolwatch.acquire.nested` | counter | acquires | (waited while the same task held a guard) |
//! | `poolwatch.acquire.oldest_wait` | gauge | seconds | (the longest a caller has been waiting right now; pgbouncer's `maxwait`) |
//! | `poolwatch.hold.endings` | counter | holds | `poolwatch.outcome` = `returned` \| `dropped_while_panicking` \| `detached` \| `untracked` |
//! | `poolwatch.hold.past_threshold` | counter | holds | |
//! | `poolwatch.hold.error_paths` | counter | holds | `poolwatch.error_path` = `dropped_while_panicking` \| `rolled_back_by_drop` \| `open_transaction_at_return` \| `in_flight_at_drop` |
//! | `poolwatch.hold.busy_time` | histogram | seconds | (holds on observed connections) |
//! | `poolwatch.leaks.flagged` | counter | guards | (`leak-report`: guards flagged while held, first flag only) |
//! | `poolwatch.leaks.returned_after_flagged` | counter | guards | (`leak-report`) |
//! | `poolwatch.leaks.never_returned` | counter | guards | (`leak-report`: still out at close or drop) |
//!
//! Every metric carries `db.client.connection.pool.name`. There is no
//! per-call-site label unless [`WatchConfig::metrics_site_labels`](crate::WatchConfig::metrics_site_labels)
//! asks for one: then `poolwatch.site.wait_time` and `poolwatch.site.use_time`
//! (seconds) carry a `code.site` label (`file:line:column`) for at most that
//! many call sites, as separate names so that summing the pool-wide series
//! never double counts. Cardinality is what a metrics backend pays for.
//!
//! Handles are registered with the recorder installed when the pool is
//! wrapped: install your recorder (e.g. `metrics-exporter-prometheus`)
//! before creating the pool.
//!
//! metrics-exporter-prometheus renders a histogram as a *summary*
//! (quantiles that cannot be aggregated across instances) unless buckets
//! are set; set them for the `*_time` histograms
//! (`PrometheusBuilder::set_buckets_for_metric`), as `examples/service.rs`
//! does.
//!
//! Gauges are refreshed by the sampler at every tick (each second by
//! default), at a failed acquire, and on demand with
//! [`WatchedPool::record_metrics`](crate::WatchedPool::record_metrics)
//! (call it before rendering a scrape). Not per checkout: reading
//! deadpool's status takes its slot lock.
//!
//! Without the `metrics` feature this module is private and its handles do
//! nothing, so the code that records needs no `cfg` at every call.

// Without `metrics` the names below are the no-op handles' unused
// vocabulary; keeping them compiled keeps both builds in step.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::time::Duration;

use crate::outcome::{AcquireFailure, Outcome};
use crate::snapshot::PoolStatus;

/// Attribute on every metric.
pub const POOL_NAME: &str = "db.client.connection.pool.name";
/// Connections, by state.
pub const CONNECTION_COUNT: &str = "db.client.connection.count";
/// Attribute of [`CONNECTION_COUNT`].
pub const CONNECTION_STATE: &str = "db.client.connection.state";
/// The pool's maximum size.
pub const CONNECTION_MAX: &str = "db.client.connection.max";
/// Callers waiting for a connection.
pub const PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
/// Acquires that timed out.
pub const TIMEOUTS: &str = "db.client.connection.timeouts";
/// Time to acquire a connection, in seconds.
pub const WAIT_TIME: &str = "db.client.connection.wait_time";
/// Time a connection was held, in seconds.
pub const USE_TIME: &str = "db.client.connection.use_time";
/// Failed acquires, by kind.
pub const ACQUIRE_FAILURES: &str = "poolwatch.acquire.failures";
/// Acquires cancelled by their caller while waiting.
pub const ACQUIRES_CANCELLED: &str = "poolwatch.acquire.cancelled";
/// Acquires that had to wait while their task held a guard of the pool.
pub const NESTED_CHECKOUTS: &str = "poolwatch.acquire.nested";
/// How long the longest-waiting caller has waited so far, in seconds.
pub const OLDEST_WAIT: &str = "poolwatch.acquire.oldest_wait";
/// How holds ended, by outcome (error-path drops among them).
pub const HOLD_ENDINGS: &str = "poolwatch.hold.endings";
/// Holds that ended past the hold threshold.
pub const HOLDS_PAST_THRESHOLD: &str = "poolwatch.hold.past_threshold";
/// Error-path endings, by kind.
pub const ERROR_PATHS: &str = "poolwatch.hold.error_paths";
/// Time inside database calls per hold, in seconds.
pub const BUSY_TIME: &str = "poolwatch.hold.busy_time";
/// Guards flagged by the watchdog while held.
pub const LEAKS_FLAGGED: &str = "poolwatch.leaks.flagged";
/// Flagged guards that came back.
pub const RETURNED_AFTER_FLAGGED: &str = "poolwatch.leaks.returned_after_flagged";
/// Guards still held when their pool closed or was dropped.
pub const NEVER_RETURNED: &str = "poolwatch.leaks.never_returned";

/// The opt-in per-site label.
pub const SITE: &str = "code.site";
/// Opt-in per-site wait time, in seconds.
pub const SITE_WAIT_TIME: &str = "poolwatch.site.wait_time";
/// Opt-in per-site hold time, in seconds.
pub const SITE_USE_TIME: &str = "poolwatch.site.use_time";

/// The kinds of [`ERROR_PATHS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorPath {
    DroppedWhilePanicking,
    RolledBackByDrop,
    OpenTransactionAtReturn,
    InFlightAtDrop,
}

impl ErrorPath {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    const ALL: [ErrorPath; 4] = [
        ErrorPath::DroppedWhilePanicking,
        ErrorPath::RolledBackByDrop,
        ErrorPath::OpenTransactionAtReturn,
        ErrorPath::InFlightAtDrop,
    ];

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            ErrorPath::DroppedWhilePanicking => "dropped_while_panicking",
            ErrorPath::RolledBackByDrop => "rolled_back_by_drop",
            ErrorPath::OpenTransactionAtReturn => "open_transaction_at_return",
            ErrorPath::InFlightAtDrop => "in_flight_at_drop",
        }
    }
}

/// One ended hold, as the metrics see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HoldEnded {
    /// The site's rank among the sites that get a label (`None`: none).
    pub(crate) site_rank: Option<u32>,
    pub(crate) held: Duration,
    pub(crate) outcome: Outcome,
    pub(crate) past_threshold: bool,
    pub(crate) busy: Option<Duration>,
    pub(crate) in_flight: bool,
    pub(crate) open_transaction: bool,
    pub(crate) flagged: bool,
}

#[cfg(feature = "metrics")]
pub(crate) use real::PoolMetrics;

#[cfg(not(feature = "metrics"))]
pub(crate) use noop::PoolMetrics;

#[cfg(feature = "metrics")]
mod real {
    use std::sync::OnceLock;

    use metrics::{Counter, Gauge, Histogram, Unit};

    use super::*;
    use crate::site::CallSite;

    fn describe() {
        metrics::describe_gauge!(
            CONNECTION_COUNT,
            Unit::Count,
            "Connections open in the pool, by state (idle, used)"
        );
        metrics::describe_gauge!(CONNECTION_MAX, Unit::Count, "The pool's maximum size");
        metrics::describe_gauge!(
            PENDING_REQUESTS,
            Unit::Count,
            "Callers waiting for a connection"
        );
        metrics::describe_counter!(TIMEOUTS, Unit::Count, "Acquires that timed out");
        metrics::describe_histogram!(
            WAIT_TIME,
            Unit::Seconds,
            "Time it took to obtain a connection"
        );
        metrics::describe_histogram!(
            USE_TIME,
            Unit::Seconds,
            "Time between borrowing a connection and returning it"
        );
        metrics::describe_histogram!(
            SITE_WAIT_TIME,
            Unit::Seconds,
            "Wait time per call site (opt-in)"
        );
        metrics::describe_histogram!(
            SITE_USE_TIME,
            Unit::Seconds,
            "Hold time per call site (opt-in)"
        );
        metrics::describe_counter!(ACQUIRE_FAILURES, Unit::Count, "Failed acquires by kind");
        metrics::describe_counter!(
            ACQUIRES_CANCELLED,
            Unit::Count,
            "Acquires cancelled by their caller while waiting"
        );
        metrics::describe_counter!(
            NESTED_CHECKOUTS,
            Unit::Count,
            "Acquires that waited while their task held a connection of the same pool"
        );
        metrics::describe_gauge!(
            OLDEST_WAIT,
            Unit::Seconds,
            "How long the longest-waiting caller has been waiting"
        );
        metrics::describe_counter!(HOLD_ENDINGS, Unit::Count, "How holds ended");
        metrics::describe_counter!(
            ERROR_PATHS,
            Unit::Count,
            "Holds that ended on an error path, by kind"
        );
        metrics::describe_histogram!(
            BUSY_TIME,
            Unit::Seconds,
            "Time inside database calls per hold"
        );
        metrics::describe_counter!(
            LEAKS_FLAGGED,
            Unit::Count,
            "Guards flagged while held past the threshold"
        );
        metrics::describe_counter!(
            RETURNED_AFTER_FLAGGED,
            Unit::Count,
            "Flagged guards that were returned"
        );
        metrics::describe_counter!(
            NEVER_RETURNED,
            Unit::Count,
            "Guards still held when the pool closed or was dropped"
        );
        metrics::describe_counter!(
            HOLDS_PAST_THRESHOLD,
            Unit::Count,
            "Holds that ended past the hold threshold"
        );
    }

    const FAILURES: [AcquireFailure; 4] = [
        AcquireFailure::Timeout,
        AcquireFailure::Closed,
        AcquireFailure::Backend,
        AcquireFailure::NoRuntime,
    ];

    const OUTCOMES: [Outcome; 4] = [
        Outcome::Returned,
        Outcome::DroppedWhilePanicking,
        Outcome::Detached,
        Outcome::Untracked,
    ];

    /// One pool's metric handles, registered once.
    pub(crate) struct PoolMetrics {
        pool_name: String,
        idle: Gauge,
        used: Gauge,
        max: Gauge,
        pending: Gauge,
        oldest_wait: Gauge,
        timeouts: Counter,
        wait_time: Histogram,
        use_time: Histogram,
        past_threshold: Counter,
        failures: [Counter; 4],
        cancelled: Counter,
        nested: Counter,
        endings: [Counter; 4],
        error_paths: [Counter; 4],
        busy_time: Histogram,
        #[cfg_attr(not(feature = "leak-report"), allow(dead_code))] // recorded by the watchdog
        leaks_flagged: Counter,
        returned_after_flagged: Counter,
        #[cfg_attr(not(feature = "leak-report"), allow(dead_code))] // recorded by the watchdog
        never_returned: Counter,
        /// The opt-in per-site histograms, by site rank: registered on
        /// first use, read without a lock.
        sites: Box<[OnceLock<SiteMetrics>]>,
    }

    /// The opt-in per-call-site histograms of one site.
    struct SiteMetrics {
        wait_time: Histogram,
        use_time: Histogram,
    }

    impl PoolMetrics {
        pub(crate) fn new(pool_name: &str, site_labels: usize) -> Self {
            describe();
            let name = pool_name.to_owned();
            let count = |state: &'static str| metrics::gauge!(CONNECTION_COUNT, POOL_NAME => name.clone(), CONNECTION_STATE => state);
            Self {
                idle: count("idle"),
                used: count("used"),
                max: metrics::gauge!(CONNECTION_MAX, POOL_NAME => name.clone()),
                pending: metrics::gauge!(PENDING_REQUESTS, POOL_NAME => name.clone()),
                oldest_wait: metrics::gauge!(OLDEST_WAIT, POOL_NAME => name.clone()),
                timeouts: metrics::counter!(TIMEOUTS, POOL_NAME => name.clone()),
                wait_time: metrics::histogram!(WAIT_TIME, POOL_NAME => name.clone()),
                use_time: metrics::histogram!(USE_TIME, POOL_NAME => name.clone()),
                past_threshold: metrics::counter!(HOLDS_PAST_THRESHOLD, POOL_NAME => name.clone()),
                failures: FAILURES.map(|f| {
                    metrics::counter!(ACQUIRE_FAILURES, POOL_NAME => name.clone(), "poolwatch.failure" => f.as_str())
                }),
                cancelled: metrics::counter!(ACQUIRES_CANCELLED, POOL_NAME => name.clone()),
                nested: metrics::counter!(NESTED_CHECKOUTS, POOL_NAME => name.clone()),
                endings: OUTCOMES.map(|o| {
                    metrics::counter!(HOLD_ENDINGS, POOL_NAME => name.clone(), "poolwatch.outcome" => o.as_str())
                }),
                error_paths: ErrorPath::ALL.map(|kind| {
                    metrics::counter!(ERROR_PATHS, POOL_NAME => name.clone(), "poolwatch.error_path" => kind.as_str())
                }),
                busy_time: metrics::histogram!(BUSY_TIME, POOL_NAME => name.clone()),
                leaks_flagged: metrics::counter!(LEAKS_FLAGGED, POOL_NAME => name.clone()),
                returned_after_flagged: metrics::counter!(RETURNED_AFTER_FLAGGED, POOL_NAME => name.clone()),
                never_returned: metrics::counter!(NEVER_RETURNED, POOL_NAME => name.clone()),
                sites: (0..site_labels).map(|_| OnceLock::new()).collect(),
                pool_name: name,
            }
        }

        /// Whether the `rank`-th site admitted gets a label.
        pub(crate) fn labels_site(&self, rank: Option<u32>) -> Option<u32> {
            rank.filter(|&r| (r as usize) < self.sites.len())
        }

        fn site(&self, rank: u32, site: impl FnOnce() -> CallSite) -> Option<&SiteMetrics> {
            let slot = self.sites.get(rank as usize)?;
            Some(slot.get_or_init(|| {
                let label = site().to_string();
                let name = self.pool_name.clone();
                SiteMetrics {
                    wait_time: metrics::histogram!(SITE_WAIT_TIME, POOL_NAME => name.clone(), SITE => label.clone()),
                    use_time: metrics::histogram!(SITE_USE_TIME, POOL_NAME => name, SITE => label),
                }
            }))
        }

        pub(crate) fn set_status(&self, status: PoolStatus) {
            self.idle.set(status.available as f64);
            self.used.set(status.in_use() as f64);
            self.max.set(status.max_size as f64);
            self.pending.set(status.waiting as f64);
        }

        pub(crate) fn set_oldest_wait(&self, oldest: Duration) {
            self.oldest_wait.set(oldest.as_secs_f64());
        }

        #[inline]
        pub(crate) fn checked_out(
            &self,
            waited: Duration,
            site_rank: Option<u32>,
            site: impl FnOnce() -> CallSite,
        ) {
            self.wait_time.record(waited.as_secs_f64());
            if let Some(rank) = site_rank {
                if let Some(m) = self.site(rank, site) {
                    m.wait_time.record(waited.as_secs_f64());
                }
            }
        }

        pub(crate) fn failed(&self, failure: AcquireFailure, waited: Duration) {
            self.wait_time.record(waited.as_secs_f64());
            self.failures[FAILURES.iter().position(|f| *f == failure).unwrap_or(0)].increment(1);
            if failure == AcquireFailure::Timeout {
                self.timeouts.increment(1);
            }
        }

        pub(crate) fn cancelled(&self, waited: Duration) {
            self.wait_time.record(waited.as_secs_f64());
            self.cancelled.increment(1);
        }

        pub(crate) fn nested(&self) {
            self.nested.increment(1);
        }

        #[inline]
        pub(crate) fn closed(&self, hold: &HoldEnded, site: impl FnOnce() -> CallSite) {
            self.use_time.record(hold.held.as_secs_f64());
            self.endings[OUTCOMES
                .iter()
                .position(|o| *o == hold.outcome)
                .unwrap_or(0)]
            .increment(1);
            if let Some(rank) = hold.site_rank {
                if let Some(m) = self.site(rank, site) {
                    m.use_time.record(hold.held.as_secs_f64());
                }
            }
            if hold.past_threshold {
                self.past_threshold.increment(1);
            }
            if hold.outcome == Outcome::DroppedWhilePanicking {
                self.error_path(ErrorPath::DroppedWhilePanicking);
            }
            if let Some(busy) = hold.busy {
                self.busy_time.record(busy.as_secs_f64());
            }
            if hold.in_flight {
                self.error_path(ErrorPath::InFlightAtDrop);
            }
            if hold.open_transaction {
                self.error_path(ErrorPath::OpenTransactionAtReturn);
            }
            if hold.flagged {
                self.returned_after_flagged.increment(1);
            }
        }

        pub(crate) fn error_path(&self, kind: ErrorPath) {
            let index = ErrorPath::ALL.iter().position(|k| *k == kind).unwrap_or(0);
            self.error_paths[index].increment(1);
        }

        #[cfg_attr(not(feature = "leak-report"), allow(dead_code))] // recorded by the watchdog
        /// The watchdog flagged a guard for the first time.
        pub(crate) fn flagged(&self) {
            self.leaks_flagged.increment(1);
        }

        #[cfg_attr(not(feature = "leak-report"), allow(dead_code))] // recorded by the watchdog
        /// A guard was still out when its pool closed or was dropped.
        pub(crate) fn never_returned(&self) {
            self.never_returned.increment(1);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod noop {
    use super::*;
    use crate::site::CallSite;

    /// Without the `metrics` feature: handles that record nothing and cost
    /// nothing.
    pub(crate) struct PoolMetrics;

    #[allow(clippy::unused_self)]
    impl PoolMetrics {
        pub(crate) fn new(_pool_name: &str, _site_labels: usize) -> Self {
            PoolMetrics
        }
        #[inline(always)]
        pub(crate) fn labels_site(&self, _rank: Option<u32>) -> Option<u32> {
            None
        }
        #[inline(always)]
        pub(crate) fn set_status(&self, _status: PoolStatus) {}
        #[inline(always)]
        pub(crate) fn set_oldest_wait(&self, _oldest: Duration) {}
        #[inline(always)]
        pub(crate) fn checked_out(
            &self,
            _waited: Duration,
            _rank: Option<u32>,
            _site: impl FnOnce() -> CallSite,
        ) {
        }
        #[inline(always)]
        pub(crate) fn failed(&self, _failure: AcquireFailure, _waited: Duration) {}
        #[inline(always)]
        pub(crate) fn cancelled(&self, _waited: Duration) {}
        #[inline(always)]
        pub(crate) fn nested(&self) {}
        #[inline(always)]
        pub(crate) fn closed(&self, _hold: &HoldEnded, _site: impl FnOnce() -> CallSite) {}
        #[inline(always)]
        pub(crate) fn error_path(&self, _kind: ErrorPath) {}
        #[inline(always)]
        #[allow(dead_code)] // leak-report only
        pub(crate) fn flagged(&self) {}
        #[inline(always)]
        #[allow(dead_code)] // leak-report only
        pub(crate) fn never_returned(&self) {}
    }
}
