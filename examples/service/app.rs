//! The service's HTTP side: a users table behind a watched pool, the
//! Prometheus scrape, and the pool's report. `main.rs` runs it; the fleet
//! test (`tests/fleet_assets.rs`) runs the same router to check that
//! `deploy/`'s rules and dashboard ask for metrics this service exports.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use poolwatch::postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};
use poolwatch::WatchConfig;

#[derive(Clone)]
pub struct App {
    pub pool: Pool,
    pub prometheus: PrometheusHandle,
}

/// The Prometheus recorder, installed before any pool: the pool registers
/// its metrics with the recorder it finds. Histograms get buckets (a
/// summary's quantiles cannot be summed across instances) and names get
/// the `_seconds` / `_total` suffixes an OpenTelemetry collector would
/// give them.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets_for_metric(
            Matcher::Prefix("db_client".into()),
            poolwatch::export::DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Prefix("poolwatch".into()),
            poolwatch::export::DURATION_BUCKETS,
        )?
        .install_recorder()
}

/// The watched pool: `POOLWATCH_*` from the environment over the
/// service's own settings.
pub fn pool(pg_config: tokio_postgres::Config) -> Result<Pool, Box<dyn std::error::Error>> {
    let watch = WatchConfig::builder()
        .pool_name("main")
        // Per-site histograms for the dashboard's "top sites" (capped).
        .metrics_site_labels(20)
        .with_env()?
        .build()?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let pool = Pool::builder(pg_config, tokio_postgres::NoTls, manager_config)
        .max_size(8)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .watch(watch)
        .build()?;
    Ok(pool)
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/pool", get(debug_pool))
        .route("/debug/pool/timeline.svg", get(timeline_svg))
        .route("/users/{id}", get(user))
        .route("/signup/{name}", post(signup))
        .with_state(app)
}

type Failure = (StatusCode, String);

fn internal(error: impl std::fmt::Display) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

/// Creates the table the handlers use.
pub async fn migrate(pool: &Pool) -> Result<(), Box<dyn std::error::Error>> {
    let client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS service_users (
                 id bigserial PRIMARY KEY,
                 name text NOT NULL UNIQUE
             )",
        )
        .await?;
    Ok(())
}

async fn metrics(State(app): State<App>) -> String {
    // The gauges as of this scrape.
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

#[tracing::instrument(skip(app))]
async fn user(State(app): State<App>, Path(id): Path<i64>) -> Result<String, Failure> {
    let client = app.pool.get().await.map_err(internal)?;
    let row = client
        .query_opt("SELECT name FROM service_users WHERE id = $1", &[&id])
        .await
        .map_err(internal)?;
    match row {
        Some(row) => Ok(format!("user {id}: {}\n", row.get::<_, String>(0))),
        None => Err((StatusCode::NOT_FOUND, format!("no user {id}\n"))),
    }
}

#[tracing::instrument(skip(app))]
async fn signup(State(app): State<App>, Path(user_name): Path<String>) -> Result<String, Failure> {
    let mut client = app.pool.get().await.map_err(internal)?;
    let tx = client.transaction().await.map_err(internal)?;
    let inserted = tx
        .query_one(
            "INSERT INTO service_users (name) VALUES ($1) RETURNING id",
            &[&user_name],
        )
        .await;
    let id: i64 = match inserted {
        Ok(row) => row.get(0),
        // 23505: the name is taken (`error.type` on the operation metric).
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            // Ended here rather than by drop, so the connection goes back
            // clean (poolwatch reports a rollback left to drop).
            tx.rollback().await.map_err(internal)?;
            return Err((StatusCode::CONFLICT, format!("{user_name} is taken\n")));
        }
        Err(e) => return Err(internal(e)),
    };
    tx.commit().await.map_err(internal)?;
    Ok(format!("signed up {user_name} as {id}\n"))
}

/// A plain HTTP/1.1 request, so the self-check needs no HTTP client crate:
/// the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned());
    Ok((status, body))
}

/// Traffic like a day's: sign-ups (one name taken twice), lookups (one
/// missing). Returns what the calls answered.
pub fn exercise(addr: SocketAddr) -> std::io::Result<String> {
    let mut out = String::new();
    let run = std::process::id();
    for (method, path) in [
        ("POST", format!("/signup/ada-{run}")),
        ("POST", format!("/signup/grace-{run}")),
        ("POST", format!("/signup/ada-{run}")),
        ("GET", "/users/1".to_owned()),
        ("GET", "/users/999999999".to_owned()),
    ] {
        let (status, body) = http(addr, method, &path)?;
        out.push_str(&format!("{method} {path} -> {status} {body}"));
    }
    Ok(out)
}
