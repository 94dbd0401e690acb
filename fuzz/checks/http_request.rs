//! Invariants of the http example's request parser, checked on any input: by the fuzz
//! target `http_request`, and on stable by `tests/examples_fuzz_corpus.rs` for every
//! corpus file.
//!
//! The including crate declares the parser as `crate::request`.

use crate::request::{
    self, Head, MAX_BODY, MAX_HEAD, MAX_REQUEST_LINE, Reader, Rejection, Version,
};

/// What a stream of requests frames into: each request's head and body, and the rejection
/// that stopped it, if any.
type Framed = (Vec<(Head, Vec<u8>)>, Option<Rejection>);

/// Panics unless, for `data` as a connection's stream:
/// - framing it whole, a byte at a time, and in pieces whose sizes come from `data` give
///   the same requests and the same rejection;
/// - every request keeps the limits, and its head, written back in a normal form, parses
///   to the same head (its length aside);
/// - `parse_head` on the stream's start agrees with the framing's first request.
pub fn check(data: &[u8]) {
    let whole = frame(data, &mut std::iter::empty());
    assert_eq!(
        frame(data, &mut std::iter::repeat(1)),
        whole,
        "one byte at a time"
    );
    let mut sizes = data.iter().map(|&b| 1 + usize::from(b % 23)).cycle();
    assert_eq!(frame(data, &mut sizes), whole, "in pieces");

    for (head, body) in &whole.0 {
        assert!(head.len <= MAX_HEAD && head.content_length <= MAX_BODY);
        assert_eq!(body.len(), head.content_length);
        let written = write_head(head);
        let again = request::parse_head(&written)
            .unwrap_or_else(|r| panic!("{r:?} for {:?}", String::from_utf8_lossy(&written)))
            .expect("a complete head");
        assert_eq!(
            Head {
                len: head.len,
                ..again
            },
            *head
        );
    }
    if !data.starts_with(b"\r") && !data.starts_with(b"\n") {
        match (request::parse_head(data), &whole) {
            (Ok(Some(head)), (requests, _)) if !requests.is_empty() => {
                assert_eq!(head, requests[0].0);
            }
            (Err(rejection), (requests, Some(first))) if requests.is_empty() => {
                assert_eq!(rejection, *first);
            }
            (Ok(None), (requests, None)) if requests.is_empty() => {}
            // A complete head whose body has not all come.
            (Ok(Some(_)), (requests, None)) if requests.is_empty() => {}
            (direct, framed) => panic!("parse_head gave {direct:?}, the reader {framed:?}"),
        }
    }
}

/// Frames `data` with one reader fed in pieces of the sizes `sizes` yields (all the rest
/// when it yields nothing).
fn frame(data: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> Framed {
    let mut reader = Reader::new();
    let mut requests = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, after) = rest.split_at(size);
        rest = after;
        reader.push(piece.to_vec());
        loop {
            match reader.next_request() {
                Ok(Some((head, body))) => requests.push((head, body.to_vec())),
                Ok(None) => break,
                Err(rejection) => return (requests, Some(rejection)),
            }
        }
    }
    (requests, None)
}

/// `head` as a client would send it, in a normal form: the request line, then the fields
/// the server acts on.
fn write_head(head: &Head) -> Vec<u8> {
    let version = match head.version {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    };
    let mut out = format!("{} {} {version}\r\n", head.method, head.target);
    assert!(out.len() - 2 <= MAX_REQUEST_LINE);
    if head.version == Version::Http11 {
        out.push_str("Host: x\r\n");
    }
    if head.content_length > 0 {
        out.push_str(&format!("Content-Length: {}\r\n", head.content_length));
    }
    match (head.version, head.keep_alive) {
        (Version::Http11, false) => out.push_str("Connection: close\r\n"),
        (Version::Http10, true) => out.push_str("Connection: keep-alive\r\n"),
        _ => {}
    }
    if head.expect_continue {
        out.push_str("Expect: 100-continue\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}
