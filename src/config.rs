//! Runtime configuration: builder and environment variables.

use std::ffi::OsString;
use std::time::Duration;

use crate::errors::ConfigError;
use crate::stack_mode::StackMode;

/// Environment variable: the pool's name in events and reports.
pub const ENV_POOL_NAME: &str = "POOLWATCH_POOL_NAME";
/// Environment variable: hold time past which a guard is reported (humantime, e.g. `5s`).
pub const ENV_HOLD_THRESHOLD: &str = "POOLWATCH_HOLD_THRESHOLD";
/// Environment variable: wait time past which an acquire is reported (humantime, e.g. `1s`).
pub const ENV_SLOW_ACQUIRE: &str = "POOLWATCH_SLOW_ACQUIRE";
/// Environment variable: how many distinct call sites get their own statistics.
pub const ENV_MAX_SITES: &str = "POOLWATCH_MAX_SITES";
/// Environment variable: the pressure timeline's tick (humantime), or `off`.
pub const ENV_TIMELINE_TICK: &str = "POOLWATCH_TIMELINE_TICK";
/// Environment variable: how much pressure timeline to keep (humantime).
pub const ENV_TIMELINE_WINDOW: &str = "POOLWATCH_TIMELINE_WINDOW";
/// Environment variable: emit the report through tracing this often
/// (humantime), or `off` (the default).
pub const ENV_REPORT_EVERY: &str = "POOLWATCH_REPORT_EVERY";
/// Environment variable: how many call sites get a metrics label (`0` = none).
pub const ENV_METRICS_SITE_LABELS: &str = "POOLWATCH_METRICS_SITE_LABELS";
/// Environment variable: which checkouts capture a stack under `leak-report`
/// (`always`, `off`, `sample:N`, `first:N`); see [`StackMode`].
pub const ENV_STACKS: &str = "POOLWATCH_STACKS";
/// Environment variable: how much recent history reports and snapshots
/// describe (humantime, e.g. `5m`).
pub const ENV_WINDOW: &str = "POOLWATCH_WINDOW";
/// Environment variable: statement text in events and snapshots,
/// `sanitized` (the default: literals replaced by `?`) or `off`.
pub const ENV_STATEMENTS: &str = "POOLWATCH_STATEMENTS";
/// Environment variable: whether pools poolwatch builds ask the database
/// server about their holders under pressure (`on`, the default, or `off`).
pub const ENV_SERVER_VIEW: &str = "POOLWATCH_SERVER_VIEW";

/// The smallest hold or slow-acquire threshold accepted: below a
/// millisecond every checkout would be "slow".
pub const MIN_THRESHOLD: Duration = Duration::from_millis(1);
/// The smallest timeline tick accepted: each tick drains every shard.
pub const MIN_TICK: Duration = Duration::from_millis(10);

const KNOWN_VARIABLES: &[&str] = &[
    ENV_POOL_NAME,
    ENV_HOLD_THRESHOLD,
    ENV_SLOW_ACQUIRE,
    ENV_MAX_SITES,
    ENV_METRICS_SITE_LABELS,
    ENV_TIMELINE_TICK,
    ENV_TIMELINE_WINDOW,
    ENV_REPORT_EVERY,
    ENV_STACKS,
    ENV_WINDOW,
    ENV_STATEMENTS,
    ENV_SERVER_VIEW,
];

/// Whether statement text is shown in events, snapshots and reports.
///
/// ```
/// use poolwatch::{Statements, WatchConfig};
/// let config = WatchConfig::builder().statements(Statements::Off).build()?;
/// assert_eq!(config.statements, Statements::Off);
/// # Ok::<(), poolwatch::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Statements {
    /// Shown with every literal replaced by `?` (the default), bounded,
    /// never parameter values.
    #[default]
    Sanitized,
    /// Not shown at all.
    Off,
}

/// Checks a runtime or builder threshold against [`MIN_THRESHOLD`].
pub(crate) fn check_threshold(setting: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value < MIN_THRESHOLD {
        return Err(invalid_setting(
            setting,
            &format!("{value:?}"),
            "must be at least 1ms",
        ));
    }
    Ok(())
}

