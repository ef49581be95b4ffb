//! The server view (`src/postgres/server_view.rs`) against a real
//! PostgreSQL: lock chains, long statements, an exhausted pool, a role
//! without `pg_read_all_stats`, a stopped server, the rate limit, and the
//! background thread's life.
//!
//! The module is crate-private and self-contained (std, tokio,
//! tokio-postgres, deadpool-postgres, parking_lot, humantime), so it is
//! compiled into this test directly, like the harness.
#![cfg(feature = "postgres")]

#[path = "support/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../src/postgres/server_view.rs"]
mod server_view;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    ConfigConnectImpl, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use server_view::{
    server_thread_running, BackendState, ServerReport, ServerView, ServerViewOptions,
    APPLICATION_NAME,
};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio_postgres::NoTls;

/// Generous: the machine is shared and loaded.
const PATIENCE: Duration = Duration::from_secs(60);

/// Every test holds this for reading; the thread-lifecycle test, which
/// needs no other view alive, for writing. (tokio's: held across awaits,
/// and released by a test that panics.)
static VIEWS: RwLock<()> = RwLock::const_new(());

async fn shared_views() -> RwLockReadGuard<'static, ()> {
    VIEWS.read().await
}

/// For the tests without a runtime.
fn shared_views_blocking() -> RwLockReadGuard<'static, ()> {
    VIEWS.blocking_read()
}

fn only_views() -> RwLockWriteGuard<'static, ()> {
    VIEWS.blocking_write()
}

/// Quick to retry, slow to time out.
fn options() -> ServerViewOptions {
    ServerViewOptions {
        min_interval: Duration::from_millis(50),
        statement_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(20),
        max_backoff: Duration::from_millis(300),
    }
}

fn view_with(config: tokio_postgres::Config, options: ServerViewOptions) -> ServerView {
    ServerView::new(config, Arc::new(ConfigConnectImpl { tls: NoTls }), options)
}

fn shared_config() -> tokio_postgres::Config {
    pg::pg_config().unwrap_or_else(|e| panic!("no test database: {e}"))
}

