//! What poolwatch records must not leak secrets: statement text is bounded,
//! bind parameter values are never recorded, and the connection password
//! appears nowhere in snapshots, reports, `Debug` output or events.
#![cfg(feature = "postgres")]
mod support;

use std::sync::OnceLock;
use std::time::Duration;

use poolwatch::WatchConfig;
use support::capture::Capture;
use support::pg;
use tokio_postgres::types::Type;

const PARAM_SECRET: &str = "hunter2-param-secret-7f3a";
/// Written into the statement text itself: the sanitizer must drop it.
const LITERAL_SECRET: &str = "literal-secret-in-sql-91c2";
const PASSWORD: &str = "s3cret";

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.subscriber()).unwrap();
        capture
    })
}

/// Everything poolwatch exposes about a pool, as text.
fn everything(pool: &poolwatch::postgres::Pool) -> String {
    let snapshot = pool.snapshot();
    let report = pool.report();
    let mut text = format!("{pool:?}\n{snapshot:?}\n{report:?}\n{report}\n");
    text.push_str(&report.timeline_svg());
    #[cfg(feature = "serde")]
    {
        text.push_str(&serde_json::to_string(&snapshot).unwrap());
        text.push_str(&serde_json::to_string(&report).unwrap());
    }
    text
}

fn events_text(pool: &str) -> String {
    capture()
        .events()
        .iter()
        .filter(|e| e.fields.get("pool").map(String::as_str) == Some(pool))
        .map(|e| format!("{e:?}\n"))
        .collect()
}

#[tokio::test]
async fn statement_text_is_bounded_and_parameters_never_recorded() {
    capture();
    let config = WatchConfig::builder()
        .pool_name("params")
        .hold_threshold(Duration::from_millis(1))
        .build()
        .unwrap();
    let pool = support::observed_pool(2, config);

    // A long statement: only its head is kept, and constants written into
    // the text are replaced by `?`.
    let tail_marker = "tail_marker_beyond_the_bound";
    let padding: Vec<String> = (0..40)
        .map(|i| format!("$1::text AS padding_{i}"))
        .collect();
    let long_sql = format!(
        "SELECT $1::text AS value, '{LITERAL_SECRET}' AS inline, {}, 1 AS {tail_marker}",
        padding.join(", ")
    );
    let mut client = pool.get().await.unwrap();
    let stmt = client.prepare(&long_sql).await.unwrap();
    let row = client.query_one(&stmt, &[&PARAM_SECRET]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), PARAM_SECRET);
    let held = pool.snapshot().outstanding;
    let statement = held[0].last_statement.clone().expect("statement recorded");
    assert!(
        statement.starts_with("SELECT $1::text AS value, ? AS inline, $1::text AS padding_0"),
        "{statement}"
    );
    assert!(
        statement.len() <= 512 && statement.ends_with('…'),
        "{} bytes: {statement}",
        statement.len()
    );
    assert!(!statement.contains(tail_marker), "{statement}");

    // Parameters through every instrumented call shape.
    let rows = client
        .query_typed("SELECT $1::text", &[(&PARAM_SECRET, Type::TEXT)])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), PARAM_SECRET);
    client
        .execute("SELECT $1::text", &[&PARAM_SECRET])
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.query("SELECT $1::text", &[&PARAM_SECRET]).await.unwrap();
    drop(tx); // rolled back by drop: a WARN with the last statement
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(client); // held past the threshold: a WARN

    // Dropped mid-call with a secret parameter: WARN with the statement.
    let client = pool.get().await.unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        client.query_typed(
            "SELECT pg_sleep(0.5), $1::text",
            &[(&PARAM_SECRET, Type::TEXT)],
        ),
    )
    .await;
    assert!(abandoned.is_err(), "the call should have been cut short");
    drop(client);

    // Returned inside a raw transaction after a secret parameter.
    let client = pool.get().await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .query_typed("SELECT $1::text", &[(&PARAM_SECRET, Type::TEXT)])
        .await
        .unwrap();
    let still_held = pool.snapshot().outstanding;
    assert_eq!(
        still_held[0].last_statement.as_deref(),
        Some("SELECT $1::text")
    );
    drop(client);

    let exposed = everything(&pool);
    assert!(!exposed.contains(PARAM_SECRET), "{exposed}");
    assert!(!exposed.contains(LITERAL_SECRET), "{exposed}");
    assert!(!exposed.contains(tail_marker));
    let events = events_text("params");
    assert!(
        events.contains("SELECT $1::text"),
        "the events carry statements: {events}"
    );
    assert!(events.contains("in flight"), "{events}");
    assert!(events.contains("inside a transaction"), "{events}");
    assert!(!events.contains(PARAM_SECRET), "{events}");
    assert!(!events.contains(LITERAL_SECRET), "{events}");
    assert!(!events.contains(tail_marker), "{events}");
}

fn url_with_password(host_dir: &str) -> String {
    format!("postgres://postgres:{PASSWORD}@/postgres?host={host_dir}&port=5432")
}

#[tokio::test]
async fn password_in_the_url_is_never_exposed() {
    capture();
    if std::env::var("DATABASE_URL").is_ok_and(|v| !v.trim().is_empty()) {
        eprintln!(
            "password_in_the_url_is_never_exposed: skipped: DATABASE_URL is set, and its server \
             may check passwords; the test needs the throwaway server (trust auth)"
        );
        return;
    }
    let config = pg::pg_config().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        other => panic!("the throwaway server listens on a socket: {other:?}"),
    };
    let mut cfg = deadpool_postgres::Config::new();
    cfg.url = Some(url_with_password(&host));
    cfg.pool = Some(deadpool_postgres::PoolConfig::new(1));
    let watch = WatchConfig::builder()
        .pool_name("password")
        .hold_threshold(Duration::from_millis(1))
        .slow_acquire(Duration::from_millis(1))
        .build()
        .unwrap();
    let pool = poolwatch::postgres::Pool::from_config(
        &cfg,
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
        watch,
    )
    .unwrap();
    let client = pool.get().await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    let guard_debug = format!("{client:?}");
    let held = everything(&pool);
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(client);
    // A failed acquire too (timeout while the only connection is held).
    let holder = pool.get().await.unwrap();
    let failed = pool
        .timeout_get(&deadpool::managed::Timeouts {
            wait: Some(Duration::from_millis(10)),
            ..Default::default()
        })
        .await;
    assert!(failed.is_err());
    drop(holder);

    // And a pool that cannot connect at all, with the password in its URL.
    let mut bad = deadpool_postgres::Config::new();
    bad.url = Some(url_with_password("/nonexistent-poolwatch-socket-dir"));
    let bad_pool = poolwatch::postgres::Pool::from_config(
        &bad,
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
        WatchConfig::builder()
            .pool_name("password")
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!(bad_pool.get().await.is_err());

    let exposed = format!(
        "{guard_debug}\n{held}\n{}\n{}\n{}",
        everything(&pool),
        everything(&bad_pool),
        events_text("password")
    );
    assert!(events_text("password").contains("held for"), "events seen");
    assert!(!exposed.contains(PASSWORD), "{exposed}");
}
