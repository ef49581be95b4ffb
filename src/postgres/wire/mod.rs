//! The PostgreSQL wire protocol as the connection observer follows it:
//! both directions' framing ([`framing`]), and the session state that
//! turns messages into [`Events`] for the connection's activity record.
//!
//! What is read, and nothing else:
//!
//! * frontend: the startup-phase request codes (`SSLRequest`,
//!   `GSSENCRequest`, `CancelRequest`, `StartupMessage`: never their
//!   parameters), `Query` text, `Parse` name and text, `Bind` portal and
//!   statement names (never parameter values), `Close` statement names,
//!   and the presence of `Execute`, `Sync`, `FunctionCall` and the copy
//!   messages. Password and SASL messages are skipped unread;
//! * backend: the answer byte to an encryption request, `ReadyForQuery`'s
//!   transaction status, `BackendKeyData`'s pid (not its key), and the
//!   presence of `CopyInResponse`, `CopyBothResponse` and `ErrorResponse`.
//!
//! Requests and answers: every `Query`, `Sync` and `FunctionCall` the
//! server reads is answered by exactly one `ReadyForQuery`, in order —
//! except a `Sync` read during `COPY FROM STDIN`, which the server ignores
//! (tokio-postgres sends one with the `Execute` that starts the copy). A
//! FIFO of pending requests pairs each answer with its request, and says
//! whether the request was reported (the pool's own queries are not, nor
//! their answers).
//!
//! Memory per connection is bounded: framing buffers by the longest kept
//! prefix, prepared statements by [`statements::MAX_PREPARED`] and
//! [`statements::MAX_PREPARED_BYTES`], pending requests by
//! [`MAX_PENDING`]. Past that, or on a message that cannot occur, the
//! observer stops following the connection ([`Outcome::Lost`]) instead of
//! guessing.

pub(crate) mod framing;
pub(crate) mod statements;

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use framing::{Desync, Frame, Framer, KeepRules, Kind, NAME_LIMIT};
use statements::{OwnQueries, PreparedStatements, STATEMENT_TEXT_LIMIT};

use crate::export::ConnectionMetrics;
use crate::ledger::connection::TransactionState;

/// Unanswered requests followed per connection, at most (tokio-postgres
/// pipelines the requests of concurrent callers).
pub(crate) const MAX_PENDING: usize = 16 * 1024;

/// What the observer reports, in protocol order, for one batch of bytes.
/// Mirrors the activity record's writer, without the clock.
pub(crate) trait Events {
    /// A request went out that the server answers with one "ready".
    fn request_sent(&mut self);
    /// The statement that request runs.
    fn statement(&mut self, text: &Arc<str>);
    /// A request reported as sent will never be answered.
    fn request_withdrawn(&mut self);
    /// The oldest reported request was answered.
    fn ready(&mut self, state: TransactionState);
    /// The server reported its state without answering a reported
    /// request (end of startup).
    fn transaction_reported(&mut self, state: TransactionState);
    /// The connection's backend process id.
    fn backend_pid(&mut self, pid: i32);
    /// The oldest reported request failed with this SQLSTATE (its "ready"
    /// follows).
    fn call_failed(&mut self, _sqlstate: [u8; 5]) {}
    /// The request just sent prepares a statement and runs nothing (the
    /// first round trip of tokio-postgres's `query(&str, ..)`).
    fn prepare_only(&mut self) {}
}

/// How a batch ended for the observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Keep following.
    Continue,
    /// The server accepted encryption: what follows on this stream is
    /// ciphertext (the observer above the TLS layer takes over).
    Encrypted,
    /// The observer cannot follow the connection any further.
    Lost(&'static str),
}

/// Settings shared by every connection of one pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct WireSettings {
    /// Statement texts that are the pool's own.
    pub(crate) own_queries: OwnQueries,
    /// A connection outside the pool (the server view's), whose failures
    /// its user reports: no `Connection error` warning of its own.
    pub(crate) quiet: bool,
    /// Where the pool's connections record their create time and calls;
    /// set when the pool is built, which is before any connection opens
    /// (unset: a connection outside the pool, which records nothing).
    pub(crate) metrics: Arc<OnceLock<ConnectionMetrics>>,
}

/// Who answers a pending request's "ready".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// A reported request.
    Reported,
    /// One of the pool's own: neither it nor its answer is reported.
    Unreported,
    /// The end of the connection's startup.
    Startup,
}

