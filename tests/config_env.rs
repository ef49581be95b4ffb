//! Configuration from the builder and the environment: bad values are
//! errors naming the variable and the value.
use std::time::Duration;

use poolwatch::{ConfigError, WatchConfig};

#[test]
fn variables_override_defaults() {
    let config = WatchConfig::from_vars([
        ("POOLWATCH_POOL_NAME", "main"),
        ("POOLWATCH_HOLD_THRESHOLD", "2s 500ms"),
        ("POOLWATCH_SLOW_ACQUIRE", "250ms"),
        ("POOLWATCH_MAX_SITES", "32"),
        ("PATH", "/usr/bin"),
    ])
    .unwrap();
    assert_eq!(config.pool_name, "main");
    assert_eq!(config.hold_threshold, Duration::from_millis(2500));
    assert_eq!(config.slow_acquire, Duration::from_millis(250));
    assert_eq!(config.max_sites, 32);
}

#[test]
fn defaults_without_variables() {
    let config = WatchConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
    assert_eq!(config, WatchConfig::default());
    assert_eq!(config.hold_threshold, Duration::from_secs(5));
    assert_eq!(config.slow_acquire, Duration::from_secs(1));
}

fn invalid(variable: &str, value: &str) -> ConfigError {
    WatchConfig::from_vars([(variable, value)]).unwrap_err()
}

