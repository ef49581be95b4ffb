//! Metrics through the `metrics` facade: OpenTelemetry names, units and
//! labels, with correct values for a known sequence of checkouts.
mod support;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use deadpool::managed::Timeouts;
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use poolwatch::export;
use poolwatch::{WatchConfig, WatchedPool};
use support::pg;

/// Taking a snapshot drains the debugging recorder's histograms and
/// counters for every pool, so the tests that read it take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Per-site handles are registered when a site is first seen, so the
/// recorder must be global for this binary; tests use distinct pool names.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        snapshotter
    })
}

#[derive(Debug)]
struct Metric {
    kind: MetricKind,
    unit: Option<Unit>,
    labels: BTreeMap<String, String>,
    value: DebugValue,
}

/// Every metric of one pool, keyed by name (plus the distinguishing label).
fn metrics_of(pool_name: &str) -> Vec<(String, Metric)> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, unit, _, value)| {
            let labels: BTreeMap<String, String> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            if labels.get(export::POOL_NAME).map(String::as_str) != Some(pool_name) {
                return None;
            }
            let name = key.key().name().to_owned();
            Some((
                name,
                Metric {
                    kind: key.kind(),
                    unit,
                    labels,
                    value,
                },
            ))
        })
        .collect()
}

fn find<'a>(
    metrics: &'a [(String, Metric)],
    name: &str,
    label: Option<(&str, &str)>,
) -> &'a Metric {
    metrics
        .iter()
        .find(|(n, m)| {
            n == name && label.is_none_or(|(k, v)| m.labels.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("no metric {name} {label:?} in {metrics:#?}"))
}

fn samples(metric: &Metric) -> Vec<f64> {
    match &metric.value {
        DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect(),
        other => panic!("not a histogram: {other:?}"),
    }
}

/// The `db.client.operation.duration` samples of the series whose
/// operation name and error type are these (`None`: the label is absent).
fn operation_samples(
    metrics: &[(String, Metric)],
    operation: Option<&str>,
    error: Option<&str>,
) -> Vec<f64> {
    metrics
        .iter()
        .filter(|(name, m)| {
            name == export::OPERATION_DURATION
                && m.labels.get(export::DB_OPERATION_NAME).map(String::as_str) == operation
                && m.labels.get(export::ERROR_TYPE).map(String::as_str) == error
        })
        .flat_map(|(_, m)| samples(m))
        .collect()
}

fn counter(metric: &Metric) -> u64 {
    match metric.value {
        DebugValue::Counter(n) => n,
        ref other => panic!("not a counter: {other:?}"),
    }
}

fn gauge(metric: &Metric) -> f64 {
    match &metric.value {
        DebugValue::Gauge(v) => v.into_inner(),
        other => panic!("not a gauge: {other:?}"),
    }
}

#[tokio::test]
async fn known_sequence_gives_known_metrics() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-seq")
        .hold_threshold(Duration::from_millis(40))
        .build()
        .unwrap();
    let pool = WatchedPool::new(pg::pool(1), config);

    // 1: held 60 ms (past the 40 ms threshold); 2: returned at once.
    let first = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    drop(first);
    drop(pool.get().await.unwrap());
    // 3: held while another acquire times out after 100 ms.
    let third = pool.get().await.unwrap();
    let timeouts = Timeouts {
        wait: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    assert!(pool.timeout_get(&timeouts).await.is_err());
    drop(third);
    pool.record_metrics();

    let m = metrics_of("metrics-seq");
    let wait = find(&m, export::WAIT_TIME, None);
    assert_eq!(wait.kind, MetricKind::Histogram);
    assert_eq!(wait.unit, Some(Unit::Seconds));
    let waits = samples(wait);
    // Semconv's wait time is the time to obtain a connection: the failed
    // acquire is counted, not timed.
    assert_eq!(waits.len(), 3, "3 checkouts: {waits:?}");
    assert!(waits.iter().all(|w| *w < 0.1), "{waits:?}");

    let use_time = find(&m, export::USE_TIME, None);
    assert_eq!(use_time.unit, Some(Unit::Seconds));
    let holds = samples(use_time);
    assert_eq!(holds.len(), 3, "{holds:?}");
    assert!(holds.iter().any(|h| *h >= 0.06), "{holds:?}");

    assert_eq!(counter(find(&m, export::TIMEOUTS, None)), 1);
    assert_eq!(
        counter(find(
            &m,
            export::ACQUIRE_FAILURES,
            Some((export::ERROR_TYPE, "timeout"))
        )),
        1
    );
    assert_eq!(
        counter(find(
            &m,
            export::ACQUIRE_FAILURES,
            Some((export::ERROR_TYPE, "closed"))
        )),
        0
    );
    assert_eq!(
        counter(find(
            &m,
            export::HOLD_ENDINGS,
            Some((export::OUTCOME, "returned"))
        )),
        3
    );
    // The first (60 ms) and the third (held through the 100 ms timeout).
    assert_eq!(counter(find(&m, export::HOLDS_PAST_THRESHOLD, None)), 2);

    let idle = find(
        &m,
        export::CONNECTION_COUNT,
        Some((export::CONNECTION_STATE, "idle")),
    );
    let used = find(
        &m,
        export::CONNECTION_COUNT,
        Some((export::CONNECTION_STATE, "used")),
    );
    assert_eq!(idle.kind, MetricKind::Gauge);
    assert_eq!((gauge(idle), gauge(used)), (1.0, 0.0));
    assert_eq!(gauge(find(&m, export::CONNECTION_MAX, None)), 1.0);
    assert_eq!(gauge(find(&m, export::PENDING_REQUESTS, None)), 0.0);

    // No per-site label unless asked for.
    assert!(m
        .iter()
        .all(|(_, metric)| !metric.labels.contains_key(export::SITE)));
    assert!(m.iter().all(|(n, _)| n != export::SITE_USE_TIME));
}

#[tokio::test]
async fn used_gauge_counts_held_connections() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-used")
        .build()
        .unwrap();
    let pool = WatchedPool::new(pg::pool(3), config);
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    pool.record_metrics();
    let m = metrics_of("metrics-used");
    let used = find(
        &m,
        export::CONNECTION_COUNT,
        Some((export::CONNECTION_STATE, "used")),
    );
    assert_eq!(gauge(used), 2.0);
    drop((a, b));
}

