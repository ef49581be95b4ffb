//! Linking a connection's activity record to the pooled object that ends
//! up holding it.
//!
//! [`WatchedConnect`](super::connect::WatchedConnect) makes the record
//! when it opens the connection, but deadpool-postgres wraps the client in
//! a [`ClientWrapper`] afterwards, out of its sight. Two steps bridge the
//! gap:
//!
//! 1. on success, `WatchedConnect` **offers** the record to [`Claims`],
//!    under the current tokio task (or thread, outside a task);
//! 2. a `post_create` hook ([`post_create`]) **claims** it from the same
//!    task and files it in the [`Directory`] under the wrapper's key.
//!
//! deadpool runs `Manager::create` and then the `post_create` hooks in the
//! same task (deadpool 0.13.1, `Pool::try_create`), so a hook claims its
//! own connection even while other tasks create connections on other
//! threads, or user hooks await in between. Should one task create two
//! connections at once (`join!` of two `get()`s), the hook tells them
//! apart by backend pid: the one the client's cancel token carries
//! ([`backend_pid_of`]) against the one the observer read.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use deadpool::managed::Hook;
use deadpool_postgres::{ClientWrapper, Manager, StatementCache};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use super::wire::framing::{CANCEL_REQUEST_CODE, SSL_REQUEST_CODE};
use crate::ledger::connection::ConnectionActivity;
use crate::ledger::Ticks;

/// Who offered a record: the task that created the connection, or the
/// thread outside any task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Creator {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Creator {
    fn current() -> Self {
        tokio::task::try_id().map_or_else(
            || Creator::Thread(std::thread::current().id()),
            Creator::Task,
        )
    }
}

/// Records of connections just opened, waiting for their `post_create`
/// hook.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    offered: Mutex<Vec<(Creator, Arc<ConnectionActivity>)>>,
}

impl Claims {
    /// Offers the record of a connection the current task just opened.
    /// Records of connections that closed unclaimed (their object was
    /// never made, or a hook before ours failed) are dropped here.
    pub(crate) fn offer(&self, activity: Arc<ConnectionActivity>) {
        let mut offered = self.offered.lock();
        offered.retain(|(_, activity)| !activity.is_closed());
        offered.push((Creator::current(), activity));
    }

    /// Takes the record of a connection the current task opened: the one
    /// whose backend pid is `backend_pid` when known, else the only one.
    pub(crate) fn claim(&self, backend_pid: Option<i32>) -> Option<Arc<ConnectionActivity>> {
        let me = Creator::current();
        let mut offered = self.offered.lock();
        offered.retain(|(_, activity)| !activity.is_closed());
        let mine = offered.iter().enumerate().filter(|(_, (by, _))| *by == me);
        let index = match backend_pid {
            Some(pid) => mine
                .filter(|(_, (_, activity))| {
                    activity.reading(Ticks::now()).backend_pid == Some(pid)
                })
                .map(|(i, _)| i)
                .next(),
            None => {
                let mut mine = mine.map(|(i, _)| i);
                match (mine.next(), mine.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }?;
        Some(offered.swap_remove(index).1)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.offered.lock().len()
    }
}

/// The identity of a pooled connection: the address of the statement
/// cache its [`ClientWrapper`] owns for its whole life (shared with its
/// transactions). The same key as `call::connection_key`.
pub(crate) fn connection_key(cache: &Arc<StatementCache>) -> usize {
    Arc::as_ptr(cache) as *const () as usize
}

/// Activity records by connection key.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    by_key: Mutex<HashMap<usize, Arc<ConnectionActivity>>>,
}

impl Directory {
    /// Files `activity` under `client`'s key. The record reserves the key's
    /// allocation (a `Weak` to the statement cache), so the address cannot
    /// be reused by another connection while the entry exists; entries
    /// whose object is gone are dropped here.
    pub(crate) fn insert(&self, client: &ClientWrapper, activity: Arc<ConnectionActivity>) {
        let alive: Weak<dyn Any + Send + Sync> = Arc::downgrade(&client.statement_cache) as _;
        activity.reserve(alive);
        let mut by_key = self.by_key.lock();
        by_key.retain(|_, activity| activity.object_alive());
        by_key.insert(connection_key(&client.statement_cache), activity);
    }

