//! Metrics export through the [`metrics`] facade, with OpenTelemetry
//! semantic-convention names (semconv v1.44: `db.client.connection.*`,
//! Development; `db.client.operation.duration`, Stable), so any Prometheus
//! or OTel backend aggregates the pools of many service instances.
//!
//! | name | kind | unit | labels |
//! |---|---|---|---|
//! | `db.client.connection.count` | gauge | connections | `db.client.connection.state` = `idle` \| `used` |
//! | `db.client.connection.max` | gauge | connections | |
//! | `db.client.connection.pending_requests` | gauge | requests | |
//! | `db.client.connection.timeouts` | counter | timeouts | |
//! | `db.client.connection.create_time` | histogram | seconds | (pools built by `poolwatch::postgres`; time to open a connection, startup and TLS included) |
//! | `db.client.connection.wait_time` | histogram | seconds | (successful acquires: the time to obtain a connection) |
//! | `db.client.connection.use_time` | histogram | seconds | |
//! | `db.client.operation.duration` | histogram | seconds | `db.system.name` = `postgresql`, `db.operation.name` (first keyword, when it is one of [`OPERATION_NAMES`]), `error.type` (the SQLSTATE, failed calls only) |
//! | `poolwatch.acquire.failures` | counter | failures | `error.type` = `timeout` \| `closed` \| `backend` \| `no_runtime` |
//! | `poolwatch.acquire.cancelled` | counter | acquires | (futures dropped while waiting) |
//! | `poolwatch.acquire.nested` | counter | acquires | (waited while the same task held a guard) |
//! | `poolwatch.acquire.oldest_wait` | gauge | seconds | (the longest a caller has been waiting right now; pgbouncer's `maxwait`) |
//! | `poolwatch.hold.oldest` | gauge | seconds | (the longest a connection has been held right now: a leak shows as a line that only climbs) |
//! | `poolwatch.hold.endings` | counter | holds | `poolwatch.outcome` = `returned` \| `dropped_while_panicking` \| `detached` \| `untracked` |
//! | `poolwatch.hold.past_threshold` | counter | holds | |
//! | `poolwatch.hold.error_paths` | counter | holds | `poolwatch.error_path` = `dropped_while_panicking` \| `rolled_back_by_drop` \| `open_transaction_at_return` \| `in_flight_at_drop` |
//! | `poolwatch.hold.busy_time` | histogram | seconds | (holds on observed connections) |
//! | `poolwatch.runtime.lag` | histogram | seconds | (how long a probe task waited for its turn on the service's runtime, measured while callers queue: a busy runtime stretches every hold) |
//! | `poolwatch.leaks.flagged` | counter | guards | (`leak-report`: guards flagged while held, first flag only) |
//! | `poolwatch.leaks.returned_after_flagged` | counter | guards | (`leak-report`) |
//! | `poolwatch.leaks.never_returned` | counter | guards | (`leak-report`: still out at close or drop) |
//!
//! Every metric carries `db.client.connection.pool.name`: the
//! [`pool_name`](crate::WatchConfig::pool_name) you set, else, for pools
//! built by `poolwatch::postgres`, `server.address:server.port/db.namespace`
//! as semconv suggests (`db.example.com:5432/shop`). There is no
//! per-call-site label unless
//! [`WatchConfig::metrics_site_labels`](crate::WatchConfig::metrics_site_labels)
//! asks for one: then `poolwatch.site.wait_time` and
//! `poolwatch.site.use_time` (seconds) carry a `poolwatch.site` label
//! (`file:line:column`) for at most that many call sites, as separate names
//! so that summing the pool-wide series never double counts. (Semconv
//! reserves the `code.*` namespace for its own attributes.) Cardinality is
//! what a metrics backend pays for.
//!
//! Handles are registered with the recorder installed when the pool is
//! wrapped: install your recorder (e.g. `metrics-exporter-prometheus`)
//! before creating the pool.
//!
//! # Prometheus
//!
//! Two settings make the output aggregate across instances and match what
//! an OpenTelemetry collector's Prometheus exporter writes for the same
//! instruments (`db_client_connection_wait_time_seconds_bucket`,
//! `db_client_connection_timeouts_total`):
//!
//! * **Buckets.** metrics-exporter-prometheus renders a histogram as a
//!   *summary* (quantiles, which cannot be summed across instances) unless
//!   it is given buckets. [`DURATION_BUCKETS`] covers 100 µs to 60 s.
//! * **Names.** `with_recommended_naming(true)` appends `_total` to
//!   counters and the unit (`_seconds`) to the `*_time`, `duration` and
//!   `oldest*` metrics.
//!
//! ```
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//!
//! let builder = PrometheusBuilder::new()
//!     .with_recommended_naming(true)
//!     // Every histogram poolwatch records is in seconds.
//!     .set_buckets_for_metric(
//!         Matcher::Prefix("db_client".into()),
//!         poolwatch::export::DURATION_BUCKETS,
//!     )?
//!     .set_buckets_for_metric(
//!         Matcher::Prefix("poolwatch".into()),
//!         poolwatch::export::DURATION_BUCKETS,
//!     )?;
//! # let _ = builder;
//! # Ok::<(), metrics_exporter_prometheus::BuildError>(())
//! ```
//!
//! `deploy/prometheus/` has recording and alerting rules (with `promtool`
//! tests) and `deploy/grafana/` a dashboard, both over these names.
//!
//! # What the facade cannot say
//!
//! * **Instrument kinds.** Semconv's `db.client.connection.count` and
//!   `pending_requests` are UpDownCounters; the facade has gauges, which
//!   poolwatch sets to the current value (an OTel bridge exports them as
//!   gauges, which sum across instances the same way).
//! * **Units.** The facade's [`Unit`](metrics::Unit) has seconds and a
//!   plain count, not semconv's annotations (`{connection}`, `{request}`,
//!   `{timeout}`): counts are described as [`Unit::Count`](metrics::Unit),
//!   which Prometheus renders without a suffix, as an OTel collector does
//!   for annotation units.
//! * **Histogram buckets** are the exporter's setting, not the
//!   instrument's (semconv's advice is its bucket list; see above).
//! * **Attributes left out.** `db.client.operation.duration` carries no
//!   `server.address`, `server.port` or `db.namespace` of its own: the
//!   pool name has them (by default) and every series already carries it;
//!   nor `db.query.text` (unbounded: the sanitized text is in the events
//!   and reports instead).
//!
//! # When values are current
//!
//! Gauges are refreshed by the sampler at every tick (each second by
//! default) whether or not anything is checked out or returned, so a fully
//! stuck pool still shows its pending requests and its oldest waiter and
//! hold climbing; also at a failed acquire, and on demand with
//! [`WatchedPool::record_metrics`](crate::WatchedPool::record_metrics)
//! (call it before rendering a scrape). With the timeline off
//! ([`timeline_tick(None)`](crate::WatchConfigBuilder::timeline_tick)) there
//! is no sampler: only `record_metrics` refreshes them. Not per checkout:
//! reading deadpool's status takes its slot lock.
//!
//! Without the `metrics` feature this module is private and its handles do
//! nothing, so the code that records needs no `cfg` at every call.