#[tokio::test]
async fn per_site_labels_are_opt_in_and_capped() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-sites")
        .metrics_site_labels(1)
        .build()
        .unwrap();
    let pool = WatchedPool::new(pg::pool(2), config);
    let (first, line) = (pool.get().await.unwrap(), line!());
    drop(first);
    drop(pool.get().await.unwrap()); // a second site, past the cap of 1
    let m = metrics_of("metrics-sites");
    let per_site: Vec<_> = m
        .iter()
        .filter(|(n, _)| n == export::SITE_USE_TIME)
        .collect();
    assert_eq!(per_site.len(), 1, "{per_site:#?}");
    let site = &per_site[0].1.labels[export::SITE];
    assert!(site.starts_with(&format!("{}:{line}:", file!())), "{site}");
    assert_eq!(samples(&per_site[0].1).len(), 1);
    // The pool-wide series still counts both.
    assert_eq!(samples(find(&m, export::USE_TIME, None)).len(), 2);
}

/// A pool built by poolwatch and given no name is named as semconv
/// suggests: `server.address:server.port/db.namespace`.
#[tokio::test]
async fn unnamed_pools_are_named_after_their_server() {
    let pool = support::observed_pool(1, WatchConfig::default());
    let pg = pg::pg_config().unwrap();
    let name = pool.pool_name();
    let database = pg.get_dbname().or(pg.get_user()).unwrap();
    assert!(name.ends_with(&format!("/{database}")), "{name}");
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    assert!(name.contains(&format!(":{port}/")), "{name}");
    assert_ne!(name, WatchConfig::DEFAULT_POOL_NAME);
    // A name given is kept.
    let named = support::observed_pool(
        1,
        WatchConfig::builder().pool_name("orders").build().unwrap(),
    );
    assert_eq!(named.pool_name(), "orders");
}

