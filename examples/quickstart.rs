//! poolwatch in one minute: a small service whose pool runs dry, and what
//! poolwatch says about it.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway local
//! PostgreSQL (removed when the demo exits).
use std::time::Duration;

use deadpool::managed::Timeouts;
use poolwatch::{WatchConfig, WatchedPool};
use tracing::Instrument;

#[path = "../tests/support/pg.rs"]
mod pg;

type Pool = poolwatch::postgres::Pool;

/// A request handler: short, all of its hold spent in the database.
async fn handle_request(
    pool: &Pool,
    user: i32,
) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT $1::int8 * 2", &[&i64::from(user)])
        .await?;
    Ok(row.get(0))
}

/// A background job that holds its connection across slow work that has
/// nothing to do with the database: the "long hold" pattern.
async fn cleanup_job(pool: Pool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = pool.get().await?;
    client.execute("SELECT pg_sleep(0.01)", &[]).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // e.g. an HTTP call
    client.execute("SELECT 1", &[]).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "poolwatch=info,quickstart=info".into()),
        )
        .init();

    let pg_config = pg::pg_config()?;
    println!("database: {}", pg::describe());
    let manager = deadpool_postgres::Manager::new(pg_config, tokio_postgres::NoTls);
    let raw = deadpool_postgres::Pool::builder(manager)
        .max_size(4)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?;

    // The drop-in change: wrap the pool, keep every call site as it was.
    let config = WatchConfig::builder()
        .pool_name("main")
        .hold_threshold(Duration::from_millis(500))
        .slow_acquire(Duration::from_millis(200))
        .with_env()? // POOLWATCH_HOLD_THRESHOLD=2s etc. override the above
        .build()?;
    let pool: Pool = WatchedPool::new(raw, config);

    println!("\n== 1. normal traffic: 20 short requests, nothing to report");
    for user in 0..20 {
        handle_request(&pool, user)
            .instrument(tracing::info_span!("handle_request", user))
            .await?;
    }

    println!("\n== 2. three cleanup jobs hold connections across slow non-database work");
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(cleanup_job(pool.clone()).instrument(tracing::info_span!("cleanup_job")))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    println!("\n== 3. requests now wait for the one connection left; one more times out");
    let held = pool.get().await?; // takes the last free connection
    let short_wait = Timeouts {
        wait: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let result = async { pool.timeout_get(&short_wait).await }
        .instrument(tracing::info_span!("handle_request", user = 99))
        .await;
    println!(
        "request 99: {}",
        match &result {
            Ok(_) => "got a connection".to_owned(),
            Err(e) => format!("error: {e}"),
        }
    );
    drop(held);

    for job in jobs {
        job.await??;
    }

    println!("\n== 4. what the pool saw, per call site (poolwatch::WatchedPool::snapshot)");
    let snapshot = pool.snapshot();
    println!(
        "pool {}: {} open, {} idle, {} waiting, max {}",
        snapshot.pool,
        snapshot.status.size,
        snapshot.status.available,
        snapshot.status.waiting,
        snapshot.status.max_size
    );
    println!(
        "{:<40} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "call site", "checkouts", "p50 hold", "max hold", "max wait", "timeouts"
    );
    for site in &snapshot.sites {
        println!(
            "{:<40} {:>9} {:>10} {:>10} {:>10} {:>8}",
            site.site.to_string(),
            site.checkouts,
            format!("{:.1?}", site.hold.p50),
            format!("{:.1?}", site.hold.max),
            format!("{:.1?}", site.wait.max),
            site.failures.timeouts
        );
    }
    println!("\nverdict (by eye, until the diagnosis lands): cleanup_job holds connections across non-database work: long hold, not a leak");
    Ok(())
}
