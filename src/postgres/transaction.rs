//! [`Transaction`]: a watched deadpool-postgres transaction. Records the
//! time in transaction, the idle time inside it, and how it ended:
//! committed, rolled back, or rolled back by drop (the `?` early return).

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;

use tokio_postgres::{Error, IsolationLevel};

use crate::guard::Record;
use crate::ledger::{Ticks, TransactionEnding};

/// A transaction on a watched [`Client`](super::Client).
///
/// Derefs to [`deadpool_postgres::Transaction`] (and through it to
/// [`tokio_postgres::Transaction`]), so functions taking either keep
/// working and every method of those works as before.
///
/// Dropped without [`commit`](Self::commit) or [`rollback`](Self::rollback)
/// — typically a `?` returning early — it rolls back like the original, and
/// poolwatch reports it at WARN (`rolled back by drop`) with the source line
/// of the `transaction()` call.
///
/// ```no_run
/// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = pool.get().await?;
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO audit (note) VALUES ($1)", &[&"hello"]).await?;
/// tx.commit().await?; // an early return before this line is reported
/// # Ok(()) }
/// ```
pub struct Transaction<'a> {
    /// `None` once `commit`/`rollback` consumed it.
    txn: Option<deadpool_postgres::Transaction<'a>>,
    record: &'a Record,
    /// A savepoint inside another transaction.
    nested: bool,
}

impl<'a> Transaction<'a> {
    pub(crate) fn begin(
        txn: deadpool_postgres::Transaction<'a>,
        record: &'a Record,
        site: &'static Location<'static>,
    ) -> Self {
        record.shard.transaction_began(record.key, site);
        Self {
            txn: Some(txn),
            record,
            nested: false,
        }
    }

    fn live(&mut self) -> &mut deadpool_postgres::Transaction<'a> {
        self.txn
            .as_mut()
            .expect("a live transaction holds its transaction")
    }

    /// Like [`deadpool_postgres::Transaction::commit`]; recorded as
    /// committed (or rolled back, if `COMMIT` fails).
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.transaction().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(mut self) -> Result<(), Error> {
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        let result = txn.commit().await;
        let ending = if result.is_ok() {
            TransactionEnding::Committed
        } else {
            TransactionEnding::RolledBack
        };
        self.ended(ending);
        result
    }

    /// Like [`deadpool_postgres::Transaction::rollback`]; recorded as
    /// rolled back.
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.transaction().await?;
    /// tx.rollback().await?;
    /// # Ok(()) }
    /// ```
    pub async fn rollback(mut self) -> Result<(), Error> {
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        let result = txn.rollback().await;
        self.ended(TransactionEnding::RolledBack);
        result
    }

    /// Like [`deadpool_postgres::Transaction::transaction`]: a nested
    /// transaction (savepoint), watched too. Its ending is counted; its time
    /// is part of the outer transaction's.
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let mut tx = client.transaction().await?;
    /// let inner = tx.transaction().await?;
    /// inner.commit().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        let record = self.record;
        let inner = self.live().transaction().await?;
        Ok(Self::nested(record, inner))
    }

    /// Like [`deadpool_postgres::Transaction::savepoint`]: a named nested
    /// transaction, watched like [`Self::transaction`]'s.
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let mut tx = client.transaction().await?;
    /// let sp = tx.savepoint("before_import").await?;
    /// sp.rollback().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn savepoint<I>(&mut self, name: I) -> Result<Transaction<'_>, Error>
    where
        I: Into<String>,
    {
        let record = self.record;
        let inner = self.live().savepoint(name).await?;
        Ok(Self::nested(record, inner))
    }

    fn nested<'b>(record: &'b Record, txn: deadpool_postgres::Transaction<'b>) -> Transaction<'b> {
        // Nested: the ledger counts its depth; only its ending is recorded.
        record
            .shard
            .transaction_began(record.key, Location::caller());
        Transaction {
            txn: Some(txn),
            record,
            nested: true,
        }
    }

    /// Records the ending in the ledger; reacts outside its lock.
    fn ended(&self, ending: TransactionEnding) {
        let shard = &self.record.shard;
        if let Some(ended) = shard.transaction_ended(self.record.key, ending) {
            shard.attached.transaction_ended(&ended, Ticks::now());
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if let Some(txn) = self.txn.take() {
            // deadpool-postgres / tokio-postgres queue the ROLLBACK.
            drop(txn);
            self.ended(TransactionEnding::RolledBackByDrop);
        }
    }
}

impl<'a> Deref for Transaction<'a> {
    type Target = deadpool_postgres::Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        self.txn
            .as_ref()
            .expect("a live transaction holds its transaction")
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.txn
            .as_mut()
            .expect("a live transaction holds its transaction")
    }
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("guard", &self.record.id)
            .field("nested", &self.nested)
            .finish_non_exhaustive()
    }
}

/// Like [`deadpool_postgres::TransactionBuilder`]; [`start`](Self::start)
/// returns a watched [`Transaction`].
///
/// ```no_run
/// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let tx = client.build_transaction().read_only(true).start().await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[must_use = "builder does nothing itself, use `.start()` to use it"]
pub struct TransactionBuilder<'a> {
    builder: deadpool_postgres::TransactionBuilder<'a>,
    record: &'a Record,
    site: &'static Location<'static>,
}

impl<'a> TransactionBuilder<'a> {
    pub(crate) fn new(
        builder: deadpool_postgres::TransactionBuilder<'a>,
        record: &'a Record,
        site: &'static Location<'static>,
    ) -> Self {
        Self {
            builder,
            record,
            site,
        }
    }

    /// Sets the isolation level, like the original.
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let tx = client
    ///     .build_transaction()
    ///     .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn isolation_level(self, isolation_level: IsolationLevel) -> Self {
        Self {
            builder: self.builder.isolation_level(isolation_level),
            ..self
        }
    }

    /// Sets the access mode, like the original.
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.build_transaction().read_only(true).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn read_only(self, read_only: bool) -> Self {
        Self {
            builder: self.builder.read_only(read_only),
            ..self
        }
    }

    /// Sets deferrability, like the original.
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.build_transaction().deferrable(true).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn deferrable(self, deferrable: bool) -> Self {
        Self {
            builder: self.builder.deferrable(deferrable),
            ..self
        }
    }

    /// Begins the transaction.
    ///
    /// ```no_run
    /// # async fn demo(mut client: poolwatch::postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.build_transaction().start().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub fn start(self) -> impl Future<Output = Result<Transaction<'a>, Error>> + Send + 'a {
        let Self {
            builder,
            record,
            site,
        } = self;
        async move {
            let txn = builder.start().await?;
            Ok(Transaction::begin(txn, record, site))
        }
    }
}
