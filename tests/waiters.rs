//! Waiters reported while they wait, cancelled acquires, nested checkouts
//! — on a real PostgreSQL, as a service would hit them.
//!
//! The sampler thread emits the stuck-waiter warnings, so this binary
//! installs one global capturing subscriber; each test uses its own pool
//! name and reads only its pool's events.
#![cfg(feature = "postgres")]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use poolwatch::{VerdictKind, WatchConfig, WatchedPool};
use support::capture::Capture;
use support::pg;
use tokio::sync::Barrier;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn capture() -> &'static Capture {
    support::capture::global()
}

use support::capture::events_of;

fn watched(
    name: &str,
    max_size: usize,
    hold: Duration,
    slow: Duration,
) -> poolwatch::postgres::Pool {
    capture();
    let config = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(hold)
        .slow_acquire(slow)
        .timeline_tick(Some(ms(50)))
        .build()
        .unwrap();
    WatchedPool::new(pg::pool(max_size), config)
}

async fn eventually<T>(what: &str, deadline: Duration, mut found: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(ms(20)).await;
    }
}

/// Four callers stuck behind two holders with no wait timeout (the
/// deadpool-postgres default): the WARN comes while they wait, names
/// their site and the holders', and comes once per episode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_waiters_are_reported_while_they_wait() {
    let pool = watched("stuck", 2, Duration::from_secs(30), ms(200));
    let (a, holder_line) = (pool.get().await.unwrap(), line!());
    let b = pool.get().await.unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (client, line) = (pool.get().await.unwrap(), line!());
                client.query_one("SELECT 1", &[]).await.unwrap();
                line
            })
        })
        .collect();
    let warning = eventually("the stuck-waiter warning", Duration::from_secs(5), || {
        events_of("stuck", "caller(s) waiting for a connection").pop()
    })
    .await;
    // It came while they wait.
    assert!(waiters.iter().all(|w| !w.is_finished()), "{warning:?}");
    assert_eq!(warning.level, tracing::Level::WARN);
    assert_eq!(warning.field_u64("waiting"), 4, "{warning:?}");
    assert!(warning.field_u64("oldest_wait_ms") >= 200, "{warning:?}");
    let holder_site = format!("{}:{holder_line}:", file!());
    assert!(
        warning.field("holders").contains(&holder_site),
        "{warning:?}"
    );
    assert!(warning.field("waiters").starts_with("4 at "), "{warning:?}");
    // Snapshot and report list them.
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.waiters.len(), 4, "{snapshot:?}");
    assert!(snapshot
        .waiters
        .iter()
        .all(|w| w.waited >= ms(200) && !w.nested));
    let report = pool.report();
    assert_eq!(report.waiters.len(), 4, "{report}");
    assert!(report.now.saturated, "{report}");
    // One warning per episode (the reminder comes after 10 s).
    tokio::time::sleep(ms(400)).await;
    assert_eq!(
        events_of("stuck", "caller(s) waiting for a connection").len(),
        1
    );

    drop((a, b));
    let mut lines = Vec::new();
    for waiter in waiters {
        lines.push(waiter.await.unwrap());
    }
    let waiter_site = format!("{}:{}:", file!(), lines[0]);
    assert!(
        warning.field("waiters").contains(&waiter_site),
        "{warning:?}"
    );
    eventually("the all-served note", Duration::from_secs(5), || {
        events_of("stuck", "no caller waits past the threshold").pop()
    })
    .await;
}

