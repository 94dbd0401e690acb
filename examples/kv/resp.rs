//! RESP2, the Redis wire protocol: parsing client commands and encoding replies.
//!
//! A client sends either an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or
//! an inline command, a line of words typed by hand (`GET k\r\n`). Replies are simple
//! strings (`+OK`), errors (`-ERR …`), integers (`:1`), bulk strings (`$5\r\nhello`, or
//! `$-1` for nil) and arrays (`*2` followed by two replies).

use std::fmt;

/// The longest bulk string a client may send by default, as in Redis (`proto-max-bulk-len`).
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// The longest inline command or protocol header line, as in Redis
/// (`PROTO_INLINE_MAX_SIZE`).
pub const MAX_LINE: usize = 64 * 1024;
/// The most arguments one command may have, as in Redis before 7.0.
pub const MAX_ARGS: usize = 1024 * 1024;
/// The most bytes of arguments one command may hold by default, as in Redis
/// (`client-query-buffer-limit`).
pub const MAX_QUERY: usize = 1024 * 1024 * 1024;

/// What a client's commands may not exceed. Each limit, when crossed, is a
/// [`ProtocolError`]: the client gets an error reply and is disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest bulk string, in bytes (Redis's `proto-max-bulk-len`, 512 MiB).
    pub max_bulk_len: usize,
    /// The most arguments in one command, the name included (1,048,576).
    pub max_args: usize,
    /// The longest inline command, and the longest `*` or `$` header line (64 KiB).
    pub max_line: usize,
    /// The most bytes the arguments of one command may add up to (Redis's
    /// `client-query-buffer-limit`, 1 GiB). It is checked when an argument's length is
    /// announced, before its bytes are taken in.
    pub max_query: usize,
}

impl Default for Limits {
    /// Redis's defaults.
    fn default() -> Limits {
        Limits {
            max_bulk_len: MAX_BULK,
            max_args: MAX_ARGS,
            max_line: MAX_LINE,
            max_query: MAX_QUERY,
        }
    }
}

/// A frame that breaks the protocol or a limit; the server answers it and closes the
/// connection, because it cannot know where the next command starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connection's parser: takes the client's bytes as they come, in chunks of any size,
/// and yields each command once its last byte has arrived.
///
/// It keeps its place between chunks (how many arguments of a command are still to come,
/// how many bytes of the current one), so every byte is looked at once and a command costs
/// time in proportion to its size however it is split. Complete arguments are moved out of
/// the input as they arrive; nothing is buffered but the command in progress.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
    /// The header or inline line in progress, without its end.
    line: Vec<u8>,
    /// The arguments of the command in progress; the last may be incomplete.
    args: Vec<Vec<u8>>,
    /// The bytes `args` will hold once complete: what `Limits::max_query` bounds.
    held: usize,
    /// The error that stopped the parser, returned again by every later call.
    failed: Option<ProtocolError>,
}

/// Where the parser stands in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between commands.
    Start,
    /// In the line of an inline command.
    Inline,
    /// In the `*<count>` line; `cr` once its CR has been seen.
    Count { cr: bool },
    /// Before the `$` of an argument; `left` arguments to come, this one included.
    BulkStart { left: usize },
    /// In a `$<length>` line.
    BulkLen { left: usize, cr: bool },
    /// In an argument's bytes, `need` more to come.
    Bulk { left: usize, need: usize },
    /// After an argument's bytes, where CRLF must follow.
    BulkEnd { left: usize, cr: bool },
}