/// What a pending request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestKind {
    Startup,
    Query,
    Sync,
    FunctionCall,
}

/// A request sent and not answered yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    answer: Answer,
    kind: RequestKind,
    /// Copy ends (`CopyDone`/`CopyFail`) the frontend had sent before
    /// this request's last message.
    copy_ends_before: u32,
    /// Copy ends sent before the message of this request that could have
    /// started a `COPY` (the `Query`, the group's last `Execute`).
    copy_trigger: Option<u32>,
}

/// The extended-protocol messages since the last `Sync`.
#[derive(Debug, Default)]
struct Group {
    /// The statement bound (else parsed) since the last `Sync`.
    statement: Option<Arc<str>>,
    /// That statement is one of the pool's own.
    own: bool,
    bound: bool,
    /// Copy ends sent before the group's last `Execute`.
    copy_trigger: Option<u32>,
    /// A `Parse`, `Bind`, `Describe` or `Execute` was sent: the user's work.
    work: bool,
    /// A `Close` was sent.
    closed: bool,
    /// An `Execute` was sent: not just a statement being prepared.
    executed: bool,
}

/// The session state between the two directions.
#[derive(Debug)]
struct Session {
    settings: Arc<WireSettings>,
    /// A query text to treat as the pool's own once (tokio-postgres's
    /// `target_session_attrs` check).
    own_once: Option<&'static str>,
    prepared: PreparedStatements,
    pending: VecDeque<Pending>,
    group: Group,
    /// `CopyDone`/`CopyFail` messages sent so far (wrapping; compared for
    /// equality only).
    copy_ends: u32,
    /// The server is in `COPY FROM STDIN`: `Sync`s it reads are ignored.
    copy_open: bool,
    /// After a `COPY FROM STDIN` started by an extended-protocol request,
    /// the answer the next `Sync` inherits (the copy's request stays in
    /// flight until then).
    inherit: Option<Answer>,
    /// The last simple query's text as kept, reused when repeated.
    last_query: Option<Arc<str>>,
}

/// Both directions of one connection, from its first byte.
#[derive(Debug)]
pub(crate) struct Protocol {
    frontend: Framer,
    backend: Framer,
    session: Session,
}

impl Protocol {
    /// A connection about to start up. `own_once` is a query text the
    /// connection's setup sends once and that is not the user's.
    pub(crate) fn new(settings: &Arc<WireSettings>, own_once: Option<&'static str>) -> Self {
        let keep = KeepRules::new(
            STATEMENT_TEXT_LIMIT,
            settings
                .own_queries
                .longest()
                .max(own_once.map_or(0, str::len)),
        );
        Self {
            frontend: Framer::frontend(keep),
            backend: Framer::backend(),
            session: Session {
                settings: settings.clone(),
                own_once,
                prepared: PreparedStatements::default(),
                pending: VecDeque::new(),
                group: Group::default(),
                copy_ends: 0,
                copy_open: false,
                inherit: None,
                last_query: None,
            },
        }
    }

    /// Bytes the client wrote (as accepted by the stream below).
    pub(crate) fn written(&mut self, mut bytes: &[u8], events: &mut impl Events) -> Outcome {
        while !bytes.is_empty() {
            let (used, frame) = match self.frontend.next(bytes) {
                Ok(next) => next,
                Err(Desync(reason)) => return Outcome::Lost(reason),
            };
            bytes = &bytes[used..];
            let Some(frame) = frame else { continue };
            match self.session.frontend(&frame, events) {
                Ok(Step::Continue) => {}
                Ok(Step::ExpectAnswer) => {
                    if let Err(Desync(reason)) = self.backend.expect_answer() {
                        return Outcome::Lost(reason);
                    }
                }
                Ok(Step::Encrypted) => return Outcome::Encrypted,
                Err(Desync(reason)) => return Outcome::Lost(reason),
            }
        }
        Outcome::Continue
    }

