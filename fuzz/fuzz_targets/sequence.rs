//! Drives a real socket with the operations the input's bytes choose (`checks/sequence.rs`):
//! bytes in order both ways, nothing lost, nothing hangs.

#![no_main]

#[path = "../checks/sequence.rs"]
mod sequence;

libfuzzer_sys::fuzz_target!(|data: &[u8]| sequence::run(data));
