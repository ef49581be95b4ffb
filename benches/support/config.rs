//! The pools the benches compare, built the way a service builds them: one
//! `deadpool_postgres::Config` for the test database, then
//! `cfg.create_pool(..)` for plain deadpool and the README's
//! `poolwatch::postgres::create_pool(&cfg, ..)` for poolwatch (connection
//! observer, sampler and server view as a service gets them).
#![allow(dead_code)]

use deadpool_postgres::{ManagerConfig, PoolConfig, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

#[path = "../../tests/support/pg.rs"]
pub mod pg;

/// The test database (`DATABASE_URL`, else a throwaway local cluster) as
/// the `deadpool_postgres::Config` a service would write, `max_size`
/// connections, `RecyclingMethod::Fast`.
pub fn deadpool_config(max_size: usize) -> deadpool_postgres::Config {
    let pg = pg::pg_config().unwrap_or_else(|e| panic!("no test database: {e}"));
    let mut cfg = deadpool_postgres::Config::new();
    cfg.host = pg.get_hosts().first().map(|host| match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => path.display().to_string(),
    });
    cfg.port = pg.get_ports().first().copied();
    cfg.user = pg.get_user().map(str::to_owned);
    cfg.password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    cfg.dbname = pg.get_dbname().map(str::to_owned);
    cfg.manager = Some(ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    });
    cfg.pool = Some(PoolConfig::new(max_size));
    cfg
}

/// Plain deadpool-postgres: `cfg.create_pool(Some(Runtime::Tokio1), NoTls)`.
pub fn raw_pool(max_size: usize) -> deadpool_postgres::Pool {
    deadpool_config(max_size)
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .expect("deadpool-postgres pool")
}

/// The README's constructor:
/// `poolwatch::postgres::create_pool(&cfg, Some(Runtime::Tokio1), NoTls)`.
pub fn watched_pool(max_size: usize) -> poolwatch::postgres::Pool {
    poolwatch::postgres::create_pool(&deadpool_config(max_size), Some(Runtime::Tokio1), NoTls)
        .expect("poolwatch pool")
}

/// The same constructor's long form with a stack mode of its own
/// (`Pool::from_config`, which `create_pool` calls), for the `leak-report`
/// variants.
pub fn watched_pool_with_stacks(
    max_size: usize,
    stacks: poolwatch::StackMode,
) -> poolwatch::postgres::Pool {
    let watch = poolwatch::WatchConfig::builder()
        .pool_name("bench")
        .stacks(stacks)
        .build()
        .expect("watch config");
    watched_pool_with(max_size, watch)
}

/// `Pool::from_config` (what `create_pool` calls) with `watch`.
pub fn watched_pool_with(
    max_size: usize,
    watch: poolwatch::WatchConfig,
) -> poolwatch::postgres::Pool {
    poolwatch::postgres::Pool::from_config(
        &deadpool_config(max_size),
        Some(Runtime::Tokio1),
        NoTls,
        watch,
    )
    .expect("poolwatch pool")
}

/// A ready-made pool wrapped as it is: `WatchedPool::new(raw_pool(..), ..)`
/// (no connection observer).
pub fn wrapped_pool(max_size: usize) -> poolwatch::postgres::Pool {
    let watch = poolwatch::WatchConfig::builder()
        .pool_name("bench")
        .build()
        .expect("watch config");
    poolwatch::WatchedPool::new(raw_pool(max_size), watch)
}
