//! The observed stream: [`Observed`] wraps any `AsyncRead + AsyncWrite`
//! and feeds what passes through it to the wire protocol follower, which
//! writes the connection's [`ConnectionActivity`]; [`Socket`] is the TCP or
//! Unix stream a connection starts on, observed.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::tls::{ChannelBinding, TlsStream};

use super::wire::{Events, Outcome, Protocol, WireSettings, MAX_PENDING};
use crate::export::{operation_of, ConnectionMetrics, Operation};
use crate::ledger::connection::{ActivityWriter, ConnectionActivity, TransactionState};
use crate::ledger::Ticks;

/// What the observer does with the bytes.
enum Mode {
    /// Following the protocol.
    Parsing(Box<Protocol>),
    /// The bytes are ciphertext: the observer above the TLS layer follows
    /// the protocol; this one only notices the connection ending.
    Passthrough,
    /// The protocol went somewhere the observer cannot follow; the
    /// activity record says so.
    Lost,
}

/// One reported request on its way: when it went out, what it runs, how
/// it failed. Kept only while the pool records metrics.
#[derive(Clone, Copy, Debug)]
struct Call {
    sent: Ticks,
    operation: Option<Operation>,
    named: bool,
    failed: Option<[u8; 5]>,
    /// Prepares a statement the connection's next call runs.
    prepare_only: bool,
}

/// The calls in flight on a connection, in protocol order, and where
/// their durations go (`db.client.operation.duration`).
struct Calls {
    metrics: ConnectionMetrics,
    pending: VecDeque<Call>,
    /// When an answered prepare-only request went out, and when it was
    /// answered: a call sent right after the answer started then
    /// (tokio-postgres's `query(&str, ..)` is a prepare and an execute, one
    /// operation to its caller).
    prepared: Option<(Ticks, Ticks)>,
    /// The last statement named and its operation name: a prepared
    /// statement's text is the same `Arc` at every run, so its name is
    /// found once.
    named: Option<(Arc<str>, Option<Operation>)>,
}

/// How soon after a prepare's answer the next request must go out to be
/// the call that prepare was for (the client sends it as soon as it reads
/// the answer); later, the prepare was the caller's own (`prepare()`, then
/// work, then a query) and is not counted.
const PREPARE_FOLLOWED_WITHIN: std::time::Duration = std::time::Duration::from_millis(1);

impl Calls {
    /// Calls are followed only for a pool's connection, and only when
    /// there is a recorder to hear of them.
    fn for_settings(settings: &WireSettings) -> Option<Calls> {
        let metrics = settings.metrics.get()?;
        metrics.enabled().then(|| Calls {
            metrics: metrics.clone(),
            pending: VecDeque::new(),
            prepared: None,
            named: None,
        })
    }
}

/// Follows one stream's bytes and writes the connection's activity.
pub(crate) struct Observer {
    activity: Arc<ConnectionActivity>,
    calls: Option<Calls>,
    settings: Arc<WireSettings>,
    own_once: Option<&'static str>,
    mode: Mode,
    /// Follows the plaintext above a TLS layer (where another encryption
    /// request cannot make sense).
    above_tls: bool,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.mode {
            Mode::Parsing(_) => "parsing",
            Mode::Passthrough => "passthrough",
            Mode::Lost => "lost",
        })
    }
}

/// The activity writer for one batch of bytes: locks the record and reads
/// the clock at the first event, once, and not at all for a batch with
/// nothing to report.
struct Batch<'a> {
    activity: &'a ConnectionActivity,
    writer: Option<(ActivityWriter<'a>, Ticks)>,
    calls: Option<&'a mut Calls>,
}

impl<'a> Batch<'a> {
    fn new(activity: &'a ConnectionActivity, calls: Option<&'a mut Calls>) -> Self {
        Self {
            activity,
            writer: None,
            calls,
        }
    }

    fn writer(&mut self) -> (&mut ActivityWriter<'a>, Ticks) {
        let (writer, now) = self
            .writer
            .get_or_insert_with(|| (self.activity.writer(), Ticks::now()));
        (writer, *now)
    }
}

