//! Checkout+return overhead of poolwatch against plain deadpool, in one run.
//!
//! Real PostgreSQL (throwaway local cluster on a unix socket, or
//! `DATABASE_URL`), `RecyclingMethod::Fast`, warm pool. Run with
//! `cargo bench --bench checkout`; compare the medians of `raw` and
//! `poolwatch` within the same group.
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use poolwatch::{WatchConfig, WatchedPool};

#[path = "../tests/support/pg.rs"]
mod pg;

fn watched(raw: deadpool_postgres::Pool) -> poolwatch::postgres::Pool {
    WatchedPool::new(
        raw,
        WatchConfig::builder().pool_name("bench").build().unwrap(),
    )
}

fn current_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = pg::pool(4);
    let pool = watched(pg::pool(4));
    // Warm: both pools have an open connection before timing starts.
    rt.block_on(async {
        drop(raw.get().await.unwrap());
        drop(pool.get().await.unwrap());
    });
    let mut group = c.benchmark_group("checkout_return/current_thread");
    group.bench_function("raw", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(raw.get().await.unwrap()) })
    });
    group.bench_function("poolwatch", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(pool.get().await.unwrap()) })
    });
    group.finish();
}

/// `tasks` tasks on a runtime with as many worker threads, each doing
/// `iters / tasks` checkouts; the measured time is the wall time of all.
fn parallel<F, Fut>(rt: &tokio::runtime::Runtime, tasks: u64, iters: u64, checkout: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let checkout = checkout.clone();
                tokio::spawn(async move {
                    for _ in 0..iters / tasks {
                        checkout().await;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw = pg::pool(4);
    let pool = watched(pg::pool(4));
    rt.block_on(async {
        let (a, b) = (raw.get().await.unwrap(), raw.get().await.unwrap());
        drop((a, b));
        let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        drop((a, b));
    });
    let mut group = c.benchmark_group("checkout_return/2_tasks_2_threads");
    group.bench_function(BenchmarkId::new("raw", 2), |b| {
        b.iter_custom(|iters| {
            let raw = raw.clone();
            parallel(&rt, 2, iters, move || {
                let raw = raw.clone();
                async move { drop(raw.get().await.unwrap()) }
            })
        })
    });
    group.bench_function(BenchmarkId::new("poolwatch", 2), |b| {
        b.iter_custom(|iters| {
            let pool = pool.clone();
            parallel(&rt, 2, iters, move || {
                let pool = pool.clone();
                async move { drop(pool.get().await.unwrap()) }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, current_thread, two_threads);
criterion_main!(benches);
