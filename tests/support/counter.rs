//! A deadpool `Manager` with no database behind it: each object is a
//! number, created instantly. For tests of the core that need no server
//! (and pools of thousands of objects).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use deadpool::managed::{Manager, Metrics, Pool, RecycleResult};

/// Hands out numbered objects.
#[derive(Debug, Default)]
pub struct Counter {
    next: AtomicU32,
}

impl Manager for Counter {
    type Type = u32;
    type Error = std::convert::Infallible;

    async fn create(&self) -> Result<u32, Self::Error> {
        Ok(self.next.fetch_add(1, Ordering::Relaxed))
    }

    async fn recycle(&self, _: &mut u32, _: &Metrics) -> RecycleResult<Self::Error> {
        Ok(())
    }
}

/// A pool of at most `max_size` counters, with tokio as its runtime (so
/// wait timeouts work).
pub fn pool(max_size: usize) -> Pool<Counter> {
    Pool::builder(Counter::default())
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a counter pool")
}
