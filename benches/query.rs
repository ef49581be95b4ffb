//! An instrumented `query_one` against the same call on plain
//! deadpool-postgres, in one run.
//!
//! Real PostgreSQL (throwaway local cluster on a unix socket, or
//! `DATABASE_URL`), a warm connection checked out once, a statement
//! prepared once (`prepare_cached`); each iteration is one
//! `query_one(&stmt, &[&i])` round trip. `raw` calls tokio-postgres
//! through a plain `deadpool_postgres::Client` of `cfg.create_pool(..)`;
//! `poolwatch` the same method on a `poolwatch::postgres::Client` of the
//! README's `poolwatch::postgres::create_pool(&cfg, ..)`, whose
//! connection observer reads every message (busy time, statement text,
//! transaction state). The paired rounds end with PASS or FAIL against
//! issue 14's target: at most 1 % over plain.
//!
//! Run it pinned to one core, client and server together:
//!
//! ```sh
//! taskset -c 0 cargo bench --bench query -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! (The throwaway server inherits the affinity; with `DATABASE_URL`, pin
//! the server as well.) Unpinned on a 2-vCPU VM, a round trip takes 15 µs
//! when the client and the server's backend share a vCPU and ~57 µs when
//! they do not (a cross-vCPU wakeup each way), and which one a backend
//! gets changes between runs: two connections were measured at 16 µs and
//! 57 µs in the same run, whatever poolwatch did. Pinned, both sides see
//! the same machine and the difference is the client's work.
use criterion::{criterion_group, criterion_main, Criterion};
#[path = "support/config.rs"]
mod config;

const SQL: &str = "SELECT $1::int4";

fn query_one(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw_pool = config::raw_pool(1);
    let pool = config::watched_pool(1);
    let (raw, raw_stmt, watched, stmt) = rt.block_on(async {
        let raw = raw_pool.get().await.unwrap();
        let raw_stmt = raw.prepare_cached(SQL).await.unwrap();
        let watched = pool.get().await.unwrap();
        let stmt = watched.prepare_cached(SQL).await.unwrap();
        (raw, raw_stmt, watched, stmt)
    });
    let mut group = c.benchmark_group("query_one");
    group.bench_function("raw", |b| {
        b.to_async(&rt).iter(|| async {
            let row = raw.query_one(&raw_stmt, &[&7i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 7);
        })
    });
    group.bench_function("poolwatch", |b| {
        b.to_async(&rt).iter(|| async {
            let row = watched.query_one(&stmt, &[&7i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 7);
        })
    });
    group.finish();

    // Criterion times the two one after the other, and a server round
    // trip on a shared machine drifts by more than the 1 % in question.
    // Paired rounds alternate the two, so drift hits both alike.
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        rt.block_on(async {
            let (mut raws, mut watcheds) = (Vec::new(), Vec::new());
            // Which side goes first alternates too: the side that runs
            // right after the other finds the machine in a different state.
            for round in 0..ROUNDS {
                for side in [round % 2, 1 - round % 2] {
                    let start = std::time::Instant::now();
                    for i in 0..PER_ROUND {
                        if side == 0 {
                            raw.query_one(&raw_stmt, &[&i]).await.unwrap();
                        } else {
                            watched.query_one(&stmt, &[&i]).await.unwrap();
                        }
                    }
                    let per_query = start.elapsed() / PER_ROUND as u32;
                    if side == 0 {
                        raws.push(per_query);
                    } else {
                        watcheds.push(per_query);
                    }
                }
            }
            let mut added: Vec<f64> = raws
                .iter()
                .zip(&watcheds)
                .map(|(r, w)| (w.as_nanos() as f64 / r.as_nanos() as f64 - 1.0) * 100.0)
                .collect();
            added.sort_by(f64::total_cmp);
            raws.sort();
            watcheds.sort();
            let (r, w) = (raws[ROUNDS / 2], watcheds[ROUNDS / 2]);
            let over = added[ROUNDS / 2];
            println!(
                "query_one/paired ({ROUNDS} alternating rounds of {PER_ROUND}): raw {r:?}, \
                 poolwatch {w:?}, {over:+.2} % (median of the per-round ratios; p10 \
                 {:+.2} %, p90 {:+.2} %); target <= +{TARGET_PERCENT} %: {}",
                added[ROUNDS / 10],
                added[ROUNDS * 9 / 10],
                if over <= TARGET_PERCENT {
                    "PASS"
                } else {
                    "FAIL"
                },
            );
        });
    }
    drop((raw, watched));
}

/// Many short rounds: a round trip's latency on a shared machine jumps
/// between levels (where the client and the server process run), and
/// short alternating rounds put both sides on the same level far more
/// often than long ones.
const ROUNDS: usize = 801;

/// Issue 14: an instrumented `query_one` at most 1 % over plain.
const TARGET_PERCENT: f64 = 1.0;
const PER_ROUND: i32 = 100;

criterion_group!(benches, query_one);
criterion_main!(benches);
