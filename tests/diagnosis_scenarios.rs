//! Each demo scenario gets the right verdict, naming the right culprit.
mod support;

use poolwatch::VerdictKind;
use support::scenarios::{self, Scenario};

/// Spans are only known to poolwatch through a subscriber that tracks
/// them, as in a real service: a registry with no output.
fn with_spans() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry())
            .expect("no other global subscriber in this binary");
    });
}

fn assert_verdict(scenario: &Scenario, kind: VerdictKind) {
    let report = &scenario.report;
    let verdict = report
        .verdicts
        .iter()
        .find(|v| v.kind == kind)
        .unwrap_or_else(|| panic!("{}: no {kind} verdict in\n{report}", scenario.name));
    assert!(
        verdict
            .evidence
            .iter()
            .any(|e| e.subject.starts_with(&scenario.culprit)),
        "{}: {kind} does not name {}:\n{report}",
        scenario.name,
        scenario.culprit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_on_an_error_path_is_a_leak_at_the_checkout_site() {
    with_spans();
    let scenario = scenarios::leak_on_error_path().await;
    assert_verdict(&scenario, VerdictKind::Leak);
    let report = &scenario.report;
    assert_eq!(report.flagged.len(), 3, "{report}");
    let site = report
        .sites
        .iter()
        .find(|s| s.site.starts_with(&scenario.culprit))
        .unwrap();
    assert_eq!(site.error_paths.rolled_back_by_drop, 3, "{report}");
    assert!(!report.kinds().contains(&VerdictKind::Healthy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_across_a_slow_call_is_a_long_hold() {
    with_spans();
    let scenario = scenarios::transaction_across_slow_call().await;
    assert_verdict(&scenario, VerdictKind::LongHold);
    let report = &scenario.report;
    assert!(!report.kinds().contains(&VerdictKind::Leak), "{report}");
    let site = report
        .sites
        .iter()
        .find(|s| s.site.starts_with(&scenario.culprit))
        .unwrap();
    let busy = site.busy_ratio.expect("busy time measured");
    assert!(busy < 0.5, "mostly outside the database: {busy}\n{report}");
    assert!(
        site.transaction_idle_ms > site.transaction_ms / 2.0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_hogging_connections_is_a_long_hold_naming_the_job() {
    with_spans();
    let scenario = scenarios::job_hogging_connections().await;
    assert_verdict(&scenario, VerdictKind::LongHold);
    let report = &scenario.report;
    assert!(!report.kinds().contains(&VerdictKind::Leak), "{report}");
    assert_eq!(report.spans[0].span, "nightly_export", "{report}");
    assert!(report.spans.iter().any(|s| s.span == "handle_request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_demand_is_concurrency_growth() {
    with_spans();
    let scenario = scenarios::burst_of_demand().await;
    assert_verdict(&scenario, VerdictKind::ConcurrencyGrowth);
    let report = &scenario.report;
    assert_eq!(
        report.kinds(),
        vec![VerdictKind::ConcurrencyGrowth],
        "{report}"
    );
    assert!(report.pressure.samples >= 3, "{report}");
    assert_eq!(report.pressure.peak_in_use, 4, "{report}");
}
