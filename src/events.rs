//! Everything poolwatch says through `tracing` (target `poolwatch`).
//!
//! Events are emitted after the ledger's locks are released, and inside
//! `catch_unwind`: a subscriber that panics must not take a guard's `Drop`
//! (and with it the pool's slot) down.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::ledger::activity::{TransactionEnded, TransactionEnding};
use crate::ledger::connections::LastHolder;
#[cfg(feature = "leak-report")]
use crate::ledger::Flagged;
use crate::ledger::{Closed, Ledger, Settings, Ticks, TransactionHolder};
use crate::outcome::{AcquireFailure, Outcome};
use crate::site::{CallSite, SpanInfo, SpanRef};
use crate::snapshot::PoolStatus;

/// The tracing target of every poolwatch event.
pub const TARGET: &str = "poolwatch";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration rounded for people: `850us`, `42ms`, `1s 250ms`, `1m 35s`.
pub(crate) fn human(d: Duration) -> humantime::FormattedDuration {
    let rounded = if d < Duration::from_millis(1) {
        Duration::from_micros(d.as_micros() as u64)
    } else if d < Duration::from_secs(10) {
        Duration::from_millis(millis(d))
    } else {
        Duration::from_secs(d.as_secs())
    };
    humantime::format_duration(rounded)
}

/// `Option<SpanInfo>` as a field value: the span's name, or empty.
struct SpanName(Option<SpanInfo>);

impl fmt::Display for SpanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(span) => f.write_str(span.name),
            None => Ok(()),
        }
    }
}

fn guarded(emit: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(emit));
}

/// A guard was returned after holding its connection past the threshold.
/// Rate-limited per pool; `suppressed` counts what was left out.
pub(crate) fn held_past_threshold(settings: &Settings, closed: &Closed, outcome: Outcome) {
    let Some(permit) = settings.held_past_threshold_events.permit() else {
        return;
    };
    let threshold = settings.hold_threshold();
    let status = settings.pool_status().unwrap_or_default();
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            pool = %settings.pool_name,
            guard = closed.id,
            site = %closed.site(),
            span = %SpanName(closed.span()),
            held_ms = millis(closed.held),
            busy_ms = millis(closed.activity().busy),
            backend_pid = closed.activity().backend_pid,
            threshold_ms = millis(threshold),
            outcome = outcome.as_str(),
            in_use = status.in_use(),
            max_size = status.max_size,
            waiting = status.waiting,
            suppressed = permit.suppressed,
            "connection held for {} (threshold {}) by {}",
            human(closed.held),
            human(threshold),
            closed.site(),
        );
    });
}

/// The `backtrace` field of a closed record: the symbolised stack, when
/// `leak-report` captured one.
fn closed_backtrace(closed: &Closed) -> Option<String> {
    #[cfg(feature = "leak-report")]
    return crate::stack::render_opt(closed.stack.as_ref());
    #[cfg(not(feature = "leak-report"))]
    {
        let _ = closed;
        None
    }
}

/// A guard was dropped while its thread was panicking.
pub(crate) fn dropped_while_panicking(settings: &Settings, closed: &Closed) {
    guarded(|| {
        let backtrace = closed_backtrace(closed);
        tracing::warn!(
            target: TARGET,
            pool = %settings.pool_name,
            guard = closed.id,
            site = %closed.site(),
            span = %SpanName(closed.span()),
            held_ms = millis(closed.held),
            busy_ms = millis(closed.activity().busy),
            backend_pid = closed.activity().backend_pid,
            outcome = Outcome::DroppedWhilePanicking.as_str(),
            backtrace = backtrace.as_deref(),
            "connection from {} dropped while panicking after {}",
            closed.site(),
            human(closed.held),
        );
    });
}

/// An acquire succeeded, but only after waiting past the threshold.
pub(crate) fn slow_acquire(
    settings: &Settings,
    guard: u64,
    site: CallSite,
    span: Option<SpanInfo>,
    waited: Duration,
) {
    let Some(permit) = settings.slow_acquire_events.permit() else {
        return;
    };
    let threshold = settings.slow_acquire();
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            pool = %settings.pool_name,
            guard,
            site = %site,
            span = %SpanName(span),
            waited_ms = millis(waited),
            threshold_ms = millis(threshold),
            suppressed = permit.suppressed,
            "acquire at {} waited {} for a connection (threshold {})",
            site,
            human(waited),
            human(threshold),
        );
    });
}

