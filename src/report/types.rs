//! The report's public types: plain data, `serde` when the feature is on.

use std::fmt;
use std::time::Duration;

use crate::snapshot::{PoolStatus, SiteSnapshot, SpanSnapshot};
use crate::timeline::PressureSample;

/// Busy share of the hold; unknown (`None`) when no database call was
/// observed.
fn ratio(part: Duration, whole: Duration, observed: bool) -> Option<f64> {
    (observed && !whole.is_zero()).then(|| (part.as_secs_f64() / whole.as_secs_f64()).min(1.0))
}

/// Milliseconds as `f64`, the unit of durations in reports.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The diagnosis of one pool. See the [module docs](crate::report) for the rules.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: poolwatch::postgres::Pool) {
/// let report = pool.report();
/// println!("{report}");
/// for verdict in &report.verdicts {
///     println!("{:?}: {}", verdict.kind, verdict.reason);
///     if let Some(culprit) = verdict.evidence.first() {
///         println!("  culprit: {} {}", culprit.subject, culprit.detail);
///     }
/// }
/// for episode in &report.episodes {
///     println!("episode {:.0} s ago: {:?}", episode.started_ago_secs, episode.verdicts[0].kind);
/// }
/// std::fs::write("pool.svg", report.timeline_svg()).unwrap();
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Report {
    /// The pool's name.
    pub pool: String,
    /// The hold threshold the verdicts used, in milliseconds.
    pub hold_threshold_ms: f64,
    /// How far back the statistics reach, in seconds.
    pub window_secs: f64,
    /// deadpool's status when the report was made.
    pub status: PoolStatus,
    /// What the verdicts describe (see [the module docs](crate::report)).
    pub now: Scope,
    /// What is wrong now, with evidence; `Healthy` alone when nothing is.
    pub verdicts: Vec<Verdict>,
    /// Saturation episodes that are over, oldest first, each with its own
    /// verdicts (an ongoing one is what [`verdicts`](Self::verdicts)
    /// describe).
    pub episodes: Vec<EpisodeReport>,
    /// A summary of the timeline.
    pub pressure: Pressure,
    /// The pressure timeline, oldest sample first.
    pub timeline: Vec<PressureSample>,
    /// The timeline's connection time by call site: one
    /// [`SiteSample`] per sample of [`timeline`](Self::timeline).
    pub timeline_sites: SiteTimeline,
    /// When the report was made, in milliseconds since the pool was
    /// wrapped: the clock of [`PressureSample::offset_ms`] (a sample's end
    /// was `offset_ms - sample.offset_ms` milliseconds before the report).
    pub offset_ms: u64,
    /// Call sites over the window, most connection time held first.
    pub sites: Vec<SiteLine>,
    /// Tracing spans (request handlers, jobs), most connection time first.
    pub spans: Vec<SpanLine>,
    /// Whether any checkout was made inside a span the subscriber tracks;
    /// when not, [`spans`](Self::spans) says nothing about handlers and
    /// jobs (the subscriber's filter usually disables the application's
    /// spans, e.g. `RUST_LOG=poolwatch=info`).
    pub spans_visible: bool,
    /// Guards held right now past the hold threshold, longest first.
    pub flagged: Vec<FlaggedGuard>,
    /// Every guard held right now, longest first.
    pub holders: Vec<HolderLine>,
    /// Acquires waiting right now, longest first.
    pub waiters: Vec<WaiterLine>,
    /// What the database server said about the holders' backends, when
    /// the pool was built by poolwatch and was under pressure recently
    /// (the answer is at most a few seconds old).
    pub server: Option<ServerSection>,
}

