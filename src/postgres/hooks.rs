//! The `pre_recycle` probe: is the connection about to be handed out still
//! inside a transaction?
//!
//! tokio-postgres does not expose the transaction status, and
//! deadpool-postgres recycles a connection left `idle in transaction` with
//! every `RecyclingMethod`. `SAVEPOINT` answers the question in one round
//! trip: it fails with SQLSTATE 25P01 outside a transaction, succeeds inside
//! one and fails with 25P02 inside an aborted one. The probe then rolls the
//! transaction back (or evicts the connection) and names the holder that
//! returned it that way.
//!
//! The failing `SAVEPOINT` on every clean checkout is logged by the server
//! at ERROR unless `log_min_error_statement`/`log_min_messages` say
//! otherwise; turn the probe off with [`Options::probe_transactions`] if
//! that noise matters more than the detection.
//!
//! [`Options::probe_transactions`]: super::Options::probe_transactions

use std::sync::Weak;

use deadpool::managed::{Hook, HookError};
use deadpool_postgres::{ClientWrapper, Manager};
use tokio_postgres::error::SqlState;

use super::call::connection_key;
use super::OpenTransaction;
use crate::events;
use crate::ledger::Ledger;

const PROBE: &str = "SAVEPOINT poolwatch_probe";

/// The `pre_recycle` hook.
pub(crate) fn pre_recycle(ledger: Weak<Ledger>, policy: OpenTransaction) -> Hook<Manager> {
    Hook::async_fn(move |client: &mut ClientWrapper, _| {
        let ledger = ledger.clone();
        Box::pin(async move {
            match client.batch_execute(PROBE).await {
                Err(e) if e.code() == Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION) => return Ok(()),
                Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {}
                Ok(()) => {}
                Err(e) => return Err(HookError::Backend(e)),
            }
            let action = match policy {
                OpenTransaction::Rollback => "rolled_back",
                OpenTransaction::Evict => "evicted",
            };
            if let Some(ledger) = ledger.upgrade() {
                report(&ledger, client, action);
            }
            match policy {
                OpenTransaction::Rollback => client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(HookError::Backend),
                OpenTransaction::Evict => Err(HookError::message(
                    "poolwatch: connection was returned inside a transaction; evicted",
                )),
            }
        })
    })
}

fn report(ledger: &Ledger, client: &ClientWrapper, action: &'static str) {
    let connections = &ledger.settings.connections;
    let key = connection_key(&client.statement_cache);
    let holder = connections.last_holder(key);
    if let Some(holder) = holder.filter(|h| !h.reported_open_transaction) {
        ledger.record_unreported_open_transaction(holder.location);
    }
    let pid = connections.backend_pid(key);
    events::open_transaction_at_recycle(&ledger.settings, pid, holder, action);
}
