//! [`WatchedPool`]: deadpool's pool with every checkout recorded.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Manager, Pool, PoolError, Timeouts};

use crate::checkout::{Acquire, ConnectionKey};
use crate::config::{self, WatchConfig};
use crate::errors::ConfigError;
use crate::guard::Guard;
use crate::report::Report;
use crate::shared::Shared;
use crate::snapshot::{PoolSnapshot, PoolStatus};
use crate::stack_mode::StackMode;
#[cfg(feature = "leak-report")]
use crate::watchdog::PoolWatch;

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
/// # #[cfg(feature = "postgres")]
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
    shared: Arc<Shared>,
    /// How a database integration identifies a pooled object's connection
    /// (pools it builds; `None` for a ready-made pool).
    connection_key: Option<ConnectionKey<M::Type>>,
    /// Shared by the handles only: its `Drop` is the last handle's.
    #[cfg(feature = "leak-report")]
    watch: Arc<PoolWatch>,
}

impl<M: Manager> Clone for WatchedPool<M> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            timeouts: self.timeouts,
            shared: Arc::clone(&self.shared),
            connection_key: self.connection_key,
            #[cfg(feature = "leak-report")]
            watch: Arc::clone(&self.watch),
        }
    }
}

impl<M: Manager> fmt::Debug for WatchedPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedPool")
            .field("name", &self.shared.observer.pool)
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl<M: Manager> WatchedPool<M> {
    /// Wraps an existing pool. Only checkouts made through the wrapper are
    /// recorded. With `leak-report`, the watchdog starts watching it.
    ///
    /// A ready-made pool's connections are not observed (deadpool builds
    /// them before poolwatch sees them): holds, waits, sites and spans are
    /// recorded, database time is not. Pools built by
    /// [`postgres::Pool::from_config`](crate::postgres::Pool::from_config)
    /// observe every call on their connections.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # fn demo(pg: deadpool_postgres::Pool) -> Result<(), poolwatch::ConfigError> {
    /// let pool = poolwatch::WatchedPool::new(pg, poolwatch::WatchConfig::from_env()?);
    /// # Ok(()) }
    /// ```
    pub fn new(pool: Pool<M>, config: WatchConfig) -> Self
    where
        M: 'static,
    {
        Self::with_shared(pool, Shared::new(&config), None)
    }

    /// Wraps a pool whose hooks already share `shared` (database
    /// integrations that install hooks before the pool exists).
    pub(crate) fn with_shared(
        pool: Pool<M>,
        shared: Arc<Shared>,
        connection_key: Option<ConnectionKey<M::Type>>,
    ) -> Self
    where
        M: 'static,
    {
        // The observer reads the status through a weak handle, so it never
        // keeps the pool alive.
        let weak = pool.weak();
        shared.observer.set_status_source(Box::new(move || {
            weak.upgrade().map(|p| PoolStatus::from(p.status()))
        }));
        crate::sampler::register(&shared);
        Self {
            #[cfg(feature = "leak-report")]
            watch: PoolWatch::start(Arc::clone(&shared)),
            timeouts: pool.timeouts(),
            pool,
            shared,
            connection_key,
        }
    }

    /// Checks out a connection, like deadpool's [`Pool::get`], recording the
    /// caller's source line as the call site.
    ///
    /// Written as a plain `fn` returning a future because `#[track_caller]`
    /// does nothing on an `async fn` (rust#110011). A helper of your own
    /// that wraps `get()` keeps the real caller's line the same way: a
    /// `#[track_caller]` plain `fn` that calls `get()` before any `async`
    /// block (see the README).
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), deadpool_postgres::PoolError> {
    /// let client = pool.get().await?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Guard<M>, PoolError<M::Error>>> + Send + '_ {
        // deadpool's `get()` is `timeout_get(&self.timeouts())` inside one
        // more future; the pool's timeouts, kept here, skip that layer.
        Acquire::new(
            &self.shared,
            self.connection_key,
            Location::caller(),
            self.pool.timeout_get(&self.timeouts),
        )
    }

    /// Checks out a connection with explicit timeouts, like deadpool's
    /// [`Pool::timeout_get`].
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
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
        Acquire::new(
            &self.shared,
            self.connection_key,
            Location::caller(),
            self.pool.timeout_get(timeouts),
        )
    }

    /// The pool's state now, as plain data: deadpool's status, the guards
    /// held and acquires waiting right now, and per-call-site and per-span
    /// statistics over the recent window.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo(pool: poolwatch::postgres::Pool) {
    /// let snapshot = pool.snapshot();
    /// println!("{} held, {} waiting", snapshot.outstanding.len(), snapshot.waiters.len());
    /// # }
    /// ```
    pub fn snapshot(&self) -> PoolSnapshot {
        self.shared.snapshot()
    }

    /// Refreshes the gauges (`db.client.connection.count`, `.max`,
    /// `.pending_requests` from deadpool's status; `poolwatch.acquire.oldest_wait`
    /// and `poolwatch.hold.oldest` from the ledger). They also refresh at
    /// every sampler tick (each second by default), not per checkout:
    /// reading deadpool's status takes its slot lock. Call this before
    /// rendering a scrape for values of this instant.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # fn demo(pool: poolwatch::postgres::Pool, prometheus: metrics_exporter_prometheus::PrometheusHandle) {
    /// pool.record_metrics();
    /// let body = prometheus.render();
    /// # }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        use crate::ledger::Ticks;
        let metrics = &self.shared.observer.metrics;
        metrics.set_status(self.pool.status().into());
        let now = Ticks::now();
        metrics.set_oldest_wait(self.shared.ledger.oldest_wait(now));
        metrics.set_oldest_hold(self.shared.ledger.oldest_hold(now));
    }

    /// The diagnosis: what is wrong now (leak, cleanup path, long hold,
    /// concurrency growth, or healthy), naming the culprit first and those
    /// affected after, with past saturation episodes and their own
    /// verdicts. See [`crate::report`] for the rules.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo(pool: poolwatch::postgres::Pool) {
    /// let report = pool.report();
    /// println!("{report}");
    /// if report.kinds().contains(&poolwatch::VerdictKind::Leak) {
    ///     eprintln!("leak suspected: {:?}", report.verdicts[0].evidence);
    /// }
    /// # }
    /// ```
    pub fn report(&self) -> Report {
        self.shared.report()
    }

    /// [`report`](Self::report), after asking the database server what the
    /// holders' backends are doing and who blocks whom (waiting at most a
    /// second for the answer), for a debug endpoint or an incident
    /// command. `report` itself uses the latest answer, which the sampler
    /// keeps current (once a tick) only while the pool is under pressure.
    /// On a ready-made pool ([`WatchedPool::new`]) or with
    /// [`WatchConfig::server_view`](crate::WatchConfig::server_view) off,
    /// the same as `report`.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo(pool: poolwatch::postgres::Pool) {
    /// let report = pool.diagnose().await;
    /// for holder in &report.holders {
    ///     if let Some(server) = &holder.server {
    ///         println!("guard {} at {}: {}", holder.guard, holder.site, server.doing);
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn diagnose(&self) -> Report {
        self.shared.report_asking(Duration::from_secs(1)).await
    }

    /// Guards of this pool held right now, as the ledger counts them.
    ///
    /// Equals deadpool's in-use count except for connections checked out
    /// around the wrapper or detached/untracked through it.
    pub fn outstanding_count(&self) -> usize {
        self.shared.ledger.outstanding_count()
    }

    /// The pool's name in events and reports.
    pub fn pool_name(&self) -> &str {
        &self.shared.observer.pool
    }

    /// The current hold threshold.
    pub fn hold_threshold(&self) -> Duration {
        self.shared.observer.thresholds.hold()
    }

    /// Changes the hold threshold at runtime; applies to holds that end
    /// from now on and, with `leak-report`, to the watchdog's next scan.
    /// Refused below the builder's minimum (1 ms), with an error naming
    /// the setting.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # fn demo(pool: poolwatch::postgres::Pool) -> Result<(), poolwatch::ConfigError> {
    /// pool.set_hold_threshold(std::time::Duration::from_millis(500))?;
    /// # Ok(()) }
    /// ```
    pub fn set_hold_threshold(&self, threshold: Duration) -> Result<(), ConfigError> {
        config::check_threshold("hold_threshold", threshold)?;
        self.shared.observer.thresholds.set_hold(threshold);
        #[cfg(feature = "leak-report")]
        crate::watchdog::wake();
        Ok(())
    }

    /// Which checkouts capture a stack (only with `leak-report`).
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # fn demo(pool: poolwatch::postgres::Pool) {
    /// println!("stacks: {}", pool.stack_mode()); // e.g. "sample:100"
    /// # }
    /// ```
    pub fn stack_mode(&self) -> StackMode {
        self.shared.stacks.get()
    }

    /// Changes which checkouts capture a stack, from the next checkout on.
    /// Without the `leak-report` feature no stack is ever captured and this
    /// only changes what [`stack_mode`](Self::stack_mode) returns.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # fn demo(pool: poolwatch::postgres::Pool) {
    /// use poolwatch::StackMode;
    /// pool.set_stack_mode(StackMode::Sample(100)); // 1 in 100 per call site
    /// # }
    /// ```
    pub fn set_stack_mode(&self, mode: StackMode) {
        self.shared.stacks.set(mode);
    }

    /// The current slow-acquire threshold.
    pub fn slow_acquire(&self) -> Duration {
        self.shared.observer.thresholds.slow_acquire()
    }

    /// Changes the slow-acquire threshold at runtime. Refused below the
    /// builder's minimum (1 ms), with an error naming the setting.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # fn demo(pool: poolwatch::postgres::Pool) -> Result<(), poolwatch::ConfigError> {
    /// pool.set_slow_acquire(std::time::Duration::from_millis(250))?;
    /// # Ok(()) }
    /// ```
    pub fn set_slow_acquire(&self, threshold: Duration) -> Result<(), ConfigError> {
        config::check_threshold("slow_acquire", threshold)?;
        self.shared.observer.thresholds.set_slow_acquire(threshold);
        Ok(())
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
            .report_never_returned(crate::watchdog::Ending::Closed);
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
