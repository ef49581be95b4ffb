//! Statement text made safe to show: literals replaced by a placeholder,
//! comments dropped, whitespace collapsed, length bounded.
//!
//! poolwatch shows the last statement a connection ran in WARN events,
//! snapshots and reports. Written SQL carries secrets in its constants
//! (`ALTER ROLE app PASSWORD 'hunter2'`, `WHERE token = 'tx_…'`) and in its
//! comments, so, as pg_stat_statements and OpenTelemetry's `db.query.text`
//! guidance do, only the statement's shape is kept. Bind parameters are
//! never part of the text (`$1` stays `$1`).
//!
//! The lexer follows PostgreSQL's lexical rules (`src/backend/parser/scan.l`,
//! "Lexical Structure" in the manual), because any disagreement with the
//! server about where a constant ends shows the rest of it:
//!
//! * string constants `'…'` (`''` is a quote), `E'…'` (backslash escapes),
//!   `N'…'`, `B'…'`, `X'…'`, `U&'…'` with its `UESCAPE '…'` clause, and
//!   segments continued on the next line (`'foo'` newline `'bar'` is one
//!   constant) become one `?`;
//! * dollar-quoted strings `$$…$$` and `$tag$…$tag$` (a tag is an identifier
//!   without `$`; the body ends at the first copy of the opening delimiter)
//!   become `?`; `$1` is a parameter and is kept;
//! * numeric constants (`42`, `3.5`, `.5`, `1e-3`, `0x1F`, `0o17`, `0b101`,
//!   `1_000`, and letters stuck to a number, which PostgreSQL rejects) become
//!   `?`; a sign is an operator and is kept (`-4` is `-?`);
//! * a typed literal is a keyword or type name followed by a string, so it
//!   comes out as `DATE ?`, `INTERVAL ? HOUR`, `?::jsonb`;
//! * keywords, identifiers (also `"quoted"` and `U&"…"`), operators,
//!   punctuation and parameters are kept as written;
//! * comments (`--` to the end of the line, nested `/* */`) may say
//!   anything and are dropped; like whitespace, they separate tokens, and a
//!   run of both becomes one space.
//!
//! The placeholder is `?`, OpenTelemetry's: pg_stat_statements' `$n` would
//! read as the statement's own parameters, which are kept. The result is
//! for people, not for the server (`?` is also an operator character).
//!
//! The text may itself be a cut prefix of a statement: a constant the text
//! ends inside of is still a `?`, an unfinished quoted identifier is `"…"`,
//! and an unfinished comment is dropped.
//!
//! **`standard_conforming_strings`.** In `'…'` a backslash is an ordinary
//! character (the server default since 9.1), unless a session turned the
//! setting off: then `\'` is an escaped quote and the constant goes on. The
//! text alone does not say which, and guessing wrong shows the rest of the
//! constant, so a `'…'` with an odd run of backslashes before a quote
//! (`'C:\'`, `'it\'s'`, `ESCAPE '\'`) and everything after it become one `?`.
//!
//! Not handled, on purpose: values written as bare words are identifiers to
//! a lexer and are kept (`SET app.key = abc123`; quote secrets, or pass them
//! as parameters); psql's client-side syntax (`:var`, `\gset`) is not SQL;
//! lists of placeholders are not folded (`IN (?, ?, ?)` stays as long).
//! Keyword case and the server's lexical errors (`$1abc`) pass through.
//!
//! Each byte of input is looked at a bounded number of times, and lexing
//! stops once the output is full. Token boundaries fall on ASCII bytes, so
//! slicing never splits a character.

/// Stands for a constant (OpenTelemetry's placeholder).
const PLACEHOLDER: &str = "?";
/// Ends a text cut to fit its bound.
const CUT_MARKER: &str = "…";
/// Stands for a quoted identifier the text ends inside of.
const UNFINISHED_IDENTIFIER: &str = "\"…\"";

/// `sql` with its constants replaced by `?` and its comments dropped,
/// whitespace collapsed to single spaces and trimmed: at most `max_bytes`
/// bytes, cut at a token (or inside a keyword or identifier, at a character
/// boundary) and ending with `…` when cut. Below 3 bytes, a text that does
/// not fit is empty: the marker alone would not fit.
pub(crate) fn sanitize(sql: &str, max_bytes: usize) -> String {
    let mut text = BoundedText::new(max_bytes, sql.len());
    for token in Lexer::new(sql) {
        let fits = match token {
            Token::Separator => {
                text.separate();
                true
            }
            Token::Word(word) => text.push(word, Cut::AtAnyChar),
            Token::Kept(kept) => text.push(kept, Cut::Whole),
            Token::Constant => text.push(PLACEHOLDER, Cut::Whole),
            Token::UnfinishedIdentifier => text.push(UNFINISHED_IDENTIFIER, Cut::Whole),
        };
        if !fits {
            break;
        }
    }
    text.finish()
}

/// A lexical token, as far as its display needs to know.
#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    /// Whitespace or a comment.
    Separator,
    /// A keyword or unquoted identifier: kept, and may be cut inside.
    Word(&'a str),
    /// Kept whole: a quoted identifier, a parameter, an operator, `::`,
    /// `..` or a punctuation character.
    Kept(&'a str),
    /// A string or numeric constant.
    Constant,
    /// A quoted identifier the text ends inside of.
    UnfinishedIdentifier,
}

/// How a piece may be cut when the bound falls inside it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Dropped whole: a part of `"name"`, `$12` or `<=` would mislead.
    Whole,
    /// Cut at a character boundary: a keyword's or name's prefix still helps.
    AtAnyChar,
}

