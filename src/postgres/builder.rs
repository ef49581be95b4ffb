//! Building a watched pool whose connections poolwatch observes: the
//! manager connects through [`WatchedConnect`] (every protocol message on
//! the connection is seen), a `post_create` hook links each new
//! connection's record to its pooled object, and the pool's ledger finds
//! those records through the [`Directory`].

use std::sync::{Arc, OnceLock};

use deadpool::managed::{Hook, HookError, Timeouts};
use deadpool_postgres::{
    tokio_postgres::tls::{MakeTlsConnect, TlsConnect},
    BuildError, ClientWrapper, Manager, ManagerConfig, PoolConfig, QueueMode, Runtime,
};

use super::connect::{port_of, WatchedConnect};
use super::link::{self, Claims, Directory};
use super::sanitize::sanitize;
use super::server_probe::Probe;
use super::socket::Socket;
use super::wire::statements::OwnQueries;
use super::wire::WireSettings;
use crate::config::{Statements, WatchConfig};
use crate::errors::ConfigError;
use crate::export::ConnectionMetrics;
use crate::ledger::{ConnectionActivity, ConnectionDirectory, Ticks};
use crate::shared::Shared;
use crate::WatchedPool;

/// What to do with a connection returned inside a transaction.
///
/// ```
/// let options = poolwatch::postgres::Options::default()
///     .on_open_transaction(poolwatch::postgres::OpenTransaction::Rollback);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenTransaction {
    /// Close it; the pool opens a fresh one when needed (the default: it
    /// costs nothing on the checkout path, and a connection left inside a
    /// transaction is a bug worth a reconnect).
    #[default]
    Evict,
    /// Return it and send `ROLLBACK` before its next use, from a
    /// `pre_recycle` hook: a round trip only for a connection that needs
    /// it, but an async hook on every checkout.
    Rollback,
}

/// PostgreSQL-specific settings of a watched pool.
///
/// | what | default |
/// |---|---|
/// | [`on_open_transaction`](Self::on_open_transaction) | [`OpenTransaction::Evict`] |
/// | [`application_name`](Self::application_name) | on (only if unset) |
///
/// ```
/// use poolwatch::postgres::{OpenTransaction, Options};
/// let options = Options::default().on_open_transaction(OpenTransaction::Rollback);
/// assert_eq!(options.open_transaction, OpenTransaction::Rollback);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// What to do with a connection returned inside a transaction.
    pub open_transaction: OpenTransaction,
    /// Set `application_name` (`<program>/<pool name>`) when the config
    /// leaves it unset, so `pg_stat_activity` shows who holds what.
    pub application_name: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            open_transaction: OpenTransaction::Evict,
            application_name: true,
        }
    }
}

impl Options {
    /// Evict or roll back a connection returned inside a transaction.
    ///
    /// ```
    /// use poolwatch::postgres::{OpenTransaction, Options};
    /// let options = Options::default().on_open_transaction(OpenTransaction::Evict);
    /// assert_eq!(options.open_transaction, OpenTransaction::Evict);
    /// ```
    pub fn on_open_transaction(mut self, policy: OpenTransaction) -> Self {
        self.open_transaction = policy;
        self
    }

    /// Turns setting a default `application_name` on or off.
    ///
    /// ```
    /// let options = poolwatch::postgres::Options::default().application_name(false);
    /// assert!(!options.application_name);
    /// ```
    pub fn application_name(mut self, on: bool) -> Self {
        self.application_name = on;
        self
    }
}

/// `<program>/<pool>`, at most 63 bytes (PostgreSQL's NAMEDATALEN - 1).
/// A pool left with the default name is named as OpenTelemetry suggests
/// for `db.client.connection.pool.name`: `server.address:server.port/db.namespace`
/// (`db.example.com:5432/shop`; several hosts joined by `,`; a Unix socket
/// by its directory). The database defaults to the user, as PostgreSQL's
/// does; a config with neither keeps the default name.
fn named_after_server(mut watch: WatchConfig, pg_config: &tokio_postgres::Config) -> WatchConfig {
    if watch.pool_name != WatchConfig::DEFAULT_POOL_NAME {
        return watch;
    }
    let Some(database) = pg_config.get_dbname().or(pg_config.get_user()) else {
        return watch;
    };
    let ports = pg_config.get_ports();
    let addresses: Vec<String> = pg_config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = port_of(ports, i);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let addresses = if addresses.is_empty() {
        // Only `hostaddr`s.
        pg_config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let port = port_of(ports, i);
                format!("{ip}:{port}")
            })
            .collect()
    } else {
        addresses
    };
    if addresses.is_empty() {
        return watch;
    }
    watch.pool_name = format!("{}/{database}", addresses.join(","));
    watch
}

