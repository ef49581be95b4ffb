//! The pressure timeline as a self-contained SVG picture.
//!
//! Written by hand rather than with `plotters` (0.3.7). SVG-only and without
//! default features, `plotters` is light (itself, `plotters-backend`,
//! `plotters-svg`, `num-traits`: some 28 000 lines, about 3 s to build on
//! one core), but it would still be a dependency of every service that adds
//! poolwatch, for one picture of a fixed layout, and the picture's parts
//! that matter would be drawn by hand anyway: the legend outside the plot,
//! a time axis counting back from the report, stacked step areas with gaps,
//! two panels on one time axis. Written here, every element says what it is
//! (`class`, `data-series`, `data-site`), a site carries its full name as a
//! tooltip (`<title>`), the output is compact (a long timeline is added up
//! into at most one column per two pixels) and stable enough to assert on.
//!
//! The layout, left to right: the plots (connections in use above, callers
//! waiting below, one time axis), then the legend. The model ([`Chart`]) is
//! computed apart from the drawing so that tests can check its numbers.

mod chart;
mod layout;
#[cfg(test)]
mod tests;
mod text;

use std::fmt::Write;

use chart::{gap_allowance_ms, Chart, Column};
use layout::{
    HEIGHT, LABEL_CHARS, LEGEND_LEFT, MAIN_BOTTOM, MAIN_TOP, PLOT_LEFT, PLOT_RIGHT, TOP_SITES,
    WAIT_BOTTOM, WAIT_TOP, WIDTH,
};
use text::{
    ago, coarse, count, escape, finite, shorten_middle, site_label, span, time_step, y_axis,
};

use super::types::{Report, Verdict, VerdictKind};

const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";
const MONO: &str = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace";
/// Colour-blind-safe (Tableau 10, red kept for waiting and saturation).
const SITE_COLORS: [&str; TOP_SITES] = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2"];
const OTHER_COLOR: &str = "#c9c3bf";
const WAIT_COLOR: &str = "#e15759";
const WAIT_LINE: &str = "#a32e31";
const EPISODE_COLOR: &str = "#e15759";
const EPISODE_OPACITY: f64 = 0.12;
const MAX_COLOR: &str = "#222222";
const OPEN_COLOR: &str = "#8c8c8c";
const GRID: &str = "#e6e6e6";
const AXIS_TEXT: &str = "#555555";

/// Points of a step outline, without repeats: a run of equal values is
/// one segment.
#[derive(Default)]
struct Steps {
    points: Vec<(f64, f64)>,
}

impl Steps {
    fn push(&mut self, x: f64, y: f64) {
        let n = self.points.len();
        if n >= 2 {
            let (a, b) = (self.points[n - 2], self.points[n - 1]);
            let collinear = (a.1 == b.1 && b.1 == y) || (a.0 == b.0 && b.0 == x);
            if collinear {
                self.points[n - 1] = (x, y);
                return;
            }
        }
        if self.points.last() == Some(&(x, y)) {
            return;
        }
        self.points.push((x, y));
    }

    fn write(&self, out: &mut String) {
        for (i, (x, y)) in self.points.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{x:.1},{y:.1}");
        }
    }
}

/// Maps the chart's numbers to the canvas.
struct Frame<'a> {
    chart: &'a Chart,
}

