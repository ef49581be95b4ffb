//! The diagnosis on realistic workloads, on a real PostgreSQL, written as
//! a small service's code: request handlers, a background job, a payment
//! call inside a transaction, helpers that take `&deadpool_postgres::Client`.
//! Each scenario asserts the verdict kind, that the culprit is named
//! first, and that no victim (a caller that waited, or a checkout blocked
//! behind the culprit) is ever named as a cause. Mixed causes are the
//! normal case: a leak under steady traffic, a leak during a burst, a job
//! hogging connections while requests pile up.
#![cfg(feature = "postgres")]
mod support;

use std::time::{Duration, Instant};

use poolwatch::postgres::Pool;
use poolwatch::{Report, VerdictKind, WatchConfig};
use tracing::Instrument;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Spans are only known to poolwatch through a subscriber that tracks
/// them, as in a real service: a registry with no output.
fn with_spans() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry())
            .expect("no other global subscriber in this binary");
    });
}

/// A 4-connection pool with thresholds scaled to a test: holds past
/// 300 ms are long, the timeline ticks every 100 ms.
fn pool(name: &str) -> Pool {
    pool_with(name, |w| w)
}

fn pool_with(
    name: &str,
    tune: impl FnOnce(poolwatch::WatchConfigBuilder) -> poolwatch::WatchConfigBuilder,
) -> Pool {
    with_spans();
    let watch = WatchConfig::builder()
        .pool_name(name)
        .hold_threshold(ms(300))
        .slow_acquire(ms(200))
        .timeline_tick(Some(ms(100)));
    support::observed_pool(4, tune(watch).build().expect("valid config"))
}

fn site(line: u32) -> String {
    format!("{}:{line}:", file!())
}

/// The verdict of `kind` is the first one, names `culprit` in its first
/// evidence, and no verdict names any of `victims` as a cause.
fn assert_diagnosis(report: &Report, kind: VerdictKind, culprit: &str, victims: &[String]) {
    let first = &report.verdicts[0];
    assert_eq!(first.kind, kind, "the first verdict:\n{report}");
    let named = &first.evidence[0].subject;
    assert!(
        named.starts_with(culprit),
        "the culprit {culprit} is not named first (but {named}):\n{report}"
    );
    assert_no_victim_blamed(report, victims);
}

/// A long hold inside database calls comes first, naming `culprit`; no
/// victim is blamed and nothing is called a cleanup-path bug.
fn assert_slow_calls_named(report: &Report, culprit: &str, victims: &[String]) {
    assert_diagnosis(report, VerdictKind::LongHold, culprit, victims);
    assert!(
        report.verdicts[0].reason.contains("inside database calls"),
        "{report}"
    );
    assert!(
        !report.kinds().contains(&VerdictKind::CleanupPath),
        "{report}"
    );
}

fn assert_no_victim_blamed(report: &Report, victims: &[String]) {
    for verdict in &report.verdicts {
        if verdict.kind == VerdictKind::ConcurrencyGrowth {
            continue; // its evidence is the demand itself
        }
        for evidence in &verdict.evidence {
            for victim in victims {
                assert!(
                    !evidence.subject.starts_with(victim.as_str()),
                    "victim {victim} named as a cause in {}:\n{report}",
                    verdict.kind
                );
            }
        }
    }
}

/// The report once an episode is recorded and the pool is calm again.
async fn once_the_episode_is_over(pool: &Pool) -> Report {
    let mut after = None;
    wait_until("the episode to end", || {
        let report = pool.report();
        let over = !report.episodes.is_empty() && !report.now.saturated;
        after = Some(report);
        over
    })
    .await;
    after.unwrap()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < until, "never: {what}");
        tokio::time::sleep(ms(20)).await;
    }
}

/// The service under test: what a team writes, not test scaffolding.
mod service {
    use std::time::Duration;

    use poolwatch::postgres::{Client, Pool};
    use tokio::sync::Mutex;

    pub type Error = Box<dyn std::error::Error + Send + Sync>;

