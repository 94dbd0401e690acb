//! Fuzzes the kv example's RESP parser with the invariants of `checks/resp.rs`.

#![no_main]

#[path = "../../examples/kv/resp.rs"]
#[allow(dead_code)]
mod resp;
#[path = "../checks/resp.rs"]
mod resp_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| resp_checks::check(data));
