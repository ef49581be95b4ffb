//! One pool as the watchdog sees it (`leak-report`): scanning its ledger,
//! and reporting the guards never returned when it is closed or its last
//! handle is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool::managed::{Manager, Pool};

use crate::events::{self, Ending};
use crate::ledger::Ledger;
use crate::ledger::Ticks;
use crate::watchdog::{self, Watched};

/// Held only by the [`WatchedPool`](crate::WatchedPool) handles (guards hold
/// their shard, not this), so its `Drop` runs when the last handle goes.
pub(crate) struct PoolWatch<M: Manager> {
    pool: Pool<M>,
    ledger: Arc<Ledger>,
    /// The never-returned report was made (at `close`): not again at drop.
    reported: AtomicBool,
}

impl<M: Manager + 'static> PoolWatch<M> {
    /// Creates the watch and registers it with the watchdog.
    pub(crate) fn start(pool: Pool<M>, ledger: Arc<Ledger>) -> Arc<Self> {
        let watch = Arc::new(Self {
            pool,
            ledger,
            reported: AtomicBool::new(false),
        });
        let weak: Weak<dyn Watched> = Arc::downgrade(&watch) as Weak<dyn Watched>;
        watchdog::register(weak);
        watch
    }
}

impl<M: Manager> PoolWatch<M> {
    /// Reports every guard still held at ERROR, once per pool.
    pub(crate) fn report_never_returned(&self, ending: Ending) {
        if self.reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let settings = &self.ledger.settings;
        for flagged in self.ledger.flag_all(Ticks::now()) {
            #[cfg(feature = "metrics")]
            settings.metrics.on_never_returned();
            events::never_returned(settings, &flagged, ending);
        }
    }
}

impl<M: Manager> PoolWatch<M> {
    /// The pool lives on outside poolwatch (`into_inner`): its guards still
    /// held are not "never returned".
    pub(crate) fn skip_final_report(&self) {
        self.reported.store(true, Ordering::Relaxed);
    }
}

impl<M: Manager> Watched for PoolWatch<M> {
    fn hold_threshold(&self) -> Duration {
        self.ledger.settings.hold_threshold()
    }

    fn scan(&self, now: Ticks) {
        let threshold = self.hold_threshold();
        let flagged = self.ledger.flag_overdue(now, threshold);
        if flagged.is_empty() {
            return;
        }
        let status = self.pool.status().into();
        for guard in &flagged {
            #[cfg(feature = "metrics")]
            if guard.level == 1 {
                self.ledger.settings.metrics.on_flagged();
            }
            events::still_held(&self.ledger.settings, guard, threshold, status);
        }
    }
}

impl<M: Manager> Drop for PoolWatch<M> {
    fn drop(&mut self) {
        self.report_never_returned(Ending::Dropped);
        watchdog::wake();
    }
}
