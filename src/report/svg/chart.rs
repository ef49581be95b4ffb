//! The picture's numbers, apart from the drawing: bands (the busiest
//! sites, the rest), columns (ticks, or slots of them added up), the time
//! axis and the saturated stretches.

use super::layout::{MAX_COLUMNS, TOP_SITES};
use super::text::finite;
use crate::report::types::Report;
use crate::timeline::PressureSample;

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

pub(super) fn start_ms(s: &PressureSample) -> f64 {
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
pub(super) fn gap_allowance(sample: &PressureSample) -> f64 {
    (sample.interval_ms as f64 * 0.5).max(2.0)
}

/// [`gap_allowance`] for a column (of one tick, or of a slot of them).
pub(super) fn gap_allowance_ms(column: &Column) -> f64 {
    ((column.end_ms - column.start_ms) * 0.5).max(2.0)
}

/// Sorted, merged, clipped to the axis; empty stretches dropped.
pub(super) fn merge_stretches(
    mut stretches: Vec<(f64, f64)>,
    from: f64,
    to: f64,
) -> Vec<(f64, f64)> {
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
