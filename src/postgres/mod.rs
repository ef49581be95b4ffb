//! deadpool-postgres, watched: drop-in names for a service's imports.
//!
//! A service changes its imports (`deadpool_postgres::{Pool, Client}` →
//! `poolwatch::postgres::{Pool, Client}`) and its constructor; call sites
//! stay as they are. On top of the checkout record every
//! [`WatchedPool`](crate::WatchedPool) keeps, a PostgreSQL pool measures:
//!
//! * **busy vs held**: [`Client`]'s database methods are timed; a hold's
//!   busy time is the time with a call in flight, the rest is
//!   idle-while-held (`busy_ms` and `held_ms` in events,
//!   [`DatabaseStats::busy_total`](crate::DatabaseStats::busy_total) per
//!   call site);
//! * **transactions** ([`Transaction`]): time in transaction, idle time
//!   inside it, committed / rolled back / **rolled back by drop** (the `?`
//!   early return, reported at WARN with the `transaction()` line);
//! * **open transaction at return**: a raw `BEGIN` without `COMMIT`, or a
//!   leaked `Transaction`. deadpool-postgres would hand that connection,
//!   `idle in transaction`, to the next caller with every recycling method;
//!   poolwatch reports it with the holder's site and keeps the next caller
//!   safe (see below);
//! * **call in flight at drop**: a query future dropped unfinished (a
//!   timeout, `select!`). The server keeps running it and the next user of
//!   that connection would wait behind it, so the connection is **evicted**
//!   (closed instead of returned; the pool opens a new one) and the hold
//!   reported. poolwatch does not send a cancel request: it would race with
//!   the next statement on that connection and could cancel the wrong one.
//!   The server finishes (or, with `statement_timeout` /
//!   `client_connection_check_interval`, stops) the abandoned statement on
//!   its own;
//! * **backend pid** of each connection in every hold event and snapshot,
//!   to join with `pg_stat_activity.pid`; `application_name` set to
//!   `<program>/<pool name>` if unset;
//! * the **last statement**'s text (bounded, never parameters) in snapshots
//!   and events. Text is known for calls given SQL text as `&str`
//!   (`batch_execute`, `simple_query`, `prepare*`, the `*_typed` methods);
//!   `query`/`execute` take a sealed generic statement whose text cannot be
//!   read, so they keep the previous text — in the usual `prepare_cached`
//!   then `query(&stmt)` idiom, that statement's.
//!
//! # What each way of building the pool covers
//!
//! deadpool runs hooks only inside `get()`, and they can only be attached
//! while the pool is built.
//!
//! | | [`Pool::new`](crate::WatchedPool::new) (ready-made pool) | [`Pool::from_config`](crate::WatchedPool::from_config), [`Pool::from_builder`](crate::WatchedPool::from_builder) |
//! |---|---|---|
//! | busy time, transactions, rollback by drop, in-flight eviction | yes | yes |
//! | open transaction seen by the guard (instrumented `BEGIN`, leaked `Transaction`) | connection evicted at return | rolled back at the next checkout (or evicted, [`Options::on_open_transaction`]) |
//! | open transaction opened behind the guard's back (`&*client`, generic code) | not detected | caught by the `SAVEPOINT` probe in `pre_recycle`, rolled back or evicted |
//! | backend pid | no | yes (`post_create`) |
//! | `application_name` | no | `from_config` only |
//!
//! ```no_run
//! // before: use deadpool_postgres::{Pool, Client};
//! use poolwatch::postgres::{Client, Pool};
//!
//! # async fn demo(pg: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
//! let pool: Pool = Pool::new(pg, poolwatch::WatchConfig::from_env()?);
//! let client: Client = pool.get().await?;
//! let rows = client.query("SELECT 1", &[]).await?;
//! # Ok(()) }
//! ```

#[macro_use]
mod methods;
mod builder;
mod call;
mod client;
mod hooks;
mod pid;
mod transaction;

pub use builder::{OpenTransaction, Options};
pub use client::Client;
pub use transaction::{Transaction, TransactionBuilder};

/// A watched deadpool-postgres pool.
pub type Pool = crate::WatchedPool<deadpool_postgres::Manager>;
