//! The recorded call site is the caller's line, and the span is the one the
//! caller was in.
#![cfg(feature = "postgres")]
mod support;

use poolwatch::{Guard, WatchConfig, WatchedPool};
use support::pg;
use tracing::Instrument;

fn watched(max_size: usize) -> poolwatch::postgres::Pool {
    let config = WatchConfig::builder().pool_name("sites").build().unwrap();
    WatchedPool::new(pg::pool(max_size), config)
}

#[tokio::test]
async fn get_records_the_callers_line() {
    let pool = watched(2);
    let (guard, line) = (pool.get().await.unwrap(), line!());
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.outstanding.len(), 1);
    let outstanding = &snapshot.outstanding[0];
    assert_eq!(outstanding.site.file, file!());
    assert_eq!(outstanding.site.line, line);
    assert_eq!(outstanding.id, Guard::guard_id(&guard));
    assert_eq!(snapshot.pool, "sites");
}

#[tokio::test]
async fn timeout_get_records_the_callers_line() {
    let pool = watched(2);
    let timeouts = deadpool::managed::Timeouts {
        wait: Some(std::time::Duration::from_secs(5)),
        ..Default::default()
    };
    let (_guard, line) = (pool.timeout_get(&timeouts).await.unwrap(), line!());
    let site = pool.snapshot().outstanding[0].site;
    assert_eq!((site.file, site.line), (file!(), line));
}

/// A helper that checks out on behalf of its caller is the site, unless it
/// is `#[track_caller]` itself: the same rule as `Location::caller`.
async fn query_helper(pool: &poolwatch::postgres::Pool) -> (i32, u32) {
    let (client, line) = (pool.get().await.unwrap(), line!());
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    (row.get::<_, i32>(0), line)
}

#[tokio::test]
async fn sites_are_counted_separately() {
    let pool = watched(2);
    for _ in 0..3 {
        let (answer, _) = query_helper(&pool).await;
        assert_eq!(answer, 42);
    }
    let (_, helper_line) = query_helper(&pool).await;
    let (other, other_line) = (pool.get().await.unwrap(), line!());
    drop(other);
    let sites = pool.snapshot().sites;
    let helper = sites.iter().find(|s| s.site.line == helper_line).unwrap();
    let other = sites.iter().find(|s| s.site.line == other_line).unwrap();
    assert_eq!(helper.checkouts, 4);
    assert_eq!(helper.outcomes.returned, 4);
    assert_eq!(other.checkouts, 1);
    assert_eq!(sites.len(), 2);
}

#[tokio::test]
async fn the_current_span_is_recorded() {
    let (_capture, _guard) = support::capture::Capture::install();
    let pool = watched(2);
    let guard = async { pool.get().await.unwrap() }
        .instrument(tracing::info_span!("handle_request"))
        .await;
    let unspanned = pool.get().await.unwrap();
    let snapshot = pool.snapshot();
    let spanned = snapshot
        .outstanding
        .iter()
        .find(|g| g.id == Guard::guard_id(&guard))
        .unwrap();
    assert_eq!(spanned.span.unwrap().name, "handle_request");
    let plain = snapshot
        .outstanding
        .iter()
        .find(|g| g.id == Guard::guard_id(&unspanned))
        .unwrap();
    assert_eq!(plain.span, None);
}

#[tokio::test]
async fn site_statistics_are_capped_with_an_overflow_bucket() {
    let config = WatchConfig::builder()
        .pool_name("capped")
        .max_sites(1)
        .build()
        .unwrap();
    let pool = WatchedPool::new(pg::pool(2), config);
    let (first, first_line) = (pool.get().await.unwrap(), line!());
    drop(first);
    let second = pool.get().await.unwrap();
    drop(second);
    let third = pool.get().await.unwrap();
    // The overflow bucket still counts; the outstanding guard keeps its real site.
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.sites.len(), 2);
    let own = snapshot
        .sites
        .iter()
        .find(|s| s.site.line == first_line)
        .unwrap();
    assert_eq!(own.checkouts, 1);
    let overflow = snapshot
        .sites
        .iter()
        .find(|s| s.site.is_overflow())
        .unwrap();
    assert_eq!(overflow.checkouts, 2);
    assert_eq!(overflow.outstanding, 1);
    assert!(!snapshot.outstanding[0].site.is_overflow());
    drop(third);
}

/// The README's pattern for services that wrap `pool.get()` in a function
/// of their own (mapping the error, say): `#[track_caller]` on a plain
/// `fn` returning the future. Each caller is its own site. (An `async fn`
/// cannot be `#[track_caller]` on stable Rust.)
#[track_caller]
fn get_client(
    pool: &poolwatch::postgres::Pool,
) -> impl std::future::Future<Output = Result<poolwatch::postgres::Client, String>> + '_ {
    let checkout = pool.get(); // the location is taken here: the caller's
    async move { checkout.await.map_err(|e| format!("no connection: {e}")) }
}

#[tokio::test]
async fn a_track_caller_helper_records_its_callers() {
    let pool = watched(2);
    let (first, first_line) = (get_client(&pool).await.unwrap(), line!());
    let (second, second_line) = (get_client(&pool).await.unwrap(), line!());
    let lines: Vec<u32> = pool
        .snapshot()
        .outstanding
        .iter()
        .map(|g| g.site.line)
        .collect();
    assert!(lines.contains(&first_line), "{lines:?}");
    assert!(lines.contains(&second_line), "{lines:?}");
    drop((first, second));
}
