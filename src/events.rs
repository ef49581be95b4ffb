//! Everything poolwatch says through `tracing` (target `poolwatch`), as
//! structured fields. Called by [`crate::observe`] only, after the ledger's
//! locks are released, with plain values; nothing here reads the ledger,
//! aggregates or records a metric.
//!
//! Every emission runs inside `catch_unwind`: a subscriber that panics
//! must not take a guard's `Drop` (and with it the pool's slot) down.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::outcome::{AcquireFailure, Outcome};
use crate::site::{CallSite, SpanInfo};
use crate::snapshot::PoolStatus;

/// The tracing target of every poolwatch event.
pub const TARGET: &str = "poolwatch";

pub(crate) use crate::human::{human, millis};

/// `Option<SpanInfo>` as a field value: the span's name, or empty.
pub(crate) struct SpanName(pub(crate) Option<SpanInfo>);

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

/// The fields of every event about one hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hold<'a> {
    pub(crate) pool: &'a str,
    pub(crate) guard: u64,
    pub(crate) site: CallSite,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) held: Duration,
    /// Time in database calls, when the connection is observed.
    pub(crate) busy: Option<Duration>,
    pub(crate) backend_pid: Option<i32>,
}

/// The fields of every event about one acquire.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wait<'a> {
    pub(crate) pool: &'a str,
    pub(crate) site: CallSite,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) waited: Duration,
}

/// `tracing::$level!` with a hold's fields first.
macro_rules! hold_event {
    ($level:ident, $h:expr, $($rest:tt)*) => {{
        let h: &Hold<'_> = $h;
        tracing::$level!(
            target: TARGET,
            pool = %h.pool,
            guard = h.guard,
            site = %h.site,
            span = %SpanName(h.span),
            held_ms = millis(h.held),
            busy_ms = h.busy.map(millis),
            backend_pid = h.backend_pid,
            $($rest)*
        )
    }};
}

/// `tracing::$level!` with an acquire's fields first.
macro_rules! wait_event {
    ($level:ident, $w:expr, $($rest:tt)*) => {{
        let w: &Wait<'_> = $w;
        tracing::$level!(
            target: TARGET,
            pool = %w.pool,
            site = %w.site,
            span = %SpanName(w.span),
            waited_ms = millis(w.waited),
            $($rest)*
        )
    }};
}

/// A guard was returned after holding its connection past the threshold.
pub(crate) fn held_past_threshold(
    h: &Hold<'_>,
    threshold: Duration,
    outcome: Outcome,
    status: PoolStatus,
    suppressed: u64,
) {
    guarded(|| {
        hold_event!(
            warn,
            h,
            threshold_ms = millis(threshold),
            outcome = outcome.as_str(),
            in_use = status.in_use(),
            max_size = status.max_size,
            waiting = status.waiting,
            suppressed,
            "connection held for {} (threshold {}) by {}",
            human(h.held),
            human(threshold),
            h.site,
        );
    });
}

/// A guard was dropped while its thread was panicking.
pub(crate) fn dropped_while_panicking(h: &Hold<'_>, backtrace: Option<&str>, suppressed: u64) {
    guarded(|| {
        hold_event!(
            warn,
            h,
            outcome = Outcome::DroppedWhilePanicking.as_str(),
            backtrace,
            suppressed,
            "connection from {} dropped while panicking after {}",
            h.site,
            human(h.held),
        );
    });
}

/// What was wrong with a connection at its return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Poison {
    /// A call was still in flight (its future dropped unfinished).
    InFlight,
    /// The connection was inside a transaction.
    OpenTransaction,
}

/// A connection came back in a state the next caller must not inherit;
/// `action` says what poolwatch did about it.
pub(crate) fn returned_poisoned(
    h: &Hold<'_>,
    poison: Poison,
    statement: Option<&str>,
    transaction_site: Option<CallSite>,
    (action, what): (&'static str, &'static str),
    suppressed: u64,
) {
    let statement = statement.unwrap_or("");
    guarded(|| match poison {
        Poison::InFlight => hold_event!(
            warn,
            h,
            statement,
            action,
            suppressed,
            "connection from {} returned with a database call in flight (its future was \
             dropped unfinished; the server may still be running it): {}; last statement: {}",
            h.site,
            what,
            statement,
        ),
        Poison::OpenTransaction => hold_event!(
            warn,
            h,
            statement,
            transaction_site = transaction_site.map(tracing::field::display),
            action,
            suppressed,
            "connection from {} returned inside a transaction: {}; last statement: {}",
            h.site,
            what,
            statement,
        ),
    });
}

