//! A per-pool budget of events per second, so a storm (hundreds of waiters
//! timing out or waiting past the threshold at once) gives a few events and
//! a count of what was left out, never a flood.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// At most `per_second` events in each one-second window; the rest are
/// counted and handed to the next event that goes out.
pub(crate) struct RateLimit {
    per_second: u64,
    epoch: Instant,
    window: Mutex<Window>,
    suppressed: AtomicU64,
}

struct Window {
    second: u64,
    sent: u64,
}

/// An event may go out; `suppressed` were left out since the last one.
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
        }
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
            return None;
        }
        window.sent += 1;
        Some(Permit {
            suppressed: self.suppressed.swap(0, Ordering::Relaxed),
        })
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
}