/// A plain connection (not pooled), its task on the caller's runtime.
async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn pid_of(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

fn pool_for(config: tokio_postgres::Config, max_size: usize) -> Pool {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("pool")
}

/// Asks until `done` holds for an answer without error; panics with the
/// last answer after [`PATIENCE`].
async fn until(
    view: &ServerView,
    pids: &[i32],
    done: impl Fn(&ServerReport) -> bool,
) -> ServerReport {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(report) = view.query(pids.to_vec(), Duration::from_secs(30)).await {
            if report.error.is_none() && done(&report) {
                return report;
            }
            last = Some(report);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server view never showed what was expected; last answer: {last:#?}");
}

/// Polls `check` until it holds, without awaiting (the caller's runtime
/// may be blocked on purpose).
fn wait_blocking(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-row table of the test's own in the shared cluster.
async fn one_row_table(client: &tokio_postgres::Client, name: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, v int); \
             INSERT INTO {name} VALUES (1, 0);"
        ))
        .await
        .expect("create table");
}

/// A holder idle in transaction with a row lock, two waiters on that row:
/// the holder is `idle in transaction` with a transaction age, the waiters
/// are `active` waiting on a `Lock`. PostgreSQL queues the second waiter
/// behind the first (it waits on the tuple lock the first one took), so
/// its direct blocker is the first waiter and the head of its chain the
/// holder. Asked about the waiters only, the report still includes the
/// holder, as their blocker.
#[tokio::test]
async fn a_lock_chain_names_the_holder_idle_in_transaction() {
    let _views = shared_views().await;
    let config = shared_config();
    let holder = connect(&config).await;
    let first = connect(&config).await;
    let second = connect(&config).await;
    let (holder_pid, first_pid, second_pid) = (
        pid_of(&holder).await,
        pid_of(&first).await,
        pid_of(&second).await,
    );
    one_row_table(&holder, "server_view_lock_chain").await;
    holder
        .batch_execute("BEGIN; UPDATE server_view_lock_chain SET v = v + 1 WHERE id = 1")
        .await
        .expect("holder takes the row lock");

    let view = view_with(config.clone(), options());
    let update = "UPDATE server_view_lock_chain SET v = v + 1 WHERE id = 1";
    let first_task = tokio::spawn(async move { first.execute(update, &[]).await });
    let waiting =
        |pid: i32| move |r: &ServerReport| r.backend(pid).is_some_and(|b| b.is_waiting_on_lock());
    until(&view, &[first_pid], waiting(first_pid)).await;
    let second_task = tokio::spawn(async move { second.execute(update, &[]).await });
    let all = [holder_pid, first_pid, second_pid];
    let report = until(&view, &all, waiting(second_pid)).await;

    assert!(
        report.missing.is_empty() && report.not_visible.is_empty(),
        "{report:#?}"
    );
    let held = report.backend(holder_pid).expect("holder");
    assert_eq!(held.state, BackendState::IdleInTransaction, "{held:#?}");
    assert!(held.is_idle_in_transaction());
    assert!(
        held.transaction_age.is_some() && held.state_age.is_some(),
        "{held:#?}"
    );
    assert!(held.has_transaction_id, "it wrote: {held:#?}");
    assert!(
        !held.is_blocked() && !held.is_waiting_on_lock(),
        "{held:#?}"
    );
    assert!(held
        .query
        .as_deref()
        .unwrap_or("")
        .contains("UPDATE server_view_lock_chain"));

    for (pid, blocker) in [(first_pid, holder_pid), (second_pid, first_pid)] {
        let waiter = report.backend(pid).expect("waiter");
        assert_eq!(waiter.state, BackendState::Active, "{waiter:#?}");
        assert_eq!(
            waiter.wait_event_type.as_deref(),
            Some("Lock"),
            "{waiter:#?}"
        );
        assert!(
            waiter.wait_event.is_some() && waiter.query_age.is_some(),
            "{waiter:#?}"
        );
        assert_eq!(waiter.blocked_by, [blocker], "{waiter:#?}");
        assert_eq!(report.blocking_roots(pid), [holder_pid]);
        assert!(waiter.visible && waiter.asked);
    }
    assert_eq!(
        report.backend(first_pid).unwrap().wait_event.as_deref(),
        Some("transactionid")
    );

    // The holder outside the set asked about: still there, as a blocker.
    let waiters_only = view
        .query(vec![first_pid, second_pid], Duration::from_secs(30))
        .await
        .expect("an answer");
    let blocker = waiters_only
        .backend(holder_pid)
        .expect("the blocker is included");
    assert!(!blocker.asked);
    assert_eq!(blocker.state, BackendState::IdleInTransaction);
    let mut waiter_pids = vec![first_pid, second_pid];
    waiter_pids.sort_unstable();
    assert_eq!(waiters_only.asked, waiter_pids);

    holder.batch_execute("ROLLBACK").await.expect("rollback");
    first_task.await.expect("first task").expect("first update");
    second_task
        .await
        .expect("second task")
        .expect("second update");
    holder
        .batch_execute("DROP TABLE server_view_lock_chain")
        .await
        .expect("drop table");
    assert!(view.take_first_failure().is_none());
}

/// A long `pg_sleep` is `active` (not idle) with a statement age, waiting
/// on a timeout rather than a lock; a pid that is no backend is missing.
#[tokio::test]
async fn a_long_statement_is_active_with_its_age() {
    let _views = shared_views().await;
    let config = shared_config();
    let sleeper = connect(&config).await;
    let pid = pid_of(&sleeper).await;
    let cancel = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move { sleeper.execute("SELECT pg_sleep(60)", &[]).await });

    let view = view_with(config, options());
    let no_backend = i32::MAX;
    let report = until(&view, &[pid, no_backend], |r| {
        r.backend(pid)
            .is_some_and(|b| b.query.as_deref().unwrap_or("").contains("pg_sleep"))
    })
    .await;
    let backend = report.backend(pid).expect("sleeper");
    assert_eq!(backend.state, BackendState::Active, "{backend:#?}");
    assert!(
        backend.query_age.is_some() && backend.transaction_age.is_some(),
        "{backend:#?}"
    );
    assert!(
        !backend.is_waiting_on_lock() && !backend.is_blocked(),
        "{backend:#?}"
    );
    assert_eq!(
        backend.wait_event_type.as_deref(),
        Some("Timeout"),
        "{backend:#?}"
    );
    assert_eq!(backend.backend_type.as_deref(), Some("client backend"));
    assert_eq!(report.missing, [no_backend]);
    assert_eq!(report.asked, [pid, no_backend]);

    cancel.cancel_query(NoTls).await.expect("cancel");
    let cancelled = sleeping.await.expect("task");
    assert!(cancelled.is_err(), "pg_sleep(60) was cancelled");
}

