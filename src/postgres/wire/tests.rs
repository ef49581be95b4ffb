//! Conversations fed to [`Protocol`] split at every byte boundary: the
//! events must not depend on how the bytes were chunked.

use super::framing::{CANCEL_REQUEST_CODE, SSL_REQUEST_CODE};
use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Sent,
    Statement(String),
    Withdrawn,
    Ready(TransactionState),
    Reported(TransactionState),
    Pid(i32),
}

#[derive(Default)]
struct Recorder {
    events: Vec<Event>,
    texts: Vec<Arc<str>>,
}

impl Events for Recorder {
    fn request_sent(&mut self) {
        self.events.push(Event::Sent);
    }
    fn statement(&mut self, text: &Arc<str>) {
        self.events.push(Event::Statement(text.to_string()));
        self.texts.push(text.clone());
    }
    fn request_withdrawn(&mut self) {
        self.events.push(Event::Withdrawn);
    }
    fn ready(&mut self, state: TransactionState) {
        self.events.push(Event::Ready(state));
    }
    fn transaction_reported(&mut self, state: TransactionState) {
        self.events.push(Event::Reported(state));
    }
    fn backend_pid(&mut self, pid: i32) {
        self.events.push(Event::Pid(pid));
    }
}

impl Recorder {
    /// Requests in flight after these events.
    fn in_flight(&self) -> i64 {
        self.events.iter().fold(0, |n, e| match e {
            Event::Sent => n + 1,
            Event::Withdrawn | Event::Ready(_) => n - 1,
            _ => n,
        })
    }
}

/// One direction's bytes.
#[derive(Clone, Debug)]
enum Turn {
    Client(Vec<u8>),
    Server(Vec<u8>),
}
use Turn::{Client, Server};

fn typed(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn query(text: &str) -> Vec<u8> {
    typed(b'Q', &cstr(text))
}

fn parse(name: &str, text: &str) -> Vec<u8> {
    typed(b'P', &cat(&[cstr(name), cstr(text), vec![0, 0]]))
}

/// Bind with one parameter whose value would be a secret.
fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let secret = b"hunter2\0\0\0\0";
    let mut payload = cat(&[cstr(portal), cstr(statement), vec![0, 0, 0, 1]]);
    payload.extend_from_slice(&(secret.len() as u32).to_be_bytes());
    payload.extend_from_slice(secret);
    payload.extend_from_slice(&[0, 0]);
    typed(b'B', &payload)
}

fn execute() -> Vec<u8> {
    typed(b'E', &[0, 0, 0, 0, 0])
}

fn describe(name: &str) -> Vec<u8> {
    typed(b'D', &cat(&[vec![b'S'], cstr(name)]))
}

fn close(name: &str) -> Vec<u8> {
    typed(b'C', &cat(&[vec![b'S'], cstr(name)]))
}

fn sync() -> Vec<u8> {
    typed(b'S', b"")
}

fn ready(status: u8) -> Vec<u8> {
    typed(b'Z', &[status])
}

fn startup() -> Vec<u8> {
    let params = cat(&[
        cstr("user"),
        cstr("app"),
        cstr("database"),
        cstr("app"),
        vec![0],
    ]);
    let mut m = (8 + params.len() as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&196_608u32.to_be_bytes());
    m.extend_from_slice(&params);
    m
}

fn ssl_request() -> Vec<u8> {
    let mut m = 8u32.to_be_bytes().to_vec();
    m.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    m
}

/// The server's side of a startup: trust authentication, pid 4242.
fn server_startup() -> Vec<u8> {
    cat(&[
        typed(b'R', &[0, 0, 0, 0]),
        typed(b'S', &cat(&[cstr("server_version"), cstr("15.0")])),
        typed(b'K', &[0, 0, 0x10, 0x92, 9, 9, 9, 9]),
        ready(b'I'),
    ])
}

fn results() -> Vec<u8> {
    cat(&[
        typed(b'1', b""),
        typed(b'2', b""),
        typed(b'D', &[0, 1, 0, 0, 0, 1, b'1']),
        typed(b'C', &cstr("SELECT 1")),
    ])
}

