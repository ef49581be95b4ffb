//! Readers: what snapshots, reports and the events that list holders are
//! built from. Each copies shard state out under that shard's lock, one
//! shard at a time, and merges outside it; the archive adds the shards'
//! drains up under its own lock, which the hot path never takes. Nothing
//! here holds a shard lock while it merges or formats.

use std::time::Duration;

use crate::ledger::{
    ArchiveView, Holder, LagReadings, Ledger, SnapshotParts, Summary, Ticks, Waiter,
};
use crate::observe::Observer;
use crate::snapshot::{
    DatabaseStats, LatencySummary, LifetimeTotals, OutstandingGuard, PoolSnapshot, PoolStatus,
    SiteSnapshot, SpanSnapshot, WaitingAcquire,
};
use crate::timeline::PressureSample;

/// Everything a snapshot or a report is built from, taken at `now`.
#[derive(Clone, Debug)]
pub(crate) struct PoolView {
    pub(crate) now: Ticks,
    pub(crate) status: PoolStatus,
    pub(crate) hold_threshold: Duration,
    pub(crate) archive: ArchiveView,
    /// The window's totals per site and span.
    pub(crate) parts: SnapshotParts,
    /// Longest held first.
    pub(crate) holders: Vec<Holder>,
    /// Longest waiting first.
    pub(crate) waiters: Vec<Waiter>,
    /// The open tick saw callers wait (or the pool at its maximum).
    pub(crate) open_tick_saturated: bool,
    /// The most callers queued at once since the last tick (tracked on
    /// the acquire path, so a burst shorter than a tick is seen).
    pub(crate) open_peak_waiting: usize,
    /// The runtime's scheduling delay read since the last tick.
    pub(crate) open_lag: LagReadings,
}

/// Takes the view: drains the shards into the archive, copies the holders
/// and waiters out.
pub(crate) fn take<A>(ledger: &Ledger<A>, observer: &Observer) -> PoolView {
    let now = Ticks::now();
    let status = observer.status();
    let (archive, parts) = ledger.view(now);
    let holders = ledger.holders(now);
    let waiters = ledger.waiters();
    let open_waited = archive.open.values().any(|(_, u)| !u.waited.is_zero());
    let open_peak_waiting = ledger.waiting_peak();
    let open_lag = ledger.lag().peek(now);
    let open_tick_saturated = open_waited
        || open_peak_waiting > 0
        || waiters.iter().any(|w| w.queued)
        || (status.max_size > 0 && status.in_use() >= status.max_size);
    PoolView {
        now,
        status,
        hold_threshold: observer.thresholds.hold(),
        archive,
        parts,
        holders,
        waiters,
        open_tick_saturated,
        open_peak_waiting,
        open_lag,
    }
}

/// The plain-data snapshot, without the per-pair copy a report needs.
pub(crate) fn snapshot<A>(ledger: &Ledger<A>, observer: &Observer) -> PoolSnapshot {
    let now = Ticks::now();
    let parts = ledger.snapshot_parts(now);
    let holders = ledger.holders(now);
    let waiters = ledger.waiters();
    build_snapshot(observer, now, &parts, &holders, &waiters)
}

pub(crate) use crate::observe::holder_state;

fn latency(s: Summary) -> LatencySummary {
    LatencySummary {
        count: s.count,
        mean: s.mean,
        p50: s.p50,
        p99: s.p99,
        max: s.max,
    }
}

impl PoolView {
    /// The pressure timeline, oldest tick first.
    pub(crate) fn timeline(&self) -> Vec<PressureSample> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.archive
            .timeline
            .iter()
            .map(|t| PressureSample {
                offset_ms: self.archive.created.until(t.ended).as_millis() as u64,
                in_use: t.in_use,
                idle: t.idle,
                waiting: t.waiting,
                peak_waiting: t.peak_waiting,
                max_size: t.max_size,
                checkouts: t.usage.checkouts,
                interval_ms: t.started.until(t.ended).as_millis() as u64,
                connection_ms: ms(t.usage.held),
                busy_ms: ms(t.usage.busy),
                idle_in_transaction_ms: ms(t.usage.idle_in_transaction),
                waited_ms: ms(t.usage.waited),
                saturated: t.saturated,
                runtime_lag_ms: t.lag.mean().map(ms),
            })
            .collect()
    }

    /// The plain-data snapshot.
    pub(crate) fn snapshot(&self, observer: &Observer) -> PoolSnapshot {
        build_snapshot(
            observer,
            self.now,
            &self.parts,
            &self.holders,
            &self.waiters,
        )
    }
}

