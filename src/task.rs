//! Which task an acquire or a hold belongs to: tokio's task id where the
//! runtime provides one (the `postgres` feature brings tokio), `None`
//! otherwise: outside tokio, and in the future a `block_on` runs itself
//! (the body of `#[tokio::main]`), which is no task. Those checkouts are
//! not checked for nesting (see the README).

#[cfg(feature = "tokio")]
use std::hash::Hash;
use std::hash::Hasher;
use std::num::NonZeroU64;

/// The current task, cheaply (a thread-local read).
#[inline]
pub(crate) fn current() -> Option<NonZeroU64> {
    #[cfg(feature = "tokio")]
    {
        tokio::task::try_id().and_then(|id| {
            // `Id` keeps its number private; its `Hash` writes exactly it.
            let mut raw = RawU64(0);
            id.hash(&mut raw);
            NonZeroU64::new(raw.0)
        })
    }
    #[cfg(not(feature = "tokio"))]
    None
}

/// A hasher that keeps the one `u64` it is given.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
struct RawU64(u64);

impl Hasher for RawU64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    #[tokio::test]
    async fn spawned_tasks_have_distinct_ids() {
        // The future `block_on` runs is no task.
        assert_eq!(super::current(), None);
        let a = tokio::spawn(async { (super::current(), super::current()) });
        let b = tokio::spawn(async { super::current() });
        let (a1, a2) = a.await.unwrap();
        let b = b.await.unwrap();
        assert!(a1.is_some() && b.is_some());
        assert_eq!(a1, a2, "stable within a task");
        assert_ne!(a1, b);
    }

    #[test]
    fn none_outside_a_runtime() {
        assert_eq!(super::current(), None);
    }
}