    /// GET /users/:id — one short query. Returns its checkout's line.
    pub async fn get_user(pool: Pool, id: i64) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client.query_one("SELECT $1::int8 AS id", &[&id]).await?;
        Ok(line)
    }

    /// GET /search — a lookup that takes a few milliseconds in the
    /// database.
    pub async fn search(pool: Pool) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client.execute("SELECT pg_sleep(0.005)", &[]).await?;
        Ok(line)
    }

    /// The nightly export job: per batch, one query, then formatting and
    /// an upload, with the connection still held.
    pub async fn nightly_export(pool: Pool, batches: u32) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        for _ in 0..batches {
            client.query("SELECT pg_sleep(0.03)", &[]).await?;
            tokio::time::sleep(Duration::from_millis(150)).await; // upload
        }
        Ok(line)
    }

    /// POST /orders — the card is charged inside the transaction; a
    /// declined card returns early and the connection is parked "for a
    /// retry" that never comes (the leak).
    pub async fn place_order(
        pool: Pool,
        order: i64,
        retry_later: &Mutex<Vec<Client>>,
    ) -> Result<u32, Error> {
        let (mut client, line) = (pool.get().await?, line!());
        let declined = {
            let tx = client.transaction().await?;
            tx.execute("SELECT $1::int8", &[&order]).await?;
            let declined = order % 3 == 2;
            if !declined {
                tx.commit().await?;
            }
            declined
        };
        if declined {
            retry_later.lock().await.push(client);
        }
        Ok(line)
    }

    /// POST /checkout — debits the account, calls the payment provider,
    /// commits: the row stays locked during the call.
    pub async fn checkout(pool: Pool, table: &str, payment: Duration) -> Result<u32, Error> {
        let (mut client, line) = (pool.get().await?, line!());
        let tx = client.transaction().await?;
        tx.execute(
            &format!("UPDATE {table} SET balance = balance - 1 WHERE id = 1"),
            &[],
        )
        .await?;
        tokio::time::sleep(payment).await; // the payment provider
        tx.commit().await?;
        Ok(line)
    }

    /// POST /refund — credits the same account.
    pub async fn refund(pool: Pool, table: &str) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client
            .execute(
                &format!("UPDATE {table} SET balance = balance + 1 WHERE id = 1"),
                &[],
            )
            .await?;
        Ok(line)
    }

    /// POST /refund, as a team hardens it against lock waits: the row
    /// update may wait at most `lock_timeout` for a lock, and the `?` on
    /// the database's refusal drops (rolls back) the transaction. The
    /// checkout's line, and how the refund went.
    pub async fn refund_with_lock_timeout(
        pool: Pool,
        table: &str,
        lock_timeout: &str,
    ) -> (u32, Result<(), Error>) {
        let (client, line) = (pool.get().await, line!());
        let refund = async {
            let mut client = client?;
            let tx = client.transaction().await?;
            tx.batch_execute(&format!("SET LOCAL lock_timeout = '{lock_timeout}'"))
                .await?;
            tx.execute(
                &format!("UPDATE {table} SET balance = balance + 1 WHERE id = 1"),
                &[],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        };
        (line, refund.await)
    }

    /// GET /balance with a request deadline: the update behind it is
    /// given up (its future dropped) when the deadline passes.
    pub async fn touch_balance_with_deadline(
        pool: Pool,
        table: &str,
        deadline: Duration,
    ) -> (u32, Result<(), Error>) {
        let (client, line) = (pool.get().await, line!());
        let touch = async {
            let client = client?;
            let update = format!("UPDATE {table} SET balance = balance WHERE id = 1");
            tokio::time::timeout(deadline, client.execute(&update, &[])).await??;
            Ok(())
        };
        (line, touch.await)
    }

    /// The nightly recompute: one statement batch that locks the account
    /// row and works `seconds` in the database before it commits (busy
    /// the whole time, not idle in a transaction).
    pub async fn recompute_balances(pool: Pool, table: &str, seconds: f64) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client
            .batch_execute(&format!(
                "BEGIN; UPDATE {table} SET balance = balance WHERE id = 1; \
                 SELECT pg_sleep({seconds}); COMMIT"
            ))
            .await?;
        Ok(line)
    }

    /// POST /deposit — a serializable read-modify-write of the account,
    /// retried on each serialization failure (a new checkout each time).
    /// The checkout's line, and how many attempts failed.
    pub async fn deposit_serializable(pool: Pool, table: &str) -> Result<(u32, u32), Error> {
        let mut failed = 0;
        loop {
            let (mut client, line) = (pool.get().await?, line!());
            let attempt: Result<(), tokio_postgres::Error> = async {
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                    .start()
                    .await?;
                let balance: i32 = tx
                    .query_one(&format!("SELECT balance FROM {table} WHERE id = 1"), &[])
                    .await?
                    .get(0);
                tokio::time::sleep(Duration::from_millis(2)).await; // the fee lookup
                tx.execute(
                    &format!("UPDATE {table} SET balance = $1 WHERE id = 1"),
                    &[&(balance + 1)],
                )
                .await?;
                tx.commit().await
            }
            .await;
            match attempt {
                Ok(()) => return Ok((line, failed)),
                Err(e)
                    if e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) =>
                {
                    failed += 1
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// POST /swap — moves balance between two accounts, locking `from`
    /// first: two swaps in opposite directions deadlock (the database
    /// detects it after `deadlock_timeout` and fails one). The checkout's
    /// line, and how the swap went.
    pub async fn swap(pool: Pool, table: &str, from: i32, to: i32) -> (u32, Result<(), Error>) {
        let (client, line) = (pool.get().await, line!());
        let swap = async {
            let mut client = client?;
            let tx = client.transaction().await?;
            let update = format!("UPDATE {table} SET balance = balance + 1 WHERE id = $1");
            tx.execute(&update, &[&from]).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.execute(&update, &[&to]).await?;
            tx.commit().await?;
            Ok(())
        };
        (line, swap.await)
    }

    /// GET /reports/revenue — a query the server cancels at the session's
    /// `statement_timeout` (400 ms): the caller gets the error. The
    /// checkout's line, and whether it was canceled.
    pub async fn revenue_report(pool: Pool) -> Result<(u32, bool), Error> {
        let (client, line) = (pool.get().await?, line!());
        client
            .batch_execute("SET statement_timeout = '400ms'")
            .await?;
        let canceled = client.query("SELECT pg_sleep(2)", &[]).await.is_err();
        client.batch_execute("RESET statement_timeout").await?;
        Ok((line, canceled))
    }

    /// GET /orders — an ORM-style page: one query per order, sixty round
    /// trips on one checkout (N+1).
    pub async fn orders_page(pool: Pool, page: i64) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        for order in 0..60i64 {
            client
                .query_one("SELECT $1::int8 AS id", &[&(page * 100 + order)])
                .await?;
        }
        Ok(line)
    }

    /// GET /orders/:id/status behind the service's 150 ms request
    /// deadline (a timeout layer around the whole handler): a checkout and
    /// two 30 ms queries. The checkout's line, and whether the deadline
    /// cut the request.
    pub async fn order_status(pool: Pool, deadline: Duration) -> (u32, bool) {
        let line = std::sync::atomic::AtomicU32::new(0);
        let handler = async {
            let (client, at) = (pool.get().await?, line!());
            line.store(at, std::sync::atomic::Ordering::Relaxed);
            client.query("SELECT pg_sleep(0.03)", &[]).await?;
            client.query("SELECT pg_sleep(0.03)", &[]).await?;
            Ok::<_, Error>(())
        };
        let cut = tokio::time::timeout(deadline, handler).await.is_err();
        (line.load(std::sync::atomic::Ordering::Relaxed), cut)
    }

    /// The session warmer: a worker that, for each tenant, checks out a
    /// connection, sets it up and keeps it in a per-tenant cache "for the
    /// tenant's next request", which never uses it (the leak). The same
    /// task asks the pool again for every tenant while the cache keeps
    /// what it took before. Its checkout's line.
    pub async fn warm_tenant_sessions(
        pool: Pool,
        tenants: u32,
        cache: &tokio::sync::Mutex<Vec<Client>>,
    ) -> Result<u32, Error> {
        let mut line = 0;
        for _ in 0..tenants {
            let (client, at) = (pool.get().await?, line!());
            line = at;
            client
                .batch_execute("SET application_name = 'tenant'")
                .await?;
            cache.lock().await.push(client);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(line)
    }

    /// GET /listings — a query that takes 120 ms (no index for its
    /// filter).
    pub async fn listings(pool: Pool) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client.execute("SELECT pg_sleep(0.12)", &[]).await?;
        Ok(line)
    }

    /// POST /accounts/hold — reserves the account inside a transaction and
    /// parks the connection "until the bank confirms", which it never does
    /// (the leak, holding the row lock).
    pub async fn hold_account(
        pool: Pool,
        table: &str,
        parked: &tokio::sync::Mutex<Vec<Client>>,
    ) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client
            .batch_execute(&format!(
                "BEGIN; UPDATE {table} SET balance = balance - 1 WHERE id = 1"
            ))
            .await?;
        parked.lock().await.push(client);
        Ok(line)
    }

    /// POST /coupons/apply — opens its transaction with a raw `BEGIN`;
    /// an expired coupon returns early with the transaction still open
    /// (the cleanup-path bug: nothing rolls it back).
    pub async fn apply_coupon(pool: Pool, coupon: i64) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client.batch_execute("BEGIN").await?;
        let expired: bool = client
            .query_one("SELECT $1::int8 % 4 = 0", &[&coupon])
            .await?
            .get(0);
        if expired {
            return Ok(line); // forgot the ROLLBACK
        }
        client.batch_execute("COMMIT").await?;
        Ok(line)
    }

    /// POST /import — panics on a malformed row while it holds its
    /// connection (the task dies; the guard drops while panicking).
    pub async fn import_row(pool: Pool, row: i64) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        client.execute("SELECT $1::int8", &[&row]).await?;
        assert!(row % 5 != 3, "malformed row {row}");
        Ok(line)
    }

    /// Other requests on the same runtime rendering pages: CPU work in
    /// slices of `slice` between short timer waits, no connection, until
    /// `until`.
    /// While they run, a handler whose query has answered waits its turn
    /// before it drops its guard.
    pub async fn render_pages(until: std::time::Instant, slice: Duration) -> u64 {
        let mut pages = 0u64;
        while std::time::Instant::now() < until {
            let started = std::time::Instant::now();
            while started.elapsed() < slice {
                pages = std::hint::black_box(pages.wrapping_mul(31).wrapping_add(7));
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        pages
    }

    /// POST /orders behind the service's request deadline: the order is
    /// written on one connection, then the audit helper, which takes its
    /// own connection of the same pool, records it while the handler still
    /// holds the first. The order's checkout line, the audit's, and
    /// whether the deadline cut the request.
    pub async fn order_with_audit(pool: Pool, order: i64, deadline: Duration) -> (u32, u32, bool) {
        let lines = (
            std::sync::atomic::AtomicU32::new(0),
            std::sync::atomic::AtomicU32::new(0),
        );
        let handler = async {
            let (client, at) = (pool.get().await?, line!());
            lines.0.store(at, std::sync::atomic::Ordering::Relaxed);
            client.query_one("SELECT $1::int8", &[&order]).await?;
            audit_record(&pool, order, &lines.1).await?;
            Ok::<_, Error>(())
        };
        let cut = tokio::time::timeout(deadline, handler).await.is_err();
        let load = |l: &std::sync::atomic::AtomicU32| l.load(std::sync::atomic::Ordering::Relaxed);
        (load(&lines.0), load(&lines.1), cut)
    }

    /// The audit log's helper: checks out a connection of its own.
    async fn audit_record(
        pool: &Pool,
        order: i64,
        line: &std::sync::atomic::AtomicU32,
    ) -> Result<(), Error> {
        // Where it asks for its connection (known before the wait ends).
        line.store(line!() + 1, std::sync::atomic::Ordering::Relaxed);
        let client = pool.get().await?;
        client.execute("SELECT $1::int8", &[&order]).await?;
        Ok(())
    }

    /// GET /reports/monthly — the work happens in a helper written against
    /// deadpool-postgres's client type.
    pub async fn monthly_report(pool: Pool) -> Result<u32, Error> {
        let (client, line) = (pool.get().await?, line!());
        load_monthly_totals(&client).await?;
        Ok(line)
    }

    async fn load_monthly_totals(client: &deadpool_postgres::Client) -> Result<(), Error> {
        client.query("SELECT pg_sleep(0.4)", &[]).await?;
        Ok(())
    }
}

/// Orders whose audit helper takes a second connection of the same pool
/// while the handler holds its first, among steady searches: a burst of
/// eight orders on four connections holds all four while every holder's
/// task waits for a fifth, until the request deadline cuts them. Named a
/// nested checkout (the audit's checkout first, then the orders' holds it
/// keeps), during and after: the orders' holds are not a leak nor a long
/// hold of their own, and the searches that waited are affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_checkout_under_traffic_is_named_not_a_leak() {
    let pool = pool("nested-audit");
    let searches = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut line = 0;
            let until = Instant::now() + ms(2500);
            while Instant::now() < until {
                let wave: Vec<_> = (0..3)
                    .map(|_| {
                        tokio::spawn(
                            service::search(pool.clone()).instrument(tracing::info_span!("search")),
                        )
                    })
                    .collect();
                for task in wave {
                    if let Ok(Ok(at)) = task.await {
                        line = at;
                    }
                }
                tokio::time::sleep(ms(10)).await;
            }
            line
        })
    };
    tokio::time::sleep(ms(200)).await;
    let orders: Vec<_> = (0..8)
        .map(|order| {
            tokio::spawn(
                service::order_with_audit(pool.clone(), order, ms(500))
                    .instrument(tracing::info_span!("order")),
            )
        })
        .collect();
    let mut during = None;
    wait_until("the orders to hold every connection, waiting", || {
        let report = pool.report();
        let stuck = report.holders.iter().filter(|h| h.nested_wait).count() == 4
            && report.holders.iter().all(|h| h.held_ms >= 350.0);
        during = Some(report);
        stuck
    })
    .await;
    let during = during.unwrap();
    let (mut order_line, mut audit_line, mut cut) = (0, 0, 0);
    for task in orders {
        let (order, audit, was_cut) = task.await.unwrap();
        (order_line, audit_line) = (order.max(order_line), audit.max(audit_line));
        cut += u32::from(was_cut);
    }
    assert!(cut >= 4, "the deadline cut the stuck orders ({cut})");
    let search_line = searches.await.unwrap();
    let victims = [site(search_line)];
    assert_diagnosis(
        &during,
        VerdictKind::NestedCheckout,
        &site(audit_line),
        &victims,
    );
    let nested = &during.verdicts[0];
    assert!(
        nested
            .evidence
            .iter()
            .any(|e| e.subject.starts_with(&site(order_line))
                && e.detail.contains("held while their task waits")),
        "{during}"
    );
    assert!(
        nested
            .affected
            .iter()
            .any(|e| e.subject.starts_with(&victims[0])),
        "{during}"
    );
    for kind in [
        VerdictKind::Leak,
        VerdictKind::LongHold,
        VerdictKind::CleanupPath,
    ] {
        assert!(!during.kinds().contains(&kind), "{during}");
    }

    let after = once_the_episode_is_over(&pool).await;
    for episode in &after.episodes {
        let first = &episode.verdicts[0];
        assert_eq!(first.kind, VerdictKind::NestedCheckout, "{after}");
        assert!(
            first.evidence[0].subject.starts_with(&site(audit_line)),
            "{after}"
        );
        assert!(
            first
                .evidence
                .iter()
                .any(|e| e.subject.starts_with(&site(order_line))),
            "{after}"
        );
        for verdict in &episode.verdicts {
            assert!(
                !matches!(verdict.kind, VerdictKind::Leak | VerdictKind::LongHold),
                "{after}"
            );
            for e in &verdict.evidence {
                assert!(!e.subject.starts_with(&victims[0]), "{after}");
            }
        }
    }
}

