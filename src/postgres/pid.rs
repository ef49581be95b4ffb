//! The backend process id of each connection, learnt once per connection
//! in a `post_create` hook, so events join with `pg_stat_activity.pid`.
//!
//! tokio-postgres knows the pid (it sends it in cancel requests) but keeps
//! it private, so poolwatch asks the server: `SELECT pg_backend_pid()`.

use std::any::Any;
use std::sync::{Arc, Weak};

use deadpool::managed::{Hook, HookError};
use deadpool_postgres::{ClientWrapper, Manager};
use tokio_postgres::SimpleQueryMessage;

use super::call::connection_key;
use crate::ledger::Ledger;

/// Asks a connection for its backend pid.
pub(crate) async fn query_backend_pid(
    client: &ClientWrapper,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let messages = client.simple_query("SELECT pg_backend_pid()").await?;
    Ok(messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).and_then(|pid| pid.parse().ok()),
        _ => None,
    }))
}

/// The `post_create` hook: remember the new connection's pid in the pool's
/// ledger. A failure fails the connection, like any `post_create` error.
pub(crate) fn post_create(ledger: Weak<Ledger>) -> Hook<Manager> {
    Hook::async_fn(move |client: &mut ClientWrapper, _| {
        let ledger = ledger.clone();
        Box::pin(async move {
            let pid = query_backend_pid(client)
                .await
                .map_err(HookError::Backend)?;
            if let (Some(ledger), Some(pid)) = (ledger.upgrade(), pid) {
                let alive: Weak<dyn Any + Send + Sync> =
                    Arc::downgrade(&client.statement_cache) as _;
                let key = connection_key(&client.statement_cache);
                ledger.settings.connections.register(key, alive, pid);
            }
            Ok(())
        })
    })
}
