//! The PostgreSQL integration against a real server, on pools built the
//! way the README recommends (connections observed): busy vs held time,
//! transactions rolled back by drop, transactions left open, calls
//! abandoned in flight, backend pids, statement text; and what a
//! ready-made pool still sees.
#![cfg(feature = "postgres")]
mod support;

use std::time::{Duration, Instant};

use deadpool_postgres::Runtime;
use poolwatch::postgres::{Client, OpenTransaction, Options, Pool};
use poolwatch::{HolderState, SiteSnapshot, WatchConfig};
use support::capture::Capture;
use support::pg;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn watch(name: &str) -> WatchConfig {
    WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(ms(100))
        .build()
        .unwrap()
}

fn observed(name: &str, max_size: usize) -> Pool {
    support::observed_pool(max_size, watch(name))
}

/// A pool handed over ready-made: its connections are not observed.
fn ready_made(name: &str, max_size: usize) -> Pool {
    Pool::new(pg::pool(max_size), watch(name))
}

fn site(pool: &Pool, line: u32) -> SiteSnapshot {
    pool.snapshot()
        .sites
        .into_iter()
        .find(|s| s.site.line == line && s.site.file == file!())
        .unwrap_or_else(|| panic!("no site at line {line}: {:?}", pool.snapshot().sites))
}

fn site_line(field: &str) -> u32 {
    field.split(':').nth(1).unwrap().parse().unwrap()
}

async fn pid_of(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether the connection is inside a transaction, asked of the server.
async fn in_transaction(client: &Client) -> bool {
    let rows = client
        .simple_query("SELECT now() <> statement_timestamp()")
        .await
        .unwrap();
    rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
        _ => false,
    })
}