/// The output: appends pieces while they fit in `max_bytes`, and remembers
/// where to cut if a later one does not, leaving room for the marker.
struct BoundedText {
    text: String,
    max_bytes: usize,
    /// How much of `text` is kept if the whole does not fit: the longest
    /// prefix, ending at a place `Cut` allows, that leaves room for the
    /// marker. It can run past `text` into the piece being pushed.
    kept_if_cut: usize,
    /// A separator was seen since the last piece (and one was pushed before).
    space_pending: bool,
    cut: bool,
}

impl BoundedText {
    fn new(max_bytes: usize, input_len: usize) -> Self {
        Self {
            // Output is rarely longer than its input; `"…"` can make it so.
            text: String::with_capacity(max_bytes.min(input_len.saturating_add(8))),
            max_bytes,
            kept_if_cut: 0,
            space_pending: false,
            cut: false,
        }
    }

    /// A separator: one space before the next piece, none at the ends.
    fn separate(&mut self) {
        self.space_pending = !self.text.is_empty();
    }

    /// Appends `piece` after any pending space; `false` once the text is full.
    fn push(&mut self, piece: &str, cut: Cut) -> bool {
        if std::mem::take(&mut self.space_pending) && !self.append(" ", Cut::Whole) {
            return false;
        }
        self.append(piece, cut)
    }

    fn append(&mut self, piece: &str, cut: Cut) -> bool {
        let len = self.text.len();
        let room_before_marker = self.max_bytes.saturating_sub(CUT_MARKER.len());
        if self.kept_if_cut == len {
            if piece.len() <= room_before_marker.saturating_sub(len) {
                self.kept_if_cut = len + piece.len();
            } else if cut == Cut::AtAnyChar {
                self.kept_if_cut =
                    len + floor_char_boundary(piece, room_before_marker.saturating_sub(len));
            }
        }
        if piece.len() > self.max_bytes.saturating_sub(len) {
            self.cut_at_kept(piece);
            return false;
        }
        self.text.push_str(piece);
        true
    }

    /// `piece` did not fit: keep only what leaves room for the marker.
    fn cut_at_kept(&mut self, piece: &str) {
        let len = self.text.len();
        if self.kept_if_cut > len {
            // The kept prefix ends inside `piece` (a word cut at a character).
            self.text
                .push_str(piece.get(..self.kept_if_cut - len).unwrap_or(""));
        } else {
            self.text.truncate(self.kept_if_cut);
        }
        self.cut = true;
    }

    fn finish(mut self) -> String {
        if self.cut && self.text.len() + CUT_MARKER.len() <= self.max_bytes {
            self.text.push_str(CUT_MARKER);
        }
        self.text
    }
}

/// The longest prefix of `s` of at most `max` bytes ending at a character
/// boundary (`str::floor_char_boundary` is newer than the MSRV).
fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut at = max.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The kinds of quoted string constant, by how their body is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StringKind {
    /// `'…'` and `N'…'`: `''` is a quote; see `standard_conforming_strings`
    /// in the module documentation for backslashes.
    Plain,
    /// `U&'…'`: `''` is a quote, and backslash is only an escape for the
    /// value (the server rejects these when `standard_conforming_strings` is
    /// off, so they read the same either way).
    Unicode,
    /// `E'…'`: a backslash escapes the next character, `''` is a quote.
    Escape,
    /// `B'…'` and `X'…'`: no escapes; the first quote ends them.
    Bits,
}

/// How a string body ended.
enum BodyEnd {
    /// At its closing quote.
    Closed,
    /// With the text, or at a place whose reading depends on
    /// `standard_conforming_strings`: the rest is consumed.
    Consumed,
}

