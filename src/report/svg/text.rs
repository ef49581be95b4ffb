//! Labels and scales: XML escaping, site labels, counts, durations, and
//! the steps of both axes.

/// A finite, non-negative number (whatever a deserialized report holds).
pub(super) fn finite(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v.min(1e300)
    } else {
        0.0
    }
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
pub(super) fn shorten_middle(text: &str, max: usize) -> String {
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
pub(super) fn count(v: f64) -> String {
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
pub(super) fn nice_step(max: f64, target: f64, floor: f64) -> f64 {
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
pub(super) fn y_axis(max: f64, target: f64) -> (f64, f64) {
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
pub(super) fn time_step(span_ms: f64, target: f64) -> f64 {
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
pub(super) fn ago(ms: f64) -> String {
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
pub(super) fn coarse(secs: f64) -> f64 {
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
pub(super) fn span(ms: f64) -> String {
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