// Without `metrics` the names below are the no-op handles' unused
// vocabulary; keeping them compiled keeps both builds in step.
// The connections' metrics are recorded by the PostgreSQL integration only.
#![cfg_attr(
    any(not(feature = "metrics"), not(feature = "postgres")),
    allow(dead_code)
)]
#![cfg_attr(not(feature = "postgres"), allow(unused_imports))]

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
/// Time to open a new connection, in seconds (pools built by
/// `poolwatch::postgres`).
pub const CREATE_TIME: &str = "db.client.connection.create_time";
/// Time to obtain a connection (successful acquires), in seconds.
pub const WAIT_TIME: &str = "db.client.connection.wait_time";
/// Time a connection was held, in seconds.
pub const USE_TIME: &str = "db.client.connection.use_time";
/// Every database call on an observed connection, from the request going
/// out to the server's "ready", in seconds.
pub const OPERATION_DURATION: &str = "db.client.operation.duration";
/// Attribute of [`OPERATION_DURATION`]: the database system.
pub const DB_SYSTEM_NAME: &str = "db.system.name";
/// Attribute of [`OPERATION_DURATION`]: the statement's first keyword,
/// when it is one of [`OPERATION_NAMES`].
pub const DB_OPERATION_NAME: &str = "db.operation.name";
/// Attribute of failures: the kind of failure (a failed acquire's kind; a
/// failed call's SQLSTATE).
pub const ERROR_TYPE: &str = "error.type";
/// The values [`DB_OPERATION_NAME`] takes; a statement starting with any
/// other word (or none, e.g. `WITH`, whose operation is further in) has no
/// operation name, which keeps the label's values few.
pub const OPERATION_NAMES: [&str; 16] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "COPY",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "SHOW",
    "CALL",
    "LISTEN",
];
/// Failed acquires, by kind ([`ERROR_TYPE`]).
pub const ACQUIRE_FAILURES: &str = "poolwatch.acquire.failures";
/// Acquires cancelled by their caller while waiting.
pub const ACQUIRES_CANCELLED: &str = "poolwatch.acquire.cancelled";
/// Acquires that had to wait while their task held a guard of the pool.
pub const NESTED_CHECKOUTS: &str = "poolwatch.acquire.nested";
/// How long the longest-waiting caller has waited so far, in seconds.
pub const OLDEST_WAIT: &str = "poolwatch.acquire.oldest_wait";
/// How long the longest-held connection has been held so far, in seconds.
pub const OLDEST_HOLD: &str = "poolwatch.hold.oldest";
/// How holds ended, by outcome ([`OUTCOME`]; error-path drops among them).
pub const HOLD_ENDINGS: &str = "poolwatch.hold.endings";
/// Attribute of [`HOLD_ENDINGS`].
pub const OUTCOME: &str = "poolwatch.outcome";
/// Holds that ended past the hold threshold.
pub const HOLDS_PAST_THRESHOLD: &str = "poolwatch.hold.past_threshold";
/// Error-path endings, by kind ([`ERROR_PATH`]).
pub const ERROR_PATHS: &str = "poolwatch.hold.error_paths";
/// Attribute of [`ERROR_PATHS`].
pub const ERROR_PATH: &str = "poolwatch.error_path";
/// Time inside database calls per hold, in seconds.
pub const BUSY_TIME: &str = "poolwatch.hold.busy_time";
/// How long a probe task waited for its turn on the service's runtime
/// (measured while callers queue, with the `tokio` feature), in seconds.
pub const RUNTIME_LAG: &str = "poolwatch.runtime.lag";
/// Guards flagged by the watchdog while held.
pub const LEAKS_FLAGGED: &str = "poolwatch.leaks.flagged";
/// Flagged guards that came back.
pub const RETURNED_AFTER_FLAGGED: &str = "poolwatch.leaks.returned_after_flagged";
/// Guards still held when their pool closed or was dropped.
pub const NEVER_RETURNED: &str = "poolwatch.leaks.never_returned";

