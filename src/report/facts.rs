//! What the verdicts are computed from: a *period* (now, or one past
//! saturation episode) made of *parties* — each (call site, span) with its
//! counts and its connection time by state — and the load offered to the
//! pool during it, from measured connection and wait time per tick.
//!
//! "Now" is the ongoing saturation episode if there is one (the open tick
//! included); otherwise the calm since the last episode ended, if that is
//! within the window; otherwise the window. So an incident that is over
//! reads as past (in its episode) and now can be healthy.

use std::collections::HashMap;
use std::time::Duration;

use crate::ledger::{Counts, Episode, LagReadings, StatsKey, TickRecord, Ticks, Usage};
use crate::site::CallSite;
use crate::view::PoolView;

/// One (call site, span) during a period.
#[derive(Clone, Debug)]
pub(super) struct Party {
    pub(super) site: CallSite,
    pub(super) span: Option<&'static str>,
    pub(super) counts: Counts,
    /// Over the period's saturated time when it had any, else all of it.
    pub(super) usage: Usage,
}

impl Party {
    /// Whether what the holder did with its connections is known.
    pub(super) fn observed(&self) -> bool {
        self.usage.unobserved < self.usage.held / 2
    }
}

/// What the period covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Span {
    /// A saturation episode still going on (since `since`).
    Ongoing { since: Ticks },
    /// The calm since the last episode ended at `since`.
    SinceEpisode { since: Ticks },
    /// The whole window (no episode to split at).
    Window { since: Ticks },
    /// A past episode.
    Episode {
        started: Ticks,
        ended: Option<Ticks>,
    },
}

/// The offered load (Little's law from measured time): connections in
/// use on average plus callers waiting on average, per tick.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Load {
    /// Over the period's saturated ticks (or all, when none was).
    pub(super) mean: f64,
    pub(super) peak: f64,
}

#[derive(Clone, Debug)]
pub(super) struct Period {
    pub(super) span: Span,
    pub(super) saturated: bool,
    pub(super) duration: Duration,
    /// Most connection time held first.
    pub(super) parties: Vec<Party>,
    pub(super) load: Load,
    pub(super) max_size: usize,
    pub(super) peak_waiting: usize,
    /// The runtime's scheduling delay read during it (saturated ticks
    /// when saturated): how long a task waited for its turn.
    pub(super) runtime_lag: LagReadings,
}

impl Period {
    pub(super) fn total(&self) -> Usage {
        let mut total = Usage::default();
        for party in &self.parties {
            total.merge(&party.usage);
        }
        total
    }

    pub(super) fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for party in &self.parties {
            counts.merge(&party.counts);
        }
        counts
    }
}

fn parties(pairs: impl IntoIterator<Item = (StatsKey, Counts, Usage)>) -> Vec<Party> {
    let mut by_key: HashMap<StatsKey, Party> = HashMap::new();
    for (key, counts, usage) in pairs {
        let party = by_key.entry(key).or_insert_with(|| Party {
            site: key.site,
            span: key.span,
            counts: Counts::default(),
            usage: Usage::default(),
        });
        party.counts.merge(&counts);
        party.usage.merge(&usage);
    }
    let mut parties: Vec<Party> = by_key
        .into_values()
        .filter(|p| !p.usage.is_zero() || p.counts != Counts::default())
        .collect();
    parties.sort_by(|a, b| {
        b.usage
            .held
            .cmp(&a.usage.held)
            .then(b.usage.waited.cmp(&a.usage.waited))
            .then(a.site.cmp(&b.site))
            .then(a.span.cmp(&b.span))
    });
    parties
}

/// The load of the ticks in `[from, to)`, plus `open` (the open tick's
/// usage and length) when given.
fn load(
    timeline: &[TickRecord],
    from: Ticks,
    to: Option<Ticks>,
    open: Option<(Usage, Duration, bool, LagReadings)>,
    saturated_only: bool,
) -> (Load, usize, LagReadings) {
    let mut loads = Vec::new();
    let mut peak_waiting = 0;
    let mut lag = LagReadings::default();
    for tick in timeline {
        if tick.ended <= from || to.is_some_and(|to| tick.started >= to) {
            continue;
        }
        if saturated_only && !tick.saturated {
            continue;
        }
        peak_waiting = peak_waiting.max(tick.peak_waiting);
        lag.merge(&tick.lag);
        let length = tick.started.until(tick.ended);
        loads.push(offered(&tick.usage, length));
    }
    if let Some((usage, length, saturated, open_lag)) = open {
        if !saturated_only || saturated {
            loads.push(offered(&usage, length));
            lag.merge(&open_lag);
        }
    }
    let loads: Vec<f64> = loads.into_iter().flatten().collect();
    let load = if loads.is_empty() {
        Load::default()
    } else {
        Load {
            mean: loads.iter().sum::<f64>() / loads.len() as f64,
            peak: loads.iter().copied().fold(0.0, f64::max),
        }
    };
    (load, peak_waiting, lag)
}

