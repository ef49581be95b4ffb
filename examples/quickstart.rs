//! The poolwatch demo: a small simulated service (request handlers and a
//! background job) on a real PostgreSQL, through four scenarios that each
//! exhaust a 4-connection pool for a different reason. For each, poolwatch's
//! tracing output, its report and its verdict.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway local
//! PostgreSQL (removed when the demo exits). The pressure timelines are
//! written as SVG pictures to `target/poolwatch-demo/` (or
//! `POOLWATCH_DEMO_DIR`).
use std::path::PathBuf;
use std::time::Instant;

#[path = "../tests/support/mod.rs"]
mod support;

use support::scenarios::{self, Scenario};

fn print(scenario: &Scenario, dir: &std::path::Path) -> std::io::Result<PathBuf> {
    println!("\n{}", scenario.report);
    let svg = dir.join(format!("{}.svg", scenario.report.pool));
    std::fs::write(&svg, scenario.report.timeline_svg())?;
    println!("timeline picture: {}", svg.display());
    Ok(svg)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // poolwatch's warnings, and the demo's own spans (a span
                // the filter disables is invisible to poolwatch too).
                .unwrap_or_else(|_| "warn,poolwatch=warn,quickstart=info".into()),
        )
        .with_target(false)
        .init();
    let started = Instant::now();
    support::pg::pg_config()?;
    println!("database: {}", support::pg::describe());
    let dir = std::env::var_os("POOLWATCH_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/poolwatch-demo"));
    std::fs::create_dir_all(&dir)?;

    let mut verdicts = Vec::new();
    println!("\n===== 1. leak on an error path: failed orders park their connection 'for a retry' that never comes");
    let s = scenarios::leak_on_error_path().await;
    print(&s, &dir)?;
    verdicts.push((s.name, s.report.kinds()));

    println!("\n===== 2. a transaction held across a slow payment-provider call");
    let s = scenarios::transaction_across_slow_call().await;
    print(&s, &dir)?;
    verdicts.push((s.name, s.report.kinds()));

    println!("\n===== 3. a background job hogging connections while requests wait");
    let s = scenarios::job_hogging_connections().await;
    print(&s, &dir)?;
    verdicts.push((s.name, s.report.kinds()));

    println!("\n===== 4. a burst of short concurrent requests");
    let s = scenarios::burst_of_demand().await;
    print(&s, &dir)?;
    verdicts.push((s.name, s.report.kinds()));

    println!("\n===== verdicts");
    for (name, kinds) in &verdicts {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        println!("  {name:<46} {}", kinds.join(" + "));
    }
    println!("(demo took {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
