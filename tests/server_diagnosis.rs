//! The server's view in the diagnosis, on a real PostgreSQL: a lock chain
//! diagnosed with its culprit first and the blocked named as blocked by
//! it; a long statement shown as running; an exhausted pool still
//! described; a blocker outside the pool; a role without
//! `pg_read_all_stats`; the events that list holders carrying the server's
//! state; the setting that turns it off. Written as service code: a
//! checkout handler whose transaction spans a payment call, and the
//! handlers that update the same row.
#![cfg(feature = "postgres")]
mod support;

use std::time::{Duration, Instant};

use deadpool_postgres::{ManagerConfig, RecyclingMethod, Runtime};
use poolwatch::postgres::Pool;
use poolwatch::report::Report;
use poolwatch::{VerdictKind, WatchConfig};
use support::capture::{Capture, Captured};
use support::pg;
use tokio_postgres::NoTls;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn capture() -> &'static Capture {
    support::capture::global()
}

use support::capture::events_of;

fn watch(name: &str) -> poolwatch::WatchConfigBuilder {
    capture();
    WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(ms(400))
        .slow_acquire(ms(200))
        .timeline_tick(Some(ms(50)))
}

fn pool_on(pg_config: tokio_postgres::Config, max_size: usize, watch: WatchConfig) -> Pool {
    Pool::builder(
        pg_config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    )
    .max_size(max_size)
    .runtime(Runtime::Tokio1)
    .watch(watch)
    .build()
    .expect("an observed pool")
}

fn shared_config() -> tokio_postgres::Config {
    pg::pg_config().unwrap_or_else(|e| panic!("no test database: {e}"))
}

async fn direct(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.expect("a direct connection");
    tokio::spawn(connection);
    client
}

/// Polls `diagnose` until `done` holds (the machine is shared: generous).
async fn diagnosed(pool: &Pool, done: impl Fn(&Report) -> bool) -> Report {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let report = pool.diagnose().await;
        if done(&report) {
            return report;
        }
        assert!(
            Instant::now() < until,
            "never diagnosed as expected:\n{report}"
        );
        tokio::time::sleep(ms(50)).await;
    }
}

fn site(line: u32) -> String {
    format!("{}:{line}:", file!())
}

async fn create_accounts(client: &tokio_postgres::Client, table: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id int PRIMARY KEY, balance int NOT NULL); \
             INSERT INTO {table} VALUES (1, 100), (2, 100);"
        ))
        .await
        .expect("the accounts table");
}

/// The checkout handler: debits the account in a transaction, then calls
/// the payment provider before committing. Returns the checkout's line.
async fn checkout_with_payment(pool: Pool, table: &'static str, payment: Duration) -> u32 {
    let (mut client, line) = (pool.get().await.unwrap(), line!());
    let tx = client.transaction().await.unwrap();
    tx.execute(
        &format!("UPDATE {table} SET balance = balance - 1 WHERE id = 1"),
        &[],
    )
    .await
    .unwrap();
    tokio::time::sleep(payment).await; // the payment provider's API
    tx.commit().await.unwrap();
    line
}

/// The balance handler: a plain update of the same row.
async fn credit(pool: Pool, table: &'static str) -> u32 {
    let (client, line) = (pool.get().await.unwrap(), line!());
    client
        .execute(
            &format!("UPDATE {table} SET balance = balance + 1 WHERE id = 1"),
            &[],
        )
        .await
        .unwrap();
    line
}

