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

use std::fmt::Write;

use super::types::{Report, Verdict, VerdictKind};
use crate::timeline::PressureSample;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 520.0;
/// The plots' horizontal extent; the legend is right of it.
const PLOT_LEFT: f64 = 64.0;
const PLOT_RIGHT: f64 = 704.0;
const LEGEND_LEFT: f64 = 728.0;
/// Connections in use: top and bottom.
const MAIN_TOP: f64 = 84.0;
const MAIN_BOTTOM: f64 = 344.0;
/// Callers waiting: top and bottom.
const WAIT_TOP: f64 = 368.0;
const WAIT_BOTTOM: f64 = 452.0;

/// Sites with a band of their own; the rest share one.
const TOP_SITES: usize = 5;
/// At most this many columns (two pixels each); longer timelines are
/// added up into time slots (means of connection time, peaks of waiting).
const MAX_COLUMNS: usize = ((PLOT_RIGHT - PLOT_LEFT) / 2.0) as usize;
/// Characters of a site's label in the legend (monospace).
const LABEL_CHARS: usize = 30;

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

/// What [`CallSite::OVERFLOW`](crate::CallSite::OVERFLOW) prints as: not one
/// site, so it goes to the "other sites" band.
const OVERFLOW_SITE: &str = "<other call sites>";

/// One stacked band: a site, or the other sites.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Band {
    /// `site-1` … `site-5`, or `other`.
    pub(super) series: String,
    /// The site as the report names it (`None` for the other sites).
    pub(super) site: Option<String>,
    /// Connection time over the timeline, in milliseconds.
    pub(super) total_ms: f64,
}

/// One column of the picture: a tick, or a slot of ticks added up.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Column {
    /// Milliseconds since the pool was wrapped.
    pub(super) start_ms: f64,
    pub(super) end_ms: f64,
    /// Mean connections in use, per band (bottom band first).
    pub(super) bands: Vec<f64>,
    /// The pool-wide mean connections in use (connection time ÷ time).
    pub(super) mean_in_use: f64,
    pub(super) max_size: f64,
    /// Open connections (in use and idle) at the column's last tick end.
    pub(super) open: f64,
    pub(super) peak_waiting: f64,
    /// Mean callers waiting (wait time ÷ time).
    pub(super) mean_waiting: f64,
}

/// The picture's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Chart {
    pub(super) bands: Vec<Band>,
    /// Oldest first, gaps between ticks left out.
    pub(super) columns: Vec<Column>,
    /// The time axis, in milliseconds since the pool was wrapped.
    pub(super) from_ms: f64,
    pub(super) to_ms: f64,
    /// When the report was made (labels count back from it).
    pub(super) now_ms: f64,
    /// Saturated stretches, merged: episodes and saturated ticks.
    pub(super) saturated: Vec<(f64, f64)>,
}

/// A finite, non-negative number (whatever a deserialized report holds).
fn finite(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v.min(1e300)
    } else {
        0.0
    }
}

fn start_ms(s: &PressureSample) -> f64 {
    (s.offset_ms as f64 - s.interval_ms as f64).max(0.0)
}

