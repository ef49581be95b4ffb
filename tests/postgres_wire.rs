//! The connection observer against a real PostgreSQL: what it reads on
//! the wire (backend pid, busy time, transaction state, statements,
//! requests in flight) checked against the server's own answers, for
//! every way code reaches the connection, over Unix sockets, TCP and TLS,
//! directly through `WatchedConnect` and through a deadpool pool.
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{Hook, HookError};
use deadpool_postgres::{ClientWrapper, Connect, Manager, ManagerConfig, RecyclingMethod, Runtime};
use futures_util::SinkExt;
use poolwatch::postgres::__wire::{backend_pid_of, Activity, Reading, Transaction, Watch};
use support::pg;
use tokio_postgres::config::{SslMode, TargetSessionAttrs};
use tokio_postgres::types::Type;
use tokio_postgres::{Config, GenericClient, NoTls};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> Config {
    pg::pg_config().unwrap_or_else(|e| panic!("no test database: {e}"))
}

/// A connection opened directly through `WatchedConnect`, and its record.
struct Direct {
    client: tokio_postgres::Client,
    _task: tokio::task::JoinHandle<()>,
    activity: Activity,
}

async fn direct<T>(watch: &Watch, config: &Config, tls: T) -> Result<Direct, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<poolwatch::postgres::Socket>
        + Clone
        + Sync
        + Send
        + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<poolwatch::postgres::Socket>>::Future: Send,
{
    let (client, task) = watch.connector(tls).connect(config).await?;
    let pid = backend_pid_of(&client);
    assert!(pid.is_some(), "the cancel token gives the pid");
    let activity = watch
        .claim(pid)
        .expect("the connection's record was offered");
    Ok(Direct {
        client,
        _task: task,
        activity,
    })
}

async fn server_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The reading once `done` holds (the observer sees a "ready" when the
/// connection task reads it, which may be just after the caller's future
/// completed). Panics after 10 s.
async fn settled(activity: &Activity, done: impl Fn(&Reading) -> bool) -> Reading {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reading = activity.reading();
        if done(&reading) {
            return reading;
        }
        assert!(Instant::now() < deadline, "never settled: {reading:?}");
        tokio::time::sleep(ms(2)).await;
    }
}

async fn idle(activity: &Activity) -> Reading {
    settled(activity, |r| r.in_flight == 0).await
}

fn watched_pool(
    watch: &Watch,
    config: Config,
    max_size: usize,
    recycling: RecyclingMethod,
) -> deadpool_postgres::Pool {
    let manager = Manager::from_connect(
        config,
        watch.connector(NoTls),
        ManagerConfig {
            recycling_method: recycling,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .post_create(watch.post_create())
        .build()
        .unwrap()
}

#[tokio::test]
async fn pid_and_transaction_states_over_a_unix_socket() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let c = direct(&watch, &config(), NoTls).await.unwrap();
    let reading = c.activity.reading();
    assert_eq!(reading.transaction, Transaction::Idle, "startup's ready");
    assert_eq!(reading.statements, 0, "startup is not a statement");
    assert_eq!(reading.in_flight, 0);
    assert_eq!(reading.backend_pid, Some(server_pid(&c.client).await));

    c.client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(idle(&c.activity).await.transaction, Transaction::Open);
    c.client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(idle(&c.activity).await.transaction, Transaction::Failed);
    c.client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(idle(&c.activity).await.transaction, Transaction::Idle);
    c.client.batch_execute("BEGIN").await.unwrap();
    c.client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(idle(&c.activity).await.transaction, Transaction::Idle);

    let mut client = c.client;
    let transaction = client.transaction().await.unwrap();
    transaction.execute("SELECT 1", &[]).await.unwrap();
    assert_eq!(idle(&c.activity).await.transaction, Transaction::Open);
    transaction.commit().await.unwrap();
    assert_eq!(idle(&c.activity).await.transaction, Transaction::Idle);

    drop(client);
    settled(&c.activity, |r| r.closed).await;
    assert!(!c.activity.reading().observation_lost);
}

async fn sleep_generic<C: GenericClient>(client: &C, seconds: f64) {
    client
        .query_one("SELECT pg_sleep($1)", &[&seconds])
        .await
        .unwrap();
}

#[tokio::test]
async fn busy_time_covers_calls_through_deref_and_generic_code() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let pool = watched_pool(&watch, config(), 2, RecyclingMethod::Fast);
    let client = pool.get().await.unwrap();
    let activity = watch.activity_of(&client).expect("linked by the hook");
    assert_eq!(
        activity.reading().backend_pid,
        Some(server_pid(&client).await)
    );

    // Through `&tokio_postgres::Client`, out of any wrapper's sight.
    let before = idle(&activity).await;
    let raw: &tokio_postgres::Client = &client;
    raw.batch_execute("SELECT pg_sleep(0.3)").await.unwrap();
    let after = idle(&activity).await;
    assert!(after.busy - before.busy >= ms(300), "{before:?} {after:?}");
    assert_eq!(
        after.last_statement.as_deref(),
        Some("SELECT pg_sleep(0.3)")
    );
    assert_eq!(after.statements, before.statements + 1);

    // Through `GenericClient` generic code.
    let before = after;
    sleep_generic(&**client, 0.2).await;
    let after = idle(&activity).await;
    assert!(after.busy - before.busy >= ms(200), "{before:?} {after:?}");
    assert_eq!(after.last_statement.as_deref(), Some("SELECT pg_sleep($1)"));

    // Idle time is not busy time.
    let before = after;
    tokio::time::sleep(ms(200)).await;
    assert!(activity.reading().busy - before.busy < ms(100));
}

