//! [`StackMode`]: which checkouts get a stack captured (`leak-report`).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::errors::ConfigError;

/// Which checkouts record the stack that acquired them.
///
/// Stacks are captured only with the `leak-report` feature; without it the
/// mode is accepted (so the same configuration works in every build) and
/// ignored. Set it with [`WatchConfigBuilder::stacks`](crate::WatchConfigBuilder::stacks),
/// the `POOLWATCH_STACKS` variable (`always`, `off`, `sample:N`, `first:N`)
/// or at runtime with [`WatchedPool::set_stack_mode`](crate::WatchedPool::set_stack_mode).
///
/// ```
/// use poolwatch::StackMode;
///
/// assert_eq!("sample:100".parse::<StackMode>()?, StackMode::Sample(100));
/// assert_eq!(StackMode::First(5).to_string(), "first:5");
/// assert_eq!(StackMode::default(), StackMode::Always);
/// # Ok::<(), poolwatch::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum StackMode {
    /// Every checkout (the default).
    #[default]
    Always,
    /// No checkout.
    Off,
    /// One in N checkouts of each call site, starting with the first.
    /// `Sample(0)` captures none.
    Sample(u32),
    /// The first N checkouts of each call site.
    First(u32),
}

const EXPECTED: &str = "expected always, off, sample:N or first:N with N at least 1";

impl StackMode {
    /// Parses `always`, `off`, `sample:N` or `first:N`; the error is the
    /// reason, with the expected form.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim().to_ascii_lowercase();
        let count = |n: &str| match n.trim().parse::<u32>() {
            Ok(0) => Err(format!(
                "N must be at least 1 (use off to capture none); {EXPECTED}"
            )),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("{e}; {EXPECTED}")),
        };
        match value.split_once(':') {
            None if value == "always" => Ok(StackMode::Always),
            None if value == "off" => Ok(StackMode::Off),
            Some(("sample", n)) => count(n).map(StackMode::Sample),
            Some(("first", n)) => count(n).map(StackMode::First),
            _ => Err(EXPECTED.to_owned()),
        }
    }

    /// Whether the `seen`-th checkout of a site (counting from 0) gets a
    /// stack.
    #[cfg(any(feature = "leak-report", test))]
    pub(crate) fn wants(self, seen: u64) -> bool {
        match self {
            StackMode::Always => true,
            StackMode::Off => false,
            StackMode::Sample(0) => false,
            StackMode::Sample(n) => seen.is_multiple_of(u64::from(n)),
            StackMode::First(n) => seen < u64::from(n),
        }
    }

    fn encode(self) -> u64 {
        let (tag, n) = match self {
            StackMode::Always => (0, 0),
            StackMode::Off => (1, 0),
            StackMode::Sample(n) => (2, n),
            StackMode::First(n) => (3, n),
        };
        (tag << 32) | u64::from(n)
    }

    fn decode(bits: u64) -> Self {
        let n = bits as u32;
        match bits >> 32 {
            0 => StackMode::Always,
            2 => StackMode::Sample(n),
            3 => StackMode::First(n),
            _ => StackMode::Off,
        }
    }
}

impl FromStr for StackMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        StackMode::parse(s).map_err(|reason| ConfigError::InvalidSetting {
            setting: "stacks",
            value: s.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for StackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackMode::Always => f.write_str("always"),
            StackMode::Off => f.write_str("off"),
            StackMode::Sample(n) => write!(f, "sample:{n}"),
            StackMode::First(n) => write!(f, "first:{n}"),
        }
    }
}

/// A [`StackMode`] that can be changed at runtime, read with one atomic
/// load.
#[derive(Debug)]
pub(crate) struct AtomicStackMode(AtomicU64);

impl AtomicStackMode {
    pub(crate) fn new(mode: StackMode) -> Self {
        Self(AtomicU64::new(mode.encode()))
    }
    pub(crate) fn get(&self) -> StackMode {
        StackMode::decode(self.0.load(Ordering::Relaxed))
    }
    pub(crate) fn set(&self, mode: StackMode) {
        self.0.store(mode.encode(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for mode in [
            StackMode::Always,
            StackMode::Off,
            StackMode::Sample(7),
            StackMode::First(u32::MAX),
        ] {
            assert_eq!(mode.to_string().parse::<StackMode>().unwrap(), mode);
            assert_eq!(StackMode::decode(mode.encode()), mode);
        }
    }

    #[test]
    fn sampling_decisions() {
        let picked = |mode: StackMode| (0..10).filter(|&i| mode.wants(i)).count();
        assert_eq!(picked(StackMode::Always), 10);
        assert_eq!(picked(StackMode::Off), 0);
        assert_eq!(picked(StackMode::Sample(3)), 4); // 0, 3, 6, 9
        assert_eq!(picked(StackMode::First(2)), 2);
        assert_eq!(picked(StackMode::Sample(0)), 0);
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "sometimes",
            "sample:",
            "sample:0",
            "first:-1",
            "first:x",
            "",
        ] {
            assert!(StackMode::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(StackMode::parse(" Sample:5 "), Ok(StackMode::Sample(5)));
    }
}