/// A worker that caches connections it never uses, asking the pool again
/// for each tenant while slow listings keep the rest of the pool busy: its
/// second checkout waits while its task "holds" the first (the guard sits
/// in the cache), which is no self-deadlock. A leak first, naming the
/// worker; the nested checkout, if told, last; after the cache is dropped,
/// the episode's first verdict is the worker's long hold, not the nested
/// checkout. The listings are never blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_caching_connections_is_a_leak_not_a_nested_checkout() {
    let pool = pool("tenant-cache");
    let cache = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let until = Instant::now() + ms(2000);
    let listings: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(
                async move {
                    let mut line = 0;
                    while Instant::now() < until {
                        line = service::listings(pool.clone()).await.unwrap();
                    }
                    line
                }
                .instrument(tracing::info_span!("listings")),
            )
        })
        .collect();
    let worker = {
        let (pool, cache) = (pool.clone(), std::sync::Arc::clone(&cache));
        tokio::spawn(
            async move { service::warm_tenant_sessions(pool, 2, &cache).await }
                .instrument(tracing::info_span!("warmer")),
        )
    };
    let worker_line = worker.await.unwrap().unwrap();
    tokio::time::sleep(ms(700)).await;
    let during = pool.report();
    let mut listing_line = 0;
    for task in listings {
        listing_line = task.await.unwrap();
    }
    let victims = [site(listing_line)];
    assert_diagnosis(&during, VerdictKind::Leak, &site(worker_line), &victims);
    if let Some(nested) = during
        .kinds()
        .iter()
        .position(|k| *k == VerdictKind::NestedCheckout)
    {
        assert_eq!(nested, during.verdicts.len() - 1, "{during}");
    }

    cache.lock().await.clear();
    let after = once_the_episode_is_over(&pool).await;
    let episode = after.episodes.last().expect("the episode is listed");
    let first = &episode.verdicts[0];
    assert_eq!(first.kind, VerdictKind::LongHold, "{after}");
    assert!(
        first.evidence[0].subject.starts_with(&site(worker_line)),
        "{after}"
    );
    for verdict in after.verdicts.iter().chain(&episode.verdicts) {
        for e in &verdict.evidence {
            assert!(!e.subject.starts_with(&victims[0]), "{after}");
        }
        // The worker's holds sat outside any call: never "slow statements".
        if verdict.reason.contains("inside database calls") {
            assert!(
                verdict
                    .evidence
                    .iter()
                    .all(|e| !e.subject.starts_with(&site(worker_line))),
                "{after}"
            );
        }
    }
}

