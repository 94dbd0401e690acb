//! RESP2, the Redis wire protocol: parsing client commands and encoding replies.
//!
//! A client sends either an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or
//! an inline command, a line of words typed by hand (`GET k\r\n`). Replies are simple
//! strings (`+OK`), errors (`-ERR …`), integers (`:1`), bulk strings (`$5\r\nhello`, or
//! `$-1` for nil) and arrays (`*2` followed by two replies).

use std::fmt;

/// The longest bulk string a client may send, as in Redis (`proto-max-bulk-len`).
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// The longest inline command or protocol header line.
pub const MAX_LINE: usize = 64 * 1024;
/// The most arguments one command may have.
pub const MAX_ARGS: usize = 1024 * 1024;

/// A complete command found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The command's name and arguments; empty for a blank line or an empty array, which
    /// Redis ignores.
    pub args: Vec<Vec<u8>>,
    /// How many bytes of the buffer the command took.
    pub len: usize,
}

/// A frame that breaks the protocol; the server answers it and closes the connection,
/// because it cannot know where the next command starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the command at the start of `buf`.
///
/// Returns `Ok(None)` when the command is not complete yet.
///
/// # Errors
///
/// A [`ProtocolError`] when the bytes cannot be a command: a bad length, a missing `$`, a
/// bulk string not followed by CRLF, or a line longer than [`MAX_LINE`] without its end.
pub fn parse_command(buf: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_array(buf),
        Some(_) => parse_inline(buf),
    }
}

fn parse_array(buf: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
    let Some((header, mut pos)) = crlf_line(buf, 1)? else {
        return Ok(None);
    };
    let count = parse_i64(header)
        .filter(|&n| n <= MAX_ARGS as i64)
        .ok_or_else(|| error("invalid multibulk length"))?;
    if count <= 0 {
        return Ok(Some(Parsed {
            args: Vec::new(),
            len: pos,
        }));
    }
    // Trust the announced count only so far: a client could announce a million arguments
    // and send none.
    let mut args = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => {
                return Err(error(&format!(
                    "expected '$', got '{}'",
                    printable(&[other])
                )));
            }
        }
        let Some((header, start)) = crlf_line(buf, pos + 1)? else {
            return Ok(None);
        };
        let len = parse_i64(header)
            .filter(|&n| (0..=MAX_BULK as i64).contains(&n))
            .ok_or_else(|| error("invalid bulk length"))? as usize;
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(error("bulk string longer than its length"));
        }
        args.push(buf[start..end].to_vec());
        pos = end + 2;
    }
    Ok(Some(Parsed { args, len: pos }))
}

/// An inline command: words separated by spaces or tabs, ended by LF or CRLF.
fn parse_inline(buf: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
    let Some(newline) = buf.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(error("too big inline request"));
        }
        return Ok(None);
    };
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|word| !word.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok(Some(Parsed {
        args,
        len: newline + 1,
    }))
}

/// The line starting at `from`, without its CRLF, and the position after the CRLF.
fn crlf_line(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = buf.get(from..).unwrap_or_default();
    let Some(cr) = rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\r') else {
        if rest.len() > MAX_LINE {
            return Err(error("too big length line"));
        }
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((&rest[..cr], from + cr + 2))),
        Some(_) => Err(error("expected CRLF")),
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