/// The integration stopped following a connection's protocol (once per
/// connection, said when a hold on it ends).
pub(crate) fn observation_lost(h: &Hold<'_>, reason: &str) {
    guarded(|| {
        hold_event!(
            warn,
            h,
            reason,
            "stopped following the protocol of the connection held by {} ({}); its busy time, \
             statements and transaction state are not known from here on",
            h.site,
            reason,
        );
    });
}

/// An acquire succeeded, but only after waiting past the threshold.
pub(crate) fn slow_acquire(w: &Wait<'_>, guard: u64, threshold: Duration, suppressed: u64) {
    guarded(|| {
        wait_event!(
            warn,
            w,
            guard,
            threshold_ms = millis(threshold),
            suppressed,
            "acquire at {} waited {} for a connection (threshold {})",
            w.site,
            human(w.waited),
            human(threshold),
        );
    });
}

/// Who holds the pool, for the events that list holders.
#[derive(Clone, Copy)]
pub(crate) struct Holders<'a> {
    /// Connections held by poolwatch guards.
    pub(crate) held: usize,
    pub(crate) status: PoolStatus,
    /// `12 by src/jobs.rs:42:5 (oldest 1m 35s, 12 idle in transaction), …`
    pub(crate) list: &'a dyn fmt::Display,
    /// `guard 12 at src/pay.rs:40:9, idle in transaction for 1.4s (blocks
    /// 5)`: empty unless the server said who blocks the holders.
    pub(crate) blocking: &'a dyn fmt::Display,
}

/// An acquire failed: say who holds the pool right now.
pub(crate) fn acquire_failed(
    w: &Wait<'_>,
    failure: AcquireFailure,
    error: &str,
    holders: Holders<'_>,
    suppressed: u64,
) {
    let what = match failure {
        AcquireFailure::Timeout => "timed out",
        AcquireFailure::Closed => "is closed; acquire failed",
        AcquireFailure::Backend => "could not connect",
        AcquireFailure::NoRuntime => "has no runtime for its timeout; acquire failed",
    };
    guarded(|| {
        wait_event!(
            warn,
            w,
            failure = failure.as_str(),
            error,
            held = holders.held,
            max_size = holders.status.max_size,
            waiting = holders.status.waiting,
            holders = %holders.list,
            blocking = %holders.blocking,
            suppressed,
            "pool {} {} after {} at {}; {}/{} held: {}",
            w.pool,
            what,
            human(w.waited),
            w.site,
            holders.held,
            holders.status.max_size,
            holders.list,
        );
    });
}

/// An acquire was given up by its caller (its future dropped while it
/// waited: a request timeout, `select!`).
pub(crate) fn acquire_cancelled(w: &Wait<'_>, holders: Holders<'_>, suppressed: u64) {
    guarded(|| {
        wait_event!(
            warn,
            w,
            held = holders.held,
            max_size = holders.status.max_size,
            waiting = holders.status.waiting,
            holders = %holders.list,
            blocking = %holders.blocking,
            suppressed,
            "acquire at {} was cancelled by its caller after waiting {}; {}/{} held: {}",
            w.site,
            human(w.waited),
            holders.held,
            holders.status.max_size,
            holders.list,
        );
    });
}

/// A task asked for a second connection while holding one of the same
/// pool, and has to wait: if every holder does this, none can go on.
pub(crate) fn nested_checkout(w: &Wait<'_>, holder: &Hold<'_>, max_size: usize, suppressed: u64) {
    guarded(|| {
        wait_event!(
            warn,
            w,
            holder_guard = holder.guard,
            holder_site = %holder.site,
            holder_held_ms = millis(holder.held),
            max_size,
            suppressed,
            "nested checkout: the task waiting at {} already holds guard {} from {} (held {}) \
             of the same pool; if the holders of all {} connections do this, they wait for \
             each other forever (self-deadlock)",
            w.site,
            holder.guard,
            holder.site,
            human(holder.held),
            max_size,
        );
    });
}

/// Callers are stuck waiting right now.
#[derive(Clone, Copy)]
pub(crate) struct Stuck<'a> {
    pub(crate) pool: &'a str,
    pub(crate) waiting: usize,
    pub(crate) oldest: Duration,
    pub(crate) threshold: Duration,
    /// `3 at src/api.rs:88:9 (oldest 3s), …`
    pub(crate) waiters: &'a dyn fmt::Display,
    pub(crate) holders: Holders<'a>,
}

