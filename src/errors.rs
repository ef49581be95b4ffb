//! Errors of poolwatch itself. Checkout errors are deadpool's own
//! [`PoolError`](deadpool::managed::PoolError), passed through unchanged.

/// A configuration value that poolwatch refuses, naming what was wrong.
///
/// ```
/// let err = poolwatch::WatchConfig::from_vars([("POOLWATCH_HOLD_THRESHOLD", "five seconds")])
///     .unwrap_err();
/// assert!(err.to_string().contains("POOLWATCH_HOLD_THRESHOLD"));
/// assert!(err.to_string().contains("five seconds"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable holds a value that does not parse.
    #[error("environment variable {variable}={value:?} is invalid: {reason}")]
    InvalidVariable {
        /// The variable's name, e.g. `POOLWATCH_HOLD_THRESHOLD`.
        variable: String,
        /// The value it held.
        value: String,
        /// Why it was refused, with the expected form.
        reason: String,
    },
    /// An environment variable is not valid Unicode.
    #[error("environment variable {variable} is not valid unicode")]
    NotUnicode {
        /// The variable's name.
        variable: String,
    },
    /// A `POOLWATCH_*` variable that poolwatch does not know (often a typo).
    #[error("unknown environment variable {variable}; poolwatch reads {known}")]
    UnknownVariable {
        /// The variable's name.
        variable: String,
        /// The variables poolwatch does read, comma separated.
        known: String,
    },
    /// A setting given to the builder is out of range.
    #[error("setting {setting} = {value} is invalid: {reason}")]
    InvalidSetting {
        /// The builder method, e.g. `hold_threshold`.
        setting: &'static str,
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

impl From<ConfigError> for std::io::Error {
    /// For a `main` returning `std::io::Result`: `?` on a configuration
    /// error gives an `InvalidInput` error with the same message.
    fn from(error: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}