    /// Bytes the client read from the server.
    pub(crate) fn read(&mut self, mut bytes: &[u8], events: &mut impl Events) -> Outcome {
        while !bytes.is_empty() {
            let (used, frame) = match self.backend.next(bytes) {
                Ok(next) => next,
                Err(Desync(reason)) => return Outcome::Lost(reason),
            };
            bytes = &bytes[used..];
            let Some(frame) = frame else { continue };
            match self.session.backend(&frame, events) {
                Ok(Step::Continue) => {}
                Ok(Step::Encrypted) => return Outcome::Encrypted,
                Ok(Step::ExpectAnswer) => return Outcome::Lost("unexpected answer request"),
                Err(Desync(reason)) => return Outcome::Lost(reason),
            }
        }
        Outcome::Continue
    }
}

/// What a message means for the framers.
enum Step {
    Continue,
    /// An encryption request went out: the backend answers with one byte.
    ExpectAnswer,
    Encrypted,
}

/// The SQLSTATE (`C` field) of an `ErrorResponse`'s kept prefix: five
/// digits or capital letters, else `None`.
fn sqlstate(mut fields: &[u8]) -> Option<[u8; 5]> {
    while let Some((&field, rest)) = fields.split_first() {
        if field == 0 {
            return None; // the end of the fields
        }
        let (value, rest) = c_string(rest)?;
        if field == b'C' {
            let code: [u8; 5] = value.try_into().ok()?;
            let valid = code
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
            return valid.then_some(code);
        }
        fields = rest;
    }
    None
}

/// The bytes up to the first NUL, and the rest after it.
fn c_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

impl Session {
    fn frontend(&mut self, frame: &Frame<'_>, events: &mut impl Events) -> Result<Step, Desync> {
        let tag = match frame.kind {
            Kind::Startup(framing::SSL_REQUEST_CODE | framing::GSSENC_REQUEST_CODE) => {
                return Ok(Step::ExpectAnswer)
            }
            Kind::Startup(framing::CANCEL_REQUEST_CODE) => return Ok(Step::Continue),
            Kind::Startup(_) => {
                self.push(Pending {
                    answer: Answer::Startup,
                    kind: RequestKind::Startup,
                    copy_ends_before: self.copy_ends,
                    copy_trigger: None,
                })?;
                return Ok(Step::Continue);
            }
            Kind::Typed(tag) => tag,
            Kind::Answer(_) => return Err(Desync("answer byte in the frontend stream")),
        };
        if self.copy_open && !matches!(tag, b'd' | b'c' | b'f' | b'S' | b'H' | b'X') {
            // The server would abort the copy with an error; what it then
            // answers depends on timing the observer cannot see.
            return Err(Desync("a request was sent during COPY FROM STDIN"));
        }
        if matches!(tag, b'P' | b'B' | b'D' | b'E') {
            self.group.work = true;
        }
        if tag == b'E' {
            self.group.executed = true;
        }
        match tag {
            b'Q' => self.query(frame, events)?,
            b'P' => self.parse(frame)?,
            b'B' => self.bind(frame)?,
            b'C' => {
                self.group.closed = true;
                self.close(frame)?;
            }
            b'E' => self.group.copy_trigger = Some(self.copy_ends),
            b'S' => self.sync(events)?,
            b'F' => self.function_call(events)?,
            b'c' | b'f' => {
                self.copy_ends = self.copy_ends.wrapping_add(1);
                self.copy_open = false;
            }
            // Describe, Flush, CopyData, Terminate; password, SASL and
            // GSSAPI messages (skipped unread).
            _ => {}
        }
        Ok(Step::Continue)
    }

    fn push(&mut self, pending: Pending) -> Result<(), Desync> {
        if self.pending.len() >= MAX_PENDING {
            return Err(Desync("too many requests unanswered"));
        }
        self.pending.push_back(pending);
        Ok(())
    }

    /// A request other than a `Sync` while the next `Sync` was to inherit
    /// a copy's answer: the protocol went somewhere unusual; stop holding
    /// that request in flight.
    fn drop_inherit(&mut self, events: &mut impl Events) {
        if self.inherit.take() == Some(Answer::Reported) {
            events.request_withdrawn();
        }
    }

