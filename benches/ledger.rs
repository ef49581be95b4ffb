//! The bookkeeping of one checkout without a pool, next to the primitives
//! it is made of, in one run: what the default path's overhead cannot go
//! below on this machine.
//!
//! * `ledger/open_close`: a checkout record opened and closed as
//!   `WatchedPool::get` and the guard's drop do (span lookup, the thread's
//!   shard, two counter reads, a lock on each side, the guard's `Arc`,
//!   the statistics and the hold histogram, the return's checks).
//! * `primitives/*`: one counter read (the ledger's clock), one std
//!   `Instant::now()`, an uncontended `parking_lot` lock and unlock, an
//!   `Arc` clone and drop.
//!
//! Uses `poolwatch::__bench`, internals that are not public API.
//!
//! ```sh
//! cargo bench --bench ledger -- --warm-up-time 1 --measurement-time 3
//! ```
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use poolwatch::{__bench, WatchConfig};

fn ledger(c: &mut Criterion) {
    let config = WatchConfig::builder().timeline_tick(None).build().unwrap();
    let ledger = __bench::Ledger::new(&config);
    c.bench_function("ledger/open_close", |b| b.iter(|| ledger.open_close()));
    assert_eq!(ledger.outstanding(), 0, "every record was closed");
}

fn primitives(c: &mut Criterion) {
    let mut group = c.benchmark_group("primitives");
    let clock = quanta::Clock::new();
    group.bench_function("counter_read", |b| b.iter(|| black_box(clock.raw())));
    group.bench_function("instant_now", |b| b.iter(|| black_box(Instant::now())));
    let mutex = parking_lot::Mutex::new(0u64);
    group.bench_function("lock_unlock", |b| b.iter(|| *black_box(&mutex).lock() += 1));
    let shared = Arc::new(0u64);
    group.bench_function("arc_clone_drop", |b| {
        b.iter(|| drop(black_box(Arc::clone(&shared))))
    });
    group.finish();
}

criterion_group!(benches, ledger, primitives);
criterion_main!(benches);