impl Parser {
    /// A parser for a new connection.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            state: State::Start,
            line: Vec::new(),
            args: Vec::new(),
            held: 0,
            failed: None,
        }
    }

    /// Parses the next bytes of the stream, advancing `input` past the bytes it took.
    ///
    /// Returns the next complete command (its name and arguments; empty for a blank line
    /// or an empty array, which Redis ignores) as soon as its last byte is taken, with the
    /// rest of `input` left for the next call; or `Ok(None)` once `input` is used up
    /// without completing one.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when the bytes cannot be a command (a bad length, a missing `$`,
    /// a bulk string not followed by CRLF) or cross one of the [`Limits`]. The messages
    /// are redis-server's where it has one. Every later call returns the same error.
    pub fn parse(&mut self, input: &mut &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.step(input);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        loop {
            match self.state {
                State::Start => match input.first() {
                    None => return Ok(None),
                    Some(b'*') => {
                        *input = &input[1..];
                        self.state = State::Count { cr: false };
                    }
                    Some(_) => self.state = State::Inline,
                },
                State::Inline => {
                    if !self.take_line(input, b'\n', "too big inline request")? {
                        return Ok(None);
                    }
                    let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                    let args: Vec<Vec<u8>> = line
                        .split(|&b| b == b' ' || b == b'\t')
                        .filter(|word| !word.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect();
                    // Only reachable with a `max_args` below half of `max_line`; Redis has
                    // no such limit, and so no message of its own for it.
                    if args.len() > self.limits.max_args {
                        return Err(error("too many arguments in inline request"));
                    }
                    return Ok(Some(self.finish(args)));
                }
                State::Count { cr: false } => {
                    if !self.take_line(input, b'\r', "too big mbulk count string")? {
                        return Ok(None);
                    }
                    self.state = State::Count { cr: true };
                }
                State::Count { cr: true } => {
                    if !take_lf(input)? {
                        return Ok(None);
                    }
                    let count = parse_i64(&self.line)
                        .filter(|&n| n <= self.limits.max_args as i64)
                        .ok_or_else(|| error("invalid multibulk length"))?;
                    if count <= 0 {
                        return Ok(Some(self.finish(Vec::new())));
                    }
                    let left = count as usize;
                    // Trust the announced count only so far: a client could announce a
                    // million arguments and send none.
                    self.args = Vec::with_capacity(left.min(1024));
                    self.state = State::BulkStart { left };
                }
                State::BulkStart { left } => match input.first() {
                    None => return Ok(None),
                    Some(b'$') if self.whole_bulk(input)? => {
                        if left == 1 {
                            let args = std::mem::take(&mut self.args);
                            return Ok(Some(self.finish(args)));
                        }
                        self.state = State::BulkStart { left: left - 1 };
                    }
                    Some(b'$') => {
                        *input = &input[1..];
                        self.line.clear();
                        self.state = State::BulkLen { left, cr: false };
                    }
                    Some(&other) => {
                        let got = printable(&[other]);
                        return Err(error(&format!("expected '$', got '{got}'")));
                    }
                },
                State::BulkLen { left, cr: false } => {
                    if !self.take_line(input, b'\r', "too big bulk count string")? {
                        return Ok(None);
                    }
                    self.state = State::BulkLen { left, cr: true };
                }
                State::BulkLen { left, cr: true } => {
                    if !take_lf(input)? {
                        return Ok(None);
                    }
                    let len = self.bulk_len(&self.line)?;
                    self.held += len;
                    if self.held > self.limits.max_query {
                        return Err(error("client reached max query buffer length"));
                    }
                    // The buffer grows with the bytes that arrive, not with the promise.
                    self.args.push(Vec::with_capacity(len.min(64 * 1024)));
                    self.state = if len == 0 {
                        State::BulkEnd { left, cr: false }
                    } else {
                        State::Bulk { left, need: len }
                    };
                }
                State::Bulk { left, need } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = need.min(input.len());
                    if let Some(arg) = self.args.last_mut() {
                        arg.extend_from_slice(&input[..n]);
                    }
                    *input = &input[n..];
                    self.state = if n == need {
                        State::BulkEnd { left, cr: false }
                    } else {
                        State::Bulk {
                            left,
                            need: need - n,
                        }
                    };
                }
                State::BulkEnd { left, cr } => {
                    let Some(&b) = input.first() else {
                        return Ok(None);
                    };
                    if b != if cr { b'\n' } else { b'\r' } {
                        return Err(error("bulk string longer than its length"));
                    }
                    *input = &input[1..];
                    if !cr {
                        self.state = State::BulkEnd { left, cr: true };
                    } else if left > 1 {
                        self.state = State::BulkStart { left: left - 1 };
                    } else {
                        let args = std::mem::take(&mut self.args);
                        return Ok(Some(self.finish(args)));
                    }
                }
            }
        }
    }

    /// The common case of a small argument whose header, bytes and CRLF have all arrived:
    /// takes it in one step and returns `true`. Returns `false`, having taken nothing, when
    /// any part is missing, for the general path to take it piece by piece.
    fn whole_bulk(&mut self, input: &mut &[u8]) -> Result<bool, ProtocolError> {
        // A length of up to 20 digits; a longer line is left to the general path.
        let window = &input[1..input.len().min(23)];
        let Some(cr) = window.iter().position(|&b| b == b'\r') else {
            return Ok(false);
        };
        if cr > self.limits.max_line {
            return Ok(false);
        }
        let Some(&[b'\n']) = window.get(cr + 1..cr + 2) else {
            return Ok(false);
        };
        let len = self.bulk_len(&window[..cr])?;
        let start = 1 + cr + 2;
        let Some(arg) = input.get(start..start + len) else {
            return Ok(false);
        };
        match input.get(start + len..start + len + 2) {
            Some(b"\r\n") => {}
            Some(_) => return Err(error("bulk string longer than its length")),
            None => return Ok(false),
        }
        self.held += len;
        if self.held > self.limits.max_query {
            return Err(error("client reached max query buffer length"));
        }
        self.args.push(arg.to_vec());
        *input = &input[start + len + 2..];
        Ok(true)
    }

    /// The length in a `$<length>` line, within `Limits::max_bulk_len`.
    fn bulk_len(&self, digits: &[u8]) -> Result<usize, ProtocolError> {
        parse_i64(digits)
            .filter(|&n| (0..=self.limits.max_bulk_len as i64).contains(&n))
            .map(|n| n as usize)
            .ok_or_else(|| error("invalid bulk length"))
    }

    /// Moves the bytes of `input` before `end` into `self.line`, and `end` past; returns
    /// whether `end` was found. A line longer than `Limits::max_line` is an error, found
    /// as soon as that many bytes have come without `end`.
    fn take_line(
        &mut self,
        input: &mut &[u8],
        end: u8,
        too_big: &str,
    ) -> Result<bool, ProtocolError> {
        let found = input.iter().position(|&b| b == end);
        let take = found.unwrap_or(input.len());
        if self.line.len() + take > self.limits.max_line {
            return Err(error(too_big));
        }
        self.line.extend_from_slice(&input[..take]);
        *input = &input[take + usize::from(found.is_some())..];
        Ok(found.is_some())
    }

    /// Readies the parser for the next command and hands out this one.
    fn finish(&mut self, args: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        self.state = State::Start;
        self.line.clear();
        if self.line.capacity() > 1024 {
            self.line = Vec::new();
        }
        self.held = 0;
        args
    }
}

