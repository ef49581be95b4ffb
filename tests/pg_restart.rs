//! PostgreSQL restarted, and stopped, while guards are held. Runs against a
//! private cluster of its own (the shared throwaway server must stay up for
//! the other tests), so it is skipped when `DATABASE_URL` points at an
//! external server that cannot be restarted from here.
#![cfg(feature = "postgres")]
mod support;

use std::time::Duration;

use deadpool::managed::{PoolError, Timeouts};
use deadpool_postgres::{ManagerConfig, RecyclingMethod, Runtime};
use poolwatch::postgres::Pool;
use poolwatch::WatchConfig;
use support::pg;
use tokio_postgres::NoTls;

fn cluster_or_skip(test: &str) -> Option<pg::Cluster> {
    if std::env::var("DATABASE_URL").is_ok_and(|v| !v.trim().is_empty()) {
        eprintln!(
            "{test}: skipped: DATABASE_URL is set, and an external server cannot be restarted \
             by the test; unset it to run this test against a private throwaway cluster"
        );
        return None;
    }
    Some(pg::private_cluster().unwrap_or_else(|e| panic!("private cluster: {e}")))
}

fn pool_on(cluster: &pg::Cluster, name: &str, size: usize) -> Pool {
    let config = WatchConfig::builder().pool_name(name).build().unwrap();
    // Observed connections (backend pid, activity): the observer must
    // cope with connections that die under it.
    Pool::builder(
        cluster.config(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    )
    .max_size(size)
    .runtime(Runtime::Tokio1)
    .watch(config)
    .build()
    .unwrap()
}

fn wait(ms: u64) -> Timeouts {
    Timeouts {
        wait: Some(Duration::from_millis(ms)),
        ..Timeouts::default()
    }
}

fn totals(pool: &Pool) -> (u64, u64, u64) {
    let snapshot = pool.snapshot();
    let checkouts = snapshot.sites.iter().map(|s| s.checkouts).sum();
    let ended = snapshot.sites.iter().map(|s| s.outcomes.total()).sum();
    let failed = snapshot.sites.iter().map(|s| s.failures.total()).sum();
    (checkouts, ended, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_guards_are_held() {
    let Some(cluster) = cluster_or_skip("restart_while_guards_are_held") else {
        return;
    };
    let pool = pool_on(&cluster, "restart", 3);
    let first = pool.get().await.unwrap();
    let second = pool.get().await.unwrap();
    {
        // One idle connection in the pool too.
        let idle = pool.get().await.unwrap();
        idle.query_one("SELECT 1", &[]).await.unwrap();
    }
    first.query_one("SELECT 1", &[]).await.unwrap();
    let old_pid = pool.snapshot().outstanding[0].backend_pid;
    assert!(old_pid.is_some(), "post_create learnt the backend pid");

    cluster.restart().unwrap();

    // The held connections are dead; their guards still end their records.
    assert!(first.query_one("SELECT 1", &[]).await.is_err());
    assert_eq!(pool.outstanding_count(), 2);
    drop(first);
    // New checkouts get live connections (the dead idle one is discarded).
    for _ in 0..3 {
        let client = pool.timeout_get(&wait(10_000)).await.unwrap();
        client.query_one("SELECT 1", &[]).await.unwrap();
    }
    assert!(second.query_one("SELECT 1", &[]).await.is_err());
    drop(second);
    assert_eq!(pool.outstanding_count(), 0);
    assert_eq!(pool.pool_status().in_use(), 0);
    let (checkouts, ended, failed) = totals(&pool);
    assert_eq!((checkouts, ended, failed), (6, 6, 0));
    let client = pool.get().await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_gives_recorded_failures_then_recovers() {
    let Some(cluster) = cluster_or_skip("stopped_server_gives_recorded_failures_then_recovers")
    else {
        return;
    };
    let pool = pool_on(&cluster, "stopped", 2);
    let held = pool.get().await.unwrap();
    held.query_one("SELECT 1", &[]).await.unwrap();

    cluster.stop().unwrap();

    // No server: the acquire fails (it does not hang) and is recorded.
    let failed = tokio::time::timeout(Duration::from_secs(15), pool.timeout_get(&wait(2_000)))
        .await
        .expect("acquire hung with the server down");
    assert!(
        matches!(failed, Err(PoolError::Backend(_))),
        "{:?}",
        failed.map(|_| ())
    );
    assert!(held.query_one("SELECT 1", &[]).await.is_err());
    drop(held);
    assert_eq!(pool.outstanding_count(), 0);
    let snapshot = pool.snapshot();
    let backend: u64 = snapshot.sites.iter().map(|s| s.failures.backend).sum();
    assert_eq!(backend, 1);

    cluster.start().unwrap();
    let client = pool.timeout_get(&wait(10_000)).await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    drop(client);
    assert_eq!(pool.outstanding_count(), 0);
    assert_eq!(pool.pool_status().in_use(), 0);
    let (checkouts, ended, failed) = totals(&pool);
    assert_eq!((checkouts, ended, failed), (2, 2, 1));
}
