//! The diagnosis: walks the debugging order for you and says whether the
//! pool suffers from a **leak**, a **cleanup-path** bug, a **nested
//! checkout**, a **long hold** or **concurrency growth** (or is healthy),
//! naming the culprit first and those affected apart.
//!
//! [`WatchedPool::report`](crate::WatchedPool::report) builds a [`Report`].
//! It prints as an aligned table (`Display`), serialises to JSON (feature
//! `serde`) and draws the timeline as SVG ([`Report::timeline_svg`]).
//!
//! # What "now" is
//!
//! Statistics are kept over a recent window
//! ([`WatchConfig::window`](crate::WatchConfig::window), 5 minutes by
//! default). Runs of saturated ticks — callers waited, or every connection
//! was in use — are **episodes**, each listed with its start, end and its
//! own verdicts ([`Report::episodes`]). The top-level verdicts describe
//! **now**: the ongoing episode if there is one; otherwise the calm since
//! the last episode ended; otherwise the window. So an incident that is
//! over reads as past, and now can be healthy.
//!
//! # Attribution
//!
//! Each tick records, per call site and span, the connection time held —
//! split into *in a database call*, *idle inside a transaction*, *outside
//! any call* (known for connections poolwatch observes) — and the time
//! callers waited. Verdicts weigh saturated time when there was any.
//!
//! # The rules
//!
//! **Lock chain** (a long hold, said first) — the database server reports
//! holders waiting on a lock (`pg_blocking_pids`, asked on poolwatch's own
//! connection while the pool is under pressure; see
//! [`WatchedPool::diagnose`](crate::WatchedPool::diagnose)). The head of
//! each chain is the culprit — a guard of this pool (its site, span and
//! what it does: typically idle in transaction) or a backend outside the
//! pool (its pid and application name) — and the blocked checkouts are
//! affected, named as blocked by it. Neither is then judged by the rules
//! below.
//!
//! **Leak** — guards out past the hold threshold with nothing running on
//! them, at a site whose holds never last half as long; or connections in
//! use (measured) growing by a quarter of the pool from the first third of
//! the timeline to the last while checkouts stayed flat.
//!
//! **Cleanup path** — holds that ended on an error path: dropped while
//! panicking, a watched transaction rolled back by drop (a `?` inside it),
//! returned inside a transaction, or with a database call in flight.
//!
//! **Nested checkout** — an acquire that waited while its task already
//! held a guard of the same pool (a self-deadlock risk): the waiting site
//! first, then the sites of the guards those tasks hold meanwhile
//! ([`HolderLine::nested_wait`], [`HolderLine::nested_waited_ms`]). Those
//! guards (the task waiting now, or such waits at least half the hold so
//! far) are not leaks, and a site at least half of whose holds ended so is
//! not a long hold: the wait is why they were long. Then it comes before
//! the leak rule (after the server's lock chains); when it explains no
//! hold, last.
//!
//! **Long hold** — the culprit holds at least 10 % of the pool's connection
//! time and at least a quarter of its own hold (and 50 ms) in states that
//! are not database work: idle in transaction, or outside any call (with
//! holds past the threshold when nothing saturated), and, unless one of
//! its holds reached the threshold, at least 5 ms of it per checkout and
//! four times the runtime's scheduling delay (a busy runtime makes every
//! holder wait its turn a few times per hold; see
//! [`Pressure::peak_runtime_lag_ms`]). The sentence says which. Holders
//! busy in the database while the culprit sat idle in a transaction are
//! listed as affected (likely blocked on its locks), as
//! are callers that waited. With no such culprit, holds past the threshold
//! spent in database calls are the finding (slow statements or lock
//! waits); on connections poolwatch does not observe, holds past the
//! threshold.
//!
//! **Concurrency growth** — no long hold, saturation, holds all shorter
//! than the threshold, and the load offered to the pool (Little's law from
//! measured time: connection time used plus time callers waited, per
//! tick) reaching 80 % of its size on average, or its size at peak.
//! Growing the pool (or smoothing the demand) is the fix; fixing code is
//! not.
//!
//! **Healthy** — none of the above.

