//! A checkout from inside a thread-local's destructor (a buffer flushed at
//! thread exit) with `leak-report`: it used to abort the process
//! ("cannot access a Thread Local Storage value during or after
//! destruction" → "thread local panicked on drop"). The instrumentation
//! must never abort or panic: the checkout is recorded, with or without a
//! stack. One test per binary: an abort would take the whole binary down.
mod support;

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};

use poolwatch::{WatchConfig, WatchedPool};
use support::counter;

static FLUSHED_AT_LINE: AtomicU32 = AtomicU32::new(0);

/// Polls a future that completes without waiting (a checkout from a pool
/// with an idle object), as code running where no runtime can be entered.
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::yield_now();
    }
}

struct FlushOnExit {
    pool: WatchedPool<counter::Counter>,
}

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        let (guard, line) = (run_ready(self.pool.get()).expect("a checkout"), line!());
        drop(guard);
        FLUSHED_AT_LINE.store(line, Ordering::SeqCst);
    }
}

thread_local! {
    static BUFFER: RefCell<Option<FlushOnExit>> = const { RefCell::new(None) };
}

#[test]
fn a_checkout_from_a_thread_local_destructor_does_not_abort() {
    let config = WatchConfig::builder()
        .pool_name("tls")
        .timeline_tick(None)
        .build()
        .unwrap();
    let pool = WatchedPool::new(counter::pool(2), config);
    // An idle object in the pool, so the checkout needs no runtime.
    drop(run_ready(pool.get()).unwrap());
    let for_thread = pool.clone();
    std::thread::spawn(move || {
        // Register our thread-local first and then use poolwatch's (a
        // checkout captures a stack with a per-thread cache): destructors
        // run in reverse order, so poolwatch's are gone when ours runs.
        let pool = for_thread.clone();
        BUFFER.with(|b| *b.borrow_mut() = Some(FlushOnExit { pool }));
        drop(run_ready(for_thread.get()).unwrap());
    })
    .join()
    .expect("the thread exits cleanly");
    let line = FLUSHED_AT_LINE.load(Ordering::SeqCst);
    assert_ne!(line, 0, "the destructor ran");
    let site = support::site_at(&pool, line);
    assert_eq!(site.checkouts, 1);
    assert_eq!(site.outcomes.returned, 1);
}
