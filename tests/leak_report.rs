//! `leak-report`: the watchdog flags guards while they are still held, a
//! flagged guard's return is reported, guards never returned are reported
//! at close and at the last handle's drop, and reports carry the stack that
//! acquired the guard.
//!
//! The watchdog's events come from its own thread, so this binary captures
//! with a process-wide subscriber; each test filters by its own pool name.
#![cfg(feature = "leak-report")]
mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use poolwatch::{Guard, StackMode, WatchConfig, WatchedPool};
use support::capture::{Capture, Captured};
use support::pg;
use tracing::{Instrument, Level};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.subscriber())
            .expect("the only global subscriber of this binary");
        capture
    })
}

fn watched(name: &str, hold: Duration) -> poolwatch::postgres::Pool {
    watched_with(name, hold, StackMode::Always, 2)
}

fn watched_with(
    name: &str,
    hold: Duration,
    stacks: StackMode,
    max_size: usize,
) -> poolwatch::postgres::Pool {
    capture();
    let config = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(hold)
        .stacks(stacks)
        .build()
        .unwrap();
    WatchedPool::new(pg::pool(max_size), config)
}

/// Events of `pool` whose message contains `needle`.
fn events(pool: &str, needle: &str) -> Vec<Captured> {
    capture()
        .matching(needle)
        .into_iter()
        .filter(|e| e.fields.get("pool").map(String::as_str) == Some(pool))
        .collect()
}

/// Waits (up to 10 s: the machine is shared) until `pool` has at least
/// `count` events matching `needle`.
async fn wait_for(pool: &str, needle: &str, count: usize) -> Vec<Captured> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = events(pool, needle);
        if found.len() >= count {
            return found;
        }
        if Instant::now() > deadline {
            let all: Vec<_> = capture()
                .events()
                .into_iter()
                .filter(|e| e.fields.get("pool").map(String::as_str) == Some(pool))
                .collect();
            panic!("pool {pool}: wanted {count} events matching {needle:?}, got {all:#?}");
        }
        tokio::time::sleep(ms(20)).await;
    }
}

fn site_line(event: &Captured) -> u32 {
    event
        .field("site")
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_stack_names(event: &Captured, function: &str) {
    let backtrace = event.field("backtrace");
    let expected = format!("leak_report::{function}");
    assert!(backtrace.contains(&expected), "{expected} in\n{backtrace}");
}

const STILL_HELD: &str = "still held after";
const NEVER_RETURNED: &str = "never returned";
const UNLEAKED: &str = "returned after being flagged";

#[tokio::test]
async fn forgotten_guard_is_flagged_then_reported_at_close() {
    let pool = watched("forgotten", ms(100));
    let (guard, line) = (pool.get().await.unwrap(), line!());
    let id = Guard::guard_id(&guard);
    std::mem::forget(guard);

    let warning = &wait_for("forgotten", STILL_HELD, 1).await[0];
    assert_eq!(warning.level, Level::WARN);
    assert_eq!(warning.field_u64("guard"), id);
    assert_eq!(site_line(warning), line);
    assert!(warning.field("site").starts_with(file!()));
    assert!(warning.field_u64("held_ms") >= 100, "{warning:?}");
    assert_eq!(warning.field_u64("threshold_ms"), 100);
    assert_eq!(warning.field_u64("flag"), 1);
    assert_eq!(warning.field_u64("in_use"), 1);
    assert_eq!(warning.field_u64("max_size"), 2);
    assert_stack_names(warning, "forgotten_guard_is_flagged_then_reported_at_close");

    pool.close();
    let errors = events("forgotten", NEVER_RETURNED);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].level, Level::ERROR);
    assert_eq!(errors[0].field_u64("guard"), id);
    assert_eq!(errors[0].field("ending"), "closed");
    assert_eq!(site_line(&errors[0]), line);
    assert_stack_names(
        &errors[0],
        "forgotten_guard_is_flagged_then_reported_at_close",
    );
    // deadpool lost the slot for good.
    assert_eq!(pool.pool_status().in_use(), 1);
}

#[tokio::test]
async fn escalation_is_bounded() {
    let pool = watched("escalation", ms(30));
    std::mem::forget(pool.get().await.unwrap());
    // Flagged at 1x, 4x and 16x the threshold. A scan delayed past a level
    // (the first symbolisation in a process can take a second on a loaded
    // machine) reports the level reached, so a level may be skipped, but
    // the levels only rise and stop at 3.
    let deadline = Instant::now() + Duration::from_secs(10);
    let warnings = loop {
        let found = events("escalation", STILL_HELD);
        if found.iter().any(|w| w.field_u64("flag") == 3) {
            break found;
        }
        assert!(Instant::now() < deadline, "no third-level flag: {found:#?}");
        tokio::time::sleep(ms(20)).await;
    };
    let flags: Vec<u64> = warnings.iter().map(|w| w.field_u64("flag")).collect();
    assert!(flags.windows(2).all(|w| w[0] < w[1]), "{flags:?}");
    assert_eq!(flags[0], 1, "{flags:?}");
    assert!(flags.len() <= 3, "{flags:?}");
    for warning in &warnings {
        let factor = [1, 4, 16][warning.field_u64("flag") as usize - 1];
        assert!(warning.field_u64("held_ms") >= factor * 30, "{warning:?}");
    }
    // Many more scans pass; no more warnings.
    tokio::time::sleep(ms(500)).await;
    assert_eq!(events("escalation", STILL_HELD).len(), flags.len());
}

