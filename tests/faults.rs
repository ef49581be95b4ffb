//! Faults against the real server and in the instrumentation itself: a held
//! connection's backend terminated, the pool closed during an acquire and
//! during a hold, and a tracing subscriber that panics or blocks. Whatever
//! happens, the pool keeps serving and the books still balance.
//!
//! One global subscriber serves every test of this binary; what it does
//! with an event depends on the event's `pool` field, so the tests (run in
//! parallel) do not disturb each other: pools named `panic-*` make it
//! panic, pools named `block-*` make it block until the test opens its
//! gate, every event is recorded.
#![cfg(feature = "postgres")]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deadpool::managed::{PoolError, Timeouts};
use poolwatch::{Guard, WatchConfig, WatchedPool};
use support::pg;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

type Pool = poolwatch::postgres::Pool;

#[derive(Clone, Debug)]
struct Seen {
    level: Level,
    thread: Option<String>,
    message: String,
    fields: BTreeMap<String, String>,
}

/// A gate a blocking subscriber waits at: closed until opened.
#[derive(Default)]
struct Gate {
    /// Only events emitted on this thread block.
    thread: String,
    open: Mutex<bool>,
    opened: Condvar,
    /// Events that have reached the gate so far.
    arrived: Mutex<Vec<Seen>>,
}

impl Gate {
    fn wait(&self, seen: Seen) {
        self.arrived.lock().unwrap().push(seen);
        let open = self.open.lock().unwrap();
        // Bounded, so a failing test cannot hang the suite.
        let _ = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(20), |open| !*open);
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
    fn arrived(&self) -> Vec<Seen> {
        self.arrived.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Faulty {
    events: Mutex<Vec<Seen>>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

static FAULTY: OnceLock<Arc<Faulty>> = OnceLock::new();

struct FaultyLayer(Arc<Faulty>);

impl<S: Subscriber> Layer<S> for FaultyLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != poolwatch::TARGET {
            return;
        }
        let (message, fields) = support::capture::fields_of(event);
        let seen = Seen {
            level: *event.metadata().level(),
            thread: std::thread::current().name().map(str::to_owned),
            message,
            fields,
        };
        let pool = seen.fields.get("pool").cloned().unwrap_or_default();
        self.0.events.lock().unwrap().push(seen.clone());
        if pool.starts_with("panic-") {
            panic!("faulty subscriber: panics on every event of pool {pool}");
        }
        if pool.starts_with("block-") {
            let gate = self.0.gates.lock().unwrap().get(&pool).cloned();
            if let Some(gate) = gate.filter(|g| seen.thread.as_deref() == Some(&g.thread)) {
                gate.wait(seen);
            }
        }
    }
}

fn faulty() -> &'static Arc<Faulty> {
    FAULTY.get_or_init(|| {
        let faulty = Arc::new(Faulty::default());
        let subscriber = tracing_subscriber::registry().with(FaultyLayer(Arc::clone(&faulty)));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        // The subscriber's panics are expected: keep them out of the output.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info.to_string();
            if !text.contains("faulty subscriber") {
                previous(info);
            }
        }));
        faulty
    })
}

fn events_of(pool: &str) -> Vec<Seen> {
    faulty()
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.fields.get("pool").map(String::as_str) == Some(pool))
        .cloned()
        .collect()
}

fn gate_for(pool: &str, thread: &str) -> Arc<Gate> {
    let gate = Arc::new(Gate {
        thread: thread.to_owned(),
        ..Gate::default()
    });
    faulty()
        .gates
        .lock()
        .unwrap()
        .insert(pool.to_owned(), Arc::clone(&gate));
    gate
}

fn watched(name: &str, size: usize, threshold: Duration) -> Pool {
    faulty();
    let config = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(threshold)
        .slow_acquire(Duration::from_millis(20))
        .build()
        .unwrap();
    WatchedPool::new(pg::pool(size), config)
}

fn wait_timeout(ms: u64) -> Timeouts {
    Timeouts {
        wait: Some(Duration::from_millis(ms)),
        ..Timeouts::default()
    }
}

