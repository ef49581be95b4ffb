//! Facts about each pooled connection that outlive one checkout: the
//! server's process id (learnt once, when the connection is created) and
//! who returned it last (so a problem found at the next checkout can name
//! the code that left it).

use std::any::Any;
use std::collections::HashMap;
use std::panic::Location;
use std::sync::Weak;

use parking_lot::Mutex;

/// Who returned a connection last.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LastHolder {
    pub(crate) guard: u64,
    pub(crate) location: &'static Location<'static>,
    /// The holder's own tracking already reported an open transaction.
    pub(crate) reported_open_transaction: bool,
}

struct Entry {
    /// Keeps the connection's identity allocation from being reused while
    /// the entry exists, and tells whether the connection is still alive.
    alive: Weak<dyn Any + Send + Sync>,
    backend_pid: Option<i32>,
    last_holder: Option<LastHolder>,
}

/// Per-connection facts of one pool, keyed by the address of an allocation
/// the connection owns for its whole life.
#[derive(Default)]
pub(crate) struct Connections {
    entries: Mutex<HashMap<usize, Entry>>,
}

impl Connections {
    /// Remembers a new connection's backend pid. Entries of connections
    /// that are gone are pruned here, so the table stays the pool's size.
    pub(crate) fn register(&self, key: usize, alive: Weak<dyn Any + Send + Sync>, pid: i32) {
        let mut entries = self.entries.lock();
        if entries.len() >= 16 && entries.len().is_power_of_two() {
            entries.retain(|_, e| e.alive.strong_count() > 0);
        }
        entries.insert(
            key,
            Entry {
                alive,
                backend_pid: Some(pid),
                last_holder: None,
            },
        );
    }

    pub(crate) fn backend_pid(&self, key: usize) -> Option<i32> {
        self.entries.lock().get(&key).and_then(|e| e.backend_pid)
    }

    /// Records who returned the connection; a no-op for connections never
    /// registered (pools built without the hooks).
    pub(crate) fn returned(&self, key: usize, holder: LastHolder) {
        if let Some(entry) = self.entries.lock().get_mut(&key) {
            entry.last_holder = Some(holder);
        }
    }

    pub(crate) fn last_holder(&self, key: usize) -> Option<LastHolder> {
        self.entries.lock().get(&key).and_then(|e| e.last_holder)
    }
}
