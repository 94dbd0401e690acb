//! The socket-sequence fuzzer's invariants on stable (`fuzz/checks/sequence.rs`): its
//! corpus, then seeded random sequences, each driving a real socket through readers started,
//! stopped and raced, writes both ways, shutdowns and drops, with every byte checked in
//! order at the end. A binary of its own, because it counts the process's descriptors: after
//! every sequence the count is back where it started.

#[path = "../fuzz/checks/sequence.rs"]
mod sequence;

use std::path::Path;
use std::time::{Duration, Instant};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Runs `sequence::run` on `data`, failing the test if it takes longer than a minute.
fn run_bounded(data: Vec<u8>, what: &str) {
    let (done_tx, done) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        sequence::run(&data);
        let _ = done_tx.send(());
    });
    match done.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = runner.join() {
                eprintln!("failing sequence: {what}");
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} hung"),
    }
}

/// A small deterministic generator (xorshift), so a failing seed can be replayed.
fn random_sequence(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn sequences_keep_every_byte_in_order_and_leak_nothing() {
    let before = open_fds();
    let dir = std::env::var("IOTASK_SEQUENCE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sequence"));
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run_bounded(std::fs::read(&path).unwrap(), &path.display().to_string());
        files += 1;
    }
    assert!(files >= 1, "the corpus has {files} files");

    let count: u64 = std::env::var("IOTASK_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let start = Instant::now();
    for seed in 0..count {
        let len = 40 + (seed as usize * 37) % 600;
        run_bounded(random_sequence(seed, len), &format!("seed {seed}"));
    }
    eprintln!(
        "{files} corpus files and {count} random sequences in {:.1?}",
        start.elapsed()
    );
    // Closed sockets may linger for a moment in the loops of I/O tasks already shut down:
    // none should, as `shutdown` returns after closing everything.
    assert_eq!(open_fds(), before, "descriptors leaked");
}