/// The pressure timeline's connection time by call site: what
/// [`Report::timeline_svg`] stacks.
///
/// Each tick keeps its busiest call sites (at most 8, by connection time)
/// and the rest of its connection time as one sum, so a tick's shares and
/// [`other_ms`](SiteSample::other_ms) add up to its
/// [`PressureSample::connection_ms`]. Divided by the tick's
/// [`interval_ms`](PressureSample::interval_ms), each is a mean number of
/// connections in use.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # fn demo(pool: poolwatch::postgres::Pool) {
/// let report = pool.report();
/// let by_site = &report.timeline_sites;
/// for (sample, split) in report.timeline.iter().zip(&by_site.samples) {
///     let tick = sample.interval_ms.max(1) as f64;
///     for share in &split.sites {
///         let site = &by_site.sites[share.site];
///         println!("{} ms: {site} {:.1} connections", sample.offset_ms, share.connection_ms / tick);
///     }
///     println!("{} ms: other sites {:.1}", sample.offset_ms, split.other_ms / tick);
/// }
/// // The busiest site over the whole timeline, and its connection time.
/// if let Some(site) = by_site.sites.first() {
///     println!("{site}: {:.0} ms", by_site.site_total_ms(0));
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SiteTimeline {
    /// The call sites the samples name (`file:line:column`, or
    /// [`CallSite::OVERFLOW`](crate::CallSite::OVERFLOW)'s `<other call
    /// sites>` for sites past the cap), most connection time over the
    /// timeline first.
    pub sites: Vec<String>,
    /// One per sample of [`Report::timeline`], in the same order.
    pub samples: Vec<SiteSample>,
}

impl SiteTimeline {
    /// The connection time the samples give site `site` (an index into
    /// [`sites`](Self::sites)), in milliseconds.
    pub fn site_total_ms(&self, site: usize) -> f64 {
        self.samples
            .iter()
            .flat_map(|s| &s.sites)
            .filter(|share| share.site == site)
            .map(|share| share.connection_ms)
            .sum()
    }
}

/// One tick's connection time by call site.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SiteSample {
    /// The tick's busiest call sites (at most 8), busiest first.
    pub sites: Vec<SiteShare>,
    /// The connection time of the tick's other call sites, in
    /// milliseconds.
    pub other_ms: f64,
}

/// One call site's connection time in one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SiteShare {
    /// The site: an index into [`SiteTimeline::sites`].
    pub site: usize,
    /// Connection time held at it during the tick, in milliseconds.
    pub connection_ms: f64,
}

/// /// What the database server said about the holders (PostgreSQL's
/// `pg_stat_activity` and `pg_blocking_pids`, asked on a connection of
/// poolwatch's own). Each holder's part is in [`HolderLine::server`].
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ServerSection {
    /// How old the answer is, in milliseconds.
    pub age_ms: f64,
    /// Why the server could not be asked (permissions, server down), when
    /// it could not.
    pub error: Option<String>,
    /// Backends whose details this database role may not see (it lacks
    /// `pg_read_all_stats` and they run as another role).
    pub not_visible: Vec<i32>,
    /// Backends outside the pool that holders wait behind.
    pub outside: Vec<OutsideBackend>,
}

/// A backend outside the pool that some holder waits behind (another
/// service, a migration, a `psql` session).
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct OutsideBackend {
    /// Its process id.
    pub pid: i32,
    /// Its `application_name`.
    pub application_name: Option<String>,
    /// The role it runs as.
    pub role: Option<String>,
    /// What it is doing, e.g. `idle in transaction for 40s`.
    pub doing: String,
    /// How long its transaction has been open, in milliseconds.
    pub transaction_ms: Option<f64>,
    /// Its statement (sanitized), when visible.
    pub statement: Option<String>,
    /// The guards of this pool waiting behind it.
    pub blocks_guards: Vec<u64>,
}

/// What the server says a holder's backend is doing.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ServerState {
    /// `pg_stat_activity.state`: `active`, `idle`, `idle in transaction`,
    /// … (`unknown` when not visible to this role).
    pub state: String,
    /// What it is doing, in words: `waiting on a lock (Lock:
    /// transactionid) for 1.2s`, `idle in transaction for 1.4s`, `running
    /// a statement for 3s`, `idle`.
    pub doing: String,
    /// `wait_event_type: wait_event`, when it waits.
    pub wait_event: Option<String>,
    /// Waiting for a heavyweight lock (a row, a table).
    pub waiting_on_lock: bool,
    /// How long its transaction has been open, in milliseconds.
    pub transaction_ms: Option<f64>,
    /// Guards of this pool at the head of its chain of lock waits.
    pub blocked_by_guards: Vec<u64>,
    /// Backends outside the pool at the head of its chain (`0` stands for
    /// a prepared transaction).
    pub blocked_by_outside: Vec<i32>,
}