/// One transaction sits idle holding a row lock; three checkouts block on
/// the row, two more callers wait for a connection. The culprit comes
/// first, the blocked are affected and named as blocked by it, never as a
/// cause; the holders show the server's states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_chain_names_the_idle_transaction_first_and_its_victims_as_blocked() {
    let admin = direct(&shared_config()).await;
    create_accounts(&admin, "lock_chain_accounts").await;
    let pool = pool_on(shared_config(), 4, watch("lock-chain").build().unwrap());

    let culprit = tokio::spawn(checkout_with_payment(
        pool.clone(),
        "lock_chain_accounts",
        Duration::from_secs(4),
    ));
    tokio::time::sleep(ms(200)).await;
    let victims: Vec<_> = (0..3)
        .map(|_| tokio::spawn(credit(pool.clone(), "lock_chain_accounts")))
        .collect();
    let waiters: Vec<_> = (0..2)
        .map(|_| tokio::spawn(credit(pool.clone(), "lock_chain_accounts")))
        .collect();

    let report = diagnosed(&pool, |r| {
        r.holders
            .iter()
            .filter(|h| h.server.as_ref().is_some_and(|s| s.waiting_on_lock))
            .count()
            == 3
    })
    .await;
    let text = report.to_string();
    let verdict = &report.verdicts[0];
    assert_eq!(verdict.kind, VerdictKind::LongHold, "{text}");
    assert!(
        verdict.reason.contains("blocked in the database by guard"),
        "{text}"
    );
    let culprit_guard = report
        .holders
        .iter()
        .find(|h| {
            h.server
                .as_ref()
                .is_some_and(|s| s.state == "idle in transaction")
        })
        .expect("the culprit's backend is idle in transaction");
    assert!(
        verdict.evidence[0]
            .detail
            .contains(&format!("guard {}", culprit_guard.guard)),
        "{text}"
    );
    // The blocked are affected, blocked by the culprit's guard.
    let blocked: Vec<_> = report
        .holders
        .iter()
        .filter(|h| h.server.as_ref().is_some_and(|s| s.waiting_on_lock))
        .collect();
    for holder in &blocked {
        let server = holder.server.as_ref().unwrap();
        assert_eq!(server.blocked_by_guards, [culprit_guard.guard], "{text}");
        assert_eq!(server.state, "active");
        assert!(server.doing.starts_with("waiting on a lock"), "{text}");
    }
    let victim_site = &blocked[0].site;
    assert!(
        verdict.affected.iter().any(|e| &e.subject == victim_site
            && e.detail.contains(&format!(
                "blocked in the database by guard {}",
                culprit_guard.guard
            ))),
        "{text}"
    );
    // A victim is never a cause, in any verdict.
    for v in &report.verdicts {
        for e in &v.evidence {
            assert_ne!(&e.subject, victim_site, "victim named as a cause:\n{text}");
        }
    }
    assert!(
        text.contains("what the database server says of the holders"),
        "{text}"
    );

    // The stuck-waiter event lists who blocks the holders.
    let stuck = eventually_event("lock-chain", "waiting for a connection").await;
    assert!(
        stuck
            .field("blocking")
            .contains(&format!("guard {}", culprit_guard.guard)),
        "{stuck:?}"
    );

    // The culprit's site is the checkout handler's line, first.
    let culprit_line = culprit.await.unwrap();
    assert!(
        verdict.evidence[0].subject.starts_with(&site(culprit_line)),
        "{text}"
    );
    assert_eq!(culprit_guard.site, verdict.evidence[0].subject);
    let mut victim_lines = Vec::new();
    for task in victims.into_iter().chain(waiters) {
        victim_lines.push(task.await.unwrap());
    }
    assert!(victim_site.starts_with(&site(victim_lines[0])), "{text}");
}

async fn eventually_event(pool: &str, needle: &str) -> Captured {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(event) = events_of(pool, needle)
            .into_iter()
            .find(|e| !e.field("blocking").is_empty())
        {
            return event;
        }
        assert!(
            Instant::now() < until,
            "no {needle:?} event with `blocking`: {:#?}",
            events_of(pool, "")
        );
        tokio::time::sleep(ms(50)).await;
    }
}

/// A long statement is running, not idle, and the pool exhausted by it
/// still gets an answer (the server view has a connection of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_of_long_statements_is_shown_running() {
    let pool = pool_on(shared_config(), 2, watch("long-statement").build().unwrap());
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let client = pool.get().await.unwrap();
                client.execute("SELECT pg_sleep(3)", &[]).await.unwrap();
            })
        })
        .collect();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    let report = diagnosed(&pool, |r| {
        r.holders.len() == 2 && r.holders.iter().all(|h| h.server.is_some())
    })
    .await;
    for holder in &report.holders {
        let server = holder.server.as_ref().unwrap();
        assert_eq!(server.state, "active", "{report}");
        assert!(server.doing.starts_with("running a statement"), "{report}");
        assert!(!server.waiting_on_lock);
        assert!(server.blocked_by_guards.is_empty());
    }
    let section = report.server.as_ref().expect("the server answered");
    assert!(section.error.is_none(), "{report}");
    assert!(
        !report.verdicts[0]
            .reason
            .contains("blocked in the database"),
        "{report}"
    );
    for task in sleepers {
        task.await.unwrap();
    }
    waiter.await.unwrap();
}