impl Events for Batch<'_> {
    fn request_sent(&mut self) {
        let (writer, now) = self.writer();
        writer.request_sent(now);
        if let Some(calls) = self.calls.as_deref_mut() {
            // The wire layer bounds its requests by MAX_PENDING; so does
            // this (an unmatched answer then records nothing).
            if calls.pending.len() < MAX_PENDING {
                let sent = match calls.prepared.take() {
                    Some((sent, answered)) if answered.until(now) <= PREPARE_FOLLOWED_WITHIN => {
                        sent
                    }
                    _ => now,
                };
                calls.pending.push_back(Call {
                    sent,
                    operation: None,
                    named: false,
                    failed: None,
                    prepare_only: false,
                });
            }
        }
    }

    fn statement(&mut self, text: &Arc<str>) {
        self.writer().0.statement(text.clone());
        let Some(calls) = self.calls.as_deref_mut() else {
            return;
        };
        // The statement event follows its request's.
        let Some(call) = calls.pending.back_mut() else {
            return;
        };
        if !call.named {
            call.named = true;
            call.operation = match &calls.named {
                Some((last, operation)) if Arc::ptr_eq(last, text) => *operation,
                _ => {
                    let operation = operation_of(text);
                    calls.named = Some((text.clone(), operation));
                    operation
                }
            };
        }
    }

    fn request_withdrawn(&mut self) {
        let (writer, now) = self.writer();
        writer.request_withdrawn(now);
        // A `Sync` sent during `COPY FROM STDIN`: the newest request.
        if let Some(calls) = self.calls.as_deref_mut() {
            calls.pending.pop_back();
        }
    }

    fn ready(&mut self, state: TransactionState) {
        let (writer, now) = self.writer();
        writer.ready(now, state);
        if let Some(calls) = self.calls.as_deref_mut() {
            if let Some(call) = calls.pending.pop_front() {
                if call.prepare_only && call.failed.is_none() {
                    calls.prepared = Some((call.sent, now));
                } else {
                    let took = call.sent.until(now);
                    calls.metrics.operation(took, call.operation, call.failed);
                }
            }
            if calls.pending.is_empty() && calls.pending.capacity() > 64 {
                calls.pending.shrink_to(64);
            }
        }
    }

    fn prepare_only(&mut self) {
        if let Some(call) = self.calls.as_deref_mut().and_then(|c| c.pending.back_mut()) {
            call.prepare_only = true;
        }
    }

    fn call_failed(&mut self, sqlstate: [u8; 5]) {
        // For the transaction it fails: a `?` on this error that drops a
        // transaction is no early return of the code's own.
        self.writer().0.call_failed(sqlstate);
        if let Some(call) = self
            .calls
            .as_deref_mut()
            .and_then(|c| c.pending.front_mut())
        {
            call.failed = Some(sqlstate);
        }
    }

    fn transaction_reported(&mut self, state: TransactionState) {
        let (writer, now) = self.writer();
        writer.transaction_reported(now, state);
    }

    fn backend_pid(&mut self, pid: i32) {
        self.writer().0.backend_pid(pid);
    }
}

/// Which way bytes went.
#[derive(Clone, Copy)]
enum Flow {
    Written,
    Read,
}

impl Observer {
    /// An observer of a connection about to start up. `own_once` is a
    /// query the connection's setup sends once that is not the user's.
    pub(crate) fn new(
        activity: Arc<ConnectionActivity>,
        settings: Arc<WireSettings>,
        own_once: Option<&'static str>,
    ) -> Self {
        let mode = Mode::Parsing(Box::new(Protocol::new(&settings, own_once)));
        Self {
            activity,
            calls: Calls::for_settings(&settings),
            settings,
            own_once,
            mode,
            above_tls: false,
        }
    }

    /// TLS is being engaged on this stream: it stops parsing (what follows
    /// is ciphertext), and the returned observer follows the plaintext
    /// above the TLS layer, from the startup phase, for the same record.
    pub(crate) fn hand_over_to_tls(&mut self) -> Observer {
        let mode = match self.mode {
            Mode::Lost => Mode::Lost,
            Mode::Parsing(_) | Mode::Passthrough => {
                Mode::Parsing(Box::new(Protocol::new(&self.settings, self.own_once)))
            }
        };
        if !matches!(self.mode, Mode::Lost) {
            self.mode = Mode::Passthrough;
        }
        Observer {
            activity: self.activity.clone(),
            calls: Calls::for_settings(&self.settings),
            settings: self.settings.clone(),
            own_once: self.own_once,
            mode,
            above_tls: true,
        }
    }

