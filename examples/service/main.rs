//! A small HTTP service with a watched pool, exposing `/metrics`
//! (Prometheus, histograms with buckets), `/debug/pool` (the pool's report
//! as JSON: verdicts, sites, spans, timeline) and
//! `/debug/pool/timeline.svg`.
//!
//! ```text
//! cargo run --example service --features metrics,serde            # serves on 127.0.0.1:3000
//! cargo run --example service --features metrics,serde -- --once  # serves, calls itself, checks, exits
//! LOG_FORMAT=json cargo run --example service --features metrics,serde -- --once  # JSON logs
//! ```
//!
//! Uses `DATABASE_URL` when set; otherwise a throwaway local PostgreSQL.
//! `deploy/` has Prometheus rules and a Grafana dashboard over what
//! `/metrics` exports.

#[path = "../../tests/support/pg.rs"]
mod pg;

mod app;

use app::App;

/// Logs for people (the default) or for a log pipeline (`LOG_FORMAT=json`:
/// one JSON object per line, poolwatch's fields at the top level).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,poolwatch=info".into());
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logs();
    // The recorder comes first: the pool registers its metrics with it.
    let prometheus = app::install_metrics()?;
    let pool = app::pool(pg::pg_config()?)?;
    app::migrate(&pool).await?;
    let router = app::router(App {
        pool,
        prometheus: prometheus.clone(),
    });

    let once = std::env::args().any(|a| a == "--once");
    let addr = if once {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr} (database: {})", pg::describe());
    if !once {
        axum::serve(listener, router).await?;
        return Ok(());
    }

    // The self-check: call every route, then check what came back.
    tokio::spawn(async move { axum::serve(listener, router).await });
    let report = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let traffic = app::exercise(addr).map_err(|e| e.to_string())?;
        let (_, metrics) = app::http(addr, "GET", "/metrics").map_err(|e| e.to_string())?;
        let (_, pool) = app::http(addr, "GET", "/debug/pool").map_err(|e| e.to_string())?;
        let (_, svg) =
            app::http(addr, "GET", "/debug/pool/timeline.svg").map_err(|e| e.to_string())?;
        for (what, ok) in [
            ("timeline.svg is an SVG", svg.starts_with("<svg")),
            (
                "the report names the pool",
                pool.contains("\"pool\":\"main\""),
            ),
            (
                "wait time is a histogram",
                metrics.contains("db_client_connection_wait_time_seconds_bucket{"),
            ),
            (
                "the taken name is a failed INSERT",
                metrics.contains("error_type=\"23505\""),
            ),
            ("no summaries", !metrics.contains("quantile=")),
        ] {
            if !ok {
                return Err(format!("self-check failed: {what}\n{metrics}"));
            }
        }
        Ok(format!(
            "{traffic}--- /metrics (db_client_*)\n{}\n--- /debug/pool\n{pool}\n",
            metrics
                .lines()
                .filter(|l| l.starts_with("db_client") && !l.contains("_bucket"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })
    .await??;
    println!("{report}");
    Ok(())
}