fn default_application_name(pool: &str) -> String {
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "poolwatch".to_owned());
    let mut name = format!("{program}/{pool}");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// Bytes of statement text shown in events, snapshots and reports.
const STATEMENT_SHOWN: usize = 512;

impl ConnectionDirectory for Directory {
    fn find(&self, key: usize) -> Option<Arc<ConnectionActivity>> {
        Directory::find(self, key)
    }
}

/// The key the pool's checkouts give the ledger for a connection.
fn connection_key(client: &ClientWrapper) -> usize {
    link::connection_key(&client.statement_cache)
}

/// Rolls back, before its next use, a connection returned inside a
/// transaction (only when [`OpenTransaction::Rollback`] is asked for).
fn rollback_open_transactions(directory: Arc<Directory>) -> Hook<Manager> {
    Hook::async_fn(move |client: &mut ClientWrapper, _| {
        let open = directory
            .find_client(client)
            .is_some_and(|a| a.reading(Ticks::now()).transaction.is_open());
        Box::pin(async move {
            if open {
                client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(HookError::Backend)?;
            }
            Ok(())
        })
    })
}

/// A deadpool-postgres pool builder whose manager connects through
/// poolwatch's observer, for a [`Manager`] built by hand: like
/// `deadpool_postgres::Pool::builder(Manager::from_config(pg_config, tls,
/// manager_config))`. Get one from
/// [`Pool::builder`](crate::WatchedPool::builder).
///
/// ```no_run
/// use deadpool_postgres::{ManagerConfig, Runtime};
/// use poolwatch::postgres::Pool;
///
/// # fn demo(pg_config: tokio_postgres::Config) -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::builder(pg_config, tokio_postgres::NoTls, ManagerConfig::default())
///     .max_size(16)
///     .runtime(Runtime::Tokio1)
///     .watch(poolwatch::WatchConfig::from_env()?)
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct PoolBuilder {
    builder: deadpool_postgres::PoolBuilder,
    claims: Arc<Claims>,
    directory: Arc<Directory>,
    /// Where the connections record their metrics, set at `build`.
    metrics: Arc<OnceLock<ConnectionMetrics>>,
    watch: WatchConfig,
    options: Options,
    /// Where and how the server view connects (the pool's own settings).
    server: (tokio_postgres::Config, Arc<dyn deadpool_postgres::Connect>),
}

impl PoolBuilder {
    fn map(
        self,
        f: impl FnOnce(deadpool_postgres::PoolBuilder) -> deadpool_postgres::PoolBuilder,
    ) -> Self {
        Self {
            builder: f(self.builder),
            ..self
        }
    }

    /// The pool's maximum size, like deadpool's.
    pub fn max_size(self, value: usize) -> Self {
        self.map(|b| b.max_size(value))
    }

    /// deadpool's whole [`PoolConfig`] (size, timeouts, queue mode).
    pub fn config(self, value: PoolConfig) -> Self {
        self.map(|b| b.config(value))
    }

    /// deadpool's timeouts.
    pub fn timeouts(self, value: Timeouts) -> Self {
        self.map(|b| b.timeouts(value))
    }

    /// How long `get()` waits for a free slot.
    pub fn wait_timeout(self, value: Option<std::time::Duration>) -> Self {
        self.map(|b| b.wait_timeout(value))
    }

    /// How long creating a connection may take.
    pub fn create_timeout(self, value: Option<std::time::Duration>) -> Self {
        self.map(|b| b.create_timeout(value))
    }

    /// How long recycling a connection may take.
    pub fn recycle_timeout(self, value: Option<std::time::Duration>) -> Self {
        self.map(|b| b.recycle_timeout(value))
    }

    /// FIFO or LIFO reuse of idle connections.
    pub fn queue_mode(self, value: QueueMode) -> Self {
        self.map(|b| b.queue_mode(value))
    }

    /// The runtime deadpool's timeouts use.
    pub fn runtime(self, value: Runtime) -> Self {
        self.map(|b| b.runtime(value))
    }

