//! Invariants of the kv example's RESP parser, checked on any input: by the fuzz target
//! `resp`, and on stable by `tests/examples_fuzz_corpus.rs` for every corpus file.
//!
//! The including crate declares the parser as `crate::resp`.

use crate::resp::{self, Limits, Parser, ProtocolError};

/// Small limits, so that short inputs reach every limit too.
const SMALL: Limits = Limits {
    max_bulk_len: 40,
    max_args: 6,
    max_line: 24,
    max_query: 100,
};

/// Panics unless, for `data` under both the default and small limits:
/// - parsing it whole, a byte at a time, and in pieces whose sizes come from `data` itself
///   give the same commands and the same error;
/// - no command breaks a limit;
/// - the commands found, written back as arrays of bulk strings, parse to themselves.
pub fn check(data: &[u8]) {
    for limits in [Limits::default(), SMALL] {
        let whole = resp::parse_all(data, limits);
        let byte_by_byte = parse_in_pieces(data, limits, &mut std::iter::repeat(1));
        assert_eq!(byte_by_byte, whole, "one byte at a time");
        let mut sizes = data.iter().map(|&b| 1 + usize::from(b % 17)).cycle();
        assert_eq!(
            parse_in_pieces(data, limits, &mut sizes),
            whole,
            "in pieces"
        );

        let (commands, _) = &whole;
        let mut encoded = Vec::new();
        for command in commands {
            assert!(command.len() <= limits.max_args, "too many arguments");
            let total: usize = command.iter().map(Vec::len).sum();
            assert!(total <= limits.max_query.max(limits.max_line));
            encode(&mut encoded, command);
        }
        let again = resp::parse_all(&encoded, Limits::default());
        assert_eq!(&again.0, commands, "re-encoded commands parse differently");
        assert_eq!(again.1, None, "re-encoded commands do not parse");
    }
}

/// Feeds `data` to one parser in pieces of the sizes `sizes` yields.
fn parse_in_pieces(
    data: &[u8],
    limits: Limits,
    sizes: &mut dyn Iterator<Item = usize>,
) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
    let mut parser = Parser::new(limits);
    let mut commands = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (mut piece, after) = rest.split_at(size);
        rest = after;
        loop {
            match parser.parse(&mut piece) {
                Ok(Some(command)) => commands.push(command),
                Ok(None) => break,
                Err(e) => return (commands, Some(e)),
            }
        }
    }
    (commands, None)
}

/// Appends `command` as an array of bulk strings.
fn encode(out: &mut Vec<u8>, command: &[Vec<u8>]) {
    resp::array(out, command.len());
    for arg in command {
        resp::bulk(out, Some(arg));
    }
}
