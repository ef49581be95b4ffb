//! What the handles of one pool share: its ledger (records), its observer
//! (reactions), and the settings of its background work.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::WatchConfig;
use crate::ledger::{Ledger, LedgerConfig, ShardRef, Ticks};
use crate::observe::Observer;
use crate::report::Report;
use crate::snapshot::PoolSnapshot;
use crate::stack_mode::AtomicStackMode;
use crate::view::{self, PoolView};

/// A guard's handle on its ledger shard as the pool layer uses it: each
/// shard carries the observer a guard's drop reacts with.
pub(crate) type PoolShardRef = ShardRef<Arc<Observer>>;

pub(crate) struct Shared {
    pub(crate) ledger: Ledger<Arc<Observer>>,
    pub(crate) observer: Arc<Observer>,
    /// Which checkouts capture a stack (`leak-report`).
    pub(crate) stacks: AtomicStackMode,
    /// The sampler's tick (`None`: no sampler for this pool).
    pub(crate) tick: Option<Duration>,
    /// How often the sampler emits the report through tracing.
    pub(crate) report_every: Option<Duration>,
    /// When the sampler last ticked and last emitted the report.
    pub(crate) last_tick: Mutex<Ticks>,
    pub(crate) last_report: Mutex<Ticks>,
}

impl Shared {
    pub(crate) fn new(config: &WatchConfig) -> Arc<Self> {
        let observer = Arc::new(Observer::new(
            &config.pool_name,
            config.hold_threshold,
            config.slow_acquire,
            config.metrics_site_labels,
        ));
        let timeline_capacity = config.timeline_tick.map_or(0, |tick| {
            (config.timeline_window.as_nanos() / tick.as_nanos().max(1)).clamp(2, 1 << 16) as usize
        });
        let ledger = Ledger::new(
            LedgerConfig {
                max_sites: config.max_sites,
                window: config.window,
                timeline_capacity,
            },
            |_| Arc::clone(&observer),
        );
        let now = Ticks::now();
        Arc::new(Self {
            ledger,
            observer,
            stacks: AtomicStackMode::new(config.stacks),
            tick: config.timeline_tick,
            report_every: config.report_every,
            last_tick: Mutex::new(now),
            last_report: Mutex::new(now),
        })
    }

    pub(crate) fn view(&self) -> PoolView {
        view::take(&self.ledger, &self.observer)
    }

    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        view::snapshot(&self.ledger, &self.observer)
    }

    /// The report, with the server's latest answer if it is fresh.
    pub(crate) fn report(&self) -> Report {
        let view = self.view();
        let server = self.observer.server_snapshot(view.now);
        Report::build(&view, &self.observer, server.as_ref())
    }

    /// The report, after asking the server about the holders (at most
    /// `wait`).
    pub(crate) async fn report_asking(&self, wait: Duration) -> Report {
        let holders = self.ledger.holders(Ticks::now());
        let asked = self.observer.ask_server_now(&holders, wait).await;
        let view = self.view();
        let server = asked.or_else(|| self.observer.server_snapshot(view.now));
        Report::build(&view, &self.observer, server.as_ref())
    }
}
