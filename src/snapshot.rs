//! Plain-data views of a pool's state, taken by [`WatchedPool::snapshot`](crate::WatchedPool::snapshot).

use std::time::Duration;

use crate::outcome::{FailureCounts, OutcomeCounts};
use crate::site::{CallSite, SpanInfo};

/// A pool's state at one moment: deadpool's status, the guards held right
/// now, and the statistics of every call site.
///
/// ```no_run
/// # async fn demo(pool: poolwatch::postgres::Pool) {
/// let snapshot = pool.snapshot();
/// for guard in &snapshot.outstanding {
///     println!("{} held for {:?} by {}", guard.id, guard.held, guard.site);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// The pool's configured name.
    pub pool: String,
    /// deadpool's own view of the pool.
    pub status: PoolStatus,
    /// Guards held right now, longest held first.
    pub outstanding: Vec<OutstandingGuard>,
    /// Statistics per call site, most connection time held first.
    pub sites: Vec<SiteSnapshot>,
    /// Statistics per tracing span name (request handler, job), most
    /// connection time held first.
    pub spans: Vec<SpanSnapshot>,
}

/// deadpool's [`Status`](deadpool::Status), as plain data.
///
/// ```
/// let status = poolwatch::PoolStatus::from(deadpool::Status {
///     max_size: 16, size: 16, available: 0, waiting: 3,
/// });
/// assert_eq!(status.in_use(), 16);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct PoolStatus {
    /// The pool's maximum size.
    pub max_size: usize,
    /// Connections open now (idle or in use).
    pub size: usize,
    /// Idle connections.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl PoolStatus {
    /// Connections handed out right now.
    pub fn in_use(&self) -> usize {
        self.size.saturating_sub(self.available)
    }
}

impl From<deadpool::Status> for PoolStatus {
    fn from(s: deadpool::Status) -> Self {
        Self {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }
}

/// A guard that is held right now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct OutstandingGuard {
    /// The guard's id (the `guard` field of events).
    pub id: u64,
    /// Where it was acquired.
    pub site: CallSite,
    /// The span it was acquired in.
    pub span: Option<SpanInfo>,
    /// How long it has been held so far.
    pub held: Duration,
    /// Of that, time spent in instrumented database calls so far.
    pub busy: Duration,
    /// The server process behind the connection (`pg_stat_activity.pid`),
    /// when known.
    pub backend_pid: Option<i32>,
    /// The text of the last statement sent through the guard (bounded,
    /// never parameter values), when known.
    pub last_statement: Option<String>,
    /// Inside a transaction, as far as the instrumented calls saw.
    pub in_transaction: bool,
}

/// Statistics of one call site since the pool was wrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SiteSnapshot {
    /// The call site ([`CallSite::OVERFLOW`] for sites past the cap).
    pub site: CallSite,
    /// Successful acquires.
    pub checkouts: u64,
    /// Of those, held right now.
    pub outstanding: u64,
    /// Wait times of all acquires, successful or failed.
    pub wait: LatencySummary,
    /// Hold times of ended holds.
    pub hold: LatencySummary,
    /// Connection time held by ended holds, added up.
    pub hold_total: Duration,
    /// How the ended holds ended.
    pub outcomes: OutcomeCounts,
    /// Failed acquires, by kind.
    pub failures: FailureCounts,
    /// What the holds did in the database (busy time, transactions, error
    /// paths); all zero unless the pool is a [`postgres`](crate::postgres)
    /// pool used through its instrumented methods.
    pub database: DatabaseStats,
}

/// The database side of one call site's holds.
///
/// `busy_total / hold_total` is the share of connection time spent in the
/// database; a low ratio with long holds means connections are held across
/// unrelated work.
///
/// ```
/// let stats = poolwatch::DatabaseStats::default();
/// assert_eq!(stats.busy_total, std::time::Duration::ZERO);
/// assert_eq!(stats.error_paths(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DatabaseStats {
    /// Time with at least one instrumented database call in flight, added
    /// up over the ended holds.
    pub busy_total: std::time::Duration,
    /// Transactions committed.
    pub committed: u64,
    /// Transactions rolled back explicitly.
    pub rolled_back: u64,
    /// Transactions (or savepoints) dropped without commit or rollback:
    /// rolled back by `Drop`, usually on a `?` early return.
    pub rolled_back_by_drop: u64,
    /// Time inside instrumented transactions (outermost level).
    pub transaction_total: std::time::Duration,
    /// Of that, time with no call in flight: the transaction was open and
    /// idle (locks held, snapshot pinned) while the code did other work.
    pub transaction_idle_total: std::time::Duration,
    /// Holds that ended with a transaction still open (raw `BEGIN`, a
    /// leaked transaction), as the guard saw it or the recycle probe found.
    pub open_transaction_at_return: u64,
    /// Holds that ended with a database call in flight or abandoned mid-way
    /// (its future dropped by a timeout or `select!`).
    pub in_flight_at_drop: u64,
}

impl DatabaseStats {
    /// Error-path endings: rolled back by drop, open transaction at return,
    /// call in flight at drop.
    pub fn error_paths(&self) -> u64 {
        self.rolled_back_by_drop + self.open_transaction_at_return + self.in_flight_at_drop
    }

    pub(crate) fn merge(&mut self, other: &DatabaseStats) {
        self.busy_total += other.busy_total;
        self.committed += other.committed;
        self.rolled_back += other.rolled_back;
        self.rolled_back_by_drop += other.rolled_back_by_drop;
        self.transaction_total += other.transaction_total;
        self.transaction_idle_total += other.transaction_idle_total;
        self.open_transaction_at_return += other.open_transaction_at_return;
        self.in_flight_at_drop += other.in_flight_at_drop;
    }
}

/// Statistics of the checkouts made inside one tracing span name (over all
/// call sites): what a request handler or a background job costs the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SpanSnapshot {
    /// The span's name; `None` for checkouts made outside any span.
    pub span: Option<&'static str>,
    /// Successful acquires.
    pub checkouts: u64,
    /// Of those, held right now.
    pub outstanding: u64,
    /// Wait times of all acquires.
    pub wait: LatencySummary,
    /// Hold times of ended holds.
    pub hold: LatencySummary,
    /// Connection time held by ended holds, added up.
    pub hold_total: Duration,
    /// How the ended holds ended.
    pub outcomes: OutcomeCounts,
    /// What the holds did in the database.
    pub database: DatabaseStats,
}

/// A latency distribution, from an HDR histogram (under 1 % error).
///
/// ```
/// let summary = poolwatch::LatencySummary::default();
/// assert_eq!(summary.count, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}
