//! Incremental message framing for both directions of a PostgreSQL
//! connection, across arbitrary chunk boundaries.
//!
//! A [`Framer`] is fed the bytes of one direction as they pass and hands
//! back one [`Frame`] per complete message: its type, its payload length
//! and at most a small prefix of its payload, only for the messages whose
//! content matters (statement texts and names, the transaction status, the
//! backend pid). Everything else is counted and skipped, never copied.
//! When a whole message lies in the chunk at hand, even the kept prefix is
//! borrowed from the chunk; only a message split across chunks copies its
//! (bounded) prefix into the framer's buffer, which is reused.
//!
//! A header that cannot occur (an unknown type, a length the protocol
//! rules out) is reported as [`Desync`]: the caller stops following the
//! connection rather than guess where the next message starts.

use postgres_protocol::message::backend::Header;

/// The longest statement or portal name the framer keeps. PostgreSQL
/// truncates names to 63 bytes; anything longer than this is kept as
/// "unreadable" rather than buffered.
pub(crate) const NAME_LIMIT: usize = 256;

/// How much of an `ErrorResponse` is kept: enough for its severity fields
/// and the SQLSTATE that follows them (`SERROR\0VERROR\0C23505\0` is 21
/// bytes; localized severities can be longer).
pub(crate) const ERROR_PREFIX: usize = 64;

/// `SSLRequest`'s request code.
pub(crate) const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest`'s request code.
pub(crate) const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest`'s request code.
pub(crate) const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// The server's limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_LENGTH: u32 = 10_000;

/// The direction a framer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

/// Where a direction's stream is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Frontend, before the `StartupMessage`: untyped messages (4-byte
    /// length including itself, 4-byte code).
    Startup,
    /// Backend: the single byte answering an `SSLRequest` or
    /// `GSSENCRequest`.
    Answer,
    /// Typed messages: 1 type byte, 4-byte big-endian length including
    /// itself.
    Typed,
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A typed message with this type byte.
    Typed(u8),
    /// An untyped startup-phase message with this code (`SSLRequest`,
    /// `GSSENCRequest`, `CancelRequest`, or a `StartupMessage` whose code
    /// is the protocol version).
    Startup(u32),
    /// The backend's one-byte answer to `SSLRequest`/`GSSENCRequest`.
    Answer(u8),
}

/// One complete message.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) kind: Kind,
    /// Payload length (after the header).
    pub(crate) len: usize,
    /// The first bytes of the payload: all of it, or as much as this
    /// message type needs ([`Framer`]'s keep rules).
    pub(crate) prefix: &'a [u8],
}

impl Frame<'_> {
    /// Whether `prefix` is the whole payload.
    pub(crate) fn complete(&self) -> bool {
        self.prefix.len() == self.len
    }
}

/// A header that cannot occur: the stream is not where the framer thinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desync(pub(crate) &'static str);

/// The message being read when its payload spans chunks.
#[derive(Clone, Copy, Debug)]
struct Partial {
    kind: Kind,
    len: usize,
    remaining: usize,
    keep: usize,
    /// Stop keeping after this many more NULs (`Bind`: its two names, so
    /// the parameter values after them are never copied).
    nuls_left: Option<usize>,
}

/// The length of `bytes` up to and including its `nuls`-th NUL (all of
/// it when it has fewer), and how many NULs are still missing.
fn through_nuls(bytes: &[u8], nuls: usize) -> (usize, usize) {
    let mut left = nuls;
    for (i, &b) in bytes.iter().enumerate() {
        if b == 0 {
            left -= 1;
            if left == 0 {
                return (i + 1, 0);
            }
        }
    }
    (bytes.len(), left)
}

/// How much of a payload each message type keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeepRules {
    /// `Query`: text and terminator.
    pub(crate) query: usize,
    /// `Parse`: name, text, terminators.
    pub(crate) parse: usize,
}

