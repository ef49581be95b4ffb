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

/// The x coordinates of a `points` attribute.
fn xs(points: &str) -> Vec<f64> {
    points
        .split_whitespace()
        .map(|p| p.split(',').next().unwrap().parse().unwrap())
        .collect()
}

/// `(x, y, width, height)` of the plot rectangle of `panel`.
fn plot_rect(doc: &roxmltree::Document<'_>, panel: &str) -> (f64, f64, f64, f64) {
    let rect = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("plot") && n.attribute("data-panel") == Some(panel))
        .unwrap_or_else(|| panic!("no {panel} plot"));
    let num = |a: &str| rect.attribute(a).unwrap().parse::<f64>().unwrap();
    (num("x"), num("y"), num("width"), num("height"))
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
    let (left, _, width, _) = plot_rect(&doc, "main");
    // The busiest site's band (bottom of the stack), the pool's size and
    // open connections, callers waiting: drawn, inside the plot, and in
    // the legend.
    for series in ["site-1", "max_size", "open", "waiting", "waiting_mean"] {
        let drawn: Vec<_> = root
            .descendants()
            .filter(|n| {
                n.attribute("points").is_some()
                    && n.ancestors()
                        .any(|a| a.attribute("data-series") == Some(series))
                    && !n
                        .ancestors()
                        .any(|a| a.attribute("class") == Some("legend"))
            })
            .collect();
        if series != "waiting" {
            // Nobody waited here: the waiting area may be empty.
            assert!(!drawn.is_empty(), "no {series} series");
        }
        for shape in drawn {
            let xs = xs(shape.attribute("points").unwrap());
            assert!(xs.len() >= 2, "{series}");
            assert!(
                xs.iter().all(|x| *x >= left && *x <= left + width),
                "{series} outside the plot: {xs:?}"
            );
        }
        assert!(
            root.descendants()
                .any(|n| n.attribute("class") == Some("legend")
                    && n.attribute("data-series") == Some(series)),
            "{series} not in the legend"
        );
    }
    assert_eq!(report.timeline_sites.samples.len(), report.timeline.len());
}

// The workload of the timeline picture: a job that holds connections
// idle in a transaction, four request handlers, callers waiting.

async fn job(pool: &poolwatch::postgres::Pool, hold: Duration) {
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.query_one("SELECT 1", &[]).await.unwrap();
    tokio::time::sleep(hold).await;
    tx.commit().await.unwrap();
}

async fn request_users(pool: &poolwatch::postgres::Pool) {
    let client = pool.get().await.unwrap();
    client
        .query_one("SELECT pg_sleep(0.03)", &[])
        .await
        .unwrap();
}

async fn request_orders(pool: &poolwatch::postgres::Pool) {
    let client = pool.get().await.unwrap();
    client
        .query_one("SELECT pg_sleep(0.02)", &[])
        .await
        .unwrap();
}

async fn request_search(pool: &poolwatch::postgres::Pool) {
    let client = pool.get().await.unwrap();
    client
        .query_one("SELECT pg_sleep(0.015)", &[])
        .await
        .unwrap();
}

async fn request_health(pool: &poolwatch::postgres::Pool) {
    let client = pool.get().await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
}

