//! A watchdog scan never stalls a checkout for long (issue 16: about
//! 50 µs at most). The stall a checkout can see is one shard-lock hold of
//! the scan: this times every hold of scans over 10,000 outstanding
//! guards in one shard, all of them overdue at once (the worst case:
//! every entry is marked; the scan holds the lock for at most 1,024 slab
//! keys at a time). Then, for context, one thread times checkout records
//! in that shard while another scans (on a shared machine the tail there
//! is mostly scheduling).
//!
//! Uses `poolwatch::__bench`, internals that are not public API; no
//! database.
//!
//! ```sh
//! unset RUST_BACKTRACE
//! cargo bench --features leak-report --bench scan_stall
//! ```
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use poolwatch::__bench;
use poolwatch::{StackMode, WatchConfig};

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

fn describe(label: &str, mut ns: Vec<u64>) -> u64 {
    ns.sort_unstable();
    let max = *ns.last().unwrap();
    println!(
        "{label:<38} n={:<8} p50 {:>6} ns  p99 {:>7} ns  p99.9 {:>8} ns  max {:>9} ns",
        ns.len(),
        quantile(&ns, 0.5),
        quantile(&ns, 0.99),
        quantile(&ns, 0.999),
        max
    );
    max
}

fn main() {
    const GUARDS: usize = 10_000;
    const ROUNDS: usize = 20;
    let threshold = Duration::from_millis(10);
    let config = WatchConfig::builder()
        .stacks(StackMode::Off)
        .timeline_tick(None)
        .build()
        .unwrap();
    let ledger = Arc::new(__bench::Ledger::new(&config));
    std::thread::sleep(2 * threshold);

    let mut holds = Vec::new();
    for _ in 0..ROUNDS {
        let acquired = ledger.open(GUARDS);
        holds.extend(ledger.scan_lock_holds(acquired + 20 * threshold, threshold));
    }
    holds.sort();
    let hold_us =
        |q: f64| holds[((holds.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    println!(
        "scan lock holds over {} rounds of {GUARDS} overdue guards: {} holds, median {:.1} µs, p99 {:.1} µs, max {:.1} µs (goal: about 50 µs)",
        ROUNDS,
        holds.len(),
        hold_us(0.5),
        hold_us(0.99),
        hold_us(1.0)
    );

    let mut quiet = Vec::new();
    let mut scanned = Vec::new();
    let mut scan_times = Vec::new();
    for _ in 0..ROUNDS {
        // This thread's shard gets 10,000 guards, overdue at once.
        let acquired = ledger.open(GUARDS);
        for _ in 0..20_000 {
            let start = Instant::now();
            ledger.open_close();
            quiet.push(start.elapsed().as_nanos() as u64);
        }
        let go = Arc::new(Barrier::new(2));
        let done = Arc::new(AtomicBool::new(false));
        let scanner = {
            let (ledger, go, done) = (Arc::clone(&ledger), Arc::clone(&go), Arc::clone(&done));
            std::thread::spawn(move || {
                go.wait();
                let start = Instant::now();
                // Every guard crosses all three levels at once.
                let flagged = ledger.scan(acquired + 20 * threshold, threshold);
                let took = start.elapsed();
                done.store(true, Ordering::Release);
                (flagged, took)
            })
        };
        go.wait();
        while !done.load(Ordering::Acquire) {
            let start = Instant::now();
            ledger.open_close();
            scanned.push(start.elapsed().as_nanos() as u64);
        }
        let (flagged, took) = scanner.join().unwrap();
        assert!(flagged >= GUARDS, "every guard was overdue: {flagged}");
        scan_times.push(took);
    }
    scan_times.sort();
    println!(
        "scan of {GUARDS} overdue guards: median {:?}, max {:?}",
        scan_times[scan_times.len() / 2],
        scan_times[scan_times.len() - 1]
    );
    describe("checkout record, no scan", quiet);
    describe("checkout record, during scans", scanned);
}
