//! The server's side of the story: what PostgreSQL says the pool's
//! backends are doing.
//!
//! The application sees a checkout as "busy in the database"; the server
//! knows whether that backend is running a slow query, waiting on a row
//! lock, or sitting `idle in transaction` while the application calls some
//! other service, and **which backend blocks which**
//! (`pg_blocking_pids`). A [`ServerView`] asks `pg_stat_activity` about a
//! set of backend pids (the pool's) and returns a [`ServerReport`]: one
//! [`Backend`] per pid asked about, plus every backend blocking one of
//! them, even one outside the pool.
//!
//! # Why a side connection on a thread of its own
//!
//! The question matters most when the pool is exhausted and the
//! application's runtime may be starved, so the view depends on neither:
//!
//! * it has **its own connection**, outside the pool (one per view, opened
//!   with the pool's own [`Connect`], so the same TLS and host forms), with
//!   `application_name` [`APPLICATION_NAME`] so an operator can tell it
//!   apart, and a `statement_timeout`;
//! * its work runs on **one background thread per process**
//!   ([`THREAD_NAME`]) with a current-thread tokio runtime of its own. The
//!   thread starts with the first view and exits when the last one is
//!   dropped.
//!
//! # Bounds
//!
//! One connection and at most one query in flight per view; plain
//! [`ServerView::request`]s are coalesced (the newest pid set wins) and
//! sent at most once per [`ServerViewOptions::min_interval`]; after a
//! failure the view reconnects with exponential backoff. Results are
//! capped: [`MAX_PIDS_ASKED`] pids, [`MAX_BACKENDS`] rows,
//! [`MAX_BLOCKERS_PER_BACKEND`] blockers per backend, [`MAX_QUERY_CHARS`]
//! characters of statement text.
//!
//! # Failures
//!
//! Nothing here panics, blocks the caller's thread or returns an error: a
//! failure (permissions, server down, timeout) becomes
//! [`ServerReport::error`], and [`ServerView::take_first_failure`] hands
//! it out once per run of failures so the caller reports it once. Error
//! texts never contain the connection settings (the password lives there).
//!
//! # Privileges
//!
//! Works for any role. A role without `pg_read_all_stats` sees its own
//! role's backends fully and only the pid, role and application of the
//! others; those are reported with [`Backend::visible`] `false` and listed
//! in [`ServerReport::not_visible`]. The query never raises a server-side
//! error in normal operation (no casts that can fail, no role lookups).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use deadpool_postgres::Connect;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};

/// The background thread's name, as debuggers list it (the OS shows the
/// first 15 bytes, `poolwatch-serve`).
pub(crate) const THREAD_NAME: &str = "poolwatch-server";

/// The name of the threads tokio starts on demand for host name lookups
/// when the side connection connects over TCP (tokio's blocking pool; they
/// end with the server thread).
const LOOKUP_THREAD_NAME: &str = "poolwatch-dns";

/// `application_name` of the side connection, so that it is recognisable
/// in `pg_stat_activity` and the server log.
pub(crate) const APPLICATION_NAME: &str = "poolwatch server view";

/// At most this many pids are asked about in one query (the rest are left
/// out and the report says [`ServerReport::truncated`]). Far above any
/// sane pool size.
pub(crate) const MAX_PIDS_ASKED: usize = 512;

/// At most this many backends in one report: the pids asked about first,
/// then their blockers.
pub(crate) const MAX_BACKENDS: usize = 1024;

/// At most this many blocking pids kept per backend.
pub(crate) const MAX_BLOCKERS_PER_BACKEND: usize = 64;

/// Statement text is cut to this many characters on the server (the
/// server's own default cap, `track_activity_query_size`, is 1024 bytes).
pub(crate) const MAX_QUERY_CHARS: usize = 1024;

/// Role and application names are cut to this many characters.
const MAX_NAME_CHARS: usize = 64;

/// Failure texts are cut to this many bytes.
const MAX_ERROR_BYTES: usize = 512;

/// At most this many [`ServerView::query`] callers wait on one view; more
/// get `None` at once rather than an unbounded queue.
const MAX_WAITERS: usize = 64;

/// Never query more often than this, whatever the options say: a zero
/// interval must not turn into a busy loop against the server.
const MIN_INTERVAL_FLOOR: Duration = Duration::from_millis(10);

/// The first retry after a failure waits at least this long.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The client gives the server this long beyond `statement_timeout` to
/// answer (or to say it cancelled the statement) before it gives up on the
/// connection.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A closing side connection gets this long to say goodbye (Terminate)
/// before its task is aborted.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The one query. `$1` the pids asked about, `$2` the row cap, `$3` the
/// blocker cap per backend, `$4` the statement text cap.
///
/// * `pg_blocking_pids` is not free (it takes every lock-manager partition
///   lock), so it is called only for backends waiting on a heavyweight
///   lock (`wait_event_type = 'Lock'`, the only waits it reports) or whose
///   details this role may not see.
/// * The blockers of the blockers are included too (one level), so that a
///   chain through a backend outside the pool still resolves.
/// * Visibility is read from the row itself (`state` NULL and the
///   placeholder text), not from role lookups, which could fail for a
///   dropped role. Visible background processes have a NULL `state` too,
///   but an empty `query`.
/// * One statement reads one snapshot of the activity table, so the two
///   references to `pg_stat_activity` agree.
/// * `now()` is the start of this statement's transaction; a backend that
///   started after it gets a small negative age, clamped to zero.
pub(crate) const SQL: &str = "\
WITH asked AS (
    SELECT DISTINCT pid FROM unnest($1::int4[]) AS asked(pid)
),
asked_blocked AS (
    SELECT a.pid, (pg_blocking_pids(a.pid))[1:$3] AS blocked_by
    FROM pg_stat_activity AS a
    WHERE a.pid IN (SELECT pid FROM asked)
      AND (a.wait_event_type = 'Lock' OR a.state IS NULL)
),
wanted AS (
    SELECT pid, TRUE AS asked FROM asked
    UNION
    SELECT b.pid, FALSE
    FROM asked_blocked, unnest(asked_blocked.blocked_by) AS b(pid)
    WHERE b.pid NOT IN (SELECT pid FROM asked)
)
SELECT a.pid,
       w.asked,
       a.state,
       a.wait_event_type,
       a.wait_event,
       EXTRACT(EPOCH FROM now() - a.xact_start)::float8,
       EXTRACT(EPOCH FROM now() - a.state_change)::float8,
       EXTRACT(EPOCH FROM now() - a.query_start)::float8,
       left(a.query, $4),
       COALESCE(
           ab.blocked_by,
           CASE WHEN NOT w.asked AND (a.wait_event_type = 'Lock' OR a.state IS NULL)
                THEN (pg_blocking_pids(a.pid))[1:$3] END,
           '{}'::int4[]),
       a.backend_xid IS NOT NULL,
       left(a.usename::text, $5),
       left(a.application_name, $5),
       a.backend_type,
       NOT (a.state IS NULL AND a.query IS NOT DISTINCT FROM '<insufficient privilege>')
