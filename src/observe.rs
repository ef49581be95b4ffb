//! Reactions: what a closed checkout, a finished acquire, a flag or a
//! tick means, said through `tracing` ([`crate::events`]) and metrics
//! ([`crate::export`]). Runs after the ledger's locks are released; each
//! reaction decides every flag first (past the threshold? an error path?
//! poisoned? within the event budget?), then emits.
//!
//! [`Observer`] is what a pool reacts with: its name, thresholds, event
//! budgets, metric handles and how statement text is shown. Each ledger
//! shard carries an `Arc` of it, so a guard's drop reaches it without
//! touching a shared reference count.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

use crate::events::{self, Hold, Holders, Poison, Wait};
use crate::export::{ErrorPath, HoldEnded, PoolMetrics};
use crate::ledger::{Closed, Holder, Ledger, Ticks, TransactionEnded, TransactionEnding, Waiter};
use crate::outcome::{AcquireFailure, Outcome};
use crate::ratelimit::{Budgets, Family, Permit};
use crate::server::{self, Blocker, ServerProbe, ServerSnapshot};
use crate::site::{CallSite, SpanInfo};
use crate::snapshot::{HolderState, PoolStatus};

/// Reads the wrapped pool's status without knowing its manager type.
pub(crate) type StatusSource = Box<dyn Fn() -> Option<PoolStatus> + Send + Sync>;

/// Shows a statement's raw text (sanitized by the integration), or `None`
/// when statement text is turned off.
pub(crate) type StatementFormat = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[inline]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The thresholds, changeable at runtime.
pub(crate) struct Thresholds {
    hold_ns: AtomicU64,
    slow_acquire_ns: AtomicU64,
}

impl Thresholds {
    pub(crate) fn new(hold: Duration, slow_acquire: Duration) -> Self {
        Self {
            hold_ns: AtomicU64::new(nanos(hold)),
            slow_acquire_ns: AtomicU64::new(nanos(slow_acquire)),
        }
    }
    pub(crate) fn hold(&self) -> Duration {
        Duration::from_nanos(self.hold_ns.load(Ordering::Relaxed))
    }
    pub(crate) fn slow_acquire(&self) -> Duration {
        Duration::from_nanos(self.slow_acquire_ns.load(Ordering::Relaxed))
    }
    pub(crate) fn set_hold(&self, d: Duration) {
        self.hold_ns.store(nanos(d), Ordering::Relaxed);
    }
    pub(crate) fn set_slow_acquire(&self, d: Duration) {
        self.slow_acquire_ns.store(nanos(d), Ordering::Relaxed);
    }
    /// Compared in nanoseconds: cheaper on the hot path than building a
    /// `Duration` from the atomic.
    #[inline]
    pub(crate) fn exceeds_hold(&self, held: Duration) -> bool {
        nanos(held) > self.hold_ns.load(Ordering::Relaxed)
    }
    #[inline]
    pub(crate) fn exceeds_slow_acquire(&self, waited: Duration) -> bool {
        nanos(waited) > self.slow_acquire_ns.load(Ordering::Relaxed)
    }
}

/// What became of the connection of a closed checkout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposal {
    /// Back to the pool.
    Returned,
    /// Closed instead of returned (poisoned).
    Evicted,
    /// Detached and handed to the caller (`Guard::take`,
    /// `Guard::into_inner`).
    KeptByCaller,
}

impl Disposal {
    /// The `action` field of a poisoned connection's event.
    fn as_str(self) -> &'static str {
        match self {
            Disposal::Returned => "rolled_back_before_next_use",
            Disposal::Evicted => "evicted",
            Disposal::KeptByCaller => "kept_by_caller",
        }
    }

    /// What a poisoned connection's message says was done about it.
    fn describe(self) -> &'static str {
        match self {
            Disposal::Returned => "it is rolled back before its next use",
            Disposal::Evicted => "evicted (closed, not returned to the pool)",
            Disposal::KeptByCaller => "handed to the caller as it is",
        }
    }
}