#[tokio::test]
async fn guard_held_by_a_task_stuck_on_a_channel() {
    let pool = watched("stuck-task", ms(100));
    let (release, stuck) = tokio::sync::oneshot::channel::<()>();
    let task_pool = pool.clone();
    let task = tokio::spawn(
        async move {
            let client = task_pool.get().await.unwrap();
            let _ = stuck.await; // never sent while the test checks
            drop(client);
        }
        .instrument(tracing::info_span!("stuck_job")),
    );
    let warning = &wait_for("stuck-task", STILL_HELD, 1).await[0];
    assert_eq!(warning.field("span"), "stuck_job");
    assert_stack_names(warning, "guard_held_by_a_task_stuck_on_a_channel");
    assert_eq!(pool.outstanding_count(), 1);
    drop(release);
    task.await.unwrap();
}

struct Repository {
    client: poolwatch::postgres::Client,
}

#[tokio::test]
async fn guard_kept_in_a_struct_is_reported_when_the_last_handle_drops() {
    let pool = watched("in-struct", ms(100));
    let other_handle = pool.clone();
    let repository = Repository {
        client: pool.get().await.unwrap(),
    };
    let id = Guard::guard_id(&repository.client);
    let warning = &wait_for("in-struct", STILL_HELD, 1).await[0];
    assert_eq!(warning.field_u64("guard"), id);

    drop(pool);
    assert!(
        events("in-struct", NEVER_RETURNED).is_empty(),
        "a handle is left"
    );
    drop(other_handle);
    let error = &wait_for("in-struct", NEVER_RETURNED, 1).await[0];
    assert_eq!(error.level, Level::ERROR);
    assert_eq!(error.field_u64("guard"), id);
    assert_eq!(error.field("ending"), "dropped");
    assert_stack_names(
        error,
        "guard_kept_in_a_struct_is_reported_when_the_last_handle_drops",
    );
    // The guard still works and still closes its record.
    let row = repository.client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    drop(repository);
    assert_eq!(events("in-struct", UNLEAKED).len(), 1);
}

#[tokio::test]
async fn panic_in_a_task_holding_a_guard_reports_the_stack() {
    let pool = watched("panicking", Duration::from_secs(60));
    let task_pool = pool.clone();
    let task = tokio::spawn(async move {
        let _client = task_pool.get().await.unwrap();
        panic!("handler failed while holding a connection");
    });
    assert!(task.await.unwrap_err().is_panic());
    let warning = &wait_for("panicking", "dropped while panicking", 1).await[0];
    assert_eq!(warning.field("outcome"), "dropped_while_panicking");
    assert_stack_names(warning, "panic_in_a_task_holding_a_guard_reports_the_stack");
    let line = site_line(warning);
    let site = support::site_at(&pool, line);
    assert_eq!(site.outcomes.dropped_while_panicking, 1);
}

#[tokio::test]
async fn take_is_reported_with_its_stack() {
    let pool = watched("detached", Duration::from_secs(60));
    let client = Guard::take(pool.get().await.unwrap());
    let info = &wait_for("detached", "detached from the pool", 1).await[0];
    assert_eq!(info.level, Level::INFO);
    assert_eq!(info.field("outcome"), "detached");
    assert_stack_names(info, "take_is_reported_with_its_stack");
    drop(client);
}

#[tokio::test]
async fn flagged_guard_returned_later_is_reported_with_its_total_hold() {
    let pool = watched("unleaked", ms(100));
    let guard = pool.get().await.unwrap();
    let id = Guard::guard_id(&guard);
    wait_for("unleaked", STILL_HELD, 1).await;
    tokio::time::sleep(ms(100)).await;
    drop(guard);
    let info = &wait_for("unleaked", UNLEAKED, 1).await[0];
    assert_eq!(info.level, Level::INFO);
    assert_eq!(info.field_u64("guard"), id);
    assert!(info.field_u64("held_ms") >= 200, "{info:?}");
    assert_eq!(info.field("outcome"), "returned");
    assert_eq!(pool.outstanding_count(), 0);
}

#[tokio::test]
async fn an_unflagged_return_says_nothing_of_flags() {
    let pool = watched("quick", Duration::from_secs(60));
    drop(pool.get().await.unwrap());
    drop(pool);
    tokio::time::sleep(ms(100)).await;
    assert!(capture()
        .events()
        .iter()
        .all(|e| e.fields.get("pool").map(String::as_str) != Some("quick")));
}

