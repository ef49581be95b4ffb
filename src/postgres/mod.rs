//! deadpool-postgres, watched: drop-in names for a service's imports.
//!
//! A service changes its constructor and its imports
//! (`deadpool_postgres::{Pool, Client}` → `poolwatch::postgres::{Pool,
//! Client}`); call sites stay as they are. A pool built here observes
//! **every call on its connections**, whichever way the code makes it —
//! guard methods, `&*client` into a `GenericClient` function, a
//! `&deadpool_postgres::Client` helper, generated code, a `Transaction`
//! however reached, a raw `batch_execute("BEGIN")` — because poolwatch
//! reads the PostgreSQL protocol on the connection itself (a stream
//! wrapper under tokio-postgres; under TLS, at the plaintext level). For
//! each hold it knows:
//!
//! * **busy vs held**: the time with a request unanswered, the rest
//!   idle-while-held, split into idle inside a transaction and outside any
//!   (`busy_ms` and `held_ms` in events,
//!   [`DatabaseStats`](crate::DatabaseStats) per call site);
//! * **the transaction state at return**, from the server's own
//!   `ReadyForQuery` status: no extra round trip, no server-side error. A
//!   connection returned inside a transaction is **evicted** (the next
//!   caller never gets it), or rolled back before its next use with
//!   [`OpenTransaction::Rollback`]. A watched [`Transaction`] dropped
//!   without commit is not that: its `ROLLBACK` is queued ahead of
//!   anything the next caller sends, so its connection is kept;
//! * **calls in flight at return** (a query future dropped unfinished: a
//!   timeout, `select!`): the server keeps running it and the next user
//!   of that connection would wait behind it, so it is evicted and the
//!   hold reported. poolwatch sends no cancel request: it could race with
//!   the next statement and cancel the wrong one. A statement the server
//!   refused is no call in flight: its error is the answer, and the
//!   "ready" behind it needs no more work;
//! * the **backend pid** (to join with `pg_stat_activity.pid`);
//!   `application_name` is set to `<program>/<pool name>` when unset;
//! * the **last statement**'s text, sanitized like `pg_stat_statements`
//!   (constants become `?`, at most 512 bytes, never parameters), or none
//!   with [`Statements::Off`](crate::Statements::Off);
//! * [`Transaction`]s taken through the guard also record where they were
//!   begun and whether they were committed, rolled back or **rolled back
//!   by drop** (the `?` early return, at WARN with the `transaction()`
//!   line), or rolled back after a statement in them failed in the
//!   database (the `?` on that error: their ordinary end, counted apart as
//!   [`rolled_back_after_error`](crate::DatabaseStats::rolled_back_after_error),
//!   at DEBUG with the `sqlstate`).
//!
//! Under pressure (callers waiting, the pool at its size, a guard past the
//! threshold) the pool also asks the server, on a connection of its own,
//! what the holders' backends do and who blocks whom
//! (`pg_stat_activity`, `pg_blocking_pids`); see
//! [`WatchedPool::diagnose`](crate::WatchedPool::diagnose) and
//! [`WatchConfig::server_view`](crate::WatchConfig::server_view).
//!
//! # Constructors
//!
//! | | observed connections | server view |
//! |---|---|---|
//! | [`create_pool`] (reads `POOLWATCH_*`), [`Pool::from_config`](crate::WatchedPool::from_config), [`Pool::builder`](crate::WatchedPool::builder) | yes | yes |
//! | [`Pool::new`](crate::WatchedPool::new) (a ready-made pool), [`Pool::from_builder`](crate::WatchedPool::from_builder) | no: holds, waits, sites and spans only | no |
//!
//! What is not covered: a query future polled once and dropped before
//! tokio-postgres wrote it to the socket is not seen in flight (the
//! connection stays in the pool and the next caller waits behind it); a
//! connection whose protocol the observer cannot follow (reported once)
//! is no longer observed.
//!
//! ```no_run
//! // before: use deadpool_postgres::{Pool, Client};
//! use poolwatch::postgres::{Client, Pool};
//! use deadpool_postgres::Runtime;
//!
//! # async fn demo(cfg: deadpool_postgres::Config) -> Result<(), Box<dyn std::error::Error>> {
//! // before: let pool = cfg.create_pool(Some(Runtime::Tokio1), NoTls)?;
//! let pool: Pool = poolwatch::postgres::create_pool(&cfg, Some(Runtime::Tokio1), tokio_postgres::NoTls)?;
//! let client: Client = pool.get().await?;
//! let rows = client.query("SELECT 1", &[]).await?;
//! # Ok(()) }
//! ```

mod builder;
mod client;
mod sanitize;
// What the server says about the pool's backends (pg_stat_activity,
// pg_blocking_pids), from a side connection on a thread of its own.
mod server_probe;
mod server_view;
mod transaction;

// The connection observer: every database call seen on the connection
// itself.
mod connect;
mod link;
mod socket;
mod tls;
mod wire;

/// **Not public API**: the connection observer's parts for poolwatch's
/// own integration tests. Hidden, exempt from semver, may change in any
/// release.
#[doc(hidden)]
#[path = "wire_probe.rs"]
pub mod __wire;

pub use builder::{create_pool, CreatePoolError, OpenTransaction, Options, PoolBuilder};
pub use client::Client;
pub use socket::Socket;
pub use transaction::{Transaction, TransactionBuilder};

/// deadpool-postgres's names a service needs beside poolwatch's, so its
/// imports come from one place (and one version of deadpool-postgres).
pub use deadpool_postgres::{
    Config, ManagerConfig, PoolConfig, PoolError, RecyclingMethod, Runtime,
};

/// A watched deadpool-postgres pool.
pub type Pool = crate::WatchedPool<deadpool_postgres::Manager>;
