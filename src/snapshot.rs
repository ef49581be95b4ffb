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