    fn observe(&mut self, flow: Flow, bytes: &[u8]) {
        let Mode::Parsing(protocol) = &mut self.mode else {
            return;
        };
        let mut batch = Batch::new(&self.activity, self.calls.as_mut());
        let outcome = match flow {
            Flow::Written => protocol.written(bytes, &mut batch),
            Flow::Read => protocol.read(bytes, &mut batch),
        };
        let outcome = match outcome {
            Outcome::Encrypted if self.above_tls => {
                Outcome::Lost("encryption requested inside TLS")
            }
            outcome => outcome,
        };
        match outcome {
            Outcome::Continue => {}
            // The TLS layer's observer takes over (`hand_over_to_tls`).
            Outcome::Encrypted => self.mode = Mode::Passthrough,
            Outcome::Lost(reason) => {
                // Said once per connection by the pool's reactions, when
                // its hold ends (the observer knows no pool).
                let (writer, now) = batch.writer();
                writer.lost(now, reason);
                drop(batch);
                self.mode = Mode::Lost;
            }
        }
    }

    /// The connection ended (EOF, an I/O error, the stream dropped).
    fn closed(&self) {
        self.activity.writer().closed(Ticks::now());
    }
}

/// A stream whose traffic is followed by an [`Observer`]: frontend bytes
/// in `poll_write` (only those the inner stream accepted), backend bytes
/// in `poll_read` (only the newly filled part of the buffer).
pub(crate) struct Observed<S> {
    inner: S,
    observer: Observer,
}

impl<S: fmt::Debug> fmt::Debug for Observed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observed")
            .field("inner", &self.inner)
            .field("observer", &self.observer)
            .finish()
    }
}

impl<S> Observed<S> {
    pub(crate) fn new(inner: S, observer: Observer) -> Self {
        Self { inner, observer }
    }

    pub(crate) fn observer_mut(&mut self) -> &mut Observer {
        &mut self.observer
    }
}

