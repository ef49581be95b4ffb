//! The pressure timeline as a self-contained SVG picture.

use std::fmt::Write;

use crate::timeline::PressureSample;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;

/// A series: name, colour, value of a sample, extra stroke attributes.
type Series = (
    &'static str,
    &'static str,
    fn(&PressureSample) -> usize,
    &'static str,
);

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Connections in use, idle and waiting over time, with the pool's
/// maximum size as a dashed line.
pub(super) fn timeline(pool: &str, samples: &[PressureSample]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let t0 = samples.first().map_or(0, |s| s.offset_ms) as f64;
    let t1 = samples.last().map_or(0, |s| s.offset_ms) as f64;
    let span_ms = (t1 - t0).max(1.0);
    let y_max = samples
        .iter()
        .map(|s| s.max_size.max(s.in_use + s.idle).max(s.waiting))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |s: &PressureSample| LEFT + (s.offset_ms as f64 - t0) / span_ms * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;
    let points = |value: fn(&PressureSample) -> usize| {
        samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s), y(value(s) as f64)))
            .collect::<Vec<_>>()
            .join(" ")
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        "<title>poolwatch: pool {} pressure timeline</title>",
        escape(pool)
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="14">pool {}: connections over {:.1} s ({} samples)</text>"#,
        escape(pool),
        span_ms / 1000.0,
        samples.len()
    );
    // Axes and a grid line per connection step (at most ~8 labels).
    let step = (y_max / 8.0).ceil().max(1.0);
    let mut v = 0.0;
    while v <= y_max {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{v}</text>"##,
            y = y(v),
            x2 = LEFT + plot_w,
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
        );
        v += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the pool was wrapped: {:.1} … {:.1}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        t0 / 1000.0,
        t1 / 1000.0
    );
    let series: [Series; 4] = [
        (
            "max_size",
            "#888888",
            |s| s.max_size,
            r#" stroke-dasharray="6 4""#,
        ),
        ("in_use", "#d62728", |s| s.in_use, ""),
        ("idle", "#2ca02c", |s| s.idle, ""),
        ("waiting", "#1f77b4", |s| s.waiting, ""),
    ];
    for (i, (name, color, value, dash)) in series.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<polyline class="series" data-series="{name}" fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            points(*value)
        );
        let lx = LEFT + 10.0 + i as f64 * 110.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{lx2:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{tx:.1}" y="{ty:.1}">{name}</text>"#,
            ly = TOP - 8.0,
            lx2 = lx + 20.0,
            tx = lx + 25.0,
            ty = TOP - 4.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_escapes_the_name() {
        let samples: Vec<PressureSample> = (0..5)
            .map(|i| PressureSample {
                offset_ms: i * 1000,
                in_use: i as usize,
                idle: 4 - i as usize,
                waiting: 0,
                max_size: 4,
                checkouts: 3,
                interval_ms: 1000,
                ..PressureSample::default()
            })
            .collect();
        let svg = timeline("a<b", &samples);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for name in ["in_use", "idle", "waiting", "max_size"] {
            assert!(svg.contains(&format!(r#"data-series="{name}""#)), "{name}");
        }
        assert!(svg.contains("pool a&lt;b"));
        assert!(!svg.contains("a<b"));
    }

    #[test]
    fn empty_timeline_is_still_a_picture() {
        let svg = timeline("p", &[]);
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
    }
}