/// Callers have waited past the slow-acquire threshold and are still
/// waiting (one per episode, then rate-limited).
pub(crate) fn stuck_waiters(stuck: &Stuck<'_>, suppressed: u64) {
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            pool = %stuck.pool,
            waiting = stuck.waiting,
            oldest_wait_ms = millis(stuck.oldest),
            threshold_ms = millis(stuck.threshold),
            waiters = %stuck.waiters,
            held = stuck.holders.held,
            max_size = stuck.holders.status.max_size,
            holders = %stuck.holders.list,
            blocking = %stuck.holders.blocking,
            suppressed,
            "pool {}: {} caller(s) waiting for a connection, the oldest for {} (threshold {}): \
             {}; {}/{} held: {}",
            stuck.pool,
            stuck.waiting,
            human(stuck.oldest),
            human(stuck.threshold),
            stuck.waiters,
            stuck.holders.held,
            stuck.holders.status.max_size,
            stuck.holders.list,
        );
    });
}

/// The callers stuck waiting are all served (the end of an episode).
pub(crate) fn waiters_served(pool: &str, lasted: Duration) {
    guarded(|| {
        tracing::info!(
            target: TARGET,
            pool = %pool,
            lasted_ms = millis(lasted),
            "pool {}: no caller waits past the threshold any more (after {})",
            pool,
            human(lasted),
        );
    });
}

/// A watched transaction ended.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
pub(crate) struct TransactionEnd<'a> {
    pub(crate) hold: Hold<'a>,
    pub(crate) transaction_site: CallSite,
    pub(crate) ending: &'static str,
    pub(crate) duration: Duration,
    pub(crate) idle: Option<Duration>,
    pub(crate) statement: Option<&'a str>,
    /// The SQLSTATE of the error a transaction rolled back after.
    pub(crate) sqlstate: Option<&'a str>,
}

/// WARN for a transaction dropped without commit or rollback (the `?`
/// early return), DEBUG for the others (one dropped after a database
/// error, the `?` on that error, among them: the error is the service's
/// to report).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
pub(crate) fn transaction_ended(t: &TransactionEnd<'_>, by_drop: bool, suppressed: u64) {
    let statement = t.statement.unwrap_or("");
    let idle = t.idle.map(millis);
    guarded(|| {
        if by_drop {
            hold_event!(
                warn,
                &t.hold,
                transaction_site = %t.transaction_site,
                transaction_ms = millis(t.duration),
                idle_in_transaction_ms = idle,
                statement,
                ending = t.ending,
                suppressed,
                "transaction begun at {} was dropped without commit or rollback after {} \
                 (rolled back by drop; last statement: {})",
                t.transaction_site,
                human(t.duration),
                statement,
            );
        } else {
            hold_event!(
                debug,
                &t.hold,
                transaction_site = %t.transaction_site,
                transaction_ms = millis(t.duration),
                idle_in_transaction_ms = idle,
                ending = t.ending,
                sqlstate = t.sqlstate,
                "transaction begun at {} {} after {}",
                t.transaction_site,
                t.ending,
                human(t.duration),
            );
        }
    });
}

#[cfg(feature = "leak-report")]
/// What the watchdog reports about a guard still held.
#[derive(Clone, Copy)]
pub(crate) struct StillHeld<'a> {
    pub(crate) hold: Hold<'a>,
    pub(crate) level: u8,
    pub(crate) threshold: Duration,
    pub(crate) status: PoolStatus,
    /// `in a database call`, `idle in transaction`, … when observed.
    pub(crate) state: Option<&'static str>,
    pub(crate) statement: Option<&'a str>,
    /// What the database server says its backend does, when it said.
    pub(crate) server: Option<&'a str>,
    pub(crate) backtrace: Option<&'a str>,
}

#[cfg(feature = "leak-report")]
/// The watchdog found a guard held past the threshold (times the
/// escalation factor of its level) and not yet returned.
pub(crate) fn still_held(s: &StillHeld<'_>, suppressed: u64) {
    guarded(|| {
        hold_event!(
            warn,
            &s.hold,
            threshold_ms = millis(s.threshold),
            flag = s.level,
            state = s.state,
            statement = s.statement,
            server_state = s.server,
            in_use = s.status.in_use(),
            max_size = s.status.max_size,
            waiting = s.status.waiting,
            backtrace = s.backtrace,
            suppressed,
            "connection from {} still held after {} (threshold {}){}{}; pool {}: {}/{} in use, {} waiting",
            s.hold.site,
            human(s.hold.held),
            human(s.threshold),
            StateSuffix(s.state),
            ServerSuffix(s.server),
            s.hold.pool,
            s.status.in_use(),
            s.status.max_size,
            s.status.waiting,
        );
    });
}