fn run_chunked(
    settings: &Arc<WireSettings>,
    steps: &[Turn],
    cut: impl Fn(usize) -> Vec<usize>,
) -> (Recorder, Outcome) {
    let mut protocol = Protocol::new(settings, None);
    let mut recorder = Recorder::default();
    let mut outcome = Outcome::Continue;
    for (i, step) in steps.iter().enumerate() {
        let (bytes, client) = match step {
            Client(b) => (b, true),
            Server(b) => (b, false),
        };
        let mut start = 0;
        let cuts = cut(i);
        for end in cuts
            .iter()
            .copied()
            .filter(|&c| c <= bytes.len())
            .chain(std::iter::once(bytes.len()))
        {
            let chunk = &bytes[start..end.max(start)];
            start = end.max(start);
            outcome = if client {
                protocol.written(chunk, &mut recorder)
            } else {
                protocol.read(chunk, &mut recorder)
            };
            if outcome != Outcome::Continue {
                return (recorder, outcome);
            }
        }
    }
    (recorder, outcome)
}

/// Runs the conversation whole, then with each step cut at every
/// position, then byte by byte; all must give the same events.
fn conversation(settings: &Arc<WireSettings>, steps: &[Turn]) -> (Recorder, Outcome) {
    let (whole, outcome) = run_chunked(settings, steps, |_| Vec::new());
    for (i, step) in steps.iter().enumerate() {
        let len = match step {
            Client(b) | Server(b) => b.len(),
        };
        for cut in 0..=len {
            let (split, split_outcome) =
                run_chunked(
                    settings,
                    steps,
                    |j| if j == i { vec![cut] } else { Vec::new() },
                );
            assert_eq!(split.events, whole.events, "step {i} cut at {cut}");
            assert_eq!(split_outcome, outcome, "step {i} cut at {cut}");
        }
    }
    let (bytewise, bytewise_outcome) = run_chunked(settings, steps, |_| (1..100_000).collect());
    assert_eq!(bytewise.events, whole.events, "byte by byte");
    assert_eq!(bytewise_outcome, outcome, "byte by byte");
    (whole, outcome)
}

fn connected() -> Vec<Turn> {
    vec![
        Client(ssl_request()),
        Server(b"N".to_vec()),
        Client(startup()),
        Server(server_startup()),
    ]
}

#[test]
fn startup_reports_pid_and_idle_state_but_no_request() {
    let (events, outcome) = conversation(&Arc::default(), &connected());
    assert_eq!(outcome, Outcome::Continue);
    assert_eq!(
        events.events,
        vec![Event::Pid(4242), Event::Reported(TransactionState::Idle)]
    );
}

#[test]
fn ssl_accepted_hands_over_to_the_tls_layer() {
    let steps = vec![Client(ssl_request()), Server(b"S\x16\x03".to_vec())];
    let (events, outcome) = conversation(&Arc::default(), &steps);
    assert_eq!(outcome, Outcome::Encrypted);
    assert!(events.events.is_empty());
}

#[test]
fn simple_queries_and_transaction_states() {
    let mut steps = connected();
    steps.extend([
        Client(query("BEGIN")),
        Server(cat(&[typed(b'C', &cstr("BEGIN")), ready(b'T')])),
        Client(query("SELECT 1/0")),
        Server(cat(&[typed(b'E', &cstr("SERROR")), ready(b'E')])),
        Client(query("ROLLBACK")),
        Server(cat(&[typed(b'C', &cstr("ROLLBACK")), ready(b'I')])),
    ]);
    let (events, _) = conversation(&Arc::default(), &steps);
    assert_eq!(
        events.events[2..],
        [
            Event::Sent,
            Event::Statement("BEGIN".into()),
            Event::Ready(TransactionState::Open),
            Event::Sent,
            Event::Statement("SELECT 1/0".into()),
            Event::Ready(TransactionState::Failed),
            Event::Sent,
            Event::Statement("ROLLBACK".into()),
            Event::Ready(TransactionState::Idle),
        ]
    );
}

/// A dropped `Statement` or `Portal` makes tokio-postgres queue `Close` +
/// `Sync` and never wait for the answer: not a call (a hold ending before
/// the answer did not abandon anything), and the transaction state it
/// answers is the one already known. A `Close` in a group that also runs
/// something is that call's.
#[test]
fn closes_alone_are_not_calls() {
    let portal_close = typed(b'C', &cat(&[vec![b'P'], cstr("p1")]));
    let mut steps = connected();
    steps.extend([
        Client(query("BEGIN")),
        Server(cat(&[typed(b'C', &cstr("BEGIN")), ready(b'T')])),
        Client(cat(&[close("s0"), sync()])),
        Server(cat(&[typed(b'3', b""), ready(b'T')])),
        Client(cat(&[portal_close.clone(), close("s1"), sync()])),
        Server(cat(&[typed(b'3', b""), typed(b'3', b""), ready(b'T')])),
        Client(cat(&[
            close("s2"),
            parse("s3", "SELECT 3"),
            describe("s3"),
            sync(),
        ])),
        Server(cat(&[
            typed(b'3', b""),
            typed(b'1', b""),
            typed(b'n', b""),
            ready(b'T'),
        ])),
        Client(query("COMMIT")),
        Server(cat(&[typed(b'C', &cstr("COMMIT")), ready(b'I')])),
    ]);
    let (events, _) = conversation(&Arc::default(), &steps);
    let statement = |s: &str| Event::Statement(s.into());
    assert_eq!(
        events.events[2..],
        [
            Event::Sent,
            statement("BEGIN"),
            Event::Ready(TransactionState::Open),
            Event::Sent,
            statement("SELECT 3"),
            Event::Ready(TransactionState::Open),
            Event::Sent,
            statement("COMMIT"),
            Event::Ready(TransactionState::Idle),
        ]
    );
    assert_eq!(events.in_flight(), 0);

    // Sent, not answered yet: nothing in flight.
    let mut steps = connected();
    steps.push(Client(cat(&[close("s0"), sync()])));
    let (events, _) = conversation(&Arc::default(), &steps);
    assert_eq!(events.in_flight(), 0, "{:?}", events.events);
}