/// Splits statement text into tokens, byte by byte (every byte of a
/// non-ASCII character is an identifier byte to PostgreSQL, so decisions
/// are made on ASCII bytes only).
struct Lexer<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let start = self.pos;
        let first = *self.bytes.get(start)?;
        let second = self.byte(start + 1);
        let token = match first {
            b if is_space(b) => {
                self.pos = self.scan_while(start, is_space);
                Token::Separator
            }
            b'-' if second == Some(b'-') => {
                self.pos = self.line_comment_end(start);
                Token::Separator
            }
            b'/' if second == Some(b'*') => {
                self.pos = self.block_comment_end(start);
                Token::Separator
            }
            b'\'' => self.string_constant(start + 1, StringKind::Plain),
            b'"' => self.quoted_identifier(start, start + 1),
            b'$' => self.dollar(start),
            b'0'..=b'9' => self.number(start),
            // `::` and `..` (`1..10`, a PL/pgSQL range) are tokens of their own.
            b':' | b'.' if second == Some(first) => {
                self.pos = start + 2;
                Token::Kept(self.slice(start, self.pos))
            }
            b'.' if second.is_some_and(|b| b.is_ascii_digit()) => self.number(start),
            b'e' | b'E' if second == Some(b'\'') => {
                self.string_constant(start + 2, StringKind::Escape)
            }
            b'n' | b'N' if second == Some(b'\'') => {
                self.string_constant(start + 2, StringKind::Plain)
            }
            b'b' | b'B' | b'x' | b'X' if second == Some(b'\'') => {
                self.string_constant(start + 2, StringKind::Bits)
            }
            b'u' | b'U' if second == Some(b'&') && self.byte(start + 2) == Some(b'\'') => {
                self.string_constant(start + 3, StringKind::Unicode)
            }
            b'u' | b'U' if second == Some(b'&') && self.byte(start + 2) == Some(b'"') => {
                self.quoted_identifier(start, start + 3)
            }
            b if is_ident_start(b) => {
                self.pos = self.scan_while(start + 1, is_ident_cont);
                Token::Word(self.slice(start, self.pos))
            }
            b if is_operator_char(b) => {
                self.pos = self.operator_end(start);
                Token::Kept(self.slice(start, self.pos))
            }
            // Punctuation and anything else PostgreSQL would reject: one
            // ASCII byte at a time, as written.
            _ => {
                self.pos = start + 1;
                Token::Kept(self.slice(start, self.pos))
            }
        };
        Some(token)
    }
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            sql,
            bytes: sql.as_bytes(),
            pos: 0,
        }
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.bytes.get(at).copied()
    }

    /// `sql[start..end]`, for a token kept as written. Token boundaries are
    /// ASCII bytes, so this is never out of a character; if it were, the
    /// token shows as a placeholder rather than panicking.
    fn slice(&self, start: usize, end: usize) -> &'a str {
        self.sql.get(start..end).unwrap_or(PLACEHOLDER)
    }

    fn scan_while(&self, mut at: usize, class: fn(u8) -> bool) -> usize {
        while self.byte(at).is_some_and(class) {
            at += 1;
        }
        at
    }

    /// `--` at `at`: the comment runs to the end of the line (the newline
    /// itself is whitespace).
    fn line_comment_end(&self, at: usize) -> usize {
        self.scan_while(at, |b| b != b'\n' && b != b'\r')
    }

    /// `/*` at `at`: block comments nest, as in the SQL standard.
    fn block_comment_end(&self, mut at: usize) -> usize {
        let mut depth = 0usize;
        while let Some(b) = self.byte(at) {
            let next = self.byte(at + 1);
            if b == b'/' && next == Some(b'*') {
                depth += 1;
                at += 2;
            } else if b == b'*' && next == Some(b'/') {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return at;
                }
            } else {
                at += 1;
            }
        }
        at
    }

    /// An operator from `start`: operator characters up to where a
    /// comment starts (`<--` is `<` and a comment).
    fn operator_end(&self, start: usize) -> usize {
        let mut at = start + 1;
        while self.byte(at).is_some_and(is_operator_char) {
            match (self.byte(at), self.byte(at + 1)) {
                (Some(b'-'), Some(b'-')) | (Some(b'/'), Some(b'*')) => break,
                _ => at += 1,
            }
        }
        at
    }

    /// Past whitespace and comments of both kinds, from `at`.
    fn skip_separators(&self, mut at: usize) -> usize {
        loop {
            match (self.byte(at), self.byte(at + 1)) {
                (Some(b), _) if is_space(b) => at += 1,
                (Some(b'-'), Some(b'-')) => at = self.line_comment_end(at),
                (Some(b'/'), Some(b'*')) => at = self.block_comment_end(at),
                _ => return at,
            }
        }
    }

    /// A quoted string constant whose body starts at `body`, with its
    /// continuation segments and, for `U&'…'`, its `UESCAPE` clause.
    fn string_constant(&mut self, body: usize, kind: StringKind) -> Token<'a> {
        self.pos = body;
        loop {
            if let BodyEnd::Consumed = self.string_body(kind) {
                return Token::Constant;
            }
            match self.continuation() {
                Some(next_body) => self.pos = next_body,
                None => break,
            }
        }
        if kind == StringKind::Unicode {
            self.uescape_clause();
        }
        Token::Constant
    }

    /// Reads a string body from `self.pos` to just past its closing quote.
    fn string_body(&mut self, kind: StringKind) -> BodyEnd {
        // Whether the bytes just read end in an odd run of backslashes.
        let mut odd_backslashes = false;
        while let Some(b) = self.byte(self.pos) {
            self.pos += 1;
            match b {
                b'\'' if kind == StringKind::Plain && odd_backslashes => {
                    // `\'`: a quote, or an escaped one when
                    // standard_conforming_strings is off. Either reading
                    // could be the server's, so nothing after it is shown.
                    self.pos = self.bytes.len();
                    return BodyEnd::Consumed;
                }
                b'\'' if kind != StringKind::Bits && self.byte(self.pos) == Some(b'\'') => {
                    self.pos += 1;
                    odd_backslashes = false;
                }
                b'\'' => return BodyEnd::Closed,
                // Skips the escaped byte, a quote included; the rest of a
                // multibyte character is never a quote or a backslash.
                b'\\' if kind == StringKind::Escape => self.pos += 1,
                b'\\' => odd_backslashes = !odd_backslashes,
                _ => odd_backslashes = false,
            }
        }
        self.pos = self.bytes.len();
        BodyEnd::Consumed
    }

    /// After a closing quote: the body start of the next segment if the
    /// constant goes on. Only whitespace with a newline in it, and `--`
    /// comments, may separate the segments (`'a' 'b'` on one line is an
    /// error to the server, and two constants here).
    fn continuation(&self) -> Option<usize> {
        let mut at = self.pos;
        let mut newline = false;
        loop {
            match (self.byte(at)?, self.byte(at + 1)) {
                (b'\n' | b'\r', _) => {
                    newline = true;
                    at += 1;
                }
                (b, _) if is_space(b) => at += 1,
                (b'-', Some(b'-')) => at = self.line_comment_end(at),
                (b'\'', _) if newline => return Some(at + 1),
                _ => return None,
            }
        }
    }

    /// `UESCAPE '…'` after a `U&'…'` constant belongs to it: the escape
    /// character only says how to read the value.
    fn uescape_clause(&mut self) {
        const UESCAPE: &[u8] = b"uescape";
        let keyword = self.skip_separators(self.pos);
        let keyword_end = keyword + UESCAPE.len();
        let is_keyword = self
            .bytes
            .get(keyword..keyword_end)
            .is_some_and(|word| word.eq_ignore_ascii_case(UESCAPE))
            && !self.byte(keyword_end).is_some_and(is_ident_cont);
        if !is_keyword {
            return;
        }
        let quote = self.skip_separators(keyword_end);
        if self.byte(quote) == Some(b'\'') {
            self.pos = quote + 1;
            // However it ends, the clause is part of the constant.
            self.string_body(StringKind::Plain);
        }
    }

    /// `$` at `start`: a parameter, a dollar-quoted string, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Token<'a> {
        let after = start + 1;
        if self.byte(after).is_some_and(|b| b.is_ascii_digit()) {
            self.pos = self.scan_while(after, |b| b.is_ascii_digit());
            return Token::Kept(self.slice(start, self.pos));
        }
        let tag_end = if self.byte(after).is_some_and(is_ident_start) {
            self.scan_while(after, is_dollar_tag_cont)
        } else {
            after
        };
        if self.byte(tag_end) != Some(b'$') {
            // `$name` with no closing `$`: a lone `$`, then a word.
            self.pos = after;
            return Token::Kept(self.slice(start, after));
        }
        let body = tag_end + 1;
        let delimiter = self.slice(start, body);
        // `str::find` is linear (two-way search), whatever the delimiter.
        self.pos = match self.sql.get(body..).and_then(|rest| rest.find(delimiter)) {
            Some(offset) => body + offset + delimiter.len(),
            None => self.bytes.len(),
        };
        Token::Constant
    }

    /// A numeric constant from `start` (a digit, or `.` before a digit).
    fn number(&mut self, start: usize) -> Token<'a> {
        let digits = |b: u8| b.is_ascii_digit() || b == b'_';
        let mut at = self.scan_while(start, digits);
        // `1..10` is an integer, then `..`.
        if self.byte(at) == Some(b'.') && self.byte(at + 1) != Some(b'.') {
            at = self.scan_while(at + 1, digits);
        }
        if matches!(self.byte(at), Some(b'e' | b'E')) {
            let mut exponent = at + 1;
            if matches!(self.byte(exponent), Some(b'+' | b'-')) {
                exponent += 1;
            }
            if self.byte(exponent).is_some_and(|b| b.is_ascii_digit()) {
                at = self.scan_while(exponent, digits);
            }
        }
        // An identifier stuck to a number is part of the constant: the
        // radix prefixes (`0x1F`, `0o17`, `0b101`) and the junk the server
        // rejects (`12abc`). Not a `$`: `1$$…$$` is a number, then a string.
        if self.byte(at).is_some_and(is_ident_start) {
            at = self.scan_while(at, is_ident_cont);
        }
        self.pos = at;
        Token::Constant
    }

    /// A quoted identifier from `start` (`"` or `U&"`), body at `body`:
    /// kept as written, `""` included.
    fn quoted_identifier(&mut self, start: usize, body: usize) -> Token<'a> {
        let mut at = body;
        while let Some(b) = self.byte(at) {
            at += 1;
            if b == b'"' {
                if self.byte(at) == Some(b'"') {
                    at += 1;
                } else {
                    self.pos = at;
                    return Token::Kept(self.slice(start, at));
                }
            }
        }
        self.pos = self.bytes.len();
        Token::UnfinishedIdentifier
    }
}

