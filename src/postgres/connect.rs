//! [`WatchedConnect`]: deadpool-postgres's [`Connect`], opening each
//! connection on an observed [`Socket`] so every database call on it is
//! seen at the protocol level, whichever code path sends it.
//!
//! It replicates tokio-postgres 0.7.18's `Config::connect`
//! (`src/connect.rs`, `src/connect_socket.rs`, `src/connect_tls.rs`):
//! host/hostaddr/port validation and pairing, `load_balance_hosts`, every
//! address DNS returns, `connect_timeout` per attempt, `TCP_NODELAY`,
//! `tcp_user_timeout` and keepalives, Unix sockets
//! (`<dir>/.s.PGSQL.<port>`), the TLS hostname rules,
//! `target_session_attrs`, the next host on failure and the last error.
//! Then it calls `Config::connect_raw` with the observed socket and the
//! user's TLS connector wrapped ([`ObservedTls`]), and spawns the
//! connection task as deadpool-postgres's `ConfigConnectImpl` does.
//!
//! # Differences from `Config::connect`
//!
//! * **Error kinds.** `tokio_postgres::Error` has no public constructor, so
//!   a socket, DNS, timeout or `target_session_attrs` failure is returned
//!   by running `connect_raw` over a tiny in-memory stream that fails
//!   with that `io::Error` ([`fail`]). Its `source()` is the same
//!   `io::Error`, but it displays as "error communicating with the
//!   server" where tokio-postgres says "error connecting to server".
//!   TLS, "connection closed" and "unexpected message" errors come out
//!   with tokio-postgres's own kinds, the same way; configuration errors
//!   are tokio-postgres's own (its `connect` returns them before any I/O).
//! * **Cancel tokens.** `Client::set_socket_config` is private, so
//!   `CancelToken::cancel_query` fails with "unknown host";
//!   `CancelToken::cancel_query_raw` over a stream the caller opens works.
//! * **`sslmode=prefer` with `NoTls`.** tokio-postgres skips TLS when the
//!   connector says it cannot connect (`TlsConnect::can_connect`, a method
//!   behind a private type, so no wrapper can forward it; only `NoTls`
//!   answers no). `WatchedConnect` recognises `NoTls` by type and connects
//!   with `sslmode=disable`, as tokio-postgres would in effect; the
//!   client's cancel token then carries `disable`.
//! * **`target_session_attrs`** reads the whole `SHOW
//!   transaction_read_only` answer (tokio-postgres stops at its row); the
//!   check is the connection's own and is not reported as the user's.
//! * The host order under `load_balance_hosts=random` comes from
//!   `fastrand`, not `rand`.

use std::any::TypeId;
use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::io;
use std::net::IpAddr;
#[cfg(unix)]
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use deadpool_postgres::Connect;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode, TargetSessionAttrs};
use tokio_postgres::tls::{MakeTlsConnect, NoTlsStream, TlsConnect};
use tokio_postgres::{Client, Config, Connection, Error, NoTls, SimpleQueryMessage};

use super::link::Claims;
use super::socket::{Observer, Socket, Transport};
use super::tls::ObservedTls;
use super::wire::WireSettings;
use crate::ledger::connection::ConnectionActivity;
use crate::ledger::Ticks;

/// tokio-postgres's `target_session_attrs` check.
const READ_ONLY_QUERY: &str = "SHOW transaction_read_only";

/// Opens observed connections for deadpool-postgres
/// (`Manager::from_connect`) and offers each one's activity record to
/// [`Claims`] for the `post_create` hook to link.
pub(crate) struct WatchedConnect<T> {
    tls: T,
    /// `None`: a connection outside the pool (the server view's), linked
    /// to no checkout.
    claims: Option<Arc<Claims>>,
    settings: Arc<WireSettings>,
}

impl<T> WatchedConnect<T> {
    /// Connections made with `tls`, offered to `claims`.
    pub(crate) fn new(tls: T, claims: Arc<Claims>, settings: WireSettings) -> Self {
        Ticks::init();
        Self {
            tls,
            claims: Some(claims),
            settings: Arc::new(settings),
        }
    }