/// Callers stuck waiting: the sampler's episode, so it says so once when
/// it starts, reminds while it lasts, and says when it ends.
#[derive(Default)]
struct StuckEpisode {
    since: Option<Ticks>,
    last_warned: Option<Ticks>,
}

/// How long a family's next event has to carry what its budget left out,
/// before the sampler's summary reports it instead.
const SUMMARY_GRACE: Duration = Duration::from_secs(2);

/// How often a stuck-waiters episode is recalled while it lasts.
const STUCK_REMINDER: Duration = Duration::from_secs(10);

/// What a pool reacts with.
pub(crate) struct Observer {
    pub(crate) pool: String,
    pub(crate) thresholds: Thresholds,
    status: OnceLock<StatusSource>,
    budgets: Budgets,
    pub(crate) metrics: PoolMetrics,
    statement_format: OnceLock<StatementFormat>,
    /// A connection returned inside a transaction is evicted, unless a
    /// recycle hook that rolls it back is installed (then this is false).
    evict_open_transactions: AtomicBool,
    stuck: Mutex<StuckEpisode>,
    /// The database server's view of the holders, when the integration
    /// provides one.
    server: OnceLock<Box<dyn ServerProbe>>,
}

impl Observer {
    pub(crate) fn new(
        pool: &str,
        hold: Duration,
        slow_acquire: Duration,
        metrics_site_labels: usize,
    ) -> Self {
        Self {
            pool: pool.to_owned(),
            thresholds: Thresholds::new(hold, slow_acquire),
            status: OnceLock::new(),
            budgets: Budgets::default(),
            metrics: PoolMetrics::new(pool, metrics_site_labels),
            statement_format: OnceLock::new(),
            evict_open_transactions: AtomicBool::new(true),
            stuck: Mutex::new(StuckEpisode::default()),
            server: OnceLock::new(),
        }
    }