impl Chart {
    pub(super) fn of(report: &Report) -> Chart {
        let samples = &report.timeline;
        let split = &report.timeline_sites;
        // The bands: the busiest sites over the timeline, then the rest.
        let mut totals = vec![0.0; split.sites.len()];
        for sample in &split.samples {
            for share in &sample.sites {
                if let Some(total) = totals.get_mut(share.site) {
                    *total += finite(share.connection_ms);
                }
            }
        }
        let mut order: Vec<usize> = (0..split.sites.len())
            .filter(|&i| split.sites[i] != OVERFLOW_SITE && totals[i] > 0.0)
            .collect();
        order.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]).then(a.cmp(&b)));
        order.truncate(TOP_SITES);
        let mut bands: Vec<Band> = order
            .iter()
            .enumerate()
            .map(|(rank, &i)| Band {
                series: format!("site-{}", rank + 1),
                site: Some(split.sites[i].clone()),
                total_ms: totals[i],
            })
            .collect();
        let others = bands.len();
        bands.push(Band {
            series: "other".to_owned(),
            site: None,
            total_ms: 0.0,
        });

        // Each tick's connection time per band, in milliseconds.
        let per_tick: Vec<Vec<f64>> = samples
            .iter()
            .enumerate()
            .map(|(i, sample)| {
                let mut ms = vec![0.0; bands.len()];
                match split.samples.get(i) {
                    Some(shares) => {
                        ms[others] = finite(shares.other_ms);
                        for share in &shares.sites {
                            let band = order.iter().position(|&s| s == share.site);
                            ms[band.unwrap_or(others)] += finite(share.connection_ms);
                        }
                    }
                    // No breakdown (a report from elsewhere): all other.
                    None => ms[others] = finite(sample.connection_ms),
                }
                ms
            })
            .collect();
        bands[others].total_ms = per_tick.iter().map(|ms| ms[others]).sum();
        if bands[others].total_ms <= 0.0 {
            bands.pop();
        }
        let band_count = bands.len();

        // Columns: ticks, or slots of ticks once there are too many.
        let from_ms = samples.iter().map(start_ms).fold(f64::INFINITY, f64::min);
        let last_ms = samples
            .iter()
            .map(|s| s.offset_ms as f64)
            .fold(0.0, f64::max);
        let from_ms = if from_ms.is_finite() { from_ms } else { 0.0 };
        let slot_ms = (last_ms - from_ms) / MAX_COLUMNS as f64;
        let mut columns: Vec<Column> = Vec::new();
        let mut times: Vec<(f64, f64)> = Vec::new(); // (covered ms, waited ms) per column
        let mut slot_of_last = None;
        for (sample, ms) in samples.iter().zip(&per_tick) {
            let start = start_ms(sample);
            let end = sample.offset_ms as f64;
            let slot = if samples.len() > MAX_COLUMNS && slot_ms > 0.0 {
                Some((((end - from_ms) / slot_ms).floor() as u64).min(MAX_COLUMNS as u64 - 1))
            } else {
                None
            };
            let contiguous = columns
                .last()
                .is_some_and(|c: &Column| start - c.end_ms <= gap_allowance(sample));
            if slot.is_none() || slot != slot_of_last || !contiguous {
                columns.push(Column {
                    start_ms: start,
                    end_ms: end,
                    bands: vec![0.0; band_count],
                    ..Column::default()
                });
                times.push((0.0, 0.0));
            }
            slot_of_last = slot;
            let column = columns.last_mut().expect("pushed above");
            let time = times.last_mut().expect("pushed above");
            column.end_ms = end.max(column.end_ms);
            // Sums of connection time for now; divided below.
            for (sum, v) in column.bands.iter_mut().zip(ms) {
                *sum += v;
            }
            column.mean_in_use += finite(sample.connection_ms);
            time.0 += sample.interval_ms as f64;
            time.1 += finite(sample.waited_ms);
            column.max_size = column.max_size.max(sample.max_size as f64);
            column.open = (sample.in_use as f64 + sample.idle as f64).min(1e300);
            column.peak_waiting = column
                .peak_waiting
                .max(sample.peak_waiting.max(sample.waiting) as f64);
        }
        for (column, (covered, waited)) in columns.iter_mut().zip(&times) {
            let per = |ms: f64| if *covered > 0.0 { ms / covered } else { 0.0 };
            for v in &mut column.bands {
                *v = per(*v);
            }
            column.mean_in_use = per(column.mean_in_use);
            column.mean_waiting = per(*waited);
        }

        // The axis ends at the report, unless it came long after the last
        // tick (then at the last tick; labels still count from the report).
        let now_ms = report.offset_ms as f64;
        let data_span = last_ms - from_ms;
        let to_ms = if now_ms >= last_ms && now_ms - last_ms <= data_span.max(1000.0) {
            now_ms
        } else {
            last_ms
        };
        let now_ms = now_ms.max(last_ms);
        let to_ms = to_ms.max(last_ms);
        let mut from_ms = from_ms.min(to_ms);
        if to_ms - from_ms < 1000.0 {
            // A short timeline: a second of axis at least, ending at the
            // report (the blank before the first tick is before the pool
            // was watched, never after now).
            from_ms = to_ms - 1000.0;
        }

        // Saturated stretches: the episodes the report lists (and the
        // ongoing one), and every saturated tick.
        let mut saturated: Vec<(f64, f64)> = report
            .episodes
            .iter()
            .map(|e| {
                (
                    now_ms - finite(e.started_ago_secs) * 1000.0,
                    now_ms - finite(e.ended_ago_secs) * 1000.0,
                )
            })
            .collect();
        if report.now.kind == "ongoing episode" {
            saturated.push((now_ms - finite(report.now.secs) * 1000.0, now_ms));
        }
        saturated.extend(
            samples
                .iter()
                .filter(|s| s.saturated)
                .map(|s| (start_ms(s), s.offset_ms as f64)),
        );
        let saturated = merge_stretches(saturated, from_ms, to_ms);

        Chart {
            bands,
            columns,
            from_ms,
            to_ms,
            now_ms,
            saturated,
        }
    }
}

