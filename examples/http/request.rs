//! Parsing HTTP/1.x requests (RFC 9112): the request line and the header fields the
//! server acts on, and the framing of a connection's stream into requests ([`Reader`]).
//! Bodies are framed by `Content-Length` only.

/// The longest request line accepted, without its line end; a longer one gets `414`.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The largest request head accepted: request line and header fields together.
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest request body accepted.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the response unless the client asks for
    /// `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: the connection stays open unless either side says `Connection: close`.
    Http11,
}

/// A request line and the header fields that matter to this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, … (case-sensitive, as the RFC says).
    pub method: String,
    /// The request target, for example `/hello?x=1`.
    pub target: String,
    /// The protocol version.
    pub version: Version,
    /// The body's length in bytes (0 without `Content-Length`).
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// How many bytes the head took, with its final empty line.
    pub len: usize,
}

impl Head {
    /// The target's path, without the query (and without the scheme and authority of an
    /// absolute target such as `http://example.com/hello`).
    pub fn path(&self) -> &str {
        let target = match self.target.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |slash| &rest[slash..]),
            None => &self.target,
        };
        target.split('?').next().unwrap_or_default()
    }
}

/// Why a request cannot be served: the status to answer with, after which the connection
/// is closed, since where the next request starts is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The status code.
    pub status: u16,
    /// A short explanation, sent as the body.
    pub why: &'static str,
}

/// A [`Rejection`] with `status` and `why`.
pub const fn reject(status: u16, why: &'static str) -> Rejection {
    Rejection { status, why }
}

/// One connection's input, framed into requests as it arrives.
///
/// It buffers what has not been served yet and remembers where it stopped looking for the
/// end of a head, so a head sent a byte at a time is scanned once, not once per byte.
#[derive(Debug, Default)]
pub struct Reader {
    input: Vec<u8>,
    /// Bytes at the start of `input` already handed out (requests, and blank lines).
    used: usize,
    /// Where the search for the end of the head resumes, counted from `used`: the start of
    /// its last incomplete line.
    scanned: usize,
    /// The head of the request whose body is still arriving.
    waiting: Option<Head>,
}

/// Input bytes a connection's buffer keeps room for between requests.
const BUFFER_KEEP: usize = 64 * 1024;

impl Reader {
    /// An empty reader, for a new connection.
    pub fn new() -> Reader {
        Reader::default()
    }

    /// Adds the next bytes of the stream.
    pub fn push(&mut self, data: Vec<u8>) {
        self.input.drain(..self.used);
        self.used = 0;
        if self.input.capacity() > 4 * BUFFER_KEEP && self.input.len() < BUFFER_KEEP {
            // One large body does not pin its memory for the rest of the connection.
            self.input.shrink_to(BUFFER_KEEP);
        }
        if self.input.is_empty() {
            self.input = data;
        } else {
            self.input.extend_from_slice(&data);
        }
    }

    /// The next complete request, head and body, or `Ok(None)` until more bytes come.
    /// Empty lines between requests are skipped (RFC 9112, section 2.2).
    ///
    /// # Errors
    ///
    /// The [`Rejection`] of [`parse_head`]; the stream cannot be read further after it.
    pub fn next_request(&mut self) -> Result<Option<(Head, &[u8])>, Rejection> {
        let head = match self.waiting.take() {
            Some(head) => head,
            None => {
                while matches!(self.input.get(self.used), Some(b'\r' | b'\n')) {
                    self.used += 1;
                }
                let buf = &self.input[self.used..];
                let Some(len) = find_head(buf, &mut self.scanned)? else {
                    return Ok(None);
                };
                let head = parse_complete_head(&buf[..len])?;
                self.used += len;
                self.scanned = 0;
                head
            }
        };
        let start = self.used;
        let end = start + head.content_length;
        if self.input.len() < end {
            self.waiting = Some(head);
            return Ok(None);
        }
        self.used = end;
        Ok(Some((head, &self.input[start..end])))
    }

    /// The head of the request whose body is still arriving, if any.
    pub fn waiting_body(&self) -> Option<&Head> {
        self.waiting.as_ref()
    }
}

/// Parses the request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is not complete. Lines may end in CRLF or in a bare
/// LF, which RFC 9112 allows a server to accept.
///
/// # Errors
///
/// A [`Rejection`]: `400` for a malformed request line or header field, a missing `Host`
/// in HTTP/1.1 or an invalid `Content-Length`; `431` for a head over [`MAX_HEAD`]; `413`
/// for a body over [`MAX_BODY`]; `411` for a body sent with `Transfer-Encoding: chunked`
/// (this server needs a `Content-Length`), `501` for any other transfer coding; `505` for
/// a version other than 1.x.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Rejection> {
    match find_head(buf, &mut 0)? {
        Some(len) => parse_complete_head(&buf[..len]).map(Some),
        None => Ok(None),
    }
}