    fn query(&mut self, frame: &Frame<'_>, events: &mut impl Events) -> Result<(), Desync> {
        let complete = frame.complete();
        let text = if complete {
            match frame.prefix.split_last() {
                Some((0, text)) => text,
                _ => return Err(Desync("Query text without its terminator")),
            }
        } else {
            frame.prefix
        };
        let once = complete && self.own_once.is_some_and(|once| once.as_bytes() == text);
        if once {
            self.own_once = None;
        }
        let own = once || self.settings.own_queries.contains(text, complete);
        self.drop_inherit(events);
        self.push(Pending {
            answer: if own {
                Answer::Unreported
            } else {
                Answer::Reported
            },
            kind: RequestKind::Query,
            copy_ends_before: self.copy_ends,
            copy_trigger: Some(self.copy_ends),
        })?;
        if !own {
            let kept = match &self.last_query {
                Some(last) if statements::same_text(last, text, complete) => last.clone(),
                _ => statements::keep_text(text, complete),
            };
            events.request_sent();
            events.statement(&kept);
            self.last_query = Some(kept);
        }
        Ok(())
    }

    fn parse(&mut self, frame: &Frame<'_>) -> Result<(), Desync> {
        let complete = frame.complete();
        let Some((name, rest)) = c_string(frame.prefix) else {
            if complete {
                return Err(Desync("Parse without a statement name"));
            }
            // A name beyond NAME_LIMIT: the statement cannot be told apart.
            let unknown = self.prepared.unknown();
            self.set_parsed(unknown, false);
            return Ok(());
        };
        let (text, text_complete) = match c_string(rest) {
            Some((text, _)) => (text, true),
            None if complete => return Err(Desync("Parse text without its terminator")),
            None => (rest, false),
        };
        let own = self.settings.own_queries.contains(text, text_complete);
        let kept = self.prepared.parse(name, text, text_complete, own);
        self.set_parsed(kept, own);
        Ok(())
    }

    fn set_parsed(&mut self, text: Arc<str>, own: bool) {
        if !self.group.bound {
            self.group.statement = Some(text);
            self.group.own = own;
        }
    }

    fn bind(&mut self, frame: &Frame<'_>) -> Result<(), Desync> {
        let statement = c_string(frame.prefix).and_then(|(_portal, rest)| c_string(rest));
        let (text, own) = match statement {
            Some((name, _)) => match self.prepared.get(name) {
                Some(prepared) => (prepared.text.clone(), prepared.own),
                None => (self.prepared.unknown(), false),
            },
            None if frame.complete() => return Err(Desync("Bind without its names")),
            // Names beyond NAME_LIMIT.
            None => (self.prepared.unknown(), false),
        };
        self.group.statement = Some(text);
        self.group.own = own;
        self.group.bound = true;
        Ok(())
    }

    fn close(&mut self, frame: &Frame<'_>) -> Result<(), Desync> {
        match frame.prefix.split_first() {
            Some((b'S', rest)) => {
                if let Some((name, _)) = c_string(rest) {
                    if name.len() <= NAME_LIMIT {
                        self.prepared.forget(name);
                    }
                } else if frame.complete() {
                    return Err(Desync("Close without its name"));
                }
                Ok(())
            }
            Some((b'P', _)) => Ok(()),
            _ => Err(Desync("Close of neither a statement nor a portal")),
        }
    }

    fn sync(&mut self, events: &mut impl Events) -> Result<(), Desync> {
        if self.copy_open {
            // Ignored by the server during COPY FROM STDIN.
            return Ok(());
        }
        let group = std::mem::take(&mut self.group);
        if let Some(answer) = self.inherit.take() {
            // The copy's request, in flight since the copy began, is
            // answered after this Sync.
            return self.push(Pending {
                answer,
                kind: RequestKind::Sync,
                copy_ends_before: self.copy_ends,
                copy_trigger: group.copy_trigger,
            });
        }
        // Only `Close`s: tokio-postgres closing a statement the user's code
        // dropped, sent as the call returns. Not the user's call: reported,
        // it would be "in flight" at every return right after a query.
        let housekeeping = group.closed && !group.work;
        let answer = if group.own || housekeeping {
            Answer::Unreported
        } else {
            Answer::Reported
        };
        self.push(Pending {
            answer,
            kind: RequestKind::Sync,
            copy_ends_before: self.copy_ends,
            copy_trigger: group.copy_trigger,
        })?;
        if answer == Answer::Reported {
            events.request_sent();
            if let Some(statement) = &group.statement {
                events.statement(statement);
            }
            if !group.executed {
                events.prepare_only();
            }
        }
        Ok(())
    }

    fn function_call(&mut self, events: &mut impl Events) -> Result<(), Desync> {
        self.drop_inherit(events);
        self.push(Pending {
            answer: Answer::Reported,
            kind: RequestKind::FunctionCall,
            copy_ends_before: self.copy_ends,
            copy_trigger: None,
        })?;
        events.request_sent();
        Ok(())
    }

