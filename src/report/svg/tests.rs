//! The picture's model and drawing, on made-up reports.

use super::chart::*;
use super::layout::MAX_COLUMNS;
use super::text::*;
use super::*;
use crate::report::types::{EpisodeReport, Pressure, Scope, SiteSample, SiteShare, SiteTimeline};
use crate::snapshot::PoolStatus;
use crate::timeline::PressureSample;

fn sample(i: u64, in_use_ms: f64) -> PressureSample {
    PressureSample {
        offset_ms: (i + 1) * 1000,
        in_use: 2,
        idle: 2,
        waiting: 0,
        max_size: 4,
        checkouts: 3,
        interval_ms: 1000,
        connection_ms: in_use_ms,
        ..PressureSample::default()
    }
}

fn report(timeline: Vec<PressureSample>, sites: SiteTimeline) -> Report {
    let offset_ms = timeline
        .last()
        .map_or(0, |s| s.offset_ms.saturating_add(200));
    Report {
        pool: "p".to_owned(),
        hold_threshold_ms: 100.0,
        window_secs: 60.0,
        status: PoolStatus::default(),
        now: Scope {
            kind: "window".to_owned(),
            secs: 60.0,
            saturated: false,
            mean_offered_load: 0.0,
            peak_offered_load: 0.0,
        },
        verdicts: Vec::new(),
        episodes: Vec::new(),
        pressure: Pressure::default(),
        timeline,
        timeline_sites: sites,
        offset_ms,
        sites: Vec::new(),
        spans: Vec::new(),
        spans_visible: false,
        flagged: Vec::new(),
        holders: Vec::new(),
        waiters: Vec::new(),
        server: None,
    }
}

/// `n` sites, site `i` holding `(n - i) * unit` ms in every one of
/// `ticks` ticks, the tick keeping its busiest eight.
fn many_sites(n: usize, ticks: u64, unit: f64) -> Report {
    let names: Vec<String> = (0..n)
        .map(|i| format!("src/site_{i}.rs:{}:5", i + 1))
        .collect();
    let held = |i: usize| (n - i) as f64 * unit;
    let samples: Vec<SiteSample> = (0..ticks)
        .map(|_| SiteSample {
            sites: (0..n.min(8))
                .map(|i| SiteShare {
                    site: i,
                    connection_ms: held(i),
                })
                .collect(),
            other_ms: (8..n).map(held).sum(),
        })
        .collect();
    let total: f64 = (0..n).map(held).sum();
    let timeline = (0..ticks).map(|i| sample(i, total)).collect();
    report(
        timeline,
        SiteTimeline {
            sites: names,
            samples,
        },
    )
}

fn parse(svg: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}: {svg}"))
}

#[test]
fn bands_are_the_busiest_sites_then_the_rest_and_add_up() {
    let report = many_sites(12, 6, 10.0);
    let chart = Chart::of(&report);
    let series: Vec<&str> = chart.bands.iter().map(|b| b.series.as_str()).collect();
    assert_eq!(
        series,
        ["site-1", "site-2", "site-3", "site-4", "site-5", "other"]
    );
    assert_eq!(chart.bands[0].site.as_deref(), Some("src/site_0.rs:1:5"));
    assert_eq!(chart.columns.len(), 6);
    for (column, sample) in chart.columns.iter().zip(&report.timeline) {
        // Site 0 holds 120 ms of each 1000 ms tick: 0.12 connections.
        assert!((column.bands[0] - 0.12).abs() < 1e-9, "{column:?}");
        // The rest: sites 5..12 (70+60+…+10 ms).
        assert!((column.bands[5] - 0.28).abs() < 1e-9, "{column:?}");
        let stacked: f64 = column.bands.iter().sum();
        assert!((stacked - sample.mean_in_use()).abs() < 1e-9);
    }
}

#[test]
fn fifty_sites_draw_six_bands_in_order() {
    let report = many_sites(50, 30, 1.0);
    let svg = timeline(&report);
    let doc = parse(&svg);
    let bands: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("band"))
        .filter_map(|n| n.attribute("data-series"))
        .collect();
    assert_eq!(
        bands,
        ["site-1", "site-2", "site-3", "site-4", "site-5", "other"]
    );
    let first = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("band"))
        .unwrap();
    assert_eq!(first.attribute("data-site"), Some("src/site_0.rs:1:5"));
}

#[test]
fn one_site_has_no_other_band() {
    let report = many_sites(1, 3, 500.0);
    let chart = Chart::of(&report);
    assert_eq!(chart.bands.len(), 1);
    let doc_text = timeline(&report);
    let doc = parse(&doc_text);
    assert!(doc
        .descendants()
        .all(|n| n.attribute("data-series") != Some("other")));
}

#[test]
fn empty_and_single_sample_timelines_are_still_pictures() {
    for report in [
        report(Vec::new(), SiteTimeline::default()),
        many_sites(3, 1, 100.0),
        report(vec![PressureSample::default()], SiteTimeline::default()),
    ] {
        let svg = timeline(&report);
        let doc = parse(&svg);
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert!(svg.contains("pool p"));
        for n in doc.descendants() {
            for a in n.attributes() {
                assert!(
                    !a.value().contains("NaN") && !a.value().contains("inf"),
                    "{a:?}"
                );
            }
        }
    }
    let svg = timeline(&report(Vec::new(), SiteTimeline::default()));
    assert!(svg.contains("No samples yet"));
}