/// The books balance once everything is back.
fn assert_balanced(pool: &Pool, checkouts: u64) {
    let snapshot = pool.snapshot();
    assert_eq!(pool.outstanding_count(), 0);
    assert_eq!(pool.pool_status().in_use(), 0, "{:?}", pool.pool_status());
    let recorded: u64 = snapshot.sites.iter().map(|s| s.checkouts).sum();
    assert_eq!(recorded, checkouts);
    let ended: u64 = snapshot.sites.iter().map(|s| s.outcomes.total()).sum();
    assert_eq!(ended, checkouts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_of_a_held_connection() {
    faulty();
    let config = WatchConfig::builder()
        .pool_name("terminate")
        .build()
        .unwrap();
    // Verified: a connection whose backend is gone is discarded at recycle
    // (Fast only asks `is_closed()`, which can lag behind the server's
    // termination and hand the dead connection out once).
    let pg = pg::pool_with(2, deadpool_postgres::RecyclingMethod::Verified);
    let pool: Pool = WatchedPool::new(pg, config);
    let victim = pool.get().await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    {
        let killer = pool.get().await.unwrap();
        let row = killer
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
    }
    // The held connection is dead; the guard still ends its record.
    let error = victim.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(
        error.is_closed() || error.code().is_some() || !error.to_string().is_empty(),
        "{error}"
    );
    assert_eq!(pool.outstanding_count(), 1);
    drop(victim);
    // The pool discards the dead connection and serves new ones.
    let mut pids = Vec::new();
    for _ in 0..2 {
        let client = pool.timeout_get(&wait_timeout(5_000)).await.unwrap();
        pids.push(
            client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
        );
    }
    assert!(
        !pids.contains(&pid),
        "the terminated backend was handed out"
    );
    assert_balanced(&pool, 4);
    let snapshot = pool.snapshot();
    let failures: u64 = snapshot.sites.iter().map(|s| s.failures.total()).sum();
    assert_eq!(failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_closed_during_acquire_and_during_hold() {
    let pool = watched("closing", 1, Duration::from_secs(5));
    let held = pool.get().await.unwrap();
    let held_id = Guard::guard_id(&held);
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(drop) })
    };
    // Let the waiter block on the exhausted pool, then close it.
    let start = Instant::now();
    while pool.status().waiting == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no waiter");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pool.close();
    let result = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("close wakes the waiter")
        .unwrap();
    assert!(matches!(result, Err(PoolError::Closed)), "{result:?}");

    // The guard held across the close still works and still ends its record.
    held.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(pool.outstanding_count(), 1);
    drop(held);
    assert_eq!(pool.outstanding_count(), 0);
    let snapshot = pool.snapshot();
    let failures: u64 = snapshot.sites.iter().map(|s| s.failures.closed).sum();
    assert_eq!(failures, 1);
    let returned: u64 = snapshot.sites.iter().map(|s| s.outcomes.returned).sum();
    assert_eq!(returned, 1);
    assert!(matches!(pool.get().await, Err(PoolError::Closed)));

    let events = events_of("closing");
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.fields.get("failure").map(String::as_str) == Some("closed"))
        .collect();
    assert_eq!(failed.len(), 2, "{events:#?}");
    assert_eq!(failed[0].fields["held"], "1", "{:?}", failed[0]);
    #[cfg(feature = "leak-report")]
    {
        let never: Vec<_> = events.iter().filter(|e| e.level == Level::ERROR).collect();
        assert_eq!(never.len(), 1, "{events:#?}");
        assert_eq!(never[0].fields["guard"], held_id.to_string());
        let back = events
            .iter()
            .filter(|e| e.message.contains("returned after being flagged"))
            .count();
        assert_eq!(back, 1, "{events:#?}");
    }
    let _ = held_id;
}