FROM wanted AS w
JOIN pg_stat_activity AS a ON a.pid = w.pid
LEFT JOIN asked_blocked AS ab ON w.asked AND ab.pid = w.pid
ORDER BY w.asked DESC, a.pid
LIMIT $2";

/// The parameter types of [`SQL`], declared so that the server never has
/// to guess them.
const SQL_TYPES: [Type; 5] = [
    Type::INT4_ARRAY,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::INT4,
];

/// `pg_stat_activity.state`: what a backend is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BackendState {
    /// Executing a statement (possibly waiting: see the wait event).
    Active,
    /// Waiting for a new command, no transaction open.
    Idle,
    /// In a transaction, not executing anything: whatever it holds (row
    /// locks, snapshots) stays held while the application does other work.
    IdleInTransaction,
    /// In a failed transaction, not executing anything; it still holds its
    /// locks until the application rolls back.
    IdleInTransactionAborted,
    /// Executing a fast-path function call.
    FastPath,
    /// `track_activities` is off for this backend.
    Disabled,
    /// Not reported: a backend whose details this role may not see, a
    /// background process, or a state this code does not know.
    Unknown,
}

impl BackendState {
    /// The state as the server spells it (`unknown` for [`Self::Unknown`]).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Idle => "idle",
            Self::IdleInTransaction => "idle in transaction",
            Self::IdleInTransactionAborted => "idle in transaction (aborted)",
            Self::FastPath => "fastpath function call",
            Self::Disabled => "disabled",
            Self::Unknown => "unknown",
        }
    }

    /// Parses `pg_stat_activity.state` (NULL or anything new is
    /// [`Self::Unknown`]).
    pub(crate) fn from_server(state: Option<&str>) -> Self {
        match state {
            Some("active") => Self::Active,
            Some("idle") => Self::Idle,
            Some("idle in transaction") => Self::IdleInTransaction,
            Some("idle in transaction (aborted)") => Self::IdleInTransactionAborted,
            Some("fastpath function call") => Self::FastPath,
            Some("disabled") => Self::Disabled,
            _ => Self::Unknown,
        }
    }

    /// Idle inside a transaction (failed or not): holding whatever the
    /// transaction took while doing nothing.
    pub(crate) fn is_idle_in_transaction(self) -> bool {
        matches!(
            self,
            Self::IdleInTransaction | Self::IdleInTransactionAborted
        )
    }
}

/// One server backend as `pg_stat_activity` shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Backend {
    /// The backend's process id (`pg_stat_activity.pid`).
    pub(crate) pid: i32,
    /// Asked about (a pool connection), rather than included because it
    /// blocks one that was.
    pub(crate) asked: bool,
    /// What it is doing.
    pub(crate) state: BackendState,
    /// The kind of thing it waits for (`Lock`, `LWLock`, `IO`, `Client`,
    /// `Timeout`, …), if it waits.
    pub(crate) wait_event_type: Option<String>,
    /// What exactly it waits for (`transactionid`, `tuple`, `relation`,
    /// `PgSleep`, …).
    pub(crate) wait_event: Option<String>,
    /// How long its current transaction has been open (none outside a
    /// transaction).
    pub(crate) transaction_age: Option<Duration>,
    /// How long it has been in [`Self::state`].
    pub(crate) state_age: Option<Duration>,
    /// How long since its current (or, when idle, last) statement started.
    pub(crate) query_age: Option<Duration>,
    /// The current or last statement, raw as the server shows it (cut at
    /// [`MAX_QUERY_CHARS`]); none when not [`Self::visible`]. May contain
    /// literals: the caller sanitizes it.
    pub(crate) query: Option<String>,
    /// `pg_blocking_pids`: the backends it waits for, at most
    /// [`MAX_BLOCKERS_PER_BACKEND`]. `0` stands for a prepared transaction
    /// (which has no backend).
    pub(crate) blocked_by: Vec<i32>,
    /// Its transaction has an id (`backend_xid`): it has written or locked
    /// rows, so it can block others.
    pub(crate) has_transaction_id: bool,
    /// The role it runs as (visible even when its details are not).
    pub(crate) role: Option<String>,
    /// Its `application_name` (visible even when its details are not).
    pub(crate) application_name: Option<String>,
    /// `client backend`, `autovacuum worker`, … (none when not visible).
    pub(crate) backend_type: Option<String>,
    /// `false` when this role may not see the backend's details (not its
    /// own role's, and no `pg_read_all_stats`): state, wait event, times
    /// and statement are then unknown.
    pub(crate) visible: bool,
}

impl Backend {
    /// Waiting for a heavyweight lock (a row, a table, a transaction id):
    /// [`Self::blocked_by`] says who holds it.
    pub(crate) fn is_waiting_on_lock(&self) -> bool {
        self.wait_event_type.as_deref() == Some("Lock")
    }

    /// Some other backend (or a prepared transaction) blocks it.
    pub(crate) fn is_blocked(&self) -> bool {
        !self.blocked_by.is_empty()
    }

    /// Idle inside an open transaction.
    pub(crate) fn is_idle_in_transaction(&self) -> bool {
        self.state.is_idle_in_transaction()
    }
}

/// The answer to one question about a set of backends.
#[derive(Clone, Debug)]
pub(crate) struct ServerReport {
    /// When the question was sent (the ages are as of about then).
    pub(crate) taken_at: Instant,
    /// The pids asked about, sorted, without duplicates.
    #[cfg_attr(not(test), allow(dead_code))] // the tests read it
    pub(crate) asked: Vec<i32>,
    /// The pids asked about that the server knows, then every backend
    /// blocking one of them (even outside the pool), each once.
    pub(crate) backends: Vec<Backend>,
    /// Asked about, but not in `pg_stat_activity` (the backend has exited).
    pub(crate) missing: Vec<i32>,
    /// In [`Self::backends`] with [`Backend::visible`] `false`.
    pub(crate) not_visible: Vec<i32>,
    /// Something was left out: more than [`MAX_PIDS_ASKED`] pids were asked
    /// about, or the result was cut at [`MAX_BACKENDS`] rows.
    pub(crate) truncated: bool,
    /// Why there is no answer (then [`Self::backends`] is empty).
    pub(crate) error: Option<String>,
}

