//! The runtime's scheduling delay while callers wait: how long a probe
//! task on the service's runtime waited for its turn. A busy
//! runtime (CPU-bound or blocking work in its tasks) makes every holder
//! wait its turn several times per hold — to send, to read the answer,
//! to drop the guard — and that time is held connection time outside any
//! database call that no holder's code spent. The diagnosis weighs time
//! outside calls against it.
//!
//! The ledger only records here: the pool layer spawns the probe (one in
//! flight at a time, only from acquires that had to wait) and reports
//! when it ran; the sampler takes a tick's readings when it closes it.
// Without tokio nothing spawns a probe: the readings stay empty.
#![cfg_attr(not(feature = "tokio"), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ticks::Ticks;

/// A probe in flight longer than this is taken as lost (its runtime shut
/// down, say) and another may start; if it does run, its delay still
/// counts.
const LOST_AFTER: Duration = Duration::from_secs(1);
/// At most one probe starts per this much time.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// No probe in flight.
const NONE: u64 = u64::MAX;

/// Scheduling delays read over some time: their sum, count and maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LagReadings {
    sum_ns: u64,
    count: u64,
    max_ns: u64,
}

impl LagReadings {
    pub(crate) fn merge(&mut self, other: &LagReadings) {
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The mean delay, if any was read.
    pub(crate) fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_ns / self.count))
    }

    /// The longest delay read.
    pub(crate) fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.max_ns))
    }

    fn add(&mut self, ns: u64) {
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.count += 1;
        self.max_ns = self.max_ns.max(ns);
    }
}

/// The probe's state and the readings since the last tick, as atomics:
/// written by probes on the runtime, taken by the sampler.
#[derive(Debug)]
pub(crate) struct LagRecorder {
    /// When the probe in flight was spawned ([`NONE`]: none).
    in_flight_since: AtomicU64,
    /// When the last probe was spawned (for [`PROBE_EVERY`]).
    last_start: AtomicU64,
    sum_ns: AtomicU64,
    count: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LagRecorder {
    fn default() -> Self {
        Self {
            in_flight_since: AtomicU64::new(NONE),
            last_start: AtomicU64::new(NONE),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl LagRecorder {
    /// Whether a probe spawned at `now` should start: none in flight (or
    /// the one in flight is lost) and none started just before. `true`
    /// claims the slot; the caller spawns and the probe calls
    /// [`Self::finish`] with this `now`.
    pub(crate) fn try_start(&self, now: Ticks) -> bool {
        let Some(since) = self.due(now) else {
            return false;
        };
        let claimed = self
            .in_flight_since
            .compare_exchange(since, now.raw(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if claimed {
            self.last_start.store(now.raw(), Ordering::Relaxed);
        }
        claimed
    }

    /// Whether a probe may start at `now` (loads only: a cheap check
    /// before the spawn is prepared), with the in-flight word seen.
    pub(crate) fn due(&self, now: Ticks) -> Option<u64> {
        let last = self.last_start.load(Ordering::Relaxed);
        if last != NONE && Ticks::from_raw(last).until(now) < PROBE_EVERY {
            return None;
        }
        let since = self.in_flight_since.load(Ordering::Relaxed);
        if since != NONE && Ticks::from_raw(since).until(now) < LOST_AFTER {
            return None;
        }
        Some(since)
    }

    /// The probe spawned at `spawned` waited `waited` for its turn.
    pub(crate) fn finish(&self, spawned: Ticks, waited: Duration) {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.abandon(spawned);
    }

    /// Frees the slot of the probe spawned at `spawned`, if it is still
    /// its (a lost probe's slot may be another's by now); records
    /// nothing. Alone: a probe dropped unfinished (its runtime shut down).
    pub(crate) fn abandon(&self, spawned: Ticks) {
        let _ = self.in_flight_since.compare_exchange(
            spawned.raw(),
            NONE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The readings since the last take, and resets them (the sampler,
    /// closing a tick). A probe still waiting counts as a reading of
    /// at least how long it has waited: a runtime too busy to run it at
    /// all is the busiest.
    pub(crate) fn take(&self, now: Ticks) -> LagReadings {
        self.read(now, |word| word.swap(0, Ordering::Relaxed))
    }

    /// The readings since the last take, without resetting them (a
    /// reader's view of the open tick).
    pub(crate) fn peek(&self, now: Ticks) -> LagReadings {
        self.read(now, |word| word.load(Ordering::Relaxed))
    }

    /// The readings, each word read with `read`, and the probe still
    /// waiting (see [`Self::take`]).
    fn read(&self, now: Ticks, read: impl Fn(&AtomicU64) -> u64) -> LagReadings {
        let mut readings = LagReadings {
            sum_ns: read(&self.sum_ns),
            count: read(&self.count),
            max_ns: read(&self.max_ns),
        };
        let since = self.in_flight_since.load(Ordering::Relaxed);
        if since != NONE {
            let waiting = Ticks::from_raw(since).nanos_until(now);
            // A probe spawned a moment ago says nothing yet.
            if waiting >= readings.max_ns && Duration::from_nanos(waiting) >= PROBE_EVERY {
                readings.add(waiting);
            }
        }
        readings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn one_probe_at_a_time_and_its_delay_is_read_once() {
        Ticks::init();
        let start = Instant::now();
        let at = |ms: u64| Ticks::of(start + Duration::from_millis(ms));
        let lag = LagRecorder::default();
        assert!(lag.try_start(at(10)));
        assert!(!lag.try_start(at(20)), "one in flight");
        lag.finish(at(10), Duration::from_millis(3));
        assert!(!lag.try_start(at(14)), "not again so soon");
        assert!(lag.try_start(at(20)));
        lag.finish(at(20), Duration::from_millis(1));
        let taken = lag.take(at(30));
        assert_eq!(taken.mean(), Some(Duration::from_millis(2)));
        assert_eq!(taken.max(), Some(Duration::from_millis(3)));
        assert_eq!(lag.take(at(31)), LagReadings::default());
    }

    #[test]
    fn a_probe_the_runtime_never_ran_counts_as_waiting_so_far() {
        Ticks::init();
        let start = Instant::now();
        let at = |ms: u64| Ticks::of(start + Duration::from_millis(ms));
        let lag = LagRecorder::default();
        assert!(lag.try_start(at(0)));
        assert_eq!(lag.peek(at(1)), LagReadings::default(), "just spawned");
        assert_eq!(lag.peek(at(400)).mean(), Some(Duration::from_millis(400)));
        assert_eq!(lag.take(at(500)).max(), Some(Duration::from_millis(500)));
        // Lost after a second: another may start; the late one still counts.
        assert!(!lag.try_start(at(900)));
        assert!(lag.try_start(at(1100)));
        lag.finish(at(0), Duration::from_millis(1150));
        lag.finish(at(1100), Duration::from_millis(1));
        let taken = lag.take(at(1200));
        assert_eq!(taken.max(), Some(Duration::from_millis(1150)));
        assert!(lag.try_start(at(1210)), "the slot is free");
        lag.abandon(at(1210));
        assert!(lag.try_start(at(1220)));
    }
}
