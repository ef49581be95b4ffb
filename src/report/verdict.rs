//! The verdict rules (documented in the module docs of [`super`]). Each
//! verdict lists its **causes** first (`evidence`, the culprit first) and
//! those **affected** apart (`affected`): a caller that waited, or held a
//! connection only while busy behind the culprit, is never named as a
//! cause. Each verdict's sentence is chosen from its own evidence.

use std::time::Duration;

use super::facts::{Party, Period};
use super::types::{Evidence, HolderLine, ServerSection, Verdict, VerdictKind, WaiterLine};
use crate::human::human;
use crate::ledger::Usage;
use crate::site::CallSite;
use crate::timeline::PressureSample;

fn evidence(subject: impl Into<String>, detail: String) -> Evidence {
    Evidence {
        subject: subject.into(),
        detail,
    }
}

/// A party must hold at least this share of the period's connection time
/// to be a culprit.
const CULPRIT_SHARE: f64 = 0.10;
/// Time not spent on database work that makes a holder a culprit: at
/// least this share of what it held, and at least [`MIN_NOT_DB`].
const NOT_DB_SHARE: f64 = 0.25;
const MIN_NOT_DB: Duration = Duration::from_millis(50);
/// ... and, unless one of its holds reached the threshold, at least this
/// much per checkout: a burst of short holds adds up to seconds of
/// scheduling delay between a call's answer and the guard's drop, which
/// is no work held across.
const MIN_NOT_DB_PER_CHECKOUT: Duration = Duration::from_millis(5);
/// ... and at least this much per statement: a hold making many round
/// trips spends a runtime turn between each answer and its next request.
const MIN_NOT_DB_PER_STATEMENT: Duration = Duration::from_millis(1);
/// ... and at least this many times the runtime's scheduling delay (a
/// task's wait for its turn, `ledger::lag`): a hold waits its turn about
/// this often with nothing of its own to do — to send its statement, to
/// read the answer (twice when the statement is prepared first), to drop
/// the guard.
const TURNS_PER_HOLD: u32 = 4;
/// A scheduling delay worth telling.
const NOTABLE_LAG: Duration = Duration::from_millis(1);
/// Offered load, as a share of the pool's size, that counts as growth.
const LOAD_SHARE: f64 = 0.8;
/// Busy share of a party's held time that makes it "busy in the database".
const BUSY_SHARE: f64 = 0.5;

/// What the rules need besides the period.
pub(super) struct Context<'a> {
    pub(super) threshold: Duration,
    /// Guards held now (for "now" only).
    pub(super) holders: &'a [HolderLine],
    /// Acquires waiting now (for "now" only).
    pub(super) waiters: &'a [WaiterLine],
    /// The timeline (for the in-use trend), now only.
    pub(super) timeline: &'a [PressureSample],
    /// Whether spans were visible (else no span is named).
    pub(super) spans_visible: bool,
    /// A past episode rather than now.
    pub(super) past: bool,
    /// What the database server said about the holders (now only).
    pub(super) server: Option<&'a ServerSection>,
}

fn pct(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        part.as_secs_f64() * 100.0 / whole.as_secs_f64()
    }
}

fn secs(d: Duration) -> String {
    human(d).to_string()
}

fn span_suffix(party: &Party, ctx: &Context<'_>) -> String {
    match party.span {
        Some(span) if ctx.spans_visible => format!(" (span {span})"),
        _ => String::new(),
    }
}

pub(super) fn diagnose(period: &Period, ctx: &Context<'_>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    // What the server says first: who blocks whom is a fact, not an
    // inference, and its victims must not be blamed by the rules below.
    let locks = lock_chains(period, ctx);
    let (lock_guards, lock_sites) = locks
        .as_ref()
        .map(|l| (l.1.clone(), l.2.clone()))
        .unwrap_or_default();
    let has_locks = locks.is_some();
    verdicts.extend(locks.map(|l| l.0));
    let blockage = blocked_behind_idle_transaction(period, ctx);
    // Blocked: inferred behind an idle transaction, or, now, at the sites
    // the server shows waiting in a lock chain (other than its heads).
    let mut blocked: Vec<&Party> = blockage
        .as_ref()
        .map(|b| b.blocked.clone())
        .unwrap_or_default();
    let chain_heads = sites_of_guards(&lock_guards, ctx.holders);
    for p in &period.parties {
        if lock_sites.contains(&p.site)
            && !chain_heads.contains(&p.site.to_string().as_str())
            && !is_blocked(&blocked, p)
        {
            blocked.push(p);
        }
    }
    // A nested checkout is a fact too (the task is known): the holds its
    // tasks keep while they wait are neither leaks nor long holds.
    let nested = nested(period, ctx);
    let (nested_guards, nested_sites) = nested
        .as_ref()
        .map(|n| (n.1.clone(), n.2.clone()))
        .unwrap_or_default();
    // First when it explains holds; else last, a risk that did not hold
    // the pool up.
    let explains_holds = !nested_guards.is_empty() || !nested_sites.is_empty();
    let mut nested = nested.map(|n| n.0);
    if explains_holds {
        verdicts.extend(nested.take());
    }
    let leak = leak(period, ctx, &lock_guards, &nested_guards, blockage.as_ref());
    let leak_sites: Vec<CallSite> = leak.as_ref().map(|v| v.1.clone()).unwrap_or_default();
    verdicts.extend(leak.map(|v| v.0));
    let mut excluded = leak_sites.clone();
    excluded.extend(lock_sites);
    excluded.extend(nested_sites);
    let long = long_hold(period, ctx, &excluded, &blocked);
    // Calls given up while another holder ran long in the database are
    // that holder's victims too (the cleanup-path rule leaves them).
    if let Some((_, gave_up)) = &long {
        blocked.extend(gave_up.iter().copied());
    }
    let has_long_hold = long.is_some();
    let growth = if !has_long_hold && !has_locks {
        concurrency_growth(period, ctx, &leak_sites)
    } else {
        None
    };
    // Whether a verdict says why callers waited: then a call cut by its
    // caller's deadline after a wait for the connection is that cause's
    // doing (its verdict lists the waiters).
    // (`verdicts` holds the lock chain, the nested checkout when it
    // explains holds, and the leak so far.)
    let waits_explained = !verdicts.is_empty() || has_long_hold || growth.is_some();
    verdicts.extend(cleanup_path(period, ctx, &blocked, waits_explained));
    verdicts.extend(long.map(|(verdict, _)| verdict));
    verdicts.extend(growth);
    verdicts.extend(nested);
    if verdicts.is_empty() {
        verdicts.push(Verdict {
            kind: VerdictKind::Healthy,
            reason: format!(
                "no guard out past the {} threshold, no error-path endings, holds short, demand under the pool size",
                secs(ctx.threshold)
            ),
            evidence: Vec::new(),
            affected: Vec::new(),
        });
    }
    verdicts
}

/// Holds that look blocked behind another holder's open transaction, and
/// whose: busy in the database for most of what they held while that
/// holder sat idle in its transaction. Their statements wait on its locks,
/// and a call they give up (a client-side timeout that drops it mid-way)
/// is the block's doing, not an error path of their own.
struct Blockage<'p> {
    /// The site of the holder idle in its transaction.
    behind: String,
    blocked: Vec<&'p Party>,
}

fn blocked_behind_idle_transaction<'p>(
    period: &'p Period,
    ctx: &Context<'_>,
) -> Option<Blockage<'p>> {
    // Long inside its transactions, as a lock holder others wait behind
    // is: many short transactions, idle between their statements for a
    // few milliseconds each, hold no lock long enough to block anyone.
    let idle_in_transaction = |p: &&Party| {
        p.observed()
            && p.usage.idle_in_transaction >= MIN_NOT_DB
            && p.usage.idle_in_transaction.as_secs_f64()
                >= NOT_DB_SHARE * p.usage.held.as_secs_f64()
            && (p.counts.longest_hold >= ctx.threshold / 2
                || per_checkout(p, p.usage.idle_in_transaction) >= MIN_NOT_DB_PER_CHECKOUT * 4)
    };
    let holder = period
        .parties
        .iter()
        .filter(idle_in_transaction)
        .max_by_key(|p| p.usage.idle_in_transaction);
    let (behind, holder_key) = match holder {
        Some(p) => (p.site.to_string(), Some((p.site, p.span))),
        // Now: a guard out past the threshold inside its transaction, whose
        // time the period may not show yet.
        None if !ctx.past => {
            let guard = ctx.holders.iter().find(|h| {
                h.state.as_deref() == Some("idle in transaction") && h.held_ms >= ms(ctx.threshold)
            })?;
            (guard.site.clone(), None)
        }
        None => return None,
    };
    let blocked: Vec<&Party> = period
        .parties
        .iter()
        .filter(|p| {
            Some((p.site, p.span)) != holder_key
                && p.site.to_string() != behind
                && long_in_calls(p, ctx)
        })
        .collect();
    (!blocked.is_empty()).then_some(Blockage { behind, blocked })
}