impl ServerReport {
    /// The backend with this pid, if the report has it.
    pub(crate) fn backend(&self, pid: i32) -> Option<&Backend> {
        self.backends.iter().find(|b| b.pid == pid)
    }

    /// The backends at the head of `pid`'s chain of waits: whom it waits
    /// for, and, for those that wait themselves, whom they wait for, and
    /// so on. PostgreSQL queues waiters behind each other, so the second
    /// backend waiting on a row reports the first waiter as its blocker;
    /// the head of the chain is the one to blame. Empty when `pid` is not
    /// blocked. Follows only backends in the report; cycles (a deadlock
    /// about to be detected) end the walk.
    pub(crate) fn blocking_roots(&self, pid: i32) -> Vec<i32> {
        let mut roots = Vec::new();
        let mut seen: HashSet<i32> = HashSet::from([pid]);
        let mut stack: Vec<i32> = self
            .backend(pid)
            .map(|b| b.blocked_by.clone())
            .unwrap_or_default();
        while let Some(next) = stack.pop() {
            if !seen.insert(next) {
                continue;
            }
            match self.backend(next) {
                Some(blocker) if blocker.is_blocked() => {
                    stack.extend(blocker.blocked_by.iter().copied());
                }
                _ => roots.push(next),
            }
        }
        roots.sort_unstable();
        roots
    }

    /// A report saying why there is no answer.
    fn failed(asked: Vec<i32>, truncated: bool, taken_at: Instant, error: String) -> Self {
        Self {
            taken_at,
            asked,
            backends: Vec::new(),
            missing: Vec::new(),
            not_visible: Vec::new(),
            truncated,
            error: Some(error),
        }
    }

    /// Builds a report from the backends the query returned.
    fn answered(
        asked: Vec<i32>,
        truncated: bool,
        taken_at: Instant,
        backends: Vec<Backend>,
    ) -> Self {
        let found: HashSet<i32> = backends.iter().filter(|b| b.asked).map(|b| b.pid).collect();
        let missing = asked
            .iter()
            .copied()
            .filter(|p| !found.contains(p))
            .collect();
        let not_visible = backends
            .iter()
            .filter(|b| !b.visible)
            .map(|b| b.pid)
            .collect();
        Self {
            taken_at,
            asked,
            backends,
            missing,
            not_visible,
            truncated,
            error: None,
        }
    }

    /// The part of this report about `pids` (a subset of what was asked):
    /// those backends and the ones blocking them, directly or down the
    /// chain. What one [`ServerView::query`] caller gets when its question
    /// was answered together with others.
    fn about(&self, pids: &PidSet) -> Self {
        let by_pid: HashMap<i32, &Backend> = self.backends.iter().map(|b| (b.pid, b)).collect();
        let mut wanted: HashSet<i32> = pids.pids.iter().copied().collect();
        let mut stack: Vec<i32> = pids.pids.clone();
        while let Some(pid) = stack.pop() {
            if let Some(backend) = by_pid.get(&pid) {
                for &blocker in &backend.blocked_by {
                    if wanted.insert(blocker) {
                        stack.push(blocker);
                    }
                }
            }
        }
        let asked: HashSet<i32> = pids.pids.iter().copied().collect();
        let backends: Vec<Backend> = self
            .backends
            .iter()
            .filter(|b| wanted.contains(&b.pid))
            .cloned()
            .map(|mut b| {
                b.asked = asked.contains(&b.pid);
                b
            })
            .collect();
        Self {
            taken_at: self.taken_at,
            asked: pids.pids.clone(),
            missing: self
                .missing
                .iter()
                .copied()
                .filter(|p| asked.contains(p))
                .collect(),
            not_visible: backends
                .iter()
                .filter(|b| !b.visible)
                .map(|b| b.pid)
                .collect(),
            backends,
            truncated: self.truncated || pids.truncated,
            error: self.error.clone(),
        }
    }
}

/// How a [`ServerView`] paces and bounds itself.
#[derive(Clone, Debug)]
pub(crate) struct ServerViewOptions {
    /// Plain [`ServerView::request`]s are sent at most once per this
    /// interval (at least 10 ms); requests in between are coalesced.
    pub(crate) min_interval: Duration,
    /// `statement_timeout` of the side connection: the server cancels the
    /// query after this long.
    pub(crate) statement_timeout: Duration,
    /// Opening the side connection (and preparing its statement) gives up
    /// after this long.
    pub(crate) connect_timeout: Duration,
    /// The longest wait between retries after failures (the wait starts
    /// at [`Self::min_interval`], at least 100 ms, and doubles).
    pub(crate) max_backoff: Duration,
}

impl Default for ServerViewOptions {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Asks PostgreSQL about backends, from a side connection on poolwatch's
/// server thread. See the [module documentation](self).
pub(crate) struct ServerView {
    shared: Arc<Shared>,
}

/// A set of pids, sorted, without duplicates, capped at
/// [`MAX_PIDS_ASKED`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PidSet {
    pids: Vec<i32>,
    /// Some pids were left out to keep the cap.
    truncated: bool,
}

impl PidSet {
    fn new(mut pids: Vec<i32>) -> Self {
        pids.sort_unstable();
        pids.dedup();
        let truncated = pids.len() > MAX_PIDS_ASKED;
        pids.truncate(MAX_PIDS_ASKED);
        Self { pids, truncated }
    }

    /// Everything in `self` and `other`, still capped.
    fn union(&self, other: &PidSet) -> Self {
        let mut pids = self.pids.clone();
        pids.extend_from_slice(&other.pids);
        let mut union = Self::new(pids);
        union.truncated |= self.truncated || other.truncated;
        union
    }
}

/// A [`ServerView::query`] caller waiting for the next answer.
struct Waiter {
    pids: PidSet,
    reply: oneshot::Sender<ServerReport>,
}

/// What the view's task does next.
enum Step {
    /// Ask about `pids` now and answer `waiters` with the result.
    Ask { pids: PidSet, waiters: Vec<Waiter> },
    /// Backing off after a failure: answer `waiters` with the latest
    /// (failed) answer at once rather than let them wait for a retry.
    AnswerFromLatest {
        waiters: Vec<Waiter>,
        latest: Option<Arc<ServerReport>>,
    },
    /// Nothing may be sent before this instant (unless woken).
    SleepUntil(Instant),
    /// Nothing to do until woken.
    Idle,
}

