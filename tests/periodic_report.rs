//! `report_every`: the sampler thread emits the report through tracing.
#![cfg(feature = "postgres")]
mod support;

use std::time::{Duration, Instant};

use poolwatch::{WatchConfig, WatchedPool};
use support::capture::Capture;
use support::pg;

#[tokio::test]
async fn report_is_emitted_periodically_through_tracing() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.subscriber()).unwrap();
    let config = WatchConfig::builder()
        .pool_name("periodic")
        .timeline_tick(Some(Duration::from_millis(20)))
        .report_every(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let pool = WatchedPool::new(pg::pool(2), config);
    drop(pool.get().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let reports = loop {
        let found = capture.matching("poolwatch report: pool periodic");
        if found.len() >= 2 || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reports.len() >= 2, "{:?}", capture.events());
    assert_eq!(reports[0].level, tracing::Level::INFO);
    assert_eq!(reports[0].field("verdicts"), "healthy");
    assert_eq!(reports[0].field("pool"), "periodic");
}

#[test]
fn report_every_needs_the_timeline() {
    let error = WatchConfig::builder()
        .timeline_tick(None)
        .report_every(Some(Duration::from_secs(60)))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("report_every"), "{error}");
    let from_env = WatchConfig::from_vars([("POOLWATCH_REPORT_EVERY", "sometimes")]).unwrap_err();
    assert!(
        from_env.to_string().contains("POOLWATCH_REPORT_EVERY"),
        "{from_env}"
    );
}