/// With a 2-connection pool fully checked out and a caller waiting, and
/// the application's runtime blocked (this test's only thread sleeps
/// instead of awaiting), the view still answers: its connection is its
/// own and its work runs on its own thread. The pool's connections show
/// up as idle (checked out, doing nothing), and the side connection is a
/// separate backend named `APPLICATION_NAME`.
#[tokio::test(flavor = "current_thread")]
async fn answers_while_the_pool_is_exhausted_and_the_runtime_is_blocked() {
    let _views = shared_views().await;
    let config = shared_config();
    let pool = pool_for(config.clone(), 2);
    let one = pool.get().await.expect("first connection");
    let two = pool.get().await.expect("second connection");
    let pids = vec![pid_of(&one).await, pid_of(&two).await];
    let waiting_pool = pool.clone();
    let waiter = tokio::spawn(async move { waiting_pool.get().await.map(drop) });
    let deadline = Instant::now() + PATIENCE;
    while pool.status().waiting == 0 {
        assert!(Instant::now() < deadline, "the third caller never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let view = view_with(config, options());
    view.request(pids.clone());
    // From here until the answer, this runtime runs nothing.
    wait_blocking("an answer while the runtime is blocked", || {
        view.latest().is_some_and(|r| r.backends.len() == 2)
    });
    let report = view.latest().expect("an answer");
    assert!(report.error.is_none(), "{report:#?}");
    for pid in &pids {
        let backend = report.backend(*pid).expect("pool connection");
        assert_eq!(backend.state, BackendState::Idle, "{backend:#?}");
        assert!(backend.visible && backend.transaction_age.is_none());
    }
    assert_eq!(pool.status().waiting, 1, "the caller still waits");

    // The async form too, while the pool stays exhausted.
    let asked = view
        .query(pids.clone(), Duration::from_secs(30))
        .await
        .expect("an answer");
    assert!(
        asked.error.is_none() && asked.backends.len() == 2,
        "{asked:#?}"
    );

    let side: Vec<(i32, String)> = one
        .query(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = $1",
            &[&APPLICATION_NAME],
        )
        .await
        .expect("side connections")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        !side.is_empty(),
        "the side connection is named {APPLICATION_NAME:?}"
    );
    assert!(
        side.iter().all(|(pid, _)| !pids.contains(pid)),
        "outside the pool: {side:?}"
    );
    assert!(
        side.iter().any(|(_, q)| q.starts_with("WITH asked AS")),
        "{side:?}"
    );

    waiter.abort();
    drop((one, two));
}

/// A role without `pg_read_all_stats` sees its own backends fully; a
/// superuser's backend, asked about or blocking one of its own, is there
/// but `visible: false` and listed in `not_visible`. The server logs no
/// error for any of it.
#[tokio::test]
async fn a_role_without_read_all_stats_sees_its_own_backends_only() {
    let _views = shared_views().await;
    let cluster = pg::private_cluster().unwrap_or_else(|e| panic!("no private cluster: {e}"));
    let superuser = connect(&cluster.config()).await;
    let superuser_pid = pid_of(&superuser).await;
    let idle_superuser = connect(&cluster.config()).await;
    let idle_superuser_pid = pid_of(&idle_superuser).await;
    superuser
        .batch_execute(
            "CREATE ROLE poolwatch_app LOGIN; \
             CREATE TABLE accounts (id int PRIMARY KEY, v int); \
             INSERT INTO accounts VALUES (1, 0); \
             GRANT SELECT, UPDATE ON accounts TO poolwatch_app;",
        )
        .await
        .expect("set up the role");
    let mut app_config = cluster.config();
    app_config.user("poolwatch_app");

    let pool = pool_for(app_config.clone(), 2);
    let blocked = pool.get().await.expect("app connection");
    let idle = pool.get().await.expect("app connection");
    let (blocked_pid, idle_pid) = (pid_of(&blocked).await, pid_of(&idle).await);
    let view = view_with(app_config, options());

    superuser
        .batch_execute("BEGIN; UPDATE accounts SET v = v + 1 WHERE id = 1")
        .await
        .expect("superuser takes the row lock");
    let update = tokio::spawn(async move {
        blocked
            .execute("UPDATE accounts SET v = v + 1 WHERE id = 1", &[])
            .await
    });
    let asked = [blocked_pid, idle_pid, idle_superuser_pid];
    let report = until(&view, &asked, |r| {
        r.backend(blocked_pid)
            .is_some_and(|b| b.is_waiting_on_lock())
    })
    .await;

    let own = report.backend(blocked_pid).expect("own backend");
    assert!(own.visible, "{own:#?}");
    assert_eq!(own.state, BackendState::Active);
    assert_eq!(own.role.as_deref(), Some("poolwatch_app"));
    assert!(own
        .query
        .as_deref()
        .unwrap_or("")
        .contains("UPDATE accounts"));
    assert!(own.transaction_age.is_some() && own.query_age.is_some());
    assert_eq!(own.blocked_by, [superuser_pid], "{own:#?}");
    let own_idle = report.backend(idle_pid).expect("own idle backend");
    assert!(
        own_idle.visible && own_idle.state == BackendState::Idle,
        "{own_idle:#?}"
    );

    for pid in [superuser_pid, idle_superuser_pid] {
        let other = report
            .backend(pid)
            .expect("the superuser's backend is listed");
        assert!(!other.visible, "{other:#?}");
        assert_eq!(other.state, BackendState::Unknown);
        assert!(other.query.is_none() && other.wait_event_type.is_none());
        assert!(other.transaction_age.is_none() && other.query_age.is_none());
        assert_eq!(other.role.as_deref(), Some("postgres"));
    }
    assert!(!report.backend(superuser_pid).unwrap().asked);
    let mut not_visible = report.not_visible.clone();
    not_visible.sort_unstable();
    let mut expected = vec![superuser_pid, idle_superuser_pid];
    expected.sort_unstable();
    assert_eq!(not_visible, expected);
    assert!(report.missing.is_empty());

    superuser.batch_execute("ROLLBACK").await.expect("rollback");
    update
        .await
        .expect("task")
        .expect("update after the lock is gone");
    assert!(view.take_first_failure().is_none());
    drop(view);

    let log = std::fs::read_to_string(cluster.dir().join("server.log")).expect("server log");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "the server logged errors: {errors:#?}");
}

