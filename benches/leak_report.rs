//! Costs of the `leak-report` feature that do not need a database:
//!
//! * `watchdog_scan/<n>`: one watchdog scan of a ledger with `n` outstanding
//!   checkouts, none overdue (the usual case: the scan compares every
//!   acquire time with the cutoffs and flags nothing). Reported per scan and
//!   as throughput; the time per entry is the inverse of the throughput.
//! * `stack_capture/20_frames/<threads>`: capturing a 20-frame stack as a
//!   checkout does, on 1 thread and on 2 threads at once (time per capture
//!   per thread, wall clock: equal times mean it scales), and the same in
//!   thread CPU time (`stack_capture_cpu`), which a machine shared with
//!   other work does not inflate by descheduling the threads.
//!
//! Uses `poolwatch::__bench`, internals that are not public API.
//!
//! ```sh
//! cargo bench --features leak-report --bench leak_report -- --warm-up-time 1 --measurement-time 3
//! ```
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use poolwatch::__bench;
use poolwatch::{StackMode, WatchConfig};

fn watchdog_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("watchdog_scan");
    for n in [1_000, 10_000, 100_000] {
        let config = WatchConfig::builder()
            .stacks(StackMode::Off)
            .timeline_tick(None)
            .build()
            .unwrap();
        let ledger = __bench::Ledger::new(&config);
        // As in a service that has run for longer than the threshold: the
        // cutoffs fall after the ledger was made, so every acquire time is
        // compared (a scan sooner than that returns at once).
        let threshold = Duration::from_millis(10);
        std::thread::sleep(2 * threshold);
        let acquired = ledger.open(n);
        assert_eq!(ledger.outstanding(), n);
        let now = acquired + threshold / 2;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let flagged = ledger.scan(now, threshold);
                assert_eq!(flagged, 0);
            })
        });
        // The same ledger is overdue a moment later: the scan is real.
        assert_eq!(ledger.scan(acquired + 2 * threshold, threshold), n);
    }
    group.finish();
}

/// Calls [`__bench::capture_stack`] `depth` frames below the caller.
#[inline(never)]
fn at_depth(depth: usize) -> usize {
    if depth <= 1 {
        __bench::capture_stack()
    } else {
        black_box(at_depth(black_box(depth - 1)))
    }
}

/// The recursion depth at which a capture on this thread sees `frames`
/// frames.
fn depth_for(frames: usize) -> usize {
    let depth = (1..64)
        .find(|&d| at_depth(d) >= frames)
        .expect("a stack that deep");
    assert_eq!(at_depth(depth), frames, "one frame per level");
    depth
}

/// This thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `iters` captures of a 20-frame stack on each of `threads` threads at
/// once; the slowest thread's time by `clock`.
fn captures(threads: u64, iters: u64, clock: fn() -> Duration) -> Duration {
    const FRAMES: usize = 20;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let depth = depth_for(FRAMES);
                    let start = clock();
                    for _ in 0..iters {
                        black_box(at_depth(depth));
                    }
                    clock() - start
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn wall_time() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn stack_capture(c: &mut Criterion) {
    for (name, clock) in [
        ("stack_capture/20_frames", wall_time as fn() -> Duration),
        ("stack_capture_cpu/20_frames", thread_cpu_time),
    ] {
        let mut group = c.benchmark_group(name);
        for threads in [1u64, 2] {
            group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                b.iter_custom(|iters| captures(threads, iters, clock))
            });
        }
        group.finish();
    }
    // On Linux x86_64 every capture above took the fast walk (framehop),
    // not the `backtrace` fallback: the numbers are the fast path's.
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        assert_eq!(__bench::slow_stack_captures(), 0, "captures fell back");
    }
}

criterion_group!(benches, watchdog_scan, stack_capture);
criterion_main!(benches);