/// Shared between the [`ServerView`] handle and its task on the server
/// thread.
struct Shared {
    /// Connection settings. Never logged nor formatted: they may hold the
    /// password.
    pg_config: tokio_postgres::Config,
    connect: Arc<dyn Connect>,
    options: ServerViewOptions,
    state: Mutex<State>,
    /// Wakes the view's task: a request, a waiter, or the view closing.
    /// `notify_one` keeps a permit, so a wake-up between the task's look
    /// at the state and its wait is not lost.
    wake: Notify,
    /// Queries sent to the server (tests and diagnostics).
    queries_sent: AtomicU64,
}

struct State {
    /// The handle was dropped: the task ends.
    closed: bool,
    /// The newest plain request not yet sent.
    pending: Option<PidSet>,
    waiters: Vec<Waiter>,
    /// Shared, so that readers copy it outside the lock.
    latest: Option<Arc<ServerReport>>,
    /// A failure not yet handed out by `take_first_failure`.
    unreported_failure: Option<String>,
    /// The next failure starts a new run of failures (the view has not
    /// failed yet, or has answered since the last failure).
    failure_reportable: bool,
    /// When the last query was sent (the rate limit's reference).
    last_sent: Option<Instant>,
    /// After a failure, nothing is sent before this instant.
    retry_not_before: Option<Instant>,
    /// Failures in a row (the backoff's exponent).
    failures_in_row: u32,
    /// The server thread's runtime, once the view is attached to it.
    runtime: Option<Handle>,
    /// When attaching to the server thread was last tried.
    last_attach_attempt: Option<Instant>,
}

impl State {
    fn new() -> Self {
        Self {
            closed: false,
            pending: None,
            waiters: Vec::new(),
            latest: None,
            unreported_failure: None,
            failure_reportable: true,
            last_sent: None,
            retry_not_before: None,
            failures_in_row: 0,
            runtime: None,
            last_attach_attempt: None,
        }
    }

    /// Decides what to do at `now`; takes the work it decides to do.
    /// Cheap: the lock is held, and application threads take it too.
    fn next_step(&mut self, now: Instant, min_interval: Duration) -> Step {
        self.waiters.retain(|w| !w.reply.is_closed());
        let backing_off = self.retry_not_before.filter(|&t| now < t);
        if backing_off.is_some() && !self.waiters.is_empty() {
            return Step::AnswerFromLatest {
                waiters: std::mem::take(&mut self.waiters),
                latest: self.latest.clone(),
            };
        }
        if let Some(not_before) = backing_off {
            return if self.pending.is_some() {
                Step::SleepUntil(not_before)
            } else {
                Step::Idle
            };
        }
        if !self.waiters.is_empty() {
            // Waiters are asked for now, with the pending request folded
            // in. They leave the queue: whoever asks while this query is in
            // flight waits for the next one, whose answer is newer than
            // the question.
            let waiters = std::mem::take(&mut self.waiters);
            let mut pids = PidSet::default();
            for waiter in &waiters {
                pids = pids.union(&waiter.pids);
            }
            if let Some(pending) = self.pending.take() {
                pids = pids.union(&pending);
            }
            return Step::Ask { pids, waiters };
        }
        let Some(pending) = &self.pending else {
            return Step::Idle;
        };
        let due = self
            .last_sent
            .and_then(|sent| sent.checked_add(min_interval.max(MIN_INTERVAL_FLOOR)));
        match due {
            Some(due) if now < due => Step::SleepUntil(due),
            _ => {
                let pids = pending.clone();
                self.pending = None;
                Step::Ask {
                    pids,
                    waiters: Vec::new(),
                }
            }
        }
    }

    /// Records an answer (or a failure): latest, failure bookkeeping,
    /// backoff.
    fn record(&mut self, report: Arc<ServerReport>, options: &ServerViewOptions) {
        match &report.error {
            Some(error) => {
                if self.failure_reportable {
                    self.unreported_failure = Some(error.clone());
                    self.failure_reportable = false;
                }
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                let delay = backoff(self.failures_in_row, options);
                self.retry_not_before = Instant::now().checked_add(delay);
            }
            None => {
                self.failure_reportable = true;
                self.failures_in_row = 0;
                self.retry_not_before = None;
            }
        }
        self.latest = Some(report);
    }
}

/// Gives each waiter its part of `report` (outside the state's lock: the
/// parts are copies). Without a report yet, says so.
fn answer(waiters: Vec<Waiter>, report: Option<&ServerReport>) {
    for waiter in waiters {
        let part = match report {
            Some(report) => report.about(&waiter.pids),
            None => ServerReport::failed(
                waiter.pids.pids.clone(),
                waiter.pids.truncated,
                Instant::now(),
                "no answer yet".to_owned(),
            ),
        };
        // A caller that stopped waiting makes this fail; nothing to do.
        let _ = waiter.reply.send(part);
    }
}

/// The wait before retry number `failures` (1-based): the minimum
/// interval (at least [`MIN_BACKOFF`]), doubled per failure, capped.
fn backoff(failures: u32, options: &ServerViewOptions) -> Duration {
    let base = options.min_interval.max(MIN_BACKOFF);
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor)
        .min(options.max_backoff.max(base))
}

impl ServerView {
    /// A view asking the server `pg_config` points at, over a side
    /// connection made with `connect` (the pool's own, for the same TLS and
    /// host forms). Starts the server thread if none runs. Does not connect
    /// yet: the first question does.
    pub(crate) fn new(
        pg_config: tokio_postgres::Config,
        connect: Arc<dyn Connect>,
        options: ServerViewOptions,
    ) -> Self {
        let view = Self {
            shared: Arc::new(Shared {
                pg_config,
                connect,
                options,
                state: Mutex::new(State::new()),
                wake: Notify::new(),
                queries_sent: AtomicU64::new(0),
            }),
        };
        view.attach();
        view
    }

    /// Asks about `pids` (the pool's backends) when the rate limit allows;
    /// returns at once. A newer request replaces one not yet sent. The
    /// answer shows up in [`Self::latest`].
    pub(crate) fn request(&self, pids: Vec<i32>) {
        let pids = PidSet::new(pids);
        self.shared.state.lock().pending = Some(pids);
        self.shared.wake.notify_one();
        self.retry_attach();
    }

