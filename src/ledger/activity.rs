//! What the holder of one checkout did with the connection: time spent in
//! database calls, calls in flight, the open transaction, the last
//! statement and the server process behind the connection.
//!
//! Filled in by manager integrations (the `postgres` module) through small
//! methods on [`super::Shard`]; a plain pool never touches it and its
//! checkouts report zero busy time.

use std::panic::Location;
use std::time::Duration;

use super::ticks::Ticks;

/// Bytes of statement text kept per checkout (cut at a character boundary).
pub(crate) const STATEMENT_TEXT_MAX: usize = 120;

/// A bounded copy of a statement's text, inline (no allocation per call).
/// Only the SQL text is ever stored, never parameter values.
#[derive(Clone, Copy)]
pub(crate) struct StatementText {
    len: u8,
    truncated: bool,
    buf: [u8; STATEMENT_TEXT_MAX],
}

impl StatementText {
    pub(crate) const EMPTY: StatementText = StatementText {
        len: 0,
        truncated: false,
        buf: [0; STATEMENT_TEXT_MAX],
    };

    /// The first [`STATEMENT_TEXT_MAX`] bytes of `text`, whitespace collapsed
    /// at the ends.
    pub(crate) fn new(text: &str) -> Self {
        let text = text.trim();
        let mut end = text.len().min(STATEMENT_TEXT_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0; STATEMENT_TEXT_MAX];
        buf[..end].copy_from_slice(&text.as_bytes()[..end]);
        Self {
            len: end as u8,
            truncated: end < text.len(),
            buf,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Cut at a character boundary of a `str`, so always valid UTF-8.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text, with `…` when it was cut; `None` if nothing was recorded.
    pub(crate) fn to_display(self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut s = self.as_str().to_owned();
        if self.truncated {
            s.push('…');
        }
        Some(s)
    }
}

impl std::fmt::Debug for StatementText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A transaction opened through the instrumented `transaction()`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenTransaction {
    pub(crate) since: Ticks,
    /// Busy time of the checkout when it began, to split its time into
    /// busy and idle.
    pub(crate) busy_at_start: Duration,
    pub(crate) site: &'static Location<'static>,
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransactionEnding {
    Committed,
    RolledBack,
    /// Dropped without commit or rollback: the `?` early-return path.
    RolledBackByDrop,
}

impl TransactionEnding {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TransactionEnding::Committed => "committed",
            TransactionEnding::RolledBack => "rolled_back",
            TransactionEnding::RolledBackByDrop => "rolled_back_by_drop",
        }
    }
}

/// A transaction that ended, as the stats and events see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TransactionEnded {
    pub(crate) ending: TransactionEnding,
    pub(crate) site: &'static Location<'static>,
    pub(crate) duration: Duration,
    pub(crate) idle: Duration,
}

/// The database side of one checkout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Activity {
    /// Calls started and not finished or abandoned yet.
    in_flight: u32,
    /// When `in_flight` last went from 0 to 1.
    busy_since: Option<Ticks>,
    /// Time with at least one call in flight, up to `busy_since`.
    busy: Duration,
    /// A call's future was dropped before it completed (cancelled by a
    /// timeout, `select!`, an aborted task…), and no later call has
    /// completed since: the server may still be running it.
    pub(crate) abandoned: bool,
    /// A raw `BEGIN` (or `START TRANSACTION`) was sent and no
    /// `COMMIT`/`ROLLBACK` after it.
    pub(crate) raw_transaction: bool,
    /// A transaction opened with the instrumented `transaction()` that has
    /// not ended (still alive, or leaked with `mem::forget`).
    pub(crate) transaction: Option<OpenTransaction>,
    pub(crate) last_statement: StatementText,
    /// The server process id, when known.
    pub(crate) backend_pid: Option<i32>,
    /// Identity of the connection (0: not seen yet).
    pub(crate) connection: usize,
}

impl Activity {
    pub(crate) const IDLE: Activity = Activity {
        in_flight: 0,
        busy_since: None,
        busy: Duration::ZERO,
        abandoned: false,
        raw_transaction: false,
        transaction: None,
        last_statement: StatementText::EMPTY,
        backend_pid: None,
        connection: 0,
    };

    pub(crate) fn call_started(&mut self, now: Ticks, statement: Option<&str>) {
        if self.in_flight == 0 {
            self.busy_since = Some(now);
        }
        self.in_flight += 1;
        if let Some(text) = statement {
            self.last_statement = StatementText::new(text);
        }
    }