    /// Connections outside the pool, opened the way the pool's are (the
    /// same TLS and host forms), whose failures their user reports.
    pub(crate) fn side(tls: T) -> Self {
        Ticks::init();
        Self {
            tls,
            claims: None,
            settings: Arc::new(WireSettings {
                quiet: true,
                ..WireSettings::default()
            }),
        }
    }
}

/// A connection opened, its task spawned.
pub(crate) struct Opened {
    pub(crate) client: Client,
    pub(crate) task: JoinHandle<()>,
    /// `None` only in the fallbacks that cannot happen (see [`fail`]).
    pub(crate) activity: Option<Arc<ConnectionActivity>>,
}

type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Client, JoinHandle<()>), Error>> + Send + 'a>>;

impl<T> Connect for WatchedConnect<T>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect(&self, pg_config: &Config) -> ConnectFuture<'_> {
        let tls = self.tls.clone();
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let started = Ticks::now();
            let opened = connect(tls, &pg_config, &self.settings).await?;
            if let Some(metrics) = self.settings.metrics.get() {
                metrics.connected(started.until(Ticks::now()));
            }
            if let (Some(claims), Some(activity)) = (&self.claims, opened.activity) {
                claims.offer(activity);
            }
            Ok((opened.client, opened.task))
        })
    }
}

/// The address of one connection attempt.
enum Addr {
    Tcp(IpAddr),
    #[cfg(unix)]
    Unix(PathBuf),
}

/// The port of the `i`-th host: its own, else the one port given for all,
/// else PostgreSQL's default (tokio-postgres's pairing).
pub(crate) fn port_of(ports: &[u16], i: usize) -> u16 {
    ports
        .get(i)
        .or_else(|| ports.first())
        .copied()
        .unwrap_or(5432)
}

/// tokio-postgres's `connect`, on observed sockets.
pub(crate) async fn connect<T>(
    mut tls: T,
    config: &Config,
    settings: &Arc<WireSettings>,
) -> Result<Opened, Error>
where
    T: MakeTlsConnect<Socket> + 'static,
    T::Stream: Send + 'static,
{
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if hosts.is_empty() && hostaddrs.is_empty() {
        return invalid(config).await;
    }
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
        return invalid(config).await;
    }
    let num_hosts = hosts.len().max(hostaddrs.len());
    if ports.len() > 1 && ports.len() != num_hosts {
        return invalid(config).await;
    }

    let mut indices: Vec<usize> = (0..num_hosts).collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        fastrand::shuffle(&mut indices);
    }

    let mut error = None;
    for i in indices {
        let host = hosts.get(i);
        let port = port_of(ports, i);
        // The host is the name TLS verifies, hostaddr (when given) the
        // address connected to.
        let hostname = match host {
            Some(Host::Tcp(host)) => Some(host.clone()),
            // No TLS over Unix sockets: no name to verify.
            #[cfg(unix)]
            Some(Host::Unix(_)) => None,
            None => None,
        };
        let addr = match hostaddrs.get(i) {
            Some(ip) => Host::Tcp(ip.to_string()),
            None => match host {
                Some(host) => host.clone(),
                None => continue,
            },
        };
        match connect_host(addr, hostname, port, &mut tls, config, settings).await {
            Ok(opened) => return Ok(opened),
            Err(e) => error = Some(e),
        }
    }
    match error {
        Some(e) => Err(e),
        None => invalid(config).await,
    }
}