    /// A `post_create` hook of yours (poolwatch's own runs after it).
    pub fn post_create(self, hook: impl Into<Hook<Manager>>) -> Self {
        self.map(|b| b.post_create(hook))
    }

    /// A `pre_recycle` hook of yours.
    pub fn pre_recycle(self, hook: impl Into<Hook<Manager>>) -> Self {
        self.map(|b| b.pre_recycle(hook))
    }

    /// A `post_recycle` hook of yours.
    pub fn post_recycle(self, hook: impl Into<Hook<Manager>>) -> Self {
        self.map(|b| b.post_recycle(hook))
    }

    /// What poolwatch watches for (default: [`WatchConfig::default`]; the
    /// `POOLWATCH_*` variables apply only through
    /// [`WatchConfig::from_env`] or [`create_pool`]).
    ///
    /// ```no_run
    /// # fn demo(builder: poolwatch::postgres::PoolBuilder) -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = builder.watch(poolwatch::WatchConfig::from_env()?).build()?;
    /// # Ok(()) }
    /// ```
    pub fn watch(self, watch: WatchConfig) -> Self {
        Self { watch, ..self }
    }

    /// The PostgreSQL-specific [`Options`].
    pub fn options(self, options: Options) -> Self {
        Self { options, ..self }
    }

    /// Builds the watched pool.
    pub fn build(mut self) -> Result<WatchedPool<Manager>, BuildError> {
        self.watch = named_after_server(self.watch, &self.server.0);
        let shared = Shared::new(&self.watch);
        // Before the pool exists, so before its first connection opens.
        let _ = self
            .metrics
            .set(shared.observer.metrics.connection_metrics());
        let mut builder = self
            .builder
            .post_create(link::post_create(self.claims, Arc::clone(&self.directory)));
        if self.options.open_transaction == OpenTransaction::Rollback {
            builder = builder.pre_recycle(rollback_open_transactions(Arc::clone(&self.directory)));
            shared.observer.set_evict_open_transactions(false);
        }
        shared.ledger.set_directory(self.directory);
        let shown = self.watch.statements;
        shared
            .observer
            .set_statement_format(Box::new(move |raw: &str| match shown {
                Statements::Sanitized => Some(sanitize(raw, STATEMENT_SHOWN)),
                _ => None,
            }));
        if let (true, Some(tick)) = (self.watch.server_view, shared.tick) {
            // Asked only from the sampler's tick, under pressure; without a
            // timeline nothing would ask, so no side connection either.
            let (pg_config, connect) = self.server;
            shared.observer.set_server_probe(Box::new(Probe::new(
                pg_config,
                connect,
                tick,
                shown == Statements::Sanitized,
            )));
        }
        let pool = builder.build()?;
        Ok(WatchedPool::with_shared(
            pool,
            shared,
            Some(connection_key as fn(&ClientWrapper) -> usize),
        ))
    }
}

/// A watched deadpool-postgres manager's parts: the observing `Connect`
/// and where new connections' records are linked.
fn observed_manager<T>(
    pg_config: tokio_postgres::Config,
    tls: T,
    manager_config: ManagerConfig,
) -> (
    Manager,
    Arc<Claims>,
    Arc<Directory>,
    Arc<OnceLock<ConnectionMetrics>>,
)
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let claims = Arc::new(Claims::default());
    let directory = Arc::new(Directory::default());
    let metrics = Arc::new(OnceLock::new());
    let settings = WireSettings {
        own_queries: OwnQueries::for_recycling(&manager_config.recycling_method),
        quiet: false,
        metrics: Arc::clone(&metrics),
    };
    let connect = WatchedConnect::new(tls, Arc::clone(&claims), settings);
    (
        Manager::from_connect(pg_config, connect, manager_config),
        claims,
        directory,
        metrics,
    )
}

