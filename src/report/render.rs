//! `Display` for [`Report`]: an aligned table for people.

use std::fmt;

use super::types::{Report, ServerSection, Verdict};

fn opt_percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", r * 100.0))
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

fn verdicts(f: &mut fmt::Formatter<'_>, verdicts: &[Verdict], indent: &str) -> fmt::Result {
    for verdict in verdicts {
        writeln!(
            f,
            "{indent}verdict: {} — {}",
            verdict.kind.as_str().to_uppercase(),
            verdict.reason
        )?;
        for e in &verdict.evidence {
            writeln!(f, "{indent}  - {}: {}", e.subject, e.detail)?;
        }
        if !verdict.affected.is_empty() {
            writeln!(f, "{indent}  affected:")?;
            for e in &verdict.affected {
                writeln!(f, "{indent}  - {}: {}", e.subject, e.detail)?;
            }
        }
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.pressure;
        writeln!(
            f,
            "poolwatch report: pool {} (hold threshold {:.0} ms, statistics over the last {})",
            self.pool,
            self.hold_threshold_ms,
            secs(self.window_secs)
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
        if let Some(lag) = p.peak_runtime_lag_ms.filter(|&lag| lag >= 1.0) {
            writeln!(
                f,
                "  runtime:  a task waited up to {lag:.1} ms for its turn (mean over a tick) while callers queued: a busy runtime stretches every hold"
            )?;
        }
        writeln!(
            f,
            "  load:     {:.1} checkouts/s (peak {:.1}/s), mean hold {:.1} ms; offered load (in use + waiting, measured) peak {:.1} of {}",
            p.mean_checkout_rate, p.peak_checkout_rate, p.mean_hold_ms, p.peak_offered_load, p.max_size
        )?;
        writeln!(f)?;
        let now = &self.now;
        writeln!(
            f,
            "now ({}, {}{}): mean offered load {:.1}, peak {:.1}",
            now.kind,
            secs(now.secs),
            if now.saturated { ", saturated" } else { "" },
            now.mean_offered_load,
            now.peak_offered_load
        )?;
        verdicts(f, &self.verdicts, "")?;
        if !self.episodes.is_empty() {
            writeln!(f)?;
            writeln!(f, "saturation episodes (oldest first)")?;
            for e in &self.episodes {
                writeln!(
                    f,
                    "  {} ago, lasted {}: peak {} waiting, {} waited in all, {} failed, {} cancelled, offered load mean {:.1} (peak {:.1})",
                    secs(e.started_ago_secs),
                    secs(e.duration_secs),
                    e.peak_waiting,
                    secs(e.waited_secs),
                    e.failures,
                    e.cancelled,
                    e.mean_offered_load,
                    e.peak_offered_load
                )?;
                verdicts(f, &e.verdicts, "    ")?;
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
                "  {:<width$} {:>9} {:>4} {:>9} {:>9} {:>9} {:>9} {:>5} {:>6} {:>9} {:>8} {:>6}",
                "call site",
                "checkouts",
                "out",
                "conn-s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "busy",
                "idletx",
                "wait p99",
                "timeouts",
                "errors"
            )?;
            for s in &self.sites {
                writeln!(
                    f,
                    "  {:<width$} {:>9} {:>4} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>5} {:>6} {:>9.1} {:>8} {:>6}",
                    s.site,
                    s.checkouts,
                    s.outstanding,
                    s.connection_secs,
                    s.hold_p50_ms,
                    s.hold_p99_ms,
                    s.hold_max_ms,
                    opt_percent(s.busy_ratio),
                    opt_percent(s.idle_in_transaction_ratio),
                    s.wait_p99_ms,
                    s.timeouts,
                    s.error_paths.total()
                )?;
            }
        }
        writeln!(f)?;
        if !self.spans_visible {
            writeln!(
                f,
                "spans: none visible — no checkout was made inside a span the subscriber tracks \
                 (a filter such as RUST_LOG=poolwatch=info disables the application's spans; \
                 enable them to see handlers and jobs here)"
            )?;
        } else if !self.spans.is_empty() {
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
                let holder = self.holders.iter().find(|h| h.guard == g.guard);
                let state = holder
                    .and_then(|h| h.state.as_deref())
                    .unwrap_or("not observed");
                let nested = if holder.is_some_and(|h| h.nested_wait) {
                    ", its task waiting for a second connection (nested checkout)"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  guard {} from {} ({}) held {:.0} ms, {state}{nested}",
                    g.guard,
                    g.site,
                    g.span.as_deref().unwrap_or("no span"),
                    g.held_ms,
                )?;
            }
        }
        if let Some(server) = &self.server {
            let says_something = server.error.is_some()
                || !server.outside.is_empty()
                || !server.not_visible.is_empty()
                || self.holders.iter().any(|h| h.server.is_some());
            if says_something {
                self.render_server(f, server)?;
            }
        }
        if !self.waiters.is_empty() {
            writeln!(f)?;
            writeln!(f, "waiting for a connection right now")?;
            for w in &self.waiters {
                writeln!(
                    f,
                    "  {} ({}) waiting {:.0} ms{}",
                    w.site,
                    w.span.as_deref().unwrap_or("no span"),
                    w.waited_ms,
                    if w.nested {
                        ", nested checkout (its task holds a connection of this pool)"
                    } else {
                        ""
                    }
                )?;
            }
        }
        Ok(())
    }
}