fn offered(usage: &Usage, length: Duration) -> Option<f64> {
    // Ticks shorter than this (a reader's drain right after a tick) say
    // nothing reliable about a rate.
    if length < Duration::from_millis(5) {
        return None;
    }
    Some((usage.held + usage.waited).as_secs_f64() / length.as_secs_f64())
}

fn open_tick(view: &PoolView) -> (Usage, Duration) {
    let mut usage = Usage::default();
    for (_, u) in view.archive.open.values() {
        usage.merge(u);
    }
    let started = view
        .archive
        .timeline
        .last()
        .map_or(view.archive.created, |t| t.ended);
    (usage, started.until(view.now))
}

/// The period "now" describes (see the module docs).
pub(super) fn now(view: &PoolView) -> Period {
    let max_size = view.status.max_size;
    let ongoing = view.archive.episodes.iter().find(|e| e.ended.is_none());
    let (open_usage, open_length) = open_tick(view);
    let open_pairs = view
        .archive
        .open
        .iter()
        .map(|(key, (counts, usage))| (*key, *counts, *usage));
    let open = Some((
        open_usage,
        open_length,
        view.open_tick_saturated,
        view.open_lag,
    ));
    if let Some(episode) = ongoing {
        let mut pairs: Vec<(StatsKey, Counts, Usage)> = episode
            .pairs
            .iter()
            .map(|(key, (counts, usage))| (*key, *counts, *usage))
            .collect();
        if view.open_tick_saturated {
            pairs.extend(open_pairs);
        }
        let (load, peak_waiting, runtime_lag) =
            load(&view.archive.timeline, episode.started, None, open, true);
        return Period {
            span: Span::Ongoing {
                since: episode.started,
            },
            saturated: true,
            duration: episode.started.until(view.now),
            parties: parties(pairs),
            load,
            max_size,
            runtime_lag,
            peak_waiting: peak_waiting
                .max(episode.peak_waiting)
                .max(view.waiters.len())
                .max(view.open_peak_waiting),
        };
    }
    if view.open_tick_saturated {
        // Saturated since the last tick: an episode starting now (or a
        // burst shorter than a tick).
        let since = view.now.checked_sub(open_length).unwrap_or(view.now);
        let (load, peak_waiting, runtime_lag) = load(&[], since, None, open, true);
        return Period {
            span: Span::Ongoing { since },
            saturated: true,
            duration: open_length,
            parties: parties(open_pairs),
            load,
            max_size,
            runtime_lag,
            peak_waiting: peak_waiting
                .max(view.waiters.len())
                .max(view.open_peak_waiting),
        };
    }
    let calm = view
        .archive
        .calm
        .as_ref()
        .filter(|calm| calm.since >= view.archive.window_start);
    if let Some(calm) = calm {
        let pairs = calm
            .pairs
            .iter()
            .map(|(key, (counts, usage))| (*key, *counts, *usage))
            .chain(open_pairs);
        let (load, peak_waiting, runtime_lag) =
            load(&view.archive.timeline, calm.since, None, open, false);
        return Period {
            span: Span::SinceEpisode { since: calm.since },
            saturated: false,
            duration: calm.since.until(view.now),
            parties: parties(pairs),
            load,
            max_size,
            peak_waiting,
            runtime_lag,
        };
    }
    // The whole window. Its saturated time, if it has any, is what the
    // verdicts weigh.
    let saturated = view.archive.pairs.values().any(|p| !p.saturated.is_zero());
    let pairs = view.archive.pairs.iter().map(|(key, pair)| {
        let usage = if saturated {
            pair.saturated
        } else {
            pair.usage
        };
        (*key, pair.counts, usage)
    });
    let open_usage_pairs = view
        .archive
        .open
        .iter()
        .filter(|_| !saturated)
        .map(|(key, (_, usage))| (*key, Counts::default(), *usage));
    let since = view.archive.window_start;
    let (load, peak_waiting, runtime_lag) =
        load(&view.archive.timeline, since, None, open, saturated);
    Period {
        span: Span::Window { since },
        saturated,
        duration: since.until(view.now),
        parties: parties(pairs.chain(open_usage_pairs)),
        load,
        max_size,
        peak_waiting,
        runtime_lag,
    }
}

/// The period of one episode.
pub(super) fn episode(view: &PoolView, episode: &Episode) -> Period {
    let pairs = episode
        .pairs
        .iter()
        .map(|(key, (counts, usage))| (*key, *counts, *usage));
    let (load, peak_waiting, runtime_lag) = load(
        &view.archive.timeline,
        episode.started,
        episode.ended,
        None,
        true,
    );
    let end = episode.ended.unwrap_or(view.now);
    Period {
        span: Span::Episode {
            started: episode.started,
            ended: episode.ended,
        },
        saturated: true,
        duration: episode.started.until(end),
        parties: parties(pairs),
        load,
        runtime_lag,
        max_size: episode.max_size.max(view.status.max_size),
        peak_waiting: peak_waiting.max(episode.peak_waiting),
    }
}
