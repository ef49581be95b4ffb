//! The four diagnosis scenarios of the demo, shared by
//! `examples/quickstart.rs` and `tests/diagnosis_scenarios.rs`: a small
//! simulated service (request handlers and a background job) on a real
//! PostgreSQL, each scenario on a pool of its own.
#![allow(dead_code)]

use std::time::Duration;

use deadpool_postgres::Runtime;
use poolwatch::postgres::{Client, Options, Pool};
use poolwatch::{Report, WatchConfig};
use tokio_postgres::NoTls;
use tracing::Instrument;

use super::pg;

/// What a scenario produced: its report, and the culprit the verdict must
/// name (`file:line:` of a call site, or `span <name>`).
pub struct Scenario {
    pub name: &'static str,
    pub report: Report,
    pub culprit: String,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A 4-connection pool with the demo's thresholds: holds past 300 ms are
/// long, the timeline ticks every 100 ms.
fn pool(name: &str) -> Pool {
    let config = pg::pg_config().expect("test database");
    let manager = deadpool_postgres::Manager::new(config, NoTls);
    let builder = deadpool_postgres::Pool::builder(manager)
        .max_size(4)
        .runtime(Runtime::Tokio1);
    let watch = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(ms(300))
        .slow_acquire(ms(200))
        .timeline_tick(Some(ms(100)))
        .timeline_window(Duration::from_secs(120))
        .build()
        .expect("valid config");
    Pool::from_builder(builder, watch, Options::default()).expect("pool")
}

fn site(line: u32) -> String {
    format!("{}:{line}:", file!())
}

// ---------------------------------------------------------------- 1. leak

/// Writes an order in a transaction; a declined card returns early with
/// `?`, and the transaction is rolled back by drop.
async fn write_order(client: &mut Client, order: i32) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT $1::int4", &[&order])
        .await
        .map_err(|e| e.to_string())?;
    if order % 4 == 3 {
        return Err(format!("order {order}: card declined"));
    }
    tx.commit().await.map_err(|e| e.to_string())
}

/// The bug: on error the connection is parked "for a retry" that never
/// comes, so it is never returned.
async fn place_order(
    pool: &Pool,
    order: i32,
    retry_later: &mut Vec<Client>,
    site_line: &mut u32,
) -> Result<(), String> {
    let (mut client, line) = (pool.get().await.map_err(|e| e.to_string())?, line!());
    *site_line = line;
    let result = write_order(&mut client, order).await;
    if result.is_err() {
        retry_later.push(client);
    }
    result
}

pub async fn leak_on_error_path() -> Scenario {
    let pool = pool("orders");
    let mut retry_later = Vec::new();
    let mut line = 0;
    for order in 0..12 {
        let _ = place_order(&pool, order, &mut retry_later, &mut line)
            .instrument(tracing::info_span!("handle_request", order))
            .await;
    }
    tokio::time::sleep(ms(450)).await; // past the threshold, still parked
    let report = pool.report();
    drop(retry_later);
    Scenario {
        name: "leak on an error path",
        report,
        culprit: site(line),
    }
}

// ------------------------------------------------- 2. transaction + HTTP

async fn call_payment_provider() {
    tokio::time::sleep(ms(500)).await;
}

async fn pay(pool: Pool, order: i32) -> Result<u32, String> {
    let (mut client, line) = (pool.get().await.map_err(|e| e.to_string())?, line!());
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT $1::int4", &[&order])
        .await
        .map_err(|e| e.to_string())?;
    call_payment_provider().await; // the slow external call, inside the transaction
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(line)
}

pub async fn transaction_across_slow_call() -> Scenario {
    let pool = pool("payments");
    let tasks: Vec<_> = (0..6)
        .map(|order| {
            tokio::spawn(
                pay(pool.clone(), order).instrument(tracing::info_span!("handle_payment", order)),
            )
        })
        .collect();
    let mut line = 0;
    for task in tasks {
        line = task.await.expect("task").expect("payment");
    }
    tokio::time::sleep(ms(250)).await;
    Scenario {
        name: "transaction held across a slow external call",
        report: pool.report(),
        culprit: site(line),
    }
}

// ------------------------------------------------- 3. job hogging the pool

async fn nightly_export(pool: Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    for _batch in 0..5 {
        client
            .query("SELECT pg_sleep(0.03)", &[])
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(ms(150)).await; // format and upload the batch
    }
    Ok(())
}

async fn short_request(pool: Pool, user: i64) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .query_one("SELECT $1::int8", &[&user])
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub async fn job_hogging_connections() -> Scenario {
    let pool = pool("jobs");
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(
                nightly_export(pool.clone()).instrument(tracing::info_span!("nightly_export")),
            )
        })
        .collect();
    tokio::time::sleep(ms(50)).await;
    let requests: Vec<_> = (0..30)
        .map(|user| {
            tokio::spawn(
                short_request(pool.clone(), user).instrument(tracing::info_span!("handle_request")),
            )
        })
        .collect();
    for task in jobs.into_iter().chain(requests) {
        task.await.expect("task").expect("query");
    }
    tokio::time::sleep(ms(250)).await;
    Scenario {
        name: "background job hogging connections",
        report: pool.report(),
        culprit: "span nightly_export".to_owned(),
    }
}

// ------------------------------------------------------ 4. demand burst

async fn quick_lookup(pool: Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .execute("SELECT pg_sleep(0.005)", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub async fn burst_of_demand() -> Scenario {
    let pool = pool("burst");
    tokio::time::sleep(ms(150)).await; // a quiet tick before the burst
    let requests: Vec<_> = (0..400)
        .map(|_| {
            tokio::spawn(
                quick_lookup(pool.clone()).instrument(tracing::info_span!("handle_request")),
            )
        })
        .collect();
    for task in requests {
        task.await.expect("task").expect("query");
    }
    tokio::time::sleep(ms(250)).await;
    Scenario {
        name: "burst of concurrent demand",
        report: pool.report(),
        culprit: "pool".to_owned(),
    }
}
