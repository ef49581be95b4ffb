//! The core on a pool with no database behind it (`support::counter`):
//! runs without the `postgres` feature. Checkouts, holds, waits,
//! cancellations, the snapshot and the report.
mod support;

use std::time::Duration;

use poolwatch::{VerdictKind, WatchConfig, WatchedPool};
use support::counter;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn watched(name: &str, max_size: usize, hold: Duration) -> WatchedPool<counter::Counter> {
    let config = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(hold)
        .slow_acquire(ms(50))
        .timeline_tick(Some(ms(20)))
        .build()
        .unwrap();
    WatchedPool::new(counter::pool(max_size), config)
}

#[tokio::test]
async fn checkouts_are_recorded_per_site_without_a_database() {
    let pool = watched("core", 2, Duration::from_secs(10));
    let mut line = 0;
    for _ in 0..10 {
        let (guard, l) = (pool.get().await.unwrap(), line!());
        line = l;
        assert!(**guard < 2, "objects are reused");
    }
    let snapshot = pool.snapshot();
    let site = snapshot
        .sites
        .iter()
        .find(|s| s.site.line == line)
        .expect("the call site");
    assert_eq!(site.checkouts, 10);
    assert_eq!(site.outcomes.returned, 10);
    assert_eq!(site.outstanding, 0);
    assert_eq!(site.database.observed_holds, 0, "nothing observed");
    assert_eq!(snapshot.lifetime.checkouts, 10);
    assert!(!snapshot.spans_visible);
    let report = pool.report();
    assert_eq!(report.kinds(), vec![VerdictKind::Healthy], "{report}");
    assert!(!report.spans_visible);
    assert!(
        report.to_string().contains("spans: none visible"),
        "{report}"
    );
}

#[tokio::test]
async fn waiters_and_cancelled_acquires_without_a_database() {
    let pool = watched("core-wait", 1, Duration::from_secs(10));
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let (result, line) = (tokio::time::timeout(ms(100), pool.get()).await, line!());
            (result.is_err(), line)
        })
    };
    tokio::time::sleep(ms(40)).await;
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.waiters.len(), 1, "{snapshot:?}");
    let (cancelled, line) = waiter.await.unwrap();
    assert!(cancelled);
    let site = support::site_at(&pool, line);
    assert_eq!(site.cancelled, 1);
    assert!(site.wait.max >= ms(90), "{site:?}");
    assert_eq!(pool.snapshot().waiters.len(), 0);
    drop(held);
}

/// Guards out past the threshold with no activity observed: a leak,
/// whose culprit is their site and whose victims (the callers that gave
/// up) are affected, not causes.
#[tokio::test]
async fn a_leak_names_its_site_and_not_its_victims() {
    let pool = watched("core-leak", 2, ms(50));
    #[rustfmt::skip]
    let (leaked, leak_line) = ((pool.get().await.unwrap(), pool.get().await.unwrap()), line!());
    let mut victim_line = 0;
    for _ in 0..5 {
        let (result, line) = (tokio::time::timeout(ms(20), pool.get()).await, line!());
        assert!(result.is_err());
        victim_line = line;
    }
    tokio::time::sleep(ms(80)).await;
    let report = pool.report();
    let leak = &report.verdicts[0];
    assert_eq!(leak.kind, VerdictKind::Leak, "{report}");
    let leak_site = format!("{}:{leak_line}:", file!());
    let victim_site = format!("{}:{victim_line}:", file!());
    assert!(leak.evidence[0].subject.starts_with(&leak_site), "{report}");
    assert!(
        leak.affected
            .iter()
            .any(|e| e.subject.starts_with(&victim_site)),
        "{report}"
    );
    for verdict in &report.verdicts {
        assert!(
            verdict
                .evidence
                .iter()
                .all(|e| !e.subject.starts_with(&victim_site)),
            "a victim named as a cause: {report}"
        );
    }
    drop(leaked);
}

/// A report taken before the first tick closes still sees a burst:
/// waiting peaks are tracked on the acquire path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shorter_than_a_tick_is_seen() {
    let config = WatchConfig::builder()
        .pool_name("core-burst")
        .timeline_tick(Some(Duration::from_secs(60)))
        .timeline_window(Duration::from_secs(600))
        .build()
        .unwrap();
    let pool = WatchedPool::new(counter::pool(4), config);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let guard = pool.get().await.unwrap();
                tokio::time::sleep(ms(20)).await;
                drop(guard);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let report = pool.report();
    assert_eq!(report.pressure.samples, 0, "no tick closed yet");
    assert!(report.now.saturated, "{report}");
    assert_eq!(report.pressure.peak_in_use, 4, "{report}");
    assert_eq!(
        report.kinds(),
        vec![VerdictKind::ConcurrencyGrowth],
        "{report}"
    );
    assert!(report.now.mean_offered_load >= 4.0 * 0.8, "{report}");
}

#[tokio::test]
async fn runtime_thresholds_have_the_builders_bounds() {
    let pool = watched("core-bounds", 1, Duration::from_secs(1));
    let error = pool.set_hold_threshold(Duration::ZERO).unwrap_err();
    assert!(error.to_string().contains("hold_threshold"), "{error}");
    assert!(pool.set_slow_acquire(Duration::from_micros(10)).is_err());
    assert_eq!(pool.hold_threshold(), Duration::from_secs(1), "unchanged");
    pool.set_hold_threshold(ms(5)).unwrap();
    assert_eq!(pool.hold_threshold(), ms(5));
}