    /// Connects the database integration's server view; the first call
    /// wins.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn set_server_probe(&self, probe: Box<dyn ServerProbe>) {
        let _ = self.server.set(probe);
    }

    /// Whether a server view is connected.
    pub(crate) fn has_server_probe(&self) -> bool {
        self.server.get().is_some()
    }

    /// Asks the server about these holders' backends (rate-limited by the
    /// probe; returns at once).
    pub(crate) fn ask_server(&self, holders: &[Holder]) {
        let Some(probe) = self.server.get() else {
            return;
        };
        let pids = server::pids(holders);
        if !pids.is_empty() {
            probe.request(pids);
        }
    }

    /// Asks the server about these holders now and waits up to `wait`.
    pub(crate) async fn ask_server_now(
        &self,
        holders: &[Holder],
        wait: Duration,
    ) -> Option<ServerSnapshot> {
        let probe = self.server.get()?;
        let pids = server::pids(holders);
        if pids.is_empty() {
            return None;
        }
        probe.ask(pids, wait).await
    }

    /// The server's newest answer, if it still describes `now`.
    pub(crate) fn server_snapshot(&self, now: Ticks) -> Option<ServerSnapshot> {
        self.server
            .get()?
            .latest()
            .filter(|snapshot| snapshot.is_fresh(now))
    }

    /// Says once when the server view starts failing (then not again until
    /// it has answered and fails anew).
    pub(crate) fn report_server_failure(&self) {
        let failure = self.server.get().and_then(|p| p.take_first_failure());
        if let Some(error) = failure {
            events::server_view_failed(&self.pool, &error);
        }
    }

    /// Connects the observer to its pool's status; the first call wins.
    pub(crate) fn set_status_source(&self, status: StatusSource) {
        let _ = self.status.set(status);
    }

    /// The wrapped pool's status, if the pool still exists.
    pub(crate) fn status(&self) -> PoolStatus {
        self.status
            .get()
            .and_then(|status| status())
            .unwrap_or_default()
    }

    /// How the integration shows statement text; the first call wins.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn set_statement_format(&self, format: StatementFormat) {
        let _ = self.statement_format.set(format);
    }

    /// A statement's text as shown in events and snapshots.
    pub(crate) fn statement(&self, raw: &str) -> Option<String> {
        self.statement_format.get().and_then(|format| format(raw))
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn set_evict_open_transactions(&self, evict: bool) {
        self.evict_open_transactions.store(evict, Ordering::Relaxed);
    }

    /// Whether a connection returned in this state must be evicted rather
    /// than returned: a call in flight always; an open transaction unless
    /// a recycle hook rolls it back.
    #[inline]
    pub(crate) fn evicts(&self, closed: &Closed) -> bool {
        closed.poisoned
            && (closed.in_flight() || self.evict_open_transactions.load(Ordering::Relaxed))
    }

    pub(crate) fn permit(&self, family: Family) -> Option<Permit> {
        self.budgets.permit(family)
    }

    /// Events a caller left out by a bound of its own (the watchdog's).
    #[cfg(feature = "leak-report")]
    pub(crate) fn left_out(&self, family: Family, n: u64) {
        self.budgets.left_out(family, n);
    }

    fn hold<'a>(&'a self, closed: &Closed) -> Hold<'a> {
        Hold {
            pool: &self.pool,
            guard: closed.id,
            site: closed.site(),
            span: closed.span,
            held: closed.held,
            busy: closed.activity.as_ref().map(|a| a.hold.busy()),
            backend_pid: closed.activity.as_ref().and_then(|a| a.backend_pid),
        }
    }

    pub(crate) fn holder<'a>(&'a self, holder: &Holder, now: Ticks) -> Hold<'a> {
        Hold {
            pool: &self.pool,
            guard: holder.id,
            site: holder.site(),
            span: holder.span,
            held: holder.held(now),
            busy: holder.activity.as_ref().map(|a| a.so_far.busy),
            backend_pid: holder.activity.as_ref().and_then(|a| a.backend_pid),
        }
    }

    fn wait<'a>(&'a self, site: CallSite, span: Option<SpanInfo>, waited: Duration) -> Wait<'a> {
        Wait {
            pool: &self.pool,
            site,
            span,
            waited,
        }
    }

    /// A checkout was opened: metrics, and the slow-acquire WARN when it
    /// waited past the threshold.
    #[inline]
    pub(crate) fn checked_out(
        &self,
        guard: u64,
        site: impl Fn() -> CallSite,
        span: impl FnOnce() -> Option<SpanInfo>,
        waited: Option<Duration>,
        site_rank: Option<u32>,
    ) {
        self.metrics.checked_out(
            waited.unwrap_or_default(),
            self.metrics.labels_site(site_rank),
            &site,
        );
        // An acquire that did not wait is never slow: skip the comparison.
        if let Some(waited) = waited {
            if self.thresholds.exceeds_slow_acquire(waited) {
                self.slow_acquire(guard, site(), span(), waited);
            }
        }
    }

    #[cold]
    fn slow_acquire(&self, guard: u64, site: CallSite, span: Option<SpanInfo>, waited: Duration) {
        if let Some(permit) = self.permit(Family::SlowAcquire) {
            let threshold = self.thresholds.slow_acquire();
            events::slow_acquire(
                &self.wait(site, span, waited),
                guard,
                threshold,
                permit.suppressed,
            );
        }
    }

    /// An acquire failed. `holders` is called only when the event goes
    /// out (it walks the ledger).
    #[cold]
    pub(crate) fn acquire_failed(
        &self,
        site: CallSite,
        span: Option<SpanInfo>,
        waited: Duration,
        failure: AcquireFailure,
        error: &str,
        holders: impl FnOnce() -> (usize, HolderList),
    ) {
        self.metrics.failed(failure);
        let status = self.status();
        self.metrics.set_status(status);
        let Some(permit) = self.permit(Family::AcquireFailed) else {
            return;
        };
        let (held, list) = holders();
        let holders = Holders {
            held,
            status,
            list: &list,
            blocking: &list.blocking(),
        };
        events::acquire_failed(
            &self.wait(site, span, waited),
            failure,
            error,
            holders,
            permit.suppressed,
        );
    }

    /// An acquire was cancelled by its caller while it waited.
    #[cold]
    pub(crate) fn acquire_cancelled(
        &self,
        site: CallSite,
        span: Option<SpanInfo>,
        waited: Duration,
        holders: impl FnOnce() -> (usize, HolderList),
    ) {
        self.metrics.cancelled();
        let Some(permit) = self.permit(Family::AcquireCancelled) else {
            return;
        };
        let (held, list) = holders();
        let holders = Holders {
            held,
            status: self.status(),
            list: &list,
            blocking: &list.blocking(),
        };
        events::acquire_cancelled(&self.wait(site, span, waited), holders, permit.suppressed);
    }

    /// A task that holds a guard of this pool had to wait for another.
    #[cold]
    pub(crate) fn nested_checkout(
        &self,
        site: CallSite,
        span: Option<SpanInfo>,
        holder: &Holder,
        now: Ticks,
    ) {
        self.metrics.nested();
        if let Some(permit) = self.permit(Family::NestedCheckout) {
            let max_size = self.status().max_size;
            events::nested_checkout(
                &self.wait(site, span, Duration::ZERO),
                &self.holder(holder, now),
                max_size,
                permit.suppressed,
            );
        }
    }

    /// A checkout was closed: metrics always; events only when something
    /// is worth saying (inline, so the common hold costs a few tests).
    #[inline]
    pub(crate) fn closed(&self, closed: &Closed, disposal: Disposal) {
        let past_threshold = self.thresholds.exceeds_hold(closed.held);
        let hold = HoldEnded {
            site_rank: self.metrics.labels_site(closed.site_rank),
            held: closed.held,
            outcome: closed.outcome,
            past_threshold,
            busy: closed.activity.as_ref().map(|a| a.hold.busy()),
            in_flight: closed.in_flight(),
            open_transaction: closed.open_transaction(),
            flagged: closed.was_flagged(),
        };
        self.metrics.closed(&hold, || closed.site());
        if past_threshold
            || closed.outcome != Outcome::Returned
            || closed.poisoned
            || closed.was_flagged()
            || closed
                .activity
                .as_ref()
                .is_some_and(|a| a.observation_lost().is_some())
        {
            self.closed_with_findings(closed, past_threshold, disposal);
        }
    }

    #[cold]
    #[inline(never)]
    fn closed_with_findings(&self, closed: &Closed, past_threshold: bool, disposal: Disposal) {
        let hold = self.hold(closed);
        if closed.outcome == Outcome::DroppedWhilePanicking {
            if let Some(permit) = self.permit(Family::DroppedWhilePanicking) {
                let backtrace = closed_backtrace(closed);
                events::dropped_while_panicking(&hold, backtrace.as_deref(), permit.suppressed);
            }
        }
        if past_threshold {
            if let Some(permit) = self.permit(Family::HeldPastThreshold) {
                let threshold = self.thresholds.hold();
                events::held_past_threshold(
                    &hold,
                    threshold,
                    closed.outcome,
                    self.status(),
                    permit.suppressed,
                );
            }
        }
        if closed.poisoned {
            let action = (disposal.as_str(), disposal.describe());
            let statement = closed
                .activity
                .as_ref()
                .and_then(|a| a.last_statement())
                .and_then(|raw| self.statement(raw));
            for (poison, applies) in [
                (Poison::InFlight, closed.in_flight()),
                (Poison::OpenTransaction, closed.open_transaction()),
            ] {
                if !applies {
                    continue;
                }
                if let Some(permit) = self.permit(Family::ReturnedPoisoned) {
                    let transaction_site = closed
                        .activity
                        .as_ref()
                        .and_then(|a| a.transaction_site())
                        .map(CallSite::from);
                    events::returned_poisoned(
                        &hold,
                        poison,
                        statement.as_deref(),
                        transaction_site,
                        action,
                        permit.suppressed,
                    );
                }
            }
        }
        if let Some(reason) = closed.activity.as_ref().and_then(|a| a.observation_lost()) {
            events::observation_lost(&hold, reason);
        }
        if closed.was_flagged() {
            if let Some(permit) = self.permit(Family::ReturnedAfterFlagged) {
                events::returned_after_flagged(&hold, closed.outcome, permit.suppressed);
            }
        }
        if closed.outcome == Outcome::Detached && cfg!(feature = "leak-report") {
            if let Some(permit) = self.permit(Family::Detached) {
                let backtrace = closed_backtrace(closed);
                events::detached(&hold, backtrace.as_deref(), permit.suppressed);
            }
        }
    }

    /// A watched transaction ended.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn transaction_ended(&self, ended: &TransactionEnded, now: Ticks) {
        let by_drop = ended.ending == TransactionEnding::RolledBackByDrop;
        if by_drop {
            self.metrics.error_path(ErrorPath::RolledBackByDrop);
        }
        let permit = if by_drop {
            match self.permit(Family::RolledBackByDrop) {
                Some(permit) => permit,
                None => return,
            }
        } else {
            if !tracing::enabled!(target: events::TARGET, tracing::Level::DEBUG) {
                return;
            }
            Permit { suppressed: 0 }
        };
        let _ = now;
        let statement = ended
            .last_statement
            .as_deref()
            .and_then(|raw| self.statement(raw));
        let t = events::TransactionEnd {
            hold: Hold {
                pool: &self.pool,
                guard: ended.guard,
                site: CallSite::from(ended.location),
                span: ended.span,
                held: Duration::ZERO,
                busy: None,
                backend_pid: ended.backend_pid,
            },
            transaction_site: CallSite::from(ended.site),
            ending: ended.ending.as_str(),
            duration: ended.duration,
            idle: ended.idle,
            statement: statement.as_deref(),
            sqlstate: ended
                .sqlstate
                .as_ref()
                .and_then(|code| std::str::from_utf8(code).ok()),
        };
        events::transaction_ended(&t, by_drop, permit.suppressed);
    }

    /// The sampler's tick, for the callers waiting now: says when callers
    /// are stuck past the slow-acquire threshold (once when it starts,
    /// every [`STUCK_REMINDER`] while it lasts, and when it ends), keeps
    /// the gauges current, and reports what the rate limits left out.
    pub(crate) fn tick(
        &self,
        now: Ticks,
        waiters: &[Waiter],
        oldest_hold: Duration,
        holders: impl FnOnce() -> (usize, HolderList),
    ) {
        let status = self.status();
        self.metrics.set_status(status);
        let oldest = waiters.first().map_or(Duration::ZERO, |w| w.waited(now));
        self.metrics.set_oldest_wait(oldest);
        self.metrics.set_oldest_hold(oldest_hold);
        let threshold = self.thresholds.slow_acquire();
        let stuck: Vec<&Waiter> = waiters
            .iter()
            .filter(|w| w.waited(now) > threshold)
            .collect();
        let mut episode = self.stuck.lock();
        if stuck.is_empty() {
            if let Some(since) = episode.since.take() {
                episode.last_warned = None;
                drop(episode);
                events::waiters_served(&self.pool, since.until(now));
            }
        } else {
            let since = *episode.since.get_or_insert(now);
            let due = episode
                .last_warned
                .is_none_or(|last| last.until(now) >= STUCK_REMINDER);
            if due {
                episode.last_warned = Some(now);
                drop(episode);
                let first = since == now;
                // The first warning of an episode always goes out; the
                // reminders go through the budget.
                let permit = if first {
                    Some(Permit { suppressed: 0 })
                } else {
                    self.permit(Family::StuckWaiters)
                };
                if let Some(permit) = permit {
                    let (held, list) = holders();
                    let waiters_list = WaiterList::of(&stuck, now);
                    let report = events::Stuck {
                        pool: &self.pool,
                        waiting: waiters.len(),
                        oldest,
                        threshold,
                        waiters: &waiters_list,
                        holders: Holders {
                            held,
                            status,
                            list: &list,
                            blocking: &list.blocking(),
                        },
                    };
                    events::stuck_waiters(&report, permit.suppressed);
                }
            }
        }
        self.report_suppressed();
    }

    /// The watchdog reports a guard still held (`leak-report`).
    #[cfg(feature = "leak-report")]
    pub(crate) fn still_held(
        &self,
        holder: &Holder,
        level: u8,
        backtrace: Option<&str>,
        now: Ticks,
    ) {
        let Some(permit) = self.permit(Family::StillHeld) else {
            return;
        };
        let statement = holder
            .activity
            .as_ref()
            .and_then(|a| a.last_statement.as_deref())
            .and_then(|raw| self.statement(raw));
        // The sampler asks the server while a guard is out past the
        // threshold, so from the first reminder on this is usually known.
        let server = holder
            .activity
            .as_ref()
            .and_then(|a| a.backend_pid)
            .and_then(|pid| {
                let snapshot = self.server_snapshot(now)?;
                snapshot.backend(pid).map(server::ServerBackend::describe)
            });
        let still = events::StillHeld {
            hold: self.holder(holder, now),
            level,
            threshold: self.thresholds.hold(),
            status: self.status(),
            state: holder_state(holder).map(|s| s.as_str()),
            statement: statement.as_deref(),
            server: server.as_deref(),
            backtrace,
        };
        events::still_held(&still, permit.suppressed);
    }

    /// The guards still held when the pool closed or its last handle went
    /// (`leak-report`): each of the first few at ERROR with its stack, the
    /// rest in one line by site.
    #[cfg(feature = "leak-report")]
    pub(crate) fn never_returned(
        &self,
        holders: &[(Holder, Option<crate::stack::RawStack>)],
        ending: &'static str,
        why: &'static str,
        now: Ticks,
    ) {
        /// Listed one by one; the rest are summed up by site.
        const LISTED: usize = 20;
        for _ in holders {
            self.metrics.never_returned();
        }
        for (holder, stack) in holders.iter().take(LISTED) {
            let backtrace = if tracing::enabled!(target: events::TARGET, tracing::Level::ERROR) {
                crate::stack::render_opt(stack.as_ref())
            } else {
                None
            };
            events::never_returned(&self.holder(holder, now), ending, why, backtrace.as_deref());
        }
        if holders.len() > LISTED {
            let rest: Vec<Holder> = holders[LISTED..].iter().map(|(h, _)| h.clone()).collect();
            let (_, list) = holder_list(&rest, now, None);
            events::never_returned_more(&self.pool, rest.len(), &list, why);
        }
    }

    /// The watchdog could not start.
    #[cfg(feature = "leak-report")]
    pub(crate) fn watchdog_unavailable(&self, error: &std::io::Error) {
        events::watchdog_unavailable(error);
    }

    /// The sampler thread could not start.
    pub(crate) fn sampler_unavailable(&self, error: &std::io::Error) {
        events::sampler_unavailable(error);
    }

    /// The periodic report, through tracing.
    pub(crate) fn periodic_report(
        &self,
        verdicts: &str,
        flagged: usize,
        report: &dyn fmt::Display,
    ) {
        events::periodic_report(&self.pool, verdicts, flagged, report);
    }

    /// Says what the rate limits left out that no later event carried
    /// within [`SUMMARY_GRACE`].
    pub(crate) fn report_suppressed(&self) {
        let counts = self.budgets.take_suppressed(SUMMARY_GRACE);
        if counts.is_empty() {
            return;
        }
        let total = counts.iter().map(|(_, n)| n).sum();
        events::suppressed_summary(&self.pool, &SuppressedList(&counts), total);
    }
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

