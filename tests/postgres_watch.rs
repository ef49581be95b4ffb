//! The PostgreSQL integration against a real server: busy vs held time,
//! transactions rolled back by drop, transactions left open, calls
//! abandoned in flight, backend pids.
mod support;

use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use poolwatch::postgres::{Client, OpenTransaction, Options, Pool};
use poolwatch::{SiteSnapshot, WatchConfig};
use support::capture::Capture;
use support::pg;
use tokio_postgres::error::SqlState;

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

/// A pool handed over ready-made: no hooks, the guard's own tracking only.
fn ready_made(name: &str, max_size: usize) -> Pool {
    Pool::new(pg::pool(max_size), watch(name))
}

/// A pool built with poolwatch's hooks (pid, open-transaction probe).
fn hooked(name: &str, max_size: usize, options: Options) -> Pool {
    let manager = Manager::from_config(
        pg::pg_config().unwrap(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let builder = deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1);
    Pool::from_builder(builder, watch(name), options).unwrap()
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

/// Whether the connection is inside a transaction (the probe's own test).
async fn in_transaction(client: &Client) -> bool {
    let pg: &tokio_postgres::Client = client;
    match pg.batch_execute("SAVEPOINT t").await {
        Ok(()) => true,
        Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => true,
        Err(e) if e.code() == Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION) => false,
        Err(e) => panic!("probe failed: {e}"),
    }
}

#[tokio::test]
async fn busy_and_idle_time_of_a_hold_with_a_sleep_between_queries() {
    let (capture, _guard) = Capture::install();
    let pool = ready_made("busy", 1);
    let (client, line) = (pool.get().await.unwrap(), line!());
    client.execute("SELECT pg_sleep(0.2)", &[]).await.unwrap();
    tokio::time::sleep(ms(300)).await; // unrelated work while holding
    client.query("SELECT pg_sleep(0.2)", &[]).await.unwrap();
    let outstanding = pool.snapshot().outstanding[0].clone();
    assert!(outstanding.busy >= ms(380), "{outstanding:?}");
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

async fn failing_transfer(pool: &Pool) -> Result<(), tokio_postgres::Error> {
    let mut client = pool.get().await.expect("checkout");
    let tx = client.transaction().await?; // the transaction's site
    tx.execute("INSERT INTO rbd_items VALUES (1)", &[]).await?;
    tx.query_one("SELECT 1 / 0", &[]).await?; // fails: `?` returns early
    tx.commit().await
}
const FAILING_TRANSACTION_LINE: u32 = 108;

#[tokio::test]
async fn rollback_by_drop_is_flagged_with_the_transaction_site() {
    let (capture, _guard) = Capture::install();
    let pool = ready_made("rbd", 1);
    {
        let client = pool.get().await.unwrap();
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS rbd_items (id int); TRUNCATE rbd_items")
            .await
            .unwrap();
    }
    assert!(failing_transfer(&pool).await.is_err());

    let warned = capture.matching("rolled back by drop");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    let event = &warned[0];
    assert_eq!(event.field("ending"), "rolled_back_by_drop");
    assert!(
        event.field("transaction_site").starts_with(file!()),
        "{event:?}"
    );
    assert_eq!(
        site_line(event.field("transaction_site")),
        FAILING_TRANSACTION_LINE
    );

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
}

#[tokio::test]
async fn raw_begin_left_open_is_detected_and_the_connection_evicted() {
    let (capture, _guard) = Capture::install();
    let pool = ready_made("raw-begin", 1);
    let (client, line) = (pool.get().await.unwrap(), line!());
    let first_pid = pid_of(&client).await;
    client.batch_execute("BEGIN").await.unwrap();
    client.execute("SELECT 1", &[]).await.unwrap();
    drop(client); // forgot COMMIT

    let warned = capture.matching("open transaction");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(site_line(warned[0].field("site")), line);
    assert_eq!(warned[0].field("action"), "evicted");
    assert_eq!(site(&pool, line).database.open_transaction_at_return, 1);

    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    assert_ne!(pid_of(&client).await, first_pid);
}

#[tokio::test]
async fn the_probe_rolls_back_a_transaction_opened_behind_the_guards_back() {
    let (capture, _guard) = Capture::install();
    let pool = hooked("probe", 1, Options::default());
    let (client, line) = (pool.get().await.unwrap(), line!());
    let first_pid = pid_of(&client).await; // an instrumented call: connection known
    let raw: &tokio_postgres::Client = &client; // uninstrumented
    raw.batch_execute("BEGIN").await.unwrap();
    drop(client);
    assert!(capture.matching("open transaction").is_empty());

    // The next caller gets the same backend, rolled back.
    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    assert_eq!(pid_of(&client).await, first_pid);
    let warned = capture.matching("still inside a transaction");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(site_line(warned[0].field("site")), line);
    assert_eq!(warned[0].field("action"), "rolled_back");
    assert_eq!(warned[0].field_u64("backend_pid"), first_pid as u64);
    drop(client);
    assert_eq!(site(&pool, line).database.open_transaction_at_return, 1);
}

#[tokio::test]
async fn a_leaked_transaction_is_rolled_back_at_the_next_checkout() {
    let (capture, _guard) = Capture::install();
    let pool = hooked("leaked-tx", 1, Options::default());
    let (mut client, line) = (pool.get().await.unwrap(), line!());
    let first_pid = pid_of(&client).await;
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT 1", &[]).await.unwrap();
    std::mem::forget(tx); // never commits, never rolls back
    drop(client);
    let warned = capture.matching("returned with an open transaction");
    assert_eq!(warned.len(), 1, "{:?}", capture.events());
    assert_eq!(warned[0].field("action"), "rolled_back_at_next_checkout");
    assert!(warned[0].field("transaction_site").starts_with(file!()));

    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    assert_eq!(pid_of(&client).await, first_pid);
    drop(client);
    // Reported by the guard, so the probe only logs at DEBUG and the site
    // is counted once.
    assert!(capture.matching("still inside a transaction").is_empty());
    assert_eq!(site(&pool, line).database.open_transaction_at_return, 1);
}

#[tokio::test]
async fn evict_policy_closes_a_connection_left_in_a_transaction() {
    let pool = hooked(
        "evict",
        1,
        Options::default().on_open_transaction(OpenTransaction::Evict),
    );
    let client = pool.get().await.unwrap();
    let first_pid = pid_of(&client).await;
    let raw: &tokio_postgres::Client = &client;
    raw.batch_execute("BEGIN").await.unwrap();
    drop(client);
    let client = pool.get().await.unwrap();
    assert!(!in_transaction(&client).await);
    assert_ne!(pid_of(&client).await, first_pid);
}

#[tokio::test]
async fn a_call_abandoned_in_flight_is_flagged_and_the_next_caller_not_blocked() {
    let (capture, _guard) = Capture::install();
    let pool = ready_made("in-flight", 1);
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
async fn the_last_statement_text_is_bounded_and_has_no_parameters() {
    let pool = ready_made("statement", 1);
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
    let long = format!("SELECT 1 AS {}", "x".repeat(300));
    client.batch_execute(&long).await.unwrap();
    let text = pool.snapshot().outstanding[0]
        .last_statement
        .clone()
        .unwrap();
    assert!(text.len() < 200 && text.ends_with('…'), "{text}");
    assert!(!text.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_futures_are_send() {
    let pool = ready_made("send", 2);
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
