//! Instruction counts of checkout+return and of `query_one`, raw against
//! poolwatch: a repeatable secondary measure on a noisy machine, read with
//! callgrind (not a criterion bench: `cargo bench` runs it as a no-op).
//!
//! ```sh
//! cargo bench --bench instructions --no-run   # prints the binary's path
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='instructions::measure*' \
//!     target/release/deps/instructions-<hash> checkout 20000
//! ```
//!
//! Each run prints which side it measured; callgrind's `Collected` total
//! divided by the count is the instructions per operation (only the
//! measured loop is counted: setup, PostgreSQL start and warm-up are not).
//!
//! A third argument, `raw` or `poolwatch`, measures one side only: for a
//! sampling profiler, whose per-symbol counts then compare side against
//! side (two processes of the same count):
//!
//! ```sh
//! taskset -c 0 perf record -e cpu-clock -F 25000 -o perf.raw \
//!     target/release/deps/instructions-<hash> checkout 20000000 raw
//! perf report -i perf.raw -n --no-children --sort dso,symbol
//! ```
use std::hint::black_box;

#[path = "support/config.rs"]
mod config;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The README's constructor, as the checkout bench times it.
fn watched() -> poolwatch::postgres::Pool {
    config::watched_pool(1)
}

#[inline(never)]
fn measure_raw_checkout(rt: &tokio::runtime::Runtime, pool: &deadpool_postgres::Pool, n: u64) {
    rt.block_on(async {
        for _ in 0..n {
            drop(black_box(pool.get().await.unwrap()));
        }
    })
}

#[inline(never)]
fn measure_poolwatch_checkout(
    rt: &tokio::runtime::Runtime,
    pool: &poolwatch::postgres::Pool,
    n: u64,
) {
    rt.block_on(async {
        for _ in 0..n {
            drop(black_box(pool.get().await.unwrap()));
        }
    })
}

#[inline(never)]
fn measure_raw_query(
    rt: &tokio::runtime::Runtime,
    client: &deadpool_postgres::Client,
    stmt: &tokio_postgres::Statement,
    n: u64,
) {
    rt.block_on(async {
        for i in 0..n as i32 {
            black_box(client.query_one(stmt, &[&i]).await.unwrap());
        }
    })
}

#[inline(never)]
fn measure_poolwatch_query(
    rt: &tokio::runtime::Runtime,
    client: &poolwatch::postgres::Client,
    stmt: &tokio_postgres::Statement,
    n: u64,
) {
    rt.block_on(async {
        for i in 0..n as i32 {
            black_box(client.query_one(stmt, &[&i]).await.unwrap());
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // An optional third argument measures one side only (`raw` or
    // `poolwatch`), for a sampling profiler that cannot tell them apart.
    let (what, n, only) = match args.as_slice() {
        [what, n] => (what.as_str(), n.parse::<u64>().expect("a count"), None),
        [what, n, side] => (
            what.as_str(),
            n.parse::<u64>().expect("a count"),
            Some(side.as_str()),
        ),
        _ => {
            eprintln!(
                "usage: instructions <checkout|query> <count> [raw|poolwatch] (under callgrind)"
            );
            return;
        }
    };
    let raw_side = only != Some("poolwatch");
    let poolwatch_side = only != Some("raw");
    let rt = runtime();
    let raw = config::raw_pool(1);
    let pool = watched();
    const SQL: &str = "SELECT $1::int4";
    match what {
        "checkout" => {
            // Warm: one connection open in each pool, paths run once.
            rt.block_on(async {
                for _ in 0..100 {
                    drop(raw.get().await.unwrap());
                    drop(pool.get().await.unwrap());
                }
            });
            if raw_side {
                measure_raw_checkout(&rt, &raw, n);
            }
            if poolwatch_side {
                measure_poolwatch_checkout(&rt, &pool, n);
            }
        }
        "query" => {
            let (rc, rs, wc, ws) = rt.block_on(async {
                let rc = raw.get().await.unwrap();
                let rs = rc.prepare_cached(SQL).await.unwrap();
                let wc = pool.get().await.unwrap();
                let ws = wc.prepare_cached(SQL).await.unwrap();
                for i in 0..100 {
                    rc.query_one(&rs, &[&i]).await.unwrap();
                    wc.query_one(&ws, &[&i]).await.unwrap();
                }
                (rc, rs, wc, ws)
            });
            if raw_side {
                measure_raw_query(&rt, &rc, &rs, n);
            }
            if poolwatch_side {
                measure_poolwatch_query(&rt, &wc, &ws, n);
            }
        }
        other => panic!("unknown measurement {other}"),
    }
    match only {
        Some(side) => println!("measured {what} x {n}, {side} only"),
        None => println!("measured {what} x {n}, raw then poolwatch"),
    }
}
