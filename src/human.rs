//! Durations for people and for event fields, shared by the events and
//! the report.

use std::time::Duration;

/// Whole milliseconds (saturating), the unit of `*_ms` event fields.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration rounded for people: `850us`, `42ms`, `1s 250ms`, `1m 35s`.
pub(crate) fn human(d: Duration) -> humantime::FormattedDuration {
    let rounded = if d < Duration::from_millis(1) {
        Duration::from_micros(d.as_micros() as u64)
    } else if d < Duration::from_secs(10) {
        Duration::from_millis(millis(d))
    } else {
        Duration::from_secs(d.as_secs())
    };
    humantime::format_duration(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_for_people() {
        assert_eq!(human(Duration::from_micros(850)).to_string(), "850us");
        assert_eq!(human(Duration::from_micros(42_400)).to_string(), "42ms");
        assert_eq!(human(Duration::from_millis(95_400)).to_string(), "1m 35s");
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