/// Calm, then a job holding five of six connections for 2.5 s while the
/// requests keep coming (a saturation episode), then calm again until the
/// episode is over.
async fn workload_report() -> Report {
    let config = WatchConfig::builder()
        .pool_name("orders-db")
        .hold_threshold(Duration::from_millis(500))
        .timeline_tick(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let pool = support::observed_pool(6, config);
    // Open the connections first, so that the start is not a wait for
    // them.
    let mut warm = Vec::new();
    for _ in 0..6 {
        warm.push(pool.get().await.unwrap());
    }
    drop(warm);
    let started = std::time::Instant::now();
    let run_for = Duration::from_millis(7000);
    let mut tasks = tokio::task::JoinSet::new();
    for kind in 0..4u64 {
        for worker in 0..2u64 {
            let pool = pool.clone();
            tasks.spawn(async move {
                // Spread out, each handler at its own pace.
                tokio::time::sleep(Duration::from_millis(worker * 23 + kind * 7)).await;
                while started.elapsed() < run_for {
                    match kind {
                        0 => request_users(&pool).await,
                        1 => request_orders(&pool).await,
                        2 => request_search(&pool).await,
                        _ => request_health(&pool).await,
                    }
                    tokio::time::sleep(Duration::from_millis(50 + kind * 10)).await;
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let pool = pool.clone();
        jobs.spawn(async move { job(&pool, Duration::from_millis(2500)).await });
    }
    while jobs.join_next().await.is_some() {}
    while tasks.join_next().await.is_some() {}
    // Calm until the episode is over (a second and two calm ticks).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = pool.report();
        if !report.episodes.is_empty() || std::time::Instant::now() > deadline {
            return report;
        }
    }
}

/// Where the pictures of the tests go (under `target/`, out of git).
fn picture(name: &str, svg: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, svg).unwrap();
    eprintln!("timeline picture: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_picture_stacks_the_sites_of_a_real_workload() {
    let report = workload_report().await;
    let svg = report.timeline_svg();
    picture("timeline-workload.svg", &svg);
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let by_site = &report.timeline_sites;

    // Per tick, the sites kept and the rest add up to the pool's
    // connection time (rounding aside): the stack's top is the pool-wide
    // mean in use.
    assert_eq!(by_site.samples.len(), report.timeline.len());
    for (sample, split) in report.timeline.iter().zip(&by_site.samples) {
        assert!(split.sites.len() <= 8);
        let stacked: f64 =
            split.sites.iter().map(|s| s.connection_ms).sum::<f64>() + split.other_ms;
        assert!(
            (stacked - sample.connection_ms).abs() < 1e-6 * sample.connection_ms.max(1.0),
            "{stacked} vs {}",
            sample.connection_ms
        );
        for pair in split.sites.windows(2) {
            assert!(
                pair[0].connection_ms >= pair[1].connection_ms,
                "busiest first"
            );
        }
    }

    // The job's site held most connection time: the first band and the
    // first legend entry; the request handlers follow, each its own band.
    assert!(
        by_site.sites[0].contains("diagnosis_report.rs"),
        "{:?}",
        by_site.sites
    );
    let job_line = line_of("let mut client = pool.get().await.unwrap();");
    assert!(
        by_site.sites[0].contains(&format!(":{job_line}:")),
        "the job first: {:?}",
        by_site.sites
    );
    let bands: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("band"))
        .collect();
    let series: Vec<&str> = bands
        .iter()
        .filter_map(|n| n.attribute("data-series"))
        .collect();
    assert_eq!(
        series,
        ["site-1", "site-2", "site-3", "site-4", "site-5", "other"]
    );
    assert_eq!(
        bands[0].attribute("data-site"),
        Some(by_site.sites[0].as_str())
    );
    let legend: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("legend"))
        .filter_map(|n| n.attribute("data-series"))
        .collect();
    assert_eq!(&legend[..6], series.as_slice());

    // The episode: callers waited, and it is shaded in both panels, behind
    // the bands.
    assert!(!report.episodes.is_empty(), "{report}");
    assert!(report.pressure.peak_waiting > 0, "{report}");
    let classes: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.attribute("class"))
        .collect();
    let shaded = classes.iter().filter(|c| **c == "episode").count();
    assert!(shaded >= 2, "{classes:?}");
    assert!(
        classes.iter().rposition(|c| *c == "episode") < classes.iter().position(|c| *c == "band")
    );
    assert!(doc
        .descendants()
        .any(|n| n.attribute("data-series") == Some("waiting") && n.attribute("points").is_some()));

    // The legend is right of both plots.
    let (left, _, width, _) = plot_rect(&doc, "main");
    let (wait_left, _, wait_width, _) = plot_rect(&doc, "waiting");
    assert_eq!((left, width), (wait_left, wait_width));
    for entry in doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("legend"))
    {
        for x in entry
            .descendants()
            .filter_map(|n| n.attribute("x").or(n.attribute("x1")))
        {
            let x: f64 = x.parse().unwrap();
            assert!(x > left + width, "legend at {x} inside the plot");
        }
    }
    // The time axis counts back from the report.
    let labels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("x-label"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(labels.first(), Some(&"now"), "{labels:?}");
    assert!(labels.len() >= 4 && labels.len() <= 12, "{labels:?}");
}

/// The line of this file holding `text` (the first).
fn line_of(text: &str) -> usize {
    include_str!("diagnosis_report.rs")
        .lines()
        .position(|l| l.contains(text))
        .unwrap()
        + 1
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

/// `report` with its timeline replaced, through its JSON form: `ticks`
/// ticks of `tick_ms`, `sites` call sites (a few with long paths or
/// characters XML must escape) whose use falls off with their rank, a job
/// that holds most of the pool through the middle fifth (callers wait: an
/// episode), and a gap (the sampler paused) just after it.
fn synthetic(report: &Report, ticks: u64, tick_ms: u64, sites: usize) -> Report {
    use serde_json::json;
    let max_size = 20usize;
    let names: Vec<String> = (0..sites)
        .map(|i| match i % 7 {
            3 => format!(
                "/home/ci/.cargo/registry/src/index.crates.io-6f17d22bba15001f/sqlx-core-0.8.{i}/src/pool/inner.rs:{}:17",
                100 + i
            ),
            5 => format!("src/handlers/<generic T & \"U\">/mod_{i}.rs:{}:9", 10 + i),
            _ => format!("src/api/handler_{i}.rs:{}:13", 40 + i),
        })
        .collect();
    let job = "src/jobs/nightly_reindex.rs:42:17".to_owned();
    let episode = (ticks * 2 / 5, ticks * 3 / 5);
    let gap = (episode.1 + ticks / 20, episode.1 + ticks / 10);
    let mut timeline = Vec::new();
    let mut split = Vec::new();
    for tick in 0..ticks {
        if tick >= gap.0 && tick < gap.1 {
            continue;
        }
        let in_job = tick >= episode.0 && tick < episode.1;
        let wave = 1.0 + 0.5 * ((tick as f64) / 37.0).sin();
        let mut held: Vec<(usize, f64)> = (0..sites)
            .map(|i| (i + 1, tick_ms as f64 * 2.5 * wave / (i as f64 + 1.5)))
            .collect();
        if in_job {
            held.push((0, tick_ms as f64 * 16.0));
            for h in held.iter_mut().take(sites) {
                h.1 *= 0.15;
            }
        }
        held.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = held.iter().map(|h| h.1).sum();
        let kept: Vec<_> = held.iter().take(8).collect();
        let other: f64 = held.iter().skip(8).map(|h| h.1).sum();
        let waiting = if in_job { 3 + (tick % 5) as usize } else { 0 };
        timeline.push(json!({
            "offset_ms": (tick + 1) * tick_ms,
            "in_use": (total / tick_ms as f64).round() as usize,
            "idle": 2,
            "waiting": waiting,
            "peak_waiting": waiting * 2,
            "max_size": max_size,
            "checkouts": 40,
            "interval_ms": tick_ms,
            "connection_ms": total,
            "busy_ms": total / 2.0,
            "idle_in_transaction_ms": 0.0,
            "waited_ms": waiting as f64 * tick_ms as f64 * 0.6,
            "saturated": in_job,
        }));
        split.push(json!({
            "sites": kept.iter().map(|(site, ms)| json!({"site": site, "connection_ms": ms})).collect::<Vec<_>>(),
            "other_ms": other,
        }));
    }
    let mut all_names = vec![job];
    all_names.extend(names);
    let now_ms = ticks * tick_ms + tick_ms / 2;
    let mut value = serde_json::to_value(report).unwrap();
    value["timeline"] = json!(timeline);
    value["timeline_sites"] = json!({"sites": all_names, "samples": split});
    value["offset_ms"] = json!(now_ms);
    value["pool"] = json!("main <primary>");
    let verdict = json!({
        "kind": "LongHold",
        "reason": "one job held most of the pool",
        "evidence": [{"subject": "src/jobs/nightly_reindex.rs:42:17", "detail": "14 connections"}],
        "affected": [],
    });
    value["verdicts"] = json!([{
        "kind": "Healthy", "reason": "nothing to fix", "evidence": [], "affected": []
    }]);
    let ago = |tick: u64| (now_ms - tick * tick_ms) as f64 / 1000.0;
    value["episodes"] = json!([{
        "started_ago_secs": ago(episode.0),
        "ended_ago_secs": ago(episode.1),
        "duration_secs": ago(episode.0) - ago(episode.1),
        "peak_waiting": 14,
        "waited_secs": 100.0,
        "failures": 0,
        "cancelled": 0,
        "mean_offered_load": 20.0,
        "peak_offered_load": 24.0,
        "verdicts": [verdict],
    }]);
    value["pressure"]["max_size"] = json!(max_size);
    value["pressure"]["peak_in_use"] = json!(max_size);
    value["pressure"]["peak_waiting"] = json!(14);
    value["pressure"]["mean_in_use"] = json!(9.5);
    value["pressure"]["saturated_share"] = json!(0.2);
    serde_json::from_value(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_picture_scales_from_ten_seconds_to_an_hour() {
    let base = busy_pool_report().await;
    for (name, ticks, tick_ms, sites, labels) in [
        (
            "timeline-hour-50-sites.svg",
            3600,
            1000,
            50,
            ["now", "15m ago", "1h ago"],
        ),
        (
            "timeline-15min.svg",
            900,
            1000,
            12,
            ["now", "5m ago", "15m ago"],
        ),
        (
            "timeline-10s.svg",
            100,
            100,
            3,
            ["now", "2s ago", "10s ago"],
        ),
    ] {
        let report = synthetic(&base, ticks, tick_ms, sites);
        let svg = report.timeline_svg();
        picture(name, &svg);
        assert!(svg.len() < 300_000, "{name}: {} bytes", svg.len());
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        let bands: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("band"))
            .filter_map(|n| n.attribute("data-series"))
            .collect();
        let expected: &[&str] = if sites >= 5 {
            &["site-1", "site-2", "site-3", "site-4", "site-5", "other"]
        } else {
            &["site-1", "site-2", "site-3", "site-4"]
        };
        assert_eq!(bands, expected, "{name}");
        let first = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("band"))
            .unwrap();
        assert_eq!(
            first.attribute("data-site"),
            Some("src/jobs/nightly_reindex.rs:42:17"),
            "{name}"
        );
        let shown: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("x-label"))
            .filter_map(|n| n.text())
            .collect();
        assert!(shown.len() >= 4 && shown.len() <= 12, "{name}: {shown:?}");
        for label in labels {
            assert!(shown.contains(&label), "{name}: {label} not in {shown:?}");
        }
        assert!(
            doc.descendants()
                .any(|n| n.attribute("class") == Some("episode")),
            "{name}"
        );
    }
}
