//! [`Guard`]: a checked-out connection. Its `Drop` (in `checkout.rs`, next
//! to the acquire) closes its record and returns the connection.

use std::fmt;
use std::ops::{Deref, DerefMut};

use deadpool::managed::{Manager, Object};

use crate::ledger::Ticks;
use crate::observe::Disposal;
use crate::outcome::Outcome;
use crate::shared::PoolShardRef;

/// A connection checked out through [`WatchedPool`](crate::WatchedPool).
///
/// It derefs to deadpool's [`Object`], so code written against the plain
/// pool keeps compiling: for deadpool-postgres, `&guard` coerces to
/// `&deadpool_postgres::Client`, `&ClientWrapper` and
/// `&tokio_postgres::Client`. Dropping it returns the connection to the pool
/// and closes the checkout record (hold time, outcome, events).
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
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
    pub(crate) object: Option<Object<M>>,
    pub(crate) record: Record,
}

/// Where this guard's checkout record lives in the ledger. `shard` may be
/// used only while the record is open (see `ShardRef`).
pub(crate) struct Record {
    pub(crate) shard: PoolShardRef,
    pub(crate) key: usize,
    pub(crate) id: u64,
}

impl Record {
    /// Closes the record with `outcome` (the connection is the caller's
    /// now) and reacts to it.
    fn finish(&self, outcome: Outcome) {
        self.shard.close(self.key, outcome, Ticks::now(), |closed| {
            if let Some(closed) = closed {
                self.shard.attached.closed(closed, Disposal::KeptByCaller);
            }
        });
    }
}

impl<M: Manager> Guard<M> {
    #[inline]
    pub(crate) fn new(object: Object<M>, shard: PoolShardRef, key: usize, id: u64) -> Self {
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
    /// # #[cfg(feature = "postgres")]
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
    /// # #[cfg(feature = "postgres")]
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
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let client: deadpool_postgres::Client = poolwatch::Guard::into_inner(pool.get().await?);
    /// # Ok(()) }
    /// ```
    pub fn into_inner(mut this: Self) -> Object<M> {
        let object = this.object.take().expect("a live guard holds its object");
        this.record.finish(Outcome::Untracked);
        object
    }

    /// The object and the record at once (a transaction borrows both).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // the integrations' seam
    pub(crate) fn split_mut(this: &mut Self) -> (&mut Object<M>, &Record) {
        let object = this.object.as_mut().expect("a live guard holds its object");
        (object, &this.record)
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
