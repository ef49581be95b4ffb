//! [`WatchedPool`]: deadpool's pool with every checkout recorded.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Manager, Object, Pool, PoolError, Timeouts};

use crate::acquire::Acquire;
use crate::config::WatchConfig;
use crate::events::{self, FailedAcquire};
use crate::guard::Guard;
use crate::ledger::{Checkout, Ledger, Ticks};
use crate::outcome::AcquireFailure;
use crate::report::Report;
use crate::site::{CallSite, SpanRef};
use crate::snapshot::{PoolSnapshot, PoolStatus};
use crate::stack_mode::StackMode;
#[cfg(feature = "leak-report")]
use crate::watch::PoolWatch;

/// A deadpool [`Pool`] whose checkouts are recorded: who acquired each
/// connection, how long they waited, how long they held it and how the hold
/// ended.
///
/// Cheap to clone (two `Arc`s, three with `leak-report`); clones share the
/// pool and its ledger.
///
/// With the `leak-report` feature, the process's watchdog thread watches
/// the pool for as long as a clone exists; [`close`](Self::close) and
/// dropping the last clone report every guard still held at ERROR.
///
/// ```no_run
/// use std::time::Duration;
/// use poolwatch::{WatchConfig, WatchedPool};
///
/// # async fn demo(pg: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let config = WatchConfig::builder()
///     .pool_name("main")
///     .hold_threshold(Duration::from_secs(2))
///     .with_env()? // POOLWATCH_* variables, for on-call tuning without a rebuild
///     .build()?;
/// let pool = WatchedPool::new(pg, config);
/// let client = pool.get().await?; // this line is the recorded call site
/// client.execute("SELECT 1", &[]).await?;
/// # Ok(()) }
/// ```
pub struct WatchedPool<M: Manager> {
    pool: Pool<M>,
    /// The pool's own timeouts (fixed when deadpool builds a pool), for
    /// [`get`](Self::get).
    timeouts: Timeouts,
    ledger: Arc<Ledger>,
    /// Shared by the handles only: its `Drop` is the last handle's.
    #[cfg(feature = "leak-report")]
    watch: Arc<PoolWatch<M>>,
}

impl<M: Manager> Clone for WatchedPool<M> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            timeouts: self.timeouts,
            ledger: Arc::clone(&self.ledger),
            #[cfg(feature = "leak-report")]
            watch: Arc::clone(&self.watch),
        }
    }
}