/// Who holds the pool: the outstanding guards grouped by call site, most
/// guards first, with what they are doing; with what the server says of
/// their backends when `server` has an answer.
pub(crate) fn holder_list(
    holders: &[Holder],
    now: Ticks,
    server: Option<&ServerSnapshot>,
) -> (usize, HolderList) {
    let joined = server.map(|snapshot| server::join(holders, snapshot));
    let mut groups: Vec<HolderGroup> = Vec::new();
    let mut blocking: Vec<Blocking> = Vec::new();
    for (i, holder) in holders.iter().enumerate() {
        let site = holder.site();
        let group = match groups.iter_mut().position(|g| g.site == site) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(HolderGroup {
                    site,
                    count: 0,
                    oldest: Duration::ZERO,
                    in_call: 0,
                    idle_in_transaction: 0,
                    server: ServerCounts::default(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        group.count += 1;
        group.oldest = group.oldest.max(holder.held(now));
        if let Some(activity) = &holder.activity {
            if activity.in_call() {
                group.in_call += 1;
            } else if activity.transaction.is_open() {
                group.idle_in_transaction += 1;
            }
        }
        let Some(joined) = &joined else {
            continue;
        };
        if let Some(backend) = joined.backends[i] {
            group.server.count(backend);
        }
        for blocker in &joined.blockers[i] {
            let who = match blocker {
                Blocker::Guard(g) => {
                    let root = &holders[*g];
                    let state = joined.backends[*g]
                        .map(|b| format!(", {}", b.describe()))
                        .unwrap_or_default();
                    format!("guard {} at {}{state}", root.id, root.site())
                }
                Blocker::Outside(b) => format!(
                    "backend {} outside the pool{}, {}",
                    b.pid,
                    b.application_name
                        .as_deref()
                        .filter(|a| !a.is_empty())
                        .map(|a| format!(" ({a})"))
                        .unwrap_or_default(),
                    b.describe()
                ),
                Blocker::Unknown(0) => "a prepared transaction".to_owned(),
                Blocker::Unknown(pid) => format!("backend {pid}"),
            };
            match blocking.iter_mut().find(|b| b.who == who) {
                Some(b) => b.blocked += 1,
                None => blocking.push(Blocking { who, blocked: 1 }),
            }
        }
    }
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.oldest.cmp(&a.oldest)));
    blocking.sort_by_key(|b| std::cmp::Reverse(b.blocked));
    let list = HolderList {
        groups,
        blocking,
        server_age: server.map(|s| s.age(now)),
    };
    (holders.len(), list)
}

/// [`holder_list`] of the ledger now, with the server's answer if fresh.
pub(crate) fn holders_now<A>(ledger: &Ledger<A>, observer: &Observer) -> (usize, HolderList) {
    let now = Ticks::now();
    let server = observer.server_snapshot(now);
    holder_list(&ledger.holders(now), now, server.as_ref())
}

/// What a holder is doing, from its connection's activity.
pub(crate) fn holder_state(holder: &Holder) -> Option<HolderState> {
    let activity = holder.activity.as_ref()?;
    Some(if activity.in_call() {
        HolderState::InCall
    } else if activity.transaction.is_open() {
        HolderState::IdleInTransaction
    } else {
        HolderState::Idle
    })
}

/// `held_past_threshold=3, still_held=120`
struct SuppressedList<'a>(&'a [(Family, u64)]);

