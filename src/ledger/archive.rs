//! The archive: what the shards' drains add up to, kept by time so that a
//! report describes *now* and a past incident reads as past.
//!
//! * **Generations.** Counts and distributions go to the current of two
//!   generations, each half the window long; when the current one is a
//!   half-window old it becomes the previous one and the previous one is
//!   dropped. The window a reader sees is both: between half the window and
//!   the whole window of history.
//! * **Ticks.** Connection time by state (in a call, idle in transaction,
//!   outside any call, unobserved) and wait time accumulate in the open
//!   tick; closing a tick classifies it as saturated (callers waited, or
//!   every connection was in use) or not, and files its usage under the
//!   generation's all-time and saturated-time attribution.
//! * **Timeline.** Each closed tick's pool-wide record, and its busiest
//!   call sites ([`SITES_PER_TICK`] at most, by connection time) with the
//!   remainder in one sum: what the timeline picture stacks, in memory
//!   bounded by the timeline's capacity.
//! * **Episodes.** Runs of saturated ticks, each with its own attribution
//!   and counts, so each gets its own verdict.
//! * **Lifetime.** Plain counts since the pool was wrapped.
//!
//! Only drains (the sampler's tick, a reader) and readers take the
//! archive's lock; the hot path never does.

use std::collections::VecDeque;
use std::time::Duration;

use super::lag::LagReadings;
use super::shard::Drained;
use super::stats::{Counts, Distributions, SiteDelta, StatsKey, Usage};
use super::ticks::Ticks;
use crate::site::CallSite;

/// Hash maps whose keys no attacker picks (call sites, spans, the client
/// library's statement names): foldhash rather than SipHash (a `CallSite`
/// hashes its file name; a snapshot hashes thousands).
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Call sites kept per timeline tick (its busiest, by connection time); the
/// rest of the tick's connection time is kept as one sum. Bounds the
/// breakdown to this many [`SiteHeld`]s (40 bytes each) per tick.
pub(crate) const SITES_PER_TICK: usize = 8;

/// Episodes kept (the oldest go first).
const EPISODES_KEPT: usize = 16;
/// An episode ends after this much calm (and at least two calm ticks), so
/// a burst that pauses for one tick stays one episode.
const EPISODE_CALM: Duration = Duration::from_secs(1);

/// Per (site, span) in a generation.
#[derive(Clone, Debug, Default)]
pub(crate) struct PairStats {
    pub(crate) counts: Counts,
    /// Connection time over all closed ticks.
    pub(crate) usage: Usage,
    /// Of that, during saturated ticks.
    pub(crate) saturated: Usage,
}

/// Per site or per span in a generation: counts, connection time, and
/// the distributions (with a version, so summaries are recomputed only
/// when they changed).
#[derive(Clone, Debug, Default)]
pub(crate) struct Aggregate {
    pub(crate) counts: Counts,
    pub(crate) usage: Usage,
    dist: Distributions,
    version: u64,
}

impl Aggregate {
    fn add(&mut self, counts: &Counts, dist: &Distributions) {
        self.counts.merge(counts);
        self.dist.merge(dist);
        self.version += 1;
    }
}

#[derive(Debug, Default)]
struct Generation {
    /// Distinguishes generations in the summary cache.
    id: u64,
    started: Option<Ticks>,
    pairs: HashMap<StatsKey, PairStats>,
    sites: HashMap<CallSite, Aggregate>,
    spans: HashMap<Option<&'static str>, Aggregate>,
}

