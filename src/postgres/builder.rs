//! Building a watched pool with the hooks that see inside the connection:
//! the backend pid (`post_create`) and the open-transaction probe
//! (`pre_recycle`). Hooks run inside deadpool's `get()` and can only be
//! attached while the pool is built, so a pool handed over ready-made
//! ([`Pool::new`](crate::WatchedPool::new)) gets the guard's own tracking
//! only.

use std::sync::{atomic::Ordering, Arc};

use deadpool_postgres::{
    tokio_postgres::tls::{MakeTlsConnect, TlsConnect},
    BuildError, CreatePoolError, Manager, Runtime,
};
use tokio_postgres::Socket;

use super::{hooks, pid, Pool};
use crate::config::WatchConfig;
use crate::ledger::Ledger;
use crate::WatchedPool;

/// What to do with a connection found inside a transaction when it is
/// returned or about to be handed out again.
///
/// ```
/// let options = poolwatch::postgres::Options::default()
///     .on_open_transaction(poolwatch::postgres::OpenTransaction::Evict);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenTransaction {
    /// `ROLLBACK` it in the `pre_recycle` hook, then hand it out (default).
    #[default]
    Rollback,
    /// Close it; the pool opens a fresh one when needed.
    Evict,
}

/// PostgreSQL-specific settings of a watched pool.
///
/// | what | default |
/// |---|---|
/// | [`probe_transactions`](Self::probe_transactions) | on |
/// | [`on_open_transaction`](Self::on_open_transaction) | [`OpenTransaction::Rollback`] |
/// | [`backend_pid`](Self::backend_pid) | on |
/// | [`application_name`](Self::application_name) | on (only if unset) |
///
/// ```
/// use poolwatch::postgres::{OpenTransaction, Options};
/// let options = Options::default()
///     .probe_transactions(true)
///     .on_open_transaction(OpenTransaction::Rollback);
/// assert_eq!(options.open_transaction, OpenTransaction::Rollback);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Probe each connection with `SAVEPOINT` in `pre_recycle` (one round
    /// trip per recycled checkout) to catch a transaction left open by any
    /// code, including uninstrumented code.
    pub probe_transactions: bool,
    /// What to do with a connection inside a transaction.
    pub open_transaction: OpenTransaction,
    /// Ask each new connection for its backend pid (`post_create`).
    pub backend_pid: bool,
    /// Set `application_name` (`<program>/<pool name>`) when the config
    /// leaves it unset, so `pg_stat_activity` shows who holds what.
    pub application_name: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            probe_transactions: true,
            open_transaction: OpenTransaction::Rollback,
            backend_pid: true,
            application_name: true,
        }
    }
}

impl Options {
    /// Turns the `SAVEPOINT` probe on or off.
    ///
    /// ```
    /// let options = poolwatch::postgres::Options::default().probe_transactions(false);
    /// assert!(!options.probe_transactions);
    /// ```
    pub fn probe_transactions(mut self, on: bool) -> Self {
        self.probe_transactions = on;
        self
    }

    /// Roll back or evict a connection inside a transaction.
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

    /// Turns the backend pid lookup on or off.
    ///
    /// ```
    /// let options = poolwatch::postgres::Options::default().backend_pid(false);
    /// assert!(!options.backend_pid);
    /// ```
    pub fn backend_pid(mut self, on: bool) -> Self {
        self.backend_pid = on;
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

impl WatchedPool<Manager> {
    /// Creates a watched pool from a [`deadpool_postgres::Config`], like
    /// [`Config::create_pool`](deadpool_postgres::Config::create_pool), with
    /// the default [`Options`]: backend pid per connection, the
    /// open-transaction probe, and `application_name` if unset. Pool size,
    /// timeouts and recycling method come from the config as usual.
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
    ) -> Result<Pool, CreatePoolError>
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
    /// let options = Options::default().on_open_transaction(OpenTransaction::Evict);
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
    ) -> Result<Pool, CreatePoolError>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let mut pg_config = config.get_pg_config().map_err(CreatePoolError::Config)?;
        if options.application_name && pg_config.get_application_name().is_none() {
            pg_config.application_name(default_application_name(&watch.pool_name));
        }
        let manager = Manager::from_config(pg_config, tls, config.get_manager_config());
        let mut builder =
            deadpool_postgres::Pool::builder(manager).config(config.get_pool_config());
        if let Some(runtime) = runtime {
            builder = builder.runtime(runtime);
        }
        Self::from_builder(builder, watch, options).map_err(CreatePoolError::Build)
    }

    /// Builds a watched pool from a deadpool-postgres
    /// [`PoolBuilder`](deadpool_postgres::PoolBuilder), adding the hooks
    /// [`Options`] ask for to the ones it already has. Use it when the
    /// [`Manager`] is built by hand; `application_name` is then yours to set
    /// in the `tokio_postgres::Config`.
    ///
    /// ```no_run
    /// use deadpool_postgres::{Manager, Pool as PgPool, Runtime};
    /// use poolwatch::postgres::{Options, Pool};
    ///
    /// # fn demo(pg_config: tokio_postgres::Config) -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = Manager::new(pg_config, tokio_postgres::NoTls);
    /// let builder = PgPool::builder(manager).max_size(16).runtime(Runtime::Tokio1);
    /// let pool = Pool::from_builder(builder, poolwatch::WatchConfig::from_env()?, Options::default())?;
    /// # Ok(()) }
    /// ```
    pub fn from_builder(
        builder: deadpool_postgres::PoolBuilder,
        watch: WatchConfig,
        options: Options,
    ) -> Result<Pool, BuildError> {
        let ledger = Arc::new(Ledger::new(&watch));
        let weak = Arc::downgrade(&ledger);
        let mut builder = builder;
        if options.backend_pid {
            builder = builder.post_create(pid::post_create(weak.clone()));
        }
        if options.probe_transactions {
            builder = builder.pre_recycle(hooks::pre_recycle(weak, options.open_transaction));
            // The probe cleans up at the next checkout: no need to evict at
            // return unless eviction is what was asked for.
            let evict = options.open_transaction == OpenTransaction::Evict;
            ledger
                .settings
                .evict_open_transactions
                .store(evict, Ordering::Relaxed);
        }
        Ok(WatchedPool::with_ledger(builder.build()?, ledger))
    }
}
