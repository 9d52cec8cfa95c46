//! `KeyRing::parse` on arbitrary UTF-8; see `check_keyring` in `../checks.rs`.
#![no_main]

#[allow(dead_code)] // each target uses one check
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        checks::check_keyring(text);
    }
});