/// A job holding connections across slow non-database work while a burst
/// of requests waits: the job is the culprit, the requests are affected
/// (not "concurrency growth", not blamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_holding_connections_across_uploads_while_requests_wait() {
    let pool = pool("job-and-requests");
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(
                service::nightly_export(pool.clone(), 6)
                    .instrument(tracing::info_span!("nightly_export")),
            )
        })
        .collect();
    tokio::time::sleep(ms(100)).await;
    let requests: Vec<_> = (0..40)
        .map(|id| {
            tokio::spawn(
                service::get_user(pool.clone(), id).instrument(tracing::info_span!("get_user")),
            )
        })
        .collect();
    tokio::time::sleep(ms(600)).await; // during the incident
    let report = pool.report();
    let job_line = jobs_line(jobs).await;
    let mut request_line = 0;
    for task in requests {
        request_line = task.await.unwrap().unwrap();
    }
    assert_diagnosis(
        &report,
        VerdictKind::LongHold,
        &site(job_line),
        &[site(request_line)],
    );
    let verdict = &report.verdicts[0];
    assert!(verdict.reason.contains("not database work"), "{report}");
    assert!(
        verdict
            .affected
            .iter()
            .any(|e| e.subject.starts_with(&site(request_line))),
        "{report}"
    );
    assert!(
        !report.kinds().contains(&VerdictKind::ConcurrencyGrowth),
        "{report}"
    );
    assert!(!report.kinds().contains(&VerdictKind::Leak), "{report}");
}

async fn jobs_line(jobs: Vec<tokio::task::JoinHandle<Result<u32, service::Error>>>) -> u32 {
    let mut line = 0;
    for job in jobs {
        line = job.await.unwrap().unwrap();
    }
    line
}

async fn accounts(table: &str) {
    let config = support::pg::pg_config().unwrap();
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id int PRIMARY KEY, balance int NOT NULL); \
             INSERT INTO {table} VALUES (1, 100);"
        ))
        .await
        .unwrap();
}

/// A lock chain: the checkout handler's transaction holds the row during
/// the payment call; refunds block on the row in the database, more wait
/// for a connection. While it lasts the server says who blocks whom; once
/// it is over, the past episode still blames the transaction (idle in it)
/// and lists the blocked as affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_chain_blames_the_idle_transaction_not_the_blocked() {
    accounts("scenario_lock_accounts").await;
    let pool = pool_with("lock-chain-scenario", |w| w.window(Duration::from_secs(60)));
    let culprit = tokio::spawn(
        service::checkout(pool.clone(), "scenario_lock_accounts", ms(1500))
            .instrument(tracing::info_span!("checkout")),
    );
    tokio::time::sleep(ms(150)).await;
    let refunds: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(
                service::refund(pool.clone(), "scenario_lock_accounts")
                    .instrument(tracing::info_span!("refund")),
            )
        })
        .collect();
    let mut during = None;
    wait_until("the server's view of the lock chain", || {
        let report = pool.report();
        let found = report.verdicts[0]
            .reason
            .contains("blocked in the database by guard");
        during = Some(report);
        found
    })
    .await;
    let during = during.unwrap();
    let culprit_line = culprit.await.unwrap().unwrap();
    let mut refund_line = 0;
    for task in refunds {
        refund_line = task.await.unwrap().unwrap();
    }
    let victims = [site(refund_line)];
    assert_diagnosis(
        &during,
        VerdictKind::LongHold,
        &site(culprit_line),
        &victims,
    );
    assert!(during.verdicts[0].affected.iter().any(
        |e| e.subject.starts_with(&victims[0]) && e.detail.contains("blocked in the database")
    ));

    // After the incident: the episode is past, and its verdict (from what
    // the application saw: idle in transaction vs busy) keeps the roles.
    let mut after = None;
    wait_until("the episode to end", || {
        let report = pool.report();
        let over = !report.episodes.is_empty();
        after = Some(report);
        over
    })
    .await;
    let after = after.unwrap();
    let episode = after.episodes.last().unwrap();
    let verdict = &episode.verdicts[0];
    assert_eq!(verdict.kind, VerdictKind::LongHold, "{after}");
    assert!(
        verdict.evidence[0].subject.starts_with(&site(culprit_line)),
        "{after}"
    );
    assert!(verdict.reason.contains("idle in transaction"), "{after}");
    for e in &verdict.evidence {
        assert!(!e.subject.starts_with(&victims[0]), "{after}");
    }
    assert!(
        verdict
            .affected
            .iter()
            .any(|e| e.subject.starts_with(&victims[0])),
        "{after}"
    );
}

