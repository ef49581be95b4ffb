//! Property tests of configuration parsing: whatever the variables hold,
//! `WatchConfig::from_vars` returns `Ok` or an error naming what was
//! wrong — it never panics — and any configuration that builds also runs a
//! pool (no overflow on extreme thresholds, windows or ticks).
use std::convert::Infallible;
use std::time::Duration;

use deadpool::managed::{Metrics, Pool, RecycleResult};
use poolwatch::{ConfigError, WatchConfig, WatchedPool};
use proptest::prelude::*;

const KNOWN: &[&str] = &[
    poolwatch::ENV_POOL_NAME,
    poolwatch::ENV_HOLD_THRESHOLD,
    poolwatch::ENV_SLOW_ACQUIRE,
    poolwatch::ENV_MAX_SITES,
    poolwatch::ENV_METRICS_SITE_LABELS,
    poolwatch::ENV_TIMELINE_TICK,
    poolwatch::ENV_TIMELINE_WINDOW,
    poolwatch::ENV_STACKS,
];

/// Variable names: the known ones, near misses, other `POOLWATCH_*`
/// names, and arbitrary text (ignored unless it starts with `POOLWATCH_`).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KNOWN).prop_map(str::to_owned),
        1 => proptest::sample::select(KNOWN).prop_map(|k| k.to_ascii_lowercase()),
        1 => proptest::sample::select(KNOWN).prop_map(|k| format!("{k} ")),
        2 => "POOLWATCH_[A-Z_]{0,12}",
        1 => "POOLWATCH_\\PC{0,8}",
        2 => "\\PC{0,16}",
        1 => ".{0,16}",
    ]
}

/// Values: arbitrary text, and text shaped like what the parsers expect
/// (durations with odd numbers and units, counts, stack modes).
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => ".{0,24}",
        2 => "[0-9]{1,25} ?(ns|us|ms|s|m|h|d|w|M|y|years|parsecs)?",
        1 => "[ \\t]*[0-9]{1,3}(s|ms)[ \\t]*",
        1 => "-?[0-9]{1,22}",
        1 => "(always|off|none|sample|first|ALWAYS|Sample)(:-?[0-9]{0,12})?",
        1 => any::<u64>().prop_map(|n| format!("{n}s")),
        1 => any::<u64>().prop_map(|n| format!("{n}ns")),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just(String::new()),
    ]
}

/// Checks that an error names a variable it was given (also for the check
/// across settings made at `build`).
fn assert_names_culprit(error: &ConfigError, vars: &[(String, String)]) {
    let message = error.to_string();
    match error {
        ConfigError::InvalidVariable {
            variable, value, ..
        } => {
            assert!(
                vars.iter().any(|(n, v)| n == variable && v == value),
                "{error:?} names a variable/value pair that was not given"
            );
            assert!(KNOWN.contains(&variable.as_str()), "{error:?}");
            assert!(message.contains(variable.as_str()), "{message}");
        }
        ConfigError::UnknownVariable { variable, known } => {
            assert!(vars.iter().any(|(n, _)| n == variable), "{error:?}");
            assert!(variable.starts_with("POOLWATCH_"), "{error:?}");
            assert!(!KNOWN.contains(&variable.as_str()), "{error:?}");
            assert!(message.contains(variable.as_str()), "{message}");
            for k in KNOWN {
                assert!(known.contains(k), "{known} does not list {k}");
            }
        }
        ConfigError::InvalidSetting { .. } => {
            panic!("an error caused by variables names a setting, not the variable: {message}")
        }
        ConfigError::NotUnicode { .. } => panic!("from_vars takes str: {error:?}"),
        other => panic!("unexpected error kind {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_variables_give_ok_or_an_error_naming_them(
        vars in proptest::collection::vec((name(), value()), 0..6)
    ) {
        match WatchConfig::from_vars(vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
            Ok(config) => {
                prop_assert!(!config.pool_name.trim().is_empty());
                prop_assert!(!config.hold_threshold.is_zero());
                prop_assert!(!config.slow_acquire.is_zero());
                prop_assert!(config.max_sites >= 1);
                if let Some(tick) = config.timeline_tick {
                    prop_assert!(!tick.is_zero() && tick <= config.timeline_window);
                }
            }
            Err(error) => assert_names_culprit(&error, &vars),
        }
    }

    #[test]
    fn a_known_variable_with_any_value_is_ok_or_names_itself(
        name in proptest::sample::select(KNOWN),
        value in value(),
    ) {
        match WatchConfig::from_vars([(name, value.as_str())]) {
            Ok(_) => {}
            Err(error) => {
                let vars = [(name.to_owned(), value.clone())];
                assert_names_culprit(&error, &vars);
            }
        }
    }

    #[test]
    fn valid_durations_round_trip(ms in 1u64..10_000_000) {
        let text = humantime::format_duration(Duration::from_millis(ms)).to_string();
        let config = WatchConfig::from_vars([
            (poolwatch::ENV_HOLD_THRESHOLD, text.as_str()),
            (poolwatch::ENV_SLOW_ACQUIRE, text.as_str()),
        ]).unwrap();
        prop_assert_eq!(config.hold_threshold, Duration::from_millis(ms));
        prop_assert_eq!(config.slow_acquire, Duration::from_millis(ms));
    }
}

/// A manager without a database, so configurations can be run cheaply.
struct Numbers;

impl deadpool::managed::Manager for Numbers {
    type Type = u64;
    type Error = Infallible;

    async fn create(&self) -> Result<u64, Infallible> {
        Ok(7)
    }

    async fn recycle(&self, _: &mut u64, _: &Metrics) -> RecycleResult<Infallible> {
        Ok(())
    }
}

fn extreme_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX / 2)),
        (1u64..u64::MAX).prop_map(Duration::from_nanos),
        (1u64..u64::MAX).prop_map(Duration::from_secs),
    ]
}

proptest! {
    // Each case builds a pool (and, under leak-report, wakes the watchdog):
    // few cases, still every extreme.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_config_that_builds_runs_a_pool(
        hold in extreme_duration(),
        slow in extreme_duration(),
        tick in proptest::option::of(extreme_duration()),
        window in extreme_duration(),
        max_sites in prop_oneof![Just(1usize), Just(usize::MAX), 1usize..1000],
        name in "\\PC{1,80}",
    ) {
        let built = WatchConfig::builder()
            .pool_name(name)
            .hold_threshold(hold)
            .slow_acquire(slow)
            .timeline_tick(tick)
            .timeline_window(window)
            .max_sites(max_sites)
            .build();
        let Ok(config) = built else { return Ok(()) };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let pool = WatchedPool::new(Pool::builder(Numbers).max_size(1).build().unwrap(), config);
            let guard = pool.get().await.unwrap();
            assert_eq!(**guard, 7);
            let snapshot = pool.snapshot();
            assert_eq!(snapshot.outstanding.len(), 1);
            drop(guard);
            pool.set_hold_threshold(hold).unwrap();
            let report = pool.report();
            assert_eq!(report.sites.iter().map(|s| s.checkouts).sum::<u64>(), 1);
            let _ = report.to_string();
            assert_eq!(pool.outstanding_count(), 0);
        });
    }
}