#[test]
fn prepared_statements_are_known_by_name_and_reuse_their_text() {
    let mut steps = connected();
    steps.extend([
        // prepare: Parse, Describe, Sync.
        Client(cat(&[
            parse("s0", "SELECT $1::int4"),
            describe("s0"),
            sync(),
        ])),
        Server(cat(&[typed(b'1', b""), typed(b'n', b""), ready(b'I')])),
        // run it twice.
        Client(cat(&[bind("", "s0"), execute(), sync()])),
        Server(cat(&[results(), ready(b'I')])),
        Client(cat(&[bind("", "s0"), execute(), sync()])),
        Server(cat(&[results(), ready(b'I')])),
        // unnamed, as query_typed sends it.
        Client(cat(&[
            parse("", "SELECT 2"),
            bind("", ""),
            execute(),
            sync(),
        ])),
        Server(cat(&[results(), ready(b'I')])),
        // dropped statement: Close + Sync, sent as the call returns;
        // tokio-postgres's housekeeping, not a call (never in flight).
        Client(cat(&[close("s0"), sync()])),
        Server(cat(&[typed(b'3', b""), ready(b'I')])),
        // a closed statement is unknown.
        Client(cat(&[bind("", "s0"), execute(), sync()])),
        Server(cat(&[typed(b'E', &cstr("SERROR")), ready(b'I')])),
    ]);
    let (events, _) = conversation(&Arc::default(), &steps);
    let statement = |s: &str| Event::Statement(s.into());
    assert_eq!(
        events.events[2..],
        [
            Event::Sent,
            statement("SELECT $1::int4"),
            Event::Ready(TransactionState::Idle),
            Event::Sent,
            statement("SELECT $1::int4"),
            Event::Ready(TransactionState::Idle),
            Event::Sent,
            statement("SELECT $1::int4"),
            Event::Ready(TransactionState::Idle),
            Event::Sent,
            statement("SELECT 2"),
            Event::Ready(TransactionState::Idle),
            Event::Sent,
            statement(statements::UNKNOWN_STATEMENT),
            Event::Ready(TransactionState::Idle),
        ]
    );
    // Running a prepared statement reuses the text parsed for it.
    assert!(Arc::ptr_eq(&events.texts[0], &events.texts[1]));
    assert!(Arc::ptr_eq(&events.texts[1], &events.texts[2]));
    // Bind's parameter values are never kept.
    assert!(events
        .events
        .iter()
        .all(|e| !format!("{e:?}").contains("hunter2")));
}

#[test]
fn own_queries_and_their_answers_are_not_reported_even_pipelined() {
    let settings = Arc::new(WireSettings {
        own_queries: OwnQueries::new(["DISCARD ALL"]),
        quiet: false,
        metrics: Arc::default(),
    });
    let mut steps = connected();
    steps.extend([
        Client(cat(&[
            query("SELECT 1"),
            query(""),
            query("DISCARD ALL"),
            query("SELECT 2"),
        ])),
        Server(cat(&[
            typed(b'C', &cstr("SELECT 1")),
            ready(b'T'),
            typed(b'I', b""),
            ready(b'E'),
            typed(b'C', &cstr("DISCARD ALL")),
            ready(b'E'),
            typed(b'C', &cstr("SELECT 1")),
            ready(b'I'),
        ])),
    ]);
    let (events, _) = conversation(&settings, &steps);
    assert_eq!(
        events.events[2..],
        [
            Event::Sent,
            Event::Statement("SELECT 1".into()),
            Event::Sent,
            Event::Statement("SELECT 2".into()),
            Event::Ready(TransactionState::Open),
            Event::Ready(TransactionState::Idle),
        ]
    );
}

