//! The watchdog (`leak-report`): guards flagged while they are still held.
//!
//! Two threads serve every watched pool. The scanner (`poolwatch-scan`,
//! in the background [`Registry`]) marks overdue guards in short shard-lock
//! holds and copies a bounded number of them out; the reporter
//! (`poolwatch-watchdog`) symbolises their stacks, confirms each guard is
//! still held and not yet reported at that level, and emits at once. So
//! neither symbolisation (whose first call loads debug info, 25–100 ms)
//! nor a slow subscriber ever delays a scan; every event shows the hold
//! at emission; levels come in order (one queue); and a flag is never
//! reported after its guard's return (the confirmation runs under the
//! guard's shard lock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::background::{Background, Registry};
use crate::ledger::{Overdue, Ticks};
use crate::ratelimit::Family;
use crate::shared::Shared;

/// The scanner thread's name.
pub(crate) const SCANNER_NAME: &str = "poolwatch-scan";
/// The reporter thread's name: the watchdog's events come from it.
pub(crate) const REPORTER_NAME: &str = "poolwatch-watchdog";

static SCANNER: Registry = Registry::new(SCANNER_NAME);

/// Scans no more often than this, however small the threshold.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Scans at least this often, so a lowered threshold applies promptly.
const MAX_INTERVAL: Duration = Duration::from_secs(1);
/// Slab keys scanned per shard-lock hold: a hold stays in the tens of
/// microseconds even when every guard is overdue.
const KEYS_PER_LOCK: usize = 1024;
/// Guards copied out for reporting per scan and pool; the rest are marked
/// and counted (the sampler's summary reports them).
const REPORTS_PER_SCAN: usize = 32;
/// Reports queued for the reporter at most (memory stays bounded).
const QUEUE: usize = 256;

