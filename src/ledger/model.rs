//! Model check (shuttle) of the ledger's concurrency protocol: checkouts
//! opened and closed from several threads (a guard may be dropped on a
//! thread other than the one that opened it), acquires pending on one
//! shard and served from another, drains (the sampler's and readers')
//! swapping deltas out while all this goes on, and, under `leak-report`,
//! the watchdog's marking scans, its confirmations before reporting, and
//! a closing pool's never-returned sweep, all at once.
//!
//! The model drives the real [`ShardState`] transitions; only the lock is
//! swapped: each shard's state sits in a `shuttle::sync::Mutex` instead of
//! the `parking_lot` one, so shuttle can interleave every lock acquisition
//! (including between the shards of one scan or drain). Every transition
//! appends to a log while its shard lock is held, so the log is the order
//! in which the critical sections ran; the checks at the end replay it.
//!
//! What it checks, for every explored interleaving:
//! * guard ids are unique across shards;
//! * each checkout is closed exactly once, and the record closed is the
//!   one that was opened under that key (no slot reused while held);
//! * per shard, at every lock: checkouts − endings, over the deltas
//!   drained so far and the current ones, = outstanding records (a drain
//!   loses and duplicates nothing);
//! * every pending acquire ends exactly once, on the shard it started on;
//! * a flag is confirmed only while its guard is outstanding, at most once
//!   per level, in increasing levels; its close says `flagged` exactly
//!   when a confirmation or the never-returned sweep came first (so the
//!   "returned after being flagged" INFO is neither lost nor invented, and
//!   never precedes the flag);
//! * the never-returned sweep sees exactly the guards outstanding
//!   throughout it;
//! * at the end, the outstanding records are exactly the forgotten guards.
//!
//! Limits: the background threads' registry and sleeps, tracing and the
//! pool are not modelled (scans and drains are called directly); time is
//! simulated (fixed instants), and shuttle explores a random sample of the
//! interleavings, not all of them.

use std::collections::{HashMap, HashSet};
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shuttle::sync::Mutex;
use shuttle::thread;

use super::common::{Common, Sites, Waiting};
use super::records::Checkout;
#[cfg(feature = "leak-report")]
use super::shard::{Cutoffs, Overdue, Unreported};
use super::shard::{Drained, ShardState, WaitEnding};
use super::stats::{Counts, SiteDelta};
use super::ticks::Ticks;
use crate::outcome::{AcquireFailure, Outcome};

/// The log of critical sections, in the order they ran.
#[derive(Clone, Debug)]
enum Event {
    Opened {
        shard: usize,
        key: usize,
        id: u64,
    },
    Closed {
        shard: usize,
        key: usize,
        id: Option<u64>,
        flagged: bool,
    },
    WaitStarted {
        shard: usize,
        key: usize,
        token: u64,
    },
    WaitEnded {
        shard: usize,
        key: usize,
        token: u64,
        ended: bool,
    },
    #[cfg(feature = "leak-report")]
    Confirmed {
        id: u64,
        level: u8,
    },
    #[cfg(feature = "leak-report")]
    SweptNeverReturned {
        id: u64,
    },
    #[cfg(feature = "leak-report")]
    SweepStarted,
    #[cfg(feature = "leak-report")]
    SweepDone,
    /// The forgotten guards, recorded by the workers.
    Forgot {
        id: u64,
    },
}

struct ModelShard {
    index: u64,
    state: Mutex<(ShardState, Counts)>,
}

struct Model {
    common: Common,
    shards: Vec<ModelShard>,
    log: std::sync::Mutex<Vec<Event>>,
    base: Instant,
}

/// What a worker holds: the guard's record, as `Record` holds it.
#[derive(Clone, Copy, Debug)]
struct Held {
    shard: usize,
    key: usize,
    id: u64,
}

/// A pending acquire, as `Acquire` keeps it.
#[derive(Clone, Copy, Debug)]
struct Pending {
    shard: usize,
    key: usize,
    token: u64,
}

#[cfg(feature = "leak-report")]
const THRESHOLD: Duration = Duration::from_secs(1);

fn site_a() -> &'static Location<'static> {
    Location::caller()
}

fn site_b() -> &'static Location<'static> {
    Location::caller()
}

fn drained_counts(drained: &Drained) -> Counts {
    let mut counts = Counts::default();
    for &index in &drained.touched {
        counts.merge(&drained.deltas[index as usize].counts);
    }
    // Only touched deltas hold anything.
    for (index, delta) in drained.deltas.iter().enumerate() {
        if !drained.touched.contains(&(index as u32)) {
            assert_eq!(
                delta.counts,
                Counts::default(),
                "an untouched delta holds counts"
            );
        }
    }
    counts
}

