//! How a checkout ended, and why an acquire failed.

use deadpool::managed::{PoolError, TimeoutType};

/// How a guard's hold ended.
///
/// ```
/// use poolwatch::Outcome;
/// assert_eq!(Outcome::Detached.as_str(), "detached");
/// assert!(Outcome::DroppedWhilePanicking.is_error_path());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Outcome {
    /// Dropped normally; the connection went back to the pool.
    Returned,
    /// Dropped while its thread was panicking (a task that panicked while
    /// holding it); deadpool still takes the connection back.
    DroppedWhilePanicking,
    /// Detached from the pool with [`Guard::take`](crate::Guard::take): the
    /// pool's slot is freed and the connection is the caller's now.
    Detached,
    /// Handed out with [`Guard::into_inner`](crate::Guard::into_inner):
    /// poolwatch stopped tracking it there.
    Untracked,
}

impl Outcome {
    /// The name used in events and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Returned => "returned",
            Outcome::DroppedWhilePanicking => "dropped_while_panicking",
            Outcome::Detached => "detached",
            Outcome::Untracked => "untracked",
        }
    }

    /// Whether this ending points at a cleanup or error-path problem.
    pub fn is_error_path(self) -> bool {
        matches!(self, Outcome::DroppedWhilePanicking)
    }
}

/// Why an acquire failed, from deadpool's [`PoolError`].
///
/// ```
/// use deadpool::managed::{PoolError, TimeoutType};
/// use poolwatch::AcquireFailure;
/// let error: PoolError<std::io::Error> = PoolError::Timeout(TimeoutType::Wait);
/// assert_eq!(AcquireFailure::of(&error), AcquireFailure::Timeout);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum AcquireFailure {
    /// A wait, create or recycle timeout.
    Timeout,
    /// The pool was closed.
    Closed,
    /// The backend failed to create a connection (or a `post_create` hook failed).
    Backend,
    /// A timeout was configured but the pool has no runtime to run it.
    NoRuntime,
}

impl AcquireFailure {
    /// Classifies a deadpool error.
    pub fn of<E>(error: &PoolError<E>) -> Self {
        match error {
            PoolError::Timeout(TimeoutType::Wait | TimeoutType::Create | TimeoutType::Recycle) => {
                AcquireFailure::Timeout
            }
            PoolError::Closed => AcquireFailure::Closed,
            PoolError::Backend(_) | PoolError::PostCreateHook(_) => AcquireFailure::Backend,
            PoolError::NoRuntimeSpecified => AcquireFailure::NoRuntime,
        }
    }

    /// deadpool's error, described without its payload (a manager's error
    /// type need not implement `Display`; the caller gets the value itself).
    pub(crate) fn describe<E>(error: &PoolError<E>) -> &'static str {
        match error {
            PoolError::Timeout(TimeoutType::Wait) => "timed out waiting for a free slot",
            PoolError::Timeout(TimeoutType::Create) => "timed out creating a connection",
            PoolError::Timeout(TimeoutType::Recycle) => "timed out recycling a connection",
            PoolError::Closed => "pool has been closed",
            PoolError::Backend(_) => "backend error while creating a connection",
            PoolError::PostCreateHook(_) => "post_create hook failed",
            PoolError::NoRuntimeSpecified => "timeout set but no runtime specified",
        }
    }

    /// The name used in events and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AcquireFailure::Timeout => "timeout",
            AcquireFailure::Closed => "closed",
            AcquireFailure::Backend => "backend",
            AcquireFailure::NoRuntime => "no_runtime",
        }
    }
}

/// How many holds of one call site ended each way.
///
/// ```
/// let counts = poolwatch::OutcomeCounts::default();
/// assert_eq!(counts.total(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct OutcomeCounts {
    /// [`Outcome::Returned`].
    pub returned: u64,
    /// [`Outcome::DroppedWhilePanicking`].
    pub dropped_while_panicking: u64,
    /// [`Outcome::Detached`].
    pub detached: u64,
    /// [`Outcome::Untracked`].
    pub untracked: u64,
}

impl OutcomeCounts {
    pub(crate) fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Returned => self.returned += 1,
            Outcome::DroppedWhilePanicking => self.dropped_while_panicking += 1,
            Outcome::Detached => self.detached += 1,
            Outcome::Untracked => self.untracked += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: &OutcomeCounts) {
        self.returned += other.returned;
        self.dropped_while_panicking += other.dropped_while_panicking;
        self.detached += other.detached;
        self.untracked += other.untracked;
    }

    /// All holds that ended, whichever way.
    pub fn total(&self) -> u64 {
        self.returned + self.dropped_while_panicking + self.detached + self.untracked
    }
}

/// How many acquires of one call site failed, by kind.
///
/// ```
/// let counts = poolwatch::FailureCounts::default();
/// assert_eq!(counts.total(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct FailureCounts {
    /// [`AcquireFailure::Timeout`].
    pub timeouts: u64,
    /// [`AcquireFailure::Closed`].
    pub closed: u64,
    /// [`AcquireFailure::Backend`].
    pub backend: u64,
    /// [`AcquireFailure::NoRuntime`].
    pub no_runtime: u64,
}

impl FailureCounts {
    pub(crate) fn add(&mut self, failure: AcquireFailure) {
        match failure {
            AcquireFailure::Timeout => self.timeouts += 1,
            AcquireFailure::Closed => self.closed += 1,
            AcquireFailure::Backend => self.backend += 1,
            AcquireFailure::NoRuntime => self.no_runtime += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: &FailureCounts) {
        self.timeouts += other.timeouts;
        self.closed += other.closed;
        self.backend += other.backend;
        self.no_runtime += other.no_runtime;
    }

    /// All failed acquires.
    pub fn total(&self) -> u64 {
        self.timeouts + self.closed + self.backend + self.no_runtime
    }
}
