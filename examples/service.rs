//! A small HTTP service with a watched pool, exposing `/metrics`
//! (Prometheus), `/debug/pool` (the pool's report as JSON: verdicts,
//! sites, spans, timeline) and `/debug/pool/timeline.svg`.
//!
//! ```text
//! cargo run --example service --features metrics,serde            # serves on 127.0.0.1:3000
//! cargo run --example service --features metrics,serde -- --once  # serves, calls itself, prints, exits
//! ```
//!
//! Uses `DATABASE_URL` when set; otherwise a throwaway local PostgreSQL.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poolwatch::WatchConfig;

#[path = "../tests/support/pg.rs"]
mod pg;

#[derive(Clone)]
struct App {
    pool: poolwatch::postgres::Pool,
    prometheus: PrometheusHandle,
}

async fn metrics(State(app): State<App>) -> String {
    app.pool.record_metrics();
    app.prometheus.render()
}

/// The diagnosis: verdicts with evidence, sites, spans, timeline.
async fn debug_pool(State(app): State<App>) -> Json<poolwatch::Report> {
    // Asks the database who blocks whom before diagnosing.
    Json(app.pool.diagnose().await)
}

/// The pressure timeline as a picture.
async fn timeline_svg(
    State(app): State<App>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "image/svg+xml")],
        app.pool.report().timeline_svg(),
    )
}

async fn user(State(app): State<App>, Path(id): Path<i64>) -> Result<String, String> {
    let client = app.pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT $1::int8 * 10", &[&id])
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("user {id}: {}\n", row.get::<_, i64>(0)))
}

/// A plain HTTP/1.1 GET, so the self-check needs no HTTP client crate.
fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter("poolwatch=info")
        .init();
    // The recorder comes first: the pool registers its metrics with it.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let config = WatchConfig::builder()
        .pool_name("main")
        .metrics_site_labels(20)
        .with_env()?
        .build()?;
    let pool = poolwatch::postgres::Pool::builder(
        pg::pg_config()?,
        tokio_postgres::NoTls,
        poolwatch::postgres::ManagerConfig::default(),
    )
    .max_size(8)
    .runtime(poolwatch::postgres::Runtime::Tokio1)
    .watch(config)
    .build()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/pool", get(debug_pool))
        .route("/debug/pool/timeline.svg", get(timeline_svg))
        .route("/users/{id}", get(user))
        .with_state(App { pool, prometheus });

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
        axum::serve(listener, app).await?;
        return Ok(());
    }
    tokio::spawn(async move { axum::serve(listener, app).await });
    let report = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        for id in 1..=5 {
            print!("{}", http_get(addr, &format!("/users/{id}"))?);
        }
        let metrics = http_get(addr, "/metrics")?;
        let pool = http_get(addr, "/debug/pool")?;
        let svg = http_get(addr, "/debug/pool/timeline.svg")?;
        assert!(svg.starts_with("<svg"), "timeline.svg: {svg}");
        Ok(format!(
            "--- /metrics (db.client.connection.*)\n{}\n--- /debug/pool\n{pool}\n",
            metrics
                .lines()
                .filter(|l| l.starts_with("db_client_connection"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })
    .await??;
    println!("{report}");
    Ok(())
}