/// What a closed tick recorded, pool-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TickRecord {
    pub(crate) started: Ticks,
    pub(crate) ended: Ticks,
    /// The pool's status at the tick's end, when it was sampled.
    pub(crate) in_use: usize,
    pub(crate) idle: usize,
    pub(crate) waiting: usize,
    pub(crate) max_size: usize,
    /// Most callers waiting at once during the tick.
    pub(crate) peak_waiting: usize,
    /// Its connection time and, in `usage.checkouts`, its checkouts.
    pub(crate) usage: Usage,
    pub(crate) saturated: bool,
    /// The runtime's scheduling delay read during the tick.
    pub(crate) lag: LagReadings,
    /// How many of the tick's busiest sites the archive keeps for it (at
    /// most [`SITES_PER_TICK`]), in its timeline's site ring.
    pub(crate) top_sites: u8,
    /// Connection time of the tick's other sites: `usage.held` less that of
    /// the kept ones.
    pub(crate) other_sites_held: Duration,
}

/// One call site's connection time in one timeline tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SiteHeld {
    pub(crate) site: CallSite,
    pub(crate) held: Duration,
}

/// A run of saturated ticks.
#[derive(Clone, Debug)]
pub(crate) struct Episode {
    pub(crate) started: Ticks,
    /// The end of its last saturated tick, once calm returned.
    pub(crate) ended: Option<Ticks>,
    /// Its last saturated tick's end, while it lasts.
    pub(crate) last_saturated: Ticks,
    pub(crate) ticks: u32,
    pub(crate) peak_waiting: usize,
    pub(crate) max_size: usize,
    pub(crate) pairs: HashMap<StatsKey, (Counts, Usage)>,
}

#[derive(Debug, Default)]
struct OpenTick {
    started: Ticks,
    pairs: HashMap<StatsKey, (Counts, Usage)>,
}

/// Counts and connection time since the last episode ended: what "now"
/// means once an incident is over.
#[derive(Clone, Debug, Default)]
pub(crate) struct Calm {
    pub(crate) since: Ticks,
    pub(crate) pairs: HashMap<StatsKey, (Counts, Usage)>,
}

/// The sampled status a tick closes with.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TickStatus {
    pub(crate) in_use: usize,
    pub(crate) idle: usize,
    pub(crate) waiting: usize,
    pub(crate) max_size: usize,
    pub(crate) peak_waiting: usize,
    /// The runtime's scheduling delay read during the tick.
    pub(crate) lag: LagReadings,
}

pub(crate) struct Archive {
    /// The window readers see (two generations of half of it).
    window: Duration,
    generations: [Generation; 2],
    next_generation: u64,
    lifetime: Counts,
    /// Summaries of the window's distributions, by key, with the
    /// (generation id, version) pairs they were computed from.
    site_summaries: HashMap<CallSite, (SummaryStamp, DistSummary)>,
    span_summaries: HashMap<Option<&'static str>, (SummaryStamp, DistSummary)>,
    open: OpenTick,
    timeline: VecDeque<TickRecord>,
    /// The timeline's busiest sites, tick after tick: each record's
    /// `top_sites` entries, in the records' order (so the oldest record's
    /// are at the front).
    timeline_sites: VecDeque<SiteHeld>,
    timeline_capacity: usize,
    current_episode: Option<Episode>,
    episodes: VecDeque<Episode>,
    /// Calm ticks since the current episode's last saturated one.
    calm_ticks: u32,
    /// Since the last episode ended (`None` before the first, and while
    /// one lasts).
    calm: Option<Calm>,
    /// The calm ticks after the current episode's last saturated one: the
    /// start of the next calm period, if the episode ends.
    trailing_calm: HashMap<StatsKey, (Counts, Usage)>,
    /// Per shard: the reset deltas its next drain swaps in.
    spares: Vec<Vec<SiteDelta>>,
    /// Any checkout made inside a span the subscriber tracks.
    pub(crate) spans_seen: bool,
    pub(crate) created: Ticks,
}