impl Model {
    fn new(shards: usize) -> Arc<Self> {
        Ticks::init();
        let now = Ticks::now();
        Arc::new(Self {
            common: Common {
                sites: Sites {
                    max_sites: 8,
                    known: parking_lot::Mutex::default(),
                    #[cfg(feature = "leak-report")]
                    stack_counters: parking_lot::Mutex::default(),
                },
                directory: std::sync::OnceLock::new(),
                waiting: Waiting::default(),
                lag: Arc::default(),
            },
            shards: (0..shards)
                .map(|index| ModelShard {
                    index: index as u64,
                    state: Mutex::new((ShardState::new(now), Counts::default())),
                })
                .collect(),
            log: std::sync::Mutex::new(Vec::new()),
            // Far enough from the clock's origin for the scans' cutoffs.
            base: Instant::now() + Duration::from_secs(3600),
        })
    }

    fn push(&self, event: Event) {
        self.log.lock().unwrap().push(event);
    }

    fn at(&self, d: Duration) -> Ticks {
        Ticks::of(self.base + d)
    }

    /// The per-shard accounting invariant, checked under the shard's lock:
    /// what was drained plus what is current.
    fn check_shard(state: &ShardState, drained: &Counts) {
        let mut counts = *drained;
        for delta in &state.deltas {
            counts.merge(&delta.counts);
        }
        assert_eq!(
            counts.checkouts - counts.outcomes.total(),
            state.outstanding.len() as u64,
            "shard statistics disagree with its outstanding table"
        );
    }

    fn open(&self, shard: usize, location: &'static Location<'static>) -> Held {
        let model_shard = &self.shards[shard];
        let mut guard = model_shard.state.lock().unwrap();
        let (state, drained) = &mut *guard;
        let checkout = Checkout {
            location,
            span: None,
            task: None,
            waited: Duration::ZERO,
            acquired: self.at(Duration::ZERO),
            connection: None,
            panicking: false,
        };
        let count = self.shards.len() as u64;
        let (key, id, _) = state.open((model_shard.index, count), checkout, &self.common);
        Self::check_shard(state, drained);
        self.push(Event::Opened { shard, key, id });
        Held { shard, key, id }
    }

    fn close(&self, held: Held, outcome: Outcome) -> Option<super::records::Closed> {
        let mut guard = self.shards[held.shard].state.lock().unwrap();
        let (state, drained) = &mut *guard;
        #[cfg(feature = "leak-report")]
        let later = THRESHOLD / 2;
        #[cfg(not(feature = "leak-report"))]
        let later = Duration::from_millis(500);
        let closed = state.close(held.key, outcome, self.at(later));
        Self::check_shard(state, drained);
        let id = closed.as_ref().map(|c| c.id);
        let flagged = closed.as_ref().is_some_and(|c| c.was_flagged());
        self.push(Event::Closed {
            shard: held.shard,
            key: held.key,
            id,
            flagged,
        });
        closed
    }

    fn wait_started(&self, shard: usize, token: u64) -> Pending {
        let mut guard = self.shards[shard].state.lock().unwrap();
        let (state, _) = &mut *guard;
        let key = state.wait_started(
            site_b(),
            None,
            self.at(Duration::ZERO),
            false,
            true,
            &self.common,
        );
        self.push(Event::WaitStarted { shard, key, token });
        Pending { shard, key, token }
    }

    fn wait_ended(&self, pending: Pending, ending: WaitEnding) {
        let mut guard = self.shards[pending.shard].state.lock().unwrap();
        let (state, drained) = &mut *guard;
        let ended = state
            .wait_ended(pending.key, self.at(Duration::from_millis(10)), ending)
            .is_some();
        Self::check_shard(state, drained);
        self.push(Event::WaitEnded {
            shard: pending.shard,
            key: pending.key,
            token: pending.token,
            ended,
        });
    }

    /// A drain of every shard, as `Ledger::drain`: one shard lock at a
    /// time; the drained counts are kept under the same lock.
    fn drain(&self, at: Duration) {
        for shard in &self.shards {
            let mut guard = shard.state.lock().unwrap();
            let (state, drained) = &mut *guard;
            let out = state.drain(self.at(at), Vec::<SiteDelta>::new());
            drained.merge(&drained_counts(&out));
            Self::check_shard(state, drained);
        }
    }