impl<M: Manager> fmt::Debug for WatchedPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedPool")
            .field("name", &self.ledger.settings.pool_name)
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl<M: Manager> WatchedPool<M> {
    /// Wraps an existing pool. Only checkouts made through the wrapper are
    /// recorded. With `leak-report`, the watchdog starts watching it.
    ///
    /// ```no_run
    /// # fn demo(pg: deadpool_postgres::Pool) -> Result<(), poolwatch::ConfigError> {
    /// let pool = poolwatch::WatchedPool::new(pg, poolwatch::WatchConfig::from_env()?);
    /// # Ok(()) }
    /// ```
    pub fn new(pool: Pool<M>, config: WatchConfig) -> Self
    where
        M: 'static,
    {
        Self::with_ledger(pool, Arc::new(Ledger::new(&config)))
    }

    /// Wraps a pool whose hooks already share `ledger` (database
    /// integrations that install hooks before the pool exists).
    pub(crate) fn with_ledger(pool: Pool<M>, ledger: Arc<Ledger>) -> Self
    where
        M: 'static,
    {
        // The ledger reads the status through a weak handle, so it never
        // keeps the pool alive.
        let weak = pool.weak();
        let status = Box::new(move || weak.upgrade().map(|p| PoolStatus::from(p.status())));
        ledger.settings.set_status_source(status);
        crate::sampler::register(&ledger);
        Self {
            #[cfg(feature = "leak-report")]
            watch: PoolWatch::start(pool.clone(), Arc::clone(&ledger)),
            timeouts: pool.timeouts(),
            pool,
            ledger,
        }
    }

    /// Checks out a connection, like deadpool's [`Pool::get`], recording the
    /// caller's source line as the call site.
    ///
    /// Written as a plain `fn` returning a future because `#[track_caller]`
    /// does nothing on an `async fn` (rust#110011).
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), deadpool_postgres::PoolError> {
    /// let client = pool.get().await?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Guard<M>, PoolError<M::Error>>> + Send + '_ {
        // deadpool's `get()` is `timeout_get(&self.timeouts())` inside one
        // more future; the pool's timeouts, kept here, skip that layer.
        Acquire::new(
            self,
            Location::caller(),
            self.pool.timeout_get(&self.timeouts),
        )
    }

    /// Checks out a connection with explicit timeouts, like deadpool's
    /// [`Pool::timeout_get`].
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), deadpool_postgres::PoolError> {
    /// use std::time::Duration;
    /// let timeouts = deadpool::managed::Timeouts {
    ///     wait: Some(Duration::from_secs(5)),
    ///     ..Default::default()
    /// };
    /// let client = pool.timeout_get(&timeouts).await?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn timeout_get<'a>(
        &'a self,
        timeouts: &'a Timeouts,
    ) -> impl Future<Output = Result<Guard<M>, PoolError<M::Error>>> + Send + 'a {
        Acquire::new(self, Location::caller(), self.pool.timeout_get(timeouts))
    }

    /// Opens the checkout record of an acquired object and wraps it.
    /// `waiting_since`: when the acquire first had to wait, if it did.
    #[inline]
    pub(crate) fn opened(
        &self,
        object: Object<M>,
        location: &'static Location<'static>,
        waiting_since: Option<Ticks>,
    ) -> Guard<M> {
        let acquired = Ticks::now();
        let waited = waiting_since.map_or(Duration::ZERO, |since| since.until(acquired));
        let span = SpanRef::current();
        let shard = self.ledger.local_shard();
        let (key, id) = shard.open(Checkout {
            location,
            span,
            waited,
            acquired,
        });
        #[cfg(feature = "metrics")]
        {
            let metrics = &self.ledger.settings.metrics;
            metrics.on_checkout(waited);
            metrics.set_status(self.pool.status().into());
        }
        #[cfg(feature = "leak-report")]
        shard.capture_stack(key);
        // An acquire that did not wait is never slow: skip the comparison.
        if waiting_since.is_some() && self.ledger.settings.exceeds_slow_acquire(waited) {
            let site = CallSite::from(location);
            events::slow_acquire(
                &self.ledger.settings,
                id,
                site,
                span.map(SpanRef::info),
                waited,
            );
        }
        Guard::new(object, Arc::clone(shard), key, id)
    }

    /// Records a failed acquire and reports it (rate-limited).
    #[cold]
    pub(crate) fn acquire_failed(
        &self,
        location: &'static Location<'static>,
        waiting_since: Option<Ticks>,
        error: &PoolError<M::Error>,
    ) {
        let waited = waiting_since.map_or(Duration::ZERO, |since| since.until(Ticks::now()));
        let span = SpanRef::current().map(SpanRef::info);
        let failure = AcquireFailure::of(error);
        self.ledger.record_failure(location, span, waited, failure);
        #[cfg(feature = "metrics")]
        {
            let metrics = &self.ledger.settings.metrics;
            metrics.on_failure(failure, waited);
            metrics.set_status(self.pool.status().into());
        }
        // In a storm of failures, only a few per second list the holders
        // (a walk of the ledger); the counts above take every one.
        let Some(permit) = self.ledger.settings.failed_acquire_events.permit() else {
            return;
        };
        let holders = events::holders(&self.ledger, Ticks::now());
        let failed = FailedAcquire {
            site: CallSite::from(location),
            span,
            waited,
            failure,
            error: AcquireFailure::describe(error),
            status: self.status().into(),
            holders: &holders,
            suppressed: permit.suppressed,
        };
        events::acquire_failed(&self.ledger.settings, &failed);
    }

    /// The pool's state now: deadpool's status, the guards held right now,
    /// and per-call-site statistics.
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) {
    /// let snapshot = pool.snapshot();
    /// println!("{} of {} in use", snapshot.status.in_use(), snapshot.status.max_size);
    /// for site in &snapshot.sites {
    ///     println!("{}: {} checkouts, p99 hold {:?}", site.site, site.checkouts, site.hold.p99);
    /// }
    /// # }
    /// ```
    pub fn snapshot(&self) -> PoolSnapshot {
        self.ledger.snapshot(self.status().into())
    }

    /// Refreshes the pool's gauges (`db.client.connection.count`, `.max`,
    /// `.pending_requests`) from deadpool's status. Gauges also refresh at
    /// every checkout and return; call this before rendering a scrape so
    /// waiters that have not been served yet are counted.
    ///
    /// ```no_run
    /// # fn demo(pool: poolwatch::postgres::Pool, prometheus: metrics_exporter_prometheus::PrometheusHandle) {
    /// pool.record_metrics();
    /// let body = prometheus.render();
    /// # }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        self.ledger
            .settings
            .metrics
            .set_status(self.pool.status().into());
    }

    /// The diagnosis: pressure timeline, call sites and spans ranked by
    /// connection time, flagged guards, and a verdict with its evidence
    /// (leak, long hold, concurrency growth, healthy). See [`crate::report`]
    /// for the rules.
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) {
    /// let report = pool.report();
    /// println!("{report}");
    /// if report.kinds().contains(&poolwatch::VerdictKind::Leak) {
    ///     eprintln!("leak suspected: {:?}", report.verdicts[0].evidence);
    /// }
    /// # }
    /// ```
    pub fn report(&self) -> Report {
        self.ledger.report(self.status().into())
    }

    /// Guards of this pool held right now, as the ledger counts them.
    ///
    /// Equals deadpool's in-use count except for connections checked out
    /// around the wrapper or detached/untracked through it.
    pub fn outstanding_count(&self) -> usize {
        self.ledger.outstanding_count()
    }

    /// The pool's name in events and reports.
    pub fn pool_name(&self) -> &str {
        &self.ledger.settings.pool_name
    }

    /// The current hold threshold.
    pub fn hold_threshold(&self) -> Duration {
        self.ledger.settings.hold_threshold()
    }

    /// Changes the hold threshold at runtime; applies to holds that end
    /// from now on and, with `leak-report`, to the watchdog's next scan.
    ///
    /// ```no_run
    /// # fn demo(pool: poolwatch::postgres::Pool) {
    /// pool.set_hold_threshold(std::time::Duration::from_millis(500));
    /// # }
    /// ```
    pub fn set_hold_threshold(&self, threshold: Duration) {
        self.ledger.settings.set_hold_threshold(threshold);
        #[cfg(feature = "leak-report")]
        crate::watchdog::wake();
    }

    /// Which checkouts capture a stack (only with `leak-report`).
    ///
    /// ```no_run
    /// # fn demo(pool: poolwatch::postgres::Pool) {
    /// println!("stacks: {}", pool.stack_mode()); // e.g. "sample:100"
    /// # }
    /// ```
    pub fn stack_mode(&self) -> StackMode {
        self.ledger.settings.stack_mode()
    }

    /// Changes which checkouts capture a stack, from the next checkout on.
    /// Without the `leak-report` feature no stack is ever captured and this
    /// only changes what [`stack_mode`](Self::stack_mode) returns.
    ///
    /// ```no_run
    /// # fn demo(pool: poolwatch::postgres::Pool) {
    /// use poolwatch::StackMode;
    /// pool.set_stack_mode(StackMode::Sample(100)); // 1 in 100 per call site
    /// # }
    /// ```
    pub fn set_stack_mode(&self, mode: StackMode) {
        self.ledger.settings.set_stack_mode(mode);
    }

    /// The current slow-acquire threshold.
    pub fn slow_acquire(&self) -> Duration {
        self.ledger.settings.slow_acquire()
    }

    /// Changes the slow-acquire threshold at runtime.
    pub fn set_slow_acquire(&self, threshold: Duration) {
        self.ledger.settings.set_slow_acquire(threshold);
    }

    /// deadpool's [`Pool::status`].
    pub fn status(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// [`PoolStatus`] of the wrapped pool, as plain data.
    pub fn pool_status(&self) -> PoolStatus {
        self.pool.status().into()
    }

    /// deadpool's [`Pool::close`]: waiters get [`PoolError::Closed`].
    ///
    /// With `leak-report`, every guard still held is then reported at
    /// ERROR (site, span, age and stack): it was never returned.
    pub fn close(&self) {
        self.pool.close();
        #[cfg(feature = "leak-report")]
        self.watch
            .report_never_returned(crate::events::Ending::Closed);
    }

    /// deadpool's [`Pool::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// deadpool's [`Pool::resize`].
    pub fn resize(&self, max_size: usize) {
        self.pool.resize(max_size);
    }

    /// deadpool's [`Pool::timeouts`].
    pub fn timeouts(&self) -> Timeouts {
        self.pool.timeouts()
    }

    /// deadpool's [`Pool::manager`].
    pub fn manager(&self) -> &M {
        self.pool.manager()
    }

    /// The wrapped pool. Checkouts made on it directly are not recorded.
    pub fn inner(&self) -> &Pool<M> {
        &self.pool
    }

    /// Unwraps the pool (for code that takes a `deadpool` pool by value).
    /// The pool stays open, so when this was the last handle its guards
    /// still held are not reported as never returned.
    pub fn into_inner(self) -> Pool<M> {
        #[cfg(feature = "leak-report")]
        if Arc::strong_count(&self.watch) == 1 {
            self.watch.skip_final_report();
        }
        self.pool
    }
}
