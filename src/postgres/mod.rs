//! deadpool-postgres, watched: drop-in names for a service's imports.
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
