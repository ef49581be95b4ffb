#![allow(dead_code)]
pub mod capture;
pub mod pg;
pub mod scenarios;

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