    /// `completed`: the call's future ran to the end (success or error);
    /// otherwise it was dropped mid-call.
    pub(crate) fn call_ended(&mut self, now: Ticks, completed: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            if let Some(since) = self.busy_since.take() {
                self.busy += since.until(now);
            }
        }
        // Requests run in order on a connection: a later call completing
        // means the abandoned one is over too.
        self.abandoned = !completed;
    }

    /// Busy time up to `now`, counting a call still in flight.
    pub(crate) fn busy(&self, now: Ticks) -> Duration {
        let running = self
            .busy_since
            .map_or(Duration::ZERO, |since| since.until(now));
        self.busy + running
    }

    pub(crate) fn transaction_began(&mut self, now: Ticks, site: &'static Location<'static>) {
        self.transaction = Some(OpenTransaction {
            since: now,
            busy_at_start: self.busy(now),
            site,
        });
    }

    pub(crate) fn transaction_ended(
        &mut self,
        now: Ticks,
        ending: TransactionEnding,
    ) -> Option<TransactionEnded> {
        let open = self.transaction.take()?;
        let duration = open.since.until(now);
        let busy = self.busy(now).saturating_sub(open.busy_at_start);
        Some(TransactionEnded {
            ending,
            site: open.site,
            duration,
            idle: duration.saturating_sub(busy),
        })
    }

    /// Whether the connection is inside a transaction as far as the
    /// instrumented calls saw.
    pub(crate) fn open_transaction(&self) -> bool {
        self.raw_transaction || self.transaction.is_some()
    }

    pub(crate) fn summary(&self, now: Ticks) -> ActivitySummary {
        ActivitySummary {
            busy: self.busy(now),
            in_flight: self.in_flight > 0 || self.abandoned,
            open_transaction: self.open_transaction(),
            transaction_site: self.transaction.map(|t| t.site),
            last_statement: self.last_statement,
            backend_pid: self.backend_pid,
            connection: self.connection,
        }
    }
}

/// The activity of a checkout when it ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActivitySummary {
    pub(crate) busy: Duration,
    /// A call was in flight or abandoned unfinished at return.
    pub(crate) in_flight: bool,
    /// Returned inside a transaction (raw `BEGIN`, or a leaked transaction).
    pub(crate) open_transaction: bool,
    /// Where a leaked instrumented transaction was begun.
    pub(crate) transaction_site: Option<&'static Location<'static>>,
    pub(crate) last_statement: StatementText,
    pub(crate) backend_pid: Option<i32>,
    pub(crate) connection: usize,
}

impl ActivitySummary {
    pub(crate) const IDLE: ActivitySummary = ActivitySummary {
        busy: Duration::ZERO,
        in_flight: false,
        open_transaction: false,
        transaction_site: None,
        last_statement: StatementText::EMPTY,
        backend_pid: None,
        connection: 0,
    };
}

/// What a SQL text does to the transaction state, judged by the first
/// keyword of each `;`-separated statement (the last one that matters
/// wins): `Some(true)` opens one, `Some(false)` ends it. A heuristic for
/// raw `BEGIN`/`COMMIT` sent as text; quoted semicolons can fool it, which
/// the recycle probe makes up for.
pub(crate) fn transaction_effect(sql: &str) -> Option<bool> {
    let mut effect = None;
    for statement in sql.split(';') {
        let mut words = statement.split_whitespace();
        let Some(first) = words.next() else { continue };
        let first = first.to_ascii_uppercase();
        match first.as_str() {
            "BEGIN" | "START" => effect = Some(true),
            "COMMIT" | "END" | "ABORT" => effect = Some(false),
            // `ROLLBACK TO [SAVEPOINT] x` stays inside the transaction.
            "ROLLBACK" if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("TO")) => {
                effect = Some(false);
            }
            "PREPARE"
                if words
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("TRANSACTION")) =>
            {
                effect = Some(false);
            }
            _ => {}
        }
    }
    effect
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_keywords() {
        assert_eq!(transaction_effect("BEGIN"), Some(true));
        assert_eq!(
            transaction_effect(" begin isolation level serializable"),
            Some(true)
        );
        assert_eq!(transaction_effect("START TRANSACTION"), Some(true));
        assert_eq!(transaction_effect("BEGIN; SELECT 1; COMMIT"), Some(false));
        assert_eq!(transaction_effect("rollback to savepoint a"), None);
        assert_eq!(transaction_effect("ROLLBACK"), Some(false));
        assert_eq!(transaction_effect("SELECT 1"), None);
        assert_eq!(transaction_effect("COMMIT; BEGIN"), Some(true));
    }

    #[test]
    fn statement_text_is_bounded_at_a_char_boundary() {
        let long = "é".repeat(200);
        let text = StatementText::new(&long);
        assert!(text.as_str().len() <= STATEMENT_TEXT_MAX);
        assert!(text.to_display().unwrap().ends_with('…'));
        assert_eq!(StatementText::new("  SELECT 1 ").as_str(), "SELECT 1");
    }

    #[test]
    fn busy_time_counts_overlapping_calls_once() {
        Ticks::init(); // instants before the clock's epoch would clamp
        let start = std::time::Instant::now();
        let ms = Duration::from_millis;
        let t0 = Ticks::of(start);
        let at = |d: Duration| Ticks::of(start + d);
        let mut a = Activity::IDLE;
        a.call_started(t0, None);
        a.call_started(at(ms(5)), None);
        a.call_ended(at(ms(10)), true);
        a.call_ended(at(ms(20)), true);
        assert_eq!(a.busy(at(ms(100))), ms(20));
        a.call_started(at(ms(30)), None);
        a.call_ended(at(ms(31)), false);
        assert!(a.summary(at(ms(40))).in_flight);
        a.call_started(at(ms(50)), None);
        a.call_ended(at(ms(51)), true);
        assert!(!a.summary(at(ms(60))).in_flight);
    }
}