impl WatchedPool<Manager> {
    /// Creates a watched pool from a [`deadpool_postgres::Config`], like
    /// [`Config::create_pool`](deadpool_postgres::Config::create_pool):
    /// pool size, timeouts and recycling method come from the config as
    /// usual. Every call on its connections is observed on the connection
    /// itself, whichever way it is made; see the [module docs](super).
    ///
    /// `tls` is a connector for [`Socket`], poolwatch's observed socket:
    /// `NoTls`, postgres-openssl, postgres-native-tls and
    /// tokio-postgres-rustls all work as they do for tokio-postgres's own.
    ///
    /// ```no_run
    /// use deadpool_postgres::{Config, Runtime};
    /// use poolwatch::{postgres::Pool, WatchConfig};
    ///
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cfg = Config::new();
    /// cfg.url = Some("postgres://app@localhost/app".into());
    /// let watch = WatchConfig::builder().pool_name("main").build()?;
    /// let pool = Pool::from_config(&cfg, Some(Runtime::Tokio1), tokio_postgres::NoTls, watch)?;
    /// # Ok(()) }
    /// ```
    pub fn from_config<T>(
        config: &deadpool_postgres::Config,
        runtime: Option<Runtime>,
        tls: T,
        watch: WatchConfig,
    ) -> Result<WatchedPool<Manager>, deadpool_postgres::CreatePoolError>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        Self::from_config_with(config, runtime, tls, watch, Options::default())
    }

    /// [`Self::from_config`] with explicit [`Options`].
    ///
    /// ```no_run
    /// use deadpool_postgres::{Config, Runtime};
    /// use poolwatch::postgres::{OpenTransaction, Options, Pool};
    ///
    /// # fn demo(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    /// let options = Options::default().on_open_transaction(OpenTransaction::Rollback);
    /// let pool = Pool::from_config_with(
    ///     &cfg,
    ///     Some(Runtime::Tokio1),
    ///     tokio_postgres::NoTls,
    ///     poolwatch::WatchConfig::from_env()?,
    ///     options,
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn from_config_with<T>(
        config: &deadpool_postgres::Config,
        runtime: Option<Runtime>,
        tls: T,
        watch: WatchConfig,
        options: Options,
    ) -> Result<WatchedPool<Manager>, deadpool_postgres::CreatePoolError>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let mut pg_config = config
            .get_pg_config()
            .map_err(deadpool_postgres::CreatePoolError::Config)?;
        let watch = named_after_server(watch, &pg_config);
        if options.application_name && pg_config.get_application_name().is_none() {
            pg_config.application_name(default_application_name(&watch.pool_name));
        }
        let mut builder = Self::builder(pg_config, tls, config.get_manager_config())
            .config(config.get_pool_config())
            .watch(watch)
            .options(options);
        if let Some(runtime) = runtime {
            builder = builder.runtime(runtime);
        }
        builder
            .build()
            .map_err(deadpool_postgres::CreatePoolError::Build)
    }

    /// A [`PoolBuilder`] for a pool built from a `tokio_postgres::Config`
    /// by hand, its connections observed like [`Self::from_config`]'s.
    /// `application_name` is yours to set in `pg_config`.
    ///
    /// ```no_run
    /// use deadpool_postgres::{ManagerConfig, RecyclingMethod, Runtime};
    /// use poolwatch::postgres::Pool;
    ///
    /// # fn demo(pg_config: tokio_postgres::Config) -> Result<(), Box<dyn std::error::Error>> {
    /// let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    /// let pool = Pool::builder(pg_config, tokio_postgres::NoTls, manager_config)
    ///     .max_size(16)
    ///     .runtime(Runtime::Tokio1)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder<T>(
        pg_config: tokio_postgres::Config,
        tls: T,
        manager_config: ManagerConfig,
    ) -> PoolBuilder
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let server: (tokio_postgres::Config, Arc<dyn deadpool_postgres::Connect>) = (
            pg_config.clone(),
            Arc::new(WatchedConnect::side(tls.clone())),
        );
        let (manager, claims, directory, metrics) =
            observed_manager(pg_config, tls, manager_config);
        PoolBuilder {
            builder: deadpool_postgres::Pool::builder(manager),
            claims,
            directory,
            metrics,
            watch: WatchConfig::default(),
            options: Options::default(),
            server,
        }
    }

    /// Wraps a pool from a deadpool-postgres
    /// [`PoolBuilder`](deadpool_postgres::PoolBuilder) whose [`Manager`]
    /// was made elsewhere. Like [`WatchedPool::new`], its connections are
    /// not observed (the manager connects without poolwatch): holds,
    /// waits, sites and spans are recorded, database time and transaction
    /// state are not. Prefer [`Self::builder`].
    pub fn from_builder(
        builder: deadpool_postgres::PoolBuilder,
        watch: WatchConfig,
    ) -> Result<WatchedPool<Manager>, BuildError> {
        Ok(WatchedPool::new(builder.build()?, watch))
    }
}