#[tokio::test]
async fn close_reports_every_outstanding_guard() {
    let pool = watched_with("closing", Duration::from_secs(60), StackMode::Always, 3);
    let (first, first_line) = (pool.get().await.unwrap(), line!());
    let (second, second_line) = async { (pool.get().await.unwrap(), line!()) }
        .instrument(tracing::info_span!("nightly_export"))
        .await;
    tokio::time::sleep(ms(50)).await;
    pool.close();
    assert!(matches!(
        pool.get().await,
        Err(deadpool::managed::PoolError::Closed)
    ));

    let errors = events("closing", NEVER_RETURNED);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().all(|e| e.level == Level::ERROR));
    let mut lines: Vec<u32> = errors.iter().map(site_line).collect();
    lines.sort_unstable();
    assert_eq!(lines, [first_line, second_line]);
    let exporter = errors.iter().find(|e| site_line(e) == second_line).unwrap();
    assert_eq!(exporter.field("span"), "nightly_export");
    for error in &errors {
        assert!(error.field_u64("held_ms") >= 50, "{error:?}");
        assert_stack_names(error, "close_reports_every_outstanding_guard");
    }

    // Reported once: not again when the last handle goes.
    drop(pool);
    assert_eq!(events("closing", NEVER_RETURNED).len(), 2);
    drop((first, second));
    assert_eq!(events("closing", UNLEAKED).len(), 2);
}

#[tokio::test]
async fn threshold_changed_at_runtime_applies_to_the_next_scan() {
    let pool = watched("retuned", Duration::from_secs(60));
    let _guard = pool.get().await.unwrap();
    tokio::time::sleep(ms(300)).await;
    assert!(events("retuned", STILL_HELD).is_empty());
    pool.set_hold_threshold(ms(100)).unwrap();
    let warning = &wait_for("retuned", STILL_HELD, 1).await[0];
    assert_eq!(warning.field_u64("threshold_ms"), 100);
    assert!(warning.field_u64("held_ms") >= 300);
}

/// Guards outstanding at close, by whether their report has a stack.
fn with_and_without_stack(pool: &str) -> (usize, usize) {
    let errors = events(pool, NEVER_RETURNED);
    let with = errors
        .iter()
        .filter(|e| e.fields.contains_key("backtrace"))
        .count();
    (with, errors.len() - with)
}

#[tokio::test]
async fn stack_mode_changes_at_runtime() {
    let pool = watched_with("stack-mode", Duration::from_secs(60), StackMode::Off, 2);
    assert_eq!(pool.stack_mode(), StackMode::Off);
    let without = pool.get().await.unwrap();
    pool.set_stack_mode(StackMode::Always);
    let with = pool.get().await.unwrap();
    pool.close();
    let errors = events("stack-mode", NEVER_RETURNED);
    let by_id = |id| errors.iter().find(|e| e.field_u64("guard") == id).unwrap();
    assert!(!by_id(Guard::guard_id(&without))
        .fields
        .contains_key("backtrace"));
    assert_stack_names(
        by_id(Guard::guard_id(&with)),
        "stack_mode_changes_at_runtime",
    );
}

#[tokio::test]
async fn first_n_and_sample_n_count_per_site() {
    let pool = watched_with("first-2", Duration::from_secs(60), StackMode::First(2), 5);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(pool.get().await.unwrap());
    }
    pool.close();
    assert_eq!(with_and_without_stack("first-2"), (2, 3));
    drop(held);

    let pool = watched_with("sample-3", Duration::from_secs(60), StackMode::Sample(3), 6);
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(pool.get().await.unwrap()); // checkouts 0 and 3 sampled
    }
    pool.close();
    assert_eq!(with_and_without_stack("sample-3"), (2, 4));
}

#[tokio::test]
async fn reported_stack_shows_the_callers_frame_first() {
    let pool = watched("user-first", Duration::from_secs(60));
    let _guard = pool.get().await.unwrap();
    pool.close();
    let error = &events("user-first", NEVER_RETURNED)[0];
    let backtrace = error.field("backtrace");
    let first = backtrace.lines().next().unwrap();
    assert!(
        first.contains("leak_report::reported_stack_shows_the_callers_frame_first"),
        "{backtrace}"
    );
    assert!(first.contains(file!()), "{backtrace}");
    assert!(!backtrace.contains("poolwatch::"), "{backtrace}");
    assert!(backtrace.contains("frames trimmed"), "{backtrace}");
}

#[tokio::test]
async fn into_inner_of_the_last_handle_is_not_a_leak_report() {
    let pool = watched("unwrapped", Duration::from_secs(60));
    let guard = pool.get().await.unwrap();
    let inner = pool.into_inner();
    tokio::time::sleep(ms(50)).await;
    assert!(events("unwrapped", NEVER_RETURNED).is_empty());
    drop(guard);
    assert_eq!(inner.status().available, 1);
}
