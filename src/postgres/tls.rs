//! TLS under observation: [`ObservedTls`] wraps the user's
//! `TlsConnect<Socket>` so that, when tokio-postgres engages TLS, the raw
//! [`Socket`] stops parsing (it now carries ciphertext) and the TLS
//! stream is wrapped in an [`Observed`] that follows the plaintext, for
//! the same activity record, from the startup phase on.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio_postgres::tls::TlsConnect;

use super::socket::{Observed, Observer, Socket};

/// tokio-postgres's message when TLS is asked for without a hostname to
/// verify (a Unix socket, or `hostaddr` without `host`).
const NO_HOSTNAME: &str = "no hostname provided for TLS handshake";

/// The user's TLS connector, observed.
pub(crate) struct ObservedTls<C> {
    inner: C,
    /// Whether the connection has a hostname. `Config::connect_raw` always
    /// behaves as if it had one; tokio-postgres's `connect` refuses TLS
    /// without one, and so does this wrapper, at the same point.
    has_hostname: bool,
}

impl<C> ObservedTls<C> {
    pub(crate) fn new(inner: C, has_hostname: bool) -> Self {
        Self {
            inner,
            has_hostname,
        }
    }
}

impl<C> TlsConnect<Socket> for ObservedTls<C>
where
    C: TlsConnect<Socket>,
{
    type Stream = Observed<C::Stream>;
    type Error = Box<dyn Error + Sync + Send>;
    type Future = Handshake<C::Future>;

    fn connect(self, mut socket: Socket) -> Self::Future {
        if !self.has_hostname {
            return Handshake {
                handshake: None,
                observer: None,
            };
        }
        let observer = socket.hand_over_to_tls();
        Handshake {
            handshake: Some(self.inner.connect(socket)),
            observer: Some(observer),
        }
    }
}

pin_project! {
    /// The user's TLS handshake; its stream comes out observed.
    pub(crate) struct Handshake<F> {
        // `None`: refused for want of a hostname.
        #[pin]
        handshake: Option<F>,
        observer: Option<Observer>,
    }
}

impl<F, S, E> Future for Handshake<F>
where
    F: Future<Output = Result<S, E>>,
    E: Into<Box<dyn Error + Sync + Send>>,
{
    type Output = Result<Observed<S>, Box<dyn Error + Sync + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(handshake) = this.handshake.as_pin_mut() else {
            return Poll::Ready(Err(NO_HOSTNAME.into()));
        };
        match handshake.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(stream)) => match this.observer.take() {
                Some(observer) => Poll::Ready(Ok(Observed::new(stream, observer))),
                None => Poll::Ready(Err("TLS handshake polled after it completed".into())),
            },
        }
    }
}