impl Frame<'_> {
    fn x(&self, ms: f64) -> f64 {
        let c = self.chart;
        let t = (ms - c.from_ms) / (c.to_ms - c.from_ms);
        let t = if t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // Rounded to a tenth of a pixel, as written.
        ((PLOT_LEFT + t * (PLOT_RIGHT - PLOT_LEFT)) * 10.0).round() / 10.0
    }

    /// The columns as contiguous runs: a gap between ticks (the sampler
    /// stopped, a pause) is drawn at zero.
    fn runs(&self) -> Vec<std::ops::Range<usize>> {
        let columns = &self.chart.columns;
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=columns.len() {
            let broken = i == columns.len()
                || columns[i].start_ms - columns[i - 1].end_ms > gap_allowance_ms(&columns[i]);
            if broken {
                if start < i {
                    runs.push(start..i);
                }
                start = i;
            }
        }
        runs
    }

    /// The outline of a step area from `low` to `high` over the columns.
    fn area(
        &self,
        low: impl Fn(&Column) -> f64,
        high: impl Fn(&Column) -> f64,
        y: impl Fn(f64) -> f64,
    ) -> Vec<Steps> {
        let columns = &self.chart.columns;
        self.runs()
            .into_iter()
            .filter(|run| run.clone().any(|i| high(&columns[i]) > low(&columns[i])))
            .map(|run| {
                let mut steps = Steps::default();
                for c in &columns[run.clone()] {
                    steps.push(self.x(c.start_ms), y(high(c)));
                    steps.push(self.x(c.end_ms), y(high(c)));
                }
                for c in columns[run].iter().rev() {
                    steps.push(self.x(c.end_ms), y(low(c)));
                    steps.push(self.x(c.start_ms), y(low(c)));
                }
                steps
            })
            .collect()
    }

    /// A step line over the columns, one per run.
    fn line(&self, value: impl Fn(&Column) -> f64, y: impl Fn(f64) -> f64) -> Vec<Steps> {
        let columns = &self.chart.columns;
        self.runs()
            .into_iter()
            .map(|run| {
                let mut steps = Steps::default();
                for c in &columns[run] {
                    steps.push(self.x(c.start_ms), y(value(c)));
                    steps.push(self.x(c.end_ms), y(value(c)));
                }
                steps
            })
            .collect()
    }
}

fn y_in(top: f64, bottom: f64, max: f64) -> impl Fn(f64) -> f64 {
    move |v: f64| {
        let t = (finite(v) / max).clamp(0.0, 1.0);
        ((bottom - t * (bottom - top)) * 10.0).round() / 10.0
    }
}

/// A line of the main panel: series, colour, width, dash, value.
type LineSeries<'a> = (&'a str, &'a str, f64, &'a str, &'a dyn Fn(&Column) -> f64);

/// Horizontal grid lines at each step of a panel, labelled on its left.
fn y_grid(
    svg: &mut String,
    (top, bottom): (f64, f64),
    max: f64,
    step: f64,
    y: &dyn Fn(f64) -> f64,
) {
    let lines = (max / step).round().clamp(1.0, 20.0) as usize;
    for i in 0..=lines {
        let v = step * i as f64;
        let yv = y(v);
        if i > 0 && yv > top {
            let _ = writeln!(
                svg,
                r#"<line class="grid" x1="{PLOT_LEFT}" y1="{yv:.1}" x2="{PLOT_RIGHT}" y2="{yv:.1}" stroke="{GRID}"/>"#
            );
        }
        if yv >= top - 0.5 && yv <= bottom + 0.5 {
            let _ = writeln!(
                svg,
                r#"<text class="y-label" x="{:.1}" y="{:.1}" text-anchor="end" fill="{AXIS_TEXT}" font-size="11">{}</text>"#,
                PLOT_LEFT - 6.0,
                yv + 4.0,
                count(v)
            );
        }
    }
}

impl Report {
    /// The pressure timeline as a self-contained SVG picture: connections
    /// in use (mean per tick) stacked by the five call sites that held most
    /// connection time over the timeline and the rest as one band, the
    /// pool's maximum size and open connections as lines, callers waiting
    /// in a panel of their own below, saturation episodes shaded, and the
    /// time axis in time before the report. Elements carry `data-series`
    /// attributes (`site-1` … `site-5`, `other`, `max_size`, `open`,
    /// `waiting`, `waiting_mean`) and full site names in `<title>`
    /// tooltips.
    pub fn timeline_svg(&self) -> String {
        timeline(self)
    }
}

