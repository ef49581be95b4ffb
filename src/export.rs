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
//! | `poolwatch.hold.endings` | counter | holds | `poolwatch.outcome` = `returned` \| `dropped_while_panicking` \| `detached` \| `untracked` |
//! | `poolwatch.hold.past_threshold` | counter | holds | |
//! | `poolwatch.hold.error_paths` | counter | holds | `poolwatch.error_path` = `dropped_while_panicking` \| `rolled_back_by_drop` \| `open_transaction_at_return` \| `in_flight_at_drop` |
//! | `poolwatch.hold.busy_time` | histogram | seconds | (holds that made an instrumented database call) |
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
//! before calling [`WatchedPool::new`](crate::WatchedPool::new).
//!
//! Gauges are refreshed from deadpool's status at every checkout, return
//! and failed acquire, and on demand with
//! [`WatchedPool::record_metrics`](crate::WatchedPool::record_metrics) (call
//! it before rendering a scrape so `pending_requests` is current).

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::ledger::Closed;
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::CallSite;
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

/// One pool's metric handles, registered once.
pub(crate) struct PoolMetrics {
    pool_name: String,
    idle: Gauge,
    used: Gauge,
    max: Gauge,
    pending: Gauge,
    timeouts: Counter,
    wait_time: Histogram,
    use_time: Histogram,
    past_threshold: Counter,
    failures: [Counter; 4],
    endings: [Counter; 4],
    error_paths: [Counter; 4],
    busy_time: Histogram,
    leaks_flagged: Counter,
    #[cfg_attr(not(feature = "leak-report"), allow(dead_code))]
    returned_after_flagged: Counter,
    never_returned: Counter,
    site_labels: usize,
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

/// The kinds of [`ERROR_PATHS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorPath {
    DroppedWhilePanicking,
    RolledBackByDrop,
    OpenTransactionAtReturn,
    InFlightAtDrop,
}

impl ErrorPath {
    fn as_str(self) -> &'static str {
        match self {
            ErrorPath::DroppedWhilePanicking => "dropped_while_panicking",
            ErrorPath::RolledBackByDrop => "rolled_back_by_drop",
            ErrorPath::OpenTransactionAtReturn => "open_transaction_at_return",
            ErrorPath::InFlightAtDrop => "in_flight_at_drop",
        }
    }
}

const ERROR_PATH_KINDS: [ErrorPath; 4] = [
    ErrorPath::DroppedWhilePanicking,
    ErrorPath::RolledBackByDrop,
    ErrorPath::OpenTransactionAtReturn,
    ErrorPath::InFlightAtDrop,
];

fn failure_index(failure: AcquireFailure) -> usize {
    FAILURES.iter().position(|f| *f == failure).unwrap_or(0)
}

fn outcome_index(outcome: Outcome) -> usize {
    OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0)
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
            timeouts: metrics::counter!(TIMEOUTS, POOL_NAME => name.clone()),
            wait_time: metrics::histogram!(WAIT_TIME, POOL_NAME => name.clone()),
            use_time: metrics::histogram!(USE_TIME, POOL_NAME => name.clone()),
            past_threshold: metrics::counter!(HOLDS_PAST_THRESHOLD, POOL_NAME => name.clone()),
            failures: FAILURES.map(|f| {
                metrics::counter!(ACQUIRE_FAILURES, POOL_NAME => name.clone(), "poolwatch.failure" => f.as_str())
            }),
            endings: OUTCOMES.map(|o| {
                metrics::counter!(HOLD_ENDINGS, POOL_NAME => name.clone(), "poolwatch.outcome" => o.as_str())
            }),
            error_paths: ERROR_PATH_KINDS.map(|kind| {
                metrics::counter!(ERROR_PATHS, POOL_NAME => name.clone(), "poolwatch.error_path" => kind.as_str())
            }),
            busy_time: metrics::histogram!(BUSY_TIME, POOL_NAME => name.clone()),
            leaks_flagged: metrics::counter!(LEAKS_FLAGGED, POOL_NAME => name.clone()),
            returned_after_flagged: metrics::counter!(RETURNED_AFTER_FLAGGED, POOL_NAME => name.clone()),
            never_returned: metrics::counter!(NEVER_RETURNED, POOL_NAME => name.clone()),
            site_labels,
            pool_name: name,
        }
    }

    pub(crate) fn set_status(&self, status: PoolStatus) {
        self.idle.set(status.available as f64);
        self.used.set(status.in_use() as f64);
        self.max.set(status.max_size as f64);
        self.pending.set(status.waiting as f64);
    }

    pub(crate) fn on_checkout(&self, waited: Duration) {
        self.wait_time.record(waited.as_secs_f64());
    }

    pub(crate) fn on_failure(&self, failure: AcquireFailure, waited: Duration) {
        self.wait_time.record(waited.as_secs_f64());
        self.failures[failure_index(failure)].increment(1);
        if failure == AcquireFailure::Timeout {
            self.timeouts.increment(1);
        }
    }

    pub(crate) fn on_close(&self, closed: &Closed, outcome: Outcome, past_threshold: bool) {
        self.use_time.record(closed.held.as_secs_f64());
        self.endings[outcome_index(outcome)].increment(1);
        if past_threshold {
            self.past_threshold.increment(1);
        }
        if outcome == Outcome::DroppedWhilePanicking {
            self.error_path(ErrorPath::DroppedWhilePanicking);
        }
        if let Some(activity) = closed.activity.as_deref() {
            self.busy_time.record(activity.busy.as_secs_f64());
            if activity.in_flight {
                self.error_path(ErrorPath::InFlightAtDrop);
            }
            if activity.open_transaction {
                self.error_path(ErrorPath::OpenTransactionAtReturn);
            }
        }
        #[cfg(feature = "leak-report")]
        if closed.flagged {
            self.returned_after_flagged.increment(1);
        }
    }

    pub(crate) fn error_path(&self, kind: ErrorPath) {
        let index = ERROR_PATH_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.error_paths[index].increment(1);
    }

    /// The watchdog flagged a guard for the first time.
    #[cfg_attr(not(feature = "leak-report"), allow(dead_code))]
    pub(crate) fn on_flagged(&self) {
        self.leaks_flagged.increment(1);
    }

    /// A guard was still out when its pool closed or was dropped.
    #[cfg_attr(not(feature = "leak-report"), allow(dead_code))]
    pub(crate) fn on_never_returned(&self) {
        self.never_returned.increment(1);
    }

    /// Per-site histograms for the `rank`-th site admitted, if the opt-in
    /// cap allows it.
    pub(crate) fn site_handles(&self, site: CallSite, rank: usize) -> Option<SiteMetrics> {
        if rank >= self.site_labels || site.is_overflow() {
            return None;
        }
        let label = site.to_string();
        let name = self.pool_name.clone();
        Some(SiteMetrics {
            wait_time: metrics::histogram!(SITE_WAIT_TIME, POOL_NAME => name.clone(), SITE => label.clone()),
            use_time: metrics::histogram!(SITE_USE_TIME, POOL_NAME => name, SITE => label),
        })
    }
}

/// The opt-in per-call-site histograms of one site.
#[derive(Clone)]
pub(crate) struct SiteMetrics {
    pub(crate) wait_time: Histogram,
    pub(crate) use_time: Histogram,
}

impl std::fmt::Debug for SiteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteMetrics")
    }
}