mod facts;
mod render;
mod svg;
mod types;
mod verdict;

use std::collections::HashMap;
use std::time::Duration;

use crate::ledger::{ArchiveView, Holder, Ticks};
use crate::observe::Observer;
use crate::server::{self, Blocker, ServerBackend, ServerSnapshot};
use crate::snapshot::PoolSnapshot;
use crate::timeline::PressureSample;
use crate::view::PoolView;

pub use types::{
    EpisodeReport, ErrorPaths, Evidence, FlaggedGuard, HolderLine, OutsideBackend, Pressure,
    Report, Scope, ServerSection, ServerState, SiteLine, SiteSample, SiteShare, SiteTimeline,
    SpanLine, Verdict, VerdictKind, WaiterLine,
};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn scope(period: &facts::Period, now: Ticks) -> Scope {
    let kind = match period.span {
        facts::Span::Ongoing { .. } => "ongoing episode",
        facts::Span::SinceEpisode { .. } => "since the last episode",
        facts::Span::Window { .. } => "window",
        facts::Span::Episode { .. } => "episode",
    };
    let _ = now;
    Scope {
        kind: kind.to_owned(),
        secs: period.duration.as_secs_f64(),
        saturated: period.saturated,
        mean_offered_load: period.load.mean,
        peak_offered_load: period.load.peak,
    }
}

impl Report {
    /// Builds the report from a view of the pool.
    pub(crate) fn build(
        view: &PoolView,
        observer: &Observer,
        server: Option<&ServerSnapshot>,
    ) -> Report {
        let snapshot = view.snapshot(observer);
        let timeline = view.timeline();
        let threshold = view.hold_threshold;
        let server = server.filter(|s| s.is_fresh(view.now));
        let joined = server.map(|s| server::join(&view.holders, s));
        let holders: Vec<HolderLine> = view
            .holders
            .iter()
            .enumerate()
            .map(|(i, h)| HolderLine {
                guard: h.id,
                site: h.site().to_string(),
                span: h.span.map(|s| s.name.to_owned()),
                held_ms: ms(h.held(view.now)),
                state: crate::view::holder_state(h).map(|s| s.as_str().to_owned()),
                backend_pid: h.activity.as_ref().and_then(|a| a.backend_pid),
                statement: h
                    .activity
                    .as_ref()
                    .and_then(|a| a.last_statement.as_deref())
                    .and_then(|raw| observer.statement(raw)),
                idle_ms: h.activity.as_ref().map(|a| {
                    if a.in_call() {
                        0.0
                    } else {
                        ms(a.last_call_ended.unwrap_or(h.acquired).until(view.now))
                    }
                }),
                server: joined.as_ref().and_then(|j| {
                    let backend = j.backends[i]?;
                    Some(server_state(backend, &j.blockers[i], &view.holders))
                }),
                nested_wait: h.nested_waiting,
                nested_waited_ms: ms(h.nested_waited),
            })
            .collect();
        let server = server.map(|s| server_section(s, joined.as_ref(), &view.holders, view.now));
        let flagged = holders
            .iter()
            .filter(|g| g.held_ms >= ms(threshold))
            .map(|g| FlaggedGuard {
                guard: g.guard,
                site: g.site.clone(),
                span: g.span.clone(),
                held_ms: g.held_ms,
            })
            .collect();
        let waiters: Vec<WaiterLine> = view
            .waiters
            .iter()
            .map(|w| WaiterLine {
                site: w.site().to_string(),
                span: w.span.map(|s| s.name.to_owned()),
                waited_ms: ms(w.waited(view.now)),
                nested: w.nested,
            })
            .collect();
        let now_period = facts::now(view);
        let ctx = verdict::Context {
            threshold,
            holders: &holders,
            waiters: &waiters,
            timeline: &timeline,
            spans_visible: snapshot.spans_visible,
            past: false,
            server: server.as_ref(),
        };
        let verdicts = verdict::diagnose(&now_period, &ctx);
        let episodes = view
            .archive
            .episodes
            .iter()
            .filter(|e| e.ended.is_some())
            .map(|episode| {
                let period = facts::episode(view, episode);
                let past = verdict::Context {
                    past: true,
                    holders: &[],
                    waiters: &[],
                    server: None,
                    ..ctx
                };
                let counts = period.counts();
                let total = period.total();
                EpisodeReport {
                    started_ago_secs: episode.started.until(view.now).as_secs_f64(),
                    ended_ago_secs: episode
                        .ended
                        .map_or(0.0, |e| e.until(view.now).as_secs_f64()),
                    duration_secs: period.duration.as_secs_f64(),
                    peak_waiting: period.peak_waiting,
                    waited_secs: total.waited.as_secs_f64(),
                    failures: counts.failures.total(),
                    cancelled: counts.cancelled,
                    mean_offered_load: period.load.mean,
                    peak_offered_load: period.load.peak,
                    verdicts: verdict::diagnose(&period, &past),
                }
            })
            .collect();
        let pressure = Pressure::summarize(view, &timeline, &snapshot);
        Report {
            pool: snapshot.pool.clone(),
            hold_threshold_ms: ms(threshold),
            window_secs: snapshot.window.as_secs_f64(),
            status: snapshot.status,
            now: scope(&now_period, view.now),
            verdicts,
            episodes,
            pressure,
            timeline,
            timeline_sites: site_timeline(&view.archive),
            offset_ms: view.archive.created.until(view.now).as_millis() as u64,
            sites: snapshot.sites.iter().map(SiteLine::from_snapshot).collect(),
            spans: snapshot.spans.iter().map(SpanLine::from_snapshot).collect(),
            spans_visible: snapshot.spans_visible,
            flagged,
            holders,
            waiters,
            server,
        }
    }
}

