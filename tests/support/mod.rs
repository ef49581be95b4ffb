#![allow(dead_code)]
pub mod capture;
pub mod counter;
#[cfg(feature = "postgres")]
pub mod pg;

/// The statistics of the call site at `line` (of any file) of `pool`.
pub fn site_at<M: deadpool::managed::Manager>(
    pool: &poolwatch::WatchedPool<M>,
    line: u32,
) -> poolwatch::SiteSnapshot {
    pool.snapshot()
        .sites
        .into_iter()
        .find(|s| s.site.line == line)
        .unwrap_or_else(|| panic!("no call site at line {line}"))
}

/// A pool of the test database built the way the README recommends: its
/// connections observed (every call on them seen).
#[cfg(feature = "postgres")]
pub fn observed_pool(max_size: usize, watch: poolwatch::WatchConfig) -> poolwatch::postgres::Pool {
    observed_pool_with(max_size, watch, poolwatch::postgres::Options::default())
}

/// [`observed_pool`] with explicit options.
#[cfg(feature = "postgres")]
pub fn observed_pool_with(
    max_size: usize,
    watch: poolwatch::WatchConfig,
    options: poolwatch::postgres::Options,
) -> poolwatch::postgres::Pool {
    let config = pg::pg_config().unwrap_or_else(|e| panic!("no test database: {e}"));
    poolwatch::postgres::Pool::builder(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    )
    .max_size(max_size)
    .runtime(deadpool_postgres::Runtime::Tokio1)
    .watch(watch)
    .options(options)
    .build()
    .expect("an observed pool")
}