/// Every call is timed on the wire, whichever way it was sent, with its
/// operation name and, for a failed call, its SQLSTATE; connections'
/// create time is recorded once per connection.
#[tokio::test]
async fn operations_and_connects_are_timed() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-operations")
        .build()
        .unwrap();
    let pool = support::observed_pool(2, config);
    let client = pool.get().await.unwrap();
    client
        .query_one("SELECT pg_sleep(0.03)", &[])
        .await
        .unwrap();
    // Through the deadpool client, the generic way.
    let plain: &deadpool_postgres::Client = &client;
    plain.execute("SELECT 1", &[]).await.unwrap();
    client
        .batch_execute("CREATE TEMP TABLE IF NOT EXISTS m_ops (id int PRIMARY KEY)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO m_ops VALUES (1)", &[])
        .await
        .unwrap();
    // A unique violation: 23505.
    let failed = client.execute("INSERT INTO m_ops VALUES (1)", &[]).await;
    assert!(failed.is_err());
    // A statement whose operation is further in: no operation name.
    client
        .query("WITH x AS (SELECT 1) SELECT * FROM x", &[])
        .await
        .unwrap();
    // A call's duration is recorded at the server's "ready", which can
    // reach the connection after its caller has the result: one more call
    // whose answer comes after it.
    client.simple_query("SHOW server_version").await.unwrap();
    drop(client);

    let m = metrics_of("metrics-operations");
    let operations: Vec<&Metric> = m
        .iter()
        .filter(|(n, _)| n == export::OPERATION_DURATION)
        .map(|(_, m)| m)
        .collect();
    for metric in &operations {
        assert_eq!(metric.unit, Some(Unit::Seconds));
        assert_eq!(metric.kind, MetricKind::Histogram);
        assert_eq!(
            metric
                .labels
                .get(export::DB_SYSTEM_NAME)
                .map(String::as_str),
            Some("postgresql")
        );
    }
    let of = |operation, error| operation_samples(&m, operation, error);
    let selects = of(Some("SELECT"), None);
    assert_eq!(selects.len(), 2, "{operations:#?}");
    assert!(selects.iter().any(|s| *s >= 0.03), "{selects:?}");
    assert_eq!(of(Some("INSERT"), None).len(), 1, "{operations:#?}");
    assert_eq!(
        of(Some("INSERT"), Some("23505")).len(),
        1,
        "{operations:#?}"
    );
    // CREATE is not among the names; nor is WITH.
    assert_eq!(of(None, None).len(), 2, "{operations:#?}");
    assert!(
        operations
            .iter()
            .all(|m| !m.labels.contains_key(export::SITE)),
        "no site label on operations"
    );

    let creates = samples(find(&m, export::CREATE_TIME, None));
    assert_eq!(creates.len(), 1, "one connection opened: {creates:?}");
    assert!(creates[0] > 0.0 && creates[0] < 10.0, "{creates:?}");
}

/// Calls pipelined on one connection (tokio-postgres sends a second
/// caller's request before the first is answered) are each timed from
/// their own request; a statement that fails to prepare is a failed call.
#[tokio::test]
async fn pipelined_and_failed_prepares_are_timed_per_call() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-pipelined")
        .build()
        .unwrap();
    let pool = support::observed_pool(1, config);
    let client = pool.get().await.unwrap();
    let slow = client.prepare("SELECT pg_sleep(0.05)").await.unwrap();
    let quick = client
        .prepare("UPDATE pg_class SET relname = relname WHERE false")
        .await
        .unwrap();
    // Work between a prepare and its first run is not the run's time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both on the wire before the first answer.
    let (a, b) = tokio::join!(client.query(&slow, &[]), client.execute(&quick, &[]));
    a.unwrap();
    b.unwrap();
    // A syntax error at prepare: 42601. The caller hears of it at the
    // error, before the server's "ready" that ends the call; the next
    // call's answer comes after that "ready".
    assert!(client.prepare("SELEC 1").await.is_err());
    client.simple_query("SHOW server_version").await.unwrap();
    drop(client);

    let m = metrics_of("metrics-pipelined");
    let of = |operation, error| operation_samples(&m, Some(operation), error);
    // The two explicit prepares are not calls of their own: only the two
    // runs count.
    let selects = of("SELECT", None);
    let updates = of("UPDATE", None);
    assert_eq!((selects.len(), updates.len()), (1, 1), "{m:#?}");
    assert!(selects[0] >= 0.05, "{selects:?}");
    // Queued behind the sleep, so at least as long as it.
    assert!(updates[0] >= 0.05, "{updates:?}");
    assert!(
        selects[0] < 0.3 && updates[0] < 0.3,
        "{selects:?} {updates:?}"
    );
    // `SELEC` is no operation name.
    let failed = operation_samples(&m, None, Some("42601"));
    assert_eq!(failed.len(), 1, "{m:#?}");
}