/// Holders listed in the server section; the rest are counted.
const SERVER_LINES: usize = 20;

impl Report {
    fn render_server(&self, f: &mut fmt::Formatter<'_>, server: &ServerSection) -> fmt::Result {
        writeln!(f)?;
        writeln!(
            f,
            "what the database server says of the holders ({:.1} s ago)",
            server.age_ms / 1000.0
        )?;
        if let Some(error) = &server.error {
            writeln!(f, "  could not ask: {error}")?;
        }
        let described: Vec<_> = self
            .holders
            .iter()
            .filter_map(|h| h.server.as_ref().map(|s| (h, s)))
            .collect();
        for (holder, state) in described.iter().take(SERVER_LINES) {
            write!(
                f,
                "  guard {} from {} ({}), backend {}: {}",
                holder.guard,
                holder.site,
                holder.span.as_deref().unwrap_or("no span"),
                holder
                    .backend_pid
                    .map_or_else(|| "?".to_owned(), |p| p.to_string()),
                state.doing
            )?;
            if let Some(tx) = state.transaction_ms {
                write!(f, ", transaction open {:.0} ms", tx)?;
            }
            let behind: Vec<String> = state
                .blocked_by_guards
                .iter()
                .map(|g| format!("guard {g}"))
                .chain(
                    state
                        .blocked_by_outside
                        .iter()
                        .map(|p| format!("backend {p}")),
                )
                .collect();
            if !behind.is_empty() {
                write!(f, ", behind {}", behind.join(" and "))?;
            }
            writeln!(f)?;
        }
        if described.len() > SERVER_LINES {
            writeln!(f, "  … and {} more", described.len() - SERVER_LINES)?;
        }
        for o in &server.outside {
            writeln!(
                f,
                "  backend {} outside the pool ({}, role {}): {}; blocks {} guard(s){}",
                o.pid,
                o.application_name
                    .as_deref()
                    .unwrap_or("no application name"),
                o.role.as_deref().unwrap_or("?"),
                o.doing,
                o.blocks_guards.len(),
                o.statement
                    .as_deref()
                    .map(|q| format!("; statement: {q}"))
                    .unwrap_or_default()
            )?;
        }
        if !server.not_visible.is_empty() {
            writeln!(
                f,
                "  {} backend(s) not visible to this database role (grant pg_read_all_stats to see them)",
                server.not_visible.len()
            )?;
        }
        Ok(())
    }
}