    /// The record of the connection with this key, while its object lives.
    pub(crate) fn find(&self, key: usize) -> Option<Arc<ConnectionActivity>> {
        self.by_key
            .lock()
            .get(&key)
            .filter(|activity| activity.object_alive())
            .cloned()
    }

    /// The record of `client`'s connection.
    pub(crate) fn find_client(&self, client: &ClientWrapper) -> Option<Arc<ConnectionActivity>> {
        self.find(connection_key(&client.statement_cache))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.lock().len()
    }
}

/// The `post_create` hook linking each new connection's record: claims
/// the record the current task's `WatchedConnect` offered and files it
/// under the new object's key. Synchronous: no round trip. A connection
/// without a record (not opened by `WatchedConnect`) is left unlinked.
pub(crate) fn post_create(claims: Arc<Claims>, directory: Arc<Directory>) -> Hook<Manager> {
    Hook::sync_fn(move |client: &mut ClientWrapper, _| {
        if let Some(activity) = claims.claim(backend_pid_of(client)) {
            directory.insert(client, activity);
        }
        Ok(())
    })
}

/// The backend pid of `client`'s connection, without a round trip.
///
/// tokio-postgres keeps the pid private, but its cancel token writes it:
/// `CancelToken::cancel_query_raw` sends a `CancelRequest` (pid and key)
/// down whatever stream it is given. Given an in-memory stream (and a
/// pretend TLS layer, should the token want TLS) it completes at once;
/// the pid is read back and the rest, the key, wiped.
pub(crate) fn backend_pid_of(client: &tokio_postgres::Client) -> Option<i32> {
    let token = client.cancel_token();
    let mut written = Vec::new();
    let outcome = {
        let mut request = pin!(token.cancel_query_raw(Recorder::new(&mut written), PretendTls));
        request
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    };
    let pid = match outcome {
        Poll::Ready(Ok(())) => cancel_request_pid(&written),
        _ => None,
    };
    written.fill(0);
    pid
}

/// The pid of the `CancelRequest` at the end of `written`.
fn cancel_request_pid(written: &[u8]) -> Option<i32> {
    let request = written.get(written.len().checked_sub(16)?..)?;
    let word = |at: usize| {
        [
            request[at],
            request[at + 1],
            request[at + 2],
            request[at + 3],
        ]
    };
    (u32::from_be_bytes(word(0)) == 16 && u32::from_be_bytes(word(4)) == CANCEL_REQUEST_CODE)
        .then(|| i32::from_be_bytes(word(8)))
}

/// An in-memory stream keeping what is written (a few dozen bytes at
/// most), answering an `SSLRequest` with "yes", and then end-of-stream.
struct Recorder<'a> {
    written: &'a mut Vec<u8>,
    answered: bool,
}

impl<'a> Recorder<'a> {
    fn new(written: &'a mut Vec<u8>) -> Self {
        Self {
            written,
            answered: false,
        }
    }
}