    /// The newest answer (or failure), if any.
    pub(crate) fn latest(&self) -> Option<ServerReport> {
        let latest = self.shared.state.lock().latest.clone();
        latest.map(|report| ServerReport::clone(&report))
    }

    /// Asks about `pids` now, bypassing the rate limit (but not the one
    /// query in flight, nor the backoff after a failure, during which the
    /// latest failure comes back at once), and waits up to `wait` for the
    /// answer. Callers asking at the same time share one query. Works from
    /// any executor: the waiting is timed on the server thread.
    ///
    /// `None` when no answer came in time, too many callers wait already,
    /// or the server thread is unavailable.
    pub(crate) async fn query(&self, pids: Vec<i32>, wait: Duration) -> Option<ServerReport> {
        self.retry_attach();
        let (reply, answer) = oneshot::channel();
        let runtime = {
            let mut state = self.shared.state.lock();
            let runtime = state.runtime.clone()?;
            if state.closed {
                // The view's task stopped (after an internal error).
                let latest = state.latest.clone();
                drop(state);
                return latest.map(|latest| latest.about(&PidSet::new(pids)));
            }
            state.waiters.retain(|w| !w.reply.is_closed());
            if state.waiters.len() >= MAX_WAITERS {
                return None;
            }
            state.waiters.push(Waiter {
                pids: PidSet::new(pids),
                reply,
            });
            runtime
        };
        self.shared.wake.notify_one();
        // The timer runs on the server thread's runtime, so the caller
        // needs no tokio timer of its own (nor tokio at all).
        let timed =
            runtime.spawn(async move { tokio::time::timeout(wait, answer).await.ok()?.ok() });
        AbortOnDrop(timed).await.ok().flatten()
    }

    /// The first failure of the current run of failures, once: `Some` the
    /// first time it is called after the view starts failing, then `None`
    /// until the view has answered again and fails anew.
    pub(crate) fn take_first_failure(&self) -> Option<String> {
        self.shared.state.lock().unreported_failure.take()
    }

    /// How many queries this view has sent to the server (retries
    /// included).
    pub(crate) fn queries_sent(&self) -> u64 {
        self.shared.queries_sent.load(Ordering::Relaxed)
    }

    /// Joins the server thread (starting it if needed). A failure to start
    /// it becomes the view's failure; [`Self::retry_attach`] tries again.
    fn attach(&self) {
        self.shared.state.lock().last_attach_attempt = Some(Instant::now());
        if let Err(error) = attach(&self.shared) {
            let mut state = self.shared.state.lock();
            let report = ServerReport::failed(
                Vec::new(),
                false,
                Instant::now(),
                bounded_error(format!("the {THREAD_NAME} thread could not start: {error}")),
            );
            state.record(Arc::new(report), &self.shared.options);
        }
    }

    /// Tries to attach again, at most once per minimum interval, if the
    /// thread could not start before.
    fn retry_attach(&self) {
        let due = {
            let state = self.shared.state.lock();
            state.runtime.is_none()
                && state.last_attach_attempt.is_none_or(|at| {
                    at.elapsed() >= self.shared.options.min_interval.max(MIN_INTERVAL_FLOOR)
                })
        };
        if due {
            self.attach();
        }
    }
}

impl std::fmt::Debug for ServerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection settings: they may hold the password.
        let state = self.shared.state.lock();
        f.debug_struct("ServerView")
            .field("options", &self.shared.options)
            .field("attached", &state.runtime.is_some())
            .field("queries_sent", &self.queries_sent())
            .field("failures_in_row", &state.failures_in_row)
            .finish_non_exhaustive()
    }
}

impl Drop for ServerView {
    fn drop(&mut self) {
        let attached = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            // Dropping the senders ends the waits of `query` callers.
            state.waiters.clear();
            state.runtime.is_some()
        };
        self.shared.wake.notify_one();
        if attached {
            detach();
        }
    }
}

/// A task whose caller stopped waiting is not left running.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------
// The server thread.

/// The running server thread: its runtime, the channel new views arrive
/// on, and how many views it serves. Dropping the sender (with the last
/// view) ends the thread.
struct ServerThread {
    views_in: mpsc::UnboundedSender<Arc<Shared>>,
    runtime: Handle,
    views: usize,
}

static SERVER_THREAD: Mutex<Option<ServerThread>> = parking_lot::const_mutex(None);

/// Whether the server thread is running (it serves at least one view).
#[allow(dead_code)] // for tests/server_view.rs, which compiles this file itself
pub(crate) fn server_thread_running() -> bool {
    SERVER_THREAD.lock().is_some()
}

/// Hands the view to the server thread, starting the thread if none runs.
/// Lock order: `SERVER_THREAD`, then a view's state.
fn attach(shared: &Arc<Shared>) -> std::io::Result<()> {
    let mut slot = SERVER_THREAD.lock();
    let mut view = Arc::clone(shared);
    for _ in 0..2 {
        if slot.is_none() {
            *slot = Some(start_thread()?);
        }
        let Some(thread) = slot.as_mut() else {
            break;
        };
        match thread.views_in.send(view) {
            Ok(()) => {
                thread.views += 1;
                shared.state.lock().runtime = Some(thread.runtime.clone());
                return Ok(());
            }
            Err(mpsc::error::SendError(returned)) => {
                // The thread is gone (it can only end this way if its
                // runtime stopped): start a new one.
                view = returned;
                *slot = None;
            }
        }
    }
    Err(std::io::Error::other("the server thread stopped at once"))
}

/// One view fewer; the last one out lets the thread end.
fn detach() {
    let mut slot = SERVER_THREAD.lock();
    if let Some(thread) = slot.as_mut() {
        thread.views = thread.views.saturating_sub(1);
        if thread.views == 0 {
            *slot = None;
        }
    }
}

/// Starts the server thread. The runtime is built here, on the caller's
/// thread, so that its handle is known at once; it is only ever entered
/// on the new thread.
fn start_thread() -> std::io::Result<ServerThread> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(LOOKUP_THREAD_NAME)
        .build()?;
    let handle = runtime.handle().clone();
    let (views_in, views) = mpsc::unbounded_channel();
    // Handed over through a slot rather than moved into the closure: if
    // the thread cannot start, the closure is dropped here, and a runtime
    // dropped the ordinary way inside an async context (the caller's)
    // panics.
    let slot = Arc::new(Mutex::new(Some(runtime)));
    let handed = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || {
            if let Some(runtime) = handed.lock().take() {
                run_thread(runtime, views);
            }
        });
    if let Err(error) = spawned {
        if let Some(runtime) = slot.lock().take() {
            // Never entered, nothing spawned: nothing to wait for.
            runtime.shutdown_background();
        }
        return Err(error);
    }
    Ok(ServerThread {
        views_in,
        runtime: handle,
        views: 0,
    })
}

