//! The invariants the fuzz targets check, in one place: each `fuzz_targets/*.rs` is a
//! one-line `fuzz_target!` around a function here, and `tests/fuzz_corpus.rs` replays the
//! committed corpus and crash artifacts through the same functions on stable Rust, so a
//! finding stays a regression test after the fuzzer is gone.
//!
//! Every function panics (through `assert!`) when an invariant breaks and returns normally
//! otherwise; "never panics" for the code under test is checked by calling it here.

use ringcrypt::Code;
use ringcrypt::format::{Header, Layout};
use ringcrypt::keys::KeyRing;
use ringcrypt::limits::{BLOCK_BYTES, CHUNK_LOG2_MAX, CHUNK_LOG2_MIN, HEADER_BYTES, TAG_BYTES};
use ringcrypt::protocol::{SparePaths, encode_request, parse_request, parse_request_reusing};
use ringcrypt::stream;

/// The kit's key ring (`tests/vectors/keyring.toml`), inlined so the `open` target needs no
/// file and no 0600 mode. TEST KEYS ONLY, PUBLIC: secret = SHA-256("ringcrypt test key " +
/// name). `stranger` is left out on purpose, as in the kit.
pub const TEST_RING_TOML: &str = r#"
default = "alpha"

[[key]]
name = "alpha"
secret = "6d2f8d6ed16b9e769d0ed0040ad334c30349c70c8959e911358071ae7af6c797"
state = "active"

[[key]]
name = "beta"
secret = "c17b8017a8a148ea09372b746d63b8134bbf602bde33b05c1c49eb01d2635b25"
state = "active"

[[key]]
name = "gamma"
secret = "a582be04ccaecd9823bf64332185e22cf24da47d95690b4b8149a4ef2984ba8a"
state = "decrypt-only"

[[key]]
name = "old"
secret = "84e96aa5383f4b1282302b042d8e1fd6e868b19114502646daa372d910334b04"
state = "retired"

[[key]]
name = "legacy"
passphrase = "correct horse battery staple"
iter = 10000

[[key]]
name = "legacy-fast"
passphrase = "hunter2"
iter = 1000
"#;

/// The fixed ring the `open` target decrypts with.
pub fn test_ring() -> KeyRing {
    // A constant that the unit tests of `keys` also accept; failing here is a broken build.
    KeyRing::parse(TEST_RING_TOML, "fuzz test ring").expect("the constant test ring parses")
}

/// `header`: `Header::parse` on any bytes. When it parses, the header is the first 96 bytes
/// exactly (`to_bytes` gives them back) and its fields are in range; when it does not, the
/// error is `bad_format`.
pub fn check_header(data: &[u8]) {
    match Header::parse(data) {
        Ok(header) => {
            assert!(
                data.len() >= HEADER_BYTES,
                "parsed a header from {} bytes",
                data.len()
            );
            let bytes = header.to_bytes();
            assert_eq!(
                bytes[..],
                data[..HEADER_BYTES],
                "to_bytes differs from the input"
            );
            assert!((CHUNK_LOG2_MIN..=CHUNK_LOG2_MAX).contains(&header.chunk_log2));
            assert_eq!(header.chunk_bytes(), 1usize << header.chunk_log2);
            let again = Header::parse(&bytes).expect("to_bytes output parses");
            assert_eq!(again, header, "parse(to_bytes(h)) != h");
        }
        Err(err) => assert_eq!(err.code, Code::BadFormat, "header error: {err}"),
    }
}

