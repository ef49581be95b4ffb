//! [`Ticks`]: the ledger's clock. Instants as 8-byte nanosecond counts, so
//! a ledger entry and the watchdog's scan column stay small (a
//! `std::time::Instant` is 16 bytes on Linux), read from the CPU's counter
//! through `quanta`: about 11 ns a read where `Instant::now()` costs 28 ns
//! (a virtual machine's vDSO clock), and the hot path reads it twice.
//!
//! All instants the ledger compares come from this one clock; the counter
//! and the system clock drift apart slowly (parts per million), so a
//! `std::time::Instant` is converted ([`Ticks::of`]) only in tests and
//! benches, never compared with ticks read here in production.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds since poolwatch's epoch (the first ledger made in the
/// process): an instant in 8 bytes, good for 584 years.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ticks(u64);

/// quanta's clock (the TSC where it is invariant, else the OS monotonic
/// clock) with the raw reading taken as the epoch, and the same moment on
/// the standard clock for [`Ticks::of`].
struct Clock {
    clock: quanta::Clock,
    epoch_raw: u64,
    epoch: Instant,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

impl Clock {
    #[inline]
    fn get() -> &'static Clock {
        CLOCK.get_or_init(|| {
            // Calibrates the counter against the OS clock, once per
            // process (under a millisecond here).
            let clock = quanta::Clock::new();
            Clock {
                epoch_raw: clock.raw(),
                epoch: Instant::now(),
                clock,
            }
        })
    }
}

impl Ticks {
    /// poolwatch's epoch.
    #[cfg(any(test, feature = "leak-report"))]
    pub(crate) const ZERO: Ticks = Ticks(0);

    /// Later than any instant: the scan column's mark for a free slot.
    pub(crate) const NEVER: Ticks = Ticks(u64::MAX);

    /// Sets up the clock (idempotent). Called when a ledger is made, so
    /// the first checkout does not pay for the calibration.
    pub(crate) fn init() {
        Clock::get();
    }

    /// Now, on the ledger's clock.
    #[inline]
    pub(crate) fn now() -> Ticks {
        let clock = Clock::get();
        Ticks(
            clock
                .clock
                .delta_as_nanos(clock.epoch_raw, clock.clock.raw()),
        )
    }

    /// A standard-clock instant as ticks. Only for instants that are
    /// compared with other converted ones (tests, benches, models): the
    /// two clocks drift apart slowly.
    pub(crate) fn of(instant: Instant) -> Ticks {
        let since = instant.saturating_duration_since(Clock::get().epoch);
        Ticks(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX - 1))
    }

    /// The time from `self` to `later` (zero if `later` is earlier).
    #[inline]
    pub(crate) fn until(self, later: Ticks) -> Duration {
        Duration::from_nanos(self.nanos_until(later))
    }

    /// The tick count, for storing in an atomic word ([`Self::NEVER`]'s
    /// `u64::MAX` can stand for "none": no real instant reaches it).
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// The inverse of [`Self::raw`].
    pub(crate) fn from_raw(raw: u64) -> Ticks {
        Ticks(raw)
    }

    /// [`Self::until`] in nanoseconds (0 if `later` is earlier): for sums
    /// kept on the hot path, which `Duration` arithmetic would normalize
    /// at every step.
    pub(crate) fn nanos_until(self, later: Ticks) -> u64 {
        later.0.saturating_sub(self.0)
    }

    /// `self` moved back by `d`, or `None` before the epoch.
    pub(crate) fn checked_sub(self, d: Duration) -> Option<Ticks> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(d).map(Ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_instants_keep_their_distances_and_order() {
        let a = Instant::now();
        let b = a + Duration::from_millis(1500);
        let (ta, tb) = (Ticks::of(a), Ticks::of(b));
        assert!(ta < tb);
        assert_eq!(ta.until(tb), Duration::from_millis(1500));
        assert_eq!(tb.until(ta), Duration::ZERO);
        assert_eq!(tb.checked_sub(Duration::from_millis(1500)), Some(ta));
        assert!(tb < Ticks::NEVER);
    }

    #[test]
    fn instants_before_the_epoch_clamp_to_it() {
        let epoch = Clock::get().epoch;
        let long_ago = epoch.checked_sub(Duration::from_secs(1)).unwrap_or(epoch);
        assert_eq!(Ticks::of(long_ago), Ticks(0));
        assert_eq!(Ticks(0).checked_sub(Duration::from_nanos(1)), None);
    }

    /// The ledger's clock measures what the standard clock measures.
    #[test]
    fn ticks_agree_with_the_standard_clock() {
        let (t0, i0) = (Ticks::now(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (t1, i1) = (Ticks::now(), Instant::now());
        let ticks = t0.until(t1).as_secs_f64();
        let std = i1.duration_since(i0).as_secs_f64();
        assert!(ticks >= 0.049, "{ticks}");
        assert!((ticks - std).abs() < 0.001, "ticks {ticks} s, std {std} s");
        assert!(Ticks::now() >= t1, "monotonic");
    }
}
