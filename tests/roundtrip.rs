//! Round trips and property tests over the public API: sealing through `stream::SealWriter`
//! and opening with `stream::open` at the lengths where chunking can go wrong, random sizes,
//! write patterns and salts; every single-byte flip, truncation and extension of a sealed file
//! is refused with the code docs/format.md gives it; the sealer and opener refuse out-of-sequence
//! calls; and the `openssl` compatibility format round trips.

use std::io::{self, Read, Write};

use proptest::prelude::*;
use proptest::sample::Index;

use ringcrypt::Code;
use ringcrypt::format::{
    self, AuthFailed, Header, Layout, Opener, Sealer, SequenceError, final_record_bytes, sealed_len,
};
use ringcrypt::keys::{KeyMaterial, KeyRing};
use ringcrypt::openssl::{self, OpensslWriter};
use ringcrypt::stream::{self, SealWriter};

const SECRET: &str = "3c0ffee03c0ffee03c0ffee03c0ffee03c0ffee03c0ffee03c0ffee03c0ffee0";
const HEADER: usize = 96;
const TAG: usize = 32;

fn ring() -> KeyRing {
    KeyRing::parse(
        &format!("[[key]]\nname = \"test\"\nsecret = \"{SECRET}\"\n"),
        "roundtrip test ring",
    )
    .expect("test ring parses")
}

fn master(ring: &KeyRing) -> [u8; 32] {
    match &ring.by_name("test").expect("key").material {
        KeyMaterial::Secret(key) => *key.bytes(),
        KeyMaterial::Passphrase { .. } => unreachable!("the test key is a secret"),
    }
}

fn plaintext(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 8) ^ usize::from(seed)) as u8)
        .collect()
}

/// Seals `plain`, writing it into the `SealWriter` in pieces whose sizes cycle through
/// `pieces` (empty: one `write_all`).
fn seal(
    master: &[u8; 32],
    chunk_log2: u8,
    salt: [u8; 32],
    plain: &[u8],
    pieces: &[usize],
) -> Vec<u8> {
    let mut writer = SealWriter::new(Sealer::new(master, chunk_log2, salt), Vec::new()).unwrap();
    if pieces.is_empty() {
        writer.write_all(plain).unwrap();
    } else {
        let mut rest = plain;
        for &size in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let take = size.clamp(1, rest.len());
            writer.write_all(&rest[..take]).unwrap();
            rest = &rest[take..];
        }
    }
    let (file, written) = writer.finish().unwrap();
    assert_eq!(
        written,
        file.len() as u64,
        "finish reports the bytes written"
    );
    file
}

/// A reader that hands out at most `step` bytes per `read`, like a pipe or a socket.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Opens `file` (claiming `file_len` bytes) with `stream::open`; the plaintext on success.
fn open_len(ring: &KeyRing, file: &[u8], file_len: u64) -> Result<Vec<u8>, ringcrypt::Error> {
    let mut out = Vec::new();
    let (plain_len, key_id) = stream::open(&mut &file[..], file_len, ring, &mut out)?;
    assert_eq!(
        plain_len,
        out.len() as u64,
        "open reports the plaintext length"
    );
    assert_eq!(
        key_id,
        format::key_id(&master(ring)),
        "open reports the key id"
    );
    Ok(out)
}

fn open(ring: &KeyRing, file: &[u8]) -> Result<Vec<u8>, ringcrypt::Error> {
    open_len(ring, file, file.len() as u64)
}

// ---------------------------------------------------------------------------------------------
// Fixed lengths.