#[test]
fn bad_duration_names_variable_and_value() {
    let error = invalid("POOLWATCH_HOLD_THRESHOLD", "5 parsecs");
    match &error {
        ConfigError::InvalidVariable {
            variable, value, ..
        } => {
            assert_eq!(variable, "POOLWATCH_HOLD_THRESHOLD");
            assert_eq!(value, "5 parsecs");
        }
        other => panic!("unexpected {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("POOLWATCH_HOLD_THRESHOLD"), "{message}");
    assert!(message.contains("5 parsecs"), "{message}");
    assert!(message.contains("expected a duration"), "{message}");
}

#[test]
fn bare_number_is_refused_rather_than_guessed() {
    // "5" could mean seconds or milliseconds: humantime wants a unit.
    let message = invalid("POOLWATCH_SLOW_ACQUIRE", "5").to_string();
    assert!(message.contains("POOLWATCH_SLOW_ACQUIRE"), "{message}");
}

#[test]
fn zero_and_empty_values_are_refused() {
    for (variable, value) in [
        ("POOLWATCH_HOLD_THRESHOLD", "0s"),
        ("POOLWATCH_MAX_SITES", "0"),
        ("POOLWATCH_MAX_SITES", "-3"),
        ("POOLWATCH_MAX_SITES", "lots"),
        ("POOLWATCH_POOL_NAME", "  "),
        ("POOLWATCH_SLOW_ACQUIRE", ""),
    ] {
        let message = invalid(variable, value).to_string();
        assert!(message.contains(variable), "{message}");
        assert!(message.contains(&format!("{value:?}")), "{message}");
    }
}

#[test]
fn unknown_poolwatch_variable_is_an_error() {
    let error = invalid("POOLWATCH_HOLD_TRESHOLD", "5s");
    let message = error.to_string();
    assert!(matches!(error, ConfigError::UnknownVariable { .. }));
    assert!(message.contains("POOLWATCH_HOLD_TRESHOLD"), "{message}");
    assert!(message.contains("POOLWATCH_HOLD_THRESHOLD"), "{message}");
}

#[test]
fn builder_refuses_out_of_range_settings() {
    let error = WatchConfig::builder()
        .hold_threshold(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("hold_threshold"), "{error}");
    let error = WatchConfig::builder().max_sites(0).build().unwrap_err();
    assert!(error.to_string().contains("max_sites"), "{error}");
}

/// The only test in this binary that touches the process environment, so it
/// cannot race another test reading it.
#[test]
fn process_environment_is_read_and_checked() {
    std::env::set_var("POOLWATCH_HOLD_THRESHOLD", "750ms");
    std::env::set_var("POOLWATCH_POOL_NAME", "from-env");
    let config = WatchConfig::builder()
        .slow_acquire(Duration::from_millis(5))
        .with_env()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(config.hold_threshold, Duration::from_millis(750));
    assert_eq!(config.pool_name, "from-env");
    assert_eq!(config.slow_acquire, Duration::from_millis(5));

    std::env::set_var("POOLWATCH_HOLD_THRESHOLD", "soon");
    let message = WatchConfig::from_env().unwrap_err().to_string();
    assert!(
        message.contains("POOLWATCH_HOLD_THRESHOLD=\"soon\""),
        "{message}"
    );
    std::env::remove_var("POOLWATCH_HOLD_THRESHOLD");
    std::env::remove_var("POOLWATCH_POOL_NAME");
}

#[test]
fn stacks_variable_sets_the_stack_mode() {
    use poolwatch::StackMode;
    for (value, mode) in [
        ("always", StackMode::Always),
        ("off", StackMode::Off),
        ("sample:100", StackMode::Sample(100)),
        (" FIRST:5 ", StackMode::First(5)),
    ] {
        let config = WatchConfig::from_vars([("POOLWATCH_STACKS", value)]).unwrap();
        assert_eq!(config.stacks, mode, "{value}");
    }
    assert_eq!(WatchConfig::default().stacks, StackMode::Always);
}

#[test]
fn bad_stacks_value_names_variable_and_value() {
    for value in ["sometimes", "sample:0", "sample:", "first:many", "always:3"] {
        let error = invalid("POOLWATCH_STACKS", value);
        match &error {
            ConfigError::InvalidVariable {
                variable,
                value: given,
                ..
            } => {
                assert_eq!(variable, "POOLWATCH_STACKS");
                assert_eq!(given, value);
            }
            other => panic!("unexpected {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains("POOLWATCH_STACKS"), "{message}");
        assert!(message.contains(&format!("{value:?}")), "{message}");
        assert!(message.contains("sample:N"), "{message}");
    }
}

#[test]
fn tick_longer_than_window_names_the_variable() {
    // The tick set from the environment, the window left at its default.
    let error = invalid("POOLWATCH_TIMELINE_TICK", "1h");
    let message = error.to_string();
    assert!(
        matches!(&error, ConfigError::InvalidVariable { variable, value, .. }
            if variable == "POOLWATCH_TIMELINE_TICK" && value == "1h"),
        "{error:?}"
    );
    assert!(message.contains("timeline window (15m)"), "{message}");

    // The window set from the environment is the one named.
    let error = WatchConfig::from_vars([
        ("POOLWATCH_TIMELINE_TICK", "10s"),
        ("POOLWATCH_TIMELINE_WINDOW", "5s"),
    ])
    .unwrap_err();
    assert!(
        matches!(&error, ConfigError::InvalidVariable { variable, value, .. }
            if variable == "POOLWATCH_TIMELINE_WINDOW" && value == "5s"),
        "{error:?}"
    );

    // A later builder call overrides the variable, and is what is named.
    let config = WatchConfig::builder()
        .with_vars([("POOLWATCH_TIMELINE_TICK", "1h")])
        .unwrap()
        .timeline_window(Duration::from_secs(7200))
        .build()
        .unwrap();
    assert_eq!(config.timeline_tick, Some(Duration::from_secs(3600)));
    let error = WatchConfig::builder()
        .with_vars([("POOLWATCH_TIMELINE_WINDOW", "1m")])
        .unwrap()
        .timeline_tick(Some(Duration::from_secs(120)))
        .timeline_window(Duration::from_secs(60))
        .build()
        .unwrap_err();
    assert!(
        matches!(&error, ConfigError::InvalidSetting { setting, .. } if *setting == "timeline_window"),
        "{error:?}"
    );
}