async fn connect_host<T>(
    host: Host,
    hostname: Option<String>,
    port: u16,
    tls: &mut T,
    config: &Config,
    settings: &Arc<WireSettings>,
) -> Result<Opened, Error>
where
    T: MakeTlsConnect<Socket> + 'static,
    T::Stream: Send + 'static,
{
    match host {
        Host::Tcp(host) => {
            let mut addrs = match tokio::net::lookup_host((&*host, port)).await {
                Ok(addrs) => addrs.collect::<Vec<_>>(),
                Err(e) => return fail(Failure::Io(e)).await,
            };
            if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
                fastrand::shuffle(&mut addrs);
            }
            let mut last_error = None;
            for addr in addrs {
                let attempt = Addr::Tcp(addr.ip());
                match connect_once(attempt, hostname.as_deref(), port, tls, config, settings).await
                {
                    Ok(opened) => return Ok(opened),
                    Err(e) => last_error = Some(e),
                }
            }
            match last_error {
                Some(e) => Err(e),
                None => {
                    fail(Failure::Io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "could not resolve any addresses",
                    )))
                    .await
                }
            }
        }
        #[cfg(unix)]
        Host::Unix(path) => {
            connect_once(
                Addr::Unix(path),
                hostname.as_deref(),
                port,
                tls,
                config,
                settings,
            )
            .await
        }
    }
}

async fn connect_once<T>(
    addr: Addr,
    hostname: Option<&str>,
    port: u16,
    tls: &mut T,
    config: &Config,
    settings: &Arc<WireSettings>,
) -> Result<Opened, Error>
where
    T: MakeTlsConnect<Socket> + 'static,
    T::Stream: Send + 'static,
{
    let transport = match connect_socket(&addr, port, config).await {
        Ok(transport) => transport,
        Err(e) => return fail(Failure::Io(e)).await,
    };
    // Converted before any await: the connector's error need not be Send.
    let made = tls
        .make_tls_connect(hostname.unwrap_or(""))
        .map_err(|e| Failure::Tls(e.into()));
    let tls = match made {
        Ok(tls) => tls,
        Err(failure) => return fail(failure).await,
    };

    let attrs = config.get_target_session_attrs();
    let checks_session = attrs != TargetSessionAttrs::Any;
    let activity = ConnectionActivity::new();
    let observer = Observer::new(
        activity.clone(),
        settings.clone(),
        checks_session.then_some(READ_ONLY_QUERY),
    );
    let socket = Socket::new(transport, observer);
    let tls = ObservedTls::new(tls, hostname.is_some());
    // See the module docs: `NoTls` cannot say it does not connect.
    let plain = config.get_ssl_mode() == SslMode::Prefer
        && TypeId::of::<T::TlsConnect>() == TypeId::of::<NoTls>();
    let connected = if plain {
        let mut plain = config.clone();
        plain.ssl_mode(SslMode::Disable);
        plain.connect_raw(socket, tls).await
    } else {
        config.connect_raw(socket, tls).await
    };
    let (client, mut connection) = connected?;

    if checks_session {
        match check_session(&client, &mut connection, attrs).await {
            Ok(()) => {}
            Err(SessionCheck::Error(e)) => return Err(e),
            Err(SessionCheck::Failure(failure)) => return fail(failure).await,
        }
    }
    Ok(Opened {
        client,
        task: spawn_connection(connection, !settings.quiet),
        activity: Some(activity),
    })
}

/// Spawns the connection task as deadpool-postgres's `ConfigConnectImpl`
/// does, with the same warning on a connection error (when `warn`).
fn spawn_connection<S, T>(connection: Connection<S, T>, warn: bool) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            if warn {
                tracing::warn!(target: "deadpool.postgres", "Connection error: {}", e);
            }
        }
    })
}

/// tokio-postgres's `connect_socket`.
async fn connect_socket(addr: &Addr, port: u16, config: &Config) -> io::Result<Transport> {
    let timeout = config.get_connect_timeout().copied();
    match addr {
        Addr::Tcp(ip) => {
            let stream = with_timeout(TcpStream::connect((*ip, port)), timeout).await?;
            stream.set_nodelay(true)?;
            let socket = SockRef::from(&stream);
            #[cfg(target_os = "linux")]
            if let Some(&user_timeout) = config.get_tcp_user_timeout() {
                socket.set_tcp_user_timeout(Some(user_timeout))?;
            }
            if config.get_keepalives() {
                socket.set_tcp_keepalive(&keepalive(config))?;
            }
            Ok(Transport::Tcp(stream))
        }
        #[cfg(unix)]
        Addr::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = with_timeout(UnixStream::connect(path), timeout).await?;
            Ok(Transport::Unix(stream))
        }
    }
}