/// A lock chain whose victims give up, as hardened services do: refunds
/// wait at most 200 ms for the row lock (the database refuses them, the
/// `?` rolls their transaction back), balance reads drop their update at
/// a 250 ms request deadline. Those endings are the lock's doing: the
/// holder of the row is named first, during and after; the refunds and
/// balance reads never as a cause — neither a cleanup-path bug nor slow
/// statements of their own — and the refused transactions are counted as
/// rolled back after a database error, their connections kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_chain_whose_victims_give_up_blames_the_holder() {
    accounts("scenario_giving_up_accounts").await;
    const TABLE: &str = "scenario_giving_up_accounts";
    let pool = pool_with("lock-victims-give-up", |w| {
        w.window(Duration::from_secs(60))
    });
    let culprit = tokio::spawn(
        service::checkout(pool.clone(), TABLE, ms(1500))
            .instrument(tracing::info_span!("checkout")),
    );
    tokio::time::sleep(ms(150)).await;
    let mut refunds = Vec::new();
    let mut balances = Vec::new();
    // Two waves, so that victims give up while the holder still holds.
    for _ in 0..2 {
        for _ in 0..3 {
            refunds.push(tokio::spawn(
                service::refund_with_lock_timeout(pool.clone(), TABLE, "200ms")
                    .instrument(tracing::info_span!("refund")),
            ));
            balances.push(tokio::spawn(
                service::touch_balance_with_deadline(pool.clone(), TABLE, ms(250))
                    .instrument(tracing::info_span!("balance")),
            ));
        }
        tokio::time::sleep(ms(400)).await;
    }
    let (mut refund_line, mut balance_line) = (0, 0);
    let mut refused = 0;
    for task in refunds {
        let (line, outcome) = task.await.unwrap();
        refund_line = line;
        refused += usize::from(outcome.is_err());
    }
    let mut timed_out = 0;
    for task in balances {
        let (line, outcome) = task.await.unwrap();
        balance_line = line;
        timed_out += usize::from(outcome.is_err());
    }
    assert!(
        refused >= 4 && timed_out >= 4,
        "{refused} refused, {timed_out} timed out"
    );
    let during = pool.report();
    let culprit_line = culprit.await.unwrap().unwrap();
    let victims = [site(refund_line), site(balance_line)];
    assert!(
        during.verdicts[0].evidence[0]
            .subject
            .starts_with(&site(culprit_line)),
        "the holder of the row is not named first:\n{during}"
    );
    assert!(
        matches!(
            during.verdicts[0].kind,
            VerdictKind::Leak | VerdictKind::LongHold
        ),
        "{during}"
    );
    assert_no_victim_blamed(&during, &victims);
    assert!(
        !during.kinds().contains(&VerdictKind::CleanupPath),
        "{during}"
    );

    let after = once_the_episode_is_over(&pool).await;
    assert_diagnosis(&after, VerdictKind::LongHold, &site(culprit_line), &victims);
    assert!(
        !after.kinds().contains(&VerdictKind::CleanupPath),
        "{after}"
    );
    let episode = after.episodes.last().unwrap();
    assert_eq!(episode.verdicts[0].kind, VerdictKind::LongHold, "{after}");
    assert!(
        episode.verdicts[0].evidence[0]
            .subject
            .starts_with(&site(culprit_line)),
        "{after}"
    );
    for verdict in &episode.verdicts {
        assert_ne!(verdict.kind, VerdictKind::CleanupPath, "{after}");
        for e in &verdict.evidence {
            assert!(
                victims.iter().all(|v| !e.subject.starts_with(v.as_str())),
                "a victim blamed in the episode:\n{after}"
            );
        }
    }
    // Who gave up is told among the affected.
    assert!(
        episode.verdicts[0]
            .affected
            .iter()
            .any(|e| e.subject.starts_with(&victims[1]) && e.detail.contains("gave up waiting")),
        "{after}"
    );
    // The refused refunds: rolled back after the database's error, which
    // is no error path, and their connections were kept.
    let snapshot = pool.snapshot();
    let refunds = snapshot
        .sites
        .iter()
        .find(|s| s.site.line == refund_line && s.site.file == file!())
        .unwrap();
    assert_eq!(
        refunds.database.rolled_back_after_error, refused as u64,
        "{refunds:?}"
    );
    assert_eq!(refunds.database.error_paths(), 0, "{refunds:?}");
}

/// A lock held by a holder *busy* in the database (a batch that locks the
/// row and works on), with balance reads dropping their blocked update at
/// a 250 ms deadline, wave after wave. While the server shows the chain,
/// its head is named first; the balance reads, whether still blocked or
/// already given up, are never a cause (no cleanup-path verdict for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_lock_holder_is_named_and_its_victims_that_gave_up_are_not_blamed() {
    accounts("scenario_busy_holder_accounts").await;
    const TABLE: &str = "scenario_busy_holder_accounts";
    let pool = pool("busy-lock-holder");
    let job = tokio::spawn(
        service::recompute_balances(pool.clone(), TABLE, 2.0)
            .instrument(tracing::info_span!("recompute")),
    );
    tokio::time::sleep(ms(150)).await;
    let waves = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut lines = Vec::new();
            for _ in 0..5 {
                let wave: Vec<_> = (0..3)
                    .map(|_| {
                        tokio::spawn(
                            service::touch_balance_with_deadline(pool.clone(), TABLE, ms(250))
                                .instrument(tracing::info_span!("balance")),
                        )
                    })
                    .collect();
                for task in wave {
                    lines.push(task.await.unwrap());
                }
                tokio::time::sleep(ms(50)).await;
            }
            lines
        })
    };
    let mut during = None;
    wait_until(
        "the server's view of the chain after a wave gave up",
        || {
            let report = pool.report();
            let found = report.verdicts[0]
                .reason
                .contains("blocked in the database by guard")
                && report.sites.iter().any(|s| {
                    s.checkouts > s.outstanding && s.site.contains("diagnosis_scenarios.rs")
                });
            during = Some(report);
            found
        },
    )
    .await;
    let during = during.unwrap();
    let balances = waves.await.unwrap();
    let gave_up = balances
        .iter()
        .filter(|(_, outcome)| outcome.is_err())
        .count();
    assert!(gave_up >= 9, "{gave_up} of {} gave up", balances.len());
    let job_line = job.await.unwrap().unwrap();
    let victims = [site(balances[0].0)];
    assert_diagnosis(&during, VerdictKind::LongHold, &site(job_line), &victims);
    assert!(
        !during.kinds().contains(&VerdictKind::CleanupPath),
        "{during}"
    );

    // Once it is over the server's chain is gone, and so is the evidence
    // of who blocked whom; the batch ran long in the database while the
    // balance reads gave up theirs: the batch is named, the reads are its
    // affected, not a cleanup-path bug.
    let after = once_the_episode_is_over(&pool).await;
    for episode in &after.episodes {
        assert_eq!(episode.verdicts[0].kind, VerdictKind::LongHold, "{after}");
        assert!(
            episode.verdicts[0].evidence[0]
                .subject
                .starts_with(&site(job_line)),
            "{after}"
        );
    }
    assert!(
        after.episodes.iter().any(|episode| episode.verdicts[0]
            .affected
            .iter()
            .any(|e| e.subject.starts_with(&victims[0]) && e.detail.contains("gave up waiting"))),
        "{after}"
    );
    let episode_verdicts = after.episodes.iter().flat_map(|e| &e.verdicts);
    for verdict in after.verdicts.iter().chain(episode_verdicts) {
        assert_ne!(verdict.kind, VerdictKind::CleanupPath, "{after}");
        for e in &verdict.evidence {
            assert!(!e.subject.starts_with(&victims[0]), "{after}");
        }
    }
}

