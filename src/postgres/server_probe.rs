//! The server view as the core's [`ServerProbe`]: answers converted to
//! the core's terms, statement text sanitized (or dropped) the way the
//! pool shows its own.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Connect;

use super::sanitize::sanitize;
use super::server_view::{Backend, ServerReport, ServerView, ServerViewOptions};
use crate::ledger::Ticks;
use crate::server::{Answer, ServerBackend, ServerProbe, ServerSnapshot};

/// Server-side statement text shown, in bytes (like the pool's own).
const QUERY_SHOWN: usize = 512;

/// Questions go out at most this often, whatever the tick.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct Probe {
    view: ServerView,
    show_statements: bool,
}

impl Probe {
    /// A probe asking the server `pg_config` names, connecting with
    /// `connect`, at most once per `interval` (the pool's tick).
    pub(crate) fn new(
        pg_config: tokio_postgres::Config,
        connect: Arc<dyn Connect>,
        interval: Duration,
        show_statements: bool,
    ) -> Self {
        let options = ServerViewOptions {
            min_interval: interval.clamp(MIN_INTERVAL, MAX_INTERVAL),
            ..ServerViewOptions::default()
        };
        Self {
            view: ServerView::new(pg_config, connect, options),
            show_statements,
        }
    }

    fn convert(&self, report: &ServerReport) -> ServerSnapshot {
        ServerSnapshot {
            taken_at: Some(Ticks::of(report.taken_at)),
            backends: report
                .backends
                .iter()
                .map(|b| self.backend(report, b))
                .collect(),
            not_visible: report.not_visible.clone(),
            error: report.error.clone(),
        }
    }

    fn backend(&self, report: &ServerReport, b: &Backend) -> ServerBackend {
        let wait = match (&b.wait_event_type, &b.wait_event) {
            (Some(kind), Some(event)) => Some(format!("{kind}: {event}")),
            (Some(kind), None) => Some(kind.clone()),
            _ => None,
        };
        ServerBackend {
            pid: b.pid,
            state: b.state.as_str(),
            active: b.state == super::server_view::BackendState::Active,
            idle_in_transaction: b.is_idle_in_transaction(),
            wait,
            waiting_on_lock: b.is_waiting_on_lock(),
            transaction_age: b.transaction_age,
            state_age: b.state_age,
            query: b
                .query
                .as_deref()
                .filter(|_| self.show_statements)
                .map(|q| sanitize(q, QUERY_SHOWN)),
            blocked_by: b.blocked_by.clone(),
            roots: report.blocking_roots(b.pid),
            application_name: b.application_name.clone(),
            role: b.role.clone(),
            visible: b.visible,
        }
    }
}

impl ServerProbe for Probe {
    fn request(&self, pids: Vec<i32>) {
        self.view.request(pids);
    }

    fn latest(&self) -> Option<ServerSnapshot> {
        self.view.latest().map(|report| self.convert(&report))
    }

    fn take_first_failure(&self) -> Option<String> {
        self.view.take_first_failure()
    }

    fn ask(&self, pids: Vec<i32>, wait: Duration) -> Answer<'_> {
        Box::pin(async move {
            let report = self.view.query(pids, wait).await?;
            Some(self.convert(&report))
        })
    }
}
