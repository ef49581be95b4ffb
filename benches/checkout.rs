//! Checkout+return overhead of poolwatch against plain deadpool, in one run.
//!
//! Real PostgreSQL (throwaway local cluster on a unix socket, or
//! `DATABASE_URL`), `RecyclingMethod::Fast`, warm pool. Both sides are
//! built from one `deadpool_postgres::Config`, as a service builds them
//! (`support/config.rs`). Every group times `raw` (`cfg.create_pool(..)`)
//! next to the poolwatch variants:
//!
//! * default features: `poolwatch`, the README's constructor
//!   `poolwatch::postgres::create_pool(&cfg, ..)` (connection observer,
//!   sampler and server view on, as a service gets them), and `ready-made`,
//!   `WatchedPool::new` around a plain pool (no connection observer), to
//!   show what the observer costs;
//! * `--features leak-report`: `leak-report/<stack mode>` for `off`,
//!   `always`, `sample:100` and `first:1` (`Pool::from_config`, which
//!   `create_pool` calls, with that stack mode; instead of `poolwatch`: in
//!   such a build every pool pays for the feature).
//!
//! After criterion's groups, `paired` rounds alternate raw and each variant
//! (41 rounds each way) and print the medians: on a shared machine the
//! load drifts between criterion's one-after-the-other runs by more than
//! the difference in question, and alternating makes the drift hit both
//! sides alike. Those are the numbers the README quotes, with the target
//! of issue 14 (checkout+return at most 1.3x plain deadpool, median of the
//! per-round ratios) marked PASS or FAIL.
//!
//! With `BENCH_SUBSCRIBER=fmt` the paired rounds run as a service does: a
//! `tracing_subscriber::fmt()` subscriber installed and the rounds inside
//! a request span, which poolwatch reads at every checkout.
//!
//! ```sh
//! cargo bench --bench checkout -- --warm-up-time 1 --measurement-time 3
//! cargo bench --features leak-report --bench checkout -- --warm-up-time 1 --measurement-time 3
//! ```
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
#[path = "support/config.rs"]
mod config;

/// The poolwatch variants this build can time, each with its own pool.
fn variants(max_size: usize) -> Vec<(String, poolwatch::postgres::Pool)> {
    if cfg!(feature = "leak-report") {
        use poolwatch::StackMode::*;
        [Off, Always, Sample(100), First(1)]
            .into_iter()
            .map(|mode| {
                let pool = config::watched_pool_with_stacks(max_size, mode);
                (format!("leak-report/{mode}"), pool)
            })
            .collect()
    } else {
        vec![
            ("poolwatch".to_owned(), config::watched_pool(max_size)),
            // For comparison: a ready-made pool wrapped as it is (no
            // connection observer, so no busy time or transaction state).
            ("ready-made".to_owned(), config::wrapped_pool(max_size)),
        ]
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn two_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let raw = config::raw_pool(4);
    let pools = variants(4);
    // Warm: every pool has an open connection before timing starts.
    rt.block_on(async {
        drop(raw.get().await.unwrap());
        for (_, pool) in &pools {
            drop(pool.get().await.unwrap());
        }
    });
    let mut group = c.benchmark_group("checkout_return/current_thread");
    group.bench_function("raw", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(raw.get().await.unwrap()) })
    });
    for (name, pool) in &pools {
        group.bench_function(name.as_str(), |b| {
            b.to_async(&rt)
                .iter(|| async { drop(pool.get().await.unwrap()) })
        });
    }
    group.finish();
}

/// A pool whose checkout+return is timed.
trait CheckoutReturn: Clone + Send + Sync + 'static {
    fn checkout_return(&self) -> impl std::future::Future<Output = ()> + Send + '_;
}

impl CheckoutReturn for deadpool_postgres::Pool {
    async fn checkout_return(&self) {
        drop(self.get().await.unwrap())
    }
}

impl CheckoutReturn for poolwatch::postgres::Pool {
    async fn checkout_return(&self) {
        drop(self.get().await.unwrap())
    }
}

/// `tasks` tasks on a runtime with as many worker threads, each with its
/// own handle of `pool` doing `iters / tasks` checkouts; the measured time
/// is the wall time of all, so time per iteration is the inverse of the
/// throughput.
fn parallel(
    rt: &tokio::runtime::Runtime,
    tasks: u64,
    iters: u64,
    pool: &impl CheckoutReturn,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for _ in 0..iters / tasks {
                        pool.checkout_return().await;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        start.elapsed()
    })
}