/// tokio-postgres's keepalive settings (`keepalive.rs`).
fn keepalive(config: &Config) -> TcpKeepalive {
    #[allow(unused_mut)]
    let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
    #[cfg(not(any(
        target_os = "aix",
        target_os = "redox",
        target_os = "solaris",
        target_os = "openbsd"
    )))]
    if let Some(interval) = config.get_keepalives_interval() {
        keepalive = keepalive.with_interval(interval);
    }
    #[cfg(not(any(
        target_os = "aix",
        target_os = "redox",
        target_os = "solaris",
        target_os = "windows",
        target_os = "openbsd"
    )))]
    if let Some(retries) = config.get_keepalives_retries() {
        keepalive = keepalive.with_retries(retries);
    }
    keepalive
}

async fn with_timeout<F, S>(connect: F, timeout: Option<Duration>) -> io::Result<S>
where
    F: Future<Output = io::Result<S>>,
{
    match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, connect).await {
            Ok(connected) => connected,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            )),
        },
        None => connect.await,
    }
}

/// How the `target_session_attrs` check failed.
enum SessionCheck {
    Error(Error),
    Failure(Failure),
}

/// tokio-postgres's `target_session_attrs` check: `SHOW
/// transaction_read_only`, driving the connection by hand until answered.
async fn check_session<S, T>(
    client: &Client,
    connection: &mut Connection<S, T>,
    attrs: TargetSessionAttrs,
) -> Result<(), SessionCheck>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut query = pin!(client.simple_query(READ_ONLY_QUERY));
    let answered = poll_fn(|cx| {
        match Pin::new(&mut *connection).poll(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionCheck::Error(e))),
            Poll::Ready(Ok(())) => return Poll::Ready(Err(SessionCheck::Failure(Failure::Closed))),
            Poll::Pending => {}
        }
        query.as_mut().poll(cx).map_err(SessionCheck::Error)
    })
    .await?;
    for message in answered {
        if let SimpleQueryMessage::Row(row) = message {
            let read_only = row.try_get(0).map_err(SessionCheck::Error)?;
            let refusal = match read_only {
                Some("on") if attrs == TargetSessionAttrs::ReadWrite => {
                    "database does not allow writes"
                }
                Some("off") if attrs == TargetSessionAttrs::ReadOnly => "database is not read only",
                _ => return Ok(()),
            };
            return Err(SessionCheck::Failure(Failure::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                refusal,
            ))));
        }
    }
    Err(SessionCheck::Failure(Failure::UnexpectedMessage))
}

/// A failure to turn into a `tokio_postgres::Error`.
pub(crate) enum Failure {
    /// A socket, DNS, timeout or session-attribute failure.
    Io(io::Error),
    /// The TLS connector failed.
    Tls(Box<dyn StdError + Sync + Send>),
    /// The connection closed.
    Closed,
    /// The server answered something unexpected.
    UnexpectedMessage,
}

/// Returns `failure` as a `tokio_postgres::Error`, which has no public
/// constructor: `connect_raw` runs over a tiny in-memory stream that fails
/// the way `failure` says (a write error; a TLS connector that fails
/// after the server said yes; end of stream; a `ReadyForQuery` where
/// authentication belongs), and its error is returned. No I/O happens.
///
/// `connect_raw` cannot succeed over such a stream; were it ever to, the
/// client it made is returned, closed, and deadpool discards it at its
/// next recycle.
pub(crate) async fn fail(failure: Failure) -> Result<Opened, Error> {
    let mut config = Config::new();
    config.user("poolwatch").ssl_mode(SslMode::Disable);
    let mut stream = FailingServer {
        write_error: None,
        to_read: b"",
    };
    let mut tls = FailingTls(None);
    match failure {
        Failure::Io(e) => stream.write_error = Some(e),
        Failure::Tls(e) => {
            config.ssl_mode(SslMode::Require);
            stream.to_read = b"S";
            tls = FailingTls(Some(e));
        }
        Failure::Closed => {}
        Failure::UnexpectedMessage => stream.to_read = b"Z\0\0\0\x05I",
    }
    let (client, connection) = config.connect_raw(stream, tls).await?;
    Ok(Opened {
        client,
        task: spawn_connection(connection, true),
        activity: None,
    })
}