    /// The watchdog's scan (one shard lock per pass, tiny passes so scans
    /// interleave with everything), then its confirmations, one lock each,
    /// as the reporter does.
    #[cfg(feature = "leak-report")]
    fn scan_and_confirm(&self, factor: u32) {
        let now = self.at(THRESHOLD * factor);
        let cutoffs = Cutoffs::new(now, THRESHOLD);
        let mut found: Vec<(usize, Overdue)> = Vec::new();
        for (index, shard) in self.shards.iter().enumerate() {
            let mut start = Some(0);
            while let Some(from) = start {
                let mut guard = shard.state.lock().unwrap();
                let (state, drained) = &mut *guard;
                let mut out = Vec::new();
                let mut unreported = Unreported::default();
                let mut budget = usize::MAX;
                start =
                    state.flag_overdue(&cutoffs, from, 1, &mut budget, &mut out, &mut unreported);
                Self::check_shard(state, drained);
                found.extend(out.into_iter().map(|o| (index, o)));
            }
        }
        for (index, overdue) in found {
            thread::yield_now();
            let mut guard = self.shards[index].state.lock().unwrap();
            let (state, _) = &mut *guard;
            if state
                .confirm_flag(overdue.key, overdue.id, overdue.level, now)
                .is_some()
            {
                self.push(Event::Confirmed {
                    id: overdue.id,
                    level: overdue.level,
                });
            }
        }
    }

    /// A closing pool's never-returned sweep, as `Ledger::flag_all`.
    #[cfg(feature = "leak-report")]
    fn sweep(&self) {
        self.push(Event::SweepStarted);
        for shard in &self.shards {
            let mut guard = shard.state.lock().unwrap();
            let (state, _) = &mut *guard;
            let mut out = Vec::new();
            state.flag_all(self.at(THRESHOLD * 20), &mut out);
            for (holder, _) in out {
                self.push(Event::SweptNeverReturned { id: holder.id });
            }
        }
        self.push(Event::SweepDone);
    }

    /// Replays the log and checks the protocol's invariants.
    fn verify(&self) {
        let log = self.log.lock().unwrap().clone();
        let mut ids = HashSet::new();
        // (shard, key) -> id of the record currently held under that key.
        let mut live: HashMap<(usize, usize), u64> = HashMap::new();
        let mut closed_ids = HashSet::new();
        let mut pending: HashMap<(usize, usize), u64> = HashMap::new();
        let mut ended_tokens = HashSet::new();
        #[cfg(feature = "leak-report")]
        let mut levels: HashMap<u64, u8> = HashMap::new();
        #[cfg(feature = "leak-report")]
        let mut swept_this_round: HashSet<u64> = HashSet::new();
        #[cfg(feature = "leak-report")]
        let mut live_at_sweep_start: HashSet<u64> = HashSet::new();
        let mut forgotten = HashSet::new();
        for event in &log {
            match *event {
                Event::Opened { shard, key, id } => {
                    assert!(ids.insert(id), "guard id {id} issued twice");
                    assert!(
                        live.insert((shard, key), id).is_none(),
                        "slot {key} of shard {shard} reused while held"
                    );
                }
                Event::Closed {
                    shard,
                    key,
                    id,
                    flagged,
                } => {
                    let expected = live.remove(&(shard, key));
                    assert_eq!(id, expected, "close of slot {key} closed the wrong record");
                    let id = id.expect("a held guard's close finds its record");
                    assert!(closed_ids.insert(id), "guard {id} closed twice");
                    #[cfg(feature = "leak-report")]
                    assert_eq!(
                        flagged,
                        levels.contains_key(&id),
                        "guard {id}: close says flagged={flagged}, reports say otherwise"
                    );
                    #[cfg(not(feature = "leak-report"))]
                    assert!(!flagged);
                }
                Event::WaitStarted { shard, key, token } => {
                    assert!(
                        pending.insert((shard, key), token).is_none(),
                        "pending slot {key} of shard {shard} reused while waiting"
                    );
                }
                Event::WaitEnded {
                    shard,
                    key,
                    token,
                    ended,
                } => {
                    assert!(ended, "pending acquire {token} not found at its end");
                    assert_eq!(pending.remove(&(shard, key)), Some(token));
                    assert!(ended_tokens.insert(token), "acquire {token} ended twice");
                }
                #[cfg(feature = "leak-report")]
                Event::Confirmed { id, level } => {
                    assert!(
                        live.values().any(|&v| v == id),
                        "guard {id} confirmed while not outstanding"
                    );
                    let previous = levels.insert(id, level).unwrap_or(0);
                    assert!(
                        level > previous,
                        "guard {id} reported at level {level} after level {previous}"
                    );
                }
                #[cfg(feature = "leak-report")]
                Event::SweptNeverReturned { id } => {
                    assert!(
                        live.values().any(|&v| v == id),
                        "guard {id} reported never returned while not outstanding"
                    );
                    assert!(swept_this_round.insert(id), "guard {id} swept twice");
                    levels.entry(id).or_insert(1);
                }
                #[cfg(feature = "leak-report")]
                Event::SweepStarted => {
                    swept_this_round.clear();
                    live_at_sweep_start = live.values().copied().collect();
                }
                #[cfg(feature = "leak-report")]
                Event::SweepDone => {
                    // A guard outstanding for the whole sweep was reported.
                    for id in live.values() {
                        if live_at_sweep_start.contains(id) {
                            assert!(
                                swept_this_round.contains(id),
                                "guard {id} outstanding through the sweep but not reported"
                            );
                        }
                    }
                }
                Event::Forgot { id } => {
                    forgotten.insert(id);
                }
            }
        }
        assert!(pending.is_empty(), "acquires left pending: {pending:?}");
        let still: HashSet<u64> = live.values().copied().collect();
        assert_eq!(
            still, forgotten,
            "outstanding records at the end are not the forgotten guards"
        );
        for shard in &self.shards {
            let guard = shard.state.lock().unwrap();
            let (state, drained) = &*guard;
            Self::check_shard(state, drained);
            let in_table: HashSet<u64> = state.outstanding.iter().map(|(_, e)| e.id()).collect();
            assert_eq!(
                in_table,
                still
                    .iter()
                    .copied()
                    .filter(|id| in_table.contains(id))
                    .collect()
            );
        }
    }
}

