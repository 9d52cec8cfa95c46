//! `protocol::parse_request` on arbitrary bytes; see `check_request` in `../checks.rs`.
#![no_main]

#[allow(dead_code)] // each target uses one check
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_request(data));