/// Takes the LF that must follow a header line's CR; returns whether it had arrived.
fn take_lf(input: &mut &[u8]) -> Result<bool, ProtocolError> {
    match input.first() {
        None => Ok(false),
        Some(b'\n') => {
            *input = &input[1..];
            Ok(true)
        }
        Some(_) => Err(error("expected CRLF")),
    }
}

/// Parses all of `input` as one stream with a fresh parser: the commands it holds, and
/// the error that stopped it, if any. What tests and fuzzing compare.
pub fn parse_all(input: &[u8], limits: Limits) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
    let mut parser = Parser::new(limits);
    let mut rest = input;
    let mut commands = Vec::new();
    loop {
        match parser.parse(&mut rest) {
            Ok(Some(command)) => commands.push(command),
            Ok(None) => return (commands, None),
            Err(e) => return (commands, Some(e)),
        }
    }
}

fn error(message: &str) -> ProtocolError {
    ProtocolError(message.to_owned())
}

/// Parses a decimal integer the strict way Redis does: an optional `-`, no `+`, no
/// spaces, no leading zeros, no overflow.
pub fn parse_i64(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, digits),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        // Accumulate as a negative number, whose range is one larger, so that i64::MIN parses.
        n = n.checked_mul(10)?.checked_sub(d)?;
    }
    if negative { Some(n) } else { n.checked_neg() }
}

/// Client-provided bytes made safe for an error line: at most 128 characters, with
/// anything that is not printable ASCII (CR and LF above all) replaced by `?`.
pub fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(128)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Appends a simple string reply: `+OK`.
pub fn simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an error reply; `message` starts with its code (`ERR …`) and holds no CR or LF.
pub fn error_reply(out: &mut Vec<u8>, message: &str) {
    out.push(b'-');
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply: `:42`.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string reply, or the nil bulk string `$-1` for `None`.
pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(value) => {
            out.push(b'$');
            push_decimal(out, value.len() as i64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"$-1\r\n"),
    }
}

/// Appends the header of an array of `len` replies; the replies follow.
pub fn array(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    push_decimal(out, len as i64);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without allocating: replies are built once per command, and
/// this is on the path of every one of them.
fn push_decimal(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}