fn build_snapshot(
    observer: &Observer,
    now: Ticks,
    parts: &SnapshotParts,
    holders: &[Holder],
    waiters: &[Waiter],
) -> PoolSnapshot {
    let mut sites: Vec<SiteSnapshot> = parts
        .sites
        .iter()
        .map(|(site, totals)| SiteSnapshot {
            site: *site,
            checkouts: totals.counts.checkouts,
            outstanding: holders.iter().filter(|h| h.key.site == *site).count() as u64,
            wait: latency(totals.summary.wait),
            hold: latency(totals.summary.hold),
            hold_total: totals.counts.hold_total,
            connection_time: totals.usage.held,
            outcomes: totals.counts.outcomes,
            failures: totals.counts.failures,
            cancelled: totals.counts.cancelled,
            database: database_stats(&totals.counts.database),
        })
        .collect();
    sites.sort_by(|a, b| {
        b.connection_time
            .cmp(&a.connection_time)
            .then(b.hold_total.cmp(&a.hold_total))
            .then(a.site.cmp(&b.site))
    });
    let mut spans: Vec<SpanSnapshot> = parts
        .spans
        .iter()
        .map(|(span, totals)| SpanSnapshot {
            span: *span,
            checkouts: totals.counts.checkouts,
            outstanding: holders.iter().filter(|h| h.key.span == *span).count() as u64,
            wait: latency(totals.summary.wait),
            hold: latency(totals.summary.hold),
            hold_total: totals.counts.hold_total,
            connection_time: totals.usage.held,
            outcomes: totals.counts.outcomes,
            database: database_stats(&totals.counts.database),
        })
        .collect();
    spans.sort_by(|a, b| {
        b.connection_time
            .cmp(&a.connection_time)
            .then(b.hold_total.cmp(&a.hold_total))
            .then(a.span.cmp(&b.span))
    });
    let outstanding = holders
        .iter()
        .map(|h| OutstandingGuard {
            id: h.id,
            site: h.site(),
            span: h.span,
            held: h.held(now),
            busy: h
                .activity
                .as_ref()
                .map_or(Duration::ZERO, |a| a.so_far.busy),
            state: holder_state(h),
            backend_pid: h.activity.as_ref().and_then(|a| a.backend_pid),
            last_statement: h
                .activity
                .as_ref()
                .and_then(|a| a.last_statement.as_deref())
                .and_then(|raw| observer.statement(raw)),
            in_transaction: h.activity.as_ref().is_some_and(|a| a.transaction.is_open()),
            nested_wait: h.nested_waiting,
        })
        .collect();
    let waiters = waiters
        .iter()
        .map(|w| WaitingAcquire {
            site: w.site(),
            span: w.span,
            waited: w.waited(now),
            nested: w.nested,
        })
        .collect();
    let counts = &parts.lifetime;
    let lifetime = LifetimeTotals {
        checkouts: counts.checkouts,
        holds: counts.holds,
        hold_total: counts.hold_total,
        failures: counts.failures,
        cancelled: counts.cancelled,
        outcomes: counts.outcomes,
        error_paths: counts.error_paths(),
    };
    PoolSnapshot {
        pool: observer.pool.clone(),
        status: observer.status(),
        window: parts.window_start.until(now),
        outstanding,
        waiters,
        sites,
        spans,
        spans_visible: parts.spans_seen || holders.iter().any(|h| h.span.is_some()),
        lifetime,
    }
}

pub(crate) fn database_stats(db: &crate::ledger::DatabaseCounts) -> DatabaseStats {
    DatabaseStats {
        observed_holds: db.observed_holds,
        busy_total: db.busy_total,
        idle_in_transaction_total: db.idle_in_transaction_total,
        statements: db.statements,
        committed: db.committed,
        rolled_back: db.rolled_back,
        rolled_back_by_drop: db.rolled_back_by_drop,
        rolled_back_after_error: db.rolled_back_after_error,
        transaction_total: db.transaction_total,
        transaction_idle_total: db.transaction_idle_total,
        open_transaction_at_return: db.open_transaction_at_return,
        in_flight_at_drop: db.in_flight_at_return,
    }
}
