//! # poolwatch
//!
//! Find out **why** your deadpool connections are unavailable.
//!
//! When a pool runs dry the symptom is always the same: callers wait, then
//! time out. The cause is one of three, and they need different fixes:
//!
//! * **leak**: a connection borrowed and never returned (a forgotten guard,
//!   a task stuck forever, a guard stored in a long-lived struct);
//! * **long hold**: returned, but held across unrelated work or an open
//!   transaction;
//! * **concurrency growth**: holds are short, there is simply more demand
//!   than connections.
//!
//! poolwatch wraps deadpool's checkout ([`WatchedPool`]) and records, for
//! every checkout, the call site and tracing span that acquired it, how long
//! the caller waited, how long the connection was held and how the hold
//! ended ([`Outcome`]). It reports through `tracing` (target `poolwatch`):
//!
//! * WARN when a guard is returned after the hold threshold;
//! * WARN when an acquire waited past the slow-acquire threshold;
//! * WARN when an acquire fails, naming **who holds the pool right now**:
//!   `pool main timed out after 5s at src/api.rs:88:9; 16/16 held: 12 by
//!   src/jobs/cleanup.rs:42:17 (oldest 1m 35s), 4 by src/api/users.rs:88:9
//!   (oldest 2s)`;
//! * WARN when a guard is dropped while its thread panics.
//!
//! With the `leak-report` feature (for staging) it also captures the stack
//! of each checkout ([`StackMode`]) and runs one watchdog thread per process
//! that reports guards **while they are still held**:
//!
//! * WARN when a guard is held past the hold threshold, again at 4× and
//!   16× (never more), with the pool's status and the acquiring stack;
//! * INFO when such a flagged guard is returned after all, with its total
//!   hold;
//! * ERROR for every guard still held when the pool is closed or its last
//!   handle dropped (never returned: `mem::forget`, a stuck task, a guard
//!   kept in a long-lived struct);
//! * the stack on the panicking-drop WARN, and an INFO for `Guard::take`.
//!
//! [`WatchedPool::snapshot`] gives the same data as plain structs.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use poolwatch::postgres::{Config, Runtime};
//!
//! let mut cfg = Config::new();
//! cfg.url = Some("postgres://app@localhost/app".into());
//! // was: let pool = cfg.create_pool(Some(Runtime::Tokio1), NoTls)?;
//! let pool = poolwatch::postgres::create_pool(&cfg, Some(Runtime::Tokio1), tokio_postgres::NoTls)?;
//! let client = pool.get().await?;
//! let row = client.query_one("SELECT 1::int4", &[]).await?;
//! assert_eq!(row.get::<_, i32>(0), 1);
//! # Ok(()) }
//! ```
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | yes | [`postgres`] module: deadpool-postgres names |
//! | `leak-report` | no | stack capture and a watchdog thread (staging) |
//! | `metrics` | no | `poolwatch::export`: OpenTelemetry-named metrics through the `metrics` facade |
//! | `serde` | no | `Serialize` for snapshots |
//!
//! ## Event fields
//!
//! `pool`, `guard` (checkout id), `site` (`file:line:column`), `span` (the
//! tracing span current at checkout), `waited_ms`, `held_ms`,
//! `threshold_ms`, `outcome`; acquire failures add `failure`, `error`,
//! `held`, `max_size`, `waiting` and `holders`. Holds of a
//! [`postgres`] pool add `busy_ms` (time inside database calls),
//! `backend_pid` (join with `pg_stat_activity.pid`), `statement` (last SQL
//! text, bounded, never parameters), `transaction_site`, `action`.
//! Under `leak-report`,
//! `backtrace` (the user's frames of the acquiring stack, poolwatch, runtime
//! and std frames trimmed and counted), `flag` (escalation level 1–3),
//! `in_use` and `ending` (`closed` or `dropped`).
#![deny(missing_docs)]

// The layers, top to bottom (see ARCHITECTURE.md): the hot path (`pool`,
// `checkout`, `guard`) records into the `ledger` and reacts through
// `observe`; `view` and `report` read; `sampler` and `watchdog` run in the
// background; `postgres` is the database integration.
mod background;
mod checkout;
mod config;
mod errors;
mod events;
#[cfg(feature = "metrics")]
pub mod export;
#[cfg(not(feature = "metrics"))]
mod export;
mod guard;
mod human;
mod lag_probe;
mod ledger;
mod observe;
mod outcome;
mod pool;
mod ratelimit;
pub mod report;
mod sampler;
mod server;
mod shared;
mod site;
mod snapshot;
#[cfg(feature = "leak-report")]
mod stack;
mod stack_mode;
mod task;
mod timeline;
mod view;
#[cfg(feature = "leak-report")]
mod watchdog;

/// **Not public API**: internals for poolwatch's own benches and memory
/// test. Hidden, exempt from semver, may change in any release.
#[doc(hidden)]
#[path = "bench_support.rs"]
pub mod __bench;

#[cfg(feature = "postgres")]
pub mod postgres;

pub use config::{
    Statements, WatchConfig, WatchConfigBuilder, ENV_HOLD_THRESHOLD, ENV_MAX_SITES,
    ENV_METRICS_SITE_LABELS, ENV_POOL_NAME, ENV_REPORT_EVERY, ENV_SERVER_VIEW, ENV_SLOW_ACQUIRE,
    ENV_STACKS, ENV_STATEMENTS, ENV_TIMELINE_TICK, ENV_TIMELINE_WINDOW, ENV_WINDOW, MIN_THRESHOLD,
    MIN_TICK,
};
pub use errors::ConfigError;
pub use events::TARGET;
pub use guard::Guard;
pub use outcome::{AcquireFailure, FailureCounts, Outcome, OutcomeCounts};
pub use pool::WatchedPool;
pub use report::{Report, Verdict, VerdictKind};
pub use site::{CallSite, SpanInfo};
pub use snapshot::{
    DatabaseStats, HolderState, LatencySummary, LifetimeTotals, OutstandingGuard, PoolSnapshot,
    PoolStatus, SiteSnapshot, SpanSnapshot, WaitingAcquire,
};
pub use timeline::PressureSample;

/// Whether the process-wide timeline sampler thread is running. It starts
/// with the first pool whose timeline is on
/// ([`WatchConfig::timeline_tick`]) and exits after the last such pool is
/// dropped.
///
/// ```
/// // No pool has been created in this example.
/// assert!(!poolwatch::timeline_sampler_running());
/// ```
pub fn timeline_sampler_running() -> bool {
    sampler::running()
}

pub use stack_mode::StackMode;
#[cfg(feature = "leak-report")]
pub use watchdog::watchdog_running;

/// Whether poolwatch's watchdog thread is running: always `false` without
/// the `leak-report` feature, which is what starts it.
///
/// ```
/// assert!(!poolwatch::watchdog_running());
/// ```
#[cfg(not(feature = "leak-report"))]
pub fn watchdog_running() -> bool {
    false
}
