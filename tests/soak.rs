//! Soak with faults: many tasks on a small pool with random hold times,
//! panics, aborted tasks, cancellation mid-acquire, mid-query and mid-hold,
//! `mem::forget`, `take`, `into_inner`, transactions dropped unfinished and
//! acquire timeouts. Between phases every task is joined and the ledger is
//! checked against deadpool and against what the tasks themselves saw.
//!
//! Bounded: `POOLWATCH_SOAK_SECS` (default 35) of load, in phases of about
//! five seconds. The random choices come from one seed, printed at the
//! start; `POOLWATCH_SOAK_SEED=<n>` replays the same choices (the timing of
//! a multi-threaded run still differs).
#![cfg(feature = "postgres")]
mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{PoolError, Timeouts};
use poolwatch::{Guard, WatchConfig, WatchedPool};
use support::capture::Capture;
use support::pg;

/// splitmix64: a tiny, seedable generator (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

const POOL_SIZE: usize = 6;
/// Forgotten guards lose their slot for good: keep enough for the rest.
const MAX_FORGOTTEN: usize = 2;
const TASKS: u64 = 12;
const HOLD_THRESHOLD: Duration = Duration::from_millis(250);

/// What the tasks saw, to compare with what the ledger recorded.
#[derive(Default)]
struct Seen {
    checkouts: AtomicU64,
    /// Acquires that returned an error (a cancelled acquire returns nothing).
    failed: AtomicU64,
    failed_timeout: AtomicU64,
    panicked_holding: AtomicU64,
    taken: AtomicU64,
    untracked: AtomicU64,
    forgotten_count: AtomicUsize,
    forgotten: Mutex<BTreeSet<u64>>,
    /// Every guard id handed out: none may repeat.
    issued: Mutex<HashSet<u64>>,
    ops: [AtomicU64; OPS],
}

const OPS: usize = 11;
const OP_NAMES: [&str; OPS] = [
    "short hold",
    "long hold",
    "panic while holding",
    "cancel mid-acquire",
    "cancel mid-query",
    "cancel anywhere",
    "abort holding task",
    "forget",
    "take",
    "into_inner",
    "transaction",
];

type Pool = poolwatch::postgres::Pool;
type Client = poolwatch::postgres::Client;

impl Seen {
    fn got(&self, guard: &Client) {
        self.checkouts.fetch_add(1, Ordering::Relaxed);
        let id = Guard::guard_id(guard);
        assert!(
            self.issued.lock().unwrap().insert(id),
            "guard id {id} handed out twice"
        );
    }

    fn failed(&self, error: &PoolError<tokio_postgres::Error>) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        match error {
            PoolError::Timeout(_) => {
                self.failed_timeout.fetch_add(1, Ordering::Relaxed);
            }
            // The harness's server stays up: no other error is expected.
            other => panic!("unexpected acquire error: {other}"),
        }
    }
}

/// An acquire with a random wait timeout (sometimes none).
async fn acquire(pool: &Pool, seen: &Seen, rng: &mut Rng) -> Option<Client> {
    let result = if rng.below(3) == 0 {
        let timeouts = Timeouts {
            wait: Some(rng.millis(30) + Duration::from_millis(1)),
            ..Timeouts::default()
        };
        pool.timeout_get(&timeouts).await
    } else {
        pool.get().await
    };
    match result {
        Ok(guard) => {
            seen.got(&guard);
            Some(guard)
        }
        Err(error) => {
            seen.failed(&error);
            None
        }
    }
}

