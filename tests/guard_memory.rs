//! Memory per outstanding guard, measured with a counting global allocator.
//!
//! A pool cannot hold 10 000 connections, so the ledger is filled directly
//! through `poolwatch::__bench` (internals, not public API): each entry is
//! exactly what `WatchedPool::get` opens for a checkout. What a guard adds
//! besides is inline (in the caller's future or stack: see the sizes
//! printed) or a reference count on an `Arc` that already exists.
//!
//! ```sh
//! cargo test --release --test guard_memory                          # default
//! cargo test --release --features leak-report --test guard_memory   # with stacks
//! ```
//!
//! A plain `main` (`harness = false`): no other test thread allocates while
//! it measures.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use poolwatch::{__bench, StackMode, WatchConfig};

/// Net bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes per outstanding checkout: the allocator's delta over growing a
/// ledger from 1 outstanding checkout (which created the call site's
/// statistics: per site, not per guard) to `n`, divided by `n - 1`.
fn bytes_per_guard(stacks: StackMode, n: usize) -> f64 {
    let config = WatchConfig::builder()
        .stacks(stacks)
        .timeline_tick(None)
        .build()
        .unwrap();
    let ledger = __bench::Ledger::new(&config);
    let open = |n| ledger.open(n); // one call site
    open(1);
    let before = LIVE.load(Ordering::Relaxed);
    open(n - 1);
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(ledger.outstanding(), n);
    (after - before) as f64 / (n - 1) as f64
}

fn main() {
    let entry = __bench::entry_size();
    println!("ledger entry (size_of): {entry} B");
    #[cfg(feature = "postgres")]
    println!(
        "inline: poolwatch::postgres::Client {} B, deadpool_postgres::Client {} B",
        std::mem::size_of::<poolwatch::postgres::Client>(),
        std::mem::size_of::<deadpool_postgres::Client>(),
    );
    // The slab doubles its capacity: at a power of two it is full, at
    // 10 000 it holds room for 16 384.
    for n in [10_000, 16_384] {
        let off = bytes_per_guard(StackMode::Off, n);
        println!("{n} outstanding, no stack: {off:.1} B per guard");
        if n == 16_384 {
            assert!(off <= entry as f64 + 8.0 + 1.0, "{off} B per guard");
            // The entry and its acquire time in the watchdog's column.
            let budget = if cfg!(feature = "leak-report") {
                64
            } else {
                48
            };
            assert!(off <= budget as f64, "{off} B per guard over {budget}");
        }
        if cfg!(feature = "leak-report") {
            let always = bytes_per_guard(StackMode::Always, n);
            let stack = always - off;
            // A boxed slice: 8 B per frame, no header.
            let frames = stack / 8.0;
            println!(
                "{n} outstanding, stack always: {always:.1} B per guard \
                 ({stack:.1} B of stack: {frames:.1} frames x 8 B)"
            );
            assert!(stack <= 8.0 * 32.0 + 1.0, "{stack} B of stack");
            assert!(
                (frames - frames.round()).abs() < 0.01,
                "{stack} B of stack: whole frames only"
            );
        }
    }
}
