//! `stream::open` on arbitrary bytes with the kit's key ring; see `check_open` in
//! `../checks.rs`.
#![no_main]

use std::sync::LazyLock;

use ringcrypt::keys::KeyRing;

#[allow(dead_code)] // each target uses one check
#[path = "../checks.rs"]
mod checks;

/// Parsed once: the ring is fixed, and parsing it per input would only slow the fuzzer.
static RING: LazyLock<KeyRing> = LazyLock::new(checks::test_ring);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_open(&RING, data);
});