/// What poolwatch watches for, per pool.
///
/// Build it in code with [`WatchConfig::builder`], from the environment with
/// [`WatchConfig::from_env`], or both ([`WatchConfigBuilder::with_env`]).
///
/// | setting | default | environment variable |
/// |---|---|---|
/// | [`pool_name`](Self::pool_name) | `"default"`; pools built by `poolwatch::postgres`: `host:port/database` | `POOLWATCH_POOL_NAME` |
/// | [`hold_threshold`](Self::hold_threshold) | 5 s | `POOLWATCH_HOLD_THRESHOLD` |
/// | [`slow_acquire`](Self::slow_acquire) | 1 s | `POOLWATCH_SLOW_ACQUIRE` |
/// | [`max_sites`](Self::max_sites) | 256 | `POOLWATCH_MAX_SITES` |
/// | [`metrics_site_labels`](Self::metrics_site_labels) | 0 | `POOLWATCH_METRICS_SITE_LABELS` |
/// | [`timeline_tick`](Self::timeline_tick) | 1 s | `POOLWATCH_TIMELINE_TICK` (`off` disables) |
/// | [`timeline_window`](Self::timeline_window) | 15 min | `POOLWATCH_TIMELINE_WINDOW` |
/// | [`report_every`](Self::report_every) | off | `POOLWATCH_REPORT_EVERY` |
/// | [`stacks`](Self::stacks) | `always` | `POOLWATCH_STACKS` |
/// | [`window`](Self::window) | 5 min | `POOLWATCH_WINDOW` |
/// | [`statements`](Self::statements) | `sanitized` | `POOLWATCH_STATEMENTS` (`sanitized`, `off`) |
/// | [`server_view`](Self::server_view) | on | `POOLWATCH_SERVER_VIEW` (`on`, `off`) |
///
/// ```
/// use std::time::Duration;
/// use poolwatch::WatchConfig;
///
/// let config = WatchConfig::builder()
///     .pool_name("main")
///     .hold_threshold(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(config.pool_name, "main");
/// assert_eq!(config.slow_acquire, Duration::from_secs(1));
/// # Ok::<(), poolwatch::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchConfig {
    /// The pool's name in events and reports (`pool` field).
    pub pool_name: String,
    /// A guard returned after holding its connection longer than this is
    /// reported at WARN.
    pub hold_threshold: Duration,
    /// An acquire that waited longer than this is reported at WARN.
    pub slow_acquire: Duration,
    /// Distinct call sites with statistics of their own; later sites share
    /// the [`CallSite::OVERFLOW`](crate::CallSite::OVERFLOW) bucket, so memory stays bounded.
    pub max_sites: usize,
    /// With the `metrics` feature: how many call sites get per-site
    /// histograms with a `poolwatch.site` label (0, the default, for none).
    pub metrics_site_labels: usize,
    /// How often the pressure timeline samples the pool (`None`: never, and
    /// no sampling thread runs for this pool).
    pub timeline_tick: Option<Duration>,
    /// How much pressure timeline is kept (a ring buffer of
    /// `window / tick` samples).
    pub timeline_window: Duration,
    /// Emit [`WatchedPool::report`](crate::WatchedPool::report) at INFO
    /// (target `poolwatch`) this often; needs the timeline to be on (the
    /// sampler thread emits it).
    pub report_every: Option<Duration>,
    /// Which checkouts capture the stack that acquired them (only with the
    /// `leak-report` feature; ignored without it).
    pub stacks: StackMode,
    /// How much recent history reports and snapshots describe: statistics
    /// are kept in two generations of half this each, so a report covers
    /// between half of it and all of it, and a past incident ages out.
    /// Saturation episodes stay listed (the last 16) with their own times.
    pub window: Duration,
    /// Whether statement text is shown (sanitized) or not at all.
    pub statements: Statements,
    /// Whether a pool poolwatch builds (`poolwatch::postgres`) asks the
    /// database server, on a connection of its own, what the holders'
    /// backends do and who blocks whom while the pool is under pressure.
    /// Ready-made pools ([`WatchedPool::new`](crate::WatchedPool::new))
    /// never do.
    pub server_view: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            pool_name: Self::DEFAULT_POOL_NAME.to_owned(),
            hold_threshold: Duration::from_secs(5),
            slow_acquire: Duration::from_secs(1),
            max_sites: 256,
            metrics_site_labels: 0,
            timeline_tick: Some(Duration::from_secs(1)),
            timeline_window: Duration::from_secs(15 * 60),
            report_every: None,
            stacks: StackMode::Always,
            window: Duration::from_secs(5 * 60),
            statements: Statements::Sanitized,
            server_view: true,
        }
    }
}