/// What [`create_pool`] can fail with: deadpool-postgres's own error, or
/// a `POOLWATCH_*` variable that does not parse.
///
/// Converts into `std::io::Error` (for a `main` returning `io::Result`),
/// `Box<dyn Error>` and `anyhow::Error` with `?`.
///
/// ```
/// let error = poolwatch::postgres::CreatePoolError::from(
///     poolwatch::WatchConfig::from_vars([("POOLWATCH_WINDOW", "soon")]).unwrap_err(),
/// );
/// let io: std::io::Error = error.into();
/// assert!(io.to_string().contains("POOLWATCH_WINDOW"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreatePoolError {
    /// Creating the pool failed (deadpool-postgres's error).
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::CreatePoolError),
    /// A `POOLWATCH_*` environment variable is invalid.
    #[error(transparent)]
    Watch(#[from] ConfigError),
}

impl From<CreatePoolError> for std::io::Error {
    fn from(error: CreatePoolError) -> Self {
        std::io::Error::other(error)
    }
}

/// The drop-in for [`deadpool_postgres::Config::create_pool`]: the same
/// arguments (with `&cfg` first), a watched pool, its settings read from
/// the `POOLWATCH_*` environment variables (the pool's name from
/// `POOLWATCH_POOL_NAME`, else the config's `dbname` or its URL's database,
/// else `default`).
///
/// ```no_run
/// use deadpool_postgres::{Config, Runtime};
///
/// # fn demo() -> std::io::Result<()> {
/// let mut cfg = Config::new();
/// cfg.url = Some("postgres://app@localhost/app".into());
/// // was: let pool = cfg.create_pool(Some(Runtime::Tokio1), tokio_postgres::NoTls)?;
/// let pool = poolwatch::postgres::create_pool(&cfg, Some(Runtime::Tokio1), tokio_postgres::NoTls)?;
/// # Ok(()) }
/// ```
pub fn create_pool<T>(
    config: &deadpool_postgres::Config,
    runtime: Option<Runtime>,
    tls: T,
) -> Result<WatchedPool<Manager>, CreatePoolError>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let watch = WatchConfig::builder().with_env()?.build()?;
    Ok(WatchedPool::from_config(config, runtime, tls, watch)?)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn named(url: &str) -> String {
        let pg = tokio_postgres::Config::from_str(url).unwrap();
        named_after_server(WatchConfig::default(), &pg).pool_name
    }

    #[test]
    fn unnamed_pools_are_named_server_address_port_namespace() {
        assert_eq!(
            named("postgres://app@db.example.com/shop"),
            "db.example.com:5432/shop"
        );
        assert_eq!(named("postgres://app@db:6432/shop"), "db:6432/shop");
        // The database defaults to the user, as PostgreSQL's does.
        assert_eq!(named("postgres://app@db/"), "db:5432/app");
        // Several hosts, each with its port (or the one port).
        assert_eq!(
            named("host=a,b port=5433,5434 dbname=shop user=app"),
            "a:5433,b:5434/shop"
        );
        assert_eq!(
            named("host=a,b port=5433 dbname=shop user=app"),
            "a:5433,b:5433/shop"
        );
        // Only addresses.
        assert_eq!(
            named("hostaddr=10.0.0.7 dbname=shop user=app"),
            "10.0.0.7:5432/shop"
        );
        #[cfg(unix)]
        assert_eq!(
            named("host=/var/run/postgresql dbname=shop user=app"),
            "/var/run/postgresql:5432/shop"
        );
        // No password, whatever the URL holds.
        assert!(!named("postgres://app:hunter2@db/shop").contains("hunter2"));
    }

    #[test]
    fn a_given_name_is_kept() {
        let pg = tokio_postgres::Config::from_str("postgres://app@db/shop").unwrap();
        let watch = WatchConfig::builder().pool_name("orders").build().unwrap();
        assert_eq!(named_after_server(watch, &pg).pool_name, "orders");
        // Nothing to name it after: the default stays.
        let empty = tokio_postgres::Config::new();
        assert_eq!(
            named_after_server(WatchConfig::default(), &empty).pool_name,
            WatchConfig::DEFAULT_POOL_NAME
        );
    }
}