/// Parses a head whose end [`find_head`] found: `buf` is the head, empty line included.
fn parse_complete_head(buf: &[u8]) -> Result<Head, Rejection> {
    let len = buf.len();
    let mut lines = buf[..len].split(|&b| b == b'\n').map(|line| match line {
        [rest @ .., b'\r'] => rest,
        line => line,
    });
    let request_line = lines.next().unwrap_or_default();
    let (method, target, version) = parse_request_line(request_line)?;

    let mut content_length = None;
    let mut hosts = 0;
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    for line in lines.take_while(|line| !line.is_empty()) {
        let (name, value) = parse_field(line)?;
        match Field::of(name) {
            Some(Field::ContentLength) => {
                let n = parse_length(value).ok_or(reject(400, "invalid content-length"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(reject(400, "conflicting content-length"));
                }
                content_length = Some(n);
            }
            Some(Field::TransferEncoding) => {
                let last = value.rsplit(',').next().unwrap_or_default().trim();
                return Err(if last.eq_ignore_ascii_case("chunked") {
                    reject(
                        411,
                        "chunked bodies are not supported; send a content-length",
                    )
                } else {
                    reject(501, "transfer coding not supported")
                });
            }
            Some(Field::Connection) => {
                for option in value.split(',').map(str::trim) {
                    close |= option.eq_ignore_ascii_case("close");
                    keep_alive |= option.eq_ignore_ascii_case("keep-alive");
                }
            }
            Some(Field::Host) => hosts += 1,
            // An HTTP/1.0 client does not know `100 Continue` (RFC 9110, section 10.1.1).
            Some(Field::Expect) => {
                expect_continue =
                    version == Version::Http11 && value.eq_ignore_ascii_case("100-continue");
            }
            None => {}
        }
    }
    if version == Version::Http11 && hosts != 1 {
        return Err(reject(400, "an http/1.1 request needs exactly one host"));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(reject(413, "request body too large"));
    }
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    Ok(Head {
        method,
        target,
        version,
        content_length,
        keep_alive,
        expect_continue,
        len,
    })
}

/// The header fields the server acts on.
#[derive(Debug, Clone, Copy)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Expect,
}

impl Field {
    /// Which field `name` is; names are case-insensitive.
    fn of(name: &[u8]) -> Option<Field> {
        let known: [(&[u8], Field); 5] = [
            (b"content-length", Field::ContentLength),
            (b"transfer-encoding", Field::TransferEncoding),
            (b"connection", Field::Connection),
            (b"host", Field::Host),
            (b"expect", Field::Expect),
        ];
        known
            .into_iter()
            .find(|(known, _)| name.eq_ignore_ascii_case(known))
            .map(|(_, field)| field)
    }
}

/// The length of the head at the start of `buf`, empty line included, once it is complete.
///
/// `from` is where to resume: 0 at first, then what the previous call left there (the
/// start of the last incomplete line), for the same head with more bytes after it. So
/// each byte is looked at once however the head is split.
///
/// # Errors
///
/// `414` for a request line over [`MAX_REQUEST_LINE`], `431` for a head over [`MAX_HEAD`],
/// each as soon as that many bytes have come without the line's or the head's end; `400`
/// for an empty request line.
pub fn find_head(buf: &[u8], from: &mut usize) -> Result<Option<usize>, Rejection> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut line_start = *from;
    for newline in (line_start..window.len()).filter(|&i| window[i] == b'\n') {
        let line = &window[line_start..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line_start == 0 && line.len() > MAX_REQUEST_LINE {
            return Err(reject(414, "request line too long"));
        }
        // The head ends at the first empty line.
        if line.is_empty() {
            if line_start == 0 {
                return Err(reject(400, "empty request line"));
            }
            return Ok(Some(newline + 1));
        }
        line_start = newline + 1;
    }
    *from = line_start;
    // The request line is still incomplete; a CR at its end may yet be part of its end.
    let partial = buf.strip_suffix(b"\r").unwrap_or(buf);
    if line_start == 0 && partial.len() > MAX_REQUEST_LINE {
        return Err(reject(414, "request line too long"));
    }
    if buf.len() >= MAX_HEAD {
        return Err(reject(431, "request head too large"));
    }
    Ok(None)
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, Version), Rejection> {
    let bad = reject(400, "malformed request line");
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !method.iter().copied().all(is_token_char) {
        return Err(bad);
    }
    let target_ok = target.starts_with(b"/") || target == b"*" || target.starts_with(b"http");
    if !target_ok || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(bad);
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(reject(505, "http version not supported"));
        }
        _ => return Err(bad),
    };
    // Both were checked to be ASCII above.
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok((text(method), text(target), version))
}

/// Splits `name: value`, trimming the value's surrounding spaces and tabs.
fn parse_field(line: &[u8]) -> Result<(&[u8], &str), Rejection> {
    let bad = reject(400, "malformed header field");
    let colon = line.iter().position(|&b| b == b':').ok_or(bad)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // No space before the colon, and no folded lines (a line starting with a space).
    if name.is_empty() || !name.iter().copied().all(is_token_char) {
        return Err(bad);
    }
    let value = value.trim_ascii();
    if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(bad);
    }
    // Field values may hold any byte from 0x80 up; only the ones the server reads need to be
    // text, and those are ASCII.
    let value = std::str::from_utf8(value).unwrap_or_default();
    Ok((name, value))
}

/// `Content-Length`: one or more digits, nothing else.
fn parse_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A `tchar` of RFC 9110: what method and header names are made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
