//! The hot path, on one screen: [`Acquire`] (the future `WatchedPool::get`
//! returns) opens a checkout record when deadpool hands over the object,
//! and `Guard`'s `Drop` closes it and returns the connection. An acquire
//! that has to wait is recorded as pending while it waits (that path is
//! cold); one dropped while it waits is a cancelled acquire.
//!
//! `Acquire` is written by hand rather than as an `async fn`: an `async`
//! wrapper moves deadpool's 232-byte object through its own state several
//! times (each a `memcpy`), which cost more than the bookkeeping; here the
//! object goes from deadpool's result straight into the guard.

use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use deadpool::managed::{Manager, Object, PoolError};
use pin_project_lite::pin_project;

use crate::guard::Guard;
use crate::ledger::{Checkout, Ticks, WaitEnding};
use crate::observe::Disposal;
use crate::outcome::{AcquireFailure, Outcome};
use crate::shared::Shared;
use crate::site::{CallSite, SpanRef};
use crate::{lag_probe, observe, task};

/// An acquire that had to wait: where its pending record lives.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    since: Ticks,
    shard: usize,
    key: usize,
    /// The task, when it waits while holding a guard of this pool (a
    /// nested checkout): that guard's record learns when the wait ends.
    nested_task: Option<NonZeroU64>,
}

/// Reads the integration's connection key of a pooled object.
pub(crate) type ConnectionKey<T> = fn(&T) -> usize;

pin_project! {
    /// A checkout in progress: deadpool's acquire, timed.
    pub(crate) struct Acquire<'a, M: Manager, F> {
        #[pin]
        acquire: F,
        shared: &'a Shared,
        connection_key: Option<ConnectionKey<M::Type>>,
        location: &'static Location<'static>,
        // Set only if the acquire has to wait: one that completes on its
        // first poll waited for nothing (the common case on a warm pool).
        waiting: Option<Waiting>,
        _manager: PhantomData<fn() -> M>,
    }

    impl<M: Manager, F> PinnedDrop for Acquire<'_, M, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(waiting) = this.waiting.take() {
                cancelled(this.shared, this.location, waiting);
            }
        }
    }
}

impl<'a, M: Manager, F> Acquire<'a, M, F> {
    pub(crate) fn new(
        shared: &'a Shared,
        connection_key: Option<ConnectionKey<M::Type>>,
        location: &'static Location<'static>,
        acquire: F,
    ) -> Self {
        Self {
            acquire,
            shared,
            connection_key,
            location,
            waiting: None,
            _manager: PhantomData,
        }
    }
}