/// Outstanding guards of one call site: the "who holds the pool" line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holders {
    pub(crate) site: CallSite,
    pub(crate) count: usize,
    pub(crate) oldest: Duration,
}

/// Groups the outstanding guards by call site, most guards first.
pub(crate) fn holders(ledger: &Ledger, now: Ticks) -> Vec<Holders> {
    let mut groups: Vec<Holders> = Vec::new();
    ledger.for_each_outstanding(|entry| {
        let site = entry.site();
        let held = entry.held(now);
        match groups.iter_mut().find(|g| g.site == site) {
            Some(g) => {
                g.count += 1;
                g.oldest = g.oldest.max(held);
            }
            None => groups.push(Holders {
                site,
                count: 1,
                oldest: held,
            }),
        }
    });
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.oldest.cmp(&a.oldest)));
    groups
}

/// `12 by src/jobs/cleanup.rs:42:5 (oldest 1m 35s), 4 by …`
struct HolderList<'a>(&'a [Holders]);

impl fmt::Display for HolderList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none by poolwatch guards");
        }
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} by {} (oldest {})", g.count, g.site, human(g.oldest))?;
        }
        Ok(())
    }
}

/// What a failed acquire reports.
pub(crate) struct FailedAcquire<'a> {
    pub(crate) site: CallSite,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) waited: Duration,
    pub(crate) failure: AcquireFailure,
    pub(crate) error: &'static str,
    pub(crate) status: PoolStatus,
    pub(crate) holders: &'a [Holders],
    /// Failed-acquire events left out by the rate limit since the last one.
    pub(crate) suppressed: u64,
}

/// An acquire failed: say who holds the pool right now.
pub(crate) fn acquire_failed(settings: &Settings, failed: &FailedAcquire<'_>) {
    let held: usize = failed.holders.iter().map(|h| h.count).sum();
    let what = match failed.failure {
        AcquireFailure::Timeout => "timed out",
        AcquireFailure::Closed => "is closed; acquire failed",
        AcquireFailure::Backend => "could not connect",
        AcquireFailure::NoRuntime => "has no runtime for its timeout; acquire failed",
    };
    let holders = HolderList(failed.holders);
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            pool = %settings.pool_name,
            site = %failed.site,
            span = %SpanName(failed.span),
            waited_ms = millis(failed.waited),
            failure = failed.failure.as_str(),
            error = %failed.error,
            held,
            max_size = failed.status.max_size,
            waiting = failed.status.waiting,
            holders = %holders,
            suppressed = failed.suppressed,
            "pool {} {} after {} at {}; {}/{} held: {}",
            settings.pool_name,
            what,
            human(failed.waited),
            failed.site,
            held,
            failed.status.max_size,
            holders,
        );
    });
}

/// What the guard did with the connection that the next caller must not
/// inherit: a call still in flight, an open transaction.
/// Inline, so the common hold (no finding) costs a test, not a call.
#[inline]
pub(crate) fn database_findings(settings: &Settings, closed: &Closed) {
    let activity = closed.activity();
    if activity.in_flight || activity.open_transaction {
        report_database_findings(settings, closed);
    }
}

#[cold]
#[inline(never)]
fn report_database_findings(settings: &Settings, closed: &Closed) {
    let activity = closed.activity();
    let statement = activity.last_statement.to_display();
    let statement = statement.as_deref().unwrap_or("");
    let action = if closed.evict {
        "evicted"
    } else {
        "rolled_back_at_next_checkout"
    };
    if activity.in_flight {
        guarded(|| {
            tracing::warn!(
                target: TARGET,
                pool = %settings.pool_name,
                guard = closed.id,
                site = %closed.site(),
                span = %SpanName(closed.span()),
                held_ms = millis(closed.held),
                busy_ms = millis(activity.busy),
                backend_pid = activity.backend_pid,
                statement,
                action,
                "connection from {} dropped with a database call in flight (its future was \
                 dropped unfinished); the server may still be running it, connection {}",
                closed.site(),
                action,
            );
        });
    }
    if activity.open_transaction {
        let transaction_site = activity.transaction_site.map(CallSite::from);
        guarded(|| {
            tracing::warn!(
                target: TARGET,
                pool = %settings.pool_name,
                guard = closed.id,
                site = %closed.site(),
                span = %SpanName(closed.span()),
                held_ms = millis(closed.held),
                busy_ms = millis(activity.busy),
                backend_pid = activity.backend_pid,
                transaction_site = transaction_site.map(tracing::field::display),
                statement,
                action,
                "connection from {} returned with an open transaction; connection {}",
                closed.site(),
                action,
            );
        });
    }
}

