//! Statement texts as the observer keeps them: bounded, shared (`Arc`), and
//! for prepared statements remembered by name in a bounded per-connection
//! map, so running an already-prepared statement allocates nothing.

use std::borrow::Cow;
use std::sync::Arc;

// foldhash: the names are the client library's own ("s0", "s1", ...), not
// input an attacker picks, and SipHash was a fifth of the observer's cost
// per prepared-statement call.
use crate::ledger::archive::HashMap;

/// The longest statement text kept, in bytes (cut at a character
/// boundary, then marked with [`CUT_MARK`]).
pub(crate) const STATEMENT_TEXT_LIMIT: usize = 2048;

/// Appended to a text that was cut.
pub(crate) const CUT_MARK: char = '…';

/// Prepared statements remembered per connection, at most.
pub(crate) const MAX_PREPARED: usize = 1024;

/// Bytes of prepared-statement names and texts remembered per connection,
/// at most.
pub(crate) const MAX_PREPARED_BYTES: usize = 256 * 1024;

/// The text shown for a prepared statement run without its `Parse` having
/// been seen (forgotten to stay within the bounds, or named beyond
/// [`NAME_LIMIT`](super::framing::NAME_LIMIT)).
pub(crate) const UNKNOWN_STATEMENT: &str = "<prepared statement not tracked>";

/// The first [`STATEMENT_TEXT_LIMIT`] bytes of a text, cut at a character
/// boundary, and whether anything was cut. `complete` says whether `text`
/// is the whole text (else it is a prefix and counts as cut).
fn bounded(text: &[u8], complete: bool) -> (Cow<'_, str>, bool) {
    let cut = !complete || text.len() > STATEMENT_TEXT_LIMIT;
    let slice = &text[..text.len().min(STATEMENT_TEXT_LIMIT)];
    match std::str::from_utf8(slice) {
        Ok(text) => (Cow::Borrowed(text), cut),
        // The cut split a character: end before it.
        Err(e) if e.error_len().is_none() => (
            Cow::Borrowed(std::str::from_utf8(&slice[..e.valid_up_to()]).unwrap_or_default()),
            true,
        ),
        // Not UTF-8 (a client_encoding other than tokio-postgres's).
        Err(_) => (String::from_utf8_lossy(slice), cut),
    }
}

/// A text as kept: bounded, marked when cut.
pub(crate) fn keep_text(text: &[u8], complete: bool) -> Arc<str> {
    match bounded(text, complete) {
        (text, false) => Arc::from(text.as_ref()),
        (text, true) => {
            let mut marked = String::with_capacity(text.len() + CUT_MARK.len_utf8());
            marked.push_str(&text);
            marked.push(CUT_MARK);
            Arc::from(marked)
        }
    }
}

/// Whether `kept` is what [`keep_text`] makes of `text` (without
/// allocating).
pub(crate) fn same_text(kept: &str, text: &[u8], complete: bool) -> bool {
    match bounded(text, complete) {
        (text, false) => kept == text,
        (text, true) => kept.strip_suffix(CUT_MARK) == Some(text.as_ref()),
    }
}

/// Statement texts that are the pool's own (deadpool-postgres's recycling
/// query, tokio-postgres's `SHOW transaction_read_only`): not reported as
/// requests or statements, nor their answers. The empty query always is.
#[derive(Debug, Clone)]
pub(crate) struct OwnQueries {
    texts: Vec<Box<[u8]>>,
    longest: usize,
}

impl Default for OwnQueries {
    fn default() -> Self {
        Self::new(std::iter::empty::<&str>())
    }
}

impl OwnQueries {
    /// The empty query and `texts`.
    pub(crate) fn new<I, S>(texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut own: Vec<Box<[u8]>> = vec![Box::from(&b""[..])];
        for text in texts {
            let text = text.as_ref().as_bytes();
            if !own.iter().any(|t| **t == *text) {
                own.push(Box::from(text));
            }
        }
        let longest = own.iter().map(|t| t.len()).max().unwrap_or(0);
        Self {
            texts: own,
            longest,
        }
    }

    /// The empty query, and the query `method` recycles connections with.
    pub(crate) fn for_recycling(method: &deadpool_postgres::RecyclingMethod) -> Self {
        Self::new(method.query())
    }

    /// The longest own text, in bytes (the framer keeps that much of a
    /// query to compare it whole).
    pub(crate) fn longest(&self) -> usize {
        self.longest
    }

    /// Whether `text` (the whole text when `complete`) is one of them.
    pub(crate) fn contains(&self, text: &[u8], complete: bool) -> bool {
        complete && self.texts.iter().any(|own| **own == *text)
    }
}

/// One prepared statement.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) text: Arc<str>,
    /// One of the pool's own queries.
    pub(crate) own: bool,
    last_used: u64,
}

/// Prepared statements by name, bounded in count and bytes; the least
/// recently used one is forgotten first.
#[derive(Debug, Default)]
pub(crate) struct PreparedStatements {
    by_name: HashMap<Box<[u8]>, Prepared>,
    bytes: usize,
    clock: u64,
    unknown: Option<Arc<str>>,
}