/// A migration outside the pool holds the lock: it is the culprit,
/// described by its application name, and the pool's holders are affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocker_outside_the_pool_is_named_with_its_application() {
    let admin = direct(&shared_config()).await;
    create_accounts(&admin, "outside_accounts").await;
    let mut migration_config = shared_config();
    migration_config.application_name("nightly-migration");
    let migration = direct(&migration_config).await;
    migration
        .batch_execute("BEGIN; LOCK TABLE outside_accounts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let pool = pool_on(shared_config(), 2, watch("outside").build().unwrap());
    let blocked: Vec<_> = (0..2)
        .map(|_| tokio::spawn(credit(pool.clone(), "outside_accounts")))
        .collect();
    let report = diagnosed(&pool, |r| {
        r.verdicts[0]
            .reason
            .contains("blocked in the database by backend")
    })
    .await;
    let verdict = &report.verdicts[0];
    assert!(
        verdict.evidence[0].subject.contains("(nightly-migration)"),
        "{report}"
    );
    assert!(
        verdict.evidence[0].subject.contains("outside the pool"),
        "{report}"
    );
    let section = report.server.as_ref().unwrap();
    assert_eq!(section.outside.len(), 1, "{report}");
    assert_eq!(section.outside[0].blocks_guards.len(), 2, "{report}");
    assert!(
        section.outside[0].doing.contains("idle in transaction"),
        "{report}"
    );
    for holder in &report.holders {
        assert!(
            verdict.affected.iter().any(|e| e.subject == holder.site),
            "{report}"
        );
    }
    migration.batch_execute("COMMIT").await.unwrap();
    for task in blocked {
        task.await.unwrap();
    }
}

/// An application role without `pg_read_all_stats`: its own backends are
/// described, the superuser's blocking one is there but not visible, the
/// report says so, and the server logs no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_read_all_stats_sees_its_own_backends() {
    let cluster = pg::private_cluster().unwrap_or_else(|e| panic!("no private cluster: {e}"));
    let superuser = direct(&cluster.config()).await;
    superuser
        .batch_execute(
            "CREATE ROLE app LOGIN; \
             CREATE TABLE accounts (id int PRIMARY KEY, balance int); \
             INSERT INTO accounts VALUES (1, 0); \
             GRANT SELECT, UPDATE ON accounts TO app;",
        )
        .await
        .unwrap();
    let mut app = cluster.config();
    app.user("app");
    let pool = pool_on(app, 2, watch("unprivileged").build().unwrap());
    superuser
        .batch_execute("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    let blocked = tokio::spawn(credit(pool.clone(), "accounts"));
    let report = diagnosed(&pool, |r| {
        r.holders
            .iter()
            .any(|h| h.server.as_ref().is_some_and(|s| s.waiting_on_lock))
    })
    .await;
    let holder = &report.holders[0];
    let server = holder.server.as_ref().unwrap();
    assert_eq!(server.blocked_by_guards, Vec::<u64>::new());
    assert_eq!(server.blocked_by_outside.len(), 1, "{report}");
    let section = report.server.as_ref().unwrap();
    assert_eq!(section.not_visible, server.blocked_by_outside, "{report}");
    assert!(report
        .to_string()
        .contains("not visible to this database role"));
    assert_eq!(report.verdicts[0].kind, VerdictKind::LongHold, "{report}");
    assert!(
        report.verdicts[0].evidence[0]
            .subject
            .contains("outside the pool"),
        "{report}"
    );
    superuser.batch_execute("ROLLBACK").await.unwrap();
    blocked.await.unwrap();
    drop(pool);
    let log = std::fs::read_to_string(cluster.dir().join("server.log")).expect("server log");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "the server logged errors: {errors:#?}");
}

/// Off: no side connection is opened and the report has no server part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_view_can_be_turned_off() {
    let cluster = pg::private_cluster().unwrap_or_else(|e| panic!("no private cluster: {e}"));
    let pool = pool_on(
        cluster.config(),
        1,
        watch("no-server-view").server_view(false).build().unwrap(),
    );
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    tokio::time::sleep(ms(300)).await;
    let report = pool.diagnose().await;
    assert!(report.server.is_none(), "{report}");
    assert!(report.holders.iter().all(|h| h.server.is_none()));
    let side: i64 = held
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'poolwatch server view'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(side, 0);
    drop(held);
    waiter.await.unwrap();
}
