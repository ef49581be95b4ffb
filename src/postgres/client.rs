//! [`Client`]: the instrumented methods of a watched deadpool-postgres
//! checkout.

use std::future::Future;
use std::panic::Location;

use bytes::Buf;
use deadpool_postgres::{ClientWrapper, Manager};
use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{
    CopyInSink, CopyOutStream, Error, Row, RowStream, SimpleQueryMessage, Statement, ToStatement,
};

use super::call::{connection_key, Timing};
use super::transaction::{Transaction, TransactionBuilder};
use crate::guard::Guard;

/// A connection checked out of a watched deadpool-postgres
/// [`Pool`](super::Pool).
///
/// It derefs to [`deadpool_postgres::Client`], so `&client` still coerces
/// to `&deadpool_postgres::Client`, `&ClientWrapper` and
/// `&tokio_postgres::Client`. The database methods (`query`, `execute`,
/// `prepare_cached`, `batch_execute`, `transaction`, …) are shadowed by
/// timed ones with the same signatures: the time spent in them is the
/// hold's **busy** time; the rest of the hold is idle-while-held.
///
/// ```no_run
/// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let client = pool.get().await?;
/// let stmt = client.prepare_cached("SELECT $1::int4").await?; // timed
/// let row = client.query_one(&stmt, &[&7i32]).await?;       // timed
/// assert_eq!(row.get::<_, i32>(0), 7);
/// # Ok(()) }
/// ```
///
/// # Generic code
///
/// `deadpool_postgres::GenericClient` and `tokio_postgres::GenericClient`
/// are sealed, so this type cannot implement them. Pass `&*client` (the
/// `deadpool_postgres::Client`) to functions generic over them: they work
/// unchanged but their calls are **not** timed, their statements are not
/// recorded and a raw `BEGIN` they send is not seen by the guard (the
/// recycle probe of [`Pool::from_config`](super::Pool::from_config) still
/// catches a transaction they leave open).
///
/// Methods not shadowed here (`query_scalar`, `simple_query_raw`,
/// `cancel_token`, …) fall through to tokio-postgres untimed.
pub type Client = Guard<Manager>;

impl Guard<Manager> {
    /// The deadpool-postgres wrapper (explicit, so the shadowing methods
    /// below do not call themselves).
    fn dp(&self) -> &ClientWrapper {
        self
    }

    fn pg(&self) -> &tokio_postgres::Client {
        self.dp()
    }

    fn timing(&self) -> Timing<'_> {
        Timing {
            record: Guard::record(self),
            connection: connection_key(&self.dp().statement_cache),
        }
    }

    instrumented_methods!("[`tokio_postgres::Client`],");

    /// Like [`deadpool_postgres::ClientWrapper::transaction`], returning a
    /// watched [`Transaction`]: its time, idle time and ending are recorded,
    /// and dropping it without `commit`/`rollback` is reported with this
    /// call's source line.
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut client = pool.get().await?;
    /// let tx = client.transaction().await?; // this line is the transaction's site
    /// tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = $1", &[&1i32]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    #[allow(clippy::manual_async_fn)] // `#[track_caller]` is a no-op on `async fn`
    pub fn transaction(
        &mut self,
    ) -> impl Future<Output = Result<Transaction<'_>, Error>> + Send + '_ {
        let site = Location::caller();
        async move {
            let (object, record) = Guard::split_mut(self);
            let connection = connection_key(&object.statement_cache);
            let timing = Timing { record, connection };
            let txn = timing.run(None, object.transaction()).await?;
            Ok(Transaction::begin(txn, record, site))
        }
    }

    /// Like [`deadpool_postgres::ClientWrapper::build_transaction`]; the
    /// transaction it starts is watched like [`Self::transaction`]'s.
    ///
    /// ```no_run
    /// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio_postgres::IsolationLevel;
    /// let mut client = pool.get().await?;
    /// let tx = client
    ///     .build_transaction()
    ///     .isolation_level(IsolationLevel::Serializable)
    ///     .start()
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn build_transaction(&mut self) -> TransactionBuilder<'_> {
        let site = Location::caller();
        let (object, record) = Guard::split_mut(self);
        let connection = connection_key(&object.statement_cache);
        TransactionBuilder::new(object.build_transaction(), record, connection, site)
    }
}