/// Two workers, a drainer and (under `leak-report`) the watchdog, over
/// `shards` shards. Worker 0 hands a guard to worker 1, which drops it (a
/// guard dropped on another thread); an acquire started on worker 0's
/// shard is served on worker 1's.
fn scenario(shards: usize) {
    let model = Model::new(shards);
    let (send, receive) = shuttle::sync::mpsc::channel::<(Held, Pending)>();

    let m = Arc::clone(&model);
    let worker0 = thread::spawn(move || {
        let shard = 0;
        let a = m.open(shard, site_a());
        let waiting = m.wait_started(shard, 1);
        send.send((a, waiting)).unwrap();
        let b = m.open(shard, site_b());
        m.close(b, Outcome::Returned).expect("b is held");
        let cancelled = m.wait_started(shard, 2);
        m.wait_ended(cancelled, WaitEnding::Cancelled);
        let c = m.open(shard, site_a());
        // mem::forget: never closed.
        m.push(Event::Forgot { id: c.id });
    });

    let m = Arc::clone(&model);
    let worker1 = thread::spawn(move || {
        let shard = 1 % m.shards.len();
        let d = m.open(shard, site_b());
        m.close(d, Outcome::DroppedWhilePanicking)
            .expect("d is held");
        let (a, waiting) = receive.recv().unwrap();
        m.close(a, Outcome::Returned).expect("a is held");
        // The acquire that waited on worker 0's shard is served here.
        m.wait_ended(waiting, WaitEnding::Served);
        let e = m.open(shard, site_a());
        let failed = m.wait_started(shard, 3);
        m.wait_ended(failed, WaitEnding::Failed(AcquireFailure::Timeout));
        m.close(e, Outcome::Detached).expect("e is held");
    });

    let m = Arc::clone(&model);
    let drainer = thread::spawn(move || {
        m.drain(Duration::from_millis(100));
        m.drain(Duration::from_millis(200));
    });

    #[cfg(feature = "leak-report")]
    let watchdog = {
        let m = Arc::clone(&model);
        thread::spawn(move || {
            m.scan_and_confirm(1);
            m.scan_and_confirm(4);
            m.sweep(); // the pool is closed
            m.scan_and_confirm(16);
        })
    };

    worker0.join().unwrap();
    worker1.join().unwrap();
    drainer.join().unwrap();
    #[cfg(feature = "leak-report")]
    watchdog.join().unwrap();
    model.verify();
}

#[test]
fn ledger_protocol_holds_under_random_schedules() {
    shuttle::check_random(|| scenario(2), 2000);
}

#[test]
fn ledger_protocol_holds_under_pct_schedules() {
    shuttle::check_pct(|| scenario(2), 1000, 3);
}

#[test]
fn ledger_protocol_holds_with_one_shared_shard() {
    shuttle::check_random(|| scenario(1), 2000);
}
