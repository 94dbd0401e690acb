//! Fuzzes the http example's request parser with the invariants of `checks/http_request.rs`.

#![no_main]

#[path = "../checks/http_request.rs"]
mod http_checks;
#[path = "../../examples/http/request.rs"]
#[allow(dead_code)]
mod request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| http_checks::check(data));
