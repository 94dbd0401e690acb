//! The fuzz corpora of the examples' parsers (`fuzz/corpus/<target>/`) as ordinary tests on
//! stable: every file goes through the same invariant checks as the fuzz targets
//! (`fuzz/checks/`), so what the fuzzer once found stays fixed.

#[path = "../src/tcp/addr.rs"]
#[allow(dead_code, unreachable_pub)]
mod addr;
#[path = "../fuzz/checks/http_request.rs"]
mod http_checks;
#[path = "../fuzz/checks/listen_addr.rs"]
mod listen_addr_checks;
#[path = "../examples/http/request.rs"]
#[allow(dead_code)]
mod request;
#[path = "../examples/kv/resp.rs"]
#[allow(dead_code)]
mod resp;
#[path = "../fuzz/checks/resp.rs"]
mod resp_checks;

use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>`; returns how many there were.
fn run_corpus(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "the checks failed on {}", path.display());
        files += 1;
    }
    files
}

#[test]
fn resp_corpus_keeps_the_parser_invariants() {
    assert!(run_corpus("resp", resp_checks::check) >= 10);
}

#[test]
fn http_request_corpus_keeps_the_parser_invariants() {
    assert!(run_corpus("http_request", http_checks::check) >= 10);
}

#[test]
fn listen_addr_corpus_keeps_the_parser_invariants() {
    assert!(run_corpus("listen_addr", listen_addr_checks::check) >= 10);
}
