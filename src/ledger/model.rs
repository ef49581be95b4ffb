//! Model check (shuttle) of the ledger's concurrency protocol: checkouts
//! opened and closed from several threads (a guard may be dropped on a
//! thread other than the one that opened it), database calls recorded in
//! two lock steps like [`Shard::call_started`](super::Shard::call_started),
//! and, under `leak-report`, the watchdog's escalating scans and a closing
//! pool's never-returned sweep, all at once.
//!
//! The model drives the real [`ShardState`] transitions; only the lock is
//! swapped: each shard's state sits in a `shuttle::sync::Mutex` instead of
//! the `parking_lot` one, so shuttle can interleave every lock acquisition
//! (including between the shards of one scan, and between the two locks of
//! a call's start). Every transition appends to a log while its shard lock
//! is held, so the log is the order in which the critical sections ran;
//! the checks at the end replay it.
//!
//! What it checks, for every explored interleaving:
//! * guard ids are unique across shards;
//! * each checkout is closed exactly once, and the record closed is the
//!   one that was opened under that key (no slot reused while held);
//! * per shard, at every lock: statistics' checkouts − endings =
//!   outstanding records;
//! * a guard is flagged only while outstanding, at most once per level, in
//!   increasing levels; its close says `flagged` exactly when a scan or
//!   the never-returned sweep saw it first (so the "returned after being
//!   flagged" INFO is neither lost nor invented);
//! * the never-returned sweep sees exactly the guards outstanding then;
//! * a close with a database call still in flight says so (eviction);
//! * at the end, the outstanding records are exactly the forgotten guards.
//!
//! Limits: the watchdog thread's own registry/sleep loop, tracing and the
//! pool are not modelled (the scan is called directly); time is simulated
//! (acquire instants and scan instants are fixed), and shuttle explores a
//! random sample of the interleavings, not all of them.

use std::collections::{HashMap, HashSet};
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shuttle::sync::Mutex;
use shuttle::thread;

use super::shard::{Checkout, Closed, ShardState};
#[cfg(feature = "leak-report")]
use super::shard::{Cutoffs, Flagged};
use super::{Ledger, Settings, Ticks};
use crate::config::WatchConfig;
use crate::outcome::Outcome;

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
        in_flight: bool,
    },
    #[cfg(feature = "leak-report")]
    Flagged {
        id: u64,
        level: u8,
    },
    #[cfg(feature = "leak-report")]
    SweptNeverReturned {
        id: u64,
    },
    /// A sweep over all shards finished (its per-shard entries precede it).
    #[cfg(feature = "leak-report")]
    SweepDone,
    #[cfg(feature = "leak-report")]
    SweepStarted,
    CallStarted {
        id: u64,
    },
    CallEnded {
        id: u64,
    },
    /// The forgotten guards, recorded by the workers.
    Forgot {
        id: u64,
    },
}

struct ModelShard {
    index: u64,
    state: Mutex<ShardState>,
}