/// A stopped server: the answer carries the error, `take_first_failure`
/// hands it out once however often the view fails, nothing panics; after
/// the server starts again the view answers again, and a new failure is
/// handed out anew.
#[tokio::test]
async fn a_stopped_server_is_one_failure_then_the_view_recovers() {
    let _views = shared_views().await;
    let cluster = pg::private_cluster().unwrap_or_else(|e| panic!("no private cluster: {e}"));
    // The cluster trusts local connections and ignores the password; it
    // is there to show that no failure text or debug output repeats it.
    let password = "not-in-any-message-4f1d";
    let mut config = cluster.config();
    config.password(password);
    let view = view_with(config, options());
    assert!(!format!("{view:?}").contains(password));
    // pid 1 is never a backend: a real question whose answer is "missing".
    let answered = |r: &ServerReport| r.missing == [1];
    until(&view, &[1], answered).await;
    assert!(view.take_first_failure().is_none());

    cluster.stop().expect("stop");
    let failed = failing(&view).await;
    let first = view.take_first_failure().expect("the failure, once");
    assert_eq!(Some(&first), failed.error.as_ref());
    assert!(first.contains("connect"), "{first}");
    assert!(!first.contains(password), "{first}");
    failing(&view).await;
    failing(&view).await;
    assert!(view.take_first_failure().is_none(), "handed out once");

    cluster.start().expect("start");
    until(&view, &[1], answered).await;
    assert!(view.take_first_failure().is_none());

    cluster.stop().expect("stop again");
    failing(&view).await;
    assert!(view.take_first_failure().is_some(), "a new run of failures");
    cluster.start().expect("start again");
    until(&view, &[1], answered).await;
}

