//! [`Client`]: a watched deadpool-postgres checkout.

use std::future::Future;
use std::panic::Location;

use deadpool_postgres::Manager;
use tokio_postgres::Error;

use super::transaction::{Transaction, TransactionBuilder};
use crate::guard::Guard;

/// A connection checked out of a watched deadpool-postgres
/// [`Pool`](super::Pool).
///
/// It derefs to [`deadpool_postgres::Client`], so `&client` coerces to
/// `&deadpool_postgres::Client`, `&ClientWrapper` and
/// `&tokio_postgres::Client`, and every method of those works as before.
/// In a pool poolwatch builds, every call on the connection is observed
/// on the connection itself, whichever way it is made (these methods,
/// `&*client`, `GenericClient` generics, generated code, a
/// `Transaction`): busy time, the transaction state at return, the last
/// statement, the backend pid.
///
/// ```no_run
/// # async fn demo(pool: poolwatch::postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let client = pool.get().await?;
/// let stmt = client.prepare_cached("SELECT $1::int4").await?;
/// let row = client.query_one(&stmt, &[&7i32]).await?;
/// assert_eq!(row.get::<_, i32>(0), 7);
/// # Ok(()) }
/// ```
///
/// # Generic code
///
/// `deadpool_postgres::GenericClient` and `tokio_postgres::GenericClient`
/// are sealed, so this type cannot implement them. Pass `&*client` (the
/// `deadpool_postgres::Client`) to functions generic over
/// `deadpool_postgres::GenericClient`, and `&***client` to those generic
/// over `tokio_postgres::GenericClient`; their calls are observed all the
/// same.
pub type Client = Guard<Manager>;

impl Guard<Manager> {
    /// Like [`deadpool_postgres::ClientWrapper::transaction`], returning a
    /// watched [`Transaction`]: its ending is recorded, and dropping it
    /// without `commit`/`rollback` is reported with this call's source
    /// line.
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
            let txn = object.transaction().await?;
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
        TransactionBuilder::new(object.build_transaction(), record, site)
    }
}
