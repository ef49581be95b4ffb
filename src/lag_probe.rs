//! Spawns the scheduling-delay probe (`ledger::lag`) on the runtime of an
//! acquire that has to wait: a task that times two waits for its turn and
//! keeps the longer. Woken by itself while it runs, a task goes to the
//! back of its worker's run queue, behind everything runnable; yielding
//! (`tokio::task::yield_now`), it waits for the next poll of the I/O
//! driver and the tasks that poll wakes — the wait of a holder whose
//! answer has arrived on its socket. (Yielding alone is not enough: the
//! runtime wakes yielded tasks last-in first, so among tasks that only
//! yield the probe jumps the queue.) At most one is in flight per pool;
//! nothing is spawned outside a tokio runtime or without the `tokio`
//! feature, and it needs no timer (a runtime may have none).

use std::sync::Arc;

use crate::export::LagMetric;
use crate::ledger::{LagRecorder, Ticks};

/// Starts a probe if the pool has none in flight (cold path: only
/// acquires that wait call it).
#[cfg(feature = "tokio")]
pub(crate) fn start(lag: &Arc<LagRecorder>, metric: impl FnOnce() -> LagMetric, now: Ticks) {
    if lag.due(now).is_none() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !lag.try_start(now) {
        return;
    }
    let probe = Probe {
        lag: Arc::clone(lag),
        metric: metric(),
        spawned: now,
        done: false,
    };
    // Dropped with the JoinHandle: the task runs detached.
    drop(runtime.spawn(probe.run()));
}

#[cfg(not(feature = "tokio"))]
pub(crate) fn start(_lag: &Arc<LagRecorder>, _metric: impl FnOnce() -> LagMetric, _now: Ticks) {}

/// The probe's state; dropped unfinished (its runtime shut down first),
/// it frees the pool's probe slot.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
struct Probe {
    lag: Arc<LagRecorder>,
    metric: LagMetric,
    spawned: Ticks,
    done: bool,
}

#[cfg(feature = "tokio")]
impl Probe {
    async fn run(mut self) {
        // Behind the tasks runnable now ...
        let first_turn = Ticks::now();
        NextTurn { woken: false }.await;
        let queued = Ticks::now();
        // ... and behind those the next poll of the I/O driver wakes
        // (where `yield_now` waits), as a holder waiting for its answer.
        tokio::task::yield_now().await;
        let waited = first_turn.until(queued).max(queued.until(Ticks::now()));
        self.lag.finish(self.spawned, waited);
        self.metric.record(waited);
        self.done = true;
    }
}

/// Pending once, having woken its own task: ready at the task's next
/// turn.
#[cfg(feature = "tokio")]
struct NextTurn {
    woken: bool,
}

#[cfg(feature = "tokio")]
impl std::future::Future for NextTurn {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.woken {
            return std::task::Poll::Ready(());
        }
        self.woken = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.done {
            self.lag.abandon(self.spawned);
        }
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A runtime whose two other tasks compute in 20 ms slices: the
    /// probe waits two slices for its turn.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_runtime_reads_as_lag() {
        Ticks::init();
        let lag = Arc::new(LagRecorder::default());
        let until = Instant::now() + Duration::from_millis(300);
        let busy: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move {
                    while Instant::now() < until {
                        let slice = Instant::now();
                        while slice.elapsed() < Duration::from_millis(20) {
                            std::hint::spin_loop();
                        }
                        NextTurn { woken: false }.await;
                    }
                })
            })
            .collect();
        // Queued behind them; its next turn comes after a slice of each.
        start(&lag, LagMetric::default, Ticks::now());
        for task in busy {
            task.await.unwrap();
        }
        let readings = lag.take(Ticks::now());
        let mean = readings.mean().expect("the probe ran");
        assert!(mean >= Duration::from_millis(15), "{readings:?}");
    }

    /// An idle runtime: the probe's turn comes at once.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_runtime_reads_as_no_lag() {
        Ticks::init();
        let lag = Arc::new(LagRecorder::default());
        start(&lag, LagMetric::default, Ticks::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let readings = lag.take(Ticks::now());
        assert!(readings.mean().expect("the probe ran") < Duration::from_millis(5));
    }

    /// Outside a runtime nothing is spawned and no slot is claimed.
    #[test]
    fn outside_a_runtime_nothing_starts() {
        Ticks::init();
        let lag = Arc::new(LagRecorder::default());
        start(&lag, LagMetric::default, Ticks::now());
        assert!(lag.try_start(Ticks::now()), "the slot is still free");
    }
}
