//! The pool pressure timeline: active, idle and waiting connections and the
//! checkout rate, sampled at a fixed tick into a bounded ring buffer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::snapshot::PoolStatus;

/// One tick of the pressure timeline.
///
/// ```
/// let sample = poolwatch::PressureSample::default();
/// assert_eq!(sample.in_use, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct PressureSample {
    /// Milliseconds since the pool was wrapped.
    pub offset_ms: u64,
    /// Connections handed out.
    pub in_use: usize,
    /// Connections open and idle.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// The pool's maximum size.
    pub max_size: usize,
    /// Successful checkouts since the previous sample.
    pub checkouts: u64,
    /// Milliseconds since the previous sample (the tick, give or take
    /// scheduling).
    pub interval_ms: u64,
}

impl PressureSample {
    /// Checkouts per second during this sample's interval.
    pub fn checkout_rate(&self) -> f64 {
        if self.interval_ms == 0 {
            return 0.0;
        }
        self.checkouts as f64 * 1000.0 / self.interval_ms as f64
    }
}

/// The ring buffer of one pool's samples.
pub(crate) struct Timeline {
    pub(crate) tick: Duration,
    capacity: usize,
    started: Instant,
    state: Mutex<TimelineState>,
}

struct TimelineState {
    samples: VecDeque<PressureSample>,
    last_at: Instant,
    last_checkouts: u64,
}

impl Timeline {
    /// Keeps `window / tick` samples (at least 2).
    pub(crate) fn new(tick: Duration, window: Duration, now: Instant) -> Self {
        let capacity = (window.as_nanos() / tick.as_nanos().max(1)).clamp(2, 1 << 20) as usize;
        Self {
            tick,
            capacity,
            started: now,
            state: Mutex::new(TimelineState {
                samples: VecDeque::with_capacity(capacity.min(1024)),
                last_at: now,
                last_checkouts: 0,
            }),
        }
    }

    /// Whether a tick has passed since the last sample.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.state.lock().last_at) >= self.tick
    }

    /// Records one sample; `total_checkouts` is the pool's running count.
    pub(crate) fn record(&self, now: Instant, status: PoolStatus, total_checkouts: u64) {
        let mut state = self.state.lock();
        let interval = now.saturating_duration_since(state.last_at);
        let sample = PressureSample {
            offset_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            in_use: status.in_use(),
            idle: status.available,
            waiting: status.waiting,
            max_size: status.max_size,
            checkouts: total_checkouts.saturating_sub(state.last_checkouts),
            interval_ms: interval.as_millis() as u64,
        };
        state.last_at = now;
        state.last_checkouts = total_checkouts;
        if state.samples.len() == self.capacity {
            state.samples.pop_front();
        }
        state.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> Vec<PressureSample> {
        self.state.lock().samples.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(in_use: usize, idle: usize, waiting: usize) -> PoolStatus {
        PoolStatus {
            max_size: 4,
            size: in_use + idle,
            available: idle,
            waiting,
        }
    }

    #[test]
    fn keeps_the_last_window_of_samples() {
        let start = Instant::now();
        let timeline = Timeline::new(Duration::from_secs(1), Duration::from_secs(3), start);
        for i in 1..=5u64 {
            let now = start + Duration::from_secs(i);
            assert!(timeline.due(now));
            timeline.record(now, status(i as usize % 4, 1, 0), i * 10);
        }
        let samples = timeline.samples();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].offset_ms, 3000);
        assert_eq!(samples[2].offset_ms, 5000);
        assert_eq!(samples[2].checkouts, 10);
        assert_eq!(samples[2].interval_ms, 1000);
        assert_eq!(samples[2].checkout_rate(), 10.0);
    }

    #[test]
    fn not_due_before_a_tick() {
        let start = Instant::now();
        let timeline = Timeline::new(Duration::from_secs(1), Duration::from_secs(60), start);
        assert!(!timeline.due(start + Duration::from_millis(500)));
        assert!(timeline.due(start + Duration::from_millis(1000)));
    }
}