impl fmt::Display for SuppressedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (family, n)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={n}", family.as_str())?;
        }
        Ok(())
    }
}

/// Outstanding guards grouped by call site: the "who holds the pool"
/// text of the events that list holders.
#[derive(Clone, Debug, Default)]
pub(crate) struct HolderList {
    pub(crate) groups: Vec<HolderGroup>,
    /// What the blocked holders wait behind, most blocked first (from the
    /// server's answer).
    pub(crate) blocking: Vec<Blocking>,
    /// How old the server's answer is, when there is one.
    pub(crate) server_age: Option<Duration>,
}

/// The holders at one call site.
#[derive(Clone, Debug)]
pub(crate) struct HolderGroup {
    pub(crate) site: CallSite,
    pub(crate) count: usize,
    pub(crate) oldest: Duration,
    /// How many are in a database call, and idle inside a transaction
    /// (observed connections only).
    pub(crate) in_call: usize,
    pub(crate) idle_in_transaction: usize,
    /// What the server says their backends do.
    pub(crate) server: ServerCounts,
}

/// Holders' backends by the state the server reports.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ServerCounts {
    pub(crate) waiting_on_lock: usize,
    pub(crate) active: usize,
    pub(crate) idle_in_transaction: usize,
    pub(crate) idle: usize,
    pub(crate) not_visible: usize,
}