/// Deadlocking swaps among a serializable retry storm: swaps wait on each
/// other's row locks in the database for the deadlock timeout (a second)
/// while deposits retry their serialization failures on the remaining
/// connections and pile up waiting. The swaps are named (long inside
/// database calls, waiting on locks); the deposits, short transactions
/// idle a few milliseconds inside each, are neither a cause nor the lock
/// holder others wait behind, and their failed attempts are no error path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocking_swaps_in_a_serializable_retry_storm_are_named() {
    accounts("scenario_deadlock_accounts").await;
    const TABLE: &str = "scenario_deadlock_accounts";
    let config = support::pg::pg_config().unwrap();
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("INSERT INTO {TABLE} VALUES (2, 100), (3, 100)"))
        .await
        .unwrap();
    let pool = pool_with("deadlock-storm", |w| w.window(Duration::from_secs(60)));
    let deposits: Vec<_> = (0..12)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(
                async move {
                    let mut done = (0, 0);
                    for _ in 0..10 {
                        let (line, failed) =
                            service::deposit_serializable(pool.clone(), TABLE).await?;
                        done = (line, done.1 + failed);
                    }
                    Ok::<_, service::Error>(done)
                }
                .instrument(tracing::info_span!("deposit")),
            )
        })
        .collect();
    let swaps: Vec<_> = (0..6)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { (2, 3) } else { (3, 2) };
            tokio::spawn(
                service::swap(pool.clone(), TABLE, from, to)
                    .instrument(tracing::info_span!("swap")),
            )
        })
        .collect();
    let (mut deposit_line, mut serialization_failures) = (0, 0);
    for task in deposits {
        let (line, failed) = task.await.unwrap().unwrap();
        deposit_line = line;
        serialization_failures += failed;
    }
    let (mut swap_line, mut deadlocked) = (0, 0);
    for task in swaps {
        let (line, outcome) = task.await.unwrap();
        swap_line = line;
        deadlocked += usize::from(outcome.is_err());
    }
    assert!(deadlocked >= 1, "no swap deadlocked");
    assert!(serialization_failures >= 1, "no serialization failure");
    let report = pool.report();
    assert_slow_calls_named(&report, &site(swap_line), &[site(deposit_line)]);
}

/// Report queries running into the server's `statement_timeout` (400 ms
/// each, canceled) while forty N+1 order pages (sixty round trips a
/// checkout) wait: the reports hold two thirds of the connection time,
/// inside database calls, and are named; the pages, whose time outside
/// calls is only the turn between one answer and the next request, are
/// not "held across other work", and the canceled statements are no calls
/// in flight (their connections are kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_hitting_the_timeout_are_named_not_the_n_plus_one_pages() {
    let pool = pool_with("timeouts-and-pages", |w| w.window(Duration::from_secs(60)));
    let reports: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(
                service::revenue_report(pool.clone()).instrument(tracing::info_span!("revenue")),
            )
        })
        .collect();
    let pages: Vec<_> = (0..40)
        .map(|page| {
            tokio::spawn(
                service::orders_page(pool.clone(), page).instrument(tracing::info_span!("orders")),
            )
        })
        .collect();
    let (mut report_line, mut canceled) = (0, 0);
    for task in reports {
        let (line, was_canceled) = task.await.unwrap().unwrap();
        report_line = line;
        canceled += usize::from(was_canceled);
    }
    let mut page_line = 0;
    for task in pages {
        page_line = task.await.unwrap().unwrap();
    }
    assert_eq!(canceled, 6);
    let report = pool.report();
    assert_slow_calls_named(&report, &site(report_line), &[site(page_line)]);
    assert_eq!(pool.pool_status().size, 4, "no connection was evicted");
}

/// Requests behind a 150 ms deadline while three export jobs hold three
/// of four connections across their uploads: most requests spend their
/// deadline waiting and are cut — some while waiting, some mid-call once
/// they got a connection. The exports are the culprit, named first; the
/// requests are affected, their cut calls no cleanup-path bug of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_by_their_deadline_behind_a_job_are_affected() {
    let pool = pool("deadlines-behind-a-job");
    let exports: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(
                service::nightly_export(pool.clone(), 7).instrument(tracing::info_span!("export")),
            )
        })
        .collect();
    tokio::time::sleep(ms(50)).await;
    let mut requests = Vec::new();
    for id in 0..60 {
        requests.push(tokio::spawn(
            service::order_status(pool.clone(), ms(150)).instrument(tracing::info_span!("status")),
        ));
        if id % 3 == 0 {
            tokio::time::sleep(ms(20)).await;
        }
    }
    let (mut request_line, mut cut) = (0, 0);
    for task in requests {
        let (line, was_cut) = task.await.unwrap();
        request_line = request_line.max(line);
        cut += usize::from(was_cut);
    }
    let export_line = jobs_line(exports).await;
    assert!(cut >= 30, "only {cut} requests were cut");
    let report = pool.report();
    let victims = [site(request_line)];
    let requests = &victims[0];
    assert_diagnosis(&report, VerdictKind::LongHold, &site(export_line), &victims);
    assert!(
        !report.kinds().contains(&VerdictKind::CleanupPath),
        "{report}"
    );
    let status = report
        .sites
        .iter()
        .find(|s| s.site.starts_with(requests.as_str()))
        .unwrap();
    assert!(
        status.error_paths.in_flight_at_drop > 0,
        "no request was cut mid-call: {report}"
    );
    assert!(
        report.verdicts[0]
            .affected
            .iter()
            .any(|e| e.subject.starts_with(requests.as_str())
                && e.detail.contains("ran out of time mid-call")),
        "{report}"
    );
}