impl KeepRules {
    /// Rules that keep statement texts up to `text_limit` bytes (and
    /// whole texts up to `compare_limit` bytes, to recognise the pool's
    /// own queries).
    pub(crate) fn new(text_limit: usize, compare_limit: usize) -> Self {
        let query = text_limit.max(compare_limit) + 1;
        Self {
            query,
            parse: NAME_LIMIT + 1 + query,
        }
    }
}

/// Incremental framer of one direction.
#[derive(Debug)]
pub(crate) struct Framer {
    direction: Direction,
    phase: Phase,
    header: [u8; 8],
    header_len: usize,
    partial: Option<Partial>,
    /// The kept prefix of a message spanning chunks (capacity reused).
    kept: Vec<u8>,
    keep: KeepRules,
}

impl Framer {
    /// The frontend framer, in the startup phase.
    pub(crate) fn frontend(keep: KeepRules) -> Self {
        Self::new(Direction::Frontend, Phase::Startup, keep)
    }

    /// The backend framer, reading typed messages.
    pub(crate) fn backend() -> Self {
        Self::new(Direction::Backend, Phase::Typed, KeepRules::new(0, 0))
    }

    fn new(direction: Direction, phase: Phase, keep: KeepRules) -> Self {
        Self {
            direction,
            phase,
            header: [0; 8],
            header_len: 0,
            partial: None,
            kept: Vec::new(),
            keep,
        }
    }

    /// The next byte the backend sends answers an `SSLRequest` or
    /// `GSSENCRequest` (only between messages, in the typed phase).
    pub(crate) fn expect_answer(&mut self) -> Result<(), Desync> {
        if self.direction != Direction::Backend || self.header_len != 0 || self.partial.is_some() {
            return Err(Desync("an encryption request was sent mid-message"));
        }
        self.phase = Phase::Answer;
        Ok(())
    }

