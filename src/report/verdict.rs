//! The verdict rules (documented in the module docs of [`super`]).

use std::fmt;

use super::{Report, SiteLine};

/// What the evidence says about the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum VerdictKind {
    /// Connections borrowed and not given back, or given back by an error
    /// path: fix the code path.
    Leak,
    /// Connections held across unrelated work or open transactions: shorten
    /// the hold.
    LongHold,
    /// Holds are short; demand × hold time approaches the pool size: grow
    /// the pool or smooth the demand.
    ConcurrencyGrowth,
    /// Nothing to fix.
    Healthy,
}

impl VerdictKind {
    /// The name used in reports: `leak`, `long hold`, `concurrency growth`,
    /// `healthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Leak => "leak",
            VerdictKind::LongHold => "long hold",
            VerdictKind::ConcurrencyGrowth => "concurrency growth",
            VerdictKind::Healthy => "healthy",
        }
    }
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verdict with the evidence that carries it.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Verdict {
    /// Which verdict.
    pub kind: VerdictKind,
    /// One sentence: why.
    pub reason: String,
    /// The call sites and spans that carry it, with their numbers.
    pub evidence: Vec<Evidence>,
}

/// A site or span and what it did.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Evidence {
    /// `file:line:column`, or `span <name>`, or `pool`.
    pub subject: String,
    /// What it did, with numbers.
    pub detail: String,
}

fn evidence(subject: impl Into<String>, detail: String) -> Evidence {
    Evidence {
        subject: subject.into(),
        detail,
    }
}

/// Mean hold from which a low busy ratio counts as a long hold.
const LONG_MEAN_HOLD_MS: f64 = 50.0;
/// Busy ratio under which a hold is mostly outside the database.
const LOW_BUSY_RATIO: f64 = 0.5;
/// Idle share of transaction time that counts, and the minimum total.
const IDLE_TRANSACTION_SHARE: f64 = 0.5;
const MIN_TRANSACTION_MS: f64 = 100.0;
/// Share of all connection time that makes a span "the" holder.
const DOMINANT_SPAN_SHARE: f64 = 0.5;
/// Little's law demand, as a share of max size, that counts as growth.
const DEMAND_SHARE: f64 = 0.8;
/// A p99 wait that counts as waiters seen.
const WAITERS_P99_MS: f64 = 10.0;

pub(super) fn diagnose(report: &Report) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    verdicts.extend(leak(report));
    let long = long_hold(report);
    let has_long_hold = long.is_some();
    verdicts.extend(long);
    if !has_long_hold {
        verdicts.extend(concurrency_growth(report));
    }
    if verdicts.is_empty() {
        verdicts.push(Verdict {
            kind: VerdictKind::Healthy,
            reason: format!(
                "no guard out past the {:.0} ms threshold, no error-path endings, holds short, demand under the pool size",
                report.hold_threshold_ms
            ),
            evidence: Vec::new(),
        });
    }
    verdicts
}

fn leak(report: &Report) -> Option<Verdict> {
    let mut found = Vec::new();
    // Guards out past the threshold, grouped by site.
    let mut flagged_sites: Vec<(&str, usize, f64)> = Vec::new();
    for guard in &report.flagged {
        match flagged_sites.iter_mut().find(|(s, _, _)| *s == guard.site) {
            Some((_, n, oldest)) => {
                *n += 1;
                *oldest = oldest.max(guard.held_ms);
            }
            None => flagged_sites.push((&guard.site, 1, guard.held_ms)),
        }
    }
    for (site, n, oldest) in flagged_sites {
        found.push(evidence(
            site,
            format!(
                "{n} guard(s) still out past the {:.0} ms threshold, oldest held {:.0} ms",
                report.hold_threshold_ms, oldest
            ),
        ));
    }
    for site in &report.sites {
        let e = site.error_paths;
        let mut kinds = Vec::new();
        if e.panicked > 0 {
            kinds.push(format!("{} dropped while panicking", e.panicked));
        }
        if e.rolled_back_by_drop > 0 {
            kinds.push(format!(
                "{} transaction(s) rolled back by drop",
                e.rolled_back_by_drop
            ));
        }
        if e.open_transaction_at_return > 0 {
            kinds.push(format!(
                "{} returned with a transaction open",
                e.open_transaction_at_return
            ));
        }
        if e.in_flight_at_drop > 0 {
            kinds.push(format!(
                "{} dropped with a call in flight",
                e.in_flight_at_drop
            ));
        }
        if !kinds.is_empty() {
            found.push(evidence(
                &site.site,
                format!("error-path endings: {}", kinds.join(", ")),
            ));
        }
    }
    if let Some(growth) = in_use_growth_with_flat_demand(report) {
        found.push(evidence("pool", growth));
    }
    if found.is_empty() {
        return None;
    }
    Some(Verdict {
        kind: VerdictKind::Leak,
        reason: "connections are not coming back, or come back through error paths".to_owned(),
        evidence: found,
    })
}