/// What a set of verdicts describes.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Scope {
    /// `ongoing episode`, `since the last episode`, `window` or `episode`.
    pub kind: String,
    /// Seconds it covers.
    pub secs: f64,
    /// Whether callers waited (or every connection was in use) during it:
    /// then the verdicts weigh that saturated time.
    pub saturated: bool,
    /// Mean load offered to the pool over it (saturated ticks when
    /// saturated): connections in use plus callers waiting.
    pub mean_offered_load: f64,
    /// The highest load of one tick.
    pub peak_offered_load: f64,
}

/// A saturation episode that is over.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct EpisodeReport {
    /// When it began, seconds before the report.
    pub started_ago_secs: f64,
    /// When it ended, seconds before the report.
    pub ended_ago_secs: f64,
    /// How long it lasted, in seconds.
    pub duration_secs: f64,
    /// Most callers waiting at once.
    pub peak_waiting: usize,
    /// Time callers spent waiting in it, in seconds.
    pub waited_secs: f64,
    /// Acquires that failed in it (timeouts, …).
    pub failures: u64,
    /// Acquires given up by their callers in it.
    pub cancelled: u64,
    /// Mean and peak offered load during it.
    pub mean_offered_load: f64,
    /// The highest load of one tick.
    pub peak_offered_load: f64,
    /// Its own verdicts.
    pub verdicts: Vec<Verdict>,
}

/// The pressure timeline, summarised.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Pressure {
    /// Samples in the timeline.
    pub samples: usize,
    /// Seconds the timeline covers.
    pub window_secs: f64,
    /// The pool's maximum size (latest sample, or status).
    pub max_size: usize,
    /// Most connections in use: sampled, and the pool's size whenever a
    /// caller had to wait (tracked on the acquire path, between samples
    /// too).
    pub peak_in_use: usize,
    /// Mean connections in use, from measured connection time.
    pub mean_in_use: f64,
    /// Most callers waiting at once (tracked on the acquire path).
    pub peak_waiting: usize,
    /// Share of ticks that were saturated.
    pub saturated_share: f64,
    /// Mean checkouts per second over the timeline.
    pub mean_checkout_rate: f64,
    /// Checkouts per second at the busiest tick.
    pub peak_checkout_rate: f64,
    /// Mean hold time of ended holds in the window, in milliseconds.
    pub mean_hold_ms: f64,
    /// The highest load offered in one tick (connections in use plus
    /// callers waiting, from measured time).
    pub peak_offered_load: f64,
    /// The longest a task waited for its turn on the service's runtime,
    /// on average over a tick ([`PressureSample::runtime_lag_ms`]); `None`
    /// when it was not measured (no caller queued).
    pub peak_runtime_lag_ms: Option<f64>,
}

/// One call site's line in the report (over the window).
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SiteLine {
    /// `file:line:column`.
    pub site: String,
    /// Successful acquires.
    pub checkouts: u64,
    /// Held right now.
    pub outstanding: u64,
    /// Connection time held, in seconds, holds in progress included.
    pub connection_secs: f64,
    /// Mean hold, in milliseconds.
    pub hold_mean_ms: f64,
    /// Median hold, in milliseconds.
    pub hold_p50_ms: f64,
    /// 99th percentile hold, in milliseconds.
    pub hold_p99_ms: f64,
    /// Longest hold, in milliseconds.
    pub hold_max_ms: f64,
    /// 99th percentile wait, in milliseconds.
    pub wait_p99_ms: f64,
    /// Failed acquires that timed out.
    pub timeouts: u64,
    /// Acquires given up by their caller while waiting.
    pub cancelled: u64,
    /// Share of the (ended) holds spent in database calls, when observed.
    pub busy_ratio: Option<f64>,
    /// Share spent idle inside transactions, when observed.
    pub idle_in_transaction_ratio: Option<f64>,
    /// Time inside watched transactions, in milliseconds.
    pub transaction_ms: f64,
    /// Of that, idle (no call in flight), in milliseconds.
    pub transaction_idle_ms: f64,
    /// Error-path endings, by kind.
    pub error_paths: ErrorPaths,
}

