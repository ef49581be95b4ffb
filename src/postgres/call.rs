//! Timing one database call of a checkout: busy time, calls in flight, the
//! statement text, raw `BEGIN`/`COMMIT`, and calls abandoned mid-way.

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::StatementCache;

use crate::guard::Record;
use crate::ledger::activity::transaction_effect;

/// The identity of a pooled connection: the address of the statement cache
/// it owns for its whole life (shared with its transactions).
pub(crate) fn connection_key(cache: &Arc<StatementCache>) -> usize {
    Arc::as_ptr(cache) as *const () as usize
}

/// What a call needs to report itself: the checkout's record and the
/// connection it runs on.
#[derive(Clone, Copy)]
pub(crate) struct Timing<'r> {
    pub(crate) record: &'r Record,
    pub(crate) connection: usize,
}

/// Ends the call in the ledger when dropped: after completion, or when the
/// caller's future is dropped mid-call (then the call counts as abandoned).
struct InFlight<'r> {
    record: &'r Record,
    completed: bool,
    transaction_effect: Option<bool>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.record
            .shard
            .call_ended(self.record.key, self.completed, self.transaction_effect);
    }
}

impl<'r> Timing<'r> {
    /// Runs `call`, recording it as busy time of the checkout. `statement`
    /// is the SQL text when the call was given text (never parameters).
    pub(crate) async fn run<T, E>(
        self,
        statement: Option<&str>,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let record = self.record;
        record
            .shard
            .call_started(record.key, statement, self.connection);
        let mut in_flight = InFlight {
            record,
            completed: false,
            transaction_effect: None,
        };
        let result = call.await;
        in_flight.completed = true;
        if result.is_ok() {
            in_flight.transaction_effect = statement.and_then(transaction_effect);
        }
        result
    }
}