#[test]
fn own_once_is_skipped_once() {
    let mut protocol = Protocol::new(&Arc::default(), Some("SHOW transaction_read_only"));
    let mut recorder = Recorder::default();
    for step in connected() {
        match step {
            Client(b) => assert_eq!(protocol.written(&b, &mut recorder), Outcome::Continue),
            Server(b) => assert_eq!(protocol.read(&b, &mut recorder), Outcome::Continue),
        }
    }
    let two = cat(&[
        query("SHOW transaction_read_only"),
        query("SHOW transaction_read_only"),
    ]);
    protocol.written(&two, &mut recorder);
    protocol.read(&cat(&[ready(b'I'), ready(b'I')]), &mut recorder);
    assert_eq!(
        recorder.events[2..],
        [
            Event::Sent,
            Event::Statement("SHOW transaction_read_only".into()),
            Event::Ready(TransactionState::Idle),
        ]
    );
}

/// tokio-postgres's `copy_in`: Bind, Execute, Sync; then the data,
/// CopyDone, Sync. The first Sync is ignored by the server.
#[test]
fn copy_in_as_tokio_postgres_sends_it_keeps_one_request_in_flight() {
    let mut steps = connected();
    steps.extend([
        Client(cat(&[
            parse("s1", "COPY t FROM STDIN"),
            describe("s1"),
            sync(),
        ])),
        Server(cat(&[typed(b'1', b""), typed(b'n', b""), ready(b'I')])),
        Client(cat(&[bind("", "s1"), execute(), sync()])),
        Server(cat(&[typed(b'2', b""), typed(b'G', &[0, 0, 0])])),
        Client(typed(b'd', b"1\n2\n")),
        Client(typed(b'd', b"3\n")),
        Client(cat(&[typed(b'c', b""), sync()])),
        Server(cat(&[typed(b'C', &cstr("COPY 3")), ready(b'I')])),
        Client(query("SELECT 1")),
        Server(cat(&[typed(b'C', &cstr("SELECT 1")), ready(b'I')])),
    ]);
    let (events, outcome) = conversation(&Arc::default(), &steps);
    assert_eq!(outcome, Outcome::Continue);
    let statement = |s: &str| Event::Statement(s.into());
    assert_eq!(
        events.events[2..],
        [
            Event::Sent,
            statement("COPY t FROM STDIN"),
            Event::Ready(TransactionState::Idle),
            Event::Sent,
            statement("COPY t FROM STDIN"),
            Event::Ready(TransactionState::Idle),
            Event::Sent,
            statement("SELECT 1"),
            Event::Ready(TransactionState::Idle),
        ]
    );
    assert_eq!(events.in_flight(), 0);
}

#[test]
fn copy_in_variants_end_with_nothing_in_flight() {
    // libpq's order: no Sync before the data.
    let mut libpq = connected();
    libpq.extend([
        Client(cat(&[
            parse("", "COPY t FROM STDIN"),
            bind("", ""),
            execute(),
            typed(b'H', b""),
        ])),
        Server(cat(&[
            typed(b'1', b""),
            typed(b'2', b""),
            typed(b'G', &[0, 0, 0]),
        ])),
        Client(cat(&[typed(b'd', b"1\n"), typed(b'c', b""), sync()])),
        Server(cat(&[typed(b'C', &cstr("COPY 1")), ready(b'I')])),
    ]);
    // Everything pipelined before the server answers.
    let mut pipelined = connected();
    pipelined.extend([
        Client(cat(&[
            bind("", "s1"),
            execute(),
            sync(),
            typed(b'd', b"1\n"),
            typed(b'c', b""),
            sync(),
        ])),
        Server(cat(&[
            typed(b'2', b""),
            typed(b'G', &[0, 0, 0]),
            typed(b'C', &cstr("COPY 1")),
            ready(b'I'),
        ])),
    ]);
    // Simple-query COPY.
    let mut simple = connected();
    simple.extend([
        Client(query("COPY t FROM STDIN")),
        Server(typed(b'G', &[0, 0, 0])),
        Client(cat(&[typed(b'd', b"1\n"), typed(b'c', b"")])),
        Server(cat(&[typed(b'C', &cstr("COPY 1")), ready(b'I')])),
    ]);
    // The server fails the copy while data is still coming.
    let mut failed = connected();
    failed.extend([
        Client(cat(&[bind("", "s1"), execute(), sync()])),
        Server(cat(&[typed(b'2', b""), typed(b'G', &[0, 0, 0])])),
        Client(typed(b'd', b"bad\n")),
        Server(typed(b'E', &cstr("SERROR"))),
        Client(typed(b'd', b"more\n")),
        Client(cat(&[typed(b'c', b""), sync()])),
        Server(ready(b'I')),
    ]);
    for (name, steps) in [
        ("libpq", libpq),
        ("pipelined", pipelined),
        ("simple", simple),
        ("failed", failed),
    ] {
        let (events, outcome) = conversation(&Arc::default(), &steps);
        assert_eq!(outcome, Outcome::Continue, "{name}");
        assert_eq!(events.in_flight(), 0, "{name}: {:?}", events.events);
        assert_eq!(
            events.events.last(),
            Some(&Event::Ready(TransactionState::Idle)),
            "{name}"
        );
    }
}