/// Connections in use stacked by call site, the pool's size, callers
/// waiting, saturation shaded, and the legend beside them.
fn timeline(report: &Report) -> String {
    let chart = Chart::of(report);
    draw(report, &chart)
}

fn draw(report: &Report, chart: &Chart) -> String {
    let frame = Frame { chart };
    let pool = escape(&report.pool);
    let p = &report.pressure;
    let mut svg = String::with_capacity(16 * 1024);
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        "<title>poolwatch: pool {pool} pressure timeline</title>"
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );

    // Title and what it covers.
    let _ = writeln!(
        svg,
        r##"<text class="title" x="{PLOT_LEFT}" y="28" font-size="17" font-weight="600" fill="#1a1a1a">pool {} — connections in use by call site</text>"##,
        escape(&shorten_middle(&report.pool, 48))
    );
    let samples = report.timeline.len();
    let subtitle = if samples == 0 {
        "no timeline samples yet".to_owned()
    } else {
        // The usual tick (a reader's drain can cut one short).
        let mut intervals: Vec<u64> = report.timeline.iter().map(|s| s.interval_ms).collect();
        intervals.sort_unstable();
        let tick = intervals[intervals.len() / 2];
        format!(
            "last {} · {} tick{} of {} · in use peak {}/{}, mean {} · waiting peak {} · saturated {:.0}% of ticks",
            span(chart.to_ms - chart.from_ms),
            samples,
            if samples == 1 { "" } else { "s" },
            span(tick as f64),
            count(p.peak_in_use as f64),
            count(p.max_size as f64),
            count((finite(p.mean_in_use) * 10.0).round() / 10.0),
            count(p.peak_waiting as f64),
            finite(p.saturated_share) * 100.0,
        )
    };
    let _ = writeln!(
        svg,
        r##"<text class="subtitle" x="{PLOT_LEFT}" y="50" fill="#555">{}</text>"##,
        escape(&subtitle)
    );
    // What the report concludes, now and of the last episode.
    let said = |verdict: &Verdict| {
        let culprit = verdict
            .evidence
            .first()
            .map(|e| format!(" — {}", site_label(&e.subject, 48)))
            .unwrap_or_default();
        let color = if verdict.kind == VerdictKind::Healthy {
            "#3b7d3b"
        } else {
            "#a32e31"
        };
        (
            color,
            escape(&format!("{}{culprit}", verdict.kind.as_str())),
        )
    };
    let mut verdict_line = String::new();
    if let Some(verdict) = report.verdicts.first() {
        let (color, text) = said(verdict);
        let _ = write!(verdict_line, r#"<tspan fill="{color}">now: {text}</tspan>"#);
    }
    if let Some((episode, verdict)) = report
        .episodes
        .last()
        .and_then(|e| Some((e, e.verdicts.first()?)))
    {
        let (color, text) = said(verdict);
        let _ = write!(
            verdict_line,
            r##"<tspan dx="14" fill="#777" font-weight="400">· last episode, {}–{}:</tspan><tspan dx="5" fill="{color}">{text}</tspan>"##,
            ago(coarse(episode.started_ago_secs)).trim_end_matches(" ago"),
            ago(coarse(episode.ended_ago_secs)),
        );
    }
    if !verdict_line.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text class="verdict" x="{PLOT_LEFT}" y="68" font-weight="600">{verdict_line}</text>"#
        );
    }

    let peak_stack = chart
        .columns
        .iter()
        .map(|c| c.bands.iter().sum::<f64>().max(c.max_size).max(c.open))
        .fold(0.0, f64::max);
    let (main_max, main_step) = y_axis(peak_stack, 5.0);
    let peak_wait = chart
        .columns
        .iter()
        .map(|c| c.peak_waiting.max(c.mean_waiting))
        .fold(0.0, f64::max);
    let (wait_max, wait_step) = y_axis(peak_wait, 3.0);
    let main_y = y_in(MAIN_TOP, MAIN_BOTTOM, main_max);
    let wait_y = y_in(WAIT_TOP, WAIT_BOTTOM, wait_max);
    let plot_w = PLOT_RIGHT - PLOT_LEFT;

    // The plot rectangles, then what lies behind the data.
    for (panel, top, bottom) in [
        ("main", MAIN_TOP, MAIN_BOTTOM),
        ("waiting", WAIT_TOP, WAIT_BOTTOM),
    ] {
        let _ = writeln!(
            svg,
            r##"<rect class="plot" data-panel="{panel}" x="{PLOT_LEFT}" y="{top}" width="{plot_w}" height="{}" fill="#fcfcfc" stroke="#d0d0d0"/>"##,
            bottom - top
        );
        for (from, to) in &chart.saturated {
            let (x0, x1) = (frame.x(*from), frame.x(*to));
            let _ = writeln!(
                svg,
                r#"<rect class="episode" data-panel="{panel}" x="{x0:.1}" y="{top}" width="{:.1}" height="{}" fill="{EPISODE_COLOR}" fill-opacity="{EPISODE_OPACITY}"/>"#,
                (x1 - x0).max(1.0),
                bottom - top
            );
        }
    }

    // Grid and axes.
    y_grid(
        &mut svg,
        (MAIN_TOP, MAIN_BOTTOM),
        main_max,
        main_step,
        &main_y,
    );
    y_grid(
        &mut svg,
        (WAIT_TOP, WAIT_BOTTOM),
        wait_max,
        wait_step,
        &wait_y,
    );
    let _ = writeln!(
        svg,
        r#"<text class="y-title" transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" fill="{AXIS_TEXT}">connections in use</text>"#,
        (MAIN_TOP + MAIN_BOTTOM) / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<text class="y-title" transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" fill="{AXIS_TEXT}">waiting</text>"#,
        (WAIT_TOP + WAIT_BOTTOM) / 2.0
    );

    // Time: round steps counted back from the report.
    let span_ms = chart.to_ms - chart.from_ms;
    let step = time_step(span_ms, 6.0);
    let first = ((chart.now_ms - chart.to_ms) / step).ceil().max(0.0);
    let mut k = first;
    let mut labels = 0;
    while labels < 40 && !chart.columns.is_empty() {
        let t = chart.now_ms - k * step;
        if t < chart.from_ms - 0.5 || !t.is_finite() {
            break;
        }
        let x = frame.x(t);
        for (top, bottom) in [(MAIN_TOP, MAIN_BOTTOM), (WAIT_TOP, WAIT_BOTTOM)] {
            let _ = writeln!(
                svg,
                r#"<line class="grid" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="{GRID}"/>"#
            );
        }
        let anchor = if x > PLOT_RIGHT - 20.0 {
            "end"
        } else if x < PLOT_LEFT + 20.0 {
            "start"
        } else {
            "middle"
        };
        let _ = writeln!(
            svg,
            r#"<text class="x-label" x="{x:.1}" y="{:.1}" text-anchor="{anchor}" fill="{AXIS_TEXT}" font-size="11">{}</text>"#,
            WAIT_BOTTOM + 16.0,
            ago(k * step)
        );
        k += 1.0;
        labels += 1;
    }
    let _ = writeln!(
        svg,
        r#"<text class="x-title" x="{:.1}" y="{:.1}" text-anchor="middle" fill="{AXIS_TEXT}" font-size="11">time before the report · mean connections in use per tick, stacked by call site</text>"#,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        WAIT_BOTTOM + 38.0
    );

    // The data: bands bottom up (the busiest site at the bottom).
    let colors: Vec<&str> = chart
        .bands
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if b.site.is_none() {
                OTHER_COLOR
            } else {
                SITE_COLORS[i % TOP_SITES]
            }
        })
        .collect();
    let total: f64 = chart.bands.iter().map(|b| b.total_ms).sum();
    for (i, band) in chart.bands.iter().enumerate() {
        let low = |c: &Column| c.bands[..i].iter().sum::<f64>();
        let high = |c: &Column| c.bands[..=i].iter().sum::<f64>();
        let site = band
            .site
            .as_deref()
            .map(|s| format!(r#" data-site="{}""#, escape(s)))
            .unwrap_or_default();
        let _ = write!(
            svg,
            r#"<g class="band" data-series="{}"{site}><title>{}</title>"#,
            band.series,
            escape(band.site.as_deref().unwrap_or("other sites"))
        );
        for steps in frame.area(low, high, &main_y) {
            let _ = write!(
                svg,
                r#"<polygon fill="{}" stroke="{}" stroke-width="0.5" stroke-linejoin="round" points=""#,
                colors[i], colors[i]
            );
            steps.write(&mut svg);
            svg.push_str("\"/>");
        }
        svg.push_str("</g>\n");
    }
    let lines: [LineSeries<'_>; 2] = [
        ("open", OPEN_COLOR, 1.2, "", &|c| c.open),
        (
            "max_size",
            MAX_COLOR,
            1.5,
            r#" stroke-dasharray="6 4""#,
            &|c| c.max_size,
        ),
    ];
    for (series, color, width, dash, value) in lines {
        for steps in frame.line(value, &main_y) {
            let _ = write!(
                svg,
                r#"<polyline class="series" data-series="{series}" fill="none" stroke="{color}" stroke-width="{width}"{dash} points=""#
            );
            steps.write(&mut svg);
            svg.push_str("\"/>\n");
        }
    }
    for steps in frame.area(|_| 0.0, |c| c.peak_waiting, &wait_y) {
        let _ = write!(
            svg,
            r#"<polygon class="series" data-series="waiting" fill="{WAIT_COLOR}" fill-opacity="0.55" stroke="{WAIT_COLOR}" stroke-width="0.5" points=""#
        );
        steps.write(&mut svg);
        svg.push_str("\"/>\n");
    }
    for steps in frame.line(|c| c.mean_waiting, &wait_y) {
        let _ = write!(
            svg,
            r#"<polyline class="series" data-series="waiting_mean" fill="none" stroke="{WAIT_LINE}" stroke-width="1.5" points=""#
        );
        steps.write(&mut svg);
        svg.push_str("\"/>\n");
    }
    // Gaps wide enough to read: the sampler was not running.
    for pair in chart.columns.windows(2) {
        let (x0, x1) = (frame.x(pair[0].end_ms), frame.x(pair[1].start_ms));
        if x1 - x0 >= 24.0 && pair[1].start_ms - pair[0].end_ms > gap_allowance_ms(&pair[1]) {
            let _ = writeln!(
                svg,
                r##"<text class="gap" transform="translate({:.1} {:.1}) rotate(-90)" text-anchor="middle" fill="#999" font-size="10">no samples</text>"##,
                (x0 + x1) / 2.0 + 3.5,
                (MAIN_TOP + MAIN_BOTTOM) / 2.0
            );
        }
    }
    if chart.columns.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle" fill="#777" font-size="13">No samples yet: the timeline gains one every timeline tick.</text>"##,
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            (MAIN_TOP + MAIN_BOTTOM) / 2.0
        );
    }

    legend(&mut svg, chart, &colors, total);
    svg.push_str("</svg>\n");
    svg
}