#[tokio::test]
async fn a_query_dropped_mid_sleep_stays_in_flight_until_the_server_answers() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let c = direct(&watch, &config(), NoTls).await.unwrap();
    let abandoned =
        tokio::time::timeout(ms(200), c.client.batch_execute("SELECT pg_sleep(1)")).await;
    assert!(abandoned.is_err(), "timed out");
    let reading = c.activity.reading();
    assert!(reading.in_flight > 0, "{reading:?}");
    // The connection task still reads the answer.
    let reading = idle(&c.activity).await;
    assert!(reading.busy >= ms(1000), "{reading:?}");
}

#[tokio::test]
async fn statement_texts_of_simple_prepared_and_unnamed_statements() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let c = direct(&watch, &config(), NoTls).await.unwrap();
    c.client.simple_query("SELECT 42").await.unwrap();
    let reading = idle(&c.activity).await;
    assert_eq!(reading.last_statement.as_deref(), Some("SELECT 42"));

    let statement = c.client.prepare("SELECT $1::int4 + 1").await.unwrap();
    c.client.simple_query("SELECT 'between'").await.unwrap();
    let before = idle(&c.activity).await;
    let row = c.client.query_one(&statement, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let after = idle(&c.activity).await;
    assert_eq!(
        after.last_statement.as_deref(),
        Some("SELECT $1::int4 + 1"),
        "Bind names the prepared statement"
    );
    assert_eq!(after.statements, before.statements + 1);

    let rows = c
        .client
        .query_typed("SELECT $1::text", &[(&"x", Type::TEXT)])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let reading = idle(&c.activity).await;
    assert_eq!(reading.last_statement.as_deref(), Some("SELECT $1::text"));
}

#[tokio::test]
async fn pipelined_queries_on_one_client_count_busy_time_once() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let c = direct(&watch, &config(), NoTls).await.unwrap();
    let client = Arc::new(c.client);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.spawn(async move { client.batch_execute("SELECT pg_sleep(0.25)").await });
    }
    let mut most_in_flight = 0;
    while most_in_flight < 2 && start.elapsed() < Duration::from_secs(5) {
        most_in_flight = most_in_flight.max(c.activity.reading().in_flight);
        tokio::time::sleep(ms(1)).await;
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    let reading = idle(&c.activity).await;
    assert!(most_in_flight >= 2, "requests were pipelined");
    // One connection runs them one after the other: 4 × 0.25 s busy, but
    // never more than the wall time (overlapping requests count once).
    assert!(reading.busy >= ms(1000), "{reading:?}");
    assert!(reading.busy <= elapsed + ms(50), "{reading:?} {elapsed:?}");
    assert_eq!(reading.statements, 4);
}