/// A leaked transaction holding a row lock, balance reads behind it with
/// a 250 ms deadline, and steady searches: the leak is named first; the
/// reads are its blocked victims ("gave up waiting"), never a cause; the
/// searches are not blamed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_transaction_with_blocked_victims_and_steady_traffic() {
    accounts("scenario_leaked_tx_accounts").await;
    const TABLE: &str = "scenario_leaked_tx_accounts";
    let pool = pool("leaked-transaction");
    let parked = tokio::sync::Mutex::new(Vec::new());
    let leak_line = service::hold_account(pool.clone(), TABLE, &parked)
        .await
        .unwrap();
    tokio::time::sleep(ms(100)).await;
    let mut reads = Vec::new();
    let mut searches = Vec::new();
    for i in 0..40 {
        if i % 8 == 0 {
            reads.push(tokio::spawn(
                service::touch_balance_with_deadline(pool.clone(), TABLE, ms(250))
                    .instrument(tracing::info_span!("balance")),
            ));
        } else {
            searches.push(tokio::spawn(
                service::search(pool.clone()).instrument(tracing::info_span!("search")),
            ));
        }
        tokio::time::sleep(ms(15)).await;
    }
    let (mut read_line, mut cut) = (0, 0);
    for task in reads {
        let (line, outcome) = task.await.unwrap();
        read_line = line;
        cut += usize::from(outcome.is_err());
    }
    let search_line = jobs_line(searches).await;
    assert_eq!(cut, 5);
    let report = pool.report();
    let victims = [site(read_line), site(search_line)];
    assert_diagnosis(&report, VerdictKind::Leak, &site(leak_line), &victims);
    assert!(
        !report.kinds().contains(&VerdictKind::CleanupPath),
        "{report}"
    );
    assert!(
        report.verdicts[0]
            .affected
            .iter()
            .any(|e| e.subject.starts_with(&victims[0])
                && e.detail.contains("likely blocked on its locks")
                && e.detail.contains("gave up waiting")),
        "{report}"
    );
    drop(parked);
}

/// Error-path bugs in the middle of a burst: a handler that leaves its raw
/// `BEGIN` open on an early return and an import that panics while it
/// holds its connection, among 300 short requests on 4 connections. The
/// cleanup-path verdict comes first and names the two handlers; the
/// requests, which only waited, are never a cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_path_bugs_during_a_burst_are_a_cleanup_path() {
    let pool = pool("cleanup-in-burst");
    let mut coupons = Vec::new();
    let mut imports = Vec::new();
    let requests: Vec<_> = (0..300)
        .map(|id| {
            if id % 10 == 0 {
                coupons.push(tokio::spawn(
                    service::apply_coupon(pool.clone(), id)
                        .instrument(tracing::info_span!("coupon")),
                ));
                imports.push(tokio::spawn(
                    service::import_row(pool.clone(), id / 10)
                        .instrument(tracing::info_span!("import")),
                ));
            }
            tokio::spawn(service::search(pool.clone()).instrument(tracing::info_span!("search")))
        })
        .collect();
    let mut search_line = 0;
    for task in requests {
        search_line = task.await.unwrap().unwrap();
    }
    let mut coupon_line = 0;
    for task in coupons {
        coupon_line = task.await.unwrap().unwrap();
    }
    let mut panicked = 0;
    for task in imports {
        panicked += usize::from(task.await.is_err_and(|e| e.is_panic()));
    }
    assert_eq!(panicked, 6);
    let report = pool.report();
    let victims = [site(search_line)];
    assert_diagnosis(
        &report,
        VerdictKind::CleanupPath,
        &site(coupon_line),
        &victims,
    );
    let cleanup = &report.verdicts[0];
    assert!(
        cleanup.evidence[0]
            .detail
            .contains("15 returned inside an open transaction"),
        "{report}"
    );
    let import = cleanup
        .evidence
        .iter()
        .find(|e| e.detail.contains("dropped while panicking"))
        .unwrap_or_else(|| panic!("the import is not named:\n{report}"));
    assert!(
        import.detail.contains("6 dropped while panicking"),
        "{report}"
    );
    assert!(
        cleanup
            .reason
            .contains("returned inside a transaction, dropped while panicking"),
        "{report}"
    );
}

/// An incident, then healthy traffic: "now" is healthy, the incident is a
/// past episode with its own verdict naming its culprit, and its site ages
/// out of the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_followed_by_healthy_traffic_reads_as_past() {
    let pool = pool_with("incident-then-healthy", |w| {
        w.window(Duration::from_secs(2))
    });
    let jobs: Vec<_> = (0..4)
        .map(|_| tokio::spawn(service::nightly_export(pool.clone(), 4)))
        .collect();
    tokio::time::sleep(ms(100)).await;
    let waiting: Vec<_> = (0..8)
        .map(|id| tokio::spawn(service::get_user(pool.clone(), id)))
        .collect();
    let job_line = jobs_line(jobs).await;
    for task in waiting {
        task.await.unwrap().unwrap();
    }
    // Healthy traffic, well past the window.
    let started = Instant::now();
    let mut request_line = 0;
    while started.elapsed() < Duration::from_secs(3) {
        request_line = service::get_user(pool.clone(), 1).await.unwrap();
        tokio::time::sleep(ms(20)).await;
    }
    let report = pool.report();
    assert_eq!(report.kinds(), vec![VerdictKind::Healthy], "{report}");
    let episode = report.episodes.last().expect("the incident is listed");
    assert!(episode.ended_ago_secs >= 2.0, "{report}");
    assert_eq!(episode.verdicts[0].kind, VerdictKind::LongHold, "{report}");
    assert!(
        episode.verdicts[0].evidence[0]
            .subject
            .starts_with(&site(job_line)),
        "{report}"
    );
    assert!(
        report
            .sites
            .iter()
            .all(|s| !s.site.starts_with(&site(job_line))),
        "the incident's site aged out of the window:\n{report}"
    );
    assert!(report
        .sites
        .iter()
        .any(|s| s.site.starts_with(&site(request_line))));
}

/// A burst that is over before the first tick (the default tick is a
/// second): its waits and peaks are seen, and it is concurrency growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shorter_than_a_tick_is_concurrency_growth() {
    with_spans();
    let watch = WatchConfig::builder()
        .pool_name("short-burst")
        .build()
        .unwrap();
    let pool = support::observed_pool(4, watch);
    let started = Instant::now();
    let requests: Vec<_> = (0..100)
        .map(|_| tokio::spawn(service::search(pool.clone())))
        .collect();
    let mut line = 0;
    for task in requests {
        line = task.await.unwrap().unwrap();
    }
    let report = pool.report();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the burst outlasted a tick"
    );
    assert_diagnosis(&report, VerdictKind::ConcurrencyGrowth, "pool", &[]);
    assert_eq!(report.pressure.peak_in_use, 4, "{report}");
    assert!(report.pressure.peak_waiting >= 10, "{report}");
    assert!(report.now.saturated, "{report}");
    let searches = report
        .sites
        .iter()
        .find(|s| s.site.starts_with(&site(line)))
        .unwrap();
    assert_eq!(searches.checkouts, 100, "{report}");
    assert!(searches.wait_p99_ms > 5.0, "{report}");
}