fn two_threads(c: &mut Criterion) {
    let rt = two_thread_runtime();
    let raw = config::raw_pool(4);
    let pools = variants(4);
    rt.block_on(async {
        let (a, b) = (raw.get().await.unwrap(), raw.get().await.unwrap());
        drop((a, b));
        for (_, pool) in &pools {
            let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
            drop((a, b));
        }
    });
    let mut group = c.benchmark_group("checkout_return/2_tasks_2_threads");
    group.bench_function(BenchmarkId::new("raw", 2), |b| {
        b.iter_custom(|iters| parallel(&rt, 2, iters, &raw))
    });
    for (name, pool) in &pools {
        group.bench_function(BenchmarkId::new(name.as_str(), 2), |b| {
            b.iter_custom(|iters| parallel(&rt, 2, iters, pool))
        });
    }
    group.finish();
}

const ROUNDS: usize = 41;

/// Issue 14: checkout+return at most 1.3 times plain deadpool's.
const TARGET_RATIO: f64 = 1.3;

/// Median of `samples` (sorts them).
fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Nanoseconds per checkout+return of `iters` checkouts on one task.
fn one_task(rt: &tokio::runtime::Runtime, pool: &impl CheckoutReturn, iters: u64) -> f64 {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            pool.checkout_return().await;
        }
        start.elapsed().as_nanos() as f64 / iters as f64
    })
}

/// Alternating rounds, raw then each variant, 1 task and 2 tasks on 2
/// threads; prints medians (time per checkout, and the 2-thread
/// throughput as a share of raw's).
fn paired(_: &mut Criterion) {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    // `BENCH_SUBSCRIBER=fmt`: as a service runs, with a `fmt` subscriber
    // installed and the rounds inside a request span (poolwatch then
    // reads the span at every checkout; plain deadpool does not).
    if std::env::var("BENCH_SUBSCRIBER").is_ok_and(|v| v == "fmt") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,checkout=info"))
            .init();
    }
    let request = tracing::info_span!("request");
    let _in_request = request.enter();
    let single = current_thread_runtime();
    let multi = two_thread_runtime();
    let raw = config::raw_pool(4);
    let pools = variants(4);
    const ITERS: u64 = 100_000;
    for (name, pool) in &pools {
        // Warm both runtimes' paths and connections.
        one_task(&single, &raw, ITERS / 10);
        one_task(&single, pool, ITERS / 10);
        parallel(&multi, 2, ITERS / 10, &raw);
        parallel(&multi, 2, ITERS / 10, pool);
        let (mut raws, mut watcheds, mut added) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ratios, mut ratios2) = (Vec::new(), Vec::new());
        let (mut raws2, mut watcheds2, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let r = one_task(&single, &raw, ITERS);
            let w = one_task(&single, pool, ITERS);
            raws.push(r);
            watcheds.push(w);
            added.push(w - r);
            ratios.push(w / r);
            let r2 = parallel(&multi, 2, ITERS, &raw).as_nanos() as f64 / ITERS as f64;
            let w2 = parallel(&multi, 2, ITERS, pool).as_nanos() as f64 / ITERS as f64;
            raws2.push(r2);
            watcheds2.push(w2);
            shares.push(r2 / w2 * 100.0);
            ratios2.push(w2 / r2);
        }
        let ratio = median(&mut ratios);
        println!(
            "checkout_return/paired/current_thread/{name} ({ROUNDS} alternating rounds of \
             {ITERS}): raw {:.1} ns, poolwatch {:.1} ns, added {:+.1} ns, ratio {ratio:.2}x \
             (medians of the per-round differences and ratios); target <= {TARGET_RATIO}x: {}",
            median(&mut raws),
            median(&mut watcheds),
            median(&mut added),
            if ratio <= TARGET_RATIO {
                "PASS"
            } else {
                "FAIL"
            },
        );
        let ratio2 = median(&mut ratios2);
        println!(
            "checkout_return/paired/2_tasks_2_threads/{name}: raw {:.1} ns, poolwatch {:.1} ns \
             per checkout, ratio {ratio2:.2}x, throughput {:.0} % of raw (medians of the \
             per-round ratios); target <= {TARGET_RATIO}x: {}",
            median(&mut raws2),
            median(&mut watcheds2),
            median(&mut shares),
            if ratio2 <= TARGET_RATIO {
                "PASS"
            } else {
                "FAIL"
            },
        );
    }
}

criterion_group!(benches, current_thread, two_threads, paired);
criterion_main!(benches);