/// The thread's life: serve each view that arrives until the last view is
/// gone, let the views' tasks close their connections (each is bounded by
/// its timeouts), then drop the runtime.
fn run_thread(runtime: tokio::runtime::Runtime, mut views: mpsc::UnboundedReceiver<Arc<Shared>>) {
    runtime.block_on(async move {
        let mut served: Vec<JoinHandle<()>> = Vec::new();
        while let Some(view) = views.recv().await {
            served.retain(|task| !task.is_finished());
            let task = tokio::spawn(serve(Arc::clone(&view)));
            served.push(tokio::spawn(async move {
                // A bug in `serve` must not leave the view silent forever.
                if let Err(error) = task.await {
                    if error.is_panic() {
                        let report = ServerReport::failed(
                            Vec::new(),
                            false,
                            Instant::now(),
                            "the server view stopped after an internal error".to_owned(),
                        );
                        let mut state = view.state.lock();
                        state.retry_not_before = None;
                        state.record(Arc::new(report), &view.options);
                        state.closed = true;
                    }
                }
            }));
        }
        for task in served {
            let _ = task.await;
        }
    });
}

// ---------------------------------------------------------------------
// One view's task.

/// The side connection, its prepared statement and its connection task.
struct Session {
    client: Client,
    statement: Statement,
    connection: JoinHandle<()>,
}

impl Session {
    /// Closes politely (the server sees a Terminate, not a dropped socket).
    async fn close(self) {
        let Session {
            client,
            statement,
            mut connection,
        } = self;
        drop(statement);
        drop(client);
        if tokio::time::timeout(CLOSE_GRACE, &mut connection)
            .await
            .is_err()
        {
            connection.abort();
        }
    }

    /// Drops a connection in an unknown state (a timeout, an error).
    fn abandon(self) {
        self.connection.abort();
    }
}

/// Serves one view until its handle is dropped.
async fn serve(shared: Arc<Shared>) {
    let mut session: Option<Session> = None;
    loop {
        let question = loop {
            let step = {
                let mut state = shared.state.lock();
                if state.closed {
                    break None;
                }
                state.next_step(Instant::now(), shared.options.min_interval)
            };
            match step {
                Step::Ask { pids, waiters } => break Some((pids, waiters)),
                Step::AnswerFromLatest { waiters, latest } => answer(waiters, latest.as_deref()),
                Step::SleepUntil(until) => {
                    let until = tokio::time::Instant::from_std(until);
                    let _ = tokio::time::timeout_at(until, shared.wake.notified()).await;
                }
                Step::Idle => shared.wake.notified().await,
            }
        };
        let Some((pids, waiters)) = question else {
            break;
        };
        let taken_at = Instant::now();
        let report = if pids.pids.is_empty() {
            // Nothing to ask: no need to bother the server.
            ServerReport::answered(Vec::new(), pids.truncated, taken_at, Vec::new())
        } else {
            shared.state.lock().last_sent = Some(taken_at);
            match ask(&shared, &mut session, &pids.pids).await {
                Ok((backends, cut)) => ServerReport::answered(
                    pids.pids.clone(),
                    pids.truncated || cut,
                    taken_at,
                    backends,
                ),
                Err(error) => ServerReport::failed(
                    pids.pids.clone(),
                    pids.truncated,
                    taken_at,
                    bounded_error(error),
                ),
            }
        };
        // Recorded before the waiters hear of it, so that `latest` is never
        // older than an answer a caller already has.
        let report = Arc::new(report);
        shared
            .state
            .lock()
            .record(Arc::clone(&report), &shared.options);
        answer(waiters, Some(&report));
    }
    if let Some(session) = session.take() {
        session.close().await;
    }
}

/// Sends the query, connecting first if needed. A connection that turns
/// out closed (the server's `idle_session_timeout`, a restart, a proxy's
/// idle timeout) is replaced and the query sent once more before that
/// counts as a failure. Returns the backends and whether the row cap cut
/// the result.
async fn ask(
    shared: &Shared,
    session: &mut Option<Session>,
    pids: &[i32],
) -> Result<(Vec<Backend>, bool), String> {
    let answer_timeout = shared
        .options
        .statement_timeout
        .saturating_add(ANSWER_GRACE);
    for _attempt in 0..2 {
        if session.as_ref().is_some_and(|s| s.client.is_closed()) {
            if let Some(closed) = session.take() {
                closed.abandon();
            }
        }
        let fresh = session.is_none();
        let current = match session.take() {
            Some(current) => current,
            None => open_session(shared).await?,
        };
        shared.queries_sent.fetch_add(1, Ordering::Relaxed);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &pids,
            &(MAX_BACKENDS as i64),
            &(MAX_BLOCKERS_PER_BACKEND as i32),
            &(MAX_QUERY_CHARS as i32),
            &(MAX_NAME_CHARS as i32),
        ];
        let sent = current.client.query(&current.statement, &params);
        match tokio::time::timeout(answer_timeout, sent).await {
            Ok(Ok(rows)) => {
                *session = Some(current);
                let cut = rows.len() >= MAX_BACKENDS;
                let backends = rows
                    .iter()
                    .map(backend_from_row)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        format!("unexpected answer to the activity query: {}", describe(&e))
                    })?;
                return Ok((backends, cut));
            }
            Ok(Err(error)) => {
                let closed = error.is_closed() || current.client.is_closed();
                if closed {
                    current.abandon();
                    if !fresh {
                        continue;
                    }
                } else {
                    // A server-side error (a cancelled statement, say)
                    // leaves the connection usable.
                    *session = Some(current);
                }
                return Err(format!("the activity query failed: {}", describe(&error)));
            }
            Err(_) => {
                current.abandon();
                return Err(format!(
                    "the activity query got no answer within {}",
                    humantime::format_duration(answer_timeout)
                ));
            }
        }
    }
    Err("the side connection closed twice in a row".to_owned())
}