async fn one_op(pool: &Pool, seen: &Arc<Seen>, rng: &mut Rng) {
    let op = match rng.below(100) {
        0..=34 => 0,
        35..=44 => 1,
        45..=50 => 2,
        51..=60 => 3,
        61..=68 => 4,
        69..=76 => 5,
        77..=80 => 6,
        81..=82 => 7,
        83..=87 => 8,
        88..=92 => 9,
        _ => 10,
    };
    seen.ops[op].fetch_add(1, Ordering::Relaxed);
    match op {
        0 | 1 => {
            let Some(client) = acquire(pool, seen, rng).await else {
                return;
            };
            client.query_one("SELECT 1", &[]).await.unwrap();
            let hold = if op == 0 {
                rng.millis(15)
            } else {
                rng.millis(400)
            };
            tokio::time::sleep(hold).await;
        }
        2 => {
            let (pool, seen, seed) = (pool.clone(), Arc::clone(seen), rng.next());
            let task = tokio::spawn(async move {
                let mut rng = Rng(seed);
                if let Some(client) = acquire(&pool, &seen, &mut rng).await {
                    tokio::time::sleep(rng.millis(20)).await;
                    seen.panicked_holding.fetch_add(1, Ordering::Relaxed);
                    if Guard::guard_id(&client) > 0 {
                        panic!("soak: a handler panics while holding a connection");
                    }
                }
            });
            if let Err(error) = task.await {
                assert!(error.is_panic(), "{error}");
            }
        }
        3 => {
            let budget = rng.millis(3);
            if let Ok(Some(client)) = tokio::time::timeout(budget, acquire(pool, seen, rng)).await {
                drop(client);
            }
        }
        4 => {
            let Some(client) = acquire(pool, seen, rng).await else {
                return;
            };
            let budget = rng.millis(20);
            let _ = tokio::time::timeout(budget, client.query("SELECT pg_sleep(0.03)", &[])).await;
        }
        5 => {
            let budget = rng.millis(60);
            let seed = rng.next();
            let work = async {
                let mut rng = Rng(seed);
                let client = acquire(pool, seen, &mut rng).await?;
                client.query("SELECT pg_sleep(0.01)", &[]).await.unwrap();
                tokio::time::sleep(rng.millis(40)).await;
                Some(())
            };
            let _ = tokio::time::timeout(budget, work).await;
        }
        6 => {
            let (pool, seen, seed) = (pool.clone(), Arc::clone(seen), rng.next());
            let task = tokio::spawn(async move {
                let mut rng = Rng(seed);
                if let Some(client) = acquire(&pool, &seen, &mut rng).await {
                    let _ = client.query("SELECT pg_sleep(0.02)", &[]).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            });
            tokio::time::sleep(rng.millis(40)).await;
            task.abort();
            let _ = task.await;
        }
        7 => {
            let claimed = seen
                .forgotten_count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < MAX_FORGOTTEN).then_some(n + 1)
                })
                .is_ok();
            if !claimed {
                return;
            }
            match acquire(pool, seen, rng).await {
                Some(client) => {
                    seen.forgotten
                        .lock()
                        .unwrap()
                        .insert(Guard::guard_id(&client));
                    std::mem::forget(client);
                }
                None => {
                    seen.forgotten_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        8 => {
            let Some(client) = acquire(pool, seen, rng).await else {
                return;
            };
            seen.taken.fetch_add(1, Ordering::Relaxed);
            let raw = Guard::take(client);
            raw.query_one("SELECT 2", &[]).await.unwrap();
        }
        9 => {
            let Some(client) = acquire(pool, seen, rng).await else {
                return;
            };
            seen.untracked.fetch_add(1, Ordering::Relaxed);
            let object = Guard::into_inner(client);
            object.query_one("SELECT 3", &[]).await.unwrap();
            tokio::time::sleep(rng.millis(10)).await;
        }
        _ => {
            let Some(mut client) = acquire(pool, seen, rng).await else {
                return;
            };
            let tx = client.transaction().await.unwrap();
            tx.execute("SELECT 1", &[]).await.unwrap();
            if rng.below(2) == 0 {
                tx.commit().await.unwrap();
            } // else: dropped, rolled back by drop
        }
    }
}

/// Checks the ledger against deadpool and the tasks, with every task joined.
fn check_quiescent(pool: &Pool, seen: &Seen, phase: usize) {
    let status = pool.pool_status();
    let snapshot = pool.snapshot();
    let forgotten = seen.forgotten.lock().unwrap().clone();
    let context = format!("phase {phase}: {status:?}");

    // Outstanding guards in the ledger = deadpool's in-use count = the
    // forgotten guards (everything else was returned, taken or untracked
    // and its object dropped).
    assert_eq!(pool.outstanding_count(), status.in_use(), "{context}");
    assert_eq!(pool.outstanding_count(), forgotten.len(), "{context}");
    let outstanding: BTreeSet<u64> = snapshot.outstanding.iter().map(|g| g.id).collect();
    assert_eq!(outstanding, forgotten, "{context}");
    assert_eq!(status.waiting, 0, "{context}");

    // Every checkout recorded exactly once; endings + outstanding add up.
    let checkouts: u64 = snapshot.sites.iter().map(|s| s.checkouts).sum();
    assert_eq!(
        checkouts,
        seen.checkouts.load(Ordering::Relaxed),
        "{context}"
    );
    for site in &snapshot.sites {
        assert_eq!(
            site.outcomes.total() + site.outstanding,
            site.checkouts,
            "{context}: {site:?}"
        );
    }
    let sum = |f: fn(&poolwatch::SiteSnapshot) -> u64| snapshot.sites.iter().map(f).sum::<u64>();
    assert_eq!(
        sum(|s| s.outcomes.detached),
        seen.taken.load(Ordering::Relaxed),
        "{context}"
    );
    assert_eq!(
        sum(|s| s.outcomes.untracked),
        seen.untracked.load(Ordering::Relaxed),
        "{context}"
    );
    assert_eq!(
        sum(|s| s.outcomes.dropped_while_panicking),
        seen.panicked_holding.load(Ordering::Relaxed),
        "{context}"
    );
    assert_eq!(
        sum(|s| s.failures.total()),
        seen.failed.load(Ordering::Relaxed),
        "{context}"
    );
    assert_eq!(
        sum(|s| s.failures.timeouts),
        seen.failed_timeout.load(Ordering::Relaxed),
        "{context}"
    );
    let spans: u64 = snapshot.spans.iter().map(|s| s.checkouts).sum();
    assert_eq!(spans, checkouts, "{context}: spans");

    // The report's totals equal the checkouts; forgotten guards past the
    // threshold are flagged in it.
    let report = pool.report();
    assert_eq!(
        report.sites.iter().map(|s| s.checkouts).sum::<u64>(),
        checkouts,
        "{context}: report"
    );
    assert_eq!(
        report.sites.iter().map(|s| s.outstanding).sum::<u64>(),
        forgotten.len() as u64,
        "{context}: report"
    );
    let flagged: BTreeSet<u64> = report.flagged.iter().map(|f| f.guard).collect();
    let old_forgotten: BTreeSet<u64> = snapshot
        .outstanding
        .iter()
        .filter(|g| g.held > HOLD_THRESHOLD)
        .map(|g| g.id)
        .collect();
    assert!(
        flagged.is_superset(&old_forgotten),
        "{context}: flagged {flagged:?}, forgotten {old_forgotten:?}"
    );
    assert!(flagged.is_subset(&forgotten), "{context}: {flagged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_faults_keeps_the_books() {
    let secs: u64 = std::env::var("POOLWATCH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(35);
    let seed: u64 = match std::env::var("POOLWATCH_SOAK_SEED") {
        Ok(s) => s.parse().expect("POOLWATCH_SOAK_SEED is a u64"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            nanos as u64 ^ u64::from(std::process::id())
        }
    };
    eprintln!(
        "soak: seed {seed} (replay with POOLWATCH_SOAK_SEED={seed}), {secs}s against {}",
        pg::describe()
    );

    // The soak's own panics are expected: keep them out of the output.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("soak: a handler panics") {
            previous(info);
        }
    }));

    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.subscriber()).unwrap();

    let config = WatchConfig::builder()
        .pool_name("soak")
        .hold_threshold(HOLD_THRESHOLD)
        .slow_acquire(Duration::from_millis(50))
        .timeline_tick(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let pool: Pool = WatchedPool::new(pg::pool(POOL_SIZE), config);
    let seen = Arc::new(Seen::default());
    let mut master = Rng(seed);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut phase = 0;
    while Instant::now() < deadline {
        phase += 1;
        let phase_end = (Instant::now() + Duration::from_secs(5)).min(deadline);
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (pool, seen, mut rng) = (pool.clone(), Arc::clone(&seen), Rng(master.next()));
            tasks.push(tokio::spawn(async move {
                while Instant::now() < phase_end {
                    one_op(&pool, &seen, &mut rng).await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("a soak task failed");
        }
        check_quiescent(&pool, &seen, phase);
        // The pool still serves, within a bounded wait.
        let probe = tokio::time::timeout(Duration::from_secs(10), pool.get())
            .await
            .expect("the pool stalled")
            .expect("the pool broke");
        seen.got(&probe);
        probe.query_one("SELECT 1", &[]).await.unwrap();
        drop(probe);
    }
    check_quiescent(&pool, &seen, phase);

    let forgotten = seen.forgotten.lock().unwrap().clone();
    let issued = seen.issued.lock().unwrap().clone();
    let ops: Vec<String> = OP_NAMES
        .iter()
        .zip(&seen.ops)
        .map(|(name, n)| format!("{name} {}", n.load(Ordering::Relaxed)))
        .collect();
    eprintln!(
        "soak: {phase} phases, {} checkouts, {} failed acquires ({} timeouts), {} forgotten; ops: {}",
        seen.checkouts.load(Ordering::Relaxed),
        seen.failed.load(Ordering::Relaxed),
        seen.failed_timeout.load(Ordering::Relaxed),
        forgotten.len(),
        ops.join(", ")
    );
    assert!(
        seen.checkouts.load(Ordering::Relaxed) > 100,
        "the soak did too little"
    );

    // Closing the pool reports every forgotten guard as never returned
    // (with leak-report), and every event names a guard that was issued.
    pool.close();
    let after_close = pool.get().await;
    assert!(matches!(after_close, Err(PoolError::Closed)));
    let snapshot = pool.snapshot();
    let closed: u64 = snapshot.sites.iter().map(|s| s.failures.closed).sum();
    assert_eq!(closed, 1);

    let events = capture.events();
    for event in &events {
        if let Some(guard) = event.fields.get("guard") {
            let id: u64 = guard.parse().unwrap();
            assert!(
                issued.contains(&id),
                "event for unknown guard {id}: {event:?}"
            );
        }
    }
    #[cfg(feature = "leak-report")]
    {
        let never: BTreeSet<u64> = events
            .iter()
            .filter(|e| e.level == tracing::Level::ERROR && e.message.contains("never returned"))
            .map(|e| e.field_u64("guard"))
            .collect();
        assert_eq!(never, forgotten, "never-returned report");
        let watchdog_flags = events
            .iter()
            .filter(|e| e.message.contains("still held"))
            .count();
        assert!(watchdog_flags > 0, "the watchdog flagged nothing");
    }
    let warns = events
        .iter()
        .filter(|e| e.level == tracing::Level::WARN)
        .count();
    eprintln!("soak: {} events, {warns} WARN", events.len());
}