/// The legend, right of the plots: the bands (busiest first, with their
/// share of the timeline's connection time), the lines, the shading, and
/// beside the lower panel what it shows.
fn legend(svg: &mut String, chart: &Chart, colors: &[&str], total: f64) {
    let mut y = MAIN_TOP + 4.0;
    let _ = writeln!(
        svg,
        r##"<text class="legend-title" x="{LEGEND_LEFT}" y="{y:.1}" font-weight="600" fill="#333">In use, by call site</text>"##
    );
    y += 8.0;
    let legend_right = WIDTH - 12.0;
    if chart.bands.is_empty() {
        y += 20.0;
        let _ = writeln!(
            svg,
            r##"<text class="legend-note" x="{LEGEND_LEFT}" y="{y:.1}" font-size="11" fill="#777">no connection time yet</text>"##
        );
    }
    for (i, band) in chart.bands.iter().enumerate() {
        y += 20.0;
        let label = match &band.site {
            Some(site) => escape(&site_label(site, LABEL_CHARS)),
            None => "other sites".to_owned(),
        };
        let font = if band.site.is_some() { MONO } else { FONT };
        let share = band.total_ms / total * 100.0;
        let share = if !share.is_finite() {
            String::new()
        } else if share > 0.0 && share < 0.5 {
            "&lt;1%".to_owned()
        } else {
            format!("{share:.0}%")
        };
        let _ = writeln!(
            svg,
            r##"<g class="legend" data-series="{}"><title>{}</title><rect x="{LEGEND_LEFT}" y="{:.1}" width="12" height="12" rx="2" fill="{}"/><text x="{:.1}" y="{:.1}" font-family="{font}" font-size="11" fill="#222">{label}</text><text x="{legend_right}" y="{:.1}" text-anchor="end" font-size="11" fill="#555">{share}</text></g>"##,
            band.series,
            escape(band.site.as_deref().unwrap_or("other sites")),
            y - 10.0,
            colors[i],
            LEGEND_LEFT + 18.0,
            y,
            y,
        );
    }
    y += 28.0;
    let line_entry = |svg: &mut String,
                      y: f64,
                      series: &str,
                      color: &str,
                      dash: &str,
                      width: f64,
                      label: &str| {
        let _ = writeln!(
            svg,
            r##"<g class="legend" data-series="{series}"><line x1="{LEGEND_LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="{width}"{dash}/><text x="{:.1}" y="{y:.1}" font-size="11" fill="#222">{label}</text></g>"##,
            y - 4.0,
            LEGEND_LEFT + 12.0,
            y - 4.0,
            LEGEND_LEFT + 18.0,
        );
    };
    line_entry(
        svg,
        y,
        "max_size",
        MAX_COLOR,
        r#" stroke-dasharray="4 2""#,
        1.5,
        "pool max size",
    );
    y += 18.0;
    line_entry(
        svg,
        y,
        "open",
        OPEN_COLOR,
        "",
        1.2,
        "open connections (tick end)",
    );
    y += 18.0;
    let _ = writeln!(
        svg,
        r##"<g class="legend" data-series="episode"><rect x="{LEGEND_LEFT}" y="{:.1}" width="12" height="12" fill="{EPISODE_COLOR}" fill-opacity="{}"/><text x="{:.1}" y="{y:.1}" font-size="11" fill="#222">saturated (callers waited or pool full)</text></g>"##,
        y - 10.0,
        EPISODE_OPACITY * 2.0,
        LEGEND_LEFT + 18.0,
    );
    let mut y = WAIT_TOP + 4.0;
    let _ = writeln!(
        svg,
        r##"<text class="legend-title" x="{LEGEND_LEFT}" y="{y:.1}" font-weight="600" fill="#333">Callers waiting</text>"##
    );
    y += 22.0;
    let _ = writeln!(
        svg,
        r##"<g class="legend" data-series="waiting"><rect x="{LEGEND_LEFT}" y="{:.1}" width="12" height="12" rx="2" fill="{WAIT_COLOR}" fill-opacity="0.55"/><text x="{:.1}" y="{y:.1}" font-size="11" fill="#222">most at once in the tick</text></g>"##,
        y - 10.0,
        LEGEND_LEFT + 18.0,
    );
    y += 18.0;
    line_entry(
        svg,
        y,
        "waiting_mean",
        WAIT_LINE,
        "",
        1.5,
        "mean over the tick",
    );
}
