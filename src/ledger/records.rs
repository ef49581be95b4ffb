//! The vocabulary of a checkout's life, as the ledger hands it out (plain
//! data, copied out under a shard lock):
//!
//! * [`Checkout`]: what opens a record (the acquire that succeeded);
//! * [`Holder`]: a checkout still held;
//! * [`Waiter`]: an acquire still waiting;
//! * [`Closed`]: what closing a record returns (the hold that ended).

use std::num::NonZeroU64;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use super::connection::{Counters, EndingDetails, Totals, TransactionState};
use super::stats::StatsKey;
use super::ticks::Ticks;
use crate::outcome::Outcome;
use crate::site::{CallSite, SpanInfo, SpanRef};

/// The task an acquire or hold belongs to (tokio's task id), when known.
pub(crate) type TaskId = Option<NonZeroU64>;

/// A successful acquire, as the pool saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checkout {
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanRef>,
    pub(crate) task: TaskId,
    pub(crate) waited: Duration,
    pub(crate) acquired: Ticks,
    /// The database integration's key of the connection, if it observes
    /// connections.
    pub(crate) connection: Option<usize>,
    /// The thread was already unwinding when the connection was acquired
    /// (a checkout inside a `Drop` run by a panic): its return is then
    /// not a hold dropped by the panic.
    pub(crate) panicking: bool,
}

/// What the holder of a checkout has done on its connection so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeldActivity {
    /// This hold's part of the connection's totals.
    pub(crate) so_far: Totals,
    pub(crate) in_flight: u32,
    pub(crate) transaction: TransactionState,
    pub(crate) backend_pid: Option<i32>,
    /// The last statement sent in this hold, if any.
    pub(crate) last_statement: Option<Arc<str>>,
    /// When this hold's last call ended (none: it made none, or one is
    /// still running).
    pub(crate) last_call_ended: Option<Ticks>,
}

impl HeldActivity {
    /// In a database call right now.
    pub(crate) fn in_call(&self) -> bool {
        self.in_flight > 0
    }
}

/// A checkout still held, copied out of the ledger.
#[derive(Clone, Debug)]
pub(crate) struct Holder {
    pub(crate) id: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) key: StatsKey,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) acquired: Ticks,
    pub(crate) activity: Option<HeldActivity>,
    /// Its task waits right now for a second connection of the pool while
    /// holding this one (a nested checkout).
    pub(crate) nested_waiting: bool,
    /// How long its task's nested waits that ended took.
    pub(crate) nested_waited: Duration,
}

impl Holder {
    pub(crate) fn site(&self) -> CallSite {
        CallSite::from(self.location)
    }

    pub(crate) fn held(&self, now: Ticks) -> Duration {
        self.acquired.until(now)
    }
}

/// An acquire still waiting for a connection, copied out of the ledger.
#[derive(Clone, Debug)]
pub(crate) struct Waiter {
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) since: Ticks,
    /// Its task already holds a guard of the same pool.
    pub(crate) nested: bool,
    /// Queued behind connections all in use, rather than waiting for one
    /// being opened.
    pub(crate) queued: bool,
}

impl Waiter {
    pub(crate) fn site(&self) -> CallSite {
        CallSite::from(self.location)
    }

    pub(crate) fn waited(&self, now: Ticks) -> Duration {
        self.since.until(now)
    }
}

/// What the holder did on its connection, when the hold ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct EndedActivity {
    pub(crate) hold: Counters,
    pub(crate) in_flight: u32,
    pub(crate) transaction: TransactionState,
    pub(crate) backend_pid: Option<i32>,
    /// What only a troubled ending has (`None` for a clean return): boxed
    /// so that [`Closed`] stays small enough to be moved without a
    /// `memcpy` call on every return.
    pub(crate) details: Option<Box<EndingDetails>>,
}

impl EndedActivity {
    pub(crate) fn last_statement(&self) -> Option<&str> {
        self.details.as_ref()?.last_statement.as_deref()
    }

    pub(crate) fn transaction_site(&self) -> Option<&'static Location<'static>> {
        self.details.as_ref()?.transaction_site
    }

    pub(crate) fn observation_lost(&self) -> Option<&'static str> {
        self.details.as_ref()?.observation_lost
    }
}

/// What closing a checkout returns, for the reactions after the lock.
#[derive(Debug)]
pub(crate) struct Closed {
    pub(crate) id: u64,
    /// The site's rank among admitted sites (`None`: overflow).
    pub(crate) site_rank: Option<u32>,
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) outcome: Outcome,
    pub(crate) held: Duration,
    /// `None` when nobody observes the connection.
    pub(crate) activity: Option<EndedActivity>,
    /// The connection must not go back to the pool: a call is still in
    /// flight on it, or it sits inside a transaction.
    pub(crate) poisoned: bool,
    /// The escalation level the watchdog had reported while it was held.
    #[cfg(feature = "leak-report")]
    pub(crate) flagged: u8,
    #[cfg(feature = "leak-report")]
    pub(crate) stack: Option<crate::stack::RawStack>,
}

impl Closed {
    pub(crate) fn site(&self) -> CallSite {
        CallSite::from(self.location)
    }

    /// Whether a watchdog flag had been reported for it.
    pub(crate) fn was_flagged(&self) -> bool {
        #[cfg(feature = "leak-report")]
        return self.flagged > 0;
        #[cfg(not(feature = "leak-report"))]
        false
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.activity.as_ref().is_some_and(|a| a.in_flight > 0)
    }

    pub(crate) fn open_transaction(&self) -> bool {
        self.activity
            .as_ref()
            .is_some_and(|a| a.transaction.is_open())
    }
}

/// A watched transaction that ended (`Transaction` of the integration).
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
pub(crate) struct TransactionEnded {
    pub(crate) guard: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: Option<SpanInfo>,
    pub(crate) ending: super::stats::TransactionEnding,
    pub(crate) site: &'static Location<'static>,
    pub(crate) duration: Duration,
    /// Time inside it with no call in flight, when observed.
    pub(crate) idle: Option<Duration>,
    pub(crate) backend_pid: Option<i32>,
    pub(crate) last_statement: Option<Arc<str>>,
    /// The error a transaction rolled back after one failed with.
    pub(crate) sqlstate: Option<[u8; 5]>,
}