/// An instrumented transaction ended: WARN when it was dropped without
/// commit or rollback (the `?` early-return path), DEBUG otherwise.
pub(crate) fn transaction_ended(
    settings: &Settings,
    entry: &TransactionHolder,
    ended: &TransactionEnded,
) {
    #[cfg(feature = "metrics")]
    if ended.ending == TransactionEnding::RolledBackByDrop {
        settings
            .metrics
            .error_path(crate::export::ErrorPath::RolledBackByDrop);
    }
    let site = CallSite::from(entry.location);
    let transaction_site = CallSite::from(ended.site);
    let statement = entry.last_statement.to_display();
    let statement = statement.as_deref().unwrap_or("");
    guarded(|| {
        if ended.ending == TransactionEnding::RolledBackByDrop {
            tracing::warn!(
                target: TARGET,
                pool = %settings.pool_name,
                guard = entry.id,
                site = %site,
                transaction_site = %transaction_site,
                span = %SpanName(entry.span.map(SpanRef::info)),
                transaction_ms = millis(ended.duration),
                idle_in_transaction_ms = millis(ended.idle),
                backend_pid = entry.backend_pid,
                statement,
                ending = ended.ending.as_str(),
                "transaction begun at {} was dropped without commit or rollback after {} \
                 (rolled back by drop; last statement: {})",
                transaction_site,
                human(ended.duration),
                statement,
            );
        } else {
            tracing::debug!(
                target: TARGET,
                pool = %settings.pool_name,
                guard = entry.id,
                site = %site,
                transaction_site = %transaction_site,
                span = %SpanName(entry.span.map(SpanRef::info)),
                transaction_ms = millis(ended.duration),
                idle_in_transaction_ms = millis(ended.idle),
                backend_pid = entry.backend_pid,
                ending = ended.ending.as_str(),
                "transaction begun at {} {} after {} ({} idle)",
                transaction_site,
                ended.ending.as_str(),
                human(ended.duration),
                human(ended.idle),
            );
        }
    });
}

/// The recycle probe found a connection inside a transaction.
pub(crate) fn open_transaction_at_recycle(
    settings: &Settings,
    backend_pid: Option<i32>,
    holder: Option<LastHolder>,
    action: &'static str,
) {
    let site = holder.map(|h| CallSite::from(h.location));
    let guard = holder.map(|h| h.guard);
    let by = match site {
        Some(site) => site.to_string(),
        None => "an uninstrumented holder".to_owned(),
    };
    guarded(|| {
        if holder.is_some_and(|h| h.reported_open_transaction) {
            tracing::debug!(
                target: TARGET,
                pool = %settings.pool_name,
                guard,
                site = site.map(tracing::field::display),
                backend_pid,
                action,
                "open transaction left by {} cleaned at checkout ({})",
                by,
                action,
            );
        } else {
            tracing::warn!(
                target: TARGET,
                pool = %settings.pool_name,
                guard,
                site = site.map(tracing::field::display),
                backend_pid,
                action,
                "connection returned by {} was still inside a transaction; found at the next \
                 checkout ({})",
                by,
                action,
            );
        }
    });
}