impl WatchConfig {
    /// The pool name when none is given. The pools `poolwatch::postgres`
    /// builds replace it with `server.address:server.port/db.namespace`
    /// (OpenTelemetry's suggestion for `db.client.connection.pool.name`).
    ///
    /// ```
    /// assert_eq!(poolwatch::WatchConfig::default().pool_name, poolwatch::WatchConfig::DEFAULT_POOL_NAME);
    /// ```
    pub const DEFAULT_POOL_NAME: &'static str = "default";

    /// A builder starting from the defaults.
    pub fn builder() -> WatchConfigBuilder {
        WatchConfigBuilder {
            config: Self::default(),
            tick_from: None,
            window_from: None,
            report_from: None,
        }
    }

    /// The defaults, overridden by the `POOLWATCH_*` environment variables.
    ///
    /// A variable that is set but does not parse, or an unknown
    /// `POOLWATCH_*` variable, is an error naming it: never a silent default.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::builder().with_env()?.build()
    }

    /// Like [`from_env`](Self::from_env), reading the given variables instead
    /// of the process environment (variables not starting with `POOLWATCH_`
    /// are ignored).
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = poolwatch::WatchConfig::from_vars([
    ///     ("POOLWATCH_POOL_NAME", "main"),
    ///     ("POOLWATCH_HOLD_THRESHOLD", "1m 30s"),
    ///     ("HOME", "/root"),
    /// ])?;
    /// assert_eq!(config.hold_threshold, Duration::from_secs(90));
    /// # Ok::<(), poolwatch::ConfigError>(())
    /// ```
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::builder().with_vars(vars)?.build()
    }
}

/// Builds a [`WatchConfig`]; see there for the settings and defaults.
#[derive(Clone, Debug)]
pub struct WatchConfigBuilder {
    config: WatchConfig,
    /// The variable and value the timeline's tick and window came from,
    /// when they came from one: a check across the two at `build` then
    /// names it.
    tick_from: Option<(String, String)>,
    window_from: Option<(String, String)>,
    report_from: Option<(String, String)>,
}

impl WatchConfigBuilder {
    /// The pool's name in events and reports.
    pub fn pool_name(mut self, name: impl Into<String>) -> Self {
        self.config.pool_name = name.into();
        self
    }

    /// Hold time past which a returned guard is reported at WARN.
    pub fn hold_threshold(mut self, threshold: Duration) -> Self {
        self.config.hold_threshold = threshold;
        self
    }

    /// Wait time past which an acquire is reported at WARN.
    pub fn slow_acquire(mut self, threshold: Duration) -> Self {
        self.config.slow_acquire = threshold;
        self
    }

    /// How many distinct call sites get statistics of their own.
    pub fn max_sites(mut self, max_sites: usize) -> Self {
        self.config.max_sites = max_sites;
        self
    }

    /// How many call sites get per-site metrics (`metrics` feature).
    pub fn metrics_site_labels(mut self, sites: usize) -> Self {
        self.config.metrics_site_labels = sites;
        self
    }

    /// The pressure timeline's tick; `None` turns the timeline off.
    pub fn timeline_tick(mut self, tick: Option<Duration>) -> Self {
        self.config.timeline_tick = tick;
        self.tick_from = None;
        self
    }

    /// How much pressure timeline to keep.
    pub fn timeline_window(mut self, window: Duration) -> Self {
        self.config.timeline_window = window;
        self.window_from = None;
        self
    }

    /// Emit the report through tracing this often (`None`: never).
    pub fn report_every(mut self, every: Option<Duration>) -> Self {
        self.config.report_every = every;
        self.report_from = None;
        self
    }

    /// Which checkouts capture a stack (`leak-report` feature).
    ///
    /// ```
    /// use poolwatch::{StackMode, WatchConfig};
    /// let config = WatchConfig::builder().stacks(StackMode::Sample(100)).build()?;
    /// assert_eq!(config.stacks, StackMode::Sample(100));
    /// # Ok::<(), poolwatch::ConfigError>(())
    /// ```
    pub fn stacks(mut self, mode: StackMode) -> Self {
        self.config.stacks = mode;
        self
    }