/// A subscriber that panics on every event: every path that reports
/// (hold past threshold, slow acquire, failed acquire, panicking drop,
/// watchdog, never returned at close) must swallow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_subscriber_does_not_take_the_pool_down() {
    let threshold = Duration::from_millis(30);
    let pool = watched("panic-sub", 1, threshold);
    let mut checkouts = 0;
    for _ in 0..3 {
        // Held past the threshold: the WARN at return panics in the subscriber.
        let client = pool.get().await.unwrap();
        checkouts += 1;
        client.query_one("SELECT 1", &[]).await.unwrap();
        tokio::time::sleep(threshold * 3).await; // the watchdog flags it too
        drop(client);
    }
    // A failed acquire, and a slow one.
    let holder = pool.get().await.unwrap();
    checkouts += 1;
    let failed = pool.timeout_get(&wait_timeout(20)).await;
    assert!(matches!(failed, Err(PoolError::Timeout(_))), "{failed:?}");
    let slow = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    drop(holder);
    slow.await.unwrap().unwrap();
    checkouts += 1;
    // A guard dropped while its task panics.
    let panicking = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let client = pool.get().await.unwrap();
            if Guard::guard_id(&client) > 0 {
                panic!("faulty subscriber test: the task panics holding a guard");
            }
        })
    };
    assert!(panicking.await.unwrap_err().is_panic());
    checkouts += 1;
    assert_balanced(&pool, checkouts);
    let snapshot = pool.snapshot();
    let panicked: u64 = snapshot
        .sites
        .iter()
        .map(|s| s.outcomes.dropped_while_panicking)
        .sum();
    assert_eq!(panicked, 1);

    // The subscriber saw (and panicked on) the events.
    let events = events_of("panic-sub");
    assert!(events.iter().any(|e| e.level == Level::WARN));
    assert!(events.iter().any(|e| e.message.contains("held for")));
    assert!(events.iter().any(|e| e.fields.contains_key("failure")));
    assert!(events.iter().any(|e| e.message.contains("while panicking")));
    #[cfg(feature = "leak-report")]
    {
        // The watchdog reports (and its events panic) while a guard is
        // held. Bounded waits: another test of this binary may hold the
        // watchdog in its blocking subscriber for a while.
        let guard = pool.get().await.unwrap();
        let start = Instant::now();
        while !events_of("panic-sub")
            .iter()
            .any(|e| e.message.contains("still held"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(25),
                "the watchdog never reported"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(guard);
        // The watchdog survived its panics: it still flags another pool.
        let other = watched("after-panics", 1, Duration::from_millis(20));
        let guard = other.get().await.unwrap();
        let start = Instant::now();
        while !events_of("after-panics")
            .iter()
            .any(|e| e.message.contains("still held"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the watchdog died"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(guard);
    }
    // Close with a guard out: the never-returned report panics too.
    let last = pool.get().await.unwrap();
    pool.close();
    drop(last);
    assert_eq!(pool.outstanding_count(), 0);
}

/// A subscriber that blocks on the event of a guard returned past the
/// threshold: the connection is already back, so other callers get it.
#[test]
fn a_blocking_subscriber_does_not_stall_checkouts() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let threshold = Duration::from_millis(30);
    // Only the return's WARN is under test: no slow-acquire WARN (that one
    // is emitted on the acquiring thread with the connection already held,
    // so a subscriber blocking there blocks a holder).
    let config = WatchConfig::builder()
        .pool_name("block-sub")
        .hold_threshold(threshold)
        .slow_acquire(Duration::from_secs(60))
        .build()
        .unwrap();
    faulty();
    let pool: Pool = runtime.block_on(async { WatchedPool::new(pg::pool(1), config) });
    let gate = gate_for("block-sub", "blocked-holder");

    // A thread of its own holds the only connection past the threshold,
    // then drops it; its WARN blocks in the subscriber.
    let holder = {
        let pool = pool.clone();
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("blocked-holder".into())
            .spawn(move || {
                let client = handle.block_on(pool.get()).unwrap();
                std::thread::sleep(threshold * 3);
                drop(client); // blocks in the subscriber until the gate opens
            })
            .unwrap()
    };
    let start = Instant::now();
    while !gate
        .arrived()
        .iter()
        .any(|e| e.thread.as_deref() == Some("blocked-holder"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no event blocked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The holder is stuck in the subscriber, but its connection is back.
    runtime.block_on(async {
        let started = Instant::now();
        let client = tokio::time::timeout(Duration::from_secs(2), pool.get())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "checkout stalled behind a blocked subscriber: {:?}; blocked: {:#?}",
                    pool.pool_status(),
                    gate.arrived()
                )
            })
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        client.query_one("SELECT 1", &[]).await.unwrap();
        // Returned quickly: no WARN, nothing to block on.
    });
    assert!(!holder.is_finished(), "the holder should still be blocked");
    gate.open();
    holder.join().unwrap();
    assert_balanced(&pool, 2);
    let events = events_of("block-sub");
    assert!(
        events.iter().any(|e| e.message.contains("held for")),
        "{events:#?}"
    );
}

/// The watchdog blocked in the subscriber (under `leak-report`) stalls
/// neither checkouts nor new pools.
#[cfg(feature = "leak-report")]
#[test]
fn a_subscriber_blocking_the_watchdog_does_not_stall_checkouts() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let threshold = Duration::from_millis(20);
    let pool = runtime.block_on(async { watched("block-watchdog", 2, threshold) });
    let gate = gate_for("block-watchdog", "poolwatch-watchdog");
    runtime.block_on(async {
        let held = pool.get().await.unwrap();
        let start = Instant::now();
        while !gate
            .arrived()
            .iter()
            .any(|e| e.thread.as_deref() == Some("poolwatch-watchdog"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the watchdog never reported"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The watchdog is stuck in the subscriber now.
        for _ in 0..20 {
            let client = tokio::time::timeout(Duration::from_secs(2), pool.get())
                .await
                .expect("checkout stalled behind the blocked watchdog")
                .unwrap();
            client.query_one("SELECT 1", &[]).await.unwrap();
        }
        // A new pool can still be created (it registers with the watchdog),
        // and thresholds changed (which wakes it).
        let other = tokio::time::timeout(Duration::from_secs(2), async {
            watched("other-while-blocked", 1, threshold)
        })
        .await
        .expect("new pool stalled");
        other.set_hold_threshold(Duration::from_secs(1)).unwrap();
        drop(other);
        gate.open();
        drop(held);
    });
    assert_balanced(&pool, 21);
}