impl PreparedStatements {
    /// A `Parse` of `text` as `name`: remembers it and returns the text as
    /// kept. Re-parsing the same text under the same name (the unnamed
    /// statement of repeated `query_typed` calls) reuses the kept text.
    pub(crate) fn parse(
        &mut self,
        name: &[u8],
        text: &[u8],
        complete: bool,
        own: bool,
    ) -> Arc<str> {
        self.clock += 1;
        if let Some(prepared) = self.by_name.get_mut(name) {
            if prepared.own == own && same_text(&prepared.text, text, complete) {
                prepared.last_used = self.clock;
                return prepared.text.clone();
            }
        }
        let kept = keep_text(text, complete);
        self.forget(name);
        let size = name.len() + kept.len();
        while !self.by_name.is_empty()
            && (self.by_name.len() >= MAX_PREPARED || self.bytes + size > MAX_PREPARED_BYTES)
        {
            self.forget_least_recently_used();
        }
        self.bytes += size;
        self.by_name.insert(
            Box::from(name),
            Prepared {
                text: kept.clone(),
                own,
                last_used: self.clock,
            },
        );
        kept
    }

    /// The statement `name` refers to, if remembered.
    pub(crate) fn get(&mut self, name: &[u8]) -> Option<&Prepared> {
        self.clock += 1;
        let clock = self.clock;
        self.by_name.get_mut(name).map(|prepared| {
            prepared.last_used = clock;
            &*prepared
        })
    }

    /// A `Close` of the statement `name`.
    pub(crate) fn forget(&mut self, name: &[u8]) {
        if let Some((name, prepared)) = self.by_name.remove_entry(name) {
            self.bytes -= name.len() + prepared.text.len();
        }
    }

    fn forget_least_recently_used(&mut self) {
        let oldest = self
            .by_name
            .iter()
            .min_by_key(|(_, prepared)| prepared.last_used)
            .map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            self.forget(&name);
        }
    }

    /// The text shown for a statement not remembered (one allocation per
    /// connection, on first use).
    pub(crate) fn unknown(&mut self) -> Arc<str> {
        self.unknown
            .get_or_insert_with(|| Arc::from(UNKNOWN_STATEMENT))
            .clone()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_at_a_character_boundary_and_marked() {
        assert_eq!(&*keep_text(b"SELECT 1", true), "SELECT 1");
        let long = "é".repeat(STATEMENT_TEXT_LIMIT); // 2 bytes each
        let kept = keep_text(long.as_bytes(), true);
        assert!(kept.ends_with(CUT_MARK));
        assert_eq!(kept.len(), STATEMENT_TEXT_LIMIT + CUT_MARK.len_utf8());
        // Odd limit split: one byte more than the limit allows.
        let odd = format!("x{long}");
        let kept = keep_text(odd.as_bytes(), true);
        assert_eq!(kept.len(), STATEMENT_TEXT_LIMIT - 1 + CUT_MARK.len_utf8());
        assert!(same_text(&kept, odd.as_bytes(), true));
        assert!(!same_text(&kept, long.as_bytes(), true));
        // A prefix counts as cut.
        assert_eq!(&*keep_text(b"SELECT", false), "SELECT…");
        // Not UTF-8: replaced, never a panic.
        assert_eq!(&*keep_text(b"SELECT \xff", true), "SELECT \u{fffd}");
    }

    #[test]
    fn own_queries_always_include_the_empty_one() {
        let own = OwnQueries::new(["DISCARD ALL"]);
        assert!(own.contains(b"", true));
        assert!(own.contains(b"DISCARD ALL", true));
        assert!(!own.contains(b"DISCARD ALL", false));
        assert!(!own.contains(b"DISCARD", true));
        assert_eq!(own.longest(), 11);
        assert!(OwnQueries::default().contains(b"", true));
    }

    #[test]
    fn prepared_statements_reuse_texts_and_stay_bounded() {
        let mut prepared = PreparedStatements::default();
        let first = prepared.parse(b"", b"SELECT $1", true, false);
        let again = prepared.parse(b"", b"SELECT $1", true, false);
        assert!(Arc::ptr_eq(&first, &again));
        let other = prepared.parse(b"", b"SELECT 2", true, false);
        assert_eq!(&*other, "SELECT 2");
        assert_eq!(prepared.len(), 1);
        for i in 0..MAX_PREPARED + 10 {
            prepared.parse(format!("s{i}").as_bytes(), b"SELECT 1", true, false);
        }
        assert_eq!(prepared.len(), MAX_PREPARED);
        // The oldest went first.
        assert!(prepared.get(b"").is_none());
        assert!(prepared.get(b"s0").is_none());
        assert!(prepared.get(b"s1033").is_some());
        let text = vec![b'x'; STATEMENT_TEXT_LIMIT];
        for i in 0..1000 {
            prepared.parse(format!("big{i}").as_bytes(), &text, true, false);
        }
        assert!(prepared.bytes() <= MAX_PREPARED_BYTES);
        prepared.forget(b"big999");
        assert!(prepared.get(b"big999").is_none());
        assert!(Arc::ptr_eq(&prepared.unknown(), &prepared.unknown()));
    }
}
