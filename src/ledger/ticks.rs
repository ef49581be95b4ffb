//! [`Ticks`]: instants as 8-byte nanosecond counts, so a ledger entry and
//! the watchdog's scan column stay small (a `std::time::Instant` is 16
//! bytes on Linux).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds since poolwatch's epoch (the first ledger made in the
/// process): an `Instant` in 8 bytes, good for 584 years.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticks(u64);

static EPOCH: OnceLock<Instant> = OnceLock::new();

impl Ticks {
    /// Later than any instant: the scan column's mark for a free slot.
    pub(crate) const NEVER: Ticks = Ticks(u64::MAX);

    /// Fixes the epoch (idempotent). Called when a ledger is made, so every
    /// instant it later converts is after it; earlier ones clamp to 0.
    pub(crate) fn init() {
        EPOCH.get_or_init(Instant::now);
    }

    #[inline]
    fn epoch() -> Instant {
        *EPOCH.get_or_init(Instant::now)
    }

    #[inline]
    pub(crate) fn of(instant: Instant) -> Ticks {
        let since = instant.saturating_duration_since(Self::epoch());
        Ticks(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX - 1))
    }

    /// The time from `self` to `later` (zero if `later` is earlier).
    #[inline]
    pub(crate) fn until(self, later: Ticks) -> Duration {
        Duration::from_nanos(later.0.saturating_sub(self.0))
    }

    /// `self` moved back by `d`, or `None` before the epoch.
    #[cfg(any(test, feature = "leak-report"))]
    pub(crate) fn checked_sub(self, d: Duration) -> Option<Ticks> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(d).map(Ticks)
    }

    /// Back to an `Instant` (for tests and models that think in instants).
    #[cfg(test)]
    pub(crate) fn to_instant(self) -> Instant {
        Self::epoch() + Duration::from_nanos(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_instants() {
        Ticks::init();
        let a = Instant::now();
        let b = a + Duration::from_millis(1500);
        let (ta, tb) = (Ticks::of(a), Ticks::of(b));
        assert!(ta < tb);
        assert_eq!(ta.until(tb), Duration::from_millis(1500));
        assert_eq!(tb.until(ta), Duration::ZERO);
        assert_eq!(tb.checked_sub(Duration::from_millis(1500)), Some(ta));
        assert_eq!(Ticks::of(ta.to_instant()), ta);
        assert!(tb < Ticks::NEVER);
    }

    #[test]
    fn instants_before_the_epoch_clamp_to_it() {
        Ticks::init();
        let long_ago = Ticks::epoch()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(Ticks::epoch());
        assert_eq!(Ticks::of(long_ago), Ticks(0));
        assert_eq!(Ticks(0).checked_sub(Duration::from_nanos(1)), None);
    }
}