/// Acquires given up by their callers (a request timeout around `get`)
/// while the pool's two connections leaked: every one is counted, a few
/// are reported with who holds the pool, and the verdict is the leak with
/// the cancelled callers as affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_are_counted_and_reported() {
    let pool = watched("cancel", 2, ms(100), Duration::from_secs(10));
    #[rustfmt::skip]
    let (leaked, leak_line) = ((pool.get().await.unwrap(), pool.get().await.unwrap()), line!());
    let mut cancel_line = 0;
    for _ in 0..200 {
        let (result, line) = (tokio::time::timeout(ms(2), pool.get()).await, line!());
        assert!(result.is_err(), "the pool is exhausted");
        cancel_line = line;
    }
    let site = support::site_at(&pool, cancel_line);
    assert_eq!(site.cancelled, 200, "{site:?}");
    assert_eq!(
        site.wait.count, 200,
        "every cancelled wait is in the distribution"
    );
    assert_eq!(site.checkouts, 0);
    let reported = events_of("cancel", "was cancelled by its caller");
    assert!(
        (1..=20).contains(&reported.len()),
        "{} events",
        reported.len()
    );
    let leak_site = format!("{}:{leak_line}:", file!());
    assert!(
        reported[0].field("holders").contains(&leak_site),
        "{:?}",
        reported[0]
    );
    // What the rate limit left out is said, by a later event or the
    // sampler's summary.
    let accounted = eventually("the left-out count", Duration::from_secs(8), || {
        let carried: u64 = events_of("cancel", "was cancelled by its caller")
            .iter()
            .map(|e| e.field_u64("suppressed"))
            .sum();
        let summarised: u64 = events_of("cancel", "left out by rate limits")
            .iter()
            .filter_map(|e| {
                let counts = e.field("counts");
                counts
                    .split(", ")
                    .find_map(|c| c.strip_prefix("acquire_cancelled="))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum();
        let total = reported.len() as u64 + carried + summarised;
        (total == 200).then_some(total)
    })
    .await;
    assert_eq!(accounted, 200);
    tokio::time::sleep(ms(150)).await; // the leaked pair is past the threshold
    let report = pool.report();
    assert_eq!(report.kinds()[0], VerdictKind::Leak, "{report}");
    let leak = &report.verdicts[0];
    assert!(leak.evidence[0].subject.starts_with(&leak_site), "{report}");
    let cancel_site = format!("{}:{cancel_line}:", file!());
    assert!(
        leak.affected
            .iter()
            .any(|e| e.subject.starts_with(&cancel_site) && e.detail.contains("200 gave up")),
        "{report}"
    );
    assert!(
        report
            .verdicts
            .iter()
            .flat_map(|v| &v.evidence)
            .all(|e| !e.subject.starts_with(&cancel_site)),
        "a cancelled caller is never a cause: {report}"
    );
    drop(leaked);
}

/// Two handlers each hold one connection of a two-connection pool and ask
/// the same pool for a second: both wait forever (here, until their
/// timeout). Reported with both sites while they wait; the verdict names
/// the self-deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_checkouts_are_reported_with_both_sites() {
    let pool = watched(
        "nested",
        2,
        Duration::from_secs(30),
        Duration::from_secs(30),
    );
    let barrier = Arc::new(Barrier::new(2));
    let handlers: Vec<_> = (0..2)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let (outer, outer_line) = (pool.get().await.unwrap(), line!());
                outer.query_one("SELECT 1", &[]).await.unwrap();
                barrier.wait().await;
                // A helper that takes its own connection, called while the
                // handler still holds one.
                let inner = tokio::time::timeout(Duration::from_millis(1500), pool.get()).await;
                let inner_line = line!() - 1;
                // The first to give up frees its connection for the other.
                (outer_line, inner_line, inner.is_err())
            })
        })
        .collect();
    let warnings = eventually(
        "both nested-checkout warnings",
        Duration::from_secs(5),
        || {
            let found = events_of("nested", "nested checkout");
            (found.len() >= 2).then_some(found)
        },
    )
    .await;
    let report = pool.report();
    let snapshot = pool.snapshot();
    let mut lines = Vec::new();
    for handler in handlers {
        lines.push(handler.await.unwrap());
    }
    let (outer_line, inner_line, _) = lines[0];
    let gave_up = lines.iter().filter(|(_, _, timed_out)| *timed_out).count() as u64;
    assert!(gave_up >= 1, "they waited for each other");
    let outer_site = format!("{}:{outer_line}:", file!());
    let inner_site = format!("{}:{inner_line}:", file!());
    for warning in &warnings {
        assert!(
            warning.field("site").starts_with(&inner_site),
            "{warning:?}"
        );
        assert!(
            warning.field("holder_site").starts_with(&outer_site),
            "{warning:?}"
        );
    }
    assert!(snapshot.waiters.iter().all(|w| w.nested), "{snapshot:?}");
    // Both holders' tasks wait for a second connection while holding them.
    assert_eq!(snapshot.outstanding.len(), 2, "{snapshot:?}");
    assert!(
        snapshot.outstanding.iter().all(|g| g.nested_wait),
        "{snapshot:?}"
    );
    let nested = report
        .verdicts
        .iter()
        .find(|v| v.kind == VerdictKind::NestedCheckout)
        .unwrap_or_else(|| panic!("no nested-checkout verdict:\n{report}"));
    assert!(
        nested.evidence[0].subject.starts_with(&inner_site),
        "{report}"
    );
    assert!(nested.reason.contains("self-deadlock"), "{report}");
    // Counted per site too, after the fact.
    let site = support::site_at(&pool, inner_line);
    assert_eq!(site.cancelled, gave_up, "{site:?}");
}

/// A checkout made while the thread is already unwinding (inside a
/// `Drop` run by a panic) and returned normally is a normal return, not a
/// hold dropped by the panic.
#[test]
fn a_checkout_made_while_unwinding_is_returned_normally() {
    capture();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = runtime.block_on(async {
        watched(
            "unwinding",
            1,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )
    });
    struct AuditOnDrop<'a> {
        pool: &'a poolwatch::postgres::Pool,
        runtime: &'a tokio::runtime::Runtime,
        line: &'a std::cell::Cell<u32>,
    }
    impl Drop for AuditOnDrop<'_> {
        fn drop(&mut self) {
            assert!(std::thread::panicking());
            self.runtime.block_on(async {
                let (client, line) = (self.pool.get().await.unwrap(), line!());
                client.execute("SELECT 1", &[]).await.unwrap();
                self.line.set(line);
            });
        }
    }
    let line = std::cell::Cell::new(0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _audit = AuditOnDrop {
            pool: &pool,
            runtime: &runtime,
            line: &line,
        };
        panic!("the request failed");
    }));
    assert!(result.is_err());
    let site = runtime.block_on(async { support::site_at(&pool, line.get()) });
    assert_eq!(site.outcomes.returned, 1, "{site:?}");
    assert_eq!(site.outcomes.dropped_while_panicking, 0, "{site:?}");
    let report = pool.report();
    assert!(
        !report
            .kinds()
            .iter()
            .any(|k| matches!(k, VerdictKind::Leak | VerdictKind::CleanupPath)),
        "{report}"
    );
}