/// What a reader sees of the archive, as plain data.
#[derive(Clone, Debug, Default)]
pub(crate) struct ArchiveView {
    pub(crate) window_start: Ticks,
    pub(crate) pairs: HashMap<StatsKey, PairStats>,
    /// The open tick's counts and usage (not yet classified), per pair.
    pub(crate) open: HashMap<StatsKey, (Counts, Usage)>,
    /// Since the last episode ended, closed ticks only.
    pub(crate) calm: Option<Calm>,
    pub(crate) timeline: Vec<TickRecord>,
    /// Each record's busiest sites, busiest first, in the records' order
    /// (see [`ArchiveView::timeline_with_sites`]).
    pub(crate) timeline_sites: Vec<SiteHeld>,
    pub(crate) episodes: Vec<Episode>,
    pub(crate) created: Ticks,
}

impl ArchiveView {
    /// Each timeline record with its busiest sites, oldest first.
    pub(crate) fn timeline_with_sites(&self) -> impl Iterator<Item = (&TickRecord, &[SiteHeld])> {
        let mut rest: &[SiteHeld] = &self.timeline_sites;
        self.timeline.iter().map(move |record| {
            let (sites, after) = rest.split_at(usize::from(record.top_sites).min(rest.len()));
            rest = after;
            (record, sites)
        })
    }
}

impl Archive {
    pub(crate) fn new(
        now: Ticks,
        shards: usize,
        window: Duration,
        timeline_capacity: usize,
    ) -> Self {
        let mut generations: [Generation; 2] = Default::default();
        generations[0].started = Some(now);
        generations[0].id = 1;
        Self {
            window,
            generations,
            next_generation: 2,
            lifetime: Counts::default(),
            site_summaries: HashMap::default(),
            span_summaries: HashMap::default(),
            open: OpenTick {
                started: now,
                pairs: HashMap::default(),
            },
            timeline: VecDeque::with_capacity(timeline_capacity.min(1024)),
            timeline_sites: VecDeque::new(),
            timeline_capacity,
            current_episode: None,
            episodes: VecDeque::new(),
            calm_ticks: 0,
            calm: None,
            trailing_calm: HashMap::default(),
            spares: (0..shards).map(|_| Vec::new()).collect(),
            spans_seen: false,
            created: now,
        }
    }

    /// The spare deltas for shard `index`'s next drain.
    pub(crate) fn take_spare(&mut self, index: usize) -> Vec<SiteDelta> {
        std::mem::take(&mut self.spares[index])
    }

    /// Adds one shard's drain; keeps its deltas, reset, as that shard's
    /// next spare.
    pub(crate) fn absorb(&mut self, index: usize, mut drained: Drained) {
        self.rotate(drained.at);
        let [current, _] = &mut self.generations;
        for &index in &drained.touched {
            let Some(delta) = drained.deltas.get_mut(index as usize) else {
                continue;
            };
            let key = delta.key;
            if key.span.is_some() {
                self.spans_seen = true;
            }
            let pair = current.pairs.entry(key).or_default();
            pair.counts.merge(&delta.counts);
            current
                .sites
                .entry(key.site)
                .or_default()
                .add(&delta.counts, &delta.dist);
            current
                .spans
                .entry(key.span)
                .or_default()
                .add(&delta.counts, &delta.dist);
            self.lifetime.merge(&delta.counts);
            let open = self.open.pairs.entry(key).or_default();
            open.0.merge(&delta.counts);
            open.1.merge(&delta.usage);
            open.1.checkouts += delta.counts.checkouts;
            delta.reset();
        }
        self.spares[index] = drained.deltas;
    }

    /// Moves to a new generation when the current one is half a window old.
    fn rotate(&mut self, now: Ticks) {
        let half = self.window / 2;
        let started = self.generations[0].started.unwrap_or(now);
        if started.until(now) < half {
            return;
        }
        self.generations.swap(0, 1);
        self.generations[0] = Generation {
            id: self.next_generation,
            started: Some(now),
            ..Generation::default()
        };
        self.next_generation += 1;
        // Far behind (nothing read for a whole window): the previous one
        // is stale too.
        if started.until(now) >= self.window {
            self.generations[1] = Generation::default();
        }
    }