impl AsyncRead for Recorder<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        const SSL_REQUEST: [u8; 8] = {
            let code = SSL_REQUEST_CODE.to_be_bytes();
            [0, 0, 0, 8, code[0], code[1], code[2], code[3]]
        };
        let this = self.get_mut();
        if !this.answered && this.written.ends_with(&SSL_REQUEST) && buf.remaining() > 0 {
            this.answered = true;
            buf.put_slice(b"S");
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Recorder<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.written.len() + buf.len() > 64 {
            return Poll::Ready(Err(io::Error::other("more than a cancel request")));
        }
        this.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A "TLS layer" that is the stream itself, so the cancel request is
/// written in the clear to the [`Recorder`] whatever the `sslmode`.
struct PretendTls;

struct PretendTlsStream<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsConnect<S> for PretendTls {
    type Stream = PretendTlsStream<S>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<PretendTlsStream<S>>>;

    fn connect(self, stream: S) -> Self::Future {
        std::future::ready(Ok(PretendTlsStream(stream)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PretendTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PretendTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PretendTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity_with_pid(pid: i32) -> Arc<ConnectionActivity> {
        let activity = ConnectionActivity::new();
        activity.writer().backend_pid(pid);
        activity
    }

    #[test]
    fn claims_match_by_creator_and_pid() {
        Ticks::init();
        let claims = Claims::default();
        claims.offer(activity_with_pid(1));
        claims.offer(activity_with_pid(2));
        // Two offers by this thread: only the pid tells them apart.
        assert!(claims.claim(None).is_none());
        assert!(claims.claim(Some(3)).is_none());
        let two = claims.claim(Some(2)).unwrap();
        assert_eq!(two.reading(Ticks::now()).backend_pid, Some(2));
        // One left: it is ours without a pid.
        assert!(claims.claim(None).is_some());
        assert_eq!(claims.len(), 0);

        // Another thread's offer is not ours.
        let claims = Arc::new(Claims::default());
        let theirs = claims.clone();
        std::thread::spawn(move || theirs.offer(activity_with_pid(5)))
            .join()
            .unwrap();
        assert!(claims.claim(Some(5)).is_none());
        assert!(claims.claim(None).is_none());

        // Closed records are pruned.
        let closed = activity_with_pid(6);
        closed.writer().closed(Ticks::now());
        claims.offer(closed);
        assert!(claims.claim(Some(6)).is_none());
        assert_eq!(claims.len(), 1, "only the other thread's live offer");
    }

    #[test]
    fn cancel_request_pid_reads_only_a_cancel_request() {
        let mut request = 16u32.to_be_bytes().to_vec();
        request.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        request.extend_from_slice(&4242i32.to_be_bytes());
        request.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(cancel_request_pid(&request), Some(4242));
        let mut after_ssl = 8u32.to_be_bytes().to_vec();
        after_ssl.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        after_ssl.extend_from_slice(&request);
        assert_eq!(cancel_request_pid(&after_ssl), Some(4242));
        assert_eq!(cancel_request_pid(&request[1..]), None);
        request[7] ^= 1;
        assert_eq!(cancel_request_pid(&request), None);
    }

    #[tokio::test]
    async fn directory_entries_live_as_long_as_their_object() {
        Ticks::init();
        let directory = Directory::default();
        let (client, _task) = dead_client().await;
        let wrapper = ClientWrapper::new(client, tokio::spawn(async {}));
        let key = connection_key(&wrapper.statement_cache);
        directory.insert(&wrapper, activity_with_pid(9));
        assert_eq!(
            directory
                .find_client(&wrapper)
                .unwrap()
                .reading(Ticks::now())
                .backend_pid,
            Some(9)
        );
        drop(wrapper);
        assert!(directory.find(key).is_none());
        let (client, _task) = dead_client().await;
        let other = ClientWrapper::new(client, tokio::spawn(async {}));
        directory.insert(&other, activity_with_pid(10));
        assert_eq!(directory.len(), 1, "the dead entry was pruned");
    }

    /// A `tokio_postgres::Client` over an in-memory server that accepts
    /// trust authentication (pid 77) and then hangs up.
    async fn dead_client() -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client_side, mut server_side) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let _ = server_side.read(&mut buf).await;
            let _ = server_side
                .write_all(b"R\0\0\0\x08\0\0\0\0K\0\0\0\x0c\0\0\0\x4d\0\0\0\x01Z\0\0\0\x05I")
                .await;
        });
        let mut config = tokio_postgres::Config::new();
        config
            .user("u")
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) = config
            .connect_raw(client_side, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = connection.await;
            let _ = server.await;
        });
        (client, task)
    }

    #[tokio::test]
    async fn backend_pid_of_reads_the_cancel_token() {
        let (client, _task) = dead_client().await;
        assert_eq!(backend_pid_of(&client), Some(77));
    }
}
