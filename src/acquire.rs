//! [`Acquire`]: the future `WatchedPool::get` returns. It polls deadpool's
//! acquire and opens the checkout record when the object arrives.
//!
//! Written by hand rather than as an `async fn`: an `async` wrapper moves
//! deadpool's 232-byte object through its own state several times (each a
//! `memcpy`), which cost more than the bookkeeping; here the object goes
//! from deadpool's result straight into the guard.

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};

use deadpool::managed::{Manager, Object, PoolError};
use pin_project_lite::pin_project;

use crate::guard::Guard;
use crate::ledger::Ticks;
use crate::pool::WatchedPool;

pin_project! {
    /// A checkout in progress: deadpool's acquire, timed.
    pub(crate) struct Acquire<'a, M: Manager, F> {
        #[pin]
        acquire: F,
        pool: &'a WatchedPool<M>,
        location: &'static Location<'static>,
        // Read only if the acquire has to wait: one that completes on its
        // first poll waited for nothing (the common case on a warm pool).
        waiting_since: Option<Ticks>,
    }
}

impl<'a, M: Manager, F> Acquire<'a, M, F> {
    pub(crate) fn new(
        pool: &'a WatchedPool<M>,
        location: &'static Location<'static>,
        acquire: F,
    ) -> Self {
        Self {
            acquire,
            pool,
            location,
            waiting_since: None,
        }
    }
}

impl<M: Manager, F> Future for Acquire<'_, M, F>
where
    F: Future<Output = Result<Object<M>, PoolError<M::Error>>>,
{
    type Output = Result<Guard<M>, PoolError<M::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.acquire.poll(cx) {
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    *this.waiting_since = Some(Ticks::now());
                }
                Poll::Pending
            }
            Poll::Ready(Ok(object)) => Poll::Ready(Ok(this.pool.opened(
                object,
                this.location,
                *this.waiting_since,
            ))),
            Poll::Ready(Err(error)) => {
                this.pool
                    .acquire_failed(this.location, *this.waiting_since, &error);
                Poll::Ready(Err(error))
            }
        }
    }
}