/// With the timeline off there is no sampler: `record_metrics` alone
/// brings the oldest wait and hold up to date, as a scrape would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_metrics_alone_sets_the_oldest_wait_and_hold() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-scrape")
        .timeline_tick(None)
        .build()
        .unwrap();
    let pool = support::observed_pool(1, config);
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.record_metrics();
    let m = metrics_of("metrics-scrape");
    let oldest_hold = gauge(find(&m, export::OLDEST_HOLD, None));
    let oldest_wait = gauge(find(&m, export::OLDEST_WAIT, None));
    assert!(oldest_hold >= 0.3, "oldest hold {oldest_hold}");
    assert!(
        (0.2..=oldest_hold).contains(&oldest_wait),
        "oldest wait {oldest_wait}"
    );
    drop(held);
    waiter.await.unwrap();
    pool.record_metrics();
    let m = metrics_of("metrics-scrape");
    assert_eq!(gauge(find(&m, export::OLDEST_WAIT, None)), 0.0);
    assert_eq!(gauge(find(&m, export::OLDEST_HOLD, None)), 0.0);
}

/// A pool that is fully stuck (no checkout, no return) still shows its
/// state: the sampler refreshes the gauges at every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_stay_current_while_the_pool_is_stuck() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-stuck")
        .timeline_tick(Some(Duration::from_millis(50)))
        .build()
        .unwrap();
    let pool = support::observed_pool(1, config);
    let held = pool.get().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { drop(pool.get().await.unwrap()) })
        })
        .collect();
    // Nothing is checked out or returned from here on; only ticks run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = metrics_of("metrics-stuck");
    assert_eq!(gauge(find(&m, export::PENDING_REQUESTS, None)), 3.0);
    let used = find(
        &m,
        export::CONNECTION_COUNT,
        Some((export::CONNECTION_STATE, "used")),
    );
    assert_eq!(gauge(used), 1.0);
    let oldest_hold = gauge(find(&m, export::OLDEST_HOLD, None));
    assert!(oldest_hold >= 0.4, "oldest hold {oldest_hold}");
    let oldest_wait = gauge(find(&m, export::OLDEST_WAIT, None));
    assert!(
        (0.3..=oldest_hold).contains(&oldest_wait),
        "oldest wait {oldest_wait}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = metrics_of("metrics-stuck");
    let later = gauge(find(&m, export::OLDEST_HOLD, None));
    assert!(
        later >= oldest_hold + 0.2,
        "the oldest hold climbs: {oldest_hold} then {later}"
    );
    drop(held);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics_of("metrics-stuck");
    assert_eq!(gauge(find(&m, export::PENDING_REQUESTS, None)), 0.0);
    assert_eq!(gauge(find(&m, export::OLDEST_HOLD, None)), 0.0);
    assert_eq!(gauge(find(&m, export::OLDEST_WAIT, None)), 0.0);
}

#[tokio::test]
async fn error_paths_and_busy_time_are_counted() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-errors")
        .build()
        .unwrap();
    let pool = support::observed_pool(2, config);

    // Busy time: one instrumented query.
    let client = pool.get().await.unwrap();
    client
        .query_one("SELECT pg_sleep(0.02)", &[])
        .await
        .unwrap();
    drop(client);

    // Rolled back by drop: a transaction dropped without commit/rollback.
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT 1", &[]).await.unwrap();
    drop(tx);
    drop(client);

    // Dropped while panicking.
    let task_pool = pool.clone();
    let panicked = tokio::spawn(async move {
        let _client = task_pool.get().await.unwrap();
        panic!("handler failed while holding a connection");
    })
    .await;
    assert!(panicked.is_err());

    let m = metrics_of("metrics-errors");
    let kind =
        |k: &'static str| counter(find(&m, export::ERROR_PATHS, Some((export::ERROR_PATH, k))));
    assert_eq!(kind("rolled_back_by_drop"), 1);
    assert_eq!(kind("dropped_while_panicking"), 1);
    assert_eq!(kind("in_flight_at_drop"), 0);
    let busy = samples(find(&m, export::BUSY_TIME, None));
    // Every hold on an observed connection has a busy time, zero when it
    // made no call (the one that panicked).
    assert_eq!(busy.len(), 3, "three observed holds: {busy:?}");
    assert!(busy.contains(&0.0), "{busy:?}");
    assert!(busy.iter().any(|b| *b >= 0.02), "{busy:?}");
}