/// Holds that ended on an error or cleanup path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ErrorPaths {
    /// Dropped while the thread was panicking.
    pub panicked: u64,
    /// Transactions rolled back by `Drop` (a `?` early return).
    pub rolled_back_by_drop: u64,
    /// Returned with a transaction still open.
    pub open_transaction_at_return: u64,
    /// Dropped with a database call in flight.
    pub in_flight_at_drop: u64,
}

impl ErrorPaths {
    /// All error-path endings.
    pub fn total(&self) -> u64 {
        self.panicked
            + self.rolled_back_by_drop
            + self.open_transaction_at_return
            + self.in_flight_at_drop
    }
}

/// One tracing span's line: request handler vs background job.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SpanLine {
    /// The span's name (`(none)` for checkouts outside any span).
    pub span: String,
    /// Successful acquires.
    pub checkouts: u64,
    /// Held right now.
    pub outstanding: u64,
    /// Connection time held, in seconds, holds in progress included.
    pub connection_secs: f64,
    /// 99th percentile hold, in milliseconds.
    pub hold_p99_ms: f64,
    /// Longest hold, in milliseconds.
    pub hold_max_ms: f64,
    /// Share of the hold spent in database calls, when observed.
    pub busy_ratio: Option<f64>,
}

/// A guard held right now past the hold threshold.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct FlaggedGuard {
    /// The guard's id.
    pub guard: u64,
    /// Where it was acquired.
    pub site: String,
    /// The span it was acquired in.
    pub span: Option<String>,
    /// Held so far, in milliseconds.
    pub held_ms: f64,
}

/// A guard held right now.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct HolderLine {
    /// The guard's id.
    pub guard: u64,
    /// Where it was acquired.
    pub site: String,
    /// The span it was acquired in.
    pub span: Option<String>,
    /// Held so far, in milliseconds.
    pub held_ms: f64,
    /// `in a database call`, `idle in transaction` or `idle`, when the
    /// connection is observed.
    pub state: Option<String>,
    /// The server process behind the connection, when known.
    pub backend_pid: Option<i32>,
    /// The last statement of this hold (sanitized), when known.
    pub statement: Option<String>,
    /// Milliseconds since its last database call ended (since the checkout
    /// when it made none; 0 while in a call), when the connection is
    /// observed: a guard that keeps making calls is in use, not leaked.
    pub idle_ms: Option<f64>,
    /// What the database server says its backend is doing (see
    /// [`Report::server`]).
    pub server: Option<ServerState>,
    /// Its task waits right now for a second connection of this pool while
    /// holding this one (a nested checkout).
    pub nested_wait: bool,
    /// Milliseconds its task's nested waits that ended took during this
    /// hold (the current one not included).
    pub nested_waited_ms: f64,
}

/// An acquire waiting right now.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct WaiterLine {
    /// Where it was requested.
    pub site: String,
    /// The span it was requested in.
    pub span: Option<String>,
    /// Waited so far, in milliseconds.
    pub waited_ms: f64,
    /// Its task already holds a guard of this pool.
    pub nested: bool,
}

