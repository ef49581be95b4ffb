//! The sampler: one background thread per process, serving every pool
//! whose timeline is on. At each pool's tick it drains the ledger and
//! closes the tick (timeline, attribution, saturation episodes), refreshes
//! the gauges, reports callers stuck waiting, says what the rate limits
//! left out, and emits the periodic report when it is due. Pools with the
//! timeline off never start it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::background::{Background, Registry};
use crate::ledger::{TickStatus, Ticks};
use crate::observe;
use crate::shared::Shared;

/// The sampler thread's name, as the OS and debuggers list it.
pub(crate) const THREAD_NAME: &str = "poolwatch-timeline";

static SAMPLER: Registry = Registry::new(THREAD_NAME);

/// Samples a pool until it is dropped (if its timeline is on).
pub(crate) fn register(shared: &Arc<Shared>) {
    if shared.tick.is_none() {
        return;
    }
    let weak: Weak<dyn Background> = Arc::downgrade(shared) as Weak<dyn Background>;
    if let Err(error) = SAMPLER.register(weak) {
        // Without a thread the timeline stays empty and the report says
        // so; nothing else depends on it.
        shared.observer.sampler_unavailable(&error);
    }
}

/// Whether the sampler thread is running (for tests and diagnostics).
pub(crate) fn running() -> bool {
    SAMPLER.running()
}

impl Background for Shared {
    fn round(&self, now: Ticks) -> Duration {
        let Some(tick) = self.tick else {
            return Duration::MAX;
        };
        {
            let mut last = self.last_tick.lock();
            let elapsed = last.until(now);
            // A little early is on time: the thread's sleep is not exact.
            if elapsed + tick / 20 < tick {
                return tick - elapsed;
            }
            *last = now;
        }
        self.sample(now, tick);
        tick
    }
}

impl Shared {
    fn sample(&self, now: Ticks, tick: Duration) {
        let status = self.observer.status();
        self.ledger.tick(
            now,
            TickStatus {
                in_use: status.in_use(),
                idle: status.available,
                waiting: status.waiting,
                max_size: status.max_size,
                peak_waiting: 0,
                lag: Default::default(), // the ledger's own reading
            },
            tick,
        );
        let waiters = self.ledger.waiters();
        if self.observer.has_server_probe() {
            // Under pressure (callers wait, the pool is at its size, or a
            // guard is out past the threshold), ask the server about the
            // holders, so the events and the report can say what their
            // backends do and who blocks whom.
            let holders = self.ledger.holders(now);
            let threshold = self.observer.thresholds.hold();
            let pressed = status.waiting > 0
                || !waiters.is_empty()
                || (status.max_size > 0 && status.in_use() >= status.max_size)
                || holders.iter().any(|h| h.held(now) >= threshold);
            if pressed {
                self.observer.ask_server(&holders);
            }
            self.observer.report_server_failure();
        }
        self.observer
            .tick(now, &waiters, self.ledger.oldest_hold(now), || {
                observe::holders_now(&self.ledger, &self.observer)
            });
        let Some(every) = self.report_every else {
            return;
        };
        let due = {
            let mut last = self.last_report.lock();
            let due = last.until(now) + tick / 20 >= every;
            if due {
                *last = now;
            }
            due
        };
        if due {
            let report = self.report();
            let verdicts: Vec<&str> = report.verdicts.iter().map(|v| v.kind.as_str()).collect();
            self.observer
                .periodic_report(&verdicts.join(","), report.flagged.len(), &report);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the thread notice now rather than at its next tick.
        if self.tick.is_some() {
            SAMPLER.wake();
        }
    }
}
