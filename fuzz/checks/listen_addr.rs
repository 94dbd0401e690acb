//! The invariants of the TCP listen-address parser (`src/tcp/addr.rs`), which the fuzz
//! target `listen_addr` and the stable test `tests/examples_fuzz_corpus.rs` both check.
//! Nothing here resolves a host name: names are only recognised, never looked up.

use super::addr::{Parsed, parse};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse(text) else {
        return;
    };
    match parsed {
        Parsed::AnyInterface(port) => {
            // Every spelling of a bare port means the same.
            for form in [format!("{port}"), format!(":{port}"), format!("*:{port}")] {
                assert_eq!(
                    parse(&form).unwrap(),
                    Parsed::AnyInterface(port),
                    "{form:?}"
                );
            }
        }
        Parsed::Literal(addr) => {
            // A written-out address reads back as itself.
            assert_eq!(parse(&addr.to_string()).unwrap(), Parsed::Literal(addr));
        }
        Parsed::Host(host) => {
            // A name keeps its port and is part of the input.
            let (name, port) = host.rsplit_once(':').expect("a port");
            assert!(!name.is_empty());
            assert!(port.parse::<u16>().is_ok());
            assert!(text.contains(host));
        }
    }
}
