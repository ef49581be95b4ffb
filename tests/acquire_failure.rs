//! A failed acquire is counted and reported with who holds the pool.
#![cfg(feature = "postgres")]
mod support;

use std::time::Duration;

use deadpool::managed::{PoolError, Timeouts};
use poolwatch::{WatchConfig, WatchedPool};
use support::capture::Capture;
use support::pg;

fn config(name: &str) -> WatchConfig {
    WatchConfig::builder().pool_name(name).build().unwrap()
}

fn short_wait() -> Timeouts {
    Timeouts {
        wait: Some(Duration::from_millis(100)),
        ..Default::default()
    }
}

#[tokio::test]
async fn timeout_warning_names_the_holding_sites() {
    let (capture, _guard) = Capture::install();
    let pool = WatchedPool::new(pg::pool(3), config("main"));
    let mut held = Vec::new();
    let mut job_line = 0;
    for _ in 0..2 {
        let (guard, line) = (pool.get().await.unwrap(), line!());
        held.push(guard);
        job_line = line;
    }
    let (api, api_line) = (pool.get().await.unwrap(), line!());
    held.push(api);

    let (result, waiter_line) = (pool.timeout_get(&short_wait()).await, line!());
    assert!(matches!(result, Err(PoolError::Timeout(_))), "{result:?}");

    let warnings = capture.matching("timed out");
    assert_eq!(warnings.len(), 1, "{:?}", capture.events());
    let warning = &warnings[0];
    let file = file!();
    assert_eq!(warning.level, tracing::Level::WARN);
    assert_eq!(warning.field("failure"), "timeout");
    assert_eq!(warning.field_u64("held"), 3);
    assert_eq!(warning.field_u64("max_size"), 3);
    assert!(warning.field_u64("waited_ms") >= 100);
    assert!(warning
        .field("site")
        .starts_with(&format!("{file}:{waiter_line}:")));
    let holders = warning.field("holders");
    assert!(
        holders.starts_with(&format!("2 by {file}:{job_line}:")),
        "{holders}"
    );
    assert!(
        holders.contains(&format!(", 1 by {file}:{api_line}:")),
        "{holders}"
    );
    assert!(
        warning.message.starts_with("pool main timed out after"),
        "{warning:?}"
    );
    assert!(warning.message.contains("3/3 held: 2 by"), "{warning:?}");

    let sites = pool.snapshot().sites;
    let waiter = sites.iter().find(|s| s.site.line == waiter_line).unwrap();
    assert_eq!(waiter.failures.timeouts, 1);
    assert_eq!(waiter.checkouts, 0);
    assert!(waiter.wait.max >= Duration::from_millis(99), "{waiter:?}");
}

#[tokio::test]
async fn closed_pool_is_counted_and_reported() {
    let (capture, _guard) = Capture::install();
    let pool = WatchedPool::new(pg::pool(2), config("closing"));
    pool.close();
    assert!(pool.is_closed());
    let (result, line) = (pool.get().await, line!());
    assert!(matches!(result, Err(PoolError::Closed)), "{result:?}");
    let warnings = capture.matching("is closed");
    assert_eq!(warnings.len(), 1, "{:?}", capture.events());
    assert_eq!(warnings[0].field("failure"), "closed");
    let site = support::site_at(&pool, line);
    assert_eq!(site.failures.closed, 1);
}

#[tokio::test]
async fn unreachable_database_is_counted_as_backend_failure() {
    let (capture, _guard) = Capture::install();
    let mut pg_config = tokio_postgres::Config::new();
    pg_config
        .host_path("/nonexistent/poolwatch-socket-dir")
        .user("nobody")
        .connect_timeout(Duration::from_secs(2));
    let manager = deadpool_postgres::Manager::new(pg_config, tokio_postgres::NoTls);
    let raw = deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .unwrap();
    let pool = WatchedPool::new(raw, config("unreachable"));
    let (result, line) = (pool.get().await, line!());
    assert!(matches!(result, Err(PoolError::Backend(_))), "{result:?}");
    let warnings = capture.matching("could not connect");
    assert_eq!(warnings.len(), 1, "{:?}", capture.events());
    assert_eq!(warnings[0].field("failure"), "backend");
    assert!(
        warnings[0].message.contains("0/2 held: none"),
        "{:?}",
        warnings[0]
    );
    let site = support::site_at(&pool, line);
    assert_eq!(site.failures.backend, 1);
    assert_eq!(pool.outstanding_count(), 0);
}

/// A storm of failures is counted in full but reported a few per second,
/// with the number left out carried by the next report: never a flood.
#[tokio::test]
async fn a_storm_of_timeouts_is_rate_limited_not_lost() {
    let (capture, _guard) = Capture::install();
    let pool = WatchedPool::new(pg::pool(1), config("storm"));
    let _held = pool.get().await.unwrap();
    let waiters: Vec<_> = (0..30)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (result, line) = (pool.timeout_get(&short_wait()).await, line!());
                assert!(result.is_err());
                line
            })
        })
        .collect();
    let mut line = 0;
    for waiter in waiters {
        line = waiter.await.unwrap();
    }
    let reported = capture.matching("timed out").len();
    assert!((1..=10).contains(&reported), "{reported} events");
    let site = support::site_at(&pool, line);
    assert_eq!(site.failures.timeouts, 30, "every failure is counted");

    // The next second's first report says how many were left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(pool.timeout_get(&short_wait()).await.is_err());
    let events = capture.matching("timed out");
    let last = events.last().unwrap();
    assert_eq!(
        last.field_u64("suppressed") as usize,
        30 - reported,
        "{last:?}"
    );
}