/// Busy in the database for most of its hold, and long in its calls: a
/// hold reached half the threshold, or calls average 20 ms a checkout
/// (short queries beside a blocker are no victims of it).
fn long_in_calls(p: &Party, ctx: &Context<'_>) -> bool {
    p.observed()
        && p.usage.busy >= MIN_NOT_DB
        && p.usage.busy.as_secs_f64() >= BUSY_SHARE * p.usage.held.as_secs_f64()
        && (p.counts.longest_hold >= ctx.threshold / 2
            || per_checkout(p, p.usage.busy) >= MIN_NOT_DB_PER_CHECKOUT * 4)
}

/// `time` of `p`'s usage per checkout of the time that usage covers (a
/// window's saturated ticks, say, not all the period counted); a hold
/// still going on (begun before the period) counts, where the longest
/// ended hold does not see it.
fn per_checkout(p: &Party, time: Duration) -> Duration {
    time / u32::try_from(p.usage.checkouts.max(1)).unwrap_or(u32::MAX)
}

/// A hold that spans the whole period (begun before it, still held),
/// past the threshold in calls within it: the longest ended hold does not
/// see it.
fn in_one_call_throughout(p: &Party, ctx: &Context<'_>) -> bool {
    p.counts.checkouts == 0 && p.counts.holds == 0 && p.usage.busy >= ctx.threshold
}

/// The sites of these guards among the holders now.
fn sites_of_guards<'h>(guards: &[u64], holders: &'h [HolderLine]) -> Vec<&'h str> {
    guards
        .iter()
        .filter_map(|id| holders.iter().find(|h| h.guard == *id))
        .map(|h| h.site.as_str())
        .collect()
}

fn is_blocked(blocked: &[&Party], p: &Party) -> bool {
    blocked.iter().any(|b| b.site == p.site && b.span == p.span)
}

/// The affected line of a party blocked behind `behind`'s transaction.
fn blocked_line(p: &Party, behind: &str, ctx: &Context<'_>) -> Evidence {
    victim_line(
        p,
        &format!("{behind} sat idle in transaction: likely blocked on its locks"),
        ctx,
    )
}

/// The affected line of a party busy in the database while `meanwhile`
/// held it up, with the calls it gave up.
fn victim_line(p: &Party, meanwhile: &str, ctx: &Context<'_>) -> Evidence {
    let mut detail = format!(
        "held {} busy in the database ({:.0}% of its hold) while {meanwhile}",
        secs(p.usage.busy),
        pct(p.usage.busy, p.usage.held),
    );
    let gave_up = p.counts.database.in_flight_at_return;
    if gave_up > 0 {
        detail.push_str(&format!(
            "; {gave_up} gave up waiting (the call dropped mid-way, the connection closed)"
        ));
    }
    detail.push_str(&span_suffix(p, ctx));
    evidence(p.site.to_string(), detail)
}