/// Asks until the answer is an error (the first one after a stop may
/// still come from before it).
async fn failing(view: &ServerView) -> ServerReport {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(report) = view.query(vec![1], Duration::from_secs(30)).await {
            if report.error.is_some() {
                assert!(report.backends.is_empty());
                return report;
            }
        }
        assert!(Instant::now() < deadline, "the view never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Many requests within the minimum interval make one query, and the
/// newest pid set is the one asked; `query` asks at once regardless.
#[tokio::test]
async fn requests_within_the_interval_coalesce_into_one_query() {
    let _views = shared_views().await;
    let config = shared_config();
    let client = connect(&config).await;
    let pid = pid_of(&client).await;
    let view = view_with(
        config,
        ServerViewOptions {
            min_interval: Duration::from_secs(3),
            ..options()
        },
    );
    view.request(vec![pid]);
    wait_blocking("the first answer", || view.latest().is_some());
    assert_eq!(view.queries_sent(), 1);

    let newest = 1_000_099;
    for extra in 1_000_000..=newest {
        view.request(vec![pid, extra]);
    }
    assert_eq!(
        view.queries_sent(),
        1,
        "within the interval, nothing is sent"
    );
    wait_blocking("the coalesced answer", || {
        view.latest().is_some_and(|r| r.asked == [pid, newest])
    });
    let report = view.latest().expect("answer");
    assert!(report.error.is_none(), "{report:#?}");
    assert_eq!(report.missing, [newest]);
    assert_eq!(view.queries_sent(), 2, "a hundred requests, one query");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(view.queries_sent(), 2, "nothing left pending");

    let asked_at = Instant::now();
    let now = view
        .query(vec![pid], Duration::from_secs(30))
        .await
        .expect("answer");
    assert!(now.taken_at >= asked_at, "a fresh answer, not the latest");
    assert_eq!(view.queries_sent(), 3);
    assert!(view.take_first_failure().is_none());
}

/// `query` needs no tokio runtime in the caller: awaited on a plain
/// thread with a hand-made executor, it answers; with a zero wait it gives
/// up at once instead of hanging.
#[test]
fn query_works_from_a_thread_without_a_runtime() {
    let _views = shared_views_blocking();
    let view = view_with(shared_config(), options());
    let report = block_on(view.query(vec![1], Duration::from_secs(30))).expect("an answer");
    assert!(report.error.is_none(), "{report:#?}");
    assert_eq!(report.missing, [1]);
    let started = Instant::now();
    let _ = block_on(view.query(vec![1], Duration::ZERO));
    assert!(started.elapsed() < PATIENCE);
}

/// The background thread runs while a view exists and exits after the
/// last one is dropped; a new view starts it again.
#[test]
fn the_server_thread_lives_as_long_as_a_view() {
    let _only = only_views();
    wait_blocking("earlier views' thread to exit", || !thread_listed());
    assert!(!server_thread_running());

    let view = view_with(shared_config(), options());
    assert!(server_thread_running());
    // The new thread names itself once it runs.
    wait_blocking("the thread to start", thread_listed);
    let again = view_with(shared_config(), options());
    let answer = block_on(again.query(vec![1], Duration::from_secs(30))).expect("an answer");
    assert!(answer.error.is_none(), "{answer:#?}");
    drop(view);
    assert!(server_thread_running(), "one view is left");
    drop(again);
    assert!(!server_thread_running());
    wait_blocking("the thread to exit", || !thread_listed());

    let revived = view_with(shared_config(), options());
    wait_blocking("the thread to start again", thread_listed);
    let answer = block_on(revived.query(vec![1], Duration::from_secs(30))).expect("an answer");
    assert!(answer.error.is_none(), "{answer:#?}");
}

/// Whether a thread of this process is named like the server thread (the
/// OS keeps 15 bytes of the name).
fn thread_listed() -> bool {
    let wanted = &server_view::THREAD_NAME[..15];
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .any(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == wanted)
        })
}

/// A minimal executor: polls on this thread, parks between wake-ups.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// The side connection's `statement_timeout` is in force: with the
/// activity view locked by another session, the query is cancelled by the
/// server after the timeout, the answer is that error, and once the lock
/// is gone the same view answers again.
#[tokio::test]
async fn a_query_stuck_on_a_lock_is_cancelled_by_the_statement_timeout() {
    let _views = shared_views().await;
    let cluster = pg::private_cluster().unwrap_or_else(|e| panic!("no private cluster: {e}"));
    let view = view_with(
        cluster.config(),
        ServerViewOptions {
            statement_timeout: Duration::from_millis(300),
            ..options()
        },
    );
    let answered = |r: &ServerReport| r.missing == [1];
    until(&view, &[1], answered).await;

    let locker = connect(&cluster.config()).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_stat_activity IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the activity view");
    let failed = failing(&view).await;
    let error = failed.error.expect("an error");
    assert!(
        error.contains("57014"),
        "cancelled by statement_timeout: {error}"
    );
    assert_eq!(view.take_first_failure().as_ref(), Some(&error));

    locker.batch_execute("ROLLBACK").await.expect("unlock");
    until(&view, &[1], answered).await;
}
