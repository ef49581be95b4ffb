//! **Not public API.** The connection observer's parts, reachable from
//! poolwatch's own integration tests (`tests/postgres_wire.rs`) until the
//! pool is wired to them. Hidden from the docs, exempt from semver, and
//! may change or disappear in any release: do not use it.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::Hook;
use deadpool_postgres::{ClientWrapper, Connect, Manager, RecyclingMethod};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use super::connect::WatchedConnect;
use super::link::{self, Claims, Directory};
use super::socket::Socket;
use super::wire::statements::OwnQueries;
use super::wire::WireSettings;
use crate::ledger::connection::{ConnectionActivity, TransactionState};
use crate::ledger::Ticks;

/// One pool's observer parts: the claims, the directory, the settings.
pub struct Watch {
    claims: Arc<Claims>,
    directory: Arc<Directory>,
    settings: WireSettings,
}

impl Watch {
    /// For a pool recycling with `recycling`.
    pub fn new(recycling: &RecyclingMethod) -> Self {
        Self {
            claims: Arc::default(),
            directory: Arc::default(),
            settings: WireSettings {
                own_queries: OwnQueries::for_recycling(recycling),
                quiet: false,
                metrics: Arc::default(),
            },
        }
    }

    /// The `Connect` for `Manager::from_connect`.
    pub fn connector<T>(&self, tls: T) -> impl Connect + 'static
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        WatchedConnect::new(tls, self.claims.clone(), self.settings.clone())
    }

    /// The `post_create` hook linking records to objects.
    pub fn post_create(&self) -> Hook<Manager> {
        link::post_create(self.claims.clone(), self.directory.clone())
    }

    /// The record linked to `client`.
    pub fn activity_of(&self, client: &ClientWrapper) -> Option<Activity> {
        self.directory.find_client(client).map(Activity)
    }

    /// Claims, from the current task, the record of a connection opened
    /// with [`connector`](Self::connector) directly (no pool).
    pub fn claim(&self, backend_pid: Option<i32>) -> Option<Activity> {
        self.claims.claim(backend_pid).map(Activity)
    }
}

/// The backend pid of a client's connection, read from its cancel token.
pub fn backend_pid_of(client: &tokio_postgres::Client) -> Option<i32> {
    link::backend_pid_of(client)
}

/// One connection's activity record.
#[derive(Clone)]
pub struct Activity(Arc<ConnectionActivity>);

impl Activity {
    /// The record now.
    pub fn reading(&self) -> Reading {
        let reading = self.0.reading(Ticks::now());
        Reading {
            busy: reading.totals.busy,
            idle_in_transaction: reading.totals.idle_in_transaction,
            statements: reading.totals.statements,
            in_flight: reading.in_flight,
            transaction: match reading.transaction {
                TransactionState::Unknown => Transaction::Unknown,
                TransactionState::Idle => Transaction::Idle,
                TransactionState::Open => Transaction::Open,
                TransactionState::Failed => Transaction::Failed,
            },
            in_transaction_for: reading
                .transaction_since
                .map(|since| since.until(Ticks::now())),
            backend_pid: reading.backend_pid,
            closed: reading.closed,
            observation_lost: self.0.observation_lost(),
            last_statement: reading.last_statement.map(|s| s.to_string()),
        }
    }

    /// Whether both are the same record.
    pub fn same_as(&self, other: &Activity) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A record's reading.
#[derive(Clone, Debug)]
pub struct Reading {
    /// Time with at least one request unanswered.
    pub busy: Duration,
    /// Time inside a transaction with none unanswered.
    pub idle_in_transaction: Duration,
    /// Statements counted.
    pub statements: u64,
    /// Requests unanswered.
    pub in_flight: u32,
    /// How long the open transaction has been open.
    pub in_transaction_for: Option<Duration>,
    /// The transaction state the server last reported.
    pub transaction: Transaction,
    /// The backend pid.
    pub backend_pid: Option<i32>,
    /// The connection ended (or observation was lost).
    pub closed: bool,
    /// The observer stopped following the connection.
    pub observation_lost: bool,
    /// The last statement's text.
    pub last_statement: Option<String>,
}

/// The transaction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transaction {
    /// Not reported yet.
    Unknown,
    /// Not in a transaction.
    Idle,
    /// In a transaction block.
    Open,
    /// In a failed transaction block.
    Failed,
}
