//! The poolwatch demo: a small shop service — order and checkout handlers,
//! a nightly export job — on a real PostgreSQL, written the way a service
//! is written. Four incidents, each exhausting a 4-connection pool for a
//! different reason; for each, poolwatch's tracing output, its report and
//! its verdict. The call sites the report names are this file's lines.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway local
//! PostgreSQL (removed when the demo exits). The pressure timelines are
//! written as SVG pictures to `target/poolwatch-demo/` (or
//! `POOLWATCH_DEMO_DIR`).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deadpool_postgres::{PoolConfig, Runtime};
use poolwatch::postgres::{Client, Pool};
use poolwatch::{Report, WatchConfig};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;
use tracing::Instrument;

mod throwaway_postgres;

type Error = Box<dyn std::error::Error + Send + Sync>;

// ------------------------------------------------------------ the service

/// The pool, built as the service builds it: a deadpool-postgres config,
/// poolwatch's constructor. Thresholds are scaled to a demo (a service
/// keeps the defaults or sets `POOLWATCH_*`).
fn connect(database_url: &str, name: &str) -> Result<Pool, Error> {
    let mut cfg = deadpool_postgres::Config::new();
    cfg.url = Some(database_url.to_owned());
    cfg.pool = Some(PoolConfig::new(4));
    let watch = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(Duration::from_millis(300))
        .slow_acquire(Duration::from_millis(200))
        .timeline_tick(Some(Duration::from_millis(100)))
        .build()?;
    Ok(Pool::from_config(
        &cfg,
        Some(Runtime::Tokio1),
        NoTls,
        watch,
    )?)
}

/// POST /orders: the card is charged inside the order's transaction; a
/// declined card returns early and the connection is kept "for a retry"
/// that never comes.
#[tracing::instrument(skip(pool, retry_later))]
async fn place_order(
    pool: &Pool,
    order: i64,
    retry_later: &Mutex<Vec<Client>>,
) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&order])
        .await?;
    if order % 4 == 3 {
        drop(tx); // declined: rolled back
        retry_later.lock().await.push(client); // the bug
        return Err(format!("order {order}: card declined").into());
    }
    tx.commit().await?;
    Ok(())
}

/// POST /checkout: debits the account, calls the payment provider, then
/// commits; the account's row stays locked during the call.
#[tracing::instrument(skip(pool))]
async fn checkout(pool: &Pool, account: i32) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE accounts SET balance = balance - 10 WHERE id = $1",
        &[&account],
    )
    .await?;
    call_payment_provider().await;
    tx.commit().await?;
    Ok(())
}

async fn call_payment_provider() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// POST /refund: credits the same account.
#[tracing::instrument(skip(pool))]
async fn refund(pool: &Pool, account: i32) -> Result<(), Error> {
    let client = pool.get().await?;
    credit(&client, account).await
}

/// A helper written against deadpool-postgres's client type, as services
/// have them: its calls are seen all the same.
async fn credit(client: &deadpool_postgres::Client, account: i32) -> Result<(), Error> {
    client
        .execute(
            "UPDATE accounts SET balance = balance + 10 WHERE id = $1",
            &[&account],
        )
        .await?;
    Ok(())
}

/// The nightly export: per batch, one query, then formatting and an
/// upload with the connection still held.
#[tracing::instrument(skip(pool))]
async fn nightly_export(pool: &Pool) -> Result<(), Error> {
    let client = pool.get().await?;
    for _batch in 0..5 {
        client.query("SELECT id FROM orders LIMIT 100", &[]).await?;
        tokio::time::sleep(Duration::from_millis(200)).await; // upload
    }
    Ok(())
}

/// GET /orders/:id: one short query.
#[tracing::instrument(skip(pool))]
async fn get_order(pool: &Pool, order: i64) -> Result<(), Error> {
    let client = pool.get().await?;
    client
        .query_opt(
            "SELECT id, pg_sleep(0.005) FROM orders WHERE id = $1",
            &[&order],
        )
        .await?;
    Ok(())
}