impl ServerCounts {
    fn count(&mut self, backend: &server::ServerBackend) {
        if !backend.visible {
            self.not_visible += 1;
        } else if backend.waiting_on_lock {
            self.waiting_on_lock += 1;
        } else if backend.active {
            self.active += 1;
        } else if backend.idle_in_transaction {
            self.idle_in_transaction += 1;
        } else {
            self.idle += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.waiting_on_lock + self.active + self.idle_in_transaction + self.idle + self.not_visible
            == 0
    }
}

impl fmt::Display for ServerCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.waiting_on_lock, "waiting on a lock"),
            (self.active, "running a statement"),
            (self.idle_in_transaction, "idle in transaction"),
            (self.idle, "idle"),
            (self.not_visible, "not visible to this role"),
        ];
        let mut first = true;
        for (n, what) in parts {
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n} {what}")?;
        }
        Ok(())
    }
}

/// One head of a chain of lock waits, and how many holders wait behind it.
#[derive(Clone, Debug)]
pub(crate) struct Blocking {
    /// `guard 12 at src/pay.rs:40:9, idle in transaction for 1.4s`
    pub(crate) who: String,
    pub(crate) blocked: usize,
}

impl HolderList {
    /// `guard 12 at src/pay.rs:40:9, idle in transaction for 1.4s (blocks
    /// 5)`; empty when no holder is blocked or the server did not say.
    pub(crate) fn blocking(&self) -> BlockingList<'_> {
        BlockingList(&self.blocking)
    }
}

