//! Budgets for the event families a storm could flood (hundreds of waiters
//! timing out at once, thousands of guards past the threshold): a few
//! events per second per pool and family, and a count of what was left
//! out. The count rides on the family's next event (`suppressed`), and
//! what no later event carried is reported by the sampler's summary, so
//! nothing left out goes unsaid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// The families with a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    HeldPastThreshold,
    SlowAcquire,
    AcquireFailed,
    AcquireCancelled,
    DroppedWhilePanicking,
    ReturnedPoisoned,
    RolledBackByDrop,
    NestedCheckout,
    StuckWaiters,
    StillHeld,
    ReturnedAfterFlagged,
    Detached,
}

impl Family {
    pub(crate) const ALL: [Family; 12] = [
        Family::HeldPastThreshold,
        Family::SlowAcquire,
        Family::AcquireFailed,
        Family::AcquireCancelled,
        Family::DroppedWhilePanicking,
        Family::ReturnedPoisoned,
        Family::RolledBackByDrop,
        Family::NestedCheckout,
        Family::StuckWaiters,
        Family::StillHeld,
        Family::ReturnedAfterFlagged,
        Family::Detached,
    ];

    /// The name in the summary event's fields.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Family::HeldPastThreshold => "held_past_threshold",
            Family::SlowAcquire => "slow_acquire",
            Family::AcquireFailed => "acquire_failed",
            Family::AcquireCancelled => "acquire_cancelled",
            Family::DroppedWhilePanicking => "dropped_while_panicking",
            Family::ReturnedPoisoned => "returned_poisoned",
            Family::RolledBackByDrop => "rolled_back_by_drop",
            Family::NestedCheckout => "nested_checkout",
            Family::StuckWaiters => "stuck_waiters",
            Family::StillHeld => "still_held",
            Family::ReturnedAfterFlagged => "returned_after_flagged",
            Family::Detached => "detached",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// At most `per_second` events in each one-second window; the rest are
/// counted and handed to the next event that goes out (or the summary).
pub(crate) struct RateLimit {
    per_second: u64,
    epoch: Instant,
    window: Mutex<Window>,
    suppressed: AtomicU64,
    /// Milliseconds since `epoch` of the oldest suppression not carried
    /// yet, plus one (0: none pending).
    pending_since: AtomicU64,
}

struct Window {
    second: u64,
    sent: u64,
}

/// An event may go out; `suppressed` were left out since the last one.
#[must_use = "a permit is for an event that goes out"]
pub(crate) struct Permit {
    pub(crate) suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(per_second: u64) -> Self {
        Self {
            per_second,
            epoch: Instant::now(),
            window: Mutex::new(Window { second: 0, sent: 0 }),
            suppressed: AtomicU64::new(0),
            pending_since: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn note_pending(&self) {
        let _ = self.pending_since.compare_exchange(
            0,
            self.now_ms() + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// `Some` when the event may be emitted now. Only called on paths that
    /// are already reporting something, never on a plain checkout.
    pub(crate) fn permit(&self) -> Option<Permit> {
        let second = self.epoch.elapsed().as_secs();
        let mut window = self.window.lock();
        if window.second != second {
            *window = Window { second, sent: 0 };
        }
        if window.sent >= self.per_second {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            self.note_pending();
            return None;
        }
        window.sent += 1;
        self.pending_since.store(0, Ordering::Relaxed);
        Some(Permit {
            suppressed: self.suppressed.swap(0, Ordering::Relaxed),
        })
    }

    /// Counts `n` events left out by their caller's own bound (e.g. the
    /// watchdog's per-scan budget).
    #[cfg(any(test, feature = "leak-report"))]
    pub(crate) fn left_out(&self, n: u64) {
        self.suppressed.fetch_add(n, Ordering::Relaxed);
        self.note_pending();
    }

    /// Takes what was left out and not carried by a later event for at
    /// least `grace` (the family's next event gets the first chance).
    fn take_suppressed(&self, grace: std::time::Duration) -> u64 {
        let since = self.pending_since.load(Ordering::Relaxed);
        if since == 0 {
            return 0;
        }
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        if self.now_ms() + 1 < since.saturating_add(grace_ms) {
            return 0;
        }
        self.pending_since.store(0, Ordering::Relaxed);
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

/// One budget per family.
pub(crate) struct Budgets {
    limits: [RateLimit; Family::ALL.len()],
}

/// Per pool and kind of event: enough to see a pattern, few enough to read.
const EVENTS_PER_SECOND: u64 = 5;

impl Default for Budgets {
    fn default() -> Self {
        Self {
            limits: std::array::from_fn(|_| RateLimit::new(EVENTS_PER_SECOND)),
        }
    }
}

impl Budgets {
    pub(crate) fn permit(&self, family: Family) -> Option<Permit> {
        self.limits[family.index()].permit()
    }

    #[cfg(any(test, feature = "leak-report"))]
    pub(crate) fn left_out(&self, family: Family, n: u64) {
        if n > 0 {
            self.limits[family.index()].left_out(n);
        }
    }

    /// What was left out and not carried by a later event within `grace`,
    /// per family (families with nothing to report are skipped), taken.
    pub(crate) fn take_suppressed(&self, grace: std::time::Duration) -> Vec<(Family, u64)> {
        Family::ALL
            .iter()
            .map(|&f| (f, self.limits[f.index()].take_suppressed(grace)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_budget_then_counts_the_rest() {
        let limit = RateLimit::new(3);
        let permits: Vec<_> = (0..10).map(|_| limit.permit()).collect();
        // The 10 calls almost surely fall in one second; if a second boundary
        // passed, more may be allowed, never fewer.
        let allowed = permits.iter().filter(|p| p.is_some()).count();
        assert!(allowed >= 3, "{allowed}");
        assert_eq!(permits[0].as_ref().unwrap().suppressed, 0);
        if allowed == 3 {
            assert_eq!(limit.suppressed.load(Ordering::Relaxed), 7);
        }
    }

    #[test]
    fn what_no_event_carried_is_taken_once() {
        let budgets = Budgets::default();
        let permits: Vec<_> = (0..8)
            .map(|_| budgets.permit(Family::HeldPastThreshold))
            .collect();
        let allowed = permits.iter().filter(|p| p.is_some()).count() as u64;
        budgets.left_out(Family::StillHeld, 40);
        // Within the grace, the next event of each family may carry it.
        assert!(budgets
            .take_suppressed(std::time::Duration::from_secs(60))
            .is_empty());
        let taken = budgets.take_suppressed(std::time::Duration::ZERO);
        assert!(taken.contains(&(Family::StillHeld, 40)), "{taken:?}");
        let held = taken
            .iter()
            .find(|(f, _)| *f == Family::HeldPastThreshold)
            .map_or(0, |(_, n)| *n);
        assert_eq!(held, 8 - allowed);
        assert!(budgets
            .take_suppressed(std::time::Duration::ZERO)
            .is_empty());
    }
}