/// Opens the side connection: `application_name` set to say what it is,
/// `statement_timeout` set, the statement prepared, all within the connect
/// timeout.
async fn open_session(shared: &Shared) -> Result<Session, String> {
    let options = &shared.options;
    let mut config = shared.pg_config.clone();
    config.application_name(APPLICATION_NAME);
    // The per-host timeout of tokio-postgres too, so that a list of hosts
    // is tried within the same limit.
    let connect_timeout = match config.get_connect_timeout() {
        Some(&own) => own.min(options.connect_timeout),
        None => options.connect_timeout,
    };
    config.connect_timeout(connect_timeout);
    let opening = async {
        let (client, connection) = shared
            .connect
            .connect(&config)
            .await
            .map_err(|e| format!("connecting the side connection failed: {}", describe(&e)))?;
        // Set with SET rather than the startup packet's `options`, which
        // connection poolers such as PgBouncer reject.
        let settings = format!(
            "SET statement_timeout = {}",
            options
                .statement_timeout
                .as_millis()
                .clamp(1, i32::MAX as u128)
        );
        let prepared = async {
            client.batch_execute(&settings).await?;
            client.prepare_typed(SQL, &SQL_TYPES).await
        };
        match prepared.await {
            Ok(statement) => Ok(Session {
                client,
                statement,
                connection,
            }),
            Err(e) => {
                connection.abort();
                Err(format!(
                    "setting up the side connection failed: {}",
                    describe(&e)
                ))
            }
        }
    };
    match tokio::time::timeout(connect_timeout, opening).await {
        Ok(opened) => opened,
        Err(_) => Err(format!(
            "connecting the side connection timed out after {}",
            humantime::format_duration(connect_timeout)
        )),
    }
}

/// One row of [`SQL`] as a [`Backend`].
fn backend_from_row(row: &Row) -> Result<Backend, tokio_postgres::Error> {
    let state: Option<String> = row.try_get(2)?;
    let visible: bool = row.try_get(14)?;
    Ok(Backend {
        pid: row.try_get(0)?,
        asked: row.try_get(1)?,
        state: BackendState::from_server(state.as_deref()),
        wait_event_type: row.try_get(3)?,
        wait_event: row.try_get(4)?,
        transaction_age: row.try_get::<_, Option<f64>>(5)?.map(age),
        state_age: row.try_get::<_, Option<f64>>(6)?.map(age),
        query_age: row.try_get::<_, Option<f64>>(7)?.map(age),
        // Not the `<insufficient privilege>` placeholder: it is no statement.
        query: if visible { row.try_get(8)? } else { None },
        blocked_by: row.try_get(9)?,
        has_transaction_id: row.try_get(10)?,
        role: row.try_get(11)?,
        application_name: row.try_get(12)?,
        backend_type: row.try_get(13)?,
        visible,
    })
}

/// Seconds from the server as a duration; negative (a backend that
/// started after this statement's `now()`) and absurd values become zero.
fn age(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO)
}