    /// Closes the open tick at `now` with the sampled status: classifies
    /// it, files its usage, extends or ends the episode.
    pub(crate) fn close_tick(
        &mut self,
        now: Ticks,
        status: TickStatus,
        tick: Duration,
    ) -> TickRecord {
        self.rotate(now);
        let open = std::mem::replace(
            &mut self.open,
            OpenTick {
                started: now,
                pairs: HashMap::default(),
            },
        );
        let mut usage = Usage::default();
        for (_, pair_usage) in open.pairs.values() {
            usage.merge(pair_usage);
        }
        let peak_waiting = status.peak_waiting.max(status.waiting);
        let saturated = peak_waiting > 0
            || !usage.waited.is_zero()
            || (status.max_size > 0 && status.in_use >= status.max_size);
        let current = &mut self.generations[0];
        for (key, (_, pair_usage)) in &open.pairs {
            let pair = current.pairs.entry(*key).or_default();
            pair.usage.merge(pair_usage);
            if saturated {
                pair.saturated.merge(pair_usage);
            }
            current
                .sites
                .entry(key.site)
                .or_default()
                .usage
                .merge(pair_usage);
            current
                .spans
                .entry(key.span)
                .or_default()
                .usage
                .merge(pair_usage);
        }
        let mut record = TickRecord {
            started: open.started,
            ended: now,
            in_use: status.in_use,
            idle: status.idle,
            waiting: status.waiting,
            max_size: status.max_size,
            peak_waiting,
            usage,
            saturated,
            lag: status.lag,
            top_sites: 0,
            other_sites_held: Duration::ZERO,
        };
        if self.timeline_capacity > 0 {
            if self.timeline.len() == self.timeline_capacity {
                if let Some(oldest) = self.timeline.pop_front() {
                    let kept = usize::from(oldest.top_sites).min(self.timeline_sites.len());
                    self.timeline_sites.drain(..kept);
                }
            }
            let top = busiest_sites(&open.pairs);
            let kept: Duration = top.iter().map(|s| s.held).sum();
            record.top_sites = top.len() as u8;
            record.other_sites_held = usage.held.saturating_sub(kept);
            self.timeline_sites.extend(top);
            self.timeline.push_back(record);
        }
        self.follow_episode(&record, open.pairs, tick);
        record
    }

    fn follow_episode(
        &mut self,
        record: &TickRecord,
        pairs: HashMap<StatsKey, (Counts, Usage)>,
        tick: Duration,
    ) {
        if record.saturated {
            self.calm_ticks = 0;
            self.calm = None;
            self.trailing_calm.clear();
            let episode = self.current_episode.get_or_insert_with(|| Episode {
                started: record.started,
                ended: None,
                last_saturated: record.ended,
                ticks: 0,
                peak_waiting: 0,
                max_size: record.max_size,
                pairs: HashMap::default(),
            });
            episode.ticks += 1;
            episode.last_saturated = record.ended;
            episode.peak_waiting = episode.peak_waiting.max(record.peak_waiting);
            episode.max_size = episode.max_size.max(record.max_size);
            merge_pairs(&mut episode.pairs, &pairs);
            return;
        }
        let Some(episode) = &mut self.current_episode else {
            if let Some(calm) = &mut self.calm {
                merge_pairs(&mut calm.pairs, &pairs);
            }
            return;
        };
        if self.calm_ticks == 0 {
            // The holds that ended as the saturation lifted are the ones
            // that made it: their counts (how many, how long) belong to the
            // episode; their time is not saturated time.
            for (key, (counts, _)) in &pairs {
                episode.pairs.entry(*key).or_default().0.merge(counts);
            }
        }
        merge_pairs(&mut self.trailing_calm, &pairs);
        self.calm_ticks += 1;
        let calm_for = episode.last_saturated.until(record.ended);
        if self.calm_ticks >= 2 && calm_for >= EPISODE_CALM.max(tick * 2) {
            let mut episode = self.current_episode.take().expect("checked above");
            episode.ended = Some(episode.last_saturated);
            // The calm ticks so far belong to the calm period.
            self.calm = Some(Calm {
                since: episode.last_saturated,
                pairs: std::mem::take(&mut self.trailing_calm),
            });
            if self.episodes.len() == EPISODES_KEPT {
                self.episodes.pop_front();
            }
            self.episodes.push_back(episode);
        }
    }