/// Compares the first and last thirds of the timeline.
fn in_use_growth_with_flat_demand(report: &Report) -> Option<String> {
    let t = &report.timeline;
    if t.len() < 6 {
        return None;
    }
    let third = t.len() / 3;
    let mean = |xs: &[crate::timeline::PressureSample],
                f: fn(&crate::timeline::PressureSample) -> f64| {
        xs.iter().map(f).sum::<f64>() / xs.len() as f64
    };
    let (first, last) = (&t[..third], &t[t.len() - third..]);
    let in_use_first = mean(first, |s| s.in_use as f64);
    let in_use_last = mean(last, |s| s.in_use as f64);
    let rate_first = mean(first, |s| s.checkout_rate());
    let rate_last = mean(last, |s| s.checkout_rate());
    let max_size = report.pressure.max_size.max(1) as f64;
    let grew = in_use_last - in_use_first >= (max_size / 4.0).max(1.0);
    let demand_flat = rate_last <= rate_first * 1.25 + 0.5;
    (grew && demand_flat).then(|| {
        format!(
            "in use grew from {in_use_first:.1} to {in_use_last:.1} of {max_size:.0} while checkouts went from {rate_first:.1}/s to {rate_last:.1}/s"
        )
    })
}

fn long_hold(report: &Report) -> Option<Verdict> {
    let threshold = report.hold_threshold_ms;
    let mut found = Vec::new();
    for site in report.sites.iter().filter(|s| s.checkouts > 0) {
        if let Some(detail) = long_hold_of_site(site, threshold) {
            found.push(evidence(&site.site, detail));
        }
    }
    let total: f64 = report.spans.iter().map(|s| s.connection_secs).sum();
    for span in &report.spans {
        let share = if total > 0.0 {
            span.connection_secs / total
        } else {
            0.0
        };
        if share > DOMINANT_SPAN_SHARE && span.hold_p99_ms >= threshold {
            found.push(evidence(
                format!("span {}", span.span),
                format!(
                    "holds {:.0}% of all connection time ({:.1} s over {} checkouts), p99 hold {:.0} ms",
                    share * 100.0,
                    span.connection_secs,
                    span.checkouts,
                    span.hold_p99_ms
                ),
            ));
        }
    }
    if found.is_empty() {
        return None;
    }
    Some(Verdict {
        kind: VerdictKind::LongHold,
        reason: "connections come back, but are held across work that is not database work"
            .to_owned(),
        evidence: found,
    })
}

fn long_hold_of_site(site: &SiteLine, threshold_ms: f64) -> Option<String> {
    let busy = site
        .busy_ratio
        .map(|r| format!(", {:.0}% of it in the database", r * 100.0))
        .unwrap_or_default();
    if site.hold_p99_ms >= threshold_ms {
        return Some(format!(
            "p99 hold {:.0} ms (max {:.0} ms) past the {threshold_ms:.0} ms threshold over {} checkouts{busy}",
            site.hold_p99_ms, site.hold_max_ms, site.checkouts
        ));
    }
    if let Some(ratio) = site.busy_ratio {
        if ratio < LOW_BUSY_RATIO && site.hold_mean_ms >= LONG_MEAN_HOLD_MS {
            return Some(format!(
                "mean hold {:.0} ms, only {:.0}% of it in the database",
                site.hold_mean_ms,
                ratio * 100.0
            ));
        }
    }
    if site.transaction_ms >= MIN_TRANSACTION_MS
        && site.transaction_idle_ms > site.transaction_ms * IDLE_TRANSACTION_SHARE
    {
        return Some(format!(
            "transactions open {:.0} ms in all, idle {:.0} ms of it (no call in flight)",
            site.transaction_ms, site.transaction_idle_ms
        ));
    }
    None
}