#[tokio::test]
async fn copy_in_is_one_request_and_ends_with_nothing_in_flight() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let c = direct(&watch, &config(), NoTls).await.unwrap();
    c.client
        .batch_execute("CREATE TEMP TABLE copied (n int)")
        .await
        .unwrap();
    let sink = c
        .client
        .copy_in::<_, bytes::Bytes>("COPY copied FROM STDIN")
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    // The copy is in progress: its request is in flight.
    let during = c.activity.reading();
    assert_eq!(during.in_flight, 1, "{during:?}");
    assert_eq!(
        during.last_statement.as_deref(),
        Some("COPY copied FROM STDIN")
    );
    for line in ["1\n", "2\n", "3\n"] {
        sink.send(bytes::Bytes::from(line)).await.unwrap();
    }
    assert_eq!(sink.as_mut().finish().await.unwrap(), 3);
    let after = idle(&c.activity).await;
    assert_eq!(after.transaction, Transaction::Idle);
    let n: i64 = c
        .client
        .query_one("SELECT count(*) FROM copied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let reading = idle(&c.activity).await;
    assert!(!reading.observation_lost);

    // A copy the server fails keeps the count right too.
    let sink = c
        .client
        .copy_in::<_, bytes::Bytes>("COPY copied FROM STDIN")
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let _ = sink.send(bytes::Bytes::from("not a number\n")).await;
    assert!(sink.as_mut().finish().await.is_err());
    let reading = idle(&c.activity).await;
    assert!(!reading.observation_lost);
    c.client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(idle(&c.activity).await.in_flight, 0);
}

#[tokio::test]
async fn recycling_queries_are_not_counted() {
    for recycling in [RecyclingMethod::Verified, RecyclingMethod::Clean] {
        let watch = Watch::new(&recycling);
        let pool = watched_pool(&watch, config(), 1, recycling.clone());
        let client = pool.get().await.unwrap();
        client.simple_query("SELECT 'mine'").await.unwrap();
        let activity = watch.activity_of(&client).unwrap();
        let before = idle(&activity).await;
        drop(client);
        for _ in 0..5 {
            // Each checkout runs the recycling query first.
            let client = pool.get().await.unwrap();
            assert!(watch.activity_of(&client).unwrap().same_as(&activity));
        }
        let after = idle(&activity).await;
        assert_eq!(after.statements, before.statements, "{recycling:?}");
        assert_eq!(after.last_statement.as_deref(), Some("SELECT 'mine'"));
        assert_eq!(after.busy, before.busy, "{recycling:?}");
        assert_eq!(after.transaction, Transaction::Idle);
    }
}

