//! Fuzzes the TCP listen-address parser with the invariants of `checks/listen_addr.rs`.

#![no_main]

#[path = "../../src/tcp/addr.rs"]
#[allow(dead_code, unreachable_pub)]
mod addr;
#[path = "../checks/listen_addr.rs"]
mod listen_addr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| listen_addr::check(data));