    /// How much recent history reports and snapshots describe.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = poolwatch::WatchConfig::builder().window(Duration::from_secs(120)).build()?;
    /// assert_eq!(config.window, Duration::from_secs(120));
    /// # Ok::<(), poolwatch::ConfigError>(())
    /// ```
    pub fn window(mut self, window: Duration) -> Self {
        self.config.window = window;
        self
    }

    /// Whether statement text is shown (sanitized) or not at all.
    pub fn statements(mut self, statements: Statements) -> Self {
        self.config.statements = statements;
        self
    }

    /// Whether a pool poolwatch builds asks the database server about its
    /// holders under pressure (on by default). Off: no side connection is
    /// ever opened.
    ///
    /// ```
    /// let config = poolwatch::WatchConfig::builder().server_view(false).build()?;
    /// assert!(!config.server_view);
    /// # Ok::<(), poolwatch::ConfigError>(())
    /// ```
    pub fn server_view(mut self, on: bool) -> Self {
        self.config.server_view = on;
        self
    }

    /// Applies the `POOLWATCH_*` variables of the process environment.
    /// Settings made after this call override them.
    pub fn with_env(self) -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with("POOLWATCH_")) else {
                continue;
            };
            let value = value
                .into_string()
                .map_err(|_: OsString| ConfigError::NotUnicode {
                    variable: name.to_owned(),
                })?;
            vars.push((name.to_owned(), value));
        }
        self.with_vars(vars)
    }

    /// Applies `POOLWATCH_*` variables from the given pairs.
    pub fn with_vars<K, V>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref());
            match name {
                ENV_POOL_NAME => self.config.pool_name = parse_name(name, value)?,
                ENV_HOLD_THRESHOLD => {
                    self.config.hold_threshold = parse_at_least(name, value, MIN_THRESHOLD)?
                }
                ENV_SLOW_ACQUIRE => {
                    self.config.slow_acquire = parse_at_least(name, value, MIN_THRESHOLD)?
                }
                ENV_MAX_SITES => self.config.max_sites = parse_count(name, value)?,
                ENV_TIMELINE_TICK => {
                    self.config.timeline_tick = match value.trim() {
                        "off" | "none" => None,
                        _ => Some(parse_duration(name, value)?),
                    };
                    self.tick_from = Some((name.to_owned(), value.to_owned()));
                }
                ENV_TIMELINE_WINDOW => {
                    self.config.timeline_window = parse_duration(name, value)?;
                    self.window_from = Some((name.to_owned(), value.to_owned()));
                }
                ENV_REPORT_EVERY => {
                    self.config.report_every = match value.trim() {
                        "off" | "none" => None,
                        _ => Some(parse_duration(name, value)?),
                    };
                    self.report_from = Some((name.to_owned(), value.to_owned()));
                }
                ENV_METRICS_SITE_LABELS => {
                    self.config.metrics_site_labels = parse_count_or_zero(name, value)?
                }
                ENV_STACKS => self.config.stacks = parse_stacks(name, value)?,
                ENV_WINDOW => {
                    self.config.window = parse_at_least(name, value, Duration::from_secs(1))?
                }
                ENV_STATEMENTS => {
                    self.config.statements = match value.trim().to_ascii_lowercase().as_str() {
                        "sanitized" | "on" => Statements::Sanitized,
                        "off" | "none" => Statements::Off,
                        _ => {
                            return Err(invalid_variable(name, value, "expected sanitized or off"))
                        }
                    }
                }
                ENV_SERVER_VIEW => {
                    self.config.server_view = match value.trim().to_ascii_lowercase().as_str() {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        _ => return Err(invalid_variable(name, value, "expected on or off")),
                    }
                }
                _ if name.starts_with("POOLWATCH_") => {
                    return Err(ConfigError::UnknownVariable {
                        variable: name.to_owned(),
                        known: KNOWN_VARIABLES.join(", "),
                    })
                }
                _ => {}
            }
        }
        Ok(self)
    }

    /// Checks the settings and returns the configuration.
    pub fn build(self) -> Result<WatchConfig, ConfigError> {
        let c = &self.config;
        check_threshold("hold_threshold", c.hold_threshold)?;
        check_threshold("slow_acquire", c.slow_acquire)?;
        if c.window < Duration::from_secs(1) {
            return Err(invalid_setting(
                "window",
                &format!("{:?}", c.window),
                "must be at least 1s",
            ));
        }
        if c.max_sites == 0 {
            return Err(invalid_setting("max_sites", "0", "must be at least 1"));
        }
        if let Some(tick) = c.timeline_tick.filter(|t| *t < MIN_TICK) {
            const TOO_SHORT: &str = "must be at least 10ms, or off: each tick drains every shard";
            if let Some((variable, value)) = &self.tick_from {
                return Err(invalid_variable(variable, value, TOO_SHORT));
            }
            return Err(invalid_setting(
                "timeline_tick",
                &format!("{tick:?}"),
                "must be at least 10ms, or None: each tick drains every shard",
            ));
        }
        if let Some(tick) = c.timeline_tick.filter(|t| *t > c.timeline_window) {
            let window = humantime::format_duration(c.timeline_window).to_string();
            // Name the variable that set the window, else the tick's.
            if let Some((variable, value)) = &self.window_from {
                let tick = humantime::format_duration(tick);
                let reason = format!("must be at least one timeline tick ({tick})");
                return Err(invalid_variable(variable, value, reason));
            }
            if let Some((variable, value)) = &self.tick_from {
                let reason = format!("must not exceed the timeline window ({window})");
                return Err(invalid_variable(variable, value, reason));
            }
            return Err(invalid_setting(
                "timeline_window",
                &window,
                "must be at least one timeline tick",
            ));
        }
        if c.report_every.is_some() && c.timeline_tick.is_none() {
            const NEEDS_TIMELINE: &str =
                "the report needs the timeline (its thread emits it); the timeline is off";
            if let Some((variable, value)) = self.report_from.as_ref().or(self.tick_from.as_ref()) {
                return Err(invalid_variable(variable, value, NEEDS_TIMELINE));
            }
            return Err(invalid_setting(
                "report_every",
                "Some(..)",
                "needs the timeline (timeline_tick), whose thread emits the report",
            ));
        }
        if c.pool_name.trim().is_empty() {
            return Err(invalid_setting("pool_name", "\"\"", "must not be empty"));
        }
        Ok(self.config)
    }
}

