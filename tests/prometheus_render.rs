//! The Prometheus text a service scrapes, rendered by
//! metrics-exporter-prometheus installed the way `examples/service` and
//! `poolwatch::export` recommend.
mod support;

use poolwatch::{export, WatchConfig};

/// Rendered as the example service and `deploy/` expect: histograms with
/// buckets (sums across instances), `_seconds` and `_total` suffixes, the
/// semconv label names.
#[tokio::test]
async fn prometheus_render_aggregates_across_instances() {
    // Installed as a service installs it: globally, before the pool (the
    // connections register their per-operation series as they first run).
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(export::DURATION_BUCKETS)
        .unwrap()
        .install_recorder()
        .unwrap();
    let config = WatchConfig::builder().pool_name("prom").build().unwrap();
    let pool = support::observed_pool(2, config);
    // A failed acquire, so every family has a series.
    let held = pool.get().await.unwrap();
    let short = deadpool::managed::Timeouts {
        wait: Some(std::time::Duration::from_millis(20)),
        ..Default::default()
    };
    let other = pool.get().await.unwrap();
    assert!(pool.timeout_get(&short).await.is_err());
    drop(other);
    held.query_one("SELECT 1", &[]).await.unwrap();
    drop(held);
    pool.record_metrics();
    let text = handle.render();
    for name in [
        "db_client_connection_count{",
        "db_client_connection_max{",
        "db_client_connection_pending_requests{",
        "db_client_connection_timeouts_total{",
        "db_client_connection_wait_time_seconds_bucket{",
        "db_client_connection_use_time_seconds_bucket{",
        "db_client_connection_create_time_seconds_bucket{",
        "db_client_operation_duration_seconds_bucket{",
        "poolwatch_acquire_failures_total{",
        "poolwatch_hold_endings_total{",
        "poolwatch_hold_busy_time_seconds_bucket{",
        "poolwatch_hold_oldest_seconds{",
        "poolwatch_acquire_oldest_wait_seconds{",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(!text.contains("quantile="), "a summary slipped in:\n{text}");
    assert!(text.contains("le=\"0.0001\""), "{text}");
    assert!(text.contains("le=\"60\""), "{text}");
    assert!(
        text.contains("db_client_connection_pool_name=\"prom\""),
        "{text}"
    );
    assert!(
        text.contains("db_client_connection_state=\"idle\""),
        "{text}"
    );
    assert!(text.contains("error_type=\"timeout\""), "{text}");
    assert!(text.contains("db_system_name=\"postgresql\""), "{text}");
    assert!(text.contains("db_operation_name=\"SELECT\""), "{text}");
}