    /// Takes bytes from `input`: returns how many it consumed and the
    /// message they completed, if any. Call again with the rest.
    pub(crate) fn next<'a>(
        &'a mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Frame<'a>>), Desync> {
        if input.is_empty() {
            return Ok((0, None));
        }
        if let Some(partial) = self.partial.as_mut() {
            let take = partial.remaining.min(input.len());
            let room = partial.keep.saturating_sub(self.kept.len());
            let mut copy = &input[..room.min(take)];
            if let Some(nuls) = partial.nuls_left {
                let (len, left) = through_nuls(copy, nuls);
                copy = &copy[..len];
                partial.nuls_left = Some(left);
                if left == 0 {
                    partial.keep = self.kept.len() + len;
                }
            }
            self.kept.extend_from_slice(copy);
            partial.remaining -= take;
            if partial.remaining > 0 {
                return Ok((take, None));
            }
            let Partial { kind, len, .. } = *partial;
            self.partial = None;
            return Ok((
                take,
                Some(Frame {
                    kind,
                    len,
                    prefix: &self.kept,
                }),
            ));
        }

        let header_size = match self.phase {
            Phase::Startup => 8,
            Phase::Answer => 1,
            Phase::Typed => 5,
        };
        let mut header = [0; 8];
        let used = if self.header_len == 0 && input.len() >= header_size {
            header[..header_size].copy_from_slice(&input[..header_size]);
            header_size
        } else {
            let take = (header_size - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
            self.header_len += take;
            if self.header_len < header_size {
                return Ok((take, None));
            }
            self.header_len = 0;
            header = self.header;
            take
        };
        let (kind, len) = self.parse_header(&header[..header_size])?;
        let mut keep = self.keep_of(kind).min(len);
        let nuls = self.nuls_of(kind);
        let rest = &input[used..];
        if rest.len() >= len {
            // The whole message is in this chunk: borrow its prefix.
            if let Some(nuls) = nuls {
                keep = through_nuls(&rest[..keep], nuls).0;
            }
            return Ok((
                used + len,
                Some(Frame {
                    kind,
                    len,
                    prefix: &rest[..keep],
                }),
            ));
        }
        let mut copy = &rest[..keep.min(rest.len())];
        let mut nuls_left = nuls;
        if let Some(nuls) = nuls {
            let (len, left) = through_nuls(copy, nuls);
            copy = &copy[..len];
            nuls_left = Some(left);
            if left == 0 {
                keep = len;
            }
        }
        self.kept.clear();
        self.kept.extend_from_slice(copy);
        self.partial = Some(Partial {
            kind,
            len,
            remaining: len - rest.len(),
            keep,
            nuls_left,
        });
        Ok((input.len(), None))
    }

    /// Validates a complete header and moves the phase on.
    fn parse_header(&mut self, header: &[u8]) -> Result<(Kind, usize), Desync> {
        match self.phase {
            Phase::Answer => {
                self.phase = Phase::Typed;
                Ok((Kind::Answer(header[0]), 0))
            }
            Phase::Startup => {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                let valid = match code {
                    SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => len == 8,
                    // Protocol 3.2 allows keys of up to 256 bytes.
                    CANCEL_REQUEST_CODE => (16..=8 + 4 + 256).contains(&len),
                    // A StartupMessage: the code is the protocol version,
                    // major 3.
                    _ if code >> 16 == 3 => (8..=MAX_STARTUP_LENGTH).contains(&len),
                    _ => return Err(Desync("unknown startup-phase request code")),
                };
                if !valid {
                    return Err(Desync("startup-phase message of impossible length"));
                }
                if code >> 16 == 3 {
                    self.phase = Phase::Typed;
                }
                Ok((Kind::Startup(code), len as usize - 8))
            }
            Phase::Typed => {
                let parsed = Header::parse(header)
                    .map_err(|_| Desync("message length below 4"))?
                    .ok_or(Desync("short header"))?;
                let tag = parsed.tag();
                // `Header::parse` rejects lengths below 4, so this is the
                // payload length.
                let len = usize::try_from(parsed.len() - 4)
                    .map_err(|_| Desync("message length below 4"))?;
                let valid = match self.direction {
                    Direction::Frontend => frontend_length_valid(tag, len),
                    Direction::Backend => backend_length_valid(tag, len),
                };
                match valid {
                    Some(true) => Ok((Kind::Typed(tag), len)),
                    Some(false) => Err(Desync("message of impossible length for its type")),
                    None => Err(Desync("unknown message type")),
                }
            }
        }
    }

    /// After how many NULs a message type stops keeping.
    fn nuls_of(&self, kind: Kind) -> Option<usize> {
        match (self.direction, kind) {
            (Direction::Frontend, Kind::Typed(b'B')) => Some(2),
            _ => None,
        }
    }

    /// How many payload bytes a message type keeps.
    fn keep_of(&self, kind: Kind) -> usize {
        match (self.direction, kind) {
            (Direction::Frontend, Kind::Typed(b'Q')) => self.keep.query,
            (Direction::Frontend, Kind::Typed(b'P')) => self.keep.parse,
            // Portal and statement names; never the parameter values.
            (Direction::Frontend, Kind::Typed(b'B')) => 2 * (NAME_LIMIT + 1),
            (Direction::Frontend, Kind::Typed(b'C')) => 1 + NAME_LIMIT + 1,
            // The transaction status byte; the backend pid.
            (Direction::Backend, Kind::Typed(b'Z')) => 1,
            (Direction::Backend, Kind::Typed(b'K')) => 4,
            // The fields before the SQLSTATE (severity twice); never the
            // message, detail or hint, which can quote the data.
            (Direction::Backend, Kind::Typed(b'E')) => ERROR_PREFIX,
            _ => 0,
        }
    }
}