    /// A copy of what readers need, taken under the archive's lock.
    pub(crate) fn view(&self) -> ArchiveView {
        let [current, previous] = &self.generations;
        let mut pairs = current.pairs.clone();
        for (key, stats) in &previous.pairs {
            let pair = pairs.entry(*key).or_default();
            pair.counts.merge(&stats.counts);
            pair.usage.merge(&stats.usage);
            pair.saturated.merge(&stats.saturated);
        }
        let window_start = previous.started.or(current.started).unwrap_or(self.created);
        let mut episodes: Vec<Episode> = self.episodes.iter().cloned().collect();
        episodes.extend(self.current_episode.clone());
        ArchiveView {
            window_start,
            pairs,
            open: self.open.pairs.clone(),
            calm: self.calm.clone(),
            timeline: self.timeline.iter().copied().collect(),
            timeline_sites: self.timeline_sites.iter().copied().collect(),
            episodes,
            created: self.created,
        }
    }
}

/// A tick's busiest sites (spans added up), at most [`SITES_PER_TICK`],
/// busiest first; sites that held no connection are left out.
fn busiest_sites(pairs: &HashMap<StatsKey, (Counts, Usage)>) -> Vec<SiteHeld> {
    let mut held: Vec<SiteHeld> = pairs
        .iter()
        .filter(|(_, (_, usage))| !usage.held.is_zero())
        .map(|(key, (_, usage))| SiteHeld {
            site: key.site,
            held: usage.held,
        })
        .collect();
    // One entry per site: its spans' entries are adjacent once sorted.
    held.sort_unstable_by_key(|s| s.site);
    let mut by_site: Vec<SiteHeld> = Vec::with_capacity(held.len());
    for entry in held {
        match by_site.last_mut() {
            Some(last) if last.site == entry.site => last.held += entry.held,
            _ => by_site.push(entry),
        }
    }
    let order = |a: &SiteHeld, b: &SiteHeld| b.held.cmp(&a.held).then(a.site.cmp(&b.site));
    if by_site.len() > SITES_PER_TICK {
        by_site.select_nth_unstable_by(SITES_PER_TICK - 1, order);
        by_site.truncate(SITES_PER_TICK);
    }
    by_site.sort_unstable_by(order);
    by_site
}

fn merge_pairs(
    into: &mut HashMap<StatsKey, (Counts, Usage)>,
    from: &HashMap<StatsKey, (Counts, Usage)>,
) {
    for (key, (counts, usage)) in from {
        let entry = into.entry(*key).or_default();
        entry.0.merge(counts);
        entry.1.merge(usage);
    }
}

/// Wait and hold distributions, summarised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DistSummary {
    pub(crate) wait: Summary,
    pub(crate) hold: Summary,
}

/// One distribution, summarised (microsecond resolution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) mean: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl Summary {
    /// `h` plus `zeros` values of zero (the waits counted, not recorded),
    /// without copying the histogram.
    fn of(h: &hdrhistogram::Histogram<u64>, zeros: u64) -> Self {
        let recorded = h.len();
        let total = recorded + zeros;
        if total == 0 {
            return Summary::default();
        }
        let at = |q: f64| {
            let rank = q * total as f64;
            if recorded == 0 || rank <= zeros as f64 {
                return Duration::ZERO;
            }
            let q = ((rank - zeros as f64) / recorded as f64).clamp(0.0, 1.0);
            Duration::from_micros(h.value_at_quantile(q))
        };
        let mean = if recorded == 0 {
            0.0
        } else {
            h.mean() * recorded as f64 / total as f64
        };
        Summary {
            count: total,
            mean: Duration::from_secs_f64(mean / 1e6),
            p50: at(0.5),
            p99: at(0.99),
            max: if recorded == 0 {
                Duration::ZERO
            } else {
                Duration::from_micros(h.max())
            },
        }
    }
}

