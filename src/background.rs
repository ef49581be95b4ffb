//! One registry for poolwatch's background threads (the sampler, and the
//! watchdog's scanner under `leak-report`): each thread serves every pool
//! registered with it, starts with the first registration, sleeps until
//! the soonest pool is due (or it is woken), and exits once every pool is
//! gone. Pools register a [`Weak`] reference, so a thread never keeps a
//! pool alive.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::ledger::Ticks;

/// One pool's background work.
pub(crate) trait Background: Send + Sync {
    /// Does whatever is due at `now`; returns how soon it wants to run
    /// again.
    fn round(&self, now: Ticks) -> Duration;
}

/// Sleeps at least this long, however soon a pool says it is due.
const MIN_SLEEP: Duration = Duration::from_millis(5);
/// Looks again at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);

struct State {
    pools: Vec<Weak<dyn Background>>,
    /// A thread is running (or about to) for these pools.
    running: bool,
    /// Something changed since the thread last looked.
    woken: bool,
}

/// A background thread and the pools it serves.
pub(crate) struct Registry {
    name: &'static str,
    state: Mutex<State>,
    wake: Condvar,
}

impl Registry {
    pub(crate) const fn new(name: &'static str) -> Self {
        Self {
            name,
            state: parking_lot::const_mutex(State {
                pools: Vec::new(),
                running: false,
                woken: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Serves `pool` until its last strong reference goes away; starts the
    /// thread if none runs. An error says the thread could not start.
    pub(crate) fn register(&'static self, pool: Weak<dyn Background>) -> io::Result<()> {
        let mut state = self.state.lock();
        state.pools.push(pool);
        state.woken = true;
        self.wake.notify_one();
        if state.running {
            return Ok(());
        }
        std::thread::Builder::new()
            .name(self.name.to_owned())
            .spawn(move || self.run())?;
        state.running = true;
        Ok(())
    }

    /// Makes the thread look again now: a setting changed or a pool went
    /// away.
    pub(crate) fn wake(&self) {
        let mut state = self.state.lock();
        state.woken = true;
        self.wake.notify_one();
    }

    /// Whether the thread is running.
    pub(crate) fn running(&self) -> bool {
        self.state.lock().running
    }

    fn run(&'static self) {
        let mut state = self.state.lock();
        loop {
            state.pools.retain(|pool| pool.strong_count() > 0);
            let pools: Vec<Arc<dyn Background>> =
                state.pools.iter().filter_map(Weak::upgrade).collect();
            if pools.is_empty() {
                state.running = false;
                return;
            }
            state.woken = false;
            // Work without the registry lock; dropping `pools` may run a
            // pool's last `Drop`, which wakes us through that lock.
            let sleep = MutexGuard::unlocked(&mut state, move || {
                let now = Ticks::now();
                let mut sleep = MAX_SLEEP;
                for pool in &pools {
                    // A bug in one pool's round must not end the thread for
                    // every pool.
                    let next =
                        catch_unwind(AssertUnwindSafe(|| pool.round(now))).unwrap_or(MAX_SLEEP);
                    sleep = sleep.min(next);
                }
                sleep.clamp(MIN_SLEEP, MAX_SLEEP)
            });
            if !state.woken {
                self.wake.wait_for(&mut state, sleep);
            }
        }
    }
}