/// `open`: `stream::open` over the whole input (its length as the file length) with
/// [`test_ring`]. It never panics; an error has one of the four codes a sealed file can earn;
/// on success every input byte was consumed, the key id is the header's and is in the ring,
/// the plaintext written is the length returned, and that length fits the record layout:
/// `full_records * C` plus the final record's ciphertext less 1..=16 padding bytes. Returns
/// whether the input opened, so the corpus replay can tell that successes are exercised.
pub fn check_open(ring: &KeyRing, data: &[u8]) -> bool {
    let mut input = data;
    let mut out = Vec::new();
    match stream::open(&mut input, data.len() as u64, ring, &mut out) {
        Ok((plain_len, key_id)) => {
            assert!(input.is_empty(), "{} input bytes left unread", input.len());
            assert_eq!(
                plain_len,
                out.len() as u64,
                "returned length != bytes written"
            );
            let header = Header::parse(data).expect("an opened file has a header");
            assert_eq!(key_id, header.key_id, "returned key id is not the header's");
            assert!(
                ring.opening_key(&key_id).is_ok(),
                "opened under a key the ring refuses"
            );
            let layout = Layout::for_file(data.len() as u64, header.chunk_log2)
                .expect("an opened file has a valid layout");
            let full_plain = layout.full_records * header.chunk_bytes() as u64;
            let final_plain = plain_len
                .checked_sub(full_plain)
                .expect("plaintext shorter than the full records");
            let final_ct = (layout.final_record_bytes - TAG_BYTES) as u64;
            assert!(
                final_plain < final_ct && final_plain + BLOCK_BYTES as u64 >= final_ct,
                "final plaintext {final_plain} bytes from {final_ct} ciphertext bytes"
            );
            let body = data.len() - HEADER_BYTES;
            let stride = header.chunk_bytes() + TAG_BYTES;
            assert_eq!(
                layout.full_records * stride as u64 + layout.final_record_bytes as u64,
                body as u64,
                "layout does not cover the body"
            );
            true
        }
        Err(err) => {
            assert!(
                matches!(
                    err.code,
                    Code::BadFormat | Code::UnknownKey | Code::KeyRetired | Code::AuthFailed
                ),
                "open error with unexpected code: {:?}: {err}",
                err.code
            );
            false
        }
    }
}

/// `request`: `parse_request` on any bytes never panics; `parse_request_reusing` (the
/// daemon's, into recycled path buffers) gives the same answer and keeps its pool bounded; a
/// request it accepts, encoded by `encode_request` and parsed again, gives the same id and
/// request, and the encoding is one line.
pub fn check_request(data: &[u8]) {
    let parsed = parse_request(data);
    // The daemon parses into recycled path buffers: with spares of any size and stale
    // contents, the answer must be the same, and the pool must stay within its bound.
    let mut spares = SparePaths::with_bound(2);
    spares.give(std::path::PathBuf::with_capacity(1));
    spares.give(std::path::PathBuf::from(
        "/stale/contents/of/an/earlier/job",
    ));
    let reused = parse_request_reusing(data, &mut spares);
    assert_eq!(reused.id, parsed.id, "the reusing parser read another id");
    assert_eq!(
        format!("{:?}", reused.request),
        format!("{:?}", parsed.request),
        "the reusing parser gave another answer"
    );
    if let Ok(ringcrypt::protocol::Request::File(spec)) = reused.request {
        spares.give(spec.input);
        spares.give(spec.output);
    }
    assert!(spares.len() <= 2, "the spare pool grew past its bound");
    if let Ok(request) = &parsed.request {
        let line = encode_request(parsed.id.as_ref(), request);
        let body = line
            .strip_suffix('\n')
            .expect("an encoded request ends in a newline");
        assert!(
            !body.contains('\n'),
            "encoded request spans lines: {line:?}"
        );
        let again = parse_request(body.as_bytes());
        assert_eq!(
            again.id, parsed.id,
            "id changed in the round trip: {line:?}"
        );
        assert_eq!(
            again.request.as_ref().ok(),
            Some(request),
            "request changed in the round trip: {line:?} -> {:?}",
            again.request
        );
    }
}

/// Hex-digit windows this long are treated as key material.
const SECRET_HEX_DIGITS: usize = 64;

/// `keyring`: `KeyRing::parse` on any UTF-8 never panics, and its error message never
/// contains a run of 64 hex digits that is also in the input (a secret, or anything pasted
/// where a secret could be, is never echoed).
pub fn check_keyring(text: &str) {
    match KeyRing::parse(text, "fuzz.toml") {
        Ok(ring) => {
            for entry in ring.entries() {
                let found = ring
                    .by_name(&entry.name)
                    .expect("every entry is found by name");
                assert_eq!(found.name, entry.name);
            }
        }
        Err(err) => {
            if let Some(run) = echoed_hex_run(&err.message, text) {
                panic!("key ring error echoes 64 hex digits from its input ({run}): {err}");
            }
        }
    }
}

/// The first 64-hex-digit window of `message` that also occurs in `input`.
fn echoed_hex_run<'a>(message: &'a str, input: &str) -> Option<&'a str> {
    let bytes = message.as_bytes();
    let mut run_start = 0;
    for end in 0..=bytes.len() {
        if end < bytes.len() && bytes[end].is_ascii_hexdigit() {
            continue;
        }
        // bytes[run_start..end] is a maximal run of hex digits (ASCII, so char boundaries).
        if end - run_start >= SECRET_HEX_DIGITS {
            for start in run_start..=end - SECRET_HEX_DIGITS {
                let window = &message[start..start + SECRET_HEX_DIGITS];
                if input.contains(window) {
                    return Some(window);
                }
            }
        }
        run_start = end + 1;
    }
    None
}