#[test]
fn huge_values_neither_panic_nor_break_the_picture() {
    let mut samples: Vec<PressureSample> = (0..4).map(|i| sample(i, f64::MAX)).collect();
    samples[1].max_size = usize::MAX;
    samples[2].peak_waiting = usize::MAX;
    samples[2].waited_ms = f64::INFINITY;
    samples[3].offset_ms = u64::MAX;
    samples[3].interval_ms = u64::MAX;
    let sites = SiteTimeline {
        sites: vec!["src/a.rs:1:1".to_owned()],
        samples: vec![SiteSample {
            sites: vec![SiteShare {
                site: 7, // out of range
                connection_ms: f64::NAN,
            }],
            other_ms: -5.0,
        }],
    };
    let mut r = report(samples, sites);
    r.offset_ms = 3;
    r.episodes.push(EpisodeReport {
        started_ago_secs: f64::MAX,
        ended_ago_secs: -1.0,
        duration_secs: 1.0,
        peak_waiting: 1,
        waited_secs: 0.0,
        failures: 0,
        cancelled: 0,
        mean_offered_load: 0.0,
        peak_offered_load: 0.0,
        verdicts: Vec::new(),
    });
    let svg = timeline(&r);
    let doc = parse(&svg);
    for n in doc.descendants() {
        for a in n.attributes() {
            assert!(
                !a.value().contains("NaN") && !a.value().contains("inf"),
                "{a:?}"
            );
        }
    }
}

#[test]
fn names_are_escaped() {
    let mut r = many_sites(2, 3, 100.0);
    r.pool = "a<b & \"c\" \u{1}".to_owned();
    r.timeline_sites.sites[0] = "src/<evil>&\"'.rs:1:2".to_owned();
    let svg = timeline(&r);
    let doc = parse(&svg);
    assert!(svg.contains("pool a&lt;b &amp; &quot;c&quot;"));
    assert!(!svg.contains("a<b"));
    let band = doc
        .descendants()
        .find(|n| n.attribute("data-series") == Some("site-1"))
        .unwrap();
    assert_eq!(band.attribute("data-site"), Some("src/<evil>&\"'.rs:1:2"));
}

#[test]
fn saturation_is_shaded_behind_the_data() {
    let mut r = many_sites(2, 10, 100.0);
    for s in &mut r.timeline[3..6] {
        s.saturated = true;
        s.peak_waiting = 3;
    }
    let chart = Chart::of(&r);
    assert_eq!(chart.saturated, vec![(3000.0, 6000.0)]);
    let svg = timeline(&r);
    let doc = parse(&svg);
    let order: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.attribute("class"))
        .filter(|c| ["episode", "band"].contains(c))
        .collect();
    let last_episode = order.iter().rposition(|c| *c == "episode").unwrap();
    let first_band = order.iter().position(|c| *c == "band").unwrap();
    assert!(last_episode < first_band, "{order:?}");
}

#[test]
fn long_timelines_are_added_up_into_at_most_a_column_per_two_pixels() {
    let r = many_sites(3, 3600, 100.0);
    let chart = Chart::of(&r);
    assert!(
        chart.columns.len() <= MAX_COLUMNS,
        "{}",
        chart.columns.len()
    );
    let covered: f64 = chart.columns.iter().map(|c| c.end_ms - c.start_ms).sum();
    assert!((covered - 3_600_000.0).abs() < 1.0, "{covered}");
    for c in &chart.columns {
        assert!((c.mean_in_use - 0.6).abs() < 1e-9, "{c:?}");
    }
    assert!(timeline(&r).len() < 200_000);
}

#[test]
fn site_labels_are_short_file_and_line() {
    assert_eq!(site_label("src/api.rs:88:9", 30), "src/api.rs:88");
    assert_eq!(
        site_label("/home/ci/.cargo/registry/src/index.crates.io-6f17d22bba15001f/sqlx-core-0.8.2/src/pool/inner.rs:120:17", 30),
        "…/src/pool/inner.rs:120"
    );
    assert_eq!(site_label("<other call sites>", 30), "<other call sites>");
    let long = format!("src/{}.rs:1:1", "x".repeat(60));
    let label = site_label(&long, 30);
    assert!(label.chars().count() <= 30, "{label}");
    assert!(label.ends_with("xx.rs:1"), "{label}");
}

#[test]
fn time_labels_are_round_and_count_back_from_the_report() {
    assert_eq!(ago(0.0), "now");
    assert_eq!(ago(30_000.0), "30s ago");
    assert_eq!(ago(90_000.0), "1m 30s ago");
    assert_eq!(ago(3_600_000.0), "1h ago");
    assert_eq!(ago(500.0), "500ms ago");
    for (span_ms, step_ms) in [
        (10e3, 2e3),
        (60e3, 10e3),
        (300e3, 60e3),
        (900e3, 300e3),
        (3600e3, 600e3),
    ] {
        assert_eq!(time_step(span_ms, 6.0), step_ms, "{span_ms}");
    }
}