/// Whether a frontend payload length is possible for its type (`None`:
/// not a frontend message type).
fn frontend_length_valid(tag: u8, len: usize) -> Option<bool> {
    Some(match tag {
        // Sync, Flush, CopyDone, Terminate.
        b'S' | b'H' | b'c' | b'X' => len == 0,
        // Query: text, NUL.
        b'Q' => len >= 1,
        // Parse: name, NUL, text, NUL, parameter count.
        b'P' => len >= 4,
        // Bind: portal, NUL, statement, NUL, three counts at least.
        b'B' => len >= 8,
        // Close and Describe: 'S' or 'P', name, NUL.
        b'C' | b'D' => len >= 2,
        // Execute: portal, NUL, row limit.
        b'E' => len >= 5,
        // FunctionCall: oid and three counts at least.
        b'F' => len >= 10,
        // CopyFail: message, NUL.
        b'f' => len >= 1,
        // CopyData; password, SASL and GSSAPI responses.
        b'd' | b'p' => true,
        _ => return None,
    })
}

/// Whether a backend payload length is possible for its type (`None`: not
/// a backend message type).
fn backend_length_valid(tag: u8, len: usize) -> Option<bool> {
    Some(match tag {
        // ParseComplete, BindComplete, CloseComplete, CopyDone,
        // EmptyQueryResponse, NoData, PortalSuspended.
        b'1' | b'2' | b'3' | b'c' | b'I' | b'n' | b's' => len == 0,
        // ReadyForQuery: the transaction status.
        b'Z' => len == 1,
        // BackendKeyData: pid and a key of 4 (protocol 3.0) to 256 bytes.
        b'K' => (8..=4 + 256).contains(&len),
        b'A' | b'C' | b'd' | b'D' | b'E' | b'G' | b'H' | b'N' | b'R' | b'S' | b't' | b'T'
        | b'V' | b'v' | b'W' => true,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks cut at `cuts`, collecting the frames as
    /// (kind, len, prefix).
    fn frames(
        framer: &mut Framer,
        input: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<(Kind, usize, Vec<u8>)>, Desync> {
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            let mut chunk = &input[start..end];
            while !chunk.is_empty() {
                let (used, frame) = framer.next(chunk)?;
                assert!(used > 0, "no progress");
                if let Some(f) = frame {
                    out.push((f.kind, f.len, f.prefix.to_vec()));
                }
                chunk = &chunk[used..];
            }
            start = end;
        }
        Ok(out)
    }

    fn typed(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn frontend_startup_then_typed_messages_at_every_split() {
        let mut input = Vec::new();
        // SSLRequest
        input.extend_from_slice(&8u32.to_be_bytes());
        input.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        // StartupMessage (protocol 3.0) with one parameter.
        let params = b"user\0me\0\0";
        input.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
        input.extend_from_slice(&196_608u32.to_be_bytes());
        input.extend_from_slice(params);
        input.extend(typed(b'Q', b"SELECT 1\0"));
        input.extend(typed(b'S', b""));
        let expected = vec![
            (Kind::Startup(SSL_REQUEST_CODE), 0, vec![]),
            (Kind::Startup(196_608), params.len(), vec![]),
            (Kind::Typed(b'Q'), 9, b"SELECT 1\0".to_vec()),
            (Kind::Typed(b'S'), 0, vec![]),
        ];
        for cut in 0..=input.len() {
            let mut framer = Framer::frontend(KeepRules::new(2048, 0));
            assert_eq!(
                frames(&mut framer, &input, &[cut]).unwrap(),
                expected,
                "cut {cut}"
            );
        }
        // Byte by byte.
        let mut framer = Framer::frontend(KeepRules::new(2048, 0));
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(frames(&mut framer, &input, &cuts).unwrap(), expected);
    }

    #[test]
    fn kept_prefixes_are_bounded_and_skipped_payloads_are_not_kept() {
        let text = "x".repeat(5000);
        let mut query = text.clone().into_bytes();
        query.push(0);
        let mut input = typed(b'Q', &query);
        input.extend(typed(b'd', &[7u8; 3000]));
        for cut in [0, 1, 5, 6, 100, 2049, 3000, input.len() - 1] {
            let mut framer = Framer::frontend(KeepRules::new(2048, 0));
            framer.phase = Phase::Typed;
            let got = frames(&mut framer, &input, &[cut]).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].1, 5001);
            assert_eq!(got[0].2.len(), 2049);
            assert_eq!(got[1], (Kind::Typed(b'd'), 3000, vec![]));
            assert!(framer.kept.capacity() <= 4096, "cut {cut}");
        }
    }

    #[test]
    fn bind_keeps_its_names_and_never_its_parameter_values() {
        let mut payload = b"portal\0s42\0\0\0\0\x01\0\0\0\x07hunter2\0\0".to_vec();
        payload.extend_from_slice(&[b'z'; 600]);
        let input = typed(b'B', &payload);
        for cut in 0..=input.len() {
            let mut framer = Framer::frontend(KeepRules::new(2048, 0));
            framer.phase = Phase::Typed;
            let got = frames(&mut framer, &input, &[cut]).unwrap();
            assert_eq!(
                got,
                vec![(Kind::Typed(b'B'), payload.len(), b"portal\0s42\0".to_vec())],
                "cut {cut}"
            );
            assert!(
                !framer.kept.windows(7).any(|w| w == b"hunter2"),
                "cut {cut}"
            );
        }
        // Names longer than the limit: kept up to the limit, still no values.
        let long = vec![b'n'; 2 * NAME_LIMIT + 10];
        let mut payload = long.clone();
        payload.extend_from_slice(b"\0s\0\0\0\0\x01\0\0\0\x07hunter2\0\0");
        let input = typed(b'B', &payload);
        let mut framer = Framer::frontend(KeepRules::new(2048, 0));
        framer.phase = Phase::Typed;
        let got = frames(&mut framer, &input, &[100]).unwrap();
        assert_eq!(got[0].2, long[..2 * (NAME_LIMIT + 1)].to_vec());
    }

    #[test]
    fn backend_answer_byte_then_typed() {
        let mut input = vec![b'N'];
        input.extend(typed(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]));
        input.extend(typed(b'Z', b"T"));
        for cut in 0..=input.len() {
            let mut framer = Framer::backend();
            framer.expect_answer().unwrap();
            assert_eq!(
                frames(&mut framer, &input, &[cut]).unwrap(),
                vec![
                    (Kind::Answer(b'N'), 0, vec![]),
                    (Kind::Typed(b'K'), 8, vec![0, 0, 0x30, 0x39]),
                    (Kind::Typed(b'Z'), 1, b"T".to_vec()),
                ],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn impossible_headers_desync() {
        let mut framer = Framer::backend();
        assert_eq!(
            framer.next(&typed(b'Z', b"TT")).unwrap_err(),
            Desync("message of impossible length for its type")
        );
        let mut framer = Framer::backend();
        assert_eq!(
            framer.next(b"?\0\0\0\x04").unwrap_err(),
            Desync("unknown message type")
        );
        let mut framer = Framer::backend();
        assert_eq!(
            framer.next(b"D\0\0\0\x03").unwrap_err(),
            Desync("message length below 4")
        );
        let mut framer = Framer::backend();
        assert!(framer.next(b"D\xff\xff\xff\xff").is_err());
        let mut framer = Framer::frontend(KeepRules::new(2048, 0));
        assert_eq!(
            framer.next(&[0, 0, 0, 8, 0, 0, 0, 9]).unwrap_err(),
            Desync("unknown startup-phase request code")
        );
        let mut framer = Framer::frontend(KeepRules::new(2048, 0));
        assert!(framer.next(&[0, 1, 0, 0, 0, 3, 0, 0]).is_err());
        let mut framer = Framer::frontend(KeepRules::new(2048, 0));
        framer.phase = Phase::Typed;
        assert!(framer.next(&typed(b'S', b"x")).is_err());
        let mut framer = Framer::frontend(KeepRules::new(2048, 0));
        framer.phase = Phase::Typed;
        assert!(framer.next(&typed(b'Z', b"I")).is_err());
    }
}
