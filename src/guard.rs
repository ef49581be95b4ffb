//! [`Guard`]: a checked-out connection whose `Drop` closes its record.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use deadpool::managed::{Manager, Object};

use crate::events;
use crate::ledger::{Closed, Shard, Ticks};
use crate::outcome::Outcome;

/// A connection checked out through [`WatchedPool`](crate::WatchedPool).
///
/// It derefs to deadpool's [`Object`], so code written against the plain
/// pool keeps compiling: for deadpool-postgres, `&guard` coerces to
/// `&deadpool_postgres::Client`, `&ClientWrapper` and
/// `&tokio_postgres::Client`. Dropping it returns the connection to the pool
/// and closes the checkout record (hold time, outcome, events).
///
/// ```no_run
/// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let client = pool.get().await?;                // recorded: site, span, wait
/// let row = client.query_one("SELECT 1", &[]).await?;
/// let one: i32 = row.get(0);
/// drop(client);                                  // recorded: hold time, outcome
/// # Ok(()) }
/// ```
pub struct Guard<M: Manager> {
    /// `None` only after `take`/`into_inner` moved it out (a `Drop` type
    /// cannot move fields out otherwise).
    object: Option<Object<M>>,
    record: Record,
}

/// Where this guard's checkout record lives in the ledger.
pub(crate) struct Record {
    pub(crate) shard: Arc<Shard>,
    pub(crate) key: usize,
    pub(crate) id: u64,
}

impl Record {
    /// Closes the record in the ledger. Never panics.
    #[inline]
    fn close(&self, outcome: Outcome) -> Option<Closed> {
        self.shard.close(self.key, outcome, Ticks::now())
    }

    /// Closes the record and reports its ending.
    pub(crate) fn finish(&self, outcome: Outcome) {
        if let Some(closed) = self.close(outcome) {
            self.report(&closed, outcome);
        }
    }

    /// Emits what the ending calls for, after the ledger lock is released.
    fn report(&self, closed: &Closed, outcome: Outcome) {
        let settings = &self.shard.settings;
        if outcome == Outcome::DroppedWhilePanicking {
            events::dropped_while_panicking(settings, closed);
        }
        let past_threshold = settings.exceeds_hold_threshold(closed.held);
        #[cfg(feature = "metrics")]
        {
            settings.metrics.on_close(closed, outcome, past_threshold);
            if let Some(status) = settings.pool_status() {
                settings.metrics.set_status(status);
            }
        }
        if past_threshold {
            events::held_past_threshold(settings, closed, outcome);
        }
        events::database_findings(settings, closed);
        #[cfg(feature = "leak-report")]
        {
            if closed.flagged {
                events::returned_after_flagged(settings, closed, outcome);
            }
            if outcome == Outcome::Detached {
                events::detached(settings, closed);
            }
        }
    }
}

impl<M: Manager> Guard<M> {
    #[inline]
    pub(crate) fn new(object: Object<M>, shard: Arc<Shard>, key: usize, id: u64) -> Self {
        Self {
            object: Some(object),
            record: Record { shard, key, id },
        }
    }

    /// The checkout's id: the `guard` field of events and
    /// [`OutstandingGuard::id`](crate::OutstandingGuard::id).
    ///
    /// An associated function (like deadpool's `Object::id`), so it never
    /// shadows a method of the connection.
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = pool.get().await?;
    /// tracing::info!(guard = poolwatch::Guard::guard_id(&client), "got a connection");
    /// # Ok(()) }
    /// ```
    pub fn guard_id(this: &Self) -> u64 {
        this.record.id
    }

    /// Detaches the connection from the pool, like deadpool's
    /// [`Object::take`]: the pool's slot is freed and the connection is
    /// yours. Recorded as [`Outcome::Detached`], not as a leak.
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = pool.get().await?;
    /// let raw: deadpool_postgres::ClientWrapper = poolwatch::Guard::take(client);
    /// # Ok(()) }
    /// ```
    pub fn take(mut this: Self) -> M::Type {
        let object = this.object.take().expect("a live guard holds its object");
        this.record.finish(Outcome::Detached);
        Object::take(object)
    }

    /// Hands out deadpool's [`Object`] itself; poolwatch stops tracking it
    /// here (recorded as [`Outcome::Untracked`]). Use it where code needs a
    /// `deadpool_postgres::Client` by value.
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let client: deadpool_postgres::Client = poolwatch::Guard::into_inner(pool.get().await?);
    /// # Ok(()) }
    /// ```
    pub fn into_inner(mut this: Self) -> Object<M> {
        let object = this.object.take().expect("a live guard holds its object");
        this.record.finish(Outcome::Untracked);
        object
    }

    /// The checkout record, for the database integrations' call timing.
    pub(crate) fn record(this: &Self) -> &Record {
        &this.record
    }

    /// The object and the record at once (a transaction borrows both).
    pub(crate) fn split_mut(this: &mut Self) -> (&mut Object<M>, &Record) {
        let object = this.object.as_mut().expect("a live guard holds its object");
        (object, &this.record)
    }
}

impl<M: Manager> Drop for Guard<M> {
    fn drop(&mut self) {
        if self.object.is_none() {
            return; // already closed by take/into_inner
        }
        let outcome = if std::thread::panicking() {
            Outcome::DroppedWhilePanicking
        } else {
            Outcome::Returned
        };
        let closed = self.record.close(outcome);
        // Return the connection before reporting, so a slow subscriber does
        // not lengthen the hold; assigning drops it in place (no move). One
        // the next caller must not get (a call still running on it, an open
        // transaction nobody rolls back) is detached and closed instead.
        if closed.as_ref().is_some_and(|c| c.evict) {
            if let Some(object) = self.object.take() {
                drop(Object::take(object));
            }
        } else {
            self.object = None;
        }
        if let Some(closed) = closed {
            self.record.report(&closed, outcome);
        }
    }
}

impl<M: Manager> Deref for Guard<M> {
    type Target = Object<M>;

    fn deref(&self) -> &Object<M> {
        self.object.as_ref().expect("a live guard holds its object")
    }
}

impl<M: Manager> DerefMut for Guard<M> {
    fn deref_mut(&mut self) -> &mut Object<M> {
        self.object.as_mut().expect("a live guard holds its object")
    }
}

impl<M: Manager> AsRef<M::Type> for Guard<M> {
    fn as_ref(&self) -> &M::Type {
        self
    }
}

impl<M: Manager> AsMut<M::Type> for Guard<M> {
    fn as_mut(&mut self) -> &mut M::Type {
        self
    }
}

impl<M: Manager> fmt::Debug for Guard<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("id", &self.record.id)
            .finish_non_exhaustive()
    }
}
