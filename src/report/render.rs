//! `Display` for [`Report`]: an aligned table for people.

use std::fmt;

use super::Report;

fn opt_percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", r * 100.0))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.pressure;
        writeln!(
            f,
            "poolwatch report: pool {} (hold threshold {:.0} ms)",
            self.pool, self.hold_threshold_ms
        )?;
        writeln!(
            f,
            "  now:      {} open, {} idle, {} in use, {} waiting, max {}",
            self.status.size,
            self.status.available,
            self.status.in_use(),
            self.status.waiting,
            self.status.max_size
        )?;
        writeln!(
            f,
            "  pressure: {} samples over {:.1} s; in use peak {}/{} (mean {:.1}), waiting peak {}, saturated {:.0}% of the time",
            p.samples,
            p.window_secs,
            p.peak_in_use,
            p.max_size,
            p.mean_in_use,
            p.peak_waiting,
            p.saturated_share * 100.0
        )?;
        writeln!(
            f,
            "  demand:   {:.1} checkouts/s (peak {:.1}/s) x mean hold {:.1} ms = {:.1} connections at peak (Little's law)",
            p.mean_checkout_rate, p.peak_checkout_rate, p.mean_hold_ms, p.peak_demand
        )?;
        writeln!(f)?;
        for verdict in &self.verdicts {
            writeln!(
                f,
                "verdict: {} — {}",
                verdict.kind.as_str().to_uppercase(),
                verdict.reason
            )?;
            for e in &verdict.evidence {
                writeln!(f, "  - {}: {}", e.subject, e.detail)?;
            }
        }
        if !self.sites.is_empty() {
            writeln!(f)?;
            writeln!(f, "call sites by connection time held")?;
            let width = self
                .sites
                .iter()
                .map(|s| s.site.len())
                .max()
                .unwrap_or(4)
                .max(9);
            writeln!(
                f,
                "  {:<width$} {:>9} {:>4} {:>9} {:>9} {:>9} {:>9} {:>5} {:>9} {:>8} {:>6}",
                "call site",
                "checkouts",
                "out",
                "conn-s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "busy",
                "wait p99",
                "timeouts",
                "errors"
            )?;
            for s in &self.sites {
                writeln!(
                    f,
                    "  {:<width$} {:>9} {:>4} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>5} {:>9.1} {:>8} {:>6}",
                    s.site,
                    s.checkouts,
                    s.outstanding,
                    s.connection_secs,
                    s.hold_p50_ms,
                    s.hold_p99_ms,
                    s.hold_max_ms,
                    opt_percent(s.busy_ratio),
                    s.wait_p99_ms,
                    s.timeouts,
                    s.error_paths.total()
                )?;
            }
        }
        if !self.spans.is_empty() {
            writeln!(f)?;
            writeln!(f, "spans (request handlers, jobs) by connection time held")?;
            let width = self
                .spans
                .iter()
                .map(|s| s.span.len())
                .max()
                .unwrap_or(4)
                .max(4);
            writeln!(
                f,
                "  {:<width$} {:>9} {:>4} {:>9} {:>9} {:>9} {:>5}",
                "span", "checkouts", "out", "conn-s", "p99 ms", "max ms", "busy"
            )?;
            for s in &self.spans {
                writeln!(
                    f,
                    "  {:<width$} {:>9} {:>4} {:>9.2} {:>9.1} {:>9.1} {:>5}",
                    s.span,
                    s.checkouts,
                    s.outstanding,
                    s.connection_secs,
                    s.hold_p99_ms,
                    s.hold_max_ms,
                    opt_percent(s.busy_ratio)
                )?;
            }
        }
        if !self.flagged.is_empty() {
            writeln!(f)?;
            writeln!(f, "guards held past the threshold right now")?;
            for g in &self.flagged {
                writeln!(
                    f,
                    "  guard {} from {} ({}) held {:.0} ms",
                    g.guard,
                    g.site,
                    g.span.as_deref().unwrap_or("no span"),
                    g.held_ms
                )?;
            }
        }
        Ok(())
    }
}
