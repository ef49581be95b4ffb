//! Readers never stall checkouts: checkout+return latency (p50, p99,
//! p99.9, max) on a warm pool with no reader, then with a thread calling
//! `report()` in a loop, on a pool whose ledger holds 256 call sites × 8
//! spans (2,048 origins); and what one `snapshot()` and one `report()`
//! cost over them.
//!
//! Goals (issue 13): p99.9 with the reader ≤ 2× without; `snapshot()` over
//! 256 sites ≤ 200 µs.
//!
//! ```sh
//! unset RUST_BACKTRACE
//! cargo bench --bench reader
//! ```
//!
//! A plain `main` (`harness = false`): the latencies are per operation,
//! measured with the clock around each checkout+return, so the tail is
//! visible (criterion reports means).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poolwatch::postgres::Pool;
use poolwatch::WatchConfig;
use tracing::Instrument;

#[path = "support/config.rs"]
mod config;
#[path = "support/sites.rs"]
mod sites;

/// The spans the sites are reached in.
async fn populate(pool: &Pool) {
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_a"))
        .await;
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_b"))
        .await;
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_c"))
        .await;
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_d"))
        .await;
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_e"))
        .await;
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_f"))
        .await;
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_g"))
        .await;
    sites::touch_all(pool)
        .instrument(tracing::info_span!("span_h"))
        .await;
}

fn pool() -> Pool {
    let watch = WatchConfig::builder()
        .pool_name("reader-bench")
        .max_sites(1024)
        .build()
        .unwrap();
    config::watched_pool_with(2, watch)
}

/// Per-operation latencies of `n` checkout+return pairs, in nanoseconds.
async fn latencies(pool: &Pool, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        drop(pool.get().await.unwrap());
        out.push(start.elapsed().as_nanos() as u64);
    }
    out
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn describe(label: &str, mut samples: Vec<u64>) -> (u64, u64) {
    samples.sort_unstable();
    let (p50, p99, p999, max) = (
        quantile(&samples, 0.5),
        quantile(&samples, 0.99),
        quantile(&samples, 0.999),
        *samples.last().unwrap(),
    );
    println!(
        "{label:<34} n={:<7} p50 {:>7} ns  p99 {:>7} ns  p99.9 {:>8} ns  max {:>9} ns",
        samples.len(),
        p50,
        p99,
        p999,
        max
    );
    (p999, max)
}

fn main() {
    // Spans need a subscriber that tracks them, as in a real service.
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("no other subscriber");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = pool();
    runtime.block_on(populate(&pool));
    let snapshot = pool.snapshot();
    println!(
        "ledger: {} sites, {} spans",
        snapshot.sites.len(),
        snapshot.spans.len()
    );

    // What one reader call costs.
    let timed = |f: &dyn Fn()| {
        let mut samples: Vec<Duration> = (0..50)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        samples.sort();
        (samples[samples.len() / 2], samples[samples.len() - 1])
    };
    let (snapshot_median, snapshot_max) = timed(&|| drop(pool.snapshot()));
    let (report_median, report_max) = timed(&|| drop(pool.report()));
    println!(
        "snapshot() over {} sites: median {:?}, max {:?} (goal: <= 200 µs)",
        snapshot.sites.len(),
        snapshot_median,
        snapshot_max
    );
    println!("report(): median {report_median:?}, max {report_max:?}");

    const N: usize = 200_000;
    runtime.block_on(latencies(&pool, 20_000)); // warm
    let quiet = runtime.block_on(latencies(&pool, N));
    let (quiet_p999, _) = describe("checkout+return, no reader", quiet);

    let stop = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(AtomicU64::new(0));
    let reader = {
        let (pool, stop, reports) = (pool.clone(), Arc::clone(&stop), Arc::clone(&reports));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(pool.report());
                reports.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let busy = runtime.block_on(latencies(&pool, N));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let (busy_p999, _) = describe("checkout+return, report() loop", busy);
    println!(
        "reader made {} reports meanwhile; p99.9 with/without: {:.2}x (goal: <= 2x)",
        reports.load(Ordering::Relaxed),
        busy_p999 as f64 / quiet_p999.max(1) as f64
    );
}