#[test]
fn impossible_messages_stop_observation() {
    let cases: Vec<(&str, Vec<Turn>)> = vec![
        (
            "unknown frontend type",
            vec![Client(startup()), Client(typed(b'?', b""))],
        ),
        (
            "unknown status",
            vec![Client(startup()), Server(typed(b'Z', b"X"))],
        ),
        (
            "query without terminator",
            vec![Client(startup()), Client(typed(b'Q', b"SELECT"))],
        ),
        (
            "garbage instead of startup",
            vec![Client(b"GET / HTTP/1.1\r\n".to_vec())],
        ),
        ("request during copy", {
            let mut steps = connected();
            steps.extend([
                Client(cat(&[bind("", "s"), execute(), sync()])),
                Server(typed(b'G', &[0, 0, 0])),
                Client(query("SELECT 1")),
            ]);
            steps
        }),
        (
            "replication",
            vec![
                Client(startup()),
                Client(query("START_REPLICATION")),
                Server(typed(b'W', &[0, 0, 0])),
            ],
        ),
    ];
    for (name, steps) in cases {
        let (_, outcome) = conversation(&Arc::default(), &steps);
        assert!(matches!(outcome, Outcome::Lost(_)), "{name}: {outcome:?}");
    }
}

#[test]
fn cancel_and_password_messages_are_skipped_unread() {
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    cancel.extend_from_slice(&[0, 0, 0x10, 0x92, 1, 2, 3, 4]);
    let (events, outcome) = conversation(&Arc::default(), &[Client(cancel)]);
    assert_eq!(outcome, Outcome::Continue);
    assert!(events.events.is_empty());

    let steps = vec![
        Client(startup()),
        Server(typed(b'R', &[0, 0, 0, 3])),
        Client(typed(b'p', &cstr("s3cret-password"))),
        Server(server_startup()),
    ];
    let (events, outcome) = conversation(&Arc::default(), &steps);
    assert_eq!(outcome, Outcome::Continue);
    assert_eq!(
        events.events,
        vec![Event::Pid(4242), Event::Reported(TransactionState::Idle)]
    );
}

#[test]
fn long_texts_are_bounded() {
    let long = format!("SELECT '{}'", "x".repeat(10_000));
    let mut steps = connected();
    steps.push(Client(query(&long)));
    let (events, _) = run_chunked(&Arc::default(), &steps, |_| vec![3, 700, 5000]);
    let Event::Statement(text) = &events.events[3] else {
        panic!("{:?}", events.events)
    };
    assert!(text.len() <= STATEMENT_TEXT_LIMIT + 3);
    assert!(text.ends_with(statements::CUT_MARK));
    assert!(long.starts_with(text.trim_end_matches(statements::CUT_MARK)));
}

#[test]
fn too_many_pending_requests_stop_observation() {
    let mut protocol = Protocol::new(&Arc::default(), None);
    let mut recorder = Recorder::default();
    protocol.written(&startup(), &mut recorder);
    let many = sync().repeat(MAX_PENDING);
    assert!(matches!(
        protocol.written(&many, &mut recorder),
        Outcome::Lost("too many requests unanswered")
    ));
}

#[test]
fn sqlstate_is_read_from_the_error_fields_only() {
    assert_eq!(
        super::sqlstate(b"SERROR\0VERROR\0C23505\0Mduplicate key value\0\0"),
        Some(*b"23505")
    );
    // Cut before the code (the kept prefix is bounded): none.
    assert_eq!(super::sqlstate(b"SERROR\0VERROR\0C235"), None);
    // Not five digits or capitals: none.
    assert_eq!(super::sqlstate(b"SERROR\0Cab'x!\0\0"), None);
    assert_eq!(super::sqlstate(b"SERROR\0\0"), None);
    assert_eq!(super::sqlstate(b""), None);
}