/// Which generations and versions a cached summary was computed from.
type SummaryStamp = [(u64, u64); 2];

/// Per site or span over the window: counts, connection time (closed
/// ticks and the open one), and the distributions summarised.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyTotals {
    pub(crate) counts: Counts,
    pub(crate) usage: Usage,
    pub(crate) summary: DistSummary,
}

/// What a snapshot needs of the archive, aggregated under its lock (no
/// per-pair copy).
#[derive(Clone, Debug, Default)]
pub(crate) struct SnapshotParts {
    pub(crate) window_start: Ticks,
    pub(crate) sites: Vec<(CallSite, KeyTotals)>,
    pub(crate) spans: Vec<(Option<&'static str>, KeyTotals)>,
    pub(crate) lifetime: Counts,
    pub(crate) spans_seen: bool,
}

/// The window's totals of each key of one kind (sites or spans), with
/// summaries taken from `cache` unless their distributions changed.
fn window_totals<K: Copy + Eq + std::hash::Hash>(
    current: (u64, &HashMap<K, Aggregate>),
    previous: (u64, &HashMap<K, Aggregate>),
    open: impl Iterator<Item = (K, Usage)>,
    cache: &mut HashMap<K, (SummaryStamp, DistSummary)>,
) -> Vec<(K, KeyTotals)> {
    let mut totals: HashMap<K, KeyTotals> = HashMap::default();
    let mut scratch = Distributions::default();
    let keys: Vec<K> = current
        .1
        .keys()
        .chain(previous.1.keys().filter(|k| !current.1.contains_key(k)))
        .copied()
        .collect();
    for key in keys {
        let now = current.1.get(&key);
        let before = previous.1.get(&key);
        let stamp = [
            (current.0, now.map_or(0, |a| a.version)),
            (previous.0, before.map_or(0, |a| a.version)),
        ];
        let entry = totals.entry(key).or_default();
        for aggregate in [now, before].into_iter().flatten() {
            entry.counts.merge(&aggregate.counts);
            entry.usage.merge(&aggregate.usage);
        }
        let summary = match cache.get(&key) {
            Some((cached, summary)) if *cached == stamp => *summary,
            _ => {
                let merged = match (now, before) {
                    (Some(a), Some(b)) => {
                        scratch.reset();
                        scratch.merge(&a.dist);
                        scratch.merge(&b.dist);
                        &scratch
                    }
                    (Some(a), None) | (None, Some(a)) => &a.dist,
                    (None, None) => continue,
                };
                let summary = DistSummary {
                    wait: Summary::of(&merged.wait, merged.zero_waits),
                    hold: Summary::of(&merged.hold, 0),
                };
                cache.insert(key, (stamp, summary));
                summary
            }
        };
        entry.summary = summary;
    }
    for (key, usage) in open {
        totals.entry(key).or_default().usage.merge(&usage);
    }
    // Keys gone from both generations leave the cache too.
    cache.retain(|key, _| totals.contains_key(key));
    totals.into_iter().collect()
}

impl Archive {
    /// The window's totals per site and per span, under the archive's lock.
    pub(crate) fn snapshot_parts(&mut self) -> SnapshotParts {
        let [current, previous] = &self.generations;
        let window_start = previous.started.or(current.started).unwrap_or(self.created);
        let sites = window_totals(
            (current.id, &current.sites),
            (previous.id, &previous.sites),
            self.open.pairs.iter().map(|(k, (_, u))| (k.site, *u)),
            &mut self.site_summaries,
        );
        let spans = window_totals(
            (current.id, &current.spans),
            (previous.id, &previous.spans),
            self.open.pairs.iter().map(|(k, (_, u))| (k.span, *u)),
            &mut self.span_summaries,
        );
        SnapshotParts {
            window_start,
            sites,
            spans,
            lifetime: self.lifetime,
            spans_seen: self.spans_seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn key(line: u32) -> StatsKey {
        StatsKey {
            site: CallSite::new("src/x.rs", line, 1),
            span: None,
        }
    }

    fn drained(at: Ticks, line: u32, held: Duration, waited: Duration) -> Drained {
        let mut delta = SiteDelta::new(key(line));
        delta.record_checkout(Duration::ZERO);
        delta.usage.add_hold(held, None);
        delta.usage.waited = waited;
        delta.touched = true;
        Drained {
            at,
            deltas: vec![delta],
            touched: vec![0],
        }
    }

    /// One drain with a delta per `(line, span, held)`.
    fn drained_sites(at: Ticks, holds: &[(u32, Option<&'static str>, Duration)]) -> Drained {
        let deltas: Vec<SiteDelta> = holds
            .iter()
            .map(|&(line, span, held)| {
                let mut delta = SiteDelta::new(StatsKey { span, ..key(line) });
                delta.record_checkout(Duration::ZERO);
                delta.usage.add_hold(held, None);
                delta.touched = true;
                delta
            })
            .collect();
        Drained {
            at,
            touched: (0..deltas.len() as u32).collect(),
            deltas,
        }
    }

    #[test]
    fn a_tick_keeps_its_busiest_sites_and_sums_the_rest() {
        Ticks::init();
        let start = Instant::now();
        let at = |ms: u64| Ticks::of(start + Duration::from_millis(ms));
        let ms = Duration::from_millis;
        let mut archive = Archive::new(at(0), 1, Duration::from_secs(60), 100);
        // Twelve sites holding 1..=12 ms; site 12 also under a span, so
        // its two pairs add up to one site of 12 + 20 ms.
        let mut holds: Vec<(u32, Option<&'static str>, Duration)> = (1..=12)
            .map(|line| (line, None, ms(u64::from(line))))
            .collect();
        holds.push((12, Some("job"), ms(20)));
        archive.absorb(0, drained_sites(at(900), &holds));
        let record = archive.close_tick(at(1000), TickStatus::default(), ms(1000));
        let view = archive.view();
        let (tick, sites) = view.timeline_with_sites().next().expect("one tick");
        assert_eq!(*tick, record);
        assert_eq!(sites.len(), SITES_PER_TICK);
        assert_eq!(sites[0].site, key(12).site);
        assert_eq!(sites[0].held, ms(32));
        let lines: Vec<u32> = sites.iter().map(|s| s.site.line).collect();
        assert_eq!(lines, [12, 11, 10, 9, 8, 7, 6, 5]);
        // The rest: sites 1..=4.
        assert_eq!(tick.other_sites_held, ms(1 + 2 + 3 + 4));
        let kept: Duration = sites.iter().map(|s| s.held).sum();
        assert_eq!(kept + tick.other_sites_held, tick.usage.held);
    }

    #[test]
    fn the_site_breakdown_stays_aligned_and_bounded_as_ticks_age_out() {
        Ticks::init();
        let start = Instant::now();
        let at = |ms: u64| Ticks::of(start + Duration::from_millis(ms));
        let ms = Duration::from_millis;
        let capacity = 5;
        let mut archive = Archive::new(at(0), 1, Duration::from_secs(600), capacity);
        for tick in 1..=20u64 {
            // Tick n: n sites (at most 20), each holding n ms; none at
            // every third tick.
            let count = if tick.is_multiple_of(3) {
                0
            } else {
                tick as u32
            };
            let holds: Vec<_> = (1..=count).map(|line| (line, None, ms(tick))).collect();
            archive.absorb(0, drained_sites(at(tick * 100 - 10), &holds));
            archive.close_tick(at(tick * 100), TickStatus::default(), ms(100));
            assert!(archive.timeline.len() <= capacity);
            assert!(archive.timeline_sites.len() <= capacity * SITES_PER_TICK);
        }
        let view = archive.view();
        let ticks: Vec<_> = view.timeline_with_sites().collect();
        assert_eq!(ticks.len(), capacity);
        for (record, sites) in ticks {
            let tick = at(0).until(record.ended).as_millis() as u64 / 100;
            let count = if tick.is_multiple_of(3) {
                0
            } else {
                tick as usize
            };
            assert_eq!(sites.len(), count.min(SITES_PER_TICK), "tick {tick}");
            assert!(
                sites.iter().all(|s| s.held == ms(tick)),
                "tick {tick}: {sites:?}"
            );
            let rest = count.saturating_sub(SITES_PER_TICK) as u32;
            assert_eq!(record.other_sites_held, ms(tick) * rest, "tick {tick}");
        }
        assert_eq!(
            view.timeline_sites.len(),
            view.timeline
                .iter()
                .map(|t| usize::from(t.top_sites))
                .sum::<usize>()
        );
    }

    #[test]
    fn old_generations_age_out() {
        Ticks::init();
        let start = Instant::now();
        let at = |s: u64| Ticks::of(start + Duration::from_secs(s));
        let mut archive = Archive::new(at(0), 1, Duration::from_secs(60), 100);
        archive.absorb(
            0,
            drained(at(1), 1, Duration::from_millis(800), Duration::ZERO),
        );
        assert_eq!(archive.view().pairs[&key(1)].counts.checkouts, 1);
        // Half a window later it is in the previous generation: still seen.
        archive.absorb(0, drained(at(31), 2, Duration::ZERO, Duration::ZERO));
        assert!(archive.view().pairs.contains_key(&key(1)));
        // A whole window later it is gone; the lifetime keeps it.
        archive.absorb(0, drained(at(62), 2, Duration::ZERO, Duration::ZERO));
        let view = archive.view();
        assert!(!view.pairs.contains_key(&key(1)), "{:?}", view.pairs);
        assert_eq!(archive.snapshot_parts().lifetime.checkouts, 3);
    }

    #[test]
    fn saturated_ticks_make_an_episode_that_ends_in_calm() {
        Ticks::init();
        let start = Instant::now();
        let at = |ms: u64| Ticks::of(start + Duration::from_millis(ms));
        let tick = Duration::from_millis(500);
        let mut archive = Archive::new(at(0), 1, Duration::from_secs(600), 100);
        let status = TickStatus {
            max_size: 4,
            ..TickStatus::default()
        };
        archive.absorb(
            0,
            drained(
                at(400),
                1,
                Duration::from_millis(300),
                Duration::from_millis(200),
            ),
        );
        archive.close_tick(at(500), status, tick);
        let view = archive.view();
        assert_eq!(view.episodes.len(), 1);
        assert!(view.episodes[0].ended.is_none(), "still going");
        assert!(view.timeline[0].saturated);
        assert_eq!(
            view.pairs[&key(1)].saturated.waited,
            Duration::from_millis(200)
        );
        // Calm for 2 ticks and a second: it ends at its last saturated tick.
        for ms in [1000, 1500, 2000] {
            archive.absorb(
                0,
                drained(at(ms - 10), 1, Duration::from_millis(10), Duration::ZERO),
            );
            archive.close_tick(at(ms), status, tick);
        }
        let view = archive.view();
        assert_eq!(view.episodes[0].ended, Some(at(500)));
        assert_eq!(
            view.pairs[&key(1)].saturated.held,
            Duration::from_millis(300)
        );
        assert_eq!(view.pairs[&key(1)].usage.held, Duration::from_millis(330));
        // The saturated time's checkouts are its tick's one, not the
        // window's four: a share per checkout of it is taken over one.
        assert_eq!(view.pairs[&key(1)].counts.checkouts, 4);
        assert_eq!(view.pairs[&key(1)].usage.checkouts, 4);
        assert_eq!(view.pairs[&key(1)].saturated.checkouts, 1);
    }
}