struct Model {
    settings: Arc<Settings>,
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

const THRESHOLD: Duration = Duration::from_secs(1);

fn site_a() -> &'static Location<'static> {
    Location::caller()
}

fn site_b() -> &'static Location<'static> {
    Location::caller()
}

impl Model {
    fn new(shards: usize) -> Arc<Self> {
        let config = WatchConfig::builder()
            .timeline_tick(None)
            .build()
            .expect("valid config");
        let ledger = Ledger::new(&config);
        Arc::new(Self {
            settings: Arc::clone(&ledger.settings),
            shards: (0..shards)
                .map(|index| ModelShard {
                    index: index as u64,
                    state: Mutex::new(ShardState::new()),
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

    /// The per-shard accounting invariant, checked under the shard's lock.
    fn check_shard(state: &ShardState) {
        let checkouts: u64 = state.sites.iter().map(|s| s.checkouts).sum();
        let ended: u64 = state.sites.iter().map(|s| s.outcomes.total()).sum();
        assert_eq!(
            checkouts - ended,
            state.outstanding.len() as u64,
            "shard statistics disagree with its outstanding table"
        );
    }

    fn open(&self, shard: usize, location: &'static Location<'static>) -> Held {
        let model_shard = &self.shards[shard];
        let mut state = model_shard.state.lock().unwrap();
        let checkout = Checkout {
            location,
            span: None,
            waited: Duration::ZERO,
            acquired: Ticks::of(self.base),
        };
        let count = self.shards.len() as u64;
        let (key, id) = state.open((model_shard.index, count), checkout, &self.settings);
        Self::check_shard(&state);
        self.push(Event::Opened { shard, key, id });
        Held { shard, key, id }
    }

    /// Mirrors `Shard::call_started`: two lock steps, with the connection
    /// lookup between them.
    fn call_started(&self, held: Held) {
        let unknown = {
            let mut state = self.shards[held.shard].state.lock().unwrap();
            let unknown = state.call_started(held.key, Ticks::of(self.base), Some("SELECT 1"));
            self.push(Event::CallStarted { id: held.id });
            unknown
        };
        thread::yield_now();
        if unknown {
            let mut state = self.shards[held.shard].state.lock().unwrap();
            state.set_connection(held.key, 0x1000 + held.id as usize, Some(42));
        }
    }

    fn call_ended(&self, held: Held) {
        let mut state = self.shards[held.shard].state.lock().unwrap();
        state.call_ended(held.key, Ticks::of(self.base), true, None);
        self.push(Event::CallEnded { id: held.id });
    }

    fn close(&self, held: Held, outcome: Outcome) -> Option<Closed> {
        let mut state = self.shards[held.shard].state.lock().unwrap();
        let closed = state.close(held.key, outcome, Ticks::of(self.base + THRESHOLD / 2));
        Self::check_shard(&state);
        let id = closed.as_ref().map(|c| c.id);
        #[cfg(feature = "leak-report")]
        let flagged = closed.as_ref().is_some_and(|c| c.flagged);
        #[cfg(not(feature = "leak-report"))]
        let flagged = false;
        let in_flight = closed.as_ref().is_some_and(|c| c.activity().in_flight);
        self.push(Event::Closed {
            shard: held.shard,
            key: held.key,
            id,
            flagged,
            in_flight,
        });
        closed
    }

    /// The watchdog's scan: one shard lock at a time, as `Ledger::flag_overdue`.
    #[cfg(feature = "leak-report")]
    fn scan(&self, factor: u32) {
        let cutoffs = Cutoffs::new(Ticks::of(self.base + THRESHOLD * factor), THRESHOLD);
        for shard in &self.shards {
            let mut state = shard.state.lock().unwrap();
            let mut out: Vec<Flagged> = Vec::new();
            state.flag_overdue(&cutoffs, &mut out);
            Self::check_shard(&state);
            for flagged in out {
                self.push(Event::Flagged {
                    id: flagged.id,
                    level: flagged.level,
                });
            }
        }
    }

    /// A closing pool's never-returned sweep, as `Ledger::flag_all`.
    #[cfg(feature = "leak-report")]
    fn sweep(&self) {
        self.push(Event::SweepStarted);
        for shard in &self.shards {
            let mut state = shard.state.lock().unwrap();
            let mut out: Vec<Flagged> = Vec::new();
            state.flag_all(Ticks::of(self.base + THRESHOLD * 20), &mut out);
            for flagged in out {
                self.push(Event::SweptNeverReturned { id: flagged.id });
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
        #[cfg(feature = "leak-report")]
        let mut levels: HashMap<u64, u8> = HashMap::new();
        #[cfg(feature = "leak-report")]
        let mut swept_this_round: HashSet<u64> = HashSet::new();
        #[cfg(feature = "leak-report")]
        let mut live_at_sweep_start: HashSet<u64> = HashSet::new();
        let mut calls: HashMap<u64, bool> = HashMap::new();
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
                    in_flight,
                } => {
                    let expected = live.remove(&(shard, key));
                    assert_eq!(id, expected, "close of slot {key} closed the wrong record");
                    let id = id.expect("a held guard's close finds its record");
                    assert!(closed_ids.insert(id), "guard {id} closed twice");
                    #[cfg(feature = "leak-report")]
                    assert_eq!(
                        flagged,
                        levels.contains_key(&id),
                        "guard {id}: close says flagged={flagged}, scans say otherwise"
                    );
                    #[cfg(not(feature = "leak-report"))]
                    let _ = flagged;
                    assert_eq!(
                        in_flight,
                        calls.get(&id).copied().unwrap_or(false),
                        "guard {id}: in-flight at close disagrees with its calls"
                    );
                }
                #[cfg(feature = "leak-report")]
                Event::Flagged { id, level } => {
                    assert!(
                        live.values().any(|&v| v == id),
                        "guard {id} flagged while not outstanding"
                    );
                    let previous = levels.insert(id, level).unwrap_or(0);
                    assert!(
                        level > previous,
                        "guard {id} flagged at level {level} after level {previous}"
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
                Event::CallStarted { id } => {
                    calls.insert(id, true);
                }
                Event::CallEnded { id } => {
                    calls.insert(id, false);
                }
                Event::Forgot { id } => {
                    forgotten.insert(id);
                }
            }
        }
        let still: HashSet<u64> = live.values().copied().collect();
        assert_eq!(
            still, forgotten,
            "outstanding records at the end are not the forgotten guards"
        );
        for shard in &self.shards {
            let state = shard.state.lock().unwrap();
            Self::check_shard(&state);
            let in_table: HashSet<u64> = state.outstanding.iter().map(|(_, e)| e.id()).collect();
            for id in &in_table {
                assert!(
                    forgotten.contains(id),
                    "guard {id} outstanding but not forgotten"
                );
            }
        }
    }
}

/// Two workers and (under `leak-report`) the watchdog, over `shards`
/// shards. Worker 0 hands a guard with a call in flight to worker 1, which
/// drops it (a guard dropped on another thread, mid-call: evicted).
fn scenario(shards: usize) {
    let model = Model::new(shards);
    let (send, receive) = shuttle::sync::mpsc::channel::<Held>();

    let m = Arc::clone(&model);
    let worker0 = thread::spawn(move || {
        let shard = 0;
        let a = m.open(shard, site_a());
        m.call_started(a);
        send.send(a).unwrap();
        let b = m.open(shard, site_b());
        m.close(b, Outcome::Returned).expect("b is held");
        let c = m.open(shard, site_a());
        // mem::forget: never closed.
        m.push(Event::Forgot { id: c.id });
    });

    let m = Arc::clone(&model);
    let worker1 = thread::spawn(move || {
        let shard = 1 % m.shards.len();
        let d = m.open(shard, site_b());
        m.call_started(d);
        m.call_ended(d);
        m.close(d, Outcome::DroppedWhilePanicking)
            .expect("d is held");
        let a = receive.recv().unwrap();
        let closed = m.close(a, Outcome::Returned).expect("a is held");
        assert!(
            closed.activity().in_flight,
            "a call in flight at drop is seen"
        );
        let e = m.open(shard, site_a());
        m.close(e, Outcome::Detached).expect("e is held");
    });

    #[cfg(feature = "leak-report")]
    let watchdog = {
        let m = Arc::clone(&model);
        thread::spawn(move || {
            m.scan(1);
            m.scan(4);
            m.sweep(); // the pool is closed
            m.scan(16);
        })
    };

    worker0.join().unwrap();
    worker1.join().unwrap();
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