    fn backend(&mut self, frame: &Frame<'_>, events: &mut impl Events) -> Result<Step, Desync> {
        let tag = match frame.kind {
            // TLS: the observer above the TLS layer takes over.
            Kind::Answer(b'S') => return Ok(Step::Encrypted),
            Kind::Answer(b'N') => return Ok(Step::Continue),
            // GSSAPI encryption (tokio-postgres never asks for it).
            Kind::Answer(b'G') => return Err(Desync("GSSAPI encryption is not followed")),
            Kind::Answer(_) => return Err(Desync("unknown answer to an encryption request")),
            Kind::Typed(tag) => tag,
            Kind::Startup(_) => return Err(Desync("startup message in the backend stream")),
        };
        match tag {
            b'Z' => {
                let state = match frame.prefix {
                    [b'I'] => TransactionState::Idle,
                    [b'T'] => TransactionState::Open,
                    [b'E'] => TransactionState::Failed,
                    _ => return Err(Desync("unknown transaction status")),
                };
                match self.pending.pop_front().map(|p| p.answer) {
                    Some(Answer::Reported) => events.ready(state),
                    Some(Answer::Unreported) => {}
                    // The end of startup; or an answer to a request the
                    // observer took for ignored (a Sync during a copy the
                    // server had already left): the state is still news.
                    Some(Answer::Startup) | None => events.transaction_reported(state),
                }
                if self.pending.is_empty() && self.pending.capacity() > 64 {
                    // A burst of pipelined requests is over.
                    self.pending.shrink_to(64);
                }
            }
            b'K' => {
                if let [a, b, c, d] = *frame.prefix {
                    events.backend_pid(i32::from_be_bytes([a, b, c, d]));
                }
            }
            b'G' => self.copy_in_started(events)?,
            b'W' => return Err(Desync("CopyBoth (replication) is not followed")),
            b'E' => {
                // An error ends COPY FROM STDIN on the server's side: the
                // next Sync is read again.
                self.copy_open = false;
                let reported = self
                    .pending
                    .front()
                    .is_some_and(|p| p.answer == Answer::Reported);
                if let (true, Some(code)) = (reported, sqlstate(frame.prefix)) {
                    events.call_failed(code);
                }
            }
            _ => {}
        }
        Ok(Step::Continue)
    }

    /// `CopyInResponse`: the server runs `COPY FROM STDIN` for the oldest
    /// pending request (or for the group still being sent) and ignores
    /// every `Sync` until the frontend's next `CopyDone`/`CopyFail`.
    fn copy_in_started(&mut self, events: &mut impl Events) -> Result<(), Desync> {
        let (by_query, trigger) = match self.pending.front() {
            Some(front) => match front.kind {
                RequestKind::Query => (true, front.copy_trigger),
                RequestKind::Sync => (false, front.copy_trigger),
                _ => return Err(Desync("COPY started by neither a query nor an execute")),
            },
            None => (false, self.group.copy_trigger),
        };
        let trigger = trigger.ok_or(Desync("COPY started without an execute"))?;
        // The Syncs sent after the COPY began and before the copy ended.
        let start = usize::from(by_query);
        let mut end = start;
        while self
            .pending
            .get(end)
            .is_some_and(|p| p.kind == RequestKind::Sync && p.copy_ends_before == trigger)
        {
            end += 1;
        }
        let answered_later = by_query || end < self.pending.len();
        let mut inherit = None;
        if !answered_later && start == end {
            // No Sync sent yet: the copy's request starts now.
            let answer = if self.group.own {
                Answer::Unreported
            } else {
                Answer::Reported
            };
            if answer == Answer::Reported {
                events.request_sent();
                if let Some(statement) = &self.group.statement {
                    events.statement(statement);
                }
            }
            self.group = Group::default();
            inherit = Some(answer);
        }
        for (i, ignored) in self.pending.drain(start..end).enumerate() {
            if i == 0 && !answered_later {
                // This request stays in flight until the Sync after the copy.
                inherit = Some(ignored.answer);
            } else if ignored.answer == Answer::Reported {
                events.request_withdrawn();
            }
        }
        self.inherit = inherit;
        self.copy_open = self.copy_ends == trigger;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
