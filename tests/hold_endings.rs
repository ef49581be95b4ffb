//! How a hold ends: returned, detached with `take`, untracked with
//! `into_inner`, dropped while panicking.
#![cfg(feature = "postgres")]
mod support;

use poolwatch::{Guard, WatchConfig, WatchedPool};
use support::capture::Capture;
use support::pg;

fn watched(name: &str) -> poolwatch::postgres::Pool {
    let config = WatchConfig::builder().pool_name(name).build().unwrap();
    WatchedPool::new(pg::pool(2), config)
}

#[tokio::test]
async fn take_is_recorded_as_detached_not_leaked() {
    let pool = watched("take");
    let (guard, line) = (pool.get().await.unwrap(), line!());
    let client: deadpool_postgres::ClientWrapper = Guard::take(guard);
    // The connection still works and is now outside the pool.
    let row = client.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert_eq!(pool.outstanding_count(), 0);
    assert_eq!(pool.status().size, 0);
    let site = support::site_at(&pool, line);
    assert_eq!(site.outcomes.detached, 1);
    assert_eq!(site.outcomes.returned, 0);
    assert_eq!(site.outstanding, 0);
}

#[tokio::test]
async fn into_inner_is_recorded_as_untracked() {
    let pool = watched("into-inner");
    let (guard, line) = (pool.get().await.unwrap(), line!());
    let object: deadpool_postgres::Client = Guard::into_inner(guard);
    assert_eq!(pool.outstanding_count(), 0);
    // deadpool still counts it as in use until the object itself drops.
    assert_eq!(pool.status().available, 0);
    let row = object.query_one("SELECT 8", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 8);
    drop(object);
    assert_eq!(pool.status().available, 1);
    let site = support::site_at(&pool, line);
    assert_eq!(site.outcomes.untracked, 1);
    assert_eq!(site.outstanding, 0);
}

#[tokio::test]
async fn returned_guard_gives_the_connection_back() {
    let pool = watched("returned");
    let (guard, line) = (pool.get().await.unwrap(), line!());
    assert_eq!(pool.outstanding_count(), 1);
    assert_eq!(pool.status().available, 0);
    drop(guard);
    assert_eq!(pool.outstanding_count(), 0);
    assert_eq!(pool.status().available, 1);
    assert_eq!(support::site_at(&pool, line).outcomes.returned, 1);
}

#[tokio::test]
async fn drop_during_a_panic_is_flagged() {
    let (capture, _guard) = Capture::install();
    let pool = watched("panics");
    let task_pool = pool.clone();
    let task = tokio::spawn(async move {
        let (_client, line) = (task_pool.get().await.unwrap(), line!());
        if line > 0 {
            panic!("handler failed while holding a connection (line {line})");
        }
    });
    let error = task.await.unwrap_err();
    assert!(error.is_panic());
    assert_eq!(pool.outstanding_count(), 0);
    let warnings = capture.matching("dropped while panicking");
    assert_eq!(warnings.len(), 1, "{:?}", capture.events());
    assert_eq!(warnings[0].field("outcome"), "dropped_while_panicking");
    let line: u32 = warnings[0]
        .field("site")
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        support::site_at(&pool, line)
            .outcomes
            .dropped_while_panicking,
        1
    );
    // deadpool took the connection back.
    assert_eq!(pool.status().available, 1);
}
