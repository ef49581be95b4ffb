//! Plain-data views of a pool's state, taken by [`WatchedPool::snapshot`](crate::WatchedPool::snapshot).

use std::time::Duration;

use crate::outcome::{FailureCounts, OutcomeCounts};
use crate::site::{CallSite, SpanInfo};

/// A pool's state at one moment: deadpool's status, the guards held and
/// the acquires waiting right now, and the statistics of every call site
/// over the recent window.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: poolwatch::postgres::Pool) {
/// let snapshot = pool.snapshot();
/// for guard in &snapshot.outstanding {
///     println!("{} held for {:?} by {}", guard.id, guard.held, guard.site);
/// }
/// for waiter in &snapshot.waiters {
///     println!("{} waiting for {:?}", waiter.site, waiter.waited);
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
    /// How far back the statistics reach: between half the configured
    /// window ([`WatchConfig::window`](crate::WatchConfig::window)) and
    /// all of it.
    pub window: Duration,
    /// Guards held right now, longest held first.
    pub outstanding: Vec<OutstandingGuard>,
    /// Acquires waiting for a connection right now, longest waiting first.
    pub waiters: Vec<WaitingAcquire>,
    /// Statistics per call site, most connection time held first.
    pub sites: Vec<SiteSnapshot>,
    /// Statistics per tracing span name (request handler, job), most
    /// connection time held first.
    pub spans: Vec<SpanSnapshot>,
    /// Whether any checkout in the window was made inside a span the
    /// tracing subscriber tracks. `false` with spans in the code usually
    /// means the subscriber's filter disables them (e.g.
    /// `RUST_LOG=poolwatch=info` disables the application's own spans).
    pub spans_visible: bool,
    /// Totals since the pool was wrapped.
    pub lifetime: LifetimeTotals,
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

/// What the holder of a connection is doing with it right now, as
/// observed on the connection (pools poolwatch builds).
///
/// ```
/// assert_eq!(poolwatch::HolderState::IdleInTransaction.as_str(), "idle in transaction");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum HolderState {
    /// A database call is in flight.
    InCall,
    /// Inside a transaction, with no call in flight (locks held, snapshot
    /// pinned, while the code does something else).
    IdleInTransaction,
    /// Neither: the connection is held across other work.
    Idle,
}

impl HolderState {
    /// `in a database call`, `idle in transaction`, `idle`.
    pub fn as_str(self) -> &'static str {
        match self {
            HolderState::InCall => "in a database call",
            HolderState::IdleInTransaction => "idle in transaction",
            HolderState::Idle => "idle",
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
    /// Of that, time spent in database calls so far (observed
    /// connections; zero otherwise).
    pub busy: Duration,
    /// What the holder is doing right now, when the connection is observed.
    pub state: Option<HolderState>,
    /// The server process behind the connection (`pg_stat_activity.pid`),
    /// when known.
    pub backend_pid: Option<i32>,
    /// The last statement sent in this hold (sanitized, bounded, never
    /// parameter values), when known and statement text is on.
    pub last_statement: Option<String>,
    /// Inside a transaction right now (observed connections).
    pub in_transaction: bool,
    /// Its task waits right now for a second connection of this pool while
    /// holding this one (a nested checkout, see [`WaitingAcquire::nested`]).
    pub nested_wait: bool,
}

/// An acquire waiting for a connection right now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WaitingAcquire {
    /// Where it was requested.
    pub site: CallSite,
    /// The span it was requested in.
    pub span: Option<SpanInfo>,
    /// How long it has waited so far.
    pub waited: Duration,
    /// Its task already holds a guard of the same pool: a nested checkout,
    /// which deadlocks once every connection is held this way.
    pub nested: bool,
}

/// Statistics of one call site over the recent window.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SiteSnapshot {
    /// The call site ([`CallSite::OVERFLOW`] for sites past the cap).
    pub site: CallSite,
    /// Successful acquires.
    pub checkouts: u64,
    /// Held right now.
    pub outstanding: u64,
    /// Wait times of all acquires, successful, failed or cancelled.
    pub wait: LatencySummary,
    /// Hold times of ended holds.
    pub hold: LatencySummary,
    /// Connection time held by ended holds, added up.
    pub hold_total: Duration,
    /// Connection time held in the window, holds still in progress
    /// included.
    pub connection_time: Duration,
    /// How the ended holds ended.
    pub outcomes: OutcomeCounts,
    /// Failed acquires, by kind.
    pub failures: FailureCounts,
    /// Acquires given up by their caller while waiting (the future was
    /// dropped: a request timeout, `select!`).
    pub cancelled: u64,
    /// What the holds did in the database; all zero unless the pool's
    /// connections are observed (pools built by
    /// [`postgres`](crate::postgres)).
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
    /// Ended holds whose connection was observed.
    pub observed_holds: u64,
    /// Time with at least one database call in flight, added up over the
    /// ended holds.
    pub busy_total: Duration,
    /// Time inside a transaction with no call in flight, over the ended
    /// holds.
    pub idle_in_transaction_total: Duration,
    /// Statements sent, over the ended holds.
    pub statements: u64,
    /// Watched transactions committed.
    pub committed: u64,
    /// Watched transactions rolled back explicitly.
    pub rolled_back: u64,
    /// Watched transactions (or savepoints) dropped without commit or
    /// rollback: rolled back by `Drop`, usually on a `?` early return.
    pub rolled_back_by_drop: u64,
    /// Watched transactions (or savepoints) dropped after a statement in
    /// them failed in the database (a lock timeout, a serialization
    /// failure, a constraint): the `?` on that error, rolled back as it
    /// should be. Not an error path of the code's own.
    pub rolled_back_after_error: u64,
    /// Time inside watched transactions (outermost level).
    pub transaction_total: Duration,
    /// Of that, time with no call in flight: the transaction was open and
    /// idle (locks held, snapshot pinned) while the code did other work.
    pub transaction_idle_total: Duration,
    /// Holds that ended with a transaction still open (raw `BEGIN`, a
    /// leaked transaction).
    pub open_transaction_at_return: u64,
    /// Holds that ended with a database call still in flight (its future
    /// dropped by a timeout or `select!`).
    pub in_flight_at_drop: u64,
}

impl DatabaseStats {
    /// Error-path endings: rolled back by drop, open transaction at return,
    /// call in flight at drop.
    pub fn error_paths(&self) -> u64 {
        self.rolled_back_by_drop + self.open_transaction_at_return + self.in_flight_at_drop
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
    /// Connection time held in the window, holds in progress included.
    pub connection_time: Duration,
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

/// Totals since the pool was wrapped (the window's statistics age out,
/// these do not).
///
/// ```
/// assert_eq!(poolwatch::LifetimeTotals::default().checkouts, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LifetimeTotals {
    /// Successful acquires.
    pub checkouts: u64,
    /// Holds that ended.
    pub holds: u64,
    /// Their connection time, added up.
    pub hold_total: Duration,
    /// Failed acquires, by kind.
    pub failures: FailureCounts,
    /// Acquires cancelled by their caller while waiting.
    pub cancelled: u64,
    /// How the holds ended.
    pub outcomes: OutcomeCounts,
    /// Holds that ended on an error path (dropped while panicking, rolled
    /// back by drop, open transaction or call in flight at return).
    pub error_paths: u64,
}