impl SiteLine {
    pub(super) fn from_snapshot(s: &SiteSnapshot) -> Self {
        let observed = s.database.observed_holds > 0;
        SiteLine {
            site: s.site.to_string(),
            checkouts: s.checkouts,
            outstanding: s.outstanding,
            connection_secs: s.connection_time.max(s.hold_total).as_secs_f64(),
            hold_mean_ms: ms(s.hold.mean),
            hold_p50_ms: ms(s.hold.p50),
            hold_p99_ms: ms(s.hold.p99),
            hold_max_ms: ms(s.hold.max),
            wait_p99_ms: ms(s.wait.p99),
            timeouts: s.failures.timeouts,
            cancelled: s.cancelled,
            busy_ratio: ratio(s.database.busy_total, s.hold_total, observed),
            idle_in_transaction_ratio: ratio(
                s.database.idle_in_transaction_total,
                s.hold_total,
                observed,
            ),
            transaction_ms: ms(s.database.transaction_total),
            transaction_idle_ms: ms(s.database.transaction_idle_total),
            error_paths: ErrorPaths {
                panicked: s.outcomes.dropped_while_panicking,
                rolled_back_by_drop: s.database.rolled_back_by_drop,
                open_transaction_at_return: s.database.open_transaction_at_return,
                in_flight_at_drop: s.database.in_flight_at_drop,
            },
        }
    }
}

impl SpanLine {
    pub(super) fn from_snapshot(s: &SpanSnapshot) -> Self {
        SpanLine {
            span: s.span.unwrap_or("(none)").to_owned(),
            checkouts: s.checkouts,
            outstanding: s.outstanding,
            connection_secs: s.connection_time.max(s.hold_total).as_secs_f64(),
            hold_p99_ms: ms(s.hold.p99),
            hold_max_ms: ms(s.hold.max),
            busy_ratio: ratio(
                s.database.busy_total,
                s.hold_total,
                s.database.observed_holds > 0,
            ),
        }
    }
}

/// What the evidence says about the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum VerdictKind {
    /// Connections are not coming back: out past the threshold and idle,
    /// never returned, or in use growing while demand is flat. Fix the
    /// code path that keeps them.
    Leak,
    /// Connections come back through error paths: dropped while
    /// panicking, a transaction rolled back by drop (a `?` inside it),
    /// returned inside a transaction, or with a call still in flight. Fix
    /// the cleanup path.
    CleanupPath,
    /// A task that holds a connection waits for another of the same pool:
    /// once every connection is held that way, nothing proceeds.
    NestedCheckout,
    /// Connections come back, but are held across work that is not
    /// database work, idle inside open transactions, or in slow calls:
    /// shorten the hold.
    LongHold,
    /// Holds are short and busy; the load offered to the pool reaches its
    /// size while callers wait: grow the pool or smooth the demand.
    ConcurrencyGrowth,
    /// Nothing to fix.
    Healthy,
}

impl VerdictKind {
    /// The name used in reports: `leak`, `cleanup path`, `nested
    /// checkout`, `long hold`, `concurrency growth`, `healthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Leak => "leak",
            VerdictKind::CleanupPath => "cleanup path",
            VerdictKind::NestedCheckout => "nested checkout",
            VerdictKind::LongHold => "long hold",
            VerdictKind::ConcurrencyGrowth => "concurrency growth",
            VerdictKind::Healthy => "healthy",
        }
    }
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verdict: the causes (culprit first) and those affected.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Verdict {
    /// Which verdict.
    pub kind: VerdictKind,
    /// One sentence: why, following the evidence.
    pub reason: String,
    /// The causes: the call sites (and spans) that carry the verdict, the
    /// culprit first, with their numbers.
    pub evidence: Vec<Evidence>,
    /// Who suffered from it without causing it: callers that waited,
    /// connections busy behind the culprit.
    pub affected: Vec<Evidence>,
}

/// A site, span or the pool, and what it did.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Evidence {
    /// `file:line:column`, or `span <name>`, or `pool`.
    pub subject: String,
    /// What it did, with numbers.
    pub detail: String,
}

impl Report {
    /// The verdict kinds now, in order.
    pub fn kinds(&self) -> Vec<VerdictKind> {
        self.verdicts.iter().map(|v| v.kind).collect()
    }
}