fn concurrency_growth(report: &Report) -> Option<Verdict> {
    let p = &report.pressure;
    let max_size = p.max_size;
    if max_size == 0 {
        return None;
    }
    let timeouts: u64 = report.sites.iter().map(|s| s.timeouts).sum();
    let worst_wait = report
        .sites
        .iter()
        .map(|s| s.wait_p99_ms)
        .fold(0.0, f64::max);
    let waiters_seen = p.peak_waiting > 0 || timeouts > 0 || worst_wait >= WAITERS_P99_MS;
    if !waiters_seen || p.peak_demand < DEMAND_SHARE * max_size as f64 {
        return None;
    }
    let mut evidence_list = vec![evidence(
        "pool",
        format!(
            "at the busiest tick {:.0} checkouts/s × mean hold {:.1} ms = {:.1} connections needed of {max_size}; peak waiting {}, timeouts {timeouts}, worst p99 wait {worst_wait:.0} ms",
            p.peak_checkout_rate, p.mean_hold_ms, p.peak_demand, p.peak_waiting
        ),
    )];
    let mut busiest: Vec<&SiteLine> = report.sites.iter().filter(|s| s.checkouts > 0).collect();
    busiest.sort_by_key(|s| std::cmp::Reverse(s.checkouts));
    for site in busiest.into_iter().take(3) {
        evidence_list.push(evidence(
            &site.site,
            format!(
                "{} checkouts, p99 hold {:.1} ms (short), p99 wait {:.1} ms",
                site.checkouts, site.hold_p99_ms, site.wait_p99_ms
            ),
        ));
    }
    Some(Verdict {
        kind: VerdictKind::ConcurrencyGrowth,
        reason:
            "holds are short; the demand itself needs about as many connections as the pool has"
                .to_owned(),
        evidence: evidence_list,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{ErrorPaths, FlaggedGuard, Pressure, SpanLine};
    use super::*;
    use crate::snapshot::PoolStatus;
    use crate::timeline::PressureSample;

    fn report(sites: Vec<SiteLine>) -> Report {
        Report {
            pool: "test".to_owned(),
            hold_threshold_ms: 1000.0,
            status: PoolStatus::default(),
            pressure: Pressure {
                max_size: 10,
                ..Pressure::default()
            },
            timeline: Vec::new(),
            verdicts: Vec::new(),
            sites,
            spans: Vec::new(),
            flagged: Vec::new(),
        }
    }

    fn site(name: &str, checkouts: u64, p99_ms: f64) -> SiteLine {
        SiteLine {
            site: name.to_owned(),
            checkouts,
            connection_secs: checkouts as f64 * p99_ms / 2000.0,
            hold_mean_ms: p99_ms / 2.0,
            hold_p50_ms: p99_ms / 2.0,
            hold_p99_ms: p99_ms,
            hold_max_ms: p99_ms,
            ..SiteLine::default()
        }
    }

    fn kinds(report: &Report) -> Vec<VerdictKind> {
        diagnose(report).iter().map(|v| v.kind).collect()
    }

    #[test]
    fn short_holds_and_no_waiters_are_healthy() {
        let r = report(vec![site("src/api.rs:1:1", 500, 5.0)]);
        assert_eq!(kinds(&r), vec![VerdictKind::Healthy]);
    }

    #[test]
    fn flagged_guard_is_a_leak_naming_its_site() {
        let mut r = report(vec![site("src/api.rs:1:1", 5, 5.0)]);
        r.flagged.push(FlaggedGuard {
            guard: 7,
            site: "src/jobs.rs:42:9".to_owned(),
            span: None,
            held_ms: 95_000.0,
        });
        let verdicts = diagnose(&r);
        assert_eq!(verdicts[0].kind, VerdictKind::Leak);
        assert_eq!(verdicts[0].evidence[0].subject, "src/jobs.rs:42:9");
        assert!(verdicts[0].evidence[0].detail.contains("95000 ms"));
    }

    #[test]
    fn error_path_endings_are_a_leak() {
        let mut s = site("src/api.rs:9:5", 20, 5.0);
        s.error_paths = ErrorPaths {
            rolled_back_by_drop: 3,
            ..ErrorPaths::default()
        };
        let verdicts = diagnose(&report(vec![s]));
        assert_eq!(verdicts[0].kind, VerdictKind::Leak);
        assert!(verdicts[0].evidence[0]
            .detail
            .contains("3 transaction(s) rolled back by drop"));
    }

    #[test]
    fn growth_in_use_with_flat_demand_is_a_leak() {
        let mut r = report(vec![site("src/api.rs:1:1", 100, 5.0)]);
        r.timeline = (0..9)
            .map(|i| PressureSample {
                offset_ms: i * 1000,
                in_use: (i as usize) + 1,
                max_size: 10,
                checkouts: 10,
                interval_ms: 1000,
                ..PressureSample::default()
            })
            .collect();
        let verdicts = diagnose(&r);
        assert_eq!(verdicts[0].kind, VerdictKind::Leak);
        assert_eq!(verdicts[0].evidence[0].subject, "pool");
        assert!(verdicts[0].evidence[0].detail.contains("in use grew"));
    }

    #[test]
    fn holds_past_the_threshold_are_a_long_hold() {
        let r = report(vec![
            site("src/api.rs:1:1", 500, 5.0),
            site("src/jobs.rs:7:3", 3, 4000.0),
        ]);
        let verdicts = diagnose(&r);
        assert_eq!(kinds(&r), vec![VerdictKind::LongHold]);
        assert_eq!(verdicts[0].evidence.len(), 1);
        assert_eq!(verdicts[0].evidence[0].subject, "src/jobs.rs:7:3");
    }

    #[test]
    fn mostly_idle_holds_are_a_long_hold_below_the_threshold() {
        let mut s = site("src/api.rs:3:3", 40, 300.0);
        s.busy_ratio = Some(0.1);
        let verdicts = diagnose(&report(vec![s]));
        assert_eq!(verdicts[0].kind, VerdictKind::LongHold);
        assert!(verdicts[0].evidence[0]
            .detail
            .contains("only 10% of it in the database"));
        // The same holds, busy in the database, are fine.
        let mut busy = site("src/api.rs:3:3", 40, 300.0);
        busy.busy_ratio = Some(0.95);
        assert_eq!(kinds(&report(vec![busy])), vec![VerdictKind::Healthy]);
    }

    #[test]
    fn idle_transactions_are_a_long_hold() {
        let mut s = site("src/api.rs:4:4", 10, 20.0);
        s.transaction_ms = 2000.0;
        s.transaction_idle_ms = 1800.0;
        let verdicts = diagnose(&report(vec![s]));
        assert_eq!(verdicts[0].kind, VerdictKind::LongHold);
        assert!(verdicts[0].evidence[0].detail.contains("idle 1800 ms"));
    }

    #[test]
    fn a_dominant_span_is_named() {
        let mut r = report(vec![site("src/jobs.rs:7:3", 3, 4000.0)]);
        r.spans = vec![
            SpanLine {
                span: "cleanup_job".to_owned(),
                checkouts: 3,
                connection_secs: 12.0,
                hold_p99_ms: 4000.0,
                ..SpanLine::default()
            },
            SpanLine {
                span: "handle_request".to_owned(),
                checkouts: 500,
                connection_secs: 1.0,
                hold_p99_ms: 5.0,
                ..SpanLine::default()
            },
        ];
        let verdicts = diagnose(&r);
        assert!(verdicts[0]
            .evidence
            .iter()
            .any(|e| e.subject == "span cleanup_job" && e.detail.contains("92%")));
    }

    #[test]
    fn short_holds_with_demand_near_the_size_are_concurrency_growth() {
        let mut r = report(vec![site("src/api.rs:1:1", 5000, 20.0)]);
        r.pressure = Pressure {
            max_size: 10,
            peak_waiting: 6,
            peak_checkout_rate: 500.0,
            mean_hold_ms: 18.0,
            peak_demand: 9.0,
            ..Pressure::default()
        };
        let verdicts = diagnose(&r);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].kind, VerdictKind::ConcurrencyGrowth);
        assert!(verdicts[0].evidence[0]
            .detail
            .contains("9.0 connections needed of 10"));
        assert_eq!(verdicts[0].evidence[1].subject, "src/api.rs:1:1");
    }

    #[test]
    fn demand_without_waiters_is_not_growth() {
        let mut r = report(vec![site("src/api.rs:1:1", 5000, 20.0)]);
        r.pressure = Pressure {
            max_size: 10,
            peak_demand: 9.0,
            ..Pressure::default()
        };
        assert_eq!(kinds(&r), vec![VerdictKind::Healthy]);
    }

    #[test]
    fn leak_and_long_hold_can_both_apply() {
        let mut r = report(vec![site("src/jobs.rs:7:3", 3, 4000.0)]);
        r.flagged.push(FlaggedGuard {
            guard: 1,
            site: "src/api.rs:1:1".to_owned(),
            span: None,
            held_ms: 5000.0,
        });
        assert_eq!(kinds(&r), vec![VerdictKind::Leak, VerdictKind::LongHold]);
    }
}