/// Callers that waited (or gave up, or timed out) during the period,
/// excluding `causes`: the affected of every verdict.
fn waiting_parties(period: &Period, causes: &[(CallSite, Option<&'static str>)]) -> Vec<Evidence> {
    let mut affected: Vec<&Party> = period
        .parties
        .iter()
        .filter(|p| {
            !p.usage.waited.is_zero() || p.counts.failures.total() > 0 || p.counts.cancelled > 0
        })
        .filter(|p| !causes.contains(&(p.site, p.span)))
        .collect();
    affected.sort_by_key(|p| std::cmp::Reverse(p.usage.waited));
    affected
        .into_iter()
        .take(5)
        .map(|p| {
            let mut detail = format!("waited {} in all for a connection", secs(p.usage.waited));
            if p.counts.waits > 0 {
                detail.push_str(&format!(
                    " ({} acquires waited, the longest {})",
                    p.counts.waits,
                    secs(p.counts.longest_wait)
                ));
            }
            if p.counts.failures.timeouts > 0 {
                detail.push_str(&format!("; {} timed out", p.counts.failures.timeouts));
            }
            if p.counts.cancelled > 0 {
                detail.push_str(&format!("; {} gave up (cancelled)", p.counts.cancelled));
            }
            let cut = p.counts.database.in_flight_after_wait;
            if cut > 0 {
                detail.push_str(&format!(
                    "; {cut} ran out of time mid-call after the wait (a deadline dropped the call, the connection closed)"
                ));
            }
            evidence(p.site.to_string(), detail)
        })
        .collect()
}

fn leak(
    period: &Period,
    ctx: &Context<'_>,
    lock_holders: &[u64],
    nested_holders: &[u64],
    blockage: Option<&Blockage<'_>>,
) -> Option<(Verdict, Vec<CallSite>)> {
    let mut found = Vec::new();
    let mut sites = Vec::new();
    if !ctx.past {
        // Guards out past the threshold, not in a database call, at a site
        // whose holds do not normally last that long: not coming back.
        // (One others wait behind is the lock-chain verdict's culprit.)
        let mut groups: Vec<(String, usize, f64, Vec<&'static str>)> = Vec::new();
        let excused =
            |g: &HolderLine| lock_holders.contains(&g.guard) || nested_holders.contains(&g.guard);
        for guard in ctx
            .holders
            .iter()
            .filter(|g| g.held_ms >= ms(ctx.threshold) && !excused(g))
        {
            if guard.state.as_deref() == Some("in a database call") {
                continue; // a long call: the long-hold rules speak of it
            }
            if guard.idle_ms.is_some_and(|idle| idle < ms(ctx.threshold)) {
                continue; // still making calls: in use, a long hold at most
            }
            let site_returns_such_holds = period.parties.iter().any(|p| {
                p.site.to_string() == guard.site && ms(p.counts.longest_hold) * 2.0 >= guard.held_ms
            });
            if site_returns_such_holds {
                continue;
            }
            let state = guard.state.as_deref().unwrap_or("not observed");
            let state = leak_state(state);
            match groups.iter_mut().find(|(s, ..)| *s == guard.site) {
                Some((_, n, oldest, states)) => {
                    *n += 1;
                    *oldest = oldest.max(guard.held_ms);
                    if !states.contains(&state) {
                        states.push(state);
                    }
                }
                None => groups.push((guard.site.clone(), 1, guard.held_ms, vec![state])),
            }
        }
        groups.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.total_cmp(&a.2)));
        for (site, n, oldest, states) in groups {
            found.push(evidence(
                &site,
                format!(
                    "{n} guard(s) out past the {} threshold and not coming back, oldest held {} ({}); no hold of this site ended after half as long",
                    secs(ctx.threshold),
                    secs(Duration::from_secs_f64(oldest / 1000.0)),
                    states.join(", ")
                ),
            ));
            if let Some(site) = period
                .parties
                .iter()
                .map(|p| p.site)
                .find(|s| s.to_string() == site)
            {
                sites.push(site);
            }
        }
        // Growth explained by holders that are working (in a call, making
        // calls, or blocked behind a lock) is not a leak.
        let idle_holders = ctx.holders.iter().any(|h| {
            h.state.as_deref() != Some("in a database call")
                && !excused(h)
                && h.idle_ms.is_none_or(|idle| idle >= ms(ctx.threshold))
        });
        if idle_holders && lock_holders.is_empty() {
            if let Some(growth) = in_use_growth_with_flat_demand(ctx.timeline, period.max_size) {
                found.push(evidence("pool", growth));
            }
        }
    }
    if found.is_empty() {
        return None;
    }
    let causes: Vec<(CallSite, Option<&'static str>)> = period
        .parties
        .iter()
        .filter(|p| sites.contains(&p.site))
        .map(|p| (p.site, p.span))
        .collect();
    // Holds blocked behind a leaked transaction's locks.
    let mut affected: Vec<Evidence> = blockage
        .filter(|b| sites.iter().any(|s| s.to_string() == b.behind))
        .map(|b| {
            b.blocked
                .iter()
                .filter(|p| !causes.contains(&(p.site, p.span)))
                .map(|p| blocked_line(p, &b.behind, ctx))
                .collect()
        })
        .unwrap_or_default();
    affected.extend(waiting_parties(period, &causes));
    Some((
        Verdict {
            kind: VerdictKind::Leak,
            reason: "connections are not coming back: held past the threshold with nothing running on them".to_owned(),
            evidence: found,
            affected,
        },
        sites,
    ))
}

/// Whom blocked holders wait behind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockRoot {
    Guard(u64),
    Outside(i32),
}

/// Holders the server shows waiting in the database behind another
/// backend: the heads of the chains are the culprits (a guard of this
/// pool, or a backend outside it), the waiting holders affected. Returns
/// the verdict, the culprit guards, and the sites involved (culprits' and
/// victims', which the inferring rules then leave alone).
fn lock_chains(period: &Period, ctx: &Context<'_>) -> Option<(Verdict, Vec<u64>, Vec<CallSite>)> {
    if ctx.past {
        return None;
    }
    let mut chains: Vec<(LockRoot, Vec<&HolderLine>)> = Vec::new();
    for holder in ctx.holders {
        let Some(server) = &holder.server else {
            continue;
        };
        let roots = server
            .blocked_by_guards
            .iter()
            .map(|g| LockRoot::Guard(*g))
            .chain(
                server
                    .blocked_by_outside
                    .iter()
                    .map(|p| LockRoot::Outside(*p)),
            );
        for root in roots {
            match chains.iter_mut().find(|(r, _)| *r == root) {
                Some((_, victims)) => victims.push(holder),
                None => chains.push((root, vec![holder])),
            }
        }
    }
    if chains.is_empty() {
        return None;
    }
    chains.sort_by_key(|(_, victims)| std::cmp::Reverse(victims.len()));
    let span_of = |span: &Option<String>| match span {
        Some(span) if ctx.spans_visible => format!(" (span {span})"),
        _ => String::new(),
    };
    let mut found = Vec::new();
    let mut culprits = Vec::new();
    let mut involved: Vec<&str> = Vec::new();
    let mut names: Vec<(LockRoot, String)> = Vec::new();
    for (root, victims) in &chains {
        let n = victims.len();
        match *root {
            LockRoot::Guard(id) => {
                let Some(culprit) = ctx.holders.iter().find(|h| h.guard == id) else {
                    continue;
                };
                culprits.push(id);
                involved.push(&culprit.site);
                let doing = culprit_doing(culprit);
                names.push((
                    *root,
                    format!(
                        "guard {id} at {}{}, {doing}",
                        culprit.site,
                        span_of(&culprit.span)
                    ),
                ));
                let mut detail = format!(
                    "guard {id}{} holds what {n} checkout(s) of this pool wait for in the database: {doing}",
                    span_of(&culprit.span)
                );
                if let Some(tx) = culprit.server.as_ref().and_then(|s| s.transaction_ms) {
                    detail.push_str(&format!(
                        ", its transaction open for {}",
                        secs(Duration::from_secs_f64(tx / 1000.0))
                    ));
                }
                if let Some(statement) = &culprit.statement {
                    detail.push_str(&format!("; last statement: {statement}"));
                }
                found.push(evidence(culprit.site.clone(), detail));
            }
            LockRoot::Outside(pid) => {
                let outside = ctx
                    .server
                    .and_then(|s| s.outside.iter().find(|o| o.pid == pid));
                let (who, mut detail) = match outside {
                    Some(o) => {
                        let mut who = format!("backend {pid} outside the pool");
                        if let Some(app) = o.application_name.as_deref().filter(|a| !a.is_empty()) {
                            who.push_str(&format!(" ({app})"));
                        }
                        let mut detail = o.doing.clone();
                        if let Some(role) = &o.role {
                            detail.push_str(&format!(", as role {role}"));
                        }
                        if let Some(tx) = o.transaction_ms {
                            detail.push_str(&format!(
                                ", its transaction open for {}",
                                secs(Duration::from_secs_f64(tx / 1000.0))
                            ));
                        }
                        (who, detail)
                    }
                    None if pid == 0 => ("a prepared transaction".to_owned(), String::new()),
                    None => (format!("backend {pid}"), String::new()),
                };
                names.push((*root, who.clone()));
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(&format!("holds what {n} checkout(s) of this pool wait for"));
                if let Some(statement) = outside.and_then(|o| o.statement.as_deref()) {
                    detail.push_str(&format!("; statement: {statement}"));
                }
                found.push(evidence(who, detail));
            }
        }
    }
    if found.is_empty() {
        return None;
    }
    // The blocked, by site and span, each with whom it waits behind.
    let mut affected: Vec<Evidence> = Vec::new();
    let mut groups: Vec<Blocked<'_>> = Vec::new();
    for (root, victims) in &chains {
        let Some((_, name)) = names.iter().find(|(r, _)| r == root) else {
            continue;
        };
        for victim in victims {
            involved.push(&victim.site);
            match groups
                .iter_mut()
                .find(|g| g.site == victim.site && g.span == &victim.span)
            {
                Some(g) => {
                    g.count += 1;
                    g.longest_ms = g.longest_ms.max(victim.held_ms);
                    if !g.behind.contains(&name.as_str()) {
                        g.behind.push(name);
                    }
                }
                None => groups.push(Blocked {
                    site: &victim.site,
                    span: &victim.span,
                    count: 1,
                    longest_ms: victim.held_ms,
                    behind: vec![name],
                }),
            }
        }
    }
    for g in groups {
        affected.push(evidence(
            g.site,
            format!(
                "{} checkout(s){} blocked in the database by {}; held up to {} so far",
                g.count,
                span_of(g.span),
                g.behind.join(" and "),
                secs(Duration::from_secs_f64(g.longest_ms / 1000.0))
            ),
        ));
    }
    let sites: Vec<CallSite> = period
        .parties
        .iter()
        .map(|p| p.site)
        .filter(|s| {
            let s = s.to_string();
            involved.contains(&s.as_str())
        })
        .collect();
    // Callers that waited for a connection meanwhile are affected too,
    // unless they are the culprits' own sites.
    let culprit_sites = sites_of_guards(&culprits, ctx.holders);
    let causes: Vec<(CallSite, Option<&'static str>)> = period
        .parties
        .iter()
        .filter(|p| culprit_sites.contains(&p.site.to_string().as_str()))
        .map(|p| (p.site, p.span))
        .collect();
    affected.extend(waiting_parties(period, &causes));
    let reason = format!(
        "checkouts are blocked in the database by {}",
        names.first().map_or("another backend", |(_, n)| n.as_str())
    );
    Some((
        Verdict {
            kind: VerdictKind::LongHold,
            reason,
            evidence: found,
            affected,
        },
        culprits,
        sites,
    ))
}

/// Blocked holders at one site and span, and whom they wait behind.
struct Blocked<'a> {
    site: &'a str,
    span: &'a Option<String>,
    count: usize,
    longest_ms: f64,
    behind: Vec<&'a str>,
}

/// What a lock holder is doing: the server's words, else the client's.
fn culprit_doing(holder: &HolderLine) -> String {
    match (&holder.server, &holder.state) {
        (Some(server), _) => server.doing.clone(),
        (None, Some(state)) => state.clone(),
        (None, None) => "what it does is not observed".to_owned(),
    }
}

fn leak_state(state: &str) -> &'static str {
    match state {
        "idle in transaction" => "idle in transaction",
        "idle" => "idle, outside any call",
        _ => "what the holder does is not observed",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Compares the first and last thirds of the timeline: mean connections
/// in use (from measured connection time) grew by at least a quarter of
/// the pool (and at least one) while the checkout rate did not grow by
/// more than a quarter.
fn in_use_growth_with_flat_demand(t: &[PressureSample], max_size: usize) -> Option<String> {
    if t.len() < 6 {
        return None;
    }
    let third = t.len() / 3;
    let mean = |xs: &[PressureSample], f: fn(&PressureSample) -> f64| {
        xs.iter().map(f).sum::<f64>() / xs.len() as f64
    };
    let (first, last) = (&t[..third], &t[t.len() - third..]);
    let in_use_first = mean(first, |s| s.mean_in_use());
    let in_use_last = mean(last, |s| s.mean_in_use());
    let rate_first = mean(first, |s| s.checkout_rate());
    let rate_last = mean(last, |s| s.checkout_rate());
    let max_size = max_size.max(1) as f64;
    let grew = in_use_last - in_use_first >= (max_size / 4.0).max(1.0);
    let demand_flat = rate_last <= rate_first * 1.25 + 0.5;
    (grew && demand_flat).then(|| {
        format!(
            "in use grew from {in_use_first:.1} to {in_use_last:.1} of {max_size:.0} on average while checkouts went from {rate_first:.1}/s to {rate_last:.1}/s"
        )
    })
}

fn cleanup_path(
    period: &Period,
    ctx: &Context<'_>,
    blocked: &[&Party],
    waits_explained: bool,
) -> Option<Verdict> {
    // A blocked hold's call given up mid-way is the block's doing, and so
    // is one cut by a deadline its wait for the connection used up when
    // another verdict says why callers waited (those verdicts list them
    // among the affected).
    let gave_up = |p: &Party| {
        let db = &p.counts.database;
        if is_blocked(blocked, p) {
            db.in_flight_at_return
        } else if waits_explained {
            db.in_flight_after_wait.min(db.in_flight_at_return)
        } else {
            0
        }
    };
    let error_paths = |p: &Party| p.counts.error_paths() - gave_up(p);
    let mut culprits: Vec<&Party> = period
        .parties
        .iter()
        .filter(|p| error_paths(p) > 0)
        .collect();
    culprits.sort_by_key(|p| std::cmp::Reverse(error_paths(p)));
    if culprits.is_empty() {
        return None;
    }
    // Each kind once in the reason, in the order the culprits show them.
    let seen = |kinds: &mut Vec<&'static str>, kind: &'static str| {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    };
    let mut kinds_seen: Vec<&str> = Vec::new();
    let found = culprits
        .iter()
        .map(|p| {
            let c = &p.counts;
            let in_flight = c.database.in_flight_at_return - gave_up(p);
            let mut kinds = Vec::new();
            if c.database.rolled_back_by_drop > 0 {
                kinds.push(format!(
                    "{} transaction(s) rolled back by drop (dropped without commit or rollback: a `?` returned early inside the transaction)",
                    c.database.rolled_back_by_drop
                ));
                seen(&mut kinds_seen, "rolled back by drop");
            }
            if c.database.open_transaction_at_return > 0 {
                kinds.push(format!(
                    "{} returned inside an open transaction (a raw `BEGIN` never ended, or a transaction of deadpool's or tokio-postgres's own type dropped where poolwatch cannot see it)",
                    c.database.open_transaction_at_return
                ));
                seen(&mut kinds_seen, "returned inside a transaction");
            }
            if in_flight > 0 {
                kinds.push(format!(
                    "{in_flight} dropped with a database call in flight (its future dropped unfinished)"
                ));
                seen(&mut kinds_seen, "dropped mid-call");
            }
            if c.outcomes.dropped_while_panicking > 0 {
                kinds.push(format!(
                    "{} dropped while panicking",
                    c.outcomes.dropped_while_panicking
                ));
                seen(&mut kinds_seen, "dropped while panicking");
            }
            // A hold can end several ways at once (a call in flight inside
            // an open transaction), so the kinds are not summed over holds.
            evidence(
                p.site.to_string(),
                format!(
                    "error-path endings in {} ended holds{}: {}",
                    c.holds,
                    span_suffix(p, ctx),
                    kinds.join("; ")
                ),
            )
        })
        .collect();
    Some(Verdict {
        kind: VerdictKind::CleanupPath,
        reason: format!(
            "connections come back through error paths ({}): the cleanup path of this code is the bug",
            kinds_seen.join(", ")
        ),
        evidence: found,
        affected: Vec::new(),
    })
}

/// A task holding a connection waits for a second one of the same pool.
/// The waiting sites come first (where the fix goes); the sites whose
/// holds their tasks keep meanwhile follow, and are not leaks or long
/// holds of their own: returns the verdict, those guards (now) and those
/// sites (most of whose holds lasted across such a wait).
fn nested(period: &Period, ctx: &Context<'_>) -> Option<(Verdict, Vec<u64>, Vec<CallSite>)> {
    let waiting = by_site(
        ctx.waiters
            .iter()
            .filter(|w| w.nested)
            .map(|w| (w.site.as_str(), w.waited_ms)),
    );
    let mut found: Vec<Evidence> = waiting
        .into_iter()
        .map(|(site, n, longest)| {
            let waited = secs(Duration::from_secs_f64(longest / 1000.0));
            let detail = if n == 1 {
                format!("waiting {waited} for a second connection while its task already holds one of this pool")
            } else {
                format!("{n} acquires waiting for a second connection while their tasks already hold one of this pool, the longest {waited}")
            };
            evidence(site, detail)
        })
        .collect();
    for party in period.parties.iter().filter(|p| p.counts.nested > 0) {
        let site = party.site.to_string();
        if found.iter().any(|e| e.subject == site) {
            continue;
        }
        found.push(evidence(
            site,
            format!(
                "{} acquire(s) had to wait while their task already held a connection of this pool{}",
                party.counts.nested,
                span_suffix(party, ctx)
            ),
        ));
    }
    if found.is_empty() {
        return None;
    }
    let waiting_sites: Vec<String> = found.iter().map(|e| e.subject.clone()).collect();
    // The holding side: guards kept (now) while their task waits, or
    // mostly kept so, and sites whose holds ended so.
    let guards: Vec<&HolderLine> = ctx
        .holders
        .iter()
        .filter(|h| held_across_nested_wait(h))
        .collect();
    let holding_sites = by_site(guards.iter().map(|g| (g.site.as_str(), g.held_ms)));
    for &(site, n, oldest) in &holding_sites {
        found.push(evidence(
            site,
            format!(
                "{n} guard(s) held while their task waits (or waited most of the hold) for a second connection, the oldest held {}",
                secs(Duration::from_secs_f64(oldest / 1000.0))
            ),
        ));
    }
    let mut sites = Vec::new();
    for party in &period.parties {
        let ended = party.counts.holds_across_nested_wait;
        let holding_now = holding_sites
            .iter()
            .any(|(s, ..)| *s == party.site.to_string());
        if ended == 0 && !holding_now {
            continue;
        }
        if ended > 0 && !holding_now {
            found.push(evidence(
                party.site.to_string(),
                format!(
                    "{ended} of {} holds ended while their task waited for a second connection, or after such waits took most of the hold{}",
                    party.counts.holds,
                    span_suffix(party, ctx)
                ),
            ));
        }
        // Most of its holds lasted across a nested wait: that wait is
        // why they were long.
        if ended * 2 >= party.counts.holds || holding_now {
            sites.push(party.site);
        }
    }
    let causes: Vec<(CallSite, Option<&'static str>)> = period
        .parties
        .iter()
        .filter(|p| sites.contains(&p.site) || waiting_sites.contains(&p.site.to_string()))
        .map(|p| (p.site, p.span))
        .collect();
    Some((
        Verdict {
            kind: VerdictKind::NestedCheckout,
            reason: format!(
                "a task holding a connection waits for a second one of the same pool: once all {} connections are held that way nothing proceeds (self-deadlock); take the second connection first, or pass the first one down",
                period.max_size
            ),
            evidence: found,
            affected: waiting_parties(period, &causes),
        },
        guards.iter().map(|g| g.guard).collect(),
        sites,
    ))
}

/// `(site, milliseconds)` grouped by site, in order of first appearance:
/// how many, and the most milliseconds.
fn by_site<'a>(items: impl Iterator<Item = (&'a str, f64)>) -> Vec<(&'a str, usize, f64)> {
    let mut groups: Vec<(&str, usize, f64)> = Vec::new();
    for (site, ms) in items {
        match groups.iter_mut().find(|(s, ..)| *s == site) {
            Some((_, n, most)) => {
                *n += 1;
                *most = most.max(ms);
            }
            None => groups.push((site, 1, ms)),
        }
    }
    groups
}

/// A guard whose task waits for a second connection while holding it, or
/// whose hold so far was mostly such waits: not a leak or long hold of its
/// own. (One whose task asked once, got it, and kept the first for long
/// after is judged as any other.)
fn held_across_nested_wait(h: &HolderLine) -> bool {
    h.nested_wait || (h.nested_waited_ms > 0.0 && h.nested_waited_ms * 2.0 >= h.held_ms)
}

/// Which way a culprit holds its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holding {
    IdleInTransaction,
    Outside,
    Unobserved,
    SlowCalls,
}