/// The opt-in per-site label.
pub const SITE: &str = "poolwatch.site";
/// Opt-in per-site wait time, in seconds.
pub const SITE_WAIT_TIME: &str = "poolwatch.site.wait_time";
/// Opt-in per-site hold time, in seconds.
pub const SITE_USE_TIME: &str = "poolwatch.site.use_time";

/// Histogram buckets for every poolwatch duration, in seconds: 100 µs to
/// 60 s, about three per decade (semconv's advice for
/// `db.client.operation.duration` stops at 10 s; a held connection, a
/// wait or a connect can take a minute).
///
/// ```
/// let buckets = poolwatch::export::DURATION_BUCKETS;
/// assert_eq!(buckets.first(), Some(&0.0001));
/// assert_eq!(buckets.last(), Some(&60.0));
/// assert!(buckets.windows(2).all(|w| w[0] < w[1]));
/// ```
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// One of [`OPERATION_NAMES`], by its position: found once per statement
/// text, then carried with each call to pick its series without a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Operation(u8);

impl Operation {
    pub(crate) fn name(self) -> &'static str {
        OPERATION_NAMES[usize::from(self.0)]
    }
}

/// The operation of a statement: its first keyword, when it is one of
/// [`OPERATION_NAMES`] (case-insensitive; leading whitespace, comments
/// and parentheses skipped).
pub(crate) fn operation_of(statement: &str) -> Option<Operation> {
    let mut rest = statement;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(line) = rest.strip_prefix("--") {
            rest = line.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(block) = rest.strip_prefix("/*") {
            rest = block.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    let word = rest
        .as_bytes()
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .take(LONGEST_OPERATION_NAME + 1);
    // The word in capitals, in a buffer one longer than the longest name,
    // so a longer word matches none.
    let mut upper = [0u8; LONGEST_OPERATION_NAME + 1];
    let mut len = 0;
    for (slot, b) in upper.iter_mut().zip(word) {
        *slot = b.to_ascii_uppercase();
        len += 1;
    }
    let word = &upper[..len];
    let index = OPERATION_NAMES
        .iter()
        .position(|name| name.len() == len && name.as_bytes() == word)?;
    u8::try_from(index).ok().map(Operation)
}

/// The length of the longest of [`OPERATION_NAMES`].
const LONGEST_OPERATION_NAME: usize = 9;

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
pub(crate) use real::{ConnectionMetrics, LagMetric, PoolMetrics};

#[cfg(not(feature = "metrics"))]
pub(crate) use noop::{ConnectionMetrics, LagMetric, PoolMetrics};

#[cfg(feature = "metrics")]
mod real {
    use std::collections::HashMap;
    use std::sync::{Arc, OnceLock};

    use metrics::{Counter, Gauge, Histogram, Unit};
    use parking_lot::Mutex;

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
            CREATE_TIME,
            Unit::Seconds,
            "Time it took to create a new connection"
        );
        metrics::describe_histogram!(
            OPERATION_DURATION,
            Unit::Seconds,
            "Duration of database client operations"
        );
        metrics::describe_gauge!(
            OLDEST_HOLD,
            Unit::Seconds,
            "How long the longest-held connection has been held so far"
        );
        metrics::describe_histogram!(
            WAIT_TIME,
            Unit::Seconds,
            "Time it took to obtain an open connection from the pool"
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
        metrics::describe_histogram!(
            RUNTIME_LAG,
            Unit::Seconds,
            "How long a task waited for its turn on the runtime while callers queued"
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
        oldest_hold: Gauge,
        create_time: Histogram,
        operations: Arc<OperationMetrics>,
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
        runtime_lag: Histogram,
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
                oldest_hold: metrics::gauge!(OLDEST_HOLD, POOL_NAME => name.clone()),
                create_time: metrics::histogram!(CREATE_TIME, POOL_NAME => name.clone()),
                operations: Arc::new(OperationMetrics::new(&name)),
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
                    metrics::counter!(ACQUIRE_FAILURES, POOL_NAME => name.clone(), ERROR_TYPE => f.as_str())
                }),
                cancelled: metrics::counter!(ACQUIRES_CANCELLED, POOL_NAME => name.clone()),
                nested: metrics::counter!(NESTED_CHECKOUTS, POOL_NAME => name.clone()),
                endings: OUTCOMES.map(|o| {
                    metrics::counter!(HOLD_ENDINGS, POOL_NAME => name.clone(), OUTCOME => o.as_str())
                }),
                error_paths: ErrorPath::ALL.map(|kind| {
                    metrics::counter!(ERROR_PATHS, POOL_NAME => name.clone(), ERROR_PATH => kind.as_str())
                }),
                busy_time: metrics::histogram!(BUSY_TIME, POOL_NAME => name.clone()),
                runtime_lag: metrics::histogram!(RUNTIME_LAG, POOL_NAME => name.clone()),
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

        pub(crate) fn set_oldest_hold(&self, oldest: Duration) {
            self.oldest_hold.set(oldest.as_secs_f64());
        }

        /// The handle the runtime's lag probe records into.
        pub(crate) fn lag_metric(&self) -> LagMetric {
            LagMetric(self.runtime_lag.clone())
        }

        /// The handles the pool's connections record into.
        pub(crate) fn connection_metrics(&self) -> ConnectionMetrics {
            ConnectionMetrics {
                create_time: self.create_time.clone(),
                operations: Arc::clone(&self.operations),
            }
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

        /// A failed acquire: counted by kind; not a wait time (semconv's is
        /// the time to obtain a connection).
        pub(crate) fn failed(&self, failure: AcquireFailure) {
            self.failures[FAILURES.iter().position(|f| *f == failure).unwrap_or(0)].increment(1);
            if failure == AcquireFailure::Timeout {
                self.timeouts.increment(1);
            }
        }

        pub(crate) fn cancelled(&self) {
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

    /// Distinct (operation, SQLSTATE) series of failed calls per pool, at
    /// most; past that a failure is labelled `_OTHER` (semconv's fallback).
    const FAILED_SERIES: usize = 256;

    /// A failed call's series: its operation and SQLSTATE.
    type FailedSeries = (Option<Operation>, [u8; 5]);

    /// The per-call histograms of one pool, registered on first use (a
    /// pool that never runs `MERGE` renders no `MERGE` series).
    pub(crate) struct OperationMetrics {
        pool_name: String,
        /// By position in [`OPERATION_NAMES`]; the last: no name.
        succeeded: [OnceLock<Histogram>; OPERATION_NAMES.len() + 1],
        failed: Mutex<HashMap<FailedSeries, Histogram>>,
        failed_other: OnceLock<Histogram>,
    }

    impl OperationMetrics {
        fn new(pool_name: &str) -> Self {
            Self {
                pool_name: pool_name.to_owned(),
                succeeded: std::array::from_fn(|_| OnceLock::new()),
                failed: Mutex::new(HashMap::new()),
                failed_other: OnceLock::new(),
            }
        }

        fn register(&self, operation: Option<Operation>, error: Option<&str>) -> Histogram {
            let mut labels = vec![
                metrics::Label::new(POOL_NAME, self.pool_name.clone()),
                metrics::Label::from_static_parts(DB_SYSTEM_NAME, "postgresql"),
            ];
            if let Some(operation) = operation {
                labels.push(metrics::Label::from_static_parts(
                    DB_OPERATION_NAME,
                    operation.name(),
                ));
            }
            if let Some(error) = error {
                labels.push(metrics::Label::new(ERROR_TYPE, error.to_owned()));
            }
            metrics::histogram!(OPERATION_DURATION, labels)
        }

        fn record(&self, took: Duration, operation: Option<Operation>, error: Option<[u8; 5]>) {
            let seconds = took.as_secs_f64();
            let Some(code) = error else {
                let index = operation.map_or(OPERATION_NAMES.len(), |o| usize::from(o.0));
                self.succeeded[index]
                    .get_or_init(|| self.register(operation, None))
                    .record(seconds);
                return;
            };
            let mut failed = self.failed.lock();
            if let Some(histogram) = failed.get(&(operation, code)) {
                histogram.record(seconds);
            } else if failed.len() < FAILED_SERIES {
                // SQLSTATEs are five ASCII digits or capitals (checked
                // where they are read).
                let text = std::str::from_utf8(&code).unwrap_or("_OTHER");
                let histogram = self.register(operation, Some(text));
                histogram.record(seconds);
                failed.insert((operation, code), histogram);
            } else {
                drop(failed);
                self.failed_other
                    .get_or_init(|| self.register(None, Some("_OTHER")))
                    .record(seconds);
            }
        }
    }

    /// What the runtime's lag probe records: each wait for its turn.
    #[derive(Clone)]
    pub(crate) struct LagMetric(Histogram);

    impl Default for LagMetric {
        /// Records nowhere (tests).
        fn default() -> Self {
            LagMetric(Histogram::noop())
        }
    }

    impl LagMetric {
        pub(crate) fn record(&self, waited: Duration) {
            self.0.record(waited.as_secs_f64());
        }
    }

    /// What a pool's connections record: the time to open one and each
    /// call's duration. Cloned into the connection layer.
    #[derive(Clone)]
    pub(crate) struct ConnectionMetrics {
        create_time: Histogram,
        operations: Arc<OperationMetrics>,
    }

    impl ConnectionMetrics {
        /// Whether anything is recorded (with the `metrics` feature: yes).
        pub(crate) fn enabled(&self) -> bool {
            true
        }

        /// A connection was opened (startup and TLS included).
        pub(crate) fn connected(&self, took: Duration) {
            self.create_time.record(took.as_secs_f64());
        }

        /// A database call ended: its operation (see [`operation_of`])
        /// and, for a failed call, its SQLSTATE.
        pub(crate) fn operation(
            &self,
            took: Duration,
            operation: Option<Operation>,
            error: Option<[u8; 5]>,
        ) {
            self.operations.record(took, operation, error);
        }
    }

    impl std::fmt::Debug for ConnectionMetrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ConnectionMetrics")
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
        pub(crate) fn set_oldest_hold(&self, _oldest: Duration) {}
        #[inline(always)]
        pub(crate) fn connection_metrics(&self) -> ConnectionMetrics {
            ConnectionMetrics
        }
        #[inline(always)]
        pub(crate) fn lag_metric(&self) -> LagMetric {
            LagMetric
        }
        #[inline(always)]
        pub(crate) fn checked_out(
            &self,
            _waited: Duration,
            _rank: Option<u32>,
            _site: impl FnOnce() -> CallSite,
        ) {
        }
        #[inline(always)]
        pub(crate) fn failed(&self, _failure: AcquireFailure) {}
        #[inline(always)]
        pub(crate) fn cancelled(&self) {}
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

    /// Without the `metrics` feature: records nothing.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct LagMetric;

    #[allow(clippy::unused_self)]
    impl LagMetric {
        #[inline(always)]
        pub(crate) fn record(&self, _waited: Duration) {}
    }

    /// Without the `metrics` feature: records nothing.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct ConnectionMetrics;

    #[allow(clippy::unused_self)]
    impl ConnectionMetrics {
        #[inline(always)]
        pub(crate) fn enabled(&self) -> bool {
            false
        }
        #[inline(always)]
        pub(crate) fn connected(&self, _took: Duration) {}
        #[inline(always)]
        pub(crate) fn operation(
            &self,
            _took: Duration,
            _operation: Option<Operation>,
            _error: Option<[u8; 5]>,
        ) {
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::DebuggingRecorder;

    use super::*;

    fn operation_name(statement: &str) -> Option<&'static str> {
        operation_of(statement).map(Operation::name)
    }

    #[test]
    fn operation_names_come_from_the_first_keyword_only() {
        assert_eq!(operation_name("select 1"), Some("SELECT"));
        assert_eq!(
            operation_name("  /* app */ -- x\n (SELECT 1) UNION SELECT 2"),
            Some("SELECT")
        );
        assert_eq!(operation_name("INSERT INTO t VALUES (1)"), Some("INSERT"));
        assert_eq!(operation_name("START TRANSACTION"), Some("START"));
        assert_eq!(operation_name("WITH x AS (SELECT 1) SELECT * FROM x"), None);
        assert_eq!(operation_name("CREATE TABLE t (id int)"), None);
        assert_eq!(operation_name("SELECTED"), None);
        assert_eq!(operation_name(""), None);
        assert_eq!(operation_name("/* unterminated"), None);
        assert_eq!(operation_name("savepoint a"), Some("SAVEPOINT"));
        assert_eq!(operation_name("SAVEPOINTS"), None);
        assert_eq!(
            OPERATION_NAMES.iter().map(|n| n.len()).max(),
            Some(LONGEST_OPERATION_NAME)
        );
    }

    /// However many SQLSTATEs a pool's calls fail with, its failed-call
    /// series stay bounded; the rest are `_OTHER`.
    #[test]
    fn failed_call_series_are_capped() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let metrics = PoolMetrics::new("capped", 0).connection_metrics();
            let select = operation_of("SELECT 1");
            for i in 0..400u32 {
                let code = format!("{:05}", i);
                let code: [u8; 5] = code.as_bytes().try_into().unwrap();
                metrics.operation(Duration::from_millis(1), select, Some(code));
            }
            metrics.operation(Duration::from_millis(1), select, None);
        });
        let series: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == OPERATION_DURATION)
            .collect();
        let errors: Vec<String> = series
            .iter()
            .filter_map(|(key, ..)| {
                key.key()
                    .labels()
                    .find(|l| l.key() == ERROR_TYPE)
                    .map(|l| l.value().to_owned())
            })
            .collect();
        assert_eq!(errors.len(), 256 + 1, "256 codes and _OTHER");
        assert!(errors.iter().any(|e| e == "_OTHER"));
        assert_eq!(series.len(), 256 + 1 + 1, "and the successful SELECTs");
    }
}