/// A user hook that awaits before poolwatch's, so connections created
/// concurrently finish their hooks in shuffled order.
fn slow_user_hook() -> Hook<Manager> {
    Hook::async_fn(|client: &mut ClientWrapper, _| {
        Box::pin(async move {
            let pid = backend_pid_of(client).unwrap_or(0);
            tokio::time::sleep(ms(10 + (pid as u64 * 7919) % 40)).await;
            Ok::<(), HookError<tokio_postgres::Error>>(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrently_created_connections_link_to_their_own_records() {
    let watch = Arc::new(Watch::new(&RecyclingMethod::Fast));
    let manager = Manager::from_connect(
        config(),
        watch.connector(NoTls),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(10)
        .runtime(Runtime::Tokio1)
        .post_create(slow_user_hook())
        .post_create(watch.post_create())
        .build()
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (pool, watch, barrier) = (pool.clone(), watch.clone(), barrier.clone());
        tasks.spawn(async move {
            let client = pool.get().await.unwrap();
            let pid = server_pid(&client).await;
            let activity = watch.activity_of(&client).expect("linked");
            assert_eq!(activity.reading().backend_pid, Some(pid));
            // Hold it until all eight exist, so each get() created one.
            barrier.wait().await;
            pid
        });
    }
    let mut pids = Vec::new();
    while let Some(pid) = tasks.join_next().await {
        pids.push(pid.unwrap());
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 8, "eight distinct connections");

    // Two connections created at once by one task.
    let (a, b) = tokio::join!(pool.get(), pool.get());
    for client in [a.unwrap(), b.unwrap()] {
        let activity = watch.activity_of(&client).expect("linked");
        assert_eq!(
            activity.reading().backend_pid,
            Some(server_pid(&client).await)
        );
    }
}

/// A private cluster on TCP 127.0.0.1 with TLS and a password, and a
/// client TLS configuration trusting its certificate.
struct TlsServer {
    cluster: pg::Cluster,
    rustls: tokio_postgres_rustls::MakeRustlsConnect,
}

const PASSWORD: &str = "wire-test-password";

fn tls_server() -> TlsServer {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cluster = pg::private_cluster_with(&pg::ClusterOptions {
        tcp: true,
        tls: Some((certified.cert.pem(), certified.signing_key.serialize_pem())),
        password: Some(PASSWORD.to_string()),
    })
    .unwrap_or_else(|e| panic!("private TLS cluster: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsServer {
        cluster,
        rustls: tokio_postgres_rustls::MakeRustlsConnect::new(client),
    }
}

impl TlsServer {
    fn config(&self, host: &str, ssl_mode: SslMode) -> Config {
        let mut config = self.cluster.tcp_config(host).unwrap();
        config.password(PASSWORD).ssl_mode(ssl_mode);
        config
    }
}

async fn uses_ssl(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The error of a connect that must fail.
fn error_of<T>(result: Result<T, tokio_postgres::Error>) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("connected"),
        Err(e) => e,
    }
}

/// An error's message and its source's.
fn described(e: &tokio_postgres::Error) -> (String, String) {
    use std::error::Error as _;
    (
        e.to_string(),
        e.source().map(|s| s.to_string()).unwrap_or_default(),
    )
}

#[tokio::test]
async fn tls_tcp_multi_host_and_session_attributes() {
    let server = tls_server();
    let watch = Watch::new(&RecyclingMethod::Fast);

    // sslmode=require over rustls, SCRAM with channel binding required
    // (so the TLS stream's channel binding reaches tokio-postgres), to
    // a name DNS resolves: statements are still read, so the observer
    // sees the plaintext above TLS.
    let mut config = server.config("localhost", SslMode::Require);
    config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let c = direct(&watch, &config, server.rustls.clone())
        .await
        .unwrap();
    assert!(uses_ssl(&c.client).await);
    c.client.simple_query("SELECT 'over tls'").await.unwrap();
    let reading = idle(&c.activity).await;
    assert_eq!(reading.last_statement.as_deref(), Some("SELECT 'over tls'"));
    assert_eq!(reading.backend_pid, Some(server_pid(&c.client).await));
    c.client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(idle(&c.activity).await.transaction, Transaction::Open);
    assert!(!c.activity.reading().observation_lost);

    // sslmode=prefer: TLS with rustls, plaintext with NoTls (as
    // tokio-postgres: NoTls never tries).
    let prefer = server.config("127.0.0.1", SslMode::Prefer);
    let c = direct(
        &watch,
        &server.config("localhost", SslMode::Prefer),
        server.rustls.clone(),
    )
    .await
    .unwrap();
    assert!(uses_ssl(&c.client).await);
    let c = direct(&watch, &prefer, NoTls).await.unwrap();
    assert!(!uses_ssl(&c.client).await);
    c.client.simple_query("SELECT 'plain'").await.unwrap();
    assert_eq!(
        idle(&c.activity).await.last_statement.as_deref(),
        Some("SELECT 'plain'")
    );

    // sslmode=require with NoTls, and TLS without a hostname
    // (hostaddr only): refused as tokio-postgres refuses them.
    let require = server.config("127.0.0.1", SslMode::Require);
    let ours = watch.connector(NoTls).connect(&require).await.unwrap_err();
    let theirs = error_of(require.connect(NoTls).await);
    assert_eq!(described(&ours), described(&theirs));
    let mut no_hostname = Config::new();
    no_hostname
        .hostaddr([127, 0, 0, 1].into())
        .port(server.cluster.tcp_port().unwrap())
        .user("postgres")
        .password(PASSWORD)
        .ssl_mode(SslMode::Require);
    let ours = watch
        .connector(server.rustls.clone())
        .connect(&no_hostname)
        .await
        .unwrap_err();
    let theirs = error_of(no_hostname.connect(server.rustls.clone()).await);
    assert_eq!(described(&ours), described(&theirs));
    assert_eq!(described(&ours).1, "no hostname provided for TLS handshake");

    // Two hosts, the first one dead: the second is used.
    let dead_port = pg::free_tcp_port().unwrap();
    let live_port = server.cluster.tcp_port().unwrap();
    let mut two_hosts = Config::new();
    two_hosts
        .host("127.0.0.1")
        .host("localhost")
        .port(dead_port)
        .port(live_port)
        .user("postgres")
        .password(PASSWORD)
        .ssl_mode(SslMode::Require);
    let c = direct(&watch, &two_hosts, server.rustls.clone())
        .await
        .unwrap();
    assert!(uses_ssl(&c.client).await);
    // Only a dead host: its error, a refused connection.
    let mut dead = Config::new();
    dead.host("127.0.0.1").port(dead_port).user("postgres");
    let e = watch.connector(NoTls).connect(&dead).await.unwrap_err();
    let source = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(|io| io.kind());
    assert_eq!(source, Some(std::io::ErrorKind::ConnectionRefused));

    // target_session_attrs=read-write: checked, and the check is not
    // counted as the user's statement.
    let mut read_write = server.config("localhost", SslMode::Require);
    read_write.target_session_attrs(TargetSessionAttrs::ReadWrite);
    let c = direct(&watch, &read_write, server.rustls.clone())
        .await
        .unwrap();
    let reading = idle(&c.activity).await;
    assert_eq!(reading.statements, 0, "{reading:?}");
    assert_eq!(reading.last_statement, None);
    read_write.options("-c default_transaction_read_only=on");
    let ours = watch
        .connector(server.rustls.clone())
        .connect(&read_write)
        .await
        .unwrap_err();
    let theirs = error_of(read_write.connect(server.rustls.clone()).await);
    assert_eq!(described(&ours).1, described(&theirs).1);
    assert_eq!(described(&ours).1, "database does not allow writes");
}

#[tokio::test]
async fn unix_socket_multi_host_with_a_dead_first_host() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let base = config();
    let mut config = Config::new();
    config.host_path("/nonexistent-poolwatch-dir");
    for host in base.get_hosts() {
        if let tokio_postgres::config::Host::Unix(path) = host {
            config.host_path(path);
        }
    }
    config
        .port(base.get_ports()[0])
        .user("postgres")
        .dbname("postgres");
    let c = direct(&watch, &config, NoTls).await.unwrap();
    assert_eq!(
        c.activity.reading().backend_pid,
        Some(server_pid(&c.client).await)
    );
}

/// A rustls connector trusting nothing (for servers that refuse TLS).
fn untrusting_rustls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(client)
}

#[tokio::test]
async fn tls_refused_by_the_server_or_disabled_keeps_the_raw_socket_observed() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    // Over a Unix socket the server answers "no" to the SSLRequest
    // (sslmode=prefer with a connector that can do TLS); with
    // sslmode=disable nothing is asked.
    for ssl_mode in [SslMode::Prefer, SslMode::Disable] {
        let mut config = config();
        config.ssl_mode(ssl_mode);
        let c = direct(&watch, &config, untrusting_rustls()).await.unwrap();
        c.client.simple_query("SELECT 'raw'").await.unwrap();
        let reading = idle(&c.activity).await;
        assert_eq!(reading.last_statement.as_deref(), Some("SELECT 'raw'"));
        assert_eq!(reading.backend_pid, Some(server_pid(&c.client).await));
        assert!(!reading.observation_lost);
    }
}

/// Paired medians of a prepared `query_one` round trip, raw vs observed,
/// and the median of the per-pair differences. Run with `cargo test
/// --release --test postgres_wire -- --ignored --nocapture overhead`.
#[tokio::test]
#[ignore]
async fn overhead_of_observing_a_round_trip() {
    let watch = Watch::new(&RecyclingMethod::Fast);
    let observed = direct(&watch, &config(), NoTls).await.unwrap();
    let (raw, connection) = config().connect(NoTls).await.unwrap();
    let _task = tokio::spawn(connection);
    let raw_statement = raw.prepare("SELECT 1::int4").await.unwrap();
    let observed_statement = observed.client.prepare("SELECT 1::int4").await.unwrap();
    let rounds = 10_000;
    let (mut raw_times, mut observed_times, mut differences) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut pair = [Duration::ZERO; 2];
        // Alternate which goes first.
        for which in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            if which == 0 {
                raw.query_one(&raw_statement, &[]).await.unwrap();
            } else {
                observed
                    .client
                    .query_one(&observed_statement, &[])
                    .await
                    .unwrap();
            }
            pair[which] = start.elapsed();
        }
        raw_times.push(pair[0]);
        observed_times.push(pair[1]);
        differences.push(pair[1].as_nanos() as i128 - pair[0].as_nanos() as i128);
    }
    raw_times.sort_unstable();
    observed_times.sort_unstable();
    differences.sort_unstable();
    let median = |v: &[Duration]| v[v.len() / 2];
    println!(
        "query_one round trip, {rounds} paired rounds: raw median {:?}, observed median {:?}, \
         median paired difference {} ns",
        median(&raw_times),
        median(&observed_times),
        differences[differences.len() / 2]
    );
}
