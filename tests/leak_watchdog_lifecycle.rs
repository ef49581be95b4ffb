//! `leak-report`: one watchdog thread serves every pool and exits when the
//! last pool is dropped; a slow subscriber on the watchdog thread never
//! delays a checkout.
//!
//! These tests need to know every pool of the process, so they live in
//! their own binary and run one at a time.
#![cfg(feature = "leak-report")]
mod support;

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use poolwatch::{WatchConfig, WatchedPool};
use support::capture::Capture;
use support::pg;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const DEADLINE: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Blocks poolwatch events on the watchdog thread while closed.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<GateState>, Condvar)>,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    blocked: bool,
}

impl<S: Subscriber> Layer<S> for Gate {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let on_watchdog = std::thread::current().name() == Some("poolwatch-watchdog");
        if event.metadata().target() != poolwatch::TARGET || !on_watchdog {
            return;
        }
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().unwrap();
        if !state.closed {
            return;
        }
        state.blocked = true;
        changed.notify_all();
        // A safety net so a failing test cannot hang the binary.
        let (mut state, _) = changed
            .wait_timeout_while(state, Duration::from_secs(30), |s| s.closed)
            .unwrap();
        state.blocked = false;
    }
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        let (lock, changed) = &*self.state;
        lock.lock().unwrap().closed = closed;
        changed.notify_all();
    }

    fn wait_until_blocked(&self) {
        let (lock, changed) = &*self.state;
        let state = lock.lock().unwrap();
        let (state, _) = changed
            .wait_timeout_while(state, DEADLINE, |s| !s.blocked)
            .unwrap();
        assert!(state.blocked, "the watchdog never reported");
    }
}

fn harness() -> &'static (Capture, Gate) {
    static HARNESS: OnceLock<(Capture, Gate)> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let (capture, gate) = (Capture::default(), Gate::default());
        let subscriber = tracing_subscriber::registry()
            .with(capture.clone())
            .with(gate.clone());
        tracing::subscriber::set_global_default(subscriber).unwrap();
        (capture, gate)
    })
}

/// The tests here count process-wide threads: one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

fn watched(name: &str, hold: Duration) -> poolwatch::postgres::Pool {
    harness();
    let config = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(hold)
        .build()
        .unwrap();
    WatchedPool::new(pg::pool(2), config)
}

/// Threads of this process named like the watchdog (the kernel keeps 15
/// bytes of a thread's name).
fn watchdog_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| "poolwatch-watchdog".starts_with(name.trim_end()))
        .count()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn one_watchdog_serves_all_pools_and_exits_with_the_last() {
    let _serial = serial().await;
    eventually("no watchdog runs", || watchdog_threads() == 0).await;
    let baseline = watchdog_threads();
    assert!(!poolwatch::watchdog_running());

    let pools: Vec<_> = (0..3)
        .map(|i| watched(&format!("lifecycle-{i}"), Duration::from_secs(60)))
        .collect();
    let clone = pools[0].clone();
    assert!(poolwatch::watchdog_running());
    eventually("the watchdog starts", || watchdog_threads() == baseline + 1).await;
    // A guard outlives its pool: it does not keep the watchdog alive.
    let survivor = pools[1].get().await.unwrap();
    drop(pools);
    tokio::time::sleep(ms(100)).await;
    assert!(poolwatch::watchdog_running(), "a clone is still alive");
    assert_eq!(
        watchdog_threads(),
        baseline + 1,
        "one thread, not one per pool"
    );
    drop(clone);
    eventually("the watchdog stops", || !poolwatch::watchdog_running()).await;
    eventually("its thread exits", || watchdog_threads() == baseline).await;
    drop(survivor);

    // A new pool starts it again.
    let pool = watched("lifecycle-again", Duration::from_secs(60));
    eventually("the watchdog restarts", || {
        watchdog_threads() == baseline + 1
    })
    .await;
    drop(pool);
    eventually("it exits again", || watchdog_threads() == baseline).await;
}

#[tokio::test]
async fn slow_subscriber_on_the_watchdog_does_not_delay_get() {
    let _serial = serial().await;
    let (capture, gate) = harness();
    let pool = watched("slow-subscriber", ms(50));
    gate.set_closed(true);
    let held = pool.get().await.unwrap();
    // The watchdog flags `held` and is now stuck inside the subscriber.
    // (Blocking this current-thread runtime meanwhile is fine: the
    // watchdog is a thread of its own.)
    gate.wait_until_blocked();

    // Checkouts, returns and snapshots go on meanwhile. If the watchdog
    // held a ledger lock while reporting, these would never finish.
    let checkouts = async {
        for _ in 0..20 {
            let client = pool.get().await.unwrap();
            client.query_one("SELECT 1", &[]).await.unwrap();
        }
        pool.snapshot()
    };
    let result = tokio::time::timeout(DEADLINE, checkouts).await;
    gate.set_closed(false);
    let snapshot = result.expect("get() waited for the watchdog's subscriber");
    assert_eq!(snapshot.outstanding.len(), 1);

    eventually("the warning is delivered", || {
        !capture.matching("still held after").is_empty()
    })
    .await;
    drop(held);
}