impl<M: Manager, F> std::future::Future for Acquire<'_, M, F>
where
    F: std::future::Future<Output = Result<Object<M>, PoolError<M::Error>>>,
{
    type Output = Result<Guard<M>, PoolError<M::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.acquire.poll(cx) {
            Poll::Pending => {
                if this.waiting.is_none() {
                    *this.waiting = Some(wait_started(this.shared, this.location));
                }
                Poll::Pending
            }
            Poll::Ready(Ok(object)) => {
                let waiting = this.waiting.take();
                Poll::Ready(Ok(opened(
                    this.shared,
                    object,
                    *this.connection_key,
                    this.location,
                    waiting,
                )))
            }
            Poll::Ready(Err(error)) => {
                let waiting = this.waiting.take();
                failed(this.shared, this.location, waiting, &error);
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Opens the checkout record of an acquired object and wraps it.
#[inline]
fn opened<M: Manager>(
    shared: &Shared,
    object: Object<M>,
    connection_key: Option<ConnectionKey<M::Type>>,
    location: &'static Location<'static>,
    waiting: Option<Waiting>,
) -> Guard<M> {
    let acquired = Ticks::now();
    let waited = waiting.map(|w| served(shared, w, acquired));
    let span = SpanRef::current();
    let shard = shared.ledger.local_shard();
    let (handle, key, id, site_rank) = shard.open_held(Checkout {
        location,
        span,
        task: task::current(),
        waited: waited.unwrap_or(Duration::ZERO),
        acquired,
        connection: connection_key.map(|key_of| key_of(&object)),
        panicking: std::thread::panicking(),
    });
    #[cfg(feature = "leak-report")]
    shard.capture_stack(key, shared.stacks.get());
    shared.observer.checked_out(
        id,
        || CallSite::from(location),
        || span.map(SpanRef::info),
        waited,
        site_rank,
    );
    Guard::new(object, handle, key, id)
}

impl<M: Manager> Drop for Guard<M> {
    fn drop(&mut self) {
        if self.object.is_none() {
            return; // already closed by take/into_inner
        }
        let (shard, key) = (&self.record.shard, self.record.key);
        let outcome = if std::thread::panicking() {
            Outcome::DroppedWhilePanicking
        } else {
            Outcome::Returned
        };
        let object = &mut self.object;
        // The shard stays reachable until the reaction is done, even if
        // its pool is gone.
        shard.close(key, outcome, Ticks::now(), |closed| {
            let observer = &shard.attached;
            // Return the connection before reporting, so a slow subscriber
            // does not lengthen the hold. One the next caller must not get (a
            // call still running on it, an open transaction nobody rolls
            // back) is detached and closed instead.
            let evict = closed.is_some_and(|c| observer.evicts(c));
            if evict {
                if let Some(object) = object.take() {
                    drop(Object::take(object));
                }
            } else {
                *object = None; // dropped in place, not moved out first
            }
            if let Some(closed) = closed {
                let disposal = if evict {
                    Disposal::Evicted
                } else {
                    Disposal::Returned
                };
                observer.closed(closed, disposal);
            }
        });
    }
}

/// An acquire had to wait: record it as pending, and say so if its task
/// already holds a guard of this pool (a nested checkout).
#[cold]
#[inline(never)]
fn wait_started(shared: &Shared, location: &'static Location<'static>) -> Waiting {
    let since = Ticks::now();
    let span = SpanRef::current();
    let task = task::current();
    let holder = task.and_then(|task| shared.ledger.nested_holder(task, since));
    let nested_task = task.filter(|_| holder.is_some());
    // More callers than the pool can ever serve at once (deadpool counts
    // every caller holding or waiting): queued behind others, saturation.
    // Otherwise the pool is opening a connection for this caller.
    let status = shared.observer.status();
    let callers = status.in_use() + status.waiting;
    let queued = status.max_size == 0 || callers > status.max_size;
    let shard = shared.ledger.local_shard();
    let key = shard.wait_started(location, span, since, holder.is_some(), queued);
    if queued {
        // Queued behind other callers: how fast the runtime turns its
        // tasks around now matters to how long every hold lasts.
        lag_probe::start(
            shared.ledger.lag(),
            || shared.observer.metrics.lag_metric(),
            since,
        );
    }
    if let Some(holder) = holder {
        shared.observer.nested_checkout(
            CallSite::from(location),
            span.map(SpanRef::info),
            &holder,
            since,
        );
    }
    Waiting {
        since,
        shard: shard.index(),
        key,
        nested_task,
    }
}

/// A wait ended after `waited`: a nested one's held guard learns it.
fn wait_over(shared: &Shared, waiting: &Waiting, waited: Duration) {
    if let Some(task) = waiting.nested_task {
        shared.ledger.nested_wait_ended(task, waited);
    }
}

/// A pending acquire was served at `now`: ends its pending record.
#[cold]
#[inline(never)]
fn served(shared: &Shared, waiting: Waiting, now: Ticks) -> Duration {
    if let Some(shard) = shared.ledger.shard(waiting.shard) {
        shard.wait_ended(waiting.key, now, WaitEnding::Served);
    }
    // Probed again while callers are served, not only as they start to
    // queue (a burst queues all at once).
    lag_probe::start(
        shared.ledger.lag(),
        || shared.observer.metrics.lag_metric(),
        now,
    );
    let waited = waiting.since.until(now);
    wait_over(shared, &waiting, waited);
    waited
}

/// Records a failed acquire and reports it (rate-limited).
#[cold]
#[inline(never)]
fn failed<E>(
    shared: &Shared,
    location: &'static Location<'static>,
    waiting: Option<Waiting>,
    error: &PoolError<E>,
) {
    let now = Ticks::now();
    let failure = AcquireFailure::of(error);
    let span = SpanRef::current();
    let waited = match waiting {
        Some(w) => {
            if let Some(shard) = shared.ledger.shard(w.shard) {
                shard.wait_ended(w.key, now, WaitEnding::Failed(failure));
            }
            let waited = w.since.until(now);
            wait_over(shared, &w, waited);
            waited
        }
        None => {
            shared
                .ledger
                .local_shard()
                .record_failure(location, span, failure);
            Duration::ZERO
        }
    };
    shared.observer.acquire_failed(
        CallSite::from(location),
        span.map(SpanRef::info),
        waited,
        failure,
        AcquireFailure::describe(error),
        || observe::holders_now(&shared.ledger, &shared.observer),
    );
}

/// The acquire's future was dropped while it waited.
#[cold]
#[inline(never)]
fn cancelled(shared: &Shared, location: &'static Location<'static>, waiting: Waiting) {
    let now = Ticks::now();
    let waited = shared
        .ledger
        .shard(waiting.shard)
        .and_then(|shard| shard.wait_ended(waiting.key, now, WaitEnding::Cancelled))
        .unwrap_or_else(|| waiting.since.until(now));
    wait_over(shared, &waiting, waited);
    shared.observer.acquire_cancelled(
        CallSite::from(location),
        SpanRef::current().map(SpanRef::info),
        waited,
        || observe::holders_now(&shared.ledger, &shared.observer),
    );
}