/// How far apart two ticks may be and still be drawn as one run: offsets
/// and intervals are whole milliseconds, so a tick's start can miss the
/// previous end by one.
fn gap_allowance(sample: &PressureSample) -> f64 {
    (sample.interval_ms as f64 * 0.5).max(2.0)
}

/// [`gap_allowance`] for a column (of one tick, or of a slot of them).
fn gap_allowance_ms(column: &Column) -> f64 {
    ((column.end_ms - column.start_ms) * 0.5).max(2.0)
}

/// Sorted, merged, clipped to the axis; empty stretches dropped.
fn merge_stretches(mut stretches: Vec<(f64, f64)>, from: f64, to: f64) -> Vec<(f64, f64)> {
    stretches.retain(|(a, b)| a.is_finite() && b.is_finite());
    stretches.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (a, b) in stretches {
        let (a, b) = (a.max(from), b.min(to));
        if b <= a {
            continue;
        }
        match merged.last_mut() {
            Some(last) if a <= last.1 + 1.0 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Text for XML: the five escapes, and the characters XML 1.0 forbids
/// (control characters in a pool name) replaced.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `file:line` for the legend, at most `max` characters: the column
/// dropped, and a long path cut to its last components (`…/jobs/cleanup.rs:42`).
pub(super) fn site_label(site: &str, max: usize) -> String {
    let mut parts = site.rsplitn(3, ':');
    let (column, line, file) = (parts.next(), parts.next(), parts.next());
    let numeric =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    let (file, suffix) = match (file, numeric(line) && numeric(column)) {
        (Some(file), true) => (file, format!(":{}", line.unwrap_or_default())),
        _ => (site, String::new()),
    };
    let budget = max.saturating_sub(suffix.chars().count()).max(8);
    if file.chars().count() <= budget {
        return format!("{file}{suffix}");
    }
    let mut kept = String::new();
    for component in file.rsplit(['/', '\\']) {
        let candidate = if kept.is_empty() {
            component.to_owned()
        } else {
            format!("{component}/{kept}")
        };
        if candidate.chars().count() + 2 > budget {
            break;
        }
        kept = candidate;
    }
    if kept.is_empty() {
        // The file name alone is too long: its end.
        let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
        let chars: Vec<char> = name.chars().collect();
        let tail: String = chars[chars.len().saturating_sub(budget - 1)..]
            .iter()
            .collect();
        return format!("…{tail}{suffix}");
    }
    format!("…/{kept}{suffix}")
}

/// `text` cut to `max` characters in the middle (`start…end`).
fn shorten_middle(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_owned();
    }
    let head = (max - 1) * 2 / 3;
    let tail = max - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// A count for an axis or a legend: `12`, `1.5`, `12k`, `3.4M`, `2e21`.
fn count(v: f64) -> String {
    let v = finite(v);
    if v >= 1e15 {
        // `1.5e19`, `2e19`
        return format!("{v:.1e}").replace(".0e", "e");
    }
    for (unit, suffix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")] {
        if v >= unit {
            let scaled = v / unit;
            return if scaled < 10.0 && unit > 1e4 && scaled.fract() >= 0.05 {
                format!("{scaled:.1}{suffix}")
            } else {
                format!("{scaled:.0}{suffix}")
            };
        }
    }
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A step of about `max / target` on a 1-2-5 scale, at least `floor`.
fn nice_step(max: f64, target: f64, floor: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(floor)
}

/// The axis' top and its step: `max` rounded up to a whole step.
/// A value at the top gets one more step: the pool's size or the peak of
/// waiting drawn on the frame would be lost in it.
fn y_axis(max: f64, target: f64) -> (f64, f64) {
    let max = finite(max).max(1.0);
    let step = nice_step(max, target, 1.0);
    let top = (max / step).ceil() * step;
    let top = if top - max < step * 0.05 && top < 1e300 {
        top + step
    } else {
        top
    };
    (top, step)
}

/// The time step: one of the round durations, about `target` of them
/// over `span_ms`.
fn time_step(span_ms: f64, target: f64) -> f64 {
    const STEPS_MS: [f64; 25] = [
        10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3,
        600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3, 172800e3,
    ];
    let raw = span_ms / target;
    STEPS_MS
        .into_iter()
        .find(|s| *s >= raw)
        .unwrap_or_else(|| nice_step(raw / 86400e3, 1.0, 1.0) * 86400e3)
}

/// `now`, `750ms ago`, `30s ago`, `1m 30s ago`, `2h ago`, `3d 4h ago`.
fn ago(ms: f64) -> String {
    let ms = finite(ms).round();
    if ms < 0.5 {
        return "now".to_owned();
    }
    if ms < 1000.0 {
        return format!("{ms:.0}ms ago");
    }
    let secs = ms / 1000.0;
    if secs < 60.0 {
        return if secs.fract() == 0.0 {
            format!("{secs:.0}s ago")
        } else {
            format!("{secs:.1}s ago")
        };
    }
    let secs = secs.round() as u64;
    let (big, small, big_unit, small_unit) = if secs < 3600 {
        (secs / 60, secs % 60, "m", "s")
    } else if secs < 86400 {
        (secs / 3600, secs % 3600 / 60, "h", "m")
    } else {
        (secs / 86400, secs % 86400 / 3600, "d", "h")
    };
    if small == 0 {
        format!("{big}{big_unit} ago")
    } else {
        format!("{big}{big_unit} {small}{small_unit} ago")
    }
}

/// Seconds ago as milliseconds, rounded as far as a header needs: to
/// seconds, to minutes past ten minutes, to hours past ten hours.
fn coarse(secs: f64) -> f64 {
    let secs = finite(secs);
    let unit = if secs >= 36_000.0 {
        3600.0
    } else if secs >= 600.0 {
        60.0
    } else if secs >= 10.0 {
        1.0
    } else {
        0.1
    };
    (secs / unit).round() * unit * 1000.0
}

/// A duration for the subtitle: `800 ms`, `12 s`, `15 min`, `2 h`.
fn span(ms: f64) -> String {
    let ms = finite(ms);
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 120e3 {
        let s = ms / 1000.0;
        if s < 10.0 && s.fract() > 0.05 {
            format!("{s:.1} s")
        } else {
            format!("{s:.0} s")
        }
    } else if ms < 7200e3 {
        format!("{:.0} min", ms / 60e3)
    } else if ms < 172800e3 {
        format!("{:.0} h", ms / 3600e3)
    } else {
        format!("{:.0} d", ms / 86400e3)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::types::{
        EpisodeReport, Pressure, Scope, SiteSample, SiteShare, SiteTimeline,
    };
    use crate::snapshot::PoolStatus;

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
}