/// See [`HolderList::blocking`].
pub(crate) struct BlockingList<'a>(&'a [Blocking]);

impl fmt::Display for BlockingList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} (blocks {})", b.who, b.blocked)?;
        }
        Ok(())
    }
}

impl fmt::Display for HolderList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.groups.is_empty() {
            return f.write_str("none by poolwatch guards");
        }
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{} by {} (oldest {}",
                g.count,
                g.site,
                events::human(g.oldest)
            )?;
            if g.in_call > 0 {
                write!(f, ", {} in a database call", g.in_call)?;
            }
            if g.idle_in_transaction > 0 {
                write!(f, ", {} idle in transaction", g.idle_in_transaction)?;
            }
            if !g.server.is_empty() {
                write!(f, "; server: {}", g.server)?;
            }
            f.write_str(")")?;
        }
        if !self.blocking.is_empty() {
            write!(f, "; blocked in the database by {}", self.blocking())?;
        }
        if let Some(age) = self.server_age {
            write!(f, " (server's view {} old)", events::human(age))?;
        }
        Ok(())
    }
}

/// `3 at src/api.rs:88:9 (oldest 3s), 1 at … (nested checkout)`
struct WaiterList {
    groups: Vec<(CallSite, usize, Duration, bool)>,
}

impl WaiterList {
    fn of(waiters: &[&Waiter], now: Ticks) -> Self {
        let mut groups: Vec<(CallSite, usize, Duration, bool)> = Vec::new();
        for w in waiters {
            let site = w.site();
            match groups.iter_mut().find(|g| g.0 == site) {
                Some(g) => {
                    g.1 += 1;
                    g.2 = g.2.max(w.waited(now));
                    g.3 |= w.nested;
                }
                None => groups.push((site, 1, w.waited(now), w.nested)),
            }
        }
        groups.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
        Self { groups }
    }
}

impl fmt::Display for WaiterList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (site, n, oldest, nested)) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n} at {site} (oldest {}", events::human(*oldest))?;
            if *nested {
                f.write_str(", nested checkout")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}