#[cfg(feature = "leak-report")]
/// `, idle in transaction`, or nothing.
struct StateSuffix(Option<&'static str>);

#[cfg(feature = "leak-report")]
impl fmt::Display for StateSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(state) => write!(f, ", {state}"),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "leak-report")]
/// `; server: waiting on a lock (…) for 1.2s`, or nothing.
struct ServerSuffix<'a>(Option<&'a str>);

#[cfg(feature = "leak-report")]
impl fmt::Display for ServerSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(server) => write!(f, "; server: {server}"),
            None => Ok(()),
        }
    }
}

/// A guard the watchdog had flagged was returned after all ("unleaked").
pub(crate) fn returned_after_flagged(h: &Hold<'_>, outcome: Outcome, suppressed: u64) {
    guarded(|| {
        hold_event!(
            info,
            h,
            outcome = outcome.as_str(),
            suppressed,
            "connection from {} returned after being flagged; held {} in total",
            h.site,
            human(h.held),
        );
    });
}

/// A guard was detached from the pool with `Guard::take`.
pub(crate) fn detached(h: &Hold<'_>, backtrace: Option<&str>, suppressed: u64) {
    guarded(|| {
        hold_event!(
            info,
            h,
            outcome = Outcome::Detached.as_str(),
            backtrace,
            suppressed,
            "connection from {} detached from the pool after {}",
            h.site,
            human(h.held),
        );
    });
}

#[cfg(feature = "leak-report")]
/// A guard still held when its pool closed or was dropped: it was never
/// returned.
pub(crate) fn never_returned(
    h: &Hold<'_>,
    ending: &'static str,
    why: &str,
    backtrace: Option<&str>,
) {
    guarded(|| {
        hold_event!(
            error,
            h,
            ending,
            backtrace,
            "connection from {} never returned: still held after {} when {}",
            h.site,
            human(h.held),
            why,
        );
    });
}

#[cfg(feature = "leak-report")]
/// More guards were never returned than are listed one by one.
pub(crate) fn never_returned_more(pool: &str, more: usize, sites: &dyn fmt::Display, why: &str) {
    guarded(|| {
        tracing::error!(
            target: TARGET,
            pool = %pool,
            more,
            sites = %sites,
            "{} more connection(s) never returned when {}: {}",
            more,
            why,
            sites,
        );
    });
}

/// What the rate limits left out and no later event carried.
pub(crate) fn suppressed_summary(pool: &str, counts: &dyn fmt::Display, total: u64) {
    guarded(|| {
        tracing::info!(
            target: TARGET,
            pool = %pool,
            suppressed = total,
            counts = %counts,
            "pool {}: {} event(s) left out by rate limits: {}",
            pool,
            total,
            counts,
        );
    });
}

#[cfg(feature = "leak-report")]
/// The watchdog thread could not be started.
pub(crate) fn watchdog_unavailable(error: &std::io::Error) {
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            error = %error,
            "poolwatch could not start its watchdog thread; guards are reported only when returned",
        );
    });
}

/// A background thread could not be started.
pub(crate) fn sampler_unavailable(error: &std::io::Error) {
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            error = %error,
            "poolwatch could not start its sampler thread; no timeline, no stuck-waiter reports",
        );
    });
}

/// The server view failed (permissions, server down, timeout): once per
/// run of failures. The diagnosis goes on without the server's side.
pub(crate) fn server_view_failed(pool: &str, error: &str) {
    guarded(|| {
        tracing::warn!(
            target: TARGET,
            pool,
            error,
            "pool {pool}: poolwatch cannot ask the database server about its connections ({error}); \
             the diagnosis goes on from what the application sees",
        );
    });
}

/// The periodic report: INFO with the verdicts as a field and the whole
/// table as the message.
pub(crate) fn periodic_report(
    pool: &str,
    verdicts: &str,
    flagged: usize,
    report: &dyn fmt::Display,
) {
    guarded(|| {
        tracing::info!(
            target: TARGET,
            pool = %pool,
            verdicts = %verdicts,
            flagged,
            "{}",
            report
        );
    });
}