/// PostgreSQL's whitespace (`\v` since PostgreSQL 16).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn is_operator_char(b: u8) -> bool {
    matches!(
        b,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

/// A letter, `_`, or any byte of a non-ASCII character.
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_dollar_tag_cont(b) || b == b'$'
}

/// A dollar-quote tag is an identifier that cannot contain `$`.
fn is_dollar_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rules alone, without a bound.
    fn shape(sql: &str) -> String {
        sanitize(sql, usize::MAX)
    }

    #[test]
    fn secrets_in_the_motivating_statements_are_replaced() {
        assert_eq!(
            shape("ALTER ROLE app PASSWORD 'hunter2'"),
            "ALTER ROLE app PASSWORD ?"
        );
        assert_eq!(
            shape("SELECT * FROM t WHERE token = 'tx_secret_42' AND n IN (1, 2.5e3, -4)"),
            "SELECT * FROM t WHERE token = ? AND n IN (?, ?, -?)"
        );
    }

    #[test]
    fn standard_strings_double_their_quotes() {
        assert_eq!(shape("SELECT 'a''b'"), "SELECT ?");
        assert_eq!(shape("SELECT '', 'x'"), "SELECT ?, ?");
        assert_eq!(shape("SELECT 'it''s' || name"), "SELECT ? || name");
        assert_eq!(shape("SELECT 'a\nb'"), "SELECT ?");
    }

    #[test]
    fn escape_strings_take_backslash_escapes() {
        assert_eq!(shape(r"SELECT E'it\'s' AS x"), "SELECT ? AS x");
        assert_eq!(shape(r"SELECT e'a\\' , 'b'"), "SELECT ? , ?");
        assert_eq!(shape(r"SELECT E'a''b\\\'c', 1"), "SELECT ?, ?");
        assert_eq!(shape("SELECT E'\\\u{e9}' x"), "SELECT ? x");
    }

    #[test]
    fn national_bit_and_hex_strings() {
        assert_eq!(shape("SELECT N'naïve', n'x'"), "SELECT ?, ?");
        assert_eq!(
            shape("SELECT B'1010', b'0', X'1F', x'ff'"),
            "SELECT ?, ?, ?, ?"
        );
        // The server ends a bit string at its first quote: two constants.
        assert_eq!(shape("SELECT B'10''01'"), "SELECT ??");
    }

    #[test]
    fn prefixes_count_only_at_the_start_of_a_token() {
        assert_eq!(shape("SELECT one'x', nE'y'"), "SELECT one?, nE?");
        assert_eq!(shape("SELECT menu&'x'"), "SELECT menu&?");
        assert_eq!(shape("SELECT E, N, U & 'x'"), "SELECT E, N, U & ?");
    }

    #[test]
    fn unicode_strings_absorb_their_uescape_clause() {
        assert_eq!(shape("SELECT U&'d\\0061t\\+000061'"), "SELECT ?");
        assert_eq!(
            shape("SELECT U&'d!0061t!+000061' UESCAPE '!', 2"),
            "SELECT ?, ?"
        );
        assert_eq!(
            shape("SELECT u&'x' uescape /* c */\n'#' FROM t"),
            "SELECT ? FROM t"
        );
        // No clause: `uescaped` is a name, not the keyword.
        assert_eq!(shape("SELECT U&'x' uescaped"), "SELECT ? uescaped");
        // The identifier is kept; its escape character is a constant.
        assert_eq!(
            shape("SELECT U&\"d!0061t\" UESCAPE '!'"),
            "SELECT U&\"d!0061t\" UESCAPE ?"
        );
    }

    #[test]
    fn a_string_continued_on_the_next_line_is_one_constant() {
        assert_eq!(shape("SELECT 'foo'\n'bar'"), "SELECT ?");
        assert_eq!(
            shape("SELECT 'foo' -- note\n  \r\n 'bar', 1"),
            "SELECT ?, ?"
        );
        // The continuation keeps the first segment's rules.
        assert_eq!(shape("SELECT E'a'\n'b\\'c' AS x"), "SELECT ? AS x");
        assert_eq!(shape("SELECT B'1'\n'0' AS x"), "SELECT ? AS x");
        // On one line, or across a block comment, they are two constants.
        assert_eq!(shape("SELECT 'foo' 'bar'"), "SELECT ? ?");
        assert_eq!(shape("SELECT 'foo' /* c */\n'bar'"), "SELECT ? ?");
    }

    #[test]
    fn dollar_quoted_strings() {
        assert_eq!(shape("SELECT $$it's$$"), "SELECT ?");
        assert_eq!(
            shape("CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1 $body$ LANGUAGE sql"),
            "CREATE FUNCTION f() RETURNS int AS ? LANGUAGE sql"
        );
        // `$`-looking text inside: parameters, other tags, `$$`.
        assert_eq!(
            shape("DO $fn$ SELECT $1, $$x$$, $other$ y $other$, '$fn' $fn$; SELECT 1"),
            "DO ?; SELECT ?"
        );
        // A mismatched delimiter's last `$` can open the right one.
        assert_eq!(shape("SELECT $a$ x $b$a$, 1"), "SELECT ?, ?");
        // Tags are case-sensitive.
        assert_eq!(shape("SELECT $T$ x $t$ y $T$ z"), "SELECT ? z");
        // Non-ASCII tags.
        assert_eq!(shape("SELECT $é$ x $é$"), "SELECT ?");
    }

    #[test]
    fn dollar_signs_that_are_not_quotes() {
        assert_eq!(
            shape("SELECT $1, $12 FROM t WHERE a = $3"),
            "SELECT $1, $12 FROM t WHERE a = $3"
        );
        // Identifiers may contain `$`, so no quote opens inside one.
        assert_eq!(shape("SELECT a$b$c, x$$y$$"), "SELECT a$b$c, x$$y$$");
        // A tag cannot start with a digit, and needs its closing `$`.
        assert_eq!(shape("SELECT $1$ x $1$"), "SELECT $1$ x $1$");
        assert_eq!(shape("SELECT $foo bar"), "SELECT $foo bar");
        // A number then a dollar-quoted string, not junk after the number.
        assert_eq!(shape("SELECT 1$$x$$"), "SELECT ??");
    }

    #[test]
    fn numeric_constants() {
        for number in [
            "42",
            "3.5",
            ".5",
            "5.",
            "1e10",
            "1.5E-3",
            "2e+7",
            "1.e5",
            "0x1F",
            "0X_ff",
            "0o17",
            "0b1010",
            "1_000_000",
            "1_000.000_1",
            "12abc",
            "1e",
        ] {
            assert_eq!(
                shape(&format!("SELECT {number} x")),
                "SELECT ? x",
                "{number}"
            );
        }
        assert_eq!(shape("SELECT -4, +2.5, 3-1"), "SELECT -?, +?, ?-?");
        assert_eq!(shape("FOR i IN 1..10 LOOP"), "FOR i IN ?..? LOOP");
        assert_eq!(shape("SELECT t1.c2, t.5"), "SELECT t1.c2, t?");
        assert_eq!(shape("SELECT 1e+x"), "SELECT ?+x");
    }

    #[test]
    fn typed_literals_keep_their_type() {
        assert_eq!(shape("SELECT DATE '2024-01-01'"), "SELECT DATE ?");
        assert_eq!(
            shape("SELECT now() - INTERVAL '1 day' HOUR, TIMESTAMP WITH TIME ZONE '2024-01-01 00:00+02'"),
            "SELECT now() - INTERVAL ? HOUR, TIMESTAMP WITH TIME ZONE ?"
        );
        assert_eq!(shape("SELECT '{\"a\": 1}'::jsonb"), "SELECT ?::jsonb");
    }

    #[test]
    fn identifiers_operators_and_parameters_are_kept() {
        let kept = "SELECT \"Weird \"\"Name\"\" -- /* 'x' */\", U&\"d\\0061t\", t.col, x->>'k' \
                    FROM s.t WHERE a <> $1 AND b @> $2::int[] AND c ~* $3; ";
        assert_eq!(
            shape(kept),
            "SELECT \"Weird \"\"Name\"\" -- /* 'x' */\", U&\"d\\0061t\", t.col, x->>? \
             FROM s.t WHERE a <> $1 AND b @> $2::int[] AND c ~* $3;"
        );
        assert_eq!(
            shape("select Ünïcödé_名前 from t"),
            "select Ünïcödé_名前 from t"
        );
        assert_eq!(shape("SELECT TRUE, NULL"), "SELECT TRUE, NULL");
    }

    #[test]
    fn comments_are_dropped_and_separate_tokens() {
        assert_eq!(
            shape("SELECT 1 -- password hunter2\nFROM t"),
            "SELECT ? FROM t"
        );
        assert_eq!(shape("SELECT/* hunter2 */x"), "SELECT x");
        assert_eq!(
            shape("SELECT /* outer /* inner hunter2 */ still hunter2 */ x"),
            "SELECT x"
        );
        assert_eq!(shape("SELECT /*/ hunter2 */ x"), "SELECT x");
        assert_eq!(shape("SELECT a */* hunter2 */ b"), "SELECT a * b");
        // A comment starts inside what would be an operator.
        assert_eq!(shape("SELECT x <-- hunter2\n, y"), "SELECT x < , y");
        assert_eq!(shape("SELECT 1 -- hunter2\r'x'"), "SELECT ? ?");
    }

    #[test]
    fn whitespace_collapses_and_is_trimmed() {
        assert_eq!(shape(" \t\n SELECT\r\n\t a ,\x0b\x0c b \n"), "SELECT a , b");
        assert_eq!(shape(""), "");
        assert_eq!(shape("  -- only a comment"), "");
    }

    #[test]
    fn a_cut_prefix_never_shows_what_it_ends_inside() {
        assert_eq!(shape("UPDATE u SET pw = 'hunter"), "UPDATE u SET pw = ?");
        assert_eq!(shape("UPDATE u SET pw = E'hun\\"), "UPDATE u SET pw = ?");
        assert_eq!(
            shape("UPDATE u SET pw = U&'hun' UESCAPE '"),
            "UPDATE u SET pw = ?"
        );
        assert_eq!(shape("SELECT 'a'\n'hunter"), "SELECT ?");
        assert_eq!(shape("DO $$ hunter"), "DO ?");
        assert_eq!(shape("DO $body$ hunter $body"), "DO ?");
        assert_eq!(shape("SELECT \"hunter"), "SELECT \"…\"");
        assert_eq!(shape("SELECT U&\"hunter\"\"x"), "SELECT \"…\"");
        assert_eq!(shape("SELECT 1 /* hunter /* */"), "SELECT ?");
        assert_eq!(shape("SELECT 1 -- hunter"), "SELECT ?");
    }

    #[test]
    fn an_escaped_looking_quote_hides_the_rest() {
        // With standard_conforming_strings off, `\'` is an escaped quote
        // and 'hunter2' would be outside any constant.
        assert_eq!(
            shape(r"INSERT INTO t VALUES ('O\'Brien', 'hunter2')"),
            "INSERT INTO t VALUES (?"
        );
        assert_eq!(shape(r"SELECT 'C:\' , hunter2"), "SELECT ?");
        assert_eq!(shape(r"SELECT N'a\''b' , hunter2"), "SELECT ?");
        // An even run escapes nothing either way.
        assert_eq!(shape(r"SELECT 'C:\\' , x"), "SELECT ? , x");
        assert_eq!(shape(r"SELECT 'a\b' , x"), "SELECT ? , x");
        // E'...' and U&'...' read the same under both settings.
        assert_eq!(shape(r"SELECT E'C:\\' , x"), "SELECT ? , x");
        assert_eq!(shape(r"SELECT U&'C:\' , x"), "SELECT ? , x");
    }

    #[test]
    fn bounded_at_a_char_boundary_with_a_marker() {
        let sql = "SELECT ééééé FROM t";
        assert_eq!(sanitize(sql, 100), sql);
        assert_eq!(sanitize(sql, sql.len()), sql);
        // 14 bytes of text and 3 of marker: `é` is 2 bytes, so 3 of them.
        assert_eq!(sanitize(sql, 17), "SELECT ééé…");
        assert_eq!(sanitize(sql, 18), "SELECT éééé…");
        assert_eq!(sanitize(sql, 11), "SELECT …");
        assert_eq!(sanitize(sql, 10), "SELECT …");
        assert_eq!(sanitize(sql, 9), "SELECT…");
        assert_eq!(sanitize(sql, 3), "…");
        // Too small for the marker: nothing rather than a cut text unmarked.
        assert_eq!(sanitize(sql, 2), "");
        assert_eq!(sanitize(sql, 0), "");
        assert_eq!(sanitize("", 0), "");
        assert_eq!(sanitize("x", 1), "x");
    }

    #[test]
    fn quoted_identifiers_parameters_and_operators_are_not_cut_inside() {
        assert_eq!(sanitize("SELECT \"Long Name\" FROM t", 20), "SELECT …");
        assert_eq!(sanitize("SELECT $123456, x", 14), "SELECT …");
        assert_eq!(sanitize("SELECT a <= b", 12), "SELECT a …");
        assert_eq!(sanitize("SELECT a <= b c", 13), "SELECT a …");
        assert_eq!(sanitize("SELECT x::jsonb", 12), "SELECT x…");
        // Whitespace and comments count once the text is collapsed.
        let spaced = format!("SELECT{}1", " ".repeat(1000));
        assert_eq!(sanitize(&spaced, 8), "SELECT ?");
    }

    #[test]
    fn long_and_pathological_inputs_take_linear_time() {
        const LEN: usize = 1 << 20;
        for unit in [
            "'",
            "''",
            "E'\\",
            "$a$",
            "$$",
            "$",
            "/*",
            "*/",
            "--",
            "\"",
            "U&'x'\n",
            "'x'\n",
            "1",
            "a",
            "\u{e9}",
            "$1",
            " ",
            "U&'' UESCAPE ",
            "/* */ ",
        ] {
            let sql = unit.repeat(LEN / unit.len());
            let out = sanitize(&sql, usize::MAX);
            assert_eq!(sanitize(&out, usize::MAX), out, "{unit:?}");
            assert!(sanitize(&sql, 64).len() <= 64);
        }
    }

    /// Marks the text of a constant or comment; statement shapes never
    /// contain it, nor the digits 5 to 9, which number constants are
    /// written with. Neither may appear in the output.
    const MARK: &str = "QX";

    fn leaks(out: &str) -> bool {
        out.contains(MARK) || out.contains(|c: char| ('5'..='9').contains(&c))
    }

    /// Text inside a constant: the characters that end or escape one,
    /// comment starters, newlines, digits, non-ASCII, around a marker.
    fn secret_text() -> impl Strategy<Value = String> {
        let filler = || {
            proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(
                        &[
                            '\'', '"', '\\', '$', '-', '/', '*', '\n', '\r', ' ', 'é', '日', 'e',
                            'U', '&', ';', '_'
                        ][..]
                    ),
                    proptest::char::range('a', 'z'),
                    proptest::char::range('0', '9'),
                ],
                0..10,
            )
            .prop_map(String::from_iter)
        };
        (filler(), "[a-z0-9]{3,10}", filler()).prop_map(|(a, m, b)| format!("{a}{MARK}{m}{b}"))
    }

    fn secret_number() -> impl Strategy<Value = String> {
        let d = || "[5-9]{1,6}";
        prop_oneof![
            d().prop_map(|n| n),
            (d(), d()).prop_map(|(a, b)| format!("{a}.{b}")),
            d().prop_map(|n| format!(".{n}")),
            d().prop_map(|n| format!("{n}.")),
            (d(), d(), "[eE][+-]?").prop_map(|(a, b, e)| format!("{a}{e}{b}")),
            (d(), d(), d()).prop_map(|(a, b, c)| format!("{a}.{b}E-{c}")),
            (d(), "0[xXoObB]_?").prop_map(|(n, p)| format!("{p}{n}")),
            (d(), d()).prop_map(|(a, b)| format!("{a}_{b}")),
        ]
    }

    /// A constant or comment, written as a client would, around a secret.
    fn secret_token() -> impl Strategy<Value = String> {
        let plain = |s: &str| s.replace('\'', "''");
        let escaped = |s: &str| s.replace('\\', r"\\").replace('\'', r"\'");
        prop_oneof![
            secret_text().prop_map(move |s| format!("'{}'", plain(&s))),
            secret_text().prop_map(move |s| format!("N'{}'", plain(&s))),
            secret_text().prop_map(move |s| format!("E'{}'", escaped(&s))),
            (secret_text(), any::<bool>()).prop_map(move |(s, clause)| {
                let clause = if clause { " UESCAPE '!'" } else { "" };
                format!("U&'{}'{clause}", plain(&s))
            }),
            (secret_text(), "[bBxX]").prop_map(|(s, p)| format!("{p}'{}'", s.replace('\'', ""))),
            (secret_text(), "([a-z_][a-z0-4_]{0,3})?").prop_map(|(body, tag)| {
                let delimiter = format!("${tag}$");
                // The body must end at the closing delimiter, not before.
                let body = match format!("{body}{delimiter}").find(&delimiter) {
                    Some(at) if at == body.len() => body,
                    _ => body.replace('$', ""),
                };
                format!("{delimiter}{body}{delimiter}")
            }),
            (
                secret_text(),
                secret_text(),
                proptest::sample::select(&["\n", " \r\n\t", "\n-- note\n  ", "--\n"][..]),
                any::<bool>()
            )
                .prop_map(move |(a, b, between, escape)| if escape {
                    format!("E'{}'{between}'{}'", escaped(&a), escaped(&b))
                } else {
                    format!("'{}'{between}'{}'", plain(&a), plain(&b))
                }),
            (
                secret_text(),
                proptest::sample::select(&["DATE {}", "{}::text", "INTERVAL {} HOUR"][..])
            )
                .prop_map(move |(s, typed)| typed.replace("{}", &format!("'{}'", plain(&s)))),
            secret_number(),
            secret_text().prop_map(|s| format!("/* {} */", s.replace('*', ""))),
            secret_text().prop_map(|s| format!("/* a /* {} */ b */", s.replace('*', ""))),
            secret_text().prop_map(|s| format!("-- {}\n", s.replace(['\n', '\r'], ""))),
        ]
    }

    /// Statement shapes; each `{}` takes a constant or comment. No two
    /// slots are apart by only whitespace with a newline: the server would
    /// read two strings there as one, with the first one's escapes.
    const SHAPES: &[&str] = &[
        "SELECT * FROM t WHERE a = {} AND b = $1",
        "INSERT INTO users (name, token) VALUES ($1, {}) RETURNING id",
        "UPDATE accounts SET note = {}, n = n + {} WHERE id = $2",
        "ALTER ROLE app PASSWORD {}",
        "{}",
        "SELECT f({},{}) FROM \"Odd \"\"Name\"\"\" WHERE x IN ({}, $3)",
        "DO {} LANGUAGE plpgsql",
        "SELECT a::text||{}||b FROM t -- c\nWHERE b<>{}",
        "SELECT {},\n{}\n,{}",
    ];

    /// A statement with secrets, sometimes cut short as a truncated
    /// capture would be.
    fn statement_with_secrets() -> impl Strategy<Value = String> {
        (
            proptest::sample::select(SHAPES),
            proptest::collection::vec(secret_token(), 3),
            proptest::option::weighted(0.3, any::<proptest::sample::Index>()),
        )
            .prop_map(|(shape, tokens, cut)| {
                let mut pieces = shape.split("{}");
                let mut sql = pieces.next().unwrap_or_default().to_owned();
                for (token, piece) in tokens.iter().cycle().zip(pieces) {
                    sql.push_str(token);
                    sql.push_str(piece);
                }
                if let Some(cut) = cut {
                    sql.truncate(floor_char_boundary(&sql, cut.index(sql.len() + 1)));
                }
                sql
            })
    }

    fn max_bytes() -> impl Strategy<Value = usize> {
        prop_oneof![Just(usize::MAX), 0..160usize]
    }

    /// SQL-looking noise: the pieces the lexer decides on, in any order.
    fn lexical_noise() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(
                &[
                    "'",
                    "''",
                    "E'",
                    "e'",
                    "N'",
                    "B'",
                    "X'",
                    "U&'",
                    "U&\"",
                    "u&",
                    " UESCAPE ",
                    "$",
                    "$$",
                    "$a$",
                    "$1",
                    "$_é$",
                    "--",
                    "/*",
                    "*/",
                    "\"",
                    "\"\"",
                    "\\",
                    "\n",
                    "\r",
                    " ",
                    "\t",
                    "0x",
                    "1",
                    "9",
                    ".",
                    "..",
                    "e",
                    "E+",
                    "_",
                    "é",
                    "日",
                    "a",
                    "SELECT",
                    "-",
                    "+",
                    "?",
                    "…",
                    "\"…\"",
                    ";",
                    "(",
                    ")",
                    ":",
                    "\0",
                ][..],
            ),
            0..40,
        )
        .prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn secrets_never_reach_the_output(sql in statement_with_secrets(), max in max_bytes()) {
            let out = sanitize(&sql, max);
            prop_assert!(!leaks(&out), "{sql:?} -> {out:?}");
        }

        #[test]
        fn bounded_and_idempotent_on_sql_like_text(sql in lexical_noise(), max in max_bytes()) {
            let out = sanitize(&sql, max);
            prop_assert!(out.len() <= max);
            prop_assert_eq!(sanitize(&out, max), out.clone(), "{:?}", sql);
            prop_assert_eq!(sanitize(&out, usize::MAX), out);
        }

        #[test]
        fn bounded_and_idempotent_on_any_text(sql in any::<String>(), max in max_bytes()) {
            let out = sanitize(&sql, max);
            prop_assert!(out.len() <= max);
            prop_assert_eq!(sanitize(&out, max), out);
        }

        #[test]
        fn idempotent_on_statements_with_secrets(sql in statement_with_secrets(), max in max_bytes()) {
            let out = sanitize(&sql, max);
            prop_assert!(out.len() <= max);
            prop_assert_eq!(sanitize(&out, max), out);
        }
    }
}