impl<S> Drop for Observed<S> {
    fn drop(&mut self) {
        self.observer.closed();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Observed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                let new = buf.filled().get(before..).unwrap_or_default();
                if new.is_empty() {
                    if had_room {
                        this.observer.closed();
                    }
                } else {
                    this.observer.observe(Flow::Read, new);
                }
            }
            Poll::Ready(Err(_)) => this.observer.closed(),
            Poll::Pending => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Observed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        match &polled {
            Poll::Ready(Ok(n)) => {
                let accepted = buf.get(..*n).unwrap_or(buf);
                this.observer.observe(Flow::Written, accepted);
            }
            Poll::Ready(Err(_)) => this.observer.closed(),
            Poll::Pending => {}
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match &polled {
            Poll::Ready(Ok(n)) => {
                let mut left = *n;
                for buf in bufs {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(buf.len());
                    this.observer.observe(Flow::Written, &buf[..take]);
                    left -= take;
                }
            }
            Poll::Ready(Err(_)) => this.observer.closed(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Err(_)) = &polled {
            this.observer.closed();
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        if polled.is_ready() {
            this.observer.closed();
        }
        polled
    }
}

impl<S: TlsStream + Unpin> TlsStream for Observed<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// The transport under the observer.
#[derive(Debug)]
pub(crate) enum Transport {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Transport::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The stream a watched PostgreSQL connection runs on: a TCP or Unix
/// socket whose traffic poolwatch follows to see every database call,
/// whichever code path made it.
///
/// It takes the place of [`tokio_postgres::Socket`], which cannot be built
/// outside tokio-postgres. A TLS connector is therefore given to poolwatch
/// as a [`MakeTlsConnect<poolwatch::postgres::Socket>`]; [`NoTls`],
/// postgres-openssl, postgres-native-tls and tokio-postgres-rustls
/// implement `MakeTlsConnect<S>` for any suitable stream `S`, this one
/// included. When TLS is engaged, poolwatch follows the plaintext above
/// the TLS layer and this socket only carries the ciphertext.
///
/// A service never builds a `Socket`; it only names it where its code is
/// generic over the TLS connector:
///
/// ```
/// use poolwatch::postgres::Socket;
/// use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
///
/// /// What a connector must be to be watched (the bounds
/// /// deadpool-postgres puts on its own connectors, for this socket).
/// fn accepts<T>(_tls: T)
/// where
///     T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
///     T::Stream: Sync + Send,
///     T::TlsConnect: Sync + Send,
///     <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
/// {
/// }
///
/// accepts(tokio_postgres::NoTls);
/// ```
///
/// [`MakeTlsConnect<poolwatch::postgres::Socket>`]: tokio_postgres::tls::MakeTlsConnect
/// [`NoTls`]: tokio_postgres::NoTls
pub struct Socket(Observed<Transport>);

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("stream", &self.0.inner)
            .field("observer", &self.0.observer)
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(transport: Transport, observer: Observer) -> Self {
        Self(Observed::new(transport, observer))
    }

    /// TLS is being engaged on this socket; see
    /// [`Observer::hand_over_to_tls`].
    pub(crate) fn hand_over_to_tls(&mut self) -> Observer {
        self.0.observer_mut().hand_over_to_tls()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn assert_socket_bounds<
        T: AsyncRead + AsyncWrite + Unpin + fmt::Debug + Send + Sync + 'static,
    >() {
    }

    #[test]
    fn socket_has_the_bounds_connectors_need() {
        assert_socket_bounds::<Socket>();
    }

    /// The observer over an in-memory pipe: statements written, "ready"
    /// read, and the end of the stream.
    #[tokio::test]
    async fn observed_pipe_reports_requests_ready_and_close() {
        Ticks::init();
        let (client, mut server) = tokio::io::duplex(64);
        let activity = ConnectionActivity::new();
        let observer = Observer::new(activity.clone(), Arc::default(), None);
        let mut observed = Observed::new(client, observer);

        let mut startup = Vec::new();
        startup.extend_from_slice(&17u32.to_be_bytes());
        startup.extend_from_slice(&196_608u32.to_be_bytes());
        startup.extend_from_slice(b"user\0me\0\0");
        observed.write_all(&startup).await.unwrap();
        observed.write_all(b"Q\0\0\0\x0dSELECT 1\0").await.unwrap();
        let mut sink = vec![0; startup.len() + 14];
        server.read_exact(&mut sink).await.unwrap();
        assert_eq!(activity.reading(Ticks::now()).in_flight, 1);

        // K (pid 7), Z for the startup, Z for the query; one byte at a
        // time through a 1-byte read buffer.
        let answer = b"K\0\0\0\x0c\0\0\0\x07\0\0\0\0Z\0\0\0\x05IZ\0\0\0\x05T";
        server.write_all(answer).await.unwrap();
        let mut byte = [0u8; 1];
        for _ in 0..answer.len() {
            observed.read_exact(&mut byte).await.unwrap();
        }
        let reading = activity.reading(Ticks::now());
        assert_eq!(reading.backend_pid, Some(7));
        assert_eq!(reading.in_flight, 0);
        assert_eq!(reading.transaction, TransactionState::Open);
        assert_eq!(reading.last_statement.as_deref(), Some("SELECT 1"));
        assert_eq!(reading.totals.statements, 1);
        assert!(!reading.closed);

        drop(server);
        assert_eq!(observed.read(&mut byte).await.unwrap(), 0);
        assert!(activity.reading(Ticks::now()).closed);
    }

    #[tokio::test]
    async fn garbage_marks_the_activity_lost_without_panicking() {
        Ticks::init();
        let (client, _server) = tokio::io::duplex(1024);
        let activity = ConnectionActivity::new();
        let mut observed = Observed::new(
            client,
            Observer::new(activity.clone(), Arc::default(), None),
        );
        observed.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(activity.observation_lost());
        assert!(activity.reading(Ticks::now()).closed);
        // Still a working stream.
        observed.write_all(b"more").await.unwrap();
    }
}