#[test]
fn round_trips_at_chunk_edges() {
    let ring = ring();
    let master = master(&ring);
    for chunk_log2 in [12u8, 16] {
        let c = 1usize << chunk_log2;
        for len in [
            0,
            1,
            15,
            16,
            17,
            c - 1,
            c,
            c + 1,
            8 * c - 1,
            8 * c,
            8 * c + 1,
            8 * c + 17,
        ] {
            let what = format!("chunk_log2 {chunk_log2}, len {len}");
            let plain = plaintext(len, chunk_log2);
            let file = seal(
                &master,
                chunk_log2,
                [len as u8; 32],
                &plain,
                &[1000, 7, 4099],
            );
            assert_eq!(
                file.len() as u64,
                sealed_len(len as u64, chunk_log2),
                "{what}"
            );
            let layout = Layout::for_file(file.len() as u64, chunk_log2).unwrap();
            assert_eq!(layout.full_records, (len / c) as u64, "{what}");
            assert_eq!(
                layout.final_record_bytes,
                final_record_bytes(len % c),
                "{what}"
            );
            let header = Header::parse(&file).unwrap();
            assert_eq!(header.chunk_log2, chunk_log2, "{what}");
            assert_eq!(header.key_id, format::key_id(&master), "{what}");
            assert_eq!(open(&ring, &file).unwrap(), plain, "{what}");
            // The same file read through a reader that returns a few bytes at a time.
            let mut out = Vec::new();
            let mut trickle = Trickle {
                data: &file,
                step: 777,
            };
            stream::open(&mut trickle, file.len() as u64, &ring, &mut out).unwrap();
            assert_eq!(out, plain, "{what}, trickled");
        }
    }
}

#[test]
fn final_record_and_sealed_len_arithmetic() {
    // PKCS#7 always adds 1..=16 bytes.
    assert_eq!(final_record_bytes(0), 16 + TAG);
    assert_eq!(final_record_bytes(15), 16 + TAG);
    assert_eq!(final_record_bytes(16), 32 + TAG);
    assert_eq!(final_record_bytes(4095), 4096 + TAG);
    assert_eq!(sealed_len(0, 12), (HEADER + 16 + TAG) as u64);
    assert_eq!(
        sealed_len(4096, 12),
        (HEADER + 4096 + TAG + 16 + TAG) as u64
    );
    assert_eq!(
        sealed_len(3 * 65536 + 100, 16),
        (HEADER + 3 * (65536 + TAG) + 112 + TAG) as u64
    );
    // Body lengths that no sealer writes.
    for body in [0usize, 1, 16, 47, 49, 4096 + TAG + 1, 4096 + TAG + 47] {
        assert_eq!(
            Layout::for_file((HEADER + body) as u64, 12),
            Err(AuthFailed),
            "body {body}"
        );
    }
    assert_eq!(Layout::for_file(95, 12), Err(AuthFailed));
}

// ---------------------------------------------------------------------------------------------
// Random round trips.

