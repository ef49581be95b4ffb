//! Wait time is measured while the pool is exhausted; hold time is
//! measured; the at-return WARN fires past the hold threshold and not below.
#![cfg(feature = "postgres")]
mod support;

use std::time::Duration;

use poolwatch::{Guard, WatchConfig, WatchedPool};
use support::capture::Capture;
use support::pg;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn watched(max_size: usize, hold: Duration, slow: Duration) -> poolwatch::postgres::Pool {
    let config = WatchConfig::builder()
        .pool_name("timing")
        .hold_threshold(hold)
        .slow_acquire(slow)
        .build()
        .unwrap();
    WatchedPool::new(pg::pool(max_size), config)
}

#[tokio::test]
async fn wait_is_measured_when_the_pool_is_exhausted() {
    let (capture, _guard) = Capture::install();
    let pool = watched(1, Duration::from_secs(60), ms(100));
    let holder = pool.get().await.unwrap();
    let waiter_pool = pool.clone();
    let waiter = tokio::spawn(async move {
        let (guard, line) = (waiter_pool.get().await.unwrap(), line!());
        drop(guard);
        line
    });
    tokio::time::sleep(ms(300)).await;
    drop(holder);
    let waiter_line = waiter.await.unwrap();

    let sites = pool.snapshot().sites;
    let waiter_site = sites.iter().find(|s| s.site.line == waiter_line).unwrap();
    assert!(waiter_site.wait.max >= ms(250), "{waiter_site:?}");
    let slow = capture.matching("waited");
    assert_eq!(slow.len(), 1, "{:?}", capture.events());
    assert_eq!(slow[0].level, tracing::Level::WARN);
    assert!(slow[0].field_u64("waited_ms") >= 250);
    let expected_site = format!("{}:{waiter_line}:", file!());
    assert!(
        slow[0].field("site").starts_with(&expected_site),
        "{slow:?}"
    );
    assert_eq!(slow[0].field("pool"), "timing");
}

#[tokio::test]
async fn an_uncontended_acquire_is_not_reported_as_slow() {
    let (capture, _guard) = Capture::install();
    let pool = watched(2, Duration::from_secs(60), Duration::from_secs(30));
    for _ in 0..5 {
        drop(pool.get().await.unwrap());
    }
    assert!(capture.events().is_empty(), "{:?}", capture.events());
}

#[tokio::test]
async fn hold_time_is_measured() {
    let pool = watched(2, Duration::from_secs(60), Duration::from_secs(60));
    let (guard, line) = (pool.get().await.unwrap(), line!());
    tokio::time::sleep(ms(200)).await;
    let held_so_far = pool.snapshot().outstanding[0].held;
    assert!(held_so_far >= ms(200), "{held_so_far:?}");
    drop(guard);
    let site = support::site_at(&pool, line);
    assert_eq!(site.hold.count, 1);
    assert!(site.hold_total >= ms(200), "{site:?}");
    // The histogram keeps two significant figures.
    assert!(site.hold.max >= ms(198), "{site:?}");
    assert_eq!(site.outstanding, 0);
}

#[tokio::test]
async fn held_past_threshold_warns_at_return() {
    let (capture, _guard) = Capture::install();
    let pool = watched(2, ms(100), Duration::from_secs(60));
    let (guard, line) = (pool.get().await.unwrap(), line!());
    let id = Guard::guard_id(&guard);
    tokio::time::sleep(ms(200)).await;
    drop(guard);

    let warnings = capture.matching("connection held for");
    assert_eq!(warnings.len(), 1, "{:?}", capture.events());
    let warning = &warnings[0];
    assert_eq!(warning.level, tracing::Level::WARN);
    assert_eq!(warning.field("pool"), "timing");
    assert_eq!(warning.field_u64("guard"), id);
    assert_eq!(warning.field_u64("threshold_ms"), 100);
    assert!(warning.field_u64("held_ms") >= 200);
    assert!(warning
        .field("site")
        .contains(&format!("{}:{line}:", file!())));
    assert_eq!(warning.field("outcome"), "returned");
    // The pool's state at return: the guard was already given back.
    assert_eq!(warning.field_u64("in_use"), 0);
    assert_eq!(warning.field_u64("max_size"), 2);
}

#[tokio::test]
async fn held_below_threshold_does_not_warn() {
    let (capture, _guard) = Capture::install();
    let pool = watched(2, Duration::from_secs(30), Duration::from_secs(60));
    let guard = pool.get().await.unwrap();
    tokio::time::sleep(ms(50)).await;
    drop(guard);
    assert!(capture.events().is_empty(), "{:?}", capture.events());
}

#[tokio::test]
async fn threshold_changes_apply_to_later_returns() {
    let (capture, _guard) = Capture::install();
    let pool = watched(2, Duration::from_secs(30), Duration::from_secs(60));
    let guard = pool.get().await.unwrap();
    tokio::time::sleep(ms(60)).await;
    pool.set_hold_threshold(ms(20)).unwrap();
    assert_eq!(pool.hold_threshold(), ms(20));
    drop(guard);
    assert_eq!(capture.matching("connection held for").len(), 1);
}
