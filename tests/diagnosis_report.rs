//! The report as data: JSON round-trips, the SVG timeline is well-formed
//! and holds every series, the table names what it found.
mod support;

use std::time::Duration;

use poolwatch::{Report, VerdictKind, WatchConfig, WatchedPool};
use support::pg;

/// A pool with a few checkouts, one of them long and one still held, and
/// a timeline of several samples.
async fn busy_pool_report() -> Report {
    let config = WatchConfig::builder()
        .pool_name("report")
        .hold_threshold(Duration::from_millis(100))
        .timeline_tick(Some(Duration::from_millis(20)))
        .build()
        .unwrap();
    let pool = WatchedPool::new(pg::pool(3), config);
    for _ in 0..5 {
        let client = pool.get().await.unwrap();
        client.query_one("SELECT 1", &[]).await.unwrap();
    }
    let long = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(long);
    let _still_held = pool.get().await.unwrap();
    // Generous: wait until the sampler has taken several samples.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let report = pool.report();
        if report.timeline.len() >= 3 || std::time::Instant::now() > deadline {
            return report;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_json_round_trips() {
    let report = busy_pool_report().await;
    assert!(!report.sites.is_empty());
    assert!(report.timeline.len() >= 3, "{report}");
    let json = serde_json::to_string_pretty(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    // Machine-readable names, as documented.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["pool"], "report");
    assert!(value["verdicts"][0]["kind"].is_string());
    assert!(value["sites"][0]["hold_p99_ms"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svg_timeline_is_well_formed_with_every_series() {
    let report = busy_pool_report().await;
    let svg = report.timeline_svg();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    for series in ["in_use", "idle", "waiting", "max_size"] {
        let line = root
            .descendants()
            .find(|n| n.attribute("data-series") == Some(series))
            .unwrap_or_else(|| panic!("no {series} series"));
        let points = line.attribute("points").unwrap().split_whitespace().count();
        assert_eq!(points, report.timeline.len(), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_the_long_hold_and_the_flagged_guard() {
    let report = busy_pool_report().await;
    let kinds = report.kinds();
    // The 150 ms hold is past the 100 ms threshold; the held guard is
    // flagged once it has been out past the threshold too.
    assert!(kinds.contains(&VerdictKind::LongHold), "{report}");
    assert!(kinds.contains(&VerdictKind::Leak), "{report}");
    let table = report.to_string();
    assert!(table.contains("poolwatch report: pool report"), "{table}");
    assert!(table.contains("verdict: LONG HOLD"), "{table}");
    assert!(
        table.contains("guards held past the threshold right now"),
        "{table}"
    );
    assert!(table.contains(&format!("{}:", file!())), "{table}");
}