async fn create_schema(pool: &Pool) -> Result<(), Error> {
    let client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY); \
             TRUNCATE orders; \
             CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance int NOT NULL); \
             INSERT INTO accounts VALUES (1, 1000) ON CONFLICT (id) DO NOTHING;",
        )
        .await?;
    Ok(())
}

// ------------------------------------------------------- the four incidents

async fn leak_on_an_error_path(url: &str) -> Result<Report, Error> {
    let pool = connect(url, "orders")?;
    create_schema(&pool).await?;
    let retry_later = Mutex::new(Vec::new());
    for order in 0..12 {
        let _ = place_order(&pool, order, &retry_later).await;
    }
    tokio::time::sleep(Duration::from_millis(450)).await; // past the threshold
    Ok(pool.report())
}

async fn a_lock_held_across_a_payment_call(url: &str) -> Result<Report, Error> {
    let pool = connect(url, "checkout")?;
    let paying = {
        let pool = pool.clone();
        tokio::spawn(async move { checkout(&pool, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refunds: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { refund(&pool, 1).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // What an incident command or a /debug endpoint calls: asks the
    // database who blocks whom, then diagnoses.
    let report = pool.diagnose().await;
    paying.await??;
    for refund in refunds {
        refund.await??;
    }
    Ok(report)
}

async fn a_job_hogging_connections(url: &str) -> Result<Report, Error> {
    let pool = connect(url, "export")?;
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { nightly_export(&pool).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let requests: Vec<_> = (0..60)
        .map(|order| {
            let pool = pool.clone();
            tokio::spawn(async move { get_order(&pool, order).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = pool.report(); // during the incident
    for task in jobs.into_iter().chain(requests) {
        task.await??;
    }
    Ok(report)
}

async fn a_burst_of_requests(url: &str) -> Result<Report, Error> {
    let pool = connect(url, "storefront")?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let requests: Vec<_> = (0..300)
        .map(|order| {
            let pool = pool.clone();
            tokio::spawn(
                async move { get_order(&pool, order).await }
                    .instrument(tracing::info_span!("request")),
            )
        })
        .collect();
    for task in requests {
        task.await??;
    }
    Ok(pool.report())
}

// ------------------------------------------------------------------ main

fn show(title: &str, report: &Report, dir: &Path) -> std::io::Result<()> {
    println!("\n===== {title}\n\n{report}");
    let svg = dir.join(format!("{}.svg", report.pool));
    std::fs::write(&svg, report.timeline_svg())?;
    println!("timeline picture: {}", svg.display());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // poolwatch's warnings, and this service's own spans (a
                // span the filter disables is invisible to poolwatch too).
                .unwrap_or_else(|_| "warn,poolwatch=warn,quickstart=info".into()),
        )
        .with_target(false)
        .init();
    let started = Instant::now();
    let (url, _throwaway) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => (url, None),
        _ => {
            let server = throwaway_postgres::ThrowawayPostgres::start()?;
            println!("database: a throwaway local PostgreSQL (removed on exit)");
            (server.url(), Some(server))
        }
    };
    let dir = std::env::var_os("POOLWATCH_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/poolwatch-demo"));
    std::fs::create_dir_all(&dir)?;

    let mut verdicts = Vec::new();
    let mut seen = |title: &'static str, report: Report| -> std::io::Result<()> {
        show(title, &report, &dir)?;
        verdicts.push((title, report.verdicts[0].clone()));
        Ok(())
    };
    seen(
        "a leak on an error path: declined orders keep their connection",
        leak_on_an_error_path(&url).await?,
    )?;
    seen(
        "a row lock held across a payment call: refunds block in the database",
        a_lock_held_across_a_payment_call(&url).await?,
    )?;
    seen(
        "a nightly job holding connections across uploads while requests wait",
        a_job_hogging_connections(&url).await?,
    )?;
    seen(
        "a burst of short requests",
        a_burst_of_requests(&url).await?,
    )?;

    println!("\n===== verdicts");
    for (title, verdict) in &verdicts {
        let culprit = verdict.evidence.first().map_or("", |e| e.subject.as_str());
        println!("  {title}\n    {}: {culprit}", verdict.kind.as_str());
    }
    println!("(demo took {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