/// (chunk_log2, plaintext length): any length up to 20 * 4 KiB, or within 17 bytes of a
/// multiple of C (where records and batches begin and end).
fn sizes() -> impl Strategy<Value = (u8, usize)> {
    prop_oneof![Just(12u8), Just(13u8), Just(16u8)].prop_flat_map(|chunk_log2| {
        let c = 1usize << chunk_log2;
        let near = (0usize..=9, -17isize..=17)
            .prop_map(move |(k, delta)| (k * c).saturating_add_signed(delta));
        (Just(chunk_log2), prop_oneof![0usize..=20 * 4096, near])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_round_trips_are_exact_and_deterministic(
        (chunk_log2, len) in sizes(),
        pieces in prop::collection::vec(1usize..=9000, 1..6),
        salt in any::<[u8; 32]>(),
        other_salt in any::<[u8; 32]>(),
        seed in any::<u8>(),
        step in 1usize..=5000,
    ) {
        let ring = ring();
        let master = master(&ring);
        let plain = plaintext(len, seed);
        let file = seal(&master, chunk_log2, salt, &plain, &pieces);
        prop_assert_eq!(file.len() as u64, sealed_len(len as u64, chunk_log2));
        prop_assert_eq!(&file[32..64], &salt[..]);
        prop_assert!(open(&ring, &file).unwrap() == plain, "round trip");

        // Same key, salt and plaintext, written differently: the same bytes.
        let again = seal(&master, chunk_log2, salt, &plain, &[]);
        prop_assert!(again == file, "sealing is not deterministic in key + salt");
        // `fill_from` from a reader that trickles agrees with `Write`.
        let mut by_fill =
            SealWriter::new(Sealer::new(&master, chunk_log2, salt), Vec::new()).unwrap();
        let read = by_fill.fill_from(&mut Trickle { data: &plain, step }).unwrap();
        prop_assert_eq!(read, len as u64);
        let (filled, _) = by_fill.finish().unwrap();
        prop_assert!(filled == file, "fill_from differs from write");

        // A different salt: different bytes everywhere after the key id.
        prop_assume!(other_salt != salt);
        let salted = seal(&master, chunk_log2, other_salt, &plain, &pieces);
        prop_assert_eq!(salted.len(), file.len());
        prop_assert!(salted != file);
        prop_assert_eq!(&salted[..32], &file[..32]);
        prop_assert!(salted[64..96] != file[64..96], "header tag ignores the salt");
        prop_assert!(salted[96..112] != file[96..112], "first ciphertext block ignores the salt");
        prop_assert!(open(&ring, &salted).unwrap() == plain);
    }
}

// ---------------------------------------------------------------------------------------------
// Tampering.

/// The code a file must fail with when byte `at` of `file` is replaced by `new`.
fn expected_code_for_flip(at: usize, new: u8) -> Code {
    match at {
        // chunk_log2 still in range: the header parses, and its tag fails.
        10 if (12..=24).contains(&new) => Code::AuthFailed,
        0..16 => Code::BadFormat,
        16..32 => Code::UnknownKey,
        _ => Code::AuthFailed,
    }
}

fn check_flip(ring: &KeyRing, file: &[u8], at: usize, mask: u8) -> Result<(), String> {
    let mut bad = file.to_vec();
    bad[at] ^= mask;
    let want = expected_code_for_flip(at, bad[at]);
    match open(ring, &bad) {
        Ok(_) => Err(format!(
            "flip {mask:#04x} at byte {at} of {} opened",
            file.len()
        )),
        Err(err) if err.code == want => Ok(()),
        Err(err) => Err(format!(
            "flip {mask:#04x} at byte {at} of {}: got {} ({}), want {want}",
            file.len(),
            err.code,
            err.message
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_single_byte_flip_is_refused(
        len in 0usize..=3 * 4096,
        salt in any::<[u8; 32]>(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let ring = ring();
        let file = seal(&master(&ring), 12, salt, &plaintext(len, 1), &[]);
        let at = at.index(file.len());
        if let Err(why) = check_flip(&ring, &file, at, mask) {
            return Err(TestCaseError::fail(why));
        }
    }

    #[test]
    fn truncation_is_refused(
        len in 0usize..=3 * 4096,
        cut in any::<Index>(),
    ) {
        let ring = ring();
        let file = seal(&master(&ring), 12, [4; 32], &plaintext(len, 2), &[]);
        let cut = cut.index(file.len());
        let err = open(&ring, &file[..cut]).unwrap_err();
        let want = if cut < HEADER { Code::BadFormat } else { Code::AuthFailed };
        prop_assert_eq!(err.code, want, "cut at {} of {}", cut, file.len());
        // The same prefix while claiming the whole length (the file shrank while reading).
        let err = open_len(&ring, &file[..cut], file.len() as u64).unwrap_err();
        prop_assert_eq!(err.code, want, "cut at {} of {}, full length claimed", cut, file.len());
    }

    #[test]
    fn appended_bytes_are_refused(
        len in 0usize..=3 * 4096,
        extra in prop::collection::vec(any::<u8>(), 1..=4200),
    ) {
        let ring = ring();
        let file = seal(&master(&ring), 12, [5; 32], &plaintext(len, 3), &[]);
        let mut longer = file.clone();
        longer.extend_from_slice(&extra);
        let err = open(&ring, &longer).unwrap_err();
        prop_assert_eq!(err.code, Code::AuthFailed, "{} bytes appended", extra.len());
        // The file grew after its length was taken: the bytes past the end are noticed.
        let err = open_len(&ring, &longer, file.len() as u64).unwrap_err();
        prop_assert_eq!(err.code, Code::AuthFailed, "{} bytes past the stated end", extra.len());
    }
}

#[test]
fn every_byte_flip_of_small_files_is_refused() {
    let ring = ring();
    let master = master(&ring);
    // A one-record file and a file with one full record (every header, record and tag byte).
    for len in [0usize, 100, 4096 + 20] {
        let file = seal(&master, 12, [6; 32], &plaintext(len, 4), &[]);
        for at in 0..file.len() {
            for mask in [0x01, 0x80] {
                if let Err(why) = check_flip(&ring, &file, at, mask) {
                    panic!("{why}");
                }
            }
        }
    }
}

#[test]
fn records_cannot_be_reordered_dropped_or_replayed() {
    let ring = ring();
    let master = master(&ring);
    let stride = 4096 + TAG;
    let plain = plaintext(3 * 4096 + 50, 5);
    let file = seal(&master, 12, [7; 32], &plain, &[]);
    let record = |i: usize| &file[HEADER + i * stride..HEADER + (i + 1) * stride];
    let tail = &file[HEADER + 3 * stride..];

    let mut swapped = file[..HEADER].to_vec();
    for i in [1, 0, 2] {
        swapped.extend_from_slice(record(i));
    }
    swapped.extend_from_slice(tail);
    let mut dropped = file[..HEADER].to_vec();
    for i in [0, 2] {
        dropped.extend_from_slice(record(i));
    }
    dropped.extend_from_slice(tail);
    let mut replayed = file[..HEADER + 3 * stride].to_vec();
    replayed.extend_from_slice(record(2));
    replayed.extend_from_slice(tail);
    // The final record dropped: what is left ends with a non-final record.
    let unfinished = file[..HEADER + 3 * stride].to_vec();
    // A record moved to another file with the same key (different salt).
    let other = seal(&master, 12, [8; 32], &plain, &[]);
    let mut spliced = file.clone();
    spliced[HEADER..HEADER + stride].copy_from_slice(&other[HEADER..HEADER + stride]);

    for (name, bad) in [
        ("swapped", swapped),
        ("dropped", dropped),
        ("replayed", replayed),
        ("unfinished", unfinished),
        ("spliced", spliced),
    ] {
        assert_eq!(
            open(&ring, &bad).unwrap_err().code,
            Code::AuthFailed,
            "{name}"
        );
    }
}

#[test]
fn wrong_key_is_unknown_and_same_id_wrong_header_tag_fails() {
    let ring = ring();
    let file = seal(&[0x42; 32], 12, [9; 32], b"secret words", &[]);
    assert_eq!(open(&ring, &file).unwrap_err().code, Code::UnknownKey);
    let mut no_magic = seal(&master(&ring), 12, [9; 32], b"secret words", &[]);
    no_magic[..8].copy_from_slice(b"Salted__");
    assert_eq!(open(&ring, &no_magic).unwrap_err().code, Code::BadFormat);
}

// ---------------------------------------------------------------------------------------------
// Sequencing of the sealer and the opener.

#[test]
fn opener_refuses_records_after_the_final_one() {
    let ring = ring();
    let master = master(&ring);
    let plain = plaintext(2 * 4096 + 10, 6);
    let file = seal(&master, 12, [10; 32], &plain, &[]);
    let header = Header::parse(&file).unwrap();
    let stride = 4096 + TAG;
    let mut opener = Opener::new(&header, &master).unwrap();
    assert_eq!(opener.record_bytes(), stride);

    // The final record may not be opened as a full one, nor a full one as the final one.
    let mut last = file[HEADER + 2 * stride..].to_vec();
    let mut first = file[HEADER..HEADER + stride].to_vec();
    assert_eq!(opener.open_final(&mut first.clone()), Err(AuthFailed));

    opener.open_full(&mut first).unwrap();
    assert_eq!(first[..4096], plain[..4096]);
    let mut second = file[HEADER + stride..HEADER + 2 * stride].to_vec();
    opener.open_full(&mut second).unwrap();
    assert!(!opener.is_finished());
    let n = opener.open_final(&mut last).unwrap();
    assert_eq!(last[..n], plain[2 * 4096..]);
    assert!(opener.is_finished());

    let mut again = file[HEADER + 2 * stride..].to_vec();
    assert_eq!(opener.open_final(&mut again), Err(AuthFailed));
    assert_eq!(opener.open_full(&mut []), Err(AuthFailed));
    let mut full = file[HEADER..HEADER + stride].to_vec();
    assert_eq!(opener.open_full(&mut full), Err(AuthFailed));
    assert!(opener.is_finished());
}

#[test]
fn opener_rejects_misshapen_records() {
    let ring = ring();
    let master = master(&ring);
    let file = seal(&master, 12, [11; 32], &plaintext(4096 + 10, 7), &[]);
    let header = Header::parse(&file).unwrap();
    let mut opener = Opener::new(&header, &master).unwrap();
    let mut short = file[HEADER..HEADER + 4096].to_vec();
    assert_eq!(opener.open_full(&mut short), Err(AuthFailed));
    let mut tiny = vec![0u8; TAG + 8];
    assert_eq!(opener.open_final(&mut tiny), Err(AuthFailed));
    let mut too_long = vec![0u8; 4096 + TAG + 16];
    assert_eq!(opener.open_final(&mut too_long), Err(AuthFailed));
    // None of that consumed a record: the file still opens from here.
    let mut first = file[HEADER..HEADER + 4096 + TAG].to_vec();
    opener.open_full(&mut first).unwrap();
    let mut last = file[HEADER + 4096 + TAG..].to_vec();
    assert_eq!(opener.open_final(&mut last), Ok(10));
}

#[test]
fn sealer_refuses_a_second_final_record() {
    let master = master(&ring());
    let mut sealer = Sealer::new(&master, 12, [12; 32]);
    let stride = sealer.record_bytes();
    assert_eq!(stride, 4096 + TAG);
    let mut bad = vec![0u8; stride + 1];
    assert_eq!(sealer.seal_full(&mut bad), Err(SequenceError::BadLength));
    let mut too_big = vec![0u8; 4096 + 64];
    assert_eq!(
        sealer.seal_final(&mut too_big, 4096),
        Err(SequenceError::BadLength)
    );
    let mut cramped = vec![0u8; 40];
    assert_eq!(
        sealer.seal_final(&mut cramped, 10),
        Err(SequenceError::BadLength)
    );
    let mut records = vec![0u8; 2 * stride];
    sealer.seal_full(&mut records).unwrap();
    let mut last = vec![0u8; final_record_bytes(5)];
    last[..5].copy_from_slice(b"hello");
    assert_eq!(sealer.seal_final(&mut last, 5), Ok(final_record_bytes(5)));
    assert!(sealer.is_finished());
    assert_eq!(
        sealer.seal_final(&mut last, 5),
        Err(SequenceError::Finished)
    );
    assert_eq!(sealer.seal_final(&mut [], 0), Err(SequenceError::Finished));
    assert_eq!(sealer.seal_full(&mut []), Err(SequenceError::Finished));
    let mut more = vec![0u8; stride];
    assert_eq!(sealer.seal_full(&mut more), Err(SequenceError::Finished));
}

// ---------------------------------------------------------------------------------------------
// The openssl compatibility format.

fn openssl_seal(plain: &[u8], pieces: &[usize], salt: [u8; 8], pass: &str) -> Vec<u8> {
    let mut writer = OpensslWriter::new(Vec::new(), pass, 1, salt).unwrap();
    let mut rest = plain;
    for &size in pieces.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let take = size.clamp(1, rest.len());
        writer.write_all(&rest[..take]).unwrap();
        rest = &rest[take..];
    }
    let (file, written) = writer.finish().unwrap();
    assert_eq!(written, file.len() as u64);
    file
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn openssl_format_round_trips(
        len in prop_oneof![0usize..=200_000, (0usize..=4, -17isize..=17)
            .prop_map(|(k, d)| (k * 65536).saturating_add_signed(d))],
        pieces in prop::collection::vec(1usize..=70_000, 1..5),
        salt in any::<[u8; 8]>(),
        seed in any::<u8>(),
        step in 1usize..=100_000,
    ) {
        let plain = plaintext(len, seed);
        let file = openssl_seal(&plain, &pieces, salt, "correct horse");
        prop_assert_eq!(file.len(), 16 + (len / 16 + 1) * 16);
        prop_assert_eq!(&file[..8], b"Salted__");
        prop_assert_eq!(&file[8..16], &salt[..]);
        let mut out = Vec::new();
        let n = openssl::decrypt(&mut Trickle { data: &file, step }, &mut out, "correct horse", 1)
            .unwrap();
        prop_assert_eq!(n, len as u64);
        prop_assert!(out == plain, "openssl round trip");
        // Writing in other pieces gives the same bytes.
        let whole = openssl_seal(&plain, &[usize::MAX], salt, "correct horse");
        prop_assert!(whole == file);
    }
}

#[test]
fn openssl_format_agrees_with_cbc_and_pbkdf2() {
    use aes::Aes256;
    use aes::cipher::block_padding::Pkcs7;
    use aes::cipher::{BlockEncryptMut, KeyIvInit};
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    // PBKDF2-HMAC-SHA256 with one iteration is a single HMAC: T1 = HMAC(P, S || INT(1)), and
    // key || IV needs two blocks, T1 || T2.
    let (pass, salt) = ("pw", [1, 2, 3, 4, 5, 6, 7, 8]);
    let block = |i: u32| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pass.as_bytes()).unwrap();
        mac.update(&salt);
        mac.update(&i.to_be_bytes());
        mac.finalize().into_bytes()
    };
    let mut material = block(1).to_vec();
    material.extend_from_slice(&block(2));
    let (key, iv) = (&material[..32], &material[32..48]);
    let plain = plaintext(1000, 8);
    let mut expected = vec![0u8; 1008];
    expected[..1000].copy_from_slice(&plain);
    cbc::Encryptor::<Aes256>::new_from_slices(key, iv)
        .unwrap()
        .encrypt_padded_mut::<Pkcs7>(&mut expected, 1000)
        .unwrap();
    let file = openssl_seal(&plain, &[333], salt, pass);
    assert_eq!(file[..16], *b"Salted__\x01\x02\x03\x04\x05\x06\x07\x08");
    assert!(
        file[16..] == expected[..],
        "ciphertext differs from PBKDF2 + CBC"
    );
    let mut out = Vec::new();
    assert_eq!(
        openssl::decrypt(&mut &file[..], &mut out, pass, 1),
        Ok(1000)
    );
    assert_eq!(out, plain);
    // A wrong passphrase is caught by the padding, usually; it never yields the plaintext.
    let mut out = Vec::new();
    if let Ok(n) = openssl::decrypt(&mut &file[..], &mut out, "wrong", 1) {
        assert_ne!(out[..n as usize], plain[..]);
    }
}

// ---------------------------------------------------------------------------------------------
// Batching: the daemon drives `format` with batches of its own sizes.

#[test]
fn sealer_and_opener_accept_any_batching() {
    let ring = ring();
    let master = master(&ring);
    let c = 4096usize;
    let stride = c + TAG;
    let plain = plaintext(19 * c + 333, 9);
    let expected = seal(&master, 12, [13; 32], &plain, &[]);
    // Seal 19 records as 11 (more than one group of eight, in one call) + 0 + 5 + 3.
    for splits in [[11usize, 0, 5, 3], [1, 7, 9, 2], [19, 0, 0, 0]] {
        let mut sealer = Sealer::new(&master, 12, [13; 32]);
        let mut file = sealer.header().to_bytes().to_vec();
        let mut at = 0usize;
        for count in splits {
            let mut records = vec![0u8; count * stride];
            for (i, record) in records.chunks_exact_mut(stride).enumerate() {
                record[..c].copy_from_slice(&plain[(at + i) * c..(at + i + 1) * c]);
            }
            sealer.seal_full(&mut records).unwrap();
            file.extend_from_slice(&records);
            at += count;
        }
        let mut last = vec![0u8; final_record_bytes(333)];
        last[..333].copy_from_slice(&plain[19 * c..]);
        let n = sealer.seal_final(&mut last, 333).unwrap();
        file.extend_from_slice(&last[..n]);
        assert!(file == expected, "sealed in batches {splits:?}");

        // Open with the same uneven batches.
        let header = Header::parse(&file).unwrap();
        let mut opener = Opener::new(&header, &master).unwrap();
        let mut got = Vec::new();
        let mut at = HEADER;
        for count in splits {
            let mut records = file[at..at + count * stride].to_vec();
            opener.open_full(&mut records).unwrap();
            for record in records.chunks_exact(stride) {
                got.extend_from_slice(&record[..c]);
            }
            at += count * stride;
        }
        let mut last = file[at..].to_vec();
        let n = opener.open_final(&mut last).unwrap();
        got.extend_from_slice(&last[..n]);
        assert!(got == plain, "opened in batches {splits:?}");
    }
}

#[test]
fn no_plaintext_of_a_failing_batch_is_written() {
    let ring = ring();
    let master = master(&ring);
    let c = 4096usize;
    let stride = c + TAG;
    let file = seal(&master, 12, [14; 32], &plaintext(20 * c + 5, 10), &[]);
    for record in [0usize, 3, 7, 8, 12, 16, 19, 20] {
        let mut bad = file.clone();
        bad[HEADER + record * stride + 10] ^= 1;
        let mut out = Vec::new();
        let err = stream::open(&mut &bad[..], bad.len() as u64, &ring, &mut out).unwrap_err();
        assert_eq!(err.code, Code::AuthFailed, "record {record}");
        // Batches of eight are verified before any of their plaintext is written, and the
        // final record's plaintext only after its tag.
        let written = if record == 20 {
            20 * c
        } else {
            record / 8 * 8 * c
        };
        assert_eq!(out.len(), written, "record {record}");
    }
}

#[test]
fn key_states_decide_who_may_open() {
    let text = |state: &str| {
        format!("[[key]]\nname = \"test\"\nsecret = \"{SECRET}\"\nstate = \"{state}\"\n")
    };
    let file = seal(&master(&ring()), 12, [15; 32], b"kept", &[]);
    let decrypt_only = KeyRing::parse(&text("decrypt-only"), "t").unwrap();
    assert_eq!(open(&decrypt_only, &file).unwrap(), b"kept");
    let retired = KeyRing::parse(&text("retired"), "t").unwrap();
    let mut out = Vec::new();
    let err = stream::open(&mut &file[..], file.len() as u64, &retired, &mut out).unwrap_err();
    assert_eq!(err.code, Code::KeyRetired);
    assert!(out.is_empty());
}

#[test]
fn openssl_short_or_misaligned_input_is_bad_format() {
    let plain = plaintext(70_000, 11);
    let file = openssl_seal(&plain, &[4096], [3; 8], "pw");
    // Cuts inside the header, at zero ciphertext, and mid-block near the start, across the
    // decryptor's 64 KiB buffer boundary and at the very end.
    let cuts = [
        0,
        7,
        8,
        15,
        16,
        17,
        31,
        16 + 65_536 + 5,
        16 + 65_552 + 1,
        file.len() - 1,
    ];
    for cut in cuts {
        let mut out = Vec::new();
        let err = openssl::decrypt(&mut &file[..cut], &mut out, "pw", 1).unwrap_err();
        assert_eq!(err.code, Code::BadFormat, "cut at {cut}");
    }
    for extra in [1usize, 5, 15] {
        let mut longer = file.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        let err = openssl::decrypt(&mut &longer[..], &mut Vec::new(), "pw", 1).unwrap_err();
        assert_eq!(err.code, Code::BadFormat, "{extra} bytes appended");
    }
    let mut not_salted = file.clone();
    not_salted[..8].copy_from_slice(b"Salted_!");
    let err = openssl::decrypt(&mut &not_salted[..], &mut Vec::new(), "pw", 1).unwrap_err();
    assert_eq!(err.code, Code::BadFormat);
    // A whole block cut off the end: the padding is gone, so this fails as a wrong key would
    // (the format is unauthenticated, so that is all it can say), unless the new last block
    // happens to end in bytes that look like padding; then it decrypts to a shorter text.
    let mut out = Vec::new();
    match openssl::decrypt(&mut &file[..file.len() - 16], &mut out, "pw", 1) {
        Err(err) => assert_eq!(err.code, Code::AuthFailed),
        Ok(n) => assert!(n < plain.len() as u64),
    }
}