/// The watchdog found a guard held past the threshold (times the
/// escalation factor of `flagged.level`) and not yet returned.
#[cfg(feature = "leak-report")]
pub(crate) fn still_held(
    settings: &Settings,
    flagged: &Flagged,
    threshold: Duration,
    status: PoolStatus,
) {
    guarded(|| {
        if !tracing::enabled!(target: TARGET, tracing::Level::WARN) {
            return; // nobody listens: skip the symbolisation
        }
        let backtrace = crate::stack::render_opt(flagged.stack.as_ref());
        tracing::warn!(
            target: TARGET,
            pool = %settings.pool_name,
            guard = flagged.id,
            site = %flagged.site,
            span = %SpanName(flagged.span),
            held_ms = millis(flagged.held),
            threshold_ms = millis(threshold),
            flag = flagged.level,
            in_use = status.in_use(),
            max_size = status.max_size,
            waiting = status.waiting,
            backtrace = backtrace.as_deref(),
            "connection from {} still held after {} (threshold {}); pool {}: {}/{} in use, {} waiting",
            flagged.site,
            human(flagged.held),
            human(threshold),
            settings.pool_name,
            status.in_use(),
            status.max_size,
            status.waiting,
        );
    });
}

/// A guard the watchdog had flagged was returned after all ("unleaked").
#[cfg(feature = "leak-report")]
pub(crate) fn returned_after_flagged(settings: &Settings, closed: &Closed, outcome: Outcome) {
    guarded(|| {
        tracing::info!(
            target: TARGET,
            pool = %settings.pool_name,
            guard = closed.id,
            site = %closed.site(),
            span = %SpanName(closed.span()),
            held_ms = millis(closed.held),
            outcome = outcome.as_str(),
            "connection from {} returned after being flagged; held {} in total",
            closed.site(),
            human(closed.held),
        );
    });
}

/// A guard was detached from the pool with `Guard::take`.
#[cfg(feature = "leak-report")]
pub(crate) fn detached(settings: &Settings, closed: &Closed) {
    guarded(|| {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let backtrace = closed_backtrace(closed);
        tracing::info!(
            target: TARGET,
            pool = %settings.pool_name,
            guard = closed.id,
            site = %closed.site(),
            span = %SpanName(closed.span()),
            held_ms = millis(closed.held),
            outcome = Outcome::Detached.as_str(),
            backtrace = backtrace.as_deref(),
            "connection from {} detached from the pool after {}",
            closed.site(),
            human(closed.held),
        );
    });
}

/// Why a never-returned report was made.
#[cfg(feature = "leak-report")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `WatchedPool::close`.
    Closed,
    /// The last `WatchedPool` handle was dropped.
    Dropped,
}

#[cfg(feature = "leak-report")]
impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Dropped => "dropped",
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Ending::Closed => "the pool was closed",
            Ending::Dropped => "the last pool handle was dropped",
        }
    }
}

/// A guard still held when its pool closed or was dropped: it was never
/// returned.
#[cfg(feature = "leak-report")]
pub(crate) fn never_returned(settings: &Settings, flagged: &Flagged, ending: Ending) {
    guarded(|| {
        let backtrace = if tracing::enabled!(target: TARGET, tracing::Level::ERROR) {
            crate::stack::render_opt(flagged.stack.as_ref())
        } else {
            None
        };
        tracing::error!(
            target: TARGET,
            pool = %settings.pool_name,
            guard = flagged.id,
            site = %flagged.site,
            span = %SpanName(flagged.span),
            held_ms = millis(flagged.held),
            ending = ending.as_str(),
            backtrace = backtrace.as_deref(),
            "connection from {} never returned: still held after {} when {}",
            flagged.site,
            human(flagged.held),
            ending.describe(),
        );
    });
}

/// The watchdog thread could not be started.
#[cfg(feature = "leak-report")]
pub(crate) fn watchdog_unavailable(error: &std::io::Error) {
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            error = %error,
            "poolwatch could not start its watchdog thread; guards are reported only when returned",
        );
    });
}

/// The periodic report (`POOLWATCH_REPORT_EVERY`): INFO with the verdicts
/// as a field and the whole table as the message.
pub(crate) fn periodic_report(report: &crate::report::Report) {
    let verdicts: Vec<&str> = report.verdicts.iter().map(|v| v.kind.as_str()).collect();
    let verdicts = verdicts.join(",");
    guarded(|| {
        tracing::info!(
            target: TARGET,
            pool = %report.pool,
            verdicts = %verdicts,
            flagged = report.flagged.len(),
            "{}",
            report
        );
    });
}