/// The other end of [`fail`]'s stream.
struct FailingServer {
    write_error: Option<io::Error>,
    to_read: &'static [u8],
}

impl AsyncRead for FailingServer {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.to_read.len().min(buf.remaining());
        buf.put_slice(&this.to_read[..n]);
        this.to_read = &this.to_read[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FailingServer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().write_error.take() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A TLS connector that fails with the error it holds.
struct FailingTls(Option<Box<dyn StdError + Sync + Send>>);

impl<S> TlsConnect<S> for FailingTls {
    type Stream = NoTlsStream;
    type Error = Box<dyn StdError + Sync + Send>;
    type Future = std::future::Ready<Result<NoTlsStream, Self::Error>>;

    fn connect(self, _: S) -> Self::Future {
        std::future::ready(Err(self
            .0
            .unwrap_or_else(|| "TLS is not available here".into())))
    }
}

/// A configuration tokio-postgres rejects: its own error, from its own
/// `connect`, which validates before any I/O. The connector given to it
/// refuses to make TLS connectors, so should it ever accept what
/// poolwatch rejected, it fails at its first attempt rather than connect
/// unobserved (or without the user's TLS).
async fn invalid(config: &Config) -> Result<Opened, Error> {
    let (client, connection) = config.connect(RefuseTls).await?;
    Ok(Opened {
        client,
        task: spawn_connection(connection, true),
        activity: None,
    })
}

/// See [`invalid`].
struct RefuseTls;

impl MakeTlsConnect<tokio_postgres::Socket> for RefuseTls {
    type Stream = NoTlsStream;
    type TlsConnect = NoTls;
    type Error = &'static str;

    fn make_tls_connect(&mut self, _: &str) -> Result<NoTls, &'static str> {
        Err("poolwatch: configuration refused")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened_error(result: Result<Opened, Error>) -> Error {
        match result {
            Err(e) => e,
            Ok(_) => panic!("expected an error"),
        }
    }

    #[tokio::test]
    async fn failures_become_tokio_postgres_errors_of_the_right_kind() {
        let io = opened_error(
            fail(Failure::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "refused",
            )))
            .await,
        );
        assert_eq!(io.to_string(), "error communicating with the server");
        let source = io.source().unwrap().downcast_ref::<io::Error>().unwrap();
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);

        let tls = opened_error(fail(Failure::Tls("bad certificate".into())).await);
        assert_eq!(tls.to_string(), "error performing TLS handshake");
        assert_eq!(tls.source().unwrap().to_string(), "bad certificate");

        let closed = opened_error(fail(Failure::Closed).await);
        assert!(closed.is_closed());

        let unexpected = opened_error(fail(Failure::UnexpectedMessage).await);
        assert_eq!(unexpected.to_string(), "unexpected message from server");
    }

    #[tokio::test]
    async fn invalid_configurations_get_tokio_postgres_own_errors() {
        let settings = Arc::new(WireSettings::default());
        let e = opened_error(connect(NoTls, &Config::new(), &settings).await);
        assert_eq!(e.to_string(), "invalid configuration");
        assert_eq!(
            e.source().unwrap().to_string(),
            "both host and hostaddr are missing"
        );

        let mut config = Config::new();
        config.host("a").host("b").hostaddr([127, 0, 0, 1].into());
        let e = opened_error(connect(NoTls, &config, &settings).await);
        assert!(e.source().unwrap().to_string().contains("number of hosts"));

        let mut config = Config::new();
        config.host("a").host("b").host("c").port(1).port(2);
        let e = opened_error(connect(NoTls, &config, &settings).await);
        assert_eq!(e.source().unwrap().to_string(), "invalid number of ports");
    }
}
