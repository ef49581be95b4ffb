//! What every shard reads besides its own state: the cap on call sites,
//! the integration's connection directory, the count of callers waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::connection::ConnectionActivity;
use super::lag::LagRecorder;
use crate::site::CallSite;

/// The database integration's table of connections: how the ledger finds
/// a connection's activity record from the key the integration gave the
/// pool (asked once per connection and shard, never per checkout).
pub(crate) trait ConnectionDirectory: Send + Sync {
    fn find(&self, key: usize) -> Option<Arc<ConnectionActivity>>;
}

/// Decides which call sites get statistics of their own (bounded memory).
pub(crate) struct Sites {
    pub(super) max_sites: usize,
    /// Each admitted site with its rank (order of first sight).
    pub(super) known: Mutex<HashMap<CallSite, u32>>,
    /// Checkouts per site, shared by the shards (`leak-report` sampling).
    #[cfg(feature = "leak-report")]
    pub(super) stack_counters: Mutex<HashMap<CallSite, Arc<std::sync::atomic::AtomicU64>>>,
}

impl Sites {
    /// The site itself and its rank while under the cap (or already
    /// known), else the overflow bucket. Runs once per origin and shard,
    /// never on the hot path.
    pub(crate) fn admit(&self, site: CallSite) -> (CallSite, Option<u32>) {
        let mut known = self.known.lock();
        if let Some(&rank) = known.get(&site) {
            return (site, Some(rank));
        }
        if known.len() < self.max_sites {
            let rank = known.len() as u32;
            known.insert(site, rank);
            return (site, Some(rank));
        }
        (CallSite::OVERFLOW, None)
    }

    /// The checkout counter of an admitted site (or of the overflow
    /// bucket). Runs once per origin and shard.
    #[cfg(feature = "leak-report")]
    pub(crate) fn stack_counter(&self, site: CallSite) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(self.stack_counters.lock().entry(site).or_default())
    }
}

/// Callers waiting right now, pool-wide, and the most at once since the
/// last tick. Touched only by acquires that have to wait.
#[derive(Default)]
pub(crate) struct Waiting {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Waiting {
    pub(super) fn started(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(super) fn ended(&self) {
        // Never below zero, whatever the interleaving.
        let _ = self
            .now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Callers waiting now.
    pub(crate) fn current(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// The peak since the last call; the next period starts at the
    /// current count.
    pub(super) fn take_peak(&self) -> usize {
        self.peak.swap(self.current(), Ordering::Relaxed)
    }

    /// The peak since the last tick, without starting a new period.
    pub(super) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// What every shard reads besides its own state.
pub(crate) struct Common {
    pub(crate) sites: Sites,
    pub(super) directory: OnceLock<Arc<dyn ConnectionDirectory>>,
    pub(crate) waiting: Waiting,
    /// The runtime's scheduling delay while callers wait.
    pub(crate) lag: Arc<LagRecorder>,
}

impl Common {
    pub(super) fn find_connection(&self, key: usize) -> Option<Arc<ConnectionActivity>> {
        self.directory.get()?.find(key)
    }
}