fn holding(usage: &Usage) -> Holding {
    if usage.unobserved >= usage.held / 2 {
        return Holding::Unobserved;
    }
    let outside = usage.outside();
    let not_db = usage.not_database_work();
    if not_db < usage.busy {
        Holding::SlowCalls
    } else if usage.idle_in_transaction >= outside {
        Holding::IdleInTransaction
    } else {
        Holding::Outside
    }
}

/// The long-hold verdict, and the parties it lists as having given up
/// calls behind its slow-call culprits.
fn long_hold<'p>(
    period: &'p Period,
    ctx: &Context<'_>,
    leak_sites: &[CallSite],
    blocked: &[&Party],
) -> Option<(Verdict, Vec<&'p Party>)> {
    let total = period.total();
    if total.held.is_zero() {
        return None;
    }
    let share = |p: &Party| p.usage.held.as_secs_f64() / total.held.as_secs_f64();
    // Time outside calls that a busy runtime explains is no work held
    // across.
    let per_checkout_floor = period
        .runtime_lag
        .mean()
        .map_or(MIN_NOT_DB_PER_CHECKOUT, |lag| {
            MIN_NOT_DB_PER_CHECKOUT.max(lag * TURNS_PER_HOLD)
        });
    let is_culprit = |p: &Party| {
        if leak_sites.contains(&p.site) || share(p) < CULPRIT_SHARE {
            return false;
        }
        if p.observed() {
            let not_db = p.usage.not_database_work();
            let reached_threshold = p.counts.longest_hold >= ctx.threshold;
            let per_checkout = per_checkout(p, not_db);
            // ... and between its statements: sixty round trips each give
            // the runtime a turn, which adds up to no work either.
            let db = &p.counts.database;
            let statements_per_hold = (db.statements / db.observed_holds.max(1)).max(1);
            let per_statement =
                per_checkout / u32::try_from(statements_per_hold).unwrap_or(u32::MAX);
            not_db >= MIN_NOT_DB
                && not_db.as_secs_f64() >= NOT_DB_SHARE * p.usage.held.as_secs_f64()
                && (reached_threshold
                    || (per_checkout >= per_checkout_floor
                        && per_statement >= MIN_NOT_DB_PER_STATEMENT))
                && (period.saturated || reached_threshold)
        } else {
            p.counts.longest_hold >= ctx.threshold
        }
    };
    let mut culprits: Vec<&Party> = period.parties.iter().filter(|p| is_culprit(p)).collect();
    // Not database work, most first.
    culprits.sort_by(|a, b| {
        b.usage
            .not_database_work()
            .cmp(&a.usage.not_database_work())
            .then(b.usage.held.cmp(&a.usage.held))
    });
    let mut slow_calls = false;
    if culprits.is_empty() {
        // No one holds connections idle; holds past the threshold spent in
        // database calls are the finding (slow statements, lock waits).
        culprits = period
            .parties
            .iter()
            .filter(|p| {
                // Long in calls behind another holder's transaction: its
                // victims, not slow statements of their own.
                // And in calls: a long hold spent outside them that left
                // too little time here to be a culprit above is no slow
                // statement.
                !leak_sites.contains(&p.site)
                    && !is_blocked(blocked, p)
                    && (p.counts.longest_hold >= ctx.threshold || in_one_call_throughout(p, ctx))
                    && share(p) >= CULPRIT_SHARE / 2.0
                    && matches!(holding(&p.usage), Holding::SlowCalls | Holding::Unobserved)
            })
            .collect();
        culprits.sort_by_key(|p| std::cmp::Reverse(p.usage.held));
        slow_calls = true;
    }
    if culprits.is_empty() {
        return None;
    }
    culprits.truncate(3);
    let top = holding(&culprits[0].usage);
    let during = if period.saturated {
        "during saturation"
    } else {
        "in this period"
    };
    let mut found = Vec::new();
    for p in &culprits {
        let u = &p.usage;
        let mut detail = format!(
            "held {} of connection time {during} ({:.0}% of the pool's)",
            secs(u.held),
            share(p) * 100.0
        );
        if p.observed() {
            detail.push_str(&format!(
                ": {:.0}% idle in transaction, {:.0}% outside any database call, {:.0}% in database calls",
                pct(u.idle_in_transaction, u.held),
                pct(u.outside(), u.held),
                pct(u.busy, u.held)
            ));
        } else {
            detail.push_str(": what it did with the connections is not observed");
        }
        if p.counts.holds > 0 {
            detail.push_str(&format!(
                "; {} holds ended, the longest {}",
                p.counts.holds,
                secs(p.counts.longest_hold)
            ));
        }
        if p.counts.longest_hold >= ctx.threshold {
            detail.push_str(&format!(" (threshold {})", secs(ctx.threshold)));
        }
        detail.push_str(&span_suffix(p, ctx));
        found.push(evidence(p.site.to_string(), detail));
        if let (Some(span), true) = (p.span, ctx.spans_visible) {
            found.push(evidence(
                format!("span {span}"),
                format!(
                    "its holds at {} make {:.0}% of the pool's connection time {during}",
                    p.site,
                    share(p) * 100.0
                ),
            ));
        }
    }
    let reason = match (slow_calls, top) {
        (_, Holding::Unobserved) => format!(
            "connections are held past the {} threshold (what the holders do with them is not observed: the pool was not built by poolwatch)",
            secs(ctx.threshold)
        ),
        (true, _) | (false, Holding::SlowCalls) => {
            "connections are held long inside database calls: slow statements, or statements waiting on locks"
                .to_owned()
        }
        (false, Holding::IdleInTransaction) => {
            "connections are held inside open transactions while no database call runs (idle in transaction): the transaction spans work that is not database work".to_owned()
        }
        (false, Holding::Outside) => {
            "connections are held across work that is not database work".to_owned()
        }
    };
    let causes: Vec<(CallSite, Option<&'static str>)> =
        culprits.iter().map(|p| (p.site, p.span)).collect();
    let mut affected = Vec::new();
    if !slow_calls && top == Holding::IdleInTransaction {
        // Busy in the database while the culprit sat in its transaction:
        // the pattern of statements blocked on the culprit's locks.
        for p in period.parties.iter().filter(|p| {
            !causes.contains(&(p.site, p.span))
                && p.observed()
                && p.usage.busy.as_secs_f64() >= BUSY_SHARE * p.usage.held.as_secs_f64()
                && share(p) >= CULPRIT_SHARE / 2.0
        }) {
            affected.push(blocked_line(p, &culprits[0].site.to_string(), ctx));
        }
    }
    let mut gave_up = Vec::new();
    if slow_calls || top == Holding::SlowCalls {
        // Long in calls themselves, giving up (a request deadline) while
        // the culprits ran long in the database: behind the same locks or
        // the same load, its victims.
        for p in period.parties.iter().filter(|p| {
            !causes.contains(&(p.site, p.span))
                && p.counts.database.in_flight_at_return > 0
                && long_in_calls(p, ctx)
        }) {
            let meanwhile = format!(
                "{} ran long in the database: likely behind its locks or load",
                culprits[0].site
            );
            affected.push(victim_line(p, &meanwhile, ctx));
            gave_up.push(p);
        }
    }
    affected.extend(waiting_parties(period, &causes));
    Some((
        Verdict {
            kind: VerdictKind::LongHold,
            reason,
            evidence: found,
            affected,
        },
        gave_up,
    ))
}

/// What a busy runtime adds to a verdict: its delay, if notable.
fn lag_sentence(period: &Period) -> String {
    match (period.runtime_lag.mean(), period.runtime_lag.max()) {
        (Some(mean), Some(max)) if mean >= NOTABLE_LAG => format!(
            "; the runtime is busy: a task waited {} for its turn on average (at most {}), so every hold also waits its turn (CPU-bound or blocking work in the service's tasks)",
            secs(mean),
            secs(max)
        ),
        _ => String::new(),
    }
}

fn concurrency_growth(
    period: &Period,
    ctx: &Context<'_>,
    leak_sites: &[CallSite],
) -> Option<Verdict> {
    let max_size = period.max_size;
    if max_size == 0 || !period.saturated {
        return None;
    }
    // Connections a leak keeps are not demand: take them out of both the
    // load and the capacity, so a leak alone never reads as growth.
    let leaked: Duration = period
        .parties
        .iter()
        .filter(|p| leak_sites.contains(&p.site))
        .map(|p| p.usage.held)
        .sum();
    let leaked = if period.duration.is_zero() {
        0.0
    } else {
        leaked.as_secs_f64() / period.duration.as_secs_f64()
    };
    let capacity = max_size as f64 - leaked;
    if capacity < 0.5 {
        return None;
    }
    let load = period.load;
    let (mean, peak) = (load.mean - leaked, load.peak - leaked);
    let reaches = mean >= LOAD_SHARE * capacity || peak >= capacity;
    if !reaches {
        return None;
    }
    let demand: Vec<&Party> = period
        .parties
        .iter()
        .filter(|p| !leak_sites.contains(&p.site) && !p.usage.held.is_zero())
        .collect();
    if demand.is_empty() {
        return None;
    }
    // Holds still out count too: a pool full of long holds is not short
    // holds piling up.
    let outstanding = ctx
        .holders
        .iter()
        .filter(|h| !leak_sites.iter().any(|s| s.to_string() == h.site))
        .map(|h| Duration::from_secs_f64(h.held_ms / 1000.0))
        .max()
        .unwrap_or_default();
    let longest = demand
        .iter()
        .map(|p| p.counts.longest_hold)
        .max()
        .unwrap_or_default()
        .max(outstanding);
    if longest >= ctx.threshold {
        return None;
    }
    let total = period.total();
    let counts = period.counts();
    let busy = if total.unobserved >= total.held / 2 {
        "the database share is not observed".to_owned()
    } else {
        format!(
            "{:.0}% of the connection time in the database",
            pct(total.busy, total.held)
        )
    };
    let mut found = vec![evidence(
        "pool",
        format!(
            "offered load {:.1} connections on average (peak {:.1}) for a pool of {max_size}{} over {} of saturation: connections in use plus callers waiting, from measured time; holds short (longest {}) with {busy}; {} checkouts, {} waited in all, peak {} waiting{}",
            load.mean,
            load.peak,
            if leaked >= 0.05 {
                format!(" of which leaks keep {leaked:.1}")
            } else {
                String::new()
            },
            secs(period.duration),
            secs(longest),
            counts.checkouts,
            secs(total.waited),
            period.peak_waiting,
            lag_sentence(period),
        ),
    )];
    for p in demand.iter().take(3) {
        found.push(evidence(
            p.site.to_string(),
            format!(
                "{} checkouts, {} of connection time ({:.0}%), the longest hold {}{}",
                p.counts.checkouts,
                secs(p.usage.held),
                pct(p.usage.held, total.held),
                secs(p.counts.longest_hold),
                span_suffix(p, ctx)
            ),
        ));
    }
    Some(Verdict {
        kind: VerdictKind::ConcurrencyGrowth,
        reason:
            "holds are short; the demand itself needs about as many connections as the pool has"
                .to_owned(),
        evidence: found,
        affected: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::facts::{Load, Party, Period, Span};
    use super::*;
    use crate::ledger::{Counts, LagReadings, Ticks, Usage};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn site(line: u32) -> CallSite {
        CallSite::new("src/app.rs", line, 5)
    }

    /// A party that held `held`, of which `busy` in calls and `idle` idle
    /// in transaction; its holds ended, the longest `longest`.
    fn party(line: u32, held: u64, busy: u64, idle: u64, longest: u64) -> Party {
        Party {
            site: site(line),
            span: None,
            counts: Counts {
                checkouts: 10,
                holds: 10,
                hold_total: ms(held),
                longest_hold: ms(longest),
                ..Counts::default()
            },
            usage: Usage {
                held: ms(held),
                busy: ms(busy),
                idle_in_transaction: ms(idle),
                checkouts: 10,
                ..Usage::default()
            },
        }
    }

    /// `p` with `n` checkouts, all ended, in the time its usage covers.
    fn with_checkouts(mut p: Party, n: u64) -> Party {
        p.counts.checkouts = n;
        p.counts.holds = n;
        p.usage.checkouts = n;
        p
    }

    fn waiter(line: u32, waited: u64) -> Party {
        let mut p = party(line, 0, 0, 0, 0);
        p.counts.waits = 5;
        p.usage.waited = ms(waited);
        p
    }

    fn period(parties: Vec<Party>, saturated: bool, load: f64) -> Period {
        Period {
            span: Span::Window { since: Ticks::ZERO },
            saturated,
            duration: Duration::from_secs(1),
            parties,
            load: Load {
                mean: load,
                peak: load,
            },
            max_size: 4,
            peak_waiting: if saturated { 3 } else { 0 },
            runtime_lag: LagReadings::default(),
        }
    }

    fn ctx() -> Context<'static> {
        Context {
            threshold: ms(300),
            holders: &[],
            waiters: &[],
            timeline: &[],
            spans_visible: false,
            past: false,
            server: None,
        }
    }

    fn kinds(verdicts: &[Verdict]) -> Vec<VerdictKind> {
        verdicts.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn short_busy_holds_without_waiters_are_healthy() {
        let p = period(vec![party(1, 500, 480, 0, 20)], false, 0.5);
        assert_eq!(kinds(&diagnose(&p, &ctx())), vec![VerdictKind::Healthy]);
    }

    #[test]
    fn idle_in_transaction_is_the_culprit_and_busy_holders_are_affected() {
        // A lock chain: the culprit sits in its transaction, the others
        // are busy (blocked) in the database, more wait for a connection.
        let p = period(
            vec![
                party(10, 3000, 200, 2700, 1600),
                party(20, 4000, 3900, 0, 1500),
                waiter(30, 2500),
            ],
            true,
            5.0,
        );
        let verdicts = diagnose(&p, &ctx());
        assert_eq!(kinds(&verdicts), vec![VerdictKind::LongHold]);
        let v = &verdicts[0];
        assert!(v.evidence[0].subject.starts_with("src/app.rs:10:"), "{v:?}");
        assert!(v.reason.contains("idle in transaction"), "{v:?}");
        assert!(v
            .evidence
            .iter()
            .all(|e| !e.subject.contains(":20:") && !e.subject.contains(":30:")));
        assert!(v
            .affected
            .iter()
            .any(|e| e.subject.contains(":20:") && e.detail.contains("blocked")));
        assert!(v
            .affected
            .iter()
            .any(|e| e.subject.contains(":30:") && e.detail.contains("waited")));
    }

    #[test]
    fn work_outside_calls_is_a_long_hold_with_its_own_sentence() {
        let p = period(
            vec![party(10, 3000, 300, 0, 900), waiter(30, 800)],
            true,
            4.5,
        );
        let v = &diagnose(&p, &ctx())[0];
        assert_eq!(v.kind, VerdictKind::LongHold);
        assert!(v.reason.contains("not database work"), "{v:?}");
    }

    #[test]
    fn slow_calls_are_named_only_when_nobody_holds_idle() {
        let p = period(vec![party(10, 3000, 2950, 0, 900)], true, 4.0);
        let v = &diagnose(&p, &ctx())[0];
        assert_eq!(v.kind, VerdictKind::LongHold);
        assert!(v.reason.contains("inside database calls"), "{v:?}");
    }

    #[test]
    fn short_busy_holds_under_saturating_load_are_concurrency_growth() {
        let p = period(
            vec![party(10, 3800, 3600, 0, 40), waiter(10, 900)],
            true,
            4.4,
        );
        let verdicts = diagnose(&p, &ctx());
        assert_eq!(kinds(&verdicts), vec![VerdictKind::ConcurrencyGrowth]);
        assert_eq!(verdicts[0].evidence[0].subject, "pool");
    }

    /// The quickstart's burst on a busy host: 300 holds of ~1.7 ms, 29 %
    /// of it between a call's answer and the guard's drop. That adds up
    /// past the not-database floor, but no hold carries work: growth.
    #[test]
    fn a_burst_of_short_holds_with_scheduling_gaps_is_growth_not_a_long_hold() {
        let mut burst = with_checkouts(party(10, 515, 366, 0, 9), 300);
        let p = period(vec![burst.clone(), waiter(10, 900)], true, 94.0);
        let verdicts = diagnose(&p, &ctx());
        assert_eq!(kinds(&verdicts), vec![VerdictKind::ConcurrencyGrowth]);
        // A window whose saturated time held 10 of its 300 checkouts: 15 ms
        // a hold outside calls in that time, however many calm ones the
        // window counted besides.
        burst.usage.checkouts = 10;
        let p = period(vec![burst, waiter(30, 900)], true, 94.0);
        assert_eq!(kinds(&diagnose(&p, &ctx())), vec![VerdictKind::LongHold]);
        // The same time outside calls in 10 holds is 15 ms a hold: work.
        let p = period(
            vec![party(10, 515, 366, 0, 60), waiter(30, 900)],
            true,
            94.0,
        );
        assert_eq!(kinds(&diagnose(&p, &ctx())), vec![VerdictKind::LongHold]);
    }

    #[test]
    fn load_under_the_pool_size_is_not_growth() {
        let p = period(vec![party(10, 1000, 950, 0, 40), waiter(11, 10)], true, 1.5);
        assert_eq!(kinds(&diagnose(&p, &ctx())), vec![VerdictKind::Healthy]);
    }

    #[test]
    fn error_path_endings_are_a_cleanup_path_not_a_leak() {
        let mut p = party(10, 100, 90, 0, 20);
        p.counts.database.rolled_back_by_drop = 3;
        let verdicts = diagnose(&period(vec![p], false, 0.2), &ctx());
        assert_eq!(kinds(&verdicts), vec![VerdictKind::CleanupPath]);
        assert!(verdicts[0].evidence[0]
            .detail
            .contains("3 transaction(s) rolled back by drop"));
    }

    /// One verdict, a long hold naming line 10 alone; line 20 among its
    /// affected, having given up 4 calls.
    fn assert_one_long_hold_with_a_victim_that_gave_up(verdicts: &[Verdict]) {
        assert_eq!(kinds(verdicts), vec![VerdictKind::LongHold], "{verdicts:?}");
        let v = &verdicts[0];
        assert!(v.evidence[0].subject.starts_with("src/app.rs:10:"), "{v:?}");
        assert!(v.evidence.iter().all(|e| !e.subject.contains(":20:")));
        assert!(v
            .affected
            .iter()
            .any(|e| e.subject.contains(":20:") && e.detail.contains("4 gave up waiting")));
    }

    #[test]
    fn calls_given_up_behind_an_idle_transaction_are_the_blocks_doing() {
        // The culprit sits in its transaction; the refunds are busy
        // (blocked on its row) and drop their calls at a client timeout.
        let mut victim = party(20, 2000, 1950, 0, 600);
        victim.counts.database.in_flight_at_return = 4;
        let p = period(
            vec![party(10, 1500, 20, 1450, 1500), victim, waiter(30, 900)],
            true,
            5.0,
        );
        assert_one_long_hold_with_a_victim_that_gave_up(&diagnose(&p, &ctx()));
    }

    #[test]
    fn a_blocked_holders_other_error_paths_are_still_its_own() {
        let mut victim = party(20, 2000, 1950, 0, 600);
        victim.counts.database.in_flight_at_return = 4;
        victim.counts.outcomes.dropped_while_panicking = 1;
        let p = period(vec![party(10, 1500, 20, 1450, 1500), victim], true, 5.0);
        let verdicts = diagnose(&p, &ctx());
        let cleanup = verdicts
            .iter()
            .find(|v| v.kind == VerdictKind::CleanupPath)
            .expect("the panic is an error path");
        let detail = &cleanup.evidence[0].detail;
        assert!(detail.contains("1 dropped while panicking"), "{detail}");
        assert!(!detail.contains("in flight"), "{detail}");
    }

    /// Guard 7 from `line`, out 2 s and idle in its transaction for 1.9.
    fn parked_in_transaction(line: u32) -> HolderLine {
        HolderLine {
            guard: 7,
            site: site(line).to_string(),
            held_ms: 2000.0,
            state: Some("idle in transaction".to_owned()),
            idle_ms: Some(1900.0),
            ..HolderLine::default()
        }
    }

    #[test]
    fn slow_calls_behind_a_leaked_transaction_are_not_a_long_hold() {
        // Now: a guard idle in its transaction past the threshold (not
        // coming back), and holds long in calls behind it.
        let holders = [parked_in_transaction(10)];
        let ctx = Context {
            holders: &holders,
            ..ctx()
        };
        let p = period(
            vec![party(10, 600, 0, 0, 0), party(20, 2000, 1990, 0, 600)],
            true,
            5.0,
        );
        let verdicts = diagnose(&p, &ctx);
        assert_eq!(kinds(&verdicts), vec![VerdictKind::Leak], "{verdicts:?}");
        assert!(verdicts[0].affected[0].subject.contains(":20:"));
        assert!(verdicts[0].affected[0].detail.contains("likely blocked"));
    }

    #[test]
    fn short_queries_beside_an_idle_transaction_are_not_its_victims() {
        // A guard parked inside its transaction, and a stream of 2 ms
        // queries that drop a call now and then (a `select!`): those are
        // their own bug, not the transaction's doing.
        let holders = [parked_in_transaction(10)];
        let ctx = Context {
            holders: &holders,
            ..ctx()
        };
        let mut queries = party(20, 100, 95, 0, 3);
        queries.counts.database.in_flight_at_return = 2;
        let p = period(vec![party(10, 600, 0, 600, 0), queries], false, 1.0);
        let verdicts = diagnose(&p, &ctx);
        let cleanup = verdicts
            .iter()
            .find(|v| v.kind == VerdictKind::CleanupPath)
            .expect("the dropped calls are an error path");
        assert!(cleanup.evidence[0].subject.contains(":20:"), "{verdicts:?}");
        assert!(verdicts
            .iter()
            .flat_map(|v| &v.affected)
            .all(|e| !e.detail.contains("likely blocked")));
    }

    #[test]
    fn calls_given_up_while_a_holder_ran_long_in_the_database_are_its_victims() {
        // A batch still in its one long call (begun before the period),
        // and reads that dropped their calls at a 250 ms deadline.
        let batch = with_checkouts(party(10, 900, 900, 0, 0), 0);
        let mut reads = party(20, 1000, 1000, 0, 250);
        reads.counts.database.in_flight_at_return = 4;
        let verdicts = diagnose(&period(vec![batch, reads], true, 3.5), &ctx());
        assert_one_long_hold_with_a_victim_that_gave_up(&verdicts);
    }

    #[test]
    fn calls_given_up_with_no_one_else_to_blame_are_a_cleanup_path() {
        let mut reads = party(20, 1000, 1000, 0, 250);
        reads.counts.database.in_flight_at_return = 4;
        let verdicts = diagnose(&period(vec![reads], false, 1.0), &ctx());
        assert_eq!(kinds(&verdicts), vec![VerdictKind::CleanupPath]);
    }

    #[test]
    fn short_transactions_idle_between_statements_block_no_one() {
        // 240 transactions of a few ms, most of it idle inside them, and
        // deadlocking swaps long in their calls: the swaps are the slow
        // calls, not victims of the short transactions.
        let deposits = with_checkouts(party(10, 1100, 200, 880, 12), 240);
        let p = period(vec![deposits, party(20, 6000, 5600, 400, 2100)], true, 15.0);
        let verdicts = diagnose(&p, &ctx());
        assert_eq!(
            kinds(&verdicts),
            vec![VerdictKind::LongHold],
            "{verdicts:?}"
        );
        assert!(verdicts[0].evidence[0]
            .subject
            .starts_with("src/app.rs:20:"));
        assert!(verdicts[0].reason.contains("inside database calls"));
    }

    #[test]
    fn round_trips_of_an_n_plus_one_page_are_no_work_held_across() {
        // 40 holds of 18 ms, 48 % between sixty statements each: 8.6 ms a
        // hold outside calls, 0.14 ms a statement. Beside them, report
        // queries past the threshold in their calls.
        let mut pages = with_checkouts(party(10, 720, 370, 0, 21), 40);
        pages.counts.database.observed_holds = 40;
        pages.counts.database.statements = 40 * 60;
        let reports = party(20, 2400, 2390, 0, 410);
        let p = period(vec![pages, reports, waiter(10, 9000)], true, 30.0);
        let verdicts = diagnose(&p, &ctx());
        assert_eq!(verdicts[0].kind, VerdictKind::LongHold, "{verdicts:?}");
        assert!(verdicts[0].evidence[0]
            .subject
            .starts_with("src/app.rs:20:"));
        assert!(verdicts
            .iter()
            .all(|v| v.kind == VerdictKind::ConcurrencyGrowth
                || v.evidence.iter().all(|e| !e.subject.contains(":10:"))));
    }

    #[test]
    fn calls_cut_by_a_deadline_after_waiting_are_the_waits_doing() {
        // An export holds the pool across uploads; requests with a 150 ms
        // deadline spend it waiting and are cut mid-call.
        let mut requests = waiter(20, 8000);
        requests.usage.held = ms(480);
        requests.usage.busy = ms(465);
        requests.counts.holds = 22;
        requests.counts.database.in_flight_at_return = 20;
        requests.counts.database.in_flight_after_wait = 20;
        let p = period(vec![party(10, 3600, 250, 0, 1200), requests], true, 15.0);
        let verdicts = diagnose(&p, &ctx());
        assert_eq!(
            kinds(&verdicts),
            vec![VerdictKind::LongHold],
            "{verdicts:?}"
        );
        assert!(verdicts[0].affected.iter().any(
            |e| e.subject.contains(":20:") && e.detail.contains("20 ran out of time mid-call")
        ));
        // With nothing to say why they waited, the cut calls are the
        // finding.
        let mut alone = waiter(20, 100);
        alone.counts.database.in_flight_at_return = 2;
        alone.counts.database.in_flight_after_wait = 2;
        let verdicts = diagnose(&period(vec![alone], false, 0.5), &ctx());
        assert_eq!(kinds(&verdicts), vec![VerdictKind::CleanupPath]);
    }

    #[test]
    fn each_kind_of_ending_is_said_once() {
        let mut a = party(10, 100, 90, 0, 20);
        a.counts.database.rolled_back_by_drop = 2;
        a.counts.database.in_flight_at_return = 1;
        let mut b = party(20, 100, 90, 0, 20);
        b.counts.database.rolled_back_by_drop = 1;
        let verdicts = diagnose(&period(vec![a, b], false, 0.2), &ctx());
        let reason = &verdicts[0].reason;
        assert_eq!(reason.matches("rolled back by drop").count(), 1, "{reason}");
        assert!(verdicts[0].evidence[0]
            .detail
            .starts_with("error-path endings in 10 ended holds"));
    }

    #[test]
    fn an_idle_guard_out_past_the_threshold_is_a_leak() {
        let holders = [HolderLine {
            guard: 7,
            site: site(40).to_string(),
            held_ms: 5000.0,
            state: Some("idle".to_owned()),
            ..HolderLine::default()
        }];
        let ctx = Context {
            holders: &holders,
            ..ctx()
        };
        let verdicts = diagnose(&period(vec![party(40, 5000, 10, 0, 0)], false, 1.0), &ctx);
        assert_eq!(verdicts[0].kind, VerdictKind::Leak);
        assert!(verdicts[0].evidence[0]
            .subject
            .starts_with("src/app.rs:40:"));
        // Not also a long hold: the leak explains its connection time.
        assert!(!kinds(&verdicts).contains(&VerdictKind::LongHold));
    }

    #[test]
    fn a_guard_in_a_long_call_is_not_a_leak() {
        let holders = [HolderLine {
            site: site(40).to_string(),
            held_ms: 5000.0,
            state: Some("in a database call".to_owned()),
            ..HolderLine::default()
        }];
        let ctx = Context {
            holders: &holders,
            ..ctx()
        };
        let verdicts = diagnose(&period(vec![party(40, 5000, 4990, 0, 0)], false, 1.0), &ctx);
        assert!(
            !kinds(&verdicts).contains(&VerdictKind::Leak),
            "{verdicts:?}"
        );
    }

    #[test]
    fn a_site_whose_holds_return_that_long_is_not_leaking() {
        let holders = [HolderLine {
            site: site(40).to_string(),
            held_ms: 1000.0,
            state: Some("idle".to_owned()),
            ..HolderLine::default()
        }];
        let ctx = Context {
            holders: &holders,
            ..ctx()
        };
        let verdicts = diagnose(
            &period(vec![party(40, 9000, 100, 0, 1200)], false, 1.0),
            &ctx,
        );
        assert!(
            !kinds(&verdicts).contains(&VerdictKind::Leak),
            "{verdicts:?}"
        );
        assert!(
            kinds(&verdicts).contains(&VerdictKind::LongHold),
            "{verdicts:?}"
        );
    }

    #[test]
    fn a_nested_wait_is_a_self_deadlock_risk() {
        let waiters = [WaiterLine {
            site: site(50).to_string(),
            waited_ms: 800.0,
            nested: true,
            ..WaiterLine::default()
        }];
        let ctx = Context {
            waiters: &waiters,
            ..ctx()
        };
        let verdicts = diagnose(&period(vec![party(50, 100, 90, 0, 10)], false, 1.0), &ctx);
        assert_eq!(verdicts[0].kind, VerdictKind::NestedCheckout);
        assert!(verdicts[0].reason.contains("self-deadlock"));
    }

    #[test]
    fn a_leak_and_a_burst_at_once() {
        let holders = [
            HolderLine {
                site: site(40).to_string(),
                held_ms: 2000.0,
                state: Some("idle".to_owned()),
                ..HolderLine::default()
            },
            HolderLine {
                site: site(40).to_string(),
                held_ms: 2000.0,
                state: Some("idle".to_owned()),
                ..HolderLine::default()
            },
        ];
        let ctx = Context {
            holders: &holders,
            ..ctx()
        };
        let p = period(
            vec![
                party(40, 2000, 0, 0, 0),
                party(10, 1900, 1800, 0, 30),
                waiter(10, 1500),
            ],
            true,
            5.4,
        );
        let verdicts = diagnose(&p, &ctx);
        assert_eq!(verdicts[0].kind, VerdictKind::Leak, "{verdicts:?}");
        assert!(verdicts[0].evidence[0]
            .subject
            .starts_with("src/app.rs:40:"));
        assert!(
            kinds(&verdicts).contains(&VerdictKind::ConcurrencyGrowth),
            "{verdicts:?}"
        );
        // The burst's callers are affected by the leak, never its cause.
        for v in &verdicts {
            if v.kind == VerdictKind::Leak {
                assert!(v.evidence.iter().all(|e| !e.subject.contains(":10:")));
            }
        }
    }

    fn blocked_holder(
        guard: u64,
        line: u32,
        by_guard: Option<u64>,
        by_outside: Option<i32>,
    ) -> HolderLine {
        HolderLine {
            guard,
            site: site(line).to_string(),
            held_ms: 1200.0,
            state: Some("in a database call".to_owned()),
            server: Some(super::super::types::ServerState {
                state: "active".to_owned(),
                doing: "waiting on a lock (Lock: transactionid) for 1s 100ms".to_owned(),
                waiting_on_lock: true,
                blocked_by_guards: by_guard.into_iter().collect(),
                blocked_by_outside: by_outside.into_iter().collect(),
                ..Default::default()
            }),
            ..HolderLine::default()
        }
    }

    /// The server says guards 2-4 wait behind guard 1: guard 1's site is
    /// the culprit even though it is out past the threshold with no ended
    /// hold (which alone would read as a leak), and the blocked site is
    /// affected, never a cause.
    #[test]
    fn a_lock_chain_from_the_server_names_the_blocking_guard_first() {
        let holders = [
            HolderLine {
                guard: 1,
                site: site(20).to_string(),
                held_ms: 5000.0,
                state: Some("idle in transaction".to_owned()),
                server: Some(super::super::types::ServerState {
                    state: "idle in transaction".to_owned(),
                    doing: "idle in transaction for 4.9s".to_owned(),
                    transaction_ms: Some(4950.0),
                    ..Default::default()
                }),
                ..HolderLine::default()
            },
            blocked_holder(2, 30, Some(1), None),
            blocked_holder(3, 30, Some(1), None),
            blocked_holder(4, 30, Some(1), None),
        ];
        let ctx = Context {
            holders: &holders,
            ..ctx()
        };
        let parties = vec![
            party(20, 1000, 5, 990, 0),
            party(30, 3000, 3000, 0, 0),
            waiter(40, 800),
        ];
        let verdicts = diagnose(&period(parties, true, 5.0), &ctx);
        assert_eq!(kinds(&verdicts), [VerdictKind::LongHold], "{verdicts:#?}");
        let v = &verdicts[0];
        assert!(
            v.reason.contains("blocked in the database by guard 1"),
            "{v:#?}"
        );
        assert_eq!(v.evidence[0].subject, site(20).to_string());
        assert!(v.evidence[0].detail.contains("3 checkout(s)"), "{v:#?}");
        assert!(v.evidence.iter().all(|e| !e.subject.contains(":30:")));
        assert!(v
            .affected
            .iter()
            .any(|e| e.subject.contains(":30:") && e.detail.contains("by guard 1")));
        assert!(v.affected.iter().any(|e| e.subject.contains(":40:")));
    }

    /// The head of the chain is outside the pool: it is the culprit.
    #[test]
    fn a_blocker_outside_the_pool_is_the_culprit() {
        let holders = [
            blocked_holder(2, 30, None, Some(999)),
            blocked_holder(3, 31, None, Some(999)),
        ];
        let server = ServerSection {
            outside: vec![super::super::types::OutsideBackend {
                pid: 999,
                application_name: Some("psql".to_owned()),
                doing: "idle in transaction for 40s".to_owned(),
                blocks_guards: vec![2, 3],
                ..Default::default()
            }],
            ..ServerSection::default()
        };
        let ctx = Context {
            holders: &holders,
            server: Some(&server),
            ..ctx()
        };
        let parties = vec![party(30, 2000, 2000, 0, 0), party(31, 2000, 2000, 0, 0)];
        let verdicts = diagnose(&period(parties, true, 4.0), &ctx);
        let v = &verdicts[0];
        assert_eq!(v.kind, VerdictKind::LongHold);
        assert_eq!(v.evidence[0].subject, "backend 999 outside the pool (psql)");
        assert!(v.evidence[0].detail.contains("idle in transaction for 40s"));
        for verdict in &verdicts {
            assert!(
                verdict
                    .evidence
                    .iter()
                    .all(|e| !e.subject.contains(":30:") && !e.subject.contains(":31:")),
                "{verdicts:#?}"
            );
        }
        assert_eq!(v.affected.len(), 2, "{v:#?}");
    }
}