/// A leak under steady traffic: the leaking handler is the culprit; the
/// steady requests that waited are affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_under_steady_traffic_names_the_leaking_handler() {
    let pool = pool("leak-steady");
    let parked = tokio::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    let (mut order_line, mut request_line) = (0, 0);
    let mut order = 0;
    while started.elapsed() < ms(1500) {
        if order < 3 * 3 {
            // Every third order is declined and leaks its connection.
            order_line = service::place_order(pool.clone(), order, &parked)
                .instrument(tracing::info_span!("place_order"))
                .await
                .unwrap();
            order += 1;
        }
        let requests: Vec<_> = (0..3)
            .map(|id| tokio::spawn(service::get_user(pool.clone(), id)))
            .collect();
        for task in requests {
            request_line = task.await.unwrap().unwrap();
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert_eq!(parked.lock().await.len(), 3);
    let report = pool.report();
    assert_diagnosis(
        &report,
        VerdictKind::Leak,
        &site(order_line),
        &[site(request_line)],
    );
    assert_eq!(report.flagged.len(), 3, "{report}");
    drop(parked);
}

/// A leak and a burst at once: the leak comes first, naming its handler;
/// the burst's callers are never blamed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_and_a_burst_at_once() {
    let pool = pool("leak-and-burst");
    let parked = tokio::sync::Mutex::new(Vec::new());
    let mut order_line = 0;
    for order in [2, 5] {
        order_line = service::place_order(pool.clone(), order, &parked)
            .await
            .unwrap();
    }
    tokio::time::sleep(ms(350)).await; // the parked ones pass the threshold
    let burst: Vec<_> = (0..150)
        .map(|_| tokio::spawn(service::search(pool.clone())))
        .collect();
    let mut search_line = 0;
    for task in burst {
        search_line = task.await.unwrap().unwrap();
    }
    let report = pool.report();
    assert_diagnosis(
        &report,
        VerdictKind::Leak,
        &site(order_line),
        &[site(search_line)],
    );
    let leak = &report.verdicts[0];
    assert!(
        leak.evidence
            .iter()
            .all(|e| !e.subject.starts_with(&site(search_line))),
        "{report}"
    );
    drop(parked);
}

/// A healthy service: short queries under the pool's size. Healthy, and
/// nothing flagged, no episode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_service_is_healthy() {
    let pool = pool("healthy");
    let started = Instant::now();
    while started.elapsed() < ms(1200) {
        let requests: Vec<_> = (0..2)
            .map(|id| tokio::spawn(service::get_user(pool.clone(), id)))
            .collect();
        for task in requests {
            task.await.unwrap().unwrap();
        }
        tokio::time::sleep(ms(10)).await;
    }
    let report = pool.report();
    assert_eq!(report.kinds(), vec![VerdictKind::Healthy], "{report}");
    assert!(report.flagged.is_empty(), "{report}");
    assert!(report.episodes.is_empty(), "{report}");
}

/// Database work done in a helper that takes `&deadpool_postgres::Client`
/// is database work: the holds are long inside database calls, not
/// "held across work that is not database work".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_in_a_deadpool_client_helper_is_database_time() {
    let pool = pool("client-helper");
    let reports: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(
                service::monthly_report(pool.clone())
                    .instrument(tracing::info_span!("monthly_report")),
            )
        })
        .collect();
    let mut line = 0;
    for task in reports {
        line = task.await.unwrap().unwrap();
    }
    tokio::time::sleep(ms(150)).await;
    let report = pool.report();
    assert_diagnosis(&report, VerdictKind::LongHold, &site(line), &[]);
    assert!(
        report.verdicts[0].reason.contains("inside database calls"),
        "{report}"
    );
    let helper = report
        .sites
        .iter()
        .find(|s| s.site.starts_with(&site(line)))
        .unwrap();
    assert!(helper.busy_ratio.unwrap_or(0.0) > 0.9, "{report}");
}

/// Eight renderers (300 µs CPU slices between timer waits) keep a
/// runtime busy while 400 `get_user` requests burst on the pool, and
/// `job` (if any) runs beside them; the report once the requests are
/// done, and their checkout line.
async fn burst_on_a_busy_runtime(
    pool: &Pool,
    job: Option<tokio::task::JoinHandle<Result<u32, service::Error>>>,
) -> (Report, u32, Option<u32>) {
    let until = Instant::now() + ms(2500);
    let renderers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(service::render_pages(until, Duration::from_micros(300))))
        .collect();
    if job.is_some() {
        tokio::time::sleep(ms(100)).await;
    }
    let requests: Vec<_> = (0..400)
        .map(|id| tokio::spawn(service::get_user(pool.clone(), id)))
        .collect();
    let mut request_line = 0;
    for task in requests {
        request_line = task.await.unwrap().unwrap();
    }
    let job_line = match job {
        Some(job) => Some(job.await.unwrap().unwrap()),
        None => None,
    };
    let report = pool.report();
    for task in renderers {
        task.await.unwrap();
    }
    (report, request_line, job_line)
}

/// The burst alone on a busy runtime, on pool `name`: concurrency growth
/// naming the pool, the handlers never blamed, no long hold. The report
/// and the handlers' checkout line.
async fn busy_runtime_burst_is_growth(name: &str) -> (Report, u32) {
    let pool = pool(name);
    let (report, request_line, _) = burst_on_a_busy_runtime(&pool, None).await;
    assert_diagnosis(
        &report,
        VerdictKind::ConcurrencyGrowth,
        "pool",
        &[site(request_line)],
    );
    assert!(!report.kinds().contains(&VerdictKind::LongHold), "{report}");
    (report, request_line)
}

/// A burst on a runtime kept busy by other requests' CPU work: every
/// handler waits its turn a few times (to send, to read its answer, to
/// drop its guard) and holds its connection through those waits. That
/// is scheduling delay under demand, concurrency growth; the handler is
/// no culprit of a long hold.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_on_a_busy_runtime_is_growth_not_a_long_hold() {
    let (report, request_line) = busy_runtime_burst_is_growth("busy-runtime-burst").await;
    // ... and says why the short holds last as long as they do.
    assert!(
        report.verdicts[0].evidence[0]
            .detail
            .contains("the runtime is busy"),
        "{report}"
    );
    let requests = report
        .sites
        .iter()
        .find(|s| s.site.starts_with(&site(request_line)))
        .unwrap();
    assert_eq!(requests.checkouts, 400, "{report}");
    // The scheduling gaps are there: most of the held time is outside
    // the database calls.
    assert!(requests.busy_ratio.unwrap_or(1.0) < 0.5, "{report}");
}

/// The same busy runtime and burst, with a job holding a connection
/// across its uploads: the job is the long hold, named first; the
/// burst's handlers, which only waited their turn, are not blamed.
#[tokio::test(flavor = "current_thread")]
async fn a_job_on_a_busy_runtime_is_named_before_the_burst() {
    let pool = pool("busy-runtime-job");
    let job = tokio::spawn(
        service::nightly_export(pool.clone(), 4).instrument(tracing::info_span!("nightly_export")),
    );
    let (report, request_line, job_line) = burst_on_a_busy_runtime(&pool, Some(job)).await;
    assert_diagnosis(
        &report,
        VerdictKind::LongHold,
        &site(job_line.expect("the job ran")),
        &[site(request_line)],
    );
    assert!(
        report.verdicts[0].reason.contains("not database work"),
        "{report}"
    );
}

/// The same on a two-worker runtime: the renderers keep both workers
/// busy, and the burst's handlers are still no culprit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_busy_multi_thread_runtime_is_growth() {
    busy_runtime_burst_is_growth("busy-workers-burst").await;
}