/// A tokio-postgres error with its causes, and the SQLSTATE for server
/// errors. tokio-postgres's own `Display` says only "db error". Detail and
/// hint are left out: they can quote row values.
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Cuts a failure text to [`MAX_ERROR_BYTES`] on a character boundary.
fn bounded_error(mut text: String) -> String {
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(pid: i32, blocked_by: &[i32]) -> Backend {
        Backend {
            pid,
            asked: true,
            state: BackendState::Active,
            wait_event_type: None,
            wait_event: None,
            transaction_age: None,
            state_age: None,
            query_age: None,
            query: None,
            blocked_by: blocked_by.to_vec(),
            has_transaction_id: false,
            role: None,
            application_name: None,
            backend_type: None,
            visible: true,
        }
    }

    fn options(min_interval: Duration) -> ServerViewOptions {
        ServerViewOptions {
            min_interval,
            max_backoff: Duration::from_secs(8),
            ..ServerViewOptions::default()
        }
    }

    #[test]
    fn states_round_trip_through_the_server_spelling() {
        for state in [
            BackendState::Active,
            BackendState::Idle,
            BackendState::IdleInTransaction,
            BackendState::IdleInTransactionAborted,
            BackendState::FastPath,
            BackendState::Disabled,
        ] {
            assert_eq!(BackendState::from_server(Some(state.as_str())), state);
        }
        assert_eq!(BackendState::from_server(None), BackendState::Unknown);
        assert_eq!(
            BackendState::from_server(Some("starting")),
            BackendState::Unknown
        );
        assert!(BackendState::IdleInTransactionAborted.is_idle_in_transaction());
        assert!(!BackendState::Active.is_idle_in_transaction());
    }

    #[test]
    fn pid_sets_are_sorted_deduplicated_and_capped() {
        let set = PidSet::new(vec![3, 1, 3, 2]);
        assert_eq!(set.pids, [1, 2, 3]);
        assert!(!set.truncated);
        let big = PidSet::new((0..MAX_PIDS_ASKED as i32 + 10).rev().collect());
        assert_eq!(big.pids.len(), MAX_PIDS_ASKED);
        assert!(big.truncated);
        assert_eq!(big.pids[0], 0);
        let union = PidSet::new(vec![5, 1]).union(&PidSet::new(vec![1, 9]));
        assert_eq!(union.pids, [1, 5, 9]);
    }

    /// The step as comparable data: the pids asked and how many waiters.
    fn shape(step: Step) -> (Option<(Vec<i32>, usize)>, Option<Instant>) {
        match step {
            Step::Ask { pids, waiters } => (Some((pids.pids, waiters.len())), None),
            Step::AnswerFromLatest { .. } => panic!("not backing off"),
            Step::SleepUntil(until) => (None, Some(until)),
            Step::Idle => (None, None),
        }
    }

    #[test]
    fn requests_coalesce_and_respect_the_interval() {
        let interval = Duration::from_secs(1);
        let mut state = State::new();
        let t0 = Instant::now();
        assert_eq!(shape(state.next_step(t0, interval)), (None, None));
        state.pending = Some(PidSet::new(vec![1]));
        state.pending = Some(PidSet::new(vec![2]));
        assert_eq!(
            shape(state.next_step(t0, interval)),
            (Some((vec![2], 0)), None)
        );
        state.last_sent = Some(t0);
        state.pending = Some(PidSet::new(vec![3]));
        state.pending = Some(PidSet::new(vec![4]));
        assert_eq!(
            shape(state.next_step(t0, interval)),
            (None, Some(t0 + interval))
        );
        assert_eq!(
            shape(state.next_step(t0 + interval, interval)),
            (Some((vec![4], 0)), None)
        );
        assert_eq!(
            shape(state.next_step(t0 + interval, interval)),
            (None, None)
        );
    }

    #[test]
    fn waiters_skip_the_interval_and_take_the_pending_request_along() {
        let interval = Duration::from_secs(1);
        let mut state = State::new();
        let t0 = Instant::now();
        state.last_sent = Some(t0);
        state.pending = Some(PidSet::new(vec![7]));
        let (reply, _answer) = oneshot::channel();
        state.waiters.push(Waiter {
            pids: PidSet::new(vec![3]),
            reply,
        });
        assert_eq!(
            shape(state.next_step(t0, interval)),
            (Some((vec![3, 7], 1)), None)
        );
        assert!(state.pending.is_none());
        assert!(state.waiters.is_empty());
    }

    #[test]
    fn a_failure_is_handed_out_once_per_run_and_backs_off() {
        let options = options(Duration::from_millis(500));
        let mut state = State::new();
        let asked = PidSet::new(vec![1]);
        let failed = |text: &str| {
            Arc::new(ServerReport::failed(
                vec![1],
                false,
                Instant::now(),
                text.to_owned(),
            ))
        };
        state.record(failed("down"), &options);
        state.record(failed("still down"), &options);
        assert_eq!(state.unreported_failure.take().as_deref(), Some("down"));
        assert_eq!(state.unreported_failure.take(), None);
        assert_eq!(state.failures_in_row, 2);
        assert!(state.retry_not_before.is_some());

        // While backing off, a waiter gets the latest failure at once.
        let (reply, mut answer) = oneshot::channel();
        state.waiters.push(Waiter {
            pids: asked.clone(),
            reply,
        });
        state.pending = Some(asked.clone());
        let now = Instant::now();
        let Step::AnswerFromLatest { waiters, latest } = state.next_step(now, options.min_interval)
        else {
            panic!("answered from the latest failure");
        };
        super::answer(waiters, latest.as_deref());
        let report = answer.try_recv().expect("answered at once");
        assert_eq!(report.error.as_deref(), Some("still down"));
        // The request waits for the end of the backoff.
        assert!(matches!(
            state.next_step(now, options.min_interval),
            Step::SleepUntil(_)
        ));

        let ok = ServerReport::answered(vec![1], false, Instant::now(), vec![backend(1, &[])]);
        state.record(Arc::new(ok), &options);
        assert_eq!(state.failures_in_row, 0);
        assert!(state.retry_not_before.is_none());
        state.record(failed("down again"), &options);
        assert_eq!(
            state.unreported_failure.take().as_deref(),
            Some("down again")
        );
    }

    #[test]
    fn backoff_doubles_from_the_interval_up_to_the_cap() {
        let options = options(Duration::from_millis(500));
        assert_eq!(backoff(1, &options), Duration::from_millis(500));
        assert_eq!(backoff(2, &options), Duration::from_secs(1));
        assert_eq!(backoff(5, &options), Duration::from_secs(8));
        assert_eq!(backoff(u32::MAX, &options), Duration::from_secs(8));
        let zero = ServerViewOptions {
            min_interval: Duration::ZERO,
            max_backoff: Duration::ZERO,
            ..ServerViewOptions::default()
        };
        assert_eq!(backoff(1, &zero), MIN_BACKOFF);
    }

    #[test]
    fn waiters_who_ask_while_a_query_is_in_flight_wait_for_the_next() {
        let options = options(Duration::from_secs(1));
        let mut state = State::new();
        let t0 = Instant::now();
        let (early, mut early_answer) = oneshot::channel();
        state.waiters.push(Waiter {
            pids: PidSet::new(vec![1]),
            reply: early,
        });
        let Step::Ask { waiters, .. } = state.next_step(t0, options.min_interval) else {
            panic!("the waiter is asked for at once");
        };
        let (late, mut late_answer) = oneshot::channel();
        state.waiters.push(Waiter {
            pids: PidSet::new(vec![1, 2]),
            reply: late,
        });
        let report = ServerReport::answered(vec![1], false, Instant::now(), vec![backend(1, &[])]);
        state.record(Arc::new(report.clone()), &options);
        answer(waiters, Some(&report));
        assert_eq!(early_answer.try_recv().expect("answered").asked, [1]);
        assert!(late_answer.try_recv().is_err());
        assert_eq!(
            shape(state.next_step(t0, options.min_interval)),
            (Some((vec![1, 2], 1)), None)
        );
    }

    #[test]
    fn a_callers_part_follows_its_blockers_down_the_chain() {
        let mut blocker = backend(30, &[]);
        blocker.asked = false;
        blocker.visible = false;
        let report = ServerReport::answered(
            vec![10, 20, 40, 50],
            false,
            Instant::now(),
            vec![
                backend(10, &[20]),
                backend(20, &[30]),
                backend(40, &[]),
                blocker,
            ],
        );
        assert_eq!(report.missing, [50]);
        assert_eq!(report.not_visible, [30]);
        let part = report.about(&PidSet::new(vec![10, 50]));
        let pids: Vec<i32> = part.backends.iter().map(|b| b.pid).collect();
        assert_eq!(pids, [10, 20, 30]);
        assert_eq!(part.asked, [10, 50]);
        assert_eq!(part.missing, [50]);
        assert_eq!(part.not_visible, [30]);
        assert!(!part.backend(20).expect("in the chain").asked);
        assert_eq!(report.blocking_roots(10), [30]);
        assert_eq!(report.blocking_roots(40), Vec::<i32>::new());
    }

    #[test]
    fn blocking_roots_survive_cycles_and_unknown_pids() {
        let report = ServerReport::answered(
            vec![1, 2, 3],
            false,
            Instant::now(),
            vec![backend(1, &[2]), backend(2, &[1]), backend(3, &[0, 99])],
        );
        assert_eq!(report.blocking_roots(1), Vec::<i32>::new());
        // A prepared transaction (0) and a backend not in the report.
        assert_eq!(report.blocking_roots(3), [0, 99]);
    }

    #[test]
    fn ages_and_errors_are_bounded() {
        assert_eq!(age(-0.5), Duration::ZERO);
        assert_eq!(age(f64::NAN), Duration::ZERO);
        assert_eq!(age(f64::INFINITY), Duration::ZERO);
        assert_eq!(age(1.5), Duration::from_millis(1500));
        let long = bounded_error("é".repeat(MAX_ERROR_BYTES));
        assert!(long.len() <= MAX_ERROR_BYTES + '…'.len_utf8());
        assert!(long.ends_with('…'));
    }
}