fn invalid_setting(setting: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidSetting {
        setting,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn invalid_variable(variable: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidVariable {
        variable: variable.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_duration(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(value.trim()).map_err(|e| {
        invalid_variable(
            variable,
            value,
            format!("{e}; expected a duration such as 500ms, 5s or 2m"),
        )
    })?;
    if duration.is_zero() {
        return Err(invalid_variable(
            variable,
            value,
            "must be greater than zero",
        ));
    }
    Ok(duration)
}

/// A duration no shorter than `minimum`.
fn parse_at_least(variable: &str, value: &str, minimum: Duration) -> Result<Duration, ConfigError> {
    let duration = parse_duration(variable, value)?;
    if duration < minimum {
        let minimum = humantime::format_duration(minimum);
        return Err(invalid_variable(
            variable,
            value,
            format!("must be at least {minimum}"),
        ));
    }
    Ok(duration)
}

fn parse_count(variable: &str, value: &str) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err(invalid_variable(variable, value, "must be at least 1")),
        Ok(n) => Ok(n),
        Err(e) => Err(invalid_variable(
            variable,
            value,
            format!("{e}; expected a whole number such as 256"),
        )),
    }
}

fn parse_count_or_zero(variable: &str, value: &str) -> Result<usize, ConfigError> {
    value.trim().parse::<usize>().map_err(|e| {
        invalid_variable(
            variable,
            value,
            format!("{e}; expected a whole number such as 0 or 20"),
        )
    })
}

fn parse_stacks(variable: &str, value: &str) -> Result<StackMode, ConfigError> {
    StackMode::parse(value).map_err(|reason| invalid_variable(variable, value, reason))
}

fn parse_name(variable: &str, value: &str) -> Result<String, ConfigError> {
    let name = value.trim();
    if name.is_empty() {
        return Err(invalid_variable(variable, value, "must not be empty"));
    }
    Ok(name.to_owned())
}