/// A quarter of the hold threshold: a guard is flagged at most 25 % past
/// it.
fn interval(threshold: Duration) -> Duration {
    (threshold / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Whether poolwatch's watchdog is running.
///
/// With the `leak-report` feature the watchdog starts with the first
/// [`WatchedPool`](crate::WatchedPool) and stops soon after the last one
/// (every clone) is dropped. Without the feature there is no watchdog and
/// this is always `false`.
///
/// ```
/// // No pool exists in this program, so no watchdog runs.
/// assert!(!poolwatch::watchdog_running());
/// ```
pub fn watchdog_running() -> bool {
    SCANNER.running()
}

/// Makes the scanner look again now: a threshold changed or a pool went
/// away.
pub(crate) fn wake() {
    SCANNER.wake();
}

/// A flag on its way to the reporter.
struct Report {
    pool: Weak<Shared>,
    shard: usize,
    overdue: Overdue,
}

struct Reporter {
    sender: Option<SyncSender<Report>>,
}

static REPORTER: Mutex<Reporter> = parking_lot::const_mutex(Reporter { sender: None });

/// Starts the reporter if it is not running.
fn ensure_reporter(shared: &Shared) {
    let mut reporter = REPORTER.lock();
    if reporter.sender.is_some() {
        return;
    }
    let (sender, receiver) = mpsc::sync_channel(QUEUE);
    match std::thread::Builder::new()
        .name(REPORTER_NAME.to_owned())
        .spawn(move || report(receiver))
    {
        Ok(_) => reporter.sender = Some(sender),
        Err(error) => shared.observer.watchdog_unavailable(&error),
    }
}

fn send(report: Report) -> bool {
    let reporter = REPORTER.lock();
    let Some(sender) = &reporter.sender else {
        return false;
    };
    match sender.try_send(report) {
        Ok(()) => true,
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
    }
}

/// The reporter's loop: exits once the scanner has stopped and nothing is
/// queued.
fn report(receiver: Receiver<Report>) {
    // Load the debug info now, ahead of the first flag, on this thread.
    crate::stack::warm_up();
    loop {
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(report) => confirm_and_emit(report),
            Err(RecvTimeoutError::Timeout) => {
                let mut reporter = REPORTER.lock();
                if !SCANNER.running() {
                    // Anything sent meanwhile is still in the queue.
                    while let Ok(report) = receiver.try_recv() {
                        drop(reporter);
                        confirm_and_emit(report);
                        reporter = REPORTER.lock();
                    }
                    reporter.sender = None;
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn confirm_and_emit(report: Report) {
    let Some(shared) = report.pool.upgrade() else {
        return; // the pool is gone; its close reported what was held
    };
    // Symbolise before confirming, so the confirmation and the event are
    // as close together as the formatting allows.
    let backtrace = crate::stack::render_opt(report.overdue.stack.as_ref());
    let Some(shard) = shared.ledger.shard(report.shard) else {
        return;
    };
    let now = Ticks::now();
    let Some((holder, _)) = shard.confirm_flag(&report.overdue, now) else {
        return; // returned meanwhile, or already reported at this level
    };
    shared
        .observer
        .still_held(&holder, report.overdue.level, backtrace.as_deref(), now);
}

/// Why a never-returned report was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `WatchedPool::close`.
    Closed,
    /// The last `WatchedPool` handle was dropped.
    Dropped,
}

impl Ending {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Dropped => "dropped",
        }
    }
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Ending::Closed => "the pool was closed",
            Ending::Dropped => "the last pool handle was dropped",
        }
    }
}

/// One pool as the watchdog sees it. Held only by the
/// [`WatchedPool`](crate::WatchedPool) handles (guards hold their shard,
/// not this), so its `Drop` runs when the last handle goes.
pub(crate) struct PoolWatch {
    shared: Arc<Shared>,
    /// The never-returned report was made (at `close`): not again at drop.
    reported: AtomicBool,
    last_scan: Mutex<Ticks>,
}

impl PoolWatch {
    /// Creates the watch and registers it with the scanner.
    pub(crate) fn start(shared: Arc<Shared>) -> Arc<Self> {
        let watch = Arc::new(Self {
            shared,
            reported: AtomicBool::new(false),
            last_scan: Mutex::new(Ticks::ZERO),
        });
        let weak: Weak<dyn Background> = Arc::downgrade(&watch) as Weak<dyn Background>;
        if let Err(error) = SCANNER.register(weak) {
            watch.shared.observer.watchdog_unavailable(&error);
        }
        ensure_reporter(&watch.shared);
        watch
    }

    /// Reports every guard still held at ERROR, once per pool.
    pub(crate) fn report_never_returned(&self, ending: Ending) {
        if self.reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let now = Ticks::now();
        let all = self.shared.ledger.flag_all(now);
        self.shared
            .observer
            .never_returned(&all, ending.as_str(), ending.describe(), now);
    }

    /// The pool lives on outside poolwatch (`into_inner`): its guards still
    /// held are not "never returned".
    pub(crate) fn skip_final_report(&self) {
        self.reported.store(true, Ordering::Relaxed);
    }

    fn scan(&self, now: Ticks, threshold: Duration) {
        let observer = &self.shared.observer;
        let (flagged, unreported) =
            self.shared
                .ledger
                .flag_overdue(now, threshold, KEYS_PER_LOCK, REPORTS_PER_SCAN);
        for _ in 0..unreported.first_flags {
            observer.metrics.flagged();
        }
        observer.left_out(Family::StillHeld, unreported.total());
        let pool = Arc::downgrade(&self.shared);
        for (shard, overdue) in flagged {
            let sent = send(Report {
                pool: Weak::clone(&pool),
                shard,
                overdue,
            });
            if !sent {
                observer.left_out(Family::StillHeld, 1);
            }
        }
    }
}

impl Background for PoolWatch {
    fn round(&self, now: Ticks) -> Duration {
        let threshold = self.shared.observer.thresholds.hold();
        let interval = interval(threshold);
        {
            let mut last = self.last_scan.lock();
            let elapsed = last.until(now);
            if elapsed + interval / 20 < interval {
                return interval - elapsed;
            }
            *last = now;
        }
        self.scan(now, threshold);
        interval
    }
}

impl Drop for PoolWatch {
    fn drop(&mut self) {
        self.report_never_returned(Ending::Dropped);
        SCANNER.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_follows_the_threshold() {
        let ms = Duration::from_millis;
        assert_eq!(interval(ms(400)), ms(100));
        assert_eq!(interval(ms(1)), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(60)), MAX_INTERVAL);
    }
}
