//! The pressure timeline's public sample type: one per sampler tick.

/// One tick of the pressure timeline.
///
/// ```
/// let sample = poolwatch::PressureSample::default();
/// assert_eq!(sample.in_use, 0);
/// assert_eq!(sample.mean_in_use(), 0.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct PressureSample {
    /// Milliseconds since the pool was wrapped, at the tick's end.
    pub offset_ms: u64,
    /// Connections handed out at the tick's end.
    pub in_use: usize,
    /// Connections open and idle at the tick's end.
    pub idle: usize,
    /// Callers waiting at the tick's end.
    pub waiting: usize,
    /// Most callers waiting at once during the tick (tracked on the
    /// acquire path, not sampled).
    pub peak_waiting: usize,
    /// The pool's maximum size.
    pub max_size: usize,
    /// Successful checkouts during the tick.
    pub checkouts: u64,
    /// The tick's length in milliseconds.
    pub interval_ms: u64,
    /// Connection time held during the tick, in milliseconds (holds in
    /// progress included): divided by `interval_ms`, the mean number of
    /// connections in use.
    pub connection_ms: f64,
    /// Of that, in a database call.
    pub busy_ms: f64,
    /// Of that, idle inside a transaction.
    pub idle_in_transaction_ms: f64,
    /// Time callers spent waiting during the tick, in milliseconds.
    pub waited_ms: f64,
    /// Callers waited, or every connection was in use.
    pub saturated: bool,
    /// How long a task waited for its turn on the service's runtime
    /// during the tick, on average, when poolwatch measured it (it does
    /// while callers queue, with the `tokio` feature): a busy runtime
    /// stretches every hold by a few such waits.
    pub runtime_lag_ms: Option<f64>,
}

impl PressureSample {
    /// Checkouts per second during this sample's interval.
    pub fn checkout_rate(&self) -> f64 {
        if self.interval_ms == 0 {
            return 0.0;
        }
        self.checkouts as f64 * 1000.0 / self.interval_ms as f64
    }

    /// Mean connections in use during the tick (connection time ÷ tick).
    pub fn mean_in_use(&self) -> f64 {
        if self.interval_ms == 0 {
            return 0.0;
        }
        self.connection_ms / self.interval_ms as f64
    }

    /// The load offered during the tick, in connections (Little's law from
    /// measured time): connections in use on average plus callers waiting
    /// on average.
    pub fn offered_load(&self) -> f64 {
        if self.interval_ms == 0 {
            return 0.0;
        }
        (self.connection_ms + self.waited_ms) / self.interval_ms as f64
    }
}