#[tokio::test]
async fn busy_and_idle_time_of_a_hold_with_a_sleep_between_queries() {
    let (capture, _guard) = Capture::install();
    let pool = observed("busy", 1);
    let (client, line) = (pool.get().await.unwrap(), line!());
    client.execute("SELECT pg_sleep(0.2)", &[]).await.unwrap();
    tokio::time::sleep(ms(300)).await; // unrelated work while holding
    client.query("SELECT pg_sleep(0.2)", &[]).await.unwrap();
    let outstanding = pool.snapshot().outstanding[0].clone();
    assert!(outstanding.busy >= ms(380), "{outstanding:?}");
    assert_eq!(outstanding.state, Some(HolderState::Idle));
    drop(client);

    let stats = site(&pool, line);
    let busy = stats.database.busy_total;
    let held = stats.hold_total;
    assert!(busy >= ms(380), "{stats:?}");
    assert!(held >= busy + ms(280), "{stats:?}");
    // busy ≈ 0.4 of held; generous tolerance on a noisy machine.
    let ratio = busy.as_secs_f64() / held.as_secs_f64();
    assert!(ratio > 0.2 && ratio < 0.9, "ratio {ratio}: {stats:?}");

    let warned = capture.matching("connection held for");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    let held_ms = warned[0].field_u64("held_ms");
    let busy_ms = warned[0].field_u64("busy_ms");
    assert!(busy_ms >= 380 && held_ms >= busy_ms + 280, "{warned:?}");
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Empties the transfers' table; the backend pid of the pool's connection.
async fn empty_items(pool: &Pool) -> i32 {
    let client = pool.get().await.unwrap();
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS rbd_items (id int); TRUNCATE rbd_items")
        .await
        .unwrap();
    pid_of(&client).await
}

/// A transfer the code itself gives up on: the `?` on its own error
/// drops the transaction (the database said nothing wrong).
async fn failing_transfer(pool: &Pool) -> Result<(), Error> {
    let mut client = pool.get().await.expect("checkout");
    let tx = client.transaction().await?; // the transaction's site
    tx.execute("INSERT INTO rbd_items VALUES (1)", &[]).await?;
    let balance: i32 = tx.query_one("SELECT 1 - 2", &[]).await?.get(0);
    if balance < 0 {
        return Err("insufficient funds".into()); // returns early
    }
    tx.commit().await?;
    Ok(())
}
const FAILING_TRANSACTION_LINE: u32 = 115;

/// A transfer the database refuses: the `?` on that error drops the
/// transaction, its ordinary end.
async fn refused_transfer(pool: &Pool) -> Result<(), Error> {
    let mut client = pool.get().await.expect("checkout");
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO rbd_items VALUES (1)", &[]).await?;
    tx.query_one("SELECT 1 / 0", &[]).await?; // division by zero
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn rollback_by_drop_is_flagged_with_the_transaction_site() {
    let (capture, _guard) = Capture::install();
    let pool = observed("rbd", 1);
    let first_pid = empty_items(&pool).await;
    assert!(failing_transfer(&pool).await.is_err());

    let warned = capture.matching("rolled back by drop");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    let event = &warned[0];
    assert_eq!(event.field("ending"), "rolled_back_by_drop");
    // Its ROLLBACK was queued ahead of anything a next caller sends: the
    // connection is not inside a transaction for anyone, so it is kept.
    assert!(capture.matching("returned inside a transaction").is_empty());
    assert!(
        event.field("transaction_site").starts_with(file!()),
        "{event:?}"
    );
    assert_eq!(
        site_line(event.field("transaction_site")),
        FAILING_TRANSACTION_LINE
    );
    // The statement the transaction last ran, sanitized.
    assert_eq!(event.field("statement"), "SELECT ? - ?", "{event:?}");

    let snapshot = pool.snapshot();
    let drops: u64 = snapshot
        .sites
        .iter()
        .map(|s| s.database.rolled_back_by_drop)
        .sum();
    assert_eq!(drops, 1, "{snapshot:?}");
    // The drop rolled back: nothing was inserted, and the connection is clean.
    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    let row = client
        .query_one("SELECT count(*) FROM rbd_items", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(pid_of(&client).await, first_pid, "the connection was kept");

    // Committed and rolled back transactions are counted too, with time.
    drop(client);
    let (mut client, line) = (pool.get().await.unwrap(), line!());
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO rbd_items VALUES (2)", &[])
        .await
        .unwrap();
    tokio::time::sleep(ms(100)).await;
    tx.commit().await.unwrap();
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    drop(client);
    let stats = site(&pool, line);
    assert_eq!(
        (stats.database.committed, stats.database.rolled_back),
        (1, 1)
    );
    assert!(stats.database.transaction_total >= ms(100), "{stats:?}");
    assert!(stats.database.transaction_idle_total >= ms(90), "{stats:?}");
    assert!(
        stats.database.idle_in_transaction_total >= ms(90),
        "{stats:?}"
    );
}

/// A transaction the database failed (a `?` on its error) is rolled back
/// as it should be: counted apart, no warning, no error path, the
/// connection kept, whichever way the pool handles open transactions.
#[tokio::test]
async fn a_transaction_dropped_on_a_database_error_is_its_ordinary_end() {
    let (capture, _guard) = Capture::install();
    for (name, open_transaction) in [
        ("refused-evict", OpenTransaction::Evict),
        ("refused-rollback", OpenTransaction::Rollback),
    ] {
        let pool = support::observed_pool_with(
            1,
            watch(name),
            Options::default().on_open_transaction(open_transaction),
        );
        let first_pid = empty_items(&pool).await;
        for _ in 0..3 {
            let refused = refused_transfer(&pool).await.unwrap_err();
            assert!(refused.to_string().contains("db error"), "{refused}");
        }
        let client = pool.get().await.unwrap();
        assert!(!in_transaction(&client).await);
        assert_eq!(
            pid_of(&client).await,
            first_pid,
            "{name}: the connection was kept"
        );
        drop(client);
        let db = pool
            .snapshot()
            .sites
            .iter()
            .fold((0, 0, 0), |(after, by_drop, errors), s| {
                (
                    after + s.database.rolled_back_after_error,
                    by_drop + s.database.rolled_back_by_drop,
                    errors + s.database.error_paths(),
                )
            });
        assert_eq!(db, (3, 0, 0), "{name}");
        let debug = capture.matching("rolled_back_after_error");
        assert!(
            debug.iter().any(|e| e.field("sqlstate") == "22012"),
            "{name}: the division by zero's SQLSTATE: {debug:?}"
        );
    }
    assert!(capture.matching("rolled back by drop").is_empty());
    assert!(capture.matching("returned inside a transaction").is_empty());
}

#[tokio::test]
async fn raw_begin_left_open_is_detected_and_the_next_caller_gets_a_clean_connection() {
    let (capture, _guard) = Capture::install();
    let pool = observed("raw-begin", 1);
    let (client, line) = (pool.get().await.unwrap(), line!());
    let first_pid = pid_of(&client).await;
    client.batch_execute("BEGIN").await.unwrap();
    client.execute("SELECT 1", &[]).await.unwrap();
    drop(client); // forgot COMMIT

    let warned = capture.matching("returned inside a transaction");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(site_line(warned[0].field("site")), line);
    assert_eq!(warned[0].field("action"), "evicted");
    assert_eq!(warned[0].field_u64("backend_pid"), first_pid as u64);
    assert_eq!(site(&pool, line).database.open_transaction_at_return, 1);

    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    assert_ne!(pid_of(&client).await, first_pid);
}

/// Behind the guard's back: `&tokio_postgres::Client` opens the
/// transaction; the connection itself says it is still open.
#[tokio::test]
async fn a_transaction_opened_behind_the_guards_back_is_seen() {
    let (capture, _guard) = Capture::install();
    let pool = observed("behind", 1);
    let (client, line) = (pool.get().await.unwrap(), line!());
    let first_pid = pid_of(&client).await;
    let raw: &tokio_postgres::Client = &client;
    raw.batch_execute("BEGIN").await.unwrap();
    assert!(pool.snapshot().outstanding[0].in_transaction);
    assert_eq!(
        pool.snapshot().outstanding[0].state,
        Some(HolderState::IdleInTransaction)
    );
    drop(client);
    let warned = capture.matching("returned inside a transaction");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(site_line(warned[0].field("site")), line);
    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    assert_ne!(pid_of(&client).await, first_pid);
}

/// With `OpenTransaction::Rollback` the connection is kept and rolled
/// back before its next use (one round trip, only for it).
#[tokio::test]
async fn rollback_policy_keeps_the_connection_and_rolls_it_back() {
    let (capture, _guard) = Capture::install();
    let pool = support::observed_pool_with(
        1,
        watch("rollback"),
        Options::default().on_open_transaction(OpenTransaction::Rollback),
    );
    let (mut client, line) = (pool.get().await.unwrap(), line!());
    let first_pid = pid_of(&client).await;
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT 1", &[]).await.unwrap();
    std::mem::forget(tx); // never commits, never rolls back
    drop(client);
    let warned = capture.matching("returned inside a transaction");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(warned[0].field("action"), "rolled_back_before_next_use");
    assert!(warned[0].field("transaction_site").starts_with(file!()));
    assert_eq!(site(&pool, line).database.open_transaction_at_return, 1);

    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    assert_eq!(pid_of(&client).await, first_pid, "the same connection");
}

#[tokio::test]
async fn a_call_abandoned_in_flight_is_flagged_and_the_next_caller_not_blocked() {
    let (capture, _guard) = Capture::install();
    let pool = observed("in-flight", 1);
    let task_pool = pool.clone();
    let line = line!() + 2;
    let cancelled = tokio::time::timeout(ms(200), async {
        let client = task_pool.get().await.unwrap();
        let pid = pid_of(&client).await;
        let _ = client.query("SELECT pg_sleep(2)", &[]).await;
        pid
    })
    .await;
    assert!(cancelled.is_err(), "the timeout dropped the query");

    let warned = capture.matching("in flight");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(site_line(warned[0].field("site")), line);
    assert_eq!(warned[0].field("action"), "evicted");
    assert_eq!(warned[0].field("statement"), "SELECT pg_sleep(?)");
    assert_eq!(site(&pool, line).database.in_flight_at_drop, 1);

    // The next caller gets a fresh backend, not the one still sleeping.
    let started = Instant::now();
    let client = pool.get().await.unwrap();
    let pid = pid_of(&client).await;
    let sleeping: Vec<i32> = client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!sleeping.contains(&pid));
    if started.elapsed() < ms(1500) {
        // Not a timing assertion: when the machine is fast enough to look
        // while the old statement still runs, it runs on another backend.
        assert_eq!(sleeping.len(), 1, "{sleeping:?}");
    }
}

#[tokio::test]
async fn backend_pid_matches_pg_stat_activity() {
    let (capture, _guard) = Capture::install();
    let url = pg::pg_config().unwrap();
    let mut cfg = deadpool_postgres::Config::new();
    if let Some(tokio_postgres::config::Host::Unix(path)) = url.get_hosts().first() {
        cfg.host = Some(path.to_string_lossy().into_owned());
    }
    if let Some(tokio_postgres::config::Host::Tcp(host)) = url.get_hosts().first() {
        cfg.host = Some(host.clone());
    }
    cfg.port = url.get_ports().first().copied();
    cfg.user = url.get_user().map(str::to_owned);
    cfg.password = url
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    cfg.dbname = url.get_dbname().map(str::to_owned);
    cfg.pool = Some(deadpool_postgres::PoolConfig::new(3));
    let pool = Pool::from_config(
        &cfg,
        Some(Runtime::Tokio1),
        tokio_postgres::NoTls,
        watch("pids"),
    )
    .unwrap();
    assert_eq!(pool.status().max_size, 3, "pool config passes through");

    let client = pool.get().await.unwrap();
    let pid = pid_of(&client).await;
    let outstanding = &pool.snapshot().outstanding[0];
    assert_eq!(outstanding.backend_pid, Some(pid));
    let row = client
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    let application_name: String = row.get(0);
    assert!(application_name.ends_with("/pids"), "{application_name}");

    tokio::time::sleep(ms(150)).await; // past the hold threshold
    drop(client);
    let warned = capture.matching("connection held for");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(warned[0].field_u64("backend_pid"), pid as u64);
}

#[tokio::test]
async fn the_last_statement_text_is_sanitized_bounded_and_has_no_parameters() {
    let pool = observed("statement", 1);
    let client = pool.get().await.unwrap();
    let secret = "hunter2";
    client
        .query_typed(
            "SELECT $1::text AS secret_param",
            &[(&secret, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap();
    let text = pool.snapshot().outstanding[0]
        .last_statement
        .clone()
        .unwrap();
    assert_eq!(text, "SELECT $1::text AS secret_param");
    // Literals never appear, in snapshots or anywhere.
    client
        .batch_execute("SELECT 'tx_secret_42' AS token")
        .await
        .unwrap();
    let text = pool.snapshot().outstanding[0]
        .last_statement
        .clone()
        .unwrap();
    assert_eq!(text, "SELECT ? AS token");
    let long = format!("SELECT 1 AS {}", "x".repeat(900));
    client.batch_execute(&long).await.unwrap();
    let text = pool.snapshot().outstanding[0]
        .last_statement
        .clone()
        .unwrap();
    assert!(text.len() <= 512 && text.ends_with('…'), "{text}");
    assert!(!text.contains(secret));
}

#[tokio::test]
async fn statement_text_can_be_turned_off() {
    let watch = WatchConfig::builder()
        .pool_name("no-statements")
        .statements(poolwatch::Statements::Off)
        .build()
        .unwrap();
    let pool = support::observed_pool(1, watch);
    let client = pool.get().await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    let guard = &pool.snapshot().outstanding[0];
    assert_eq!(guard.last_statement, None);
    assert!(guard.busy > Duration::ZERO, "still observed: {guard:?}");
}

/// A ready-made pool (`Pool::new`): holds, waits, sites and spans are
/// recorded; database time is not (its connections are not observed).
#[tokio::test]
async fn a_ready_made_pool_records_holds_but_not_database_time() {
    let pool = ready_made("ready-made", 1);
    let (client, line) = (pool.get().await.unwrap(), line!());
    client.execute("SELECT pg_sleep(0.05)", &[]).await.unwrap();
    drop(client);
    let stats = site(&pool, line);
    assert_eq!(stats.checkouts, 1);
    assert!(stats.hold_total >= ms(50), "{stats:?}");
    assert_eq!(stats.database.observed_holds, 0, "{stats:?}");
    assert_eq!(stats.database.busy_total, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_futures_are_send() {
    let pool = observed("send", 2);
    let task = tokio::spawn(async move {
        let mut client = pool.get().await.unwrap();
        let stmt = client.prepare_cached("SELECT 1").await.unwrap();
        client.query(&stmt, &[]).await.unwrap();
        let tx = client.transaction().await.unwrap();
        let rows = tx.query_raw("SELECT 2", Vec::<i32>::new()).await.unwrap();
        drop(rows);
        tx.query_one("SELECT 3", &[]).await.unwrap();
        tx.commit().await.unwrap();
        pool.snapshot().sites.len()
    });
    assert_eq!(task.await.unwrap(), 1);
}

/// `query_one(&str)` prepares a statement and, as it returns, drops it:
/// tokio-postgres then sends `Close`, whose answer can still be on its way
/// when the guard goes back. That is not a call in flight: no hold ends
/// on an error path and the connection is reused, not evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_right_after_a_query_is_not_a_call_in_flight() {
    let pool = observed("statement-close", 1);
    let first_pid = pid_of(&pool.get().await.unwrap()).await;
    let mut line = 0;
    for id in 0..300i64 {
        let (client, at) = (pool.get().await.unwrap(), line!());
        line = at;
        client
            .query_one("SELECT $1::int8 AS id", &[&id])
            .await
            .unwrap();
    }
    let database = site(&pool, line).database;
    assert_eq!(database.in_flight_at_drop, 0, "{database:?}");
    assert_eq!(database.observed_holds, 300, "{database:?}");
    assert_eq!(pid_of(&pool.get().await.unwrap()).await, first_pid);

    // Nor right after a statement the server refused: its error is the
    // answer, the "ready" behind it needs no more work.
    let mut line = 0;
    for _ in 0..100 {
        let (client, at) = (pool.get().await.unwrap(), line!());
        line = at;
        let refused = client.query_one("SELECT 1 / 0", &[]).await;
        assert!(refused.is_err());
    }
    let database = site(&pool, line).database;
    assert_eq!(database.in_flight_at_drop, 0, "{database:?}");
    assert_eq!(pid_of(&pool.get().await.unwrap()).await, first_pid);
}