#[cfg(feature = "leak-report")]
#[tokio::test]
async fn leaks_flagged_returned_and_never_returned_are_counted() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-leaks")
        .hold_threshold(Duration::from_millis(50))
        .build()
        .unwrap();
    let pool = WatchedPool::new(pg::pool(3), config);
    let returned = pool.get().await.unwrap();
    std::mem::forget(pool.get().await.unwrap());
    // Wait (generously: the machine is shared) for the watchdog to flag both.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut flagged = 0;
    let mut m;
    loop {
        m = metrics_of("metrics-leaks");
        if let Some((_, metric)) = m.iter().find(|(n, _)| n == export::LEAKS_FLAGGED) {
            flagged += counter(metric);
        }
        if flagged >= 2 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(flagged, 2);
    drop(returned);
    pool.close();
    let m = metrics_of("metrics-leaks");
    assert_eq!(counter(find(&m, export::RETURNED_AFTER_FLAGGED, None)), 1);
    assert_eq!(counter(find(&m, export::NEVER_RETURNED, None)), 1);
}

/// The waiters' metrics: the oldest waiter's age while it waits (set by the
/// sampler), cancelled acquires and nested checkouts counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_cancelled_and_nested_are_measured() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-waiters")
        .timeline_tick(Some(Duration::from_millis(50)))
        .build()
        .unwrap();
    let pool = support::observed_pool(1, config);
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = metrics_of("metrics-waiters");
    let oldest = gauge(find(&m, export::OLDEST_WAIT, None));
    assert!(oldest >= 0.2, "oldest wait {oldest}");
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(Duration::from_millis(20), pool.get()).await;
        assert!(gave_up.is_err());
    }
    drop(held);
    waiter.await.unwrap();
    // A task holding the pool's only connection asks for a second one.
    let nested = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let _first = pool.get().await.unwrap();
            tokio::time::timeout(Duration::from_millis(50), pool.get())
                .await
                .is_err()
        })
    };
    assert!(nested.await.unwrap());
    let m = metrics_of("metrics-waiters");
    assert_eq!(counter(find(&m, export::ACQUIRES_CANCELLED, None)), 4);
    assert_eq!(counter(find(&m, export::NESTED_CHECKOUTS, None)), 1);
}

/// While a caller queues on a runtime whose other tasks block it (a
/// `std::thread::sleep` in async code, the classic), the lag probe's wait
/// for its turn is recorded in `poolwatch.runtime.lag`.
#[tokio::test(flavor = "current_thread")]
async fn a_blocked_runtime_shows_in_the_lag_histogram() {
    let _turn = SERIAL.lock().await;
    snapshotter();
    let config = WatchConfig::builder()
        .pool_name("metrics-lag")
        .build()
        .unwrap();
    let pool = support::observed_pool(1, config);
    let held = pool.get().await.unwrap();
    let until = std::time::Instant::now() + Duration::from_millis(300);
    let blockers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                while std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10)); // blocks the runtime
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    waiter.await.unwrap();
    for blocker in blockers {
        blocker.await.unwrap();
    }
    let m = metrics_of("metrics-lag");
    let lag = samples(find(&m, export::RUNTIME_LAG, None));
    assert!(!lag.is_empty(), "the probe ran");
    assert!(
        lag.iter().any(|&waited| waited >= 0.008),
        "a blocked runtime reads as lag: {lag:?}"
    );
    assert_eq!(
        find(&m, export::RUNTIME_LAG, None).unit,
        Some(Unit::Seconds)
    );
}