/// The timeline's connection time by site: the sites named, busiest over
/// the timeline first, and each tick's shares by index.
fn site_timeline(archive: &ArchiveView) -> SiteTimeline {
    let mut totals: HashMap<crate::site::CallSite, Duration> = HashMap::new();
    for (_, sites) in archive.timeline_with_sites() {
        for share in sites {
            *totals.entry(share.site).or_default() += share.held;
        }
    }
    let mut order: Vec<_> = totals.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let index: HashMap<_, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (site, _))| (*site, i))
        .collect();
    let samples = archive
        .timeline_with_sites()
        .map(|(record, sites)| SiteSample {
            sites: sites
                .iter()
                .map(|share| SiteShare {
                    site: index[&share.site],
                    connection_ms: ms(share.held),
                })
                .collect(),
            other_ms: ms(record.other_sites_held),
        })
        .collect();
    SiteTimeline {
        sites: order.iter().map(|(site, _)| site.to_string()).collect(),
        samples,
    }
}

/// A holder's backend as the report shows it.
fn server_state(
    backend: &ServerBackend,
    blockers: &[Blocker<'_>],
    holders: &[Holder],
) -> ServerState {
    let mut state = ServerState {
        state: backend.state.to_owned(),
        doing: backend.describe(),
        wait_event: backend.wait.clone(),
        waiting_on_lock: backend.waiting_on_lock,
        transaction_ms: backend.transaction_age.map(ms),
        blocked_by_guards: Vec::new(),
        blocked_by_outside: Vec::new(),
    };
    for blocker in blockers {
        match blocker {
            Blocker::Guard(i) => state.blocked_by_guards.push(holders[*i].id),
            Blocker::Outside(b) => state.blocked_by_outside.push(b.pid),
            Blocker::Unknown(pid) => state.blocked_by_outside.push(*pid),
        }
    }
    state
}

/// The answer as a whole: its age, failure, what this role could not see,
/// and the backends outside the pool that holders wait behind.
fn server_section(
    snapshot: &ServerSnapshot,
    joined: Option<&server::Joined<'_>>,
    holders: &[Holder],
    now: Ticks,
) -> ServerSection {
    let mut outside: Vec<OutsideBackend> = Vec::new();
    if let Some(joined) = joined {
        for (i, blockers) in joined.blockers.iter().enumerate() {
            for blocker in blockers {
                let Blocker::Outside(b) = blocker else {
                    continue;
                };
                let entry = match outside.iter().position(|o| o.pid == b.pid) {
                    Some(at) => &mut outside[at],
                    None => {
                        outside.push(OutsideBackend {
                            pid: b.pid,
                            application_name: b.application_name.clone(),
                            role: b.role.clone(),
                            doing: b.describe(),
                            transaction_ms: b.transaction_age.map(ms),
                            statement: b.query.clone(),
                            blocks_guards: Vec::new(),
                        });
                        outside.last_mut().expect("just pushed")
                    }
                };
                entry.blocks_guards.push(holders[i].id);
            }
        }
    }
    ServerSection {
        age_ms: ms(snapshot.age(now)),
        error: snapshot.error.clone(),
        not_visible: snapshot.not_visible.clone(),
        outside,
    }
}

impl Pressure {
    fn summarize(view: &PoolView, timeline: &[PressureSample], snapshot: &PoolSnapshot) -> Self {
        let holds: u64 = snapshot.sites.iter().map(|s| s.hold.count).sum();
        let held: Duration = snapshot.sites.iter().map(|s| s.hold_total).sum();
        let mean_hold_ms = if holds == 0 {
            0.0
        } else {
            ms(held) / holds as f64
        };
        let n = timeline.len();
        let max_size = timeline
            .last()
            .map_or(snapshot.status.max_size, |s| s.max_size)
            .max(snapshot.status.max_size);
        let window_ms: u64 = timeline.iter().map(|s| s.interval_ms).sum();
        let connection_ms: f64 = timeline.iter().map(|s| s.connection_ms).sum();
        let checkouts: u64 = timeline.iter().map(|s| s.checkouts).sum();
        let waited_anytime = timeline
            .iter()
            .any(|s| s.peak_waiting > 0 || s.waited_ms > 0.0)
            || view.open_tick_saturated
            || !view.waiters.is_empty();
        let sampled_peak = timeline
            .iter()
            .map(|s| s.in_use)
            .max()
            .unwrap_or(0)
            .max(snapshot.status.in_use());
        let peak_in_use = if waited_anytime {
            sampled_peak.max(max_size)
        } else {
            sampled_peak
        };
        Pressure {
            samples: n,
            window_secs: window_ms as f64 / 1000.0,
            max_size,
            peak_in_use,
            mean_in_use: if window_ms == 0 {
                0.0
            } else {
                connection_ms / window_ms as f64
            },
            peak_waiting: timeline
                .iter()
                .map(|s| s.peak_waiting.max(s.waiting))
                .max()
                .unwrap_or(0)
                .max(snapshot.waiters.len())
                .max(view.open_peak_waiting),
            saturated_share: if n == 0 {
                0.0
            } else {
                timeline.iter().filter(|s| s.saturated).count() as f64 / n as f64
            },
            mean_checkout_rate: if window_ms == 0 {
                0.0
            } else {
                checkouts as f64 * 1000.0 / window_ms as f64
            },
            peak_checkout_rate: timeline
                .iter()
                .map(PressureSample::checkout_rate)
                .fold(0.0, f64::max),
            mean_hold_ms,
            peak_offered_load: timeline
                .iter()
                .map(PressureSample::offered_load)
                .fold(0.0, f64::max),
            peak_runtime_lag_ms: timeline
                .iter()
                .filter_map(|s| s.runtime_lag_ms)
                .chain(view.open_lag.mean().map(|d| d.as_secs_f64() * 1000.0))
                .reduce(f64::max),
        }
    }
}
