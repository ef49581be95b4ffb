//! The database server's side of the holders: what it says each pool
//! backend is doing and which backend blocks which. A database
//! integration provides it through [`ServerProbe`] (PostgreSQL's asks
//! `pg_stat_activity` and `pg_blocking_pids` on a connection of its own);
//! the core only asks for the holders' backends while the pool is under
//! pressure and reads the newest answer, never on the checkout path.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::ledger::{Holder, Ticks};

/// An answer older than this describes a past the holders may have left.
pub(crate) const FRESH: Duration = Duration::from_secs(5);

/// A database integration's window on the server. Every method returns at
/// once; the asking happens elsewhere (its own thread and connection).
pub(crate) trait ServerProbe: Send + Sync {
    /// Asks about these backends when the probe's rate limit allows; a
    /// newer request replaces one not sent yet.
    fn request(&self, pids: Vec<i32>);
    /// The newest answer (or failure), if any.
    fn latest(&self) -> Option<ServerSnapshot>;
    /// The first failure of a run of failures, once.
    fn take_first_failure(&self) -> Option<String>;
    /// Asks now (past the rate limit) and waits up to `wait` for the
    /// answer; works from any executor.
    fn ask(&self, pids: Vec<i32>, wait: Duration) -> Answer<'_>;
}

/// What [`ServerProbe::ask`] returns.
pub(crate) type Answer<'a> = Pin<Box<dyn Future<Output = Option<ServerSnapshot>> + Send + 'a>>;

/// The backend pids of these holders, for a question.
pub(crate) fn pids(holders: &[Holder]) -> Vec<i32> {
    holders
        .iter()
        .filter_map(|h| h.activity.as_ref().and_then(|a| a.backend_pid))
        .collect()
}

/// One answer about a set of backends.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerSnapshot {
    /// When the question was sent.
    pub(crate) taken_at: Option<Ticks>,
    /// The backends asked about that the server knows, then those blocking
    /// them (even outside the pool).
    pub(crate) backends: Vec<ServerBackend>,
    /// Backends whose details this role may not see.
    pub(crate) not_visible: Vec<i32>,
    /// Why there is no answer.
    pub(crate) error: Option<String>,
}

/// One backend as the server shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ServerBackend {
    pub(crate) pid: i32,
    /// `active`, `idle`, `idle in transaction`, … (`unknown` when not
    /// visible).
    pub(crate) state: &'static str,
    pub(crate) active: bool,
    pub(crate) idle_in_transaction: bool,
    /// `Lock: transactionid`, `Timeout: PgSleep`, …
    pub(crate) wait: Option<String>,
    pub(crate) waiting_on_lock: bool,
    pub(crate) transaction_age: Option<Duration>,
    pub(crate) state_age: Option<Duration>,
    /// Its statement, sanitized by the integration (none when statement
    /// text is off or not visible).
    pub(crate) query: Option<String>,
    /// Who it waits for directly.
    pub(crate) blocked_by: Vec<i32>,
    /// The heads of its chain of waits (whom to blame); `0` is a prepared
    /// transaction.
    pub(crate) roots: Vec<i32>,
    pub(crate) application_name: Option<String>,
    pub(crate) role: Option<String>,
    pub(crate) visible: bool,
}

impl ServerSnapshot {
    /// Whether it still describes now.
    pub(crate) fn is_fresh(&self, now: Ticks) -> bool {
        self.taken_at.is_some_and(|at| at.until(now) <= FRESH)
    }

    pub(crate) fn backend(&self, pid: i32) -> Option<&ServerBackend> {
        self.backends.iter().find(|b| b.pid == pid)
    }

    pub(crate) fn age(&self, now: Ticks) -> Duration {
        self.taken_at.map_or(Duration::ZERO, |at| at.until(now))
    }
}

impl ServerBackend {
    /// `waiting on a lock (Lock: transactionid) for 1.2s`, `idle in
    /// transaction for 1.4s`, `running a statement for 3s`, `idle`.
    pub(crate) fn describe(&self) -> String {
        let age = |d: Option<Duration>| {
            d.map(|d| format!(" for {}", crate::human::human(d)))
                .unwrap_or_default()
        };
        if !self.visible {
            return "not visible to this role".to_owned();
        }
        if self.waiting_on_lock {
            let what = self.wait.as_deref().unwrap_or("Lock");
            return format!("waiting on a lock ({what}){}", age(self.state_age));
        }
        if self.idle_in_transaction {
            return format!("{}{}", self.state, age(self.state_age));
        }
        if self.active {
            return match &self.wait {
                Some(wait) => format!(
                    "running a statement{} (waiting on {wait})",
                    age(self.state_age)
                ),
                None => format!("running a statement{}", age(self.state_age)),
            };
        }
        self.state.to_owned()
    }
}

/// Whom a blocked holder waits behind.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Blocker<'a> {
    /// Another guard of this pool (its index in the holders given).
    Guard(usize),
    /// A backend outside the pool.
    Outside(&'a ServerBackend),
    /// A prepared transaction, or a backend the answer lacks.
    Unknown(i32),
}

/// The holders' backends joined with the answer: for each holder (by
/// index), its backend, and the heads of its chain of waits.
pub(crate) struct Joined<'a> {
    pub(crate) backends: Vec<Option<&'a ServerBackend>>,
    pub(crate) blockers: Vec<Vec<Blocker<'a>>>,
}

/// Joins `holders` with `snapshot` by backend pid.
pub(crate) fn join<'a>(holders: &[Holder], snapshot: &'a ServerSnapshot) -> Joined<'a> {
    let pid_of = |h: &Holder| h.activity.as_ref().and_then(|a| a.backend_pid);
    let by_pid: HashMap<i32, usize> = holders
        .iter()
        .enumerate()
        .filter_map(|(i, h)| pid_of(h).map(|pid| (pid, i)))
        .collect();
    let mut joined = Joined {
        backends: Vec::with_capacity(holders.len()),
        blockers: Vec::with_capacity(holders.len()),
    };
    for holder in holders {
        let backend = pid_of(holder).and_then(|pid| snapshot.backend(pid));
        let blockers = backend
            .map(|b| {
                b.roots
                    .iter()
                    .map(|&root| match by_pid.get(&root) {
                        Some(&i) => Blocker::Guard(i),
                        None => snapshot
                            .backend(root)
                            .map_or(Blocker::Unknown(root), Blocker::Outside),
                    })
                    .collect()
            })
            .unwrap_or_default();
        joined.backends.push(backend);
        joined.blockers.push(blockers);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_wait_says_what_it_waits_for() {
        let backend = ServerBackend {
            pid: 7,
            state: "active",
            active: true,
            wait: Some("Lock: transactionid".to_owned()),
            waiting_on_lock: true,
            state_age: Some(Duration::from_millis(1200)),
            visible: true,
            ..ServerBackend::default()
        };
        assert_eq!(
            backend.describe(),
            "waiting on a lock (Lock: transactionid) for 1s 200ms"
        );
    }

    #[test]
    fn an_invisible_backend_says_so() {
        let backend = ServerBackend {
            pid: 7,
            state: "unknown",
            ..ServerBackend::default()
        };
        assert_eq!(backend.describe(), "not visible to this role");
    }
}
