//! Known answers from public documents, then RCRYPT v1 rebuilt from those primitives.
//!
//! The public vectors (NIST SP 800-38A, RFC 4231, RFC 5869) pin the primitives the format is
//! built from, and check that the multi-lane CBC engine in `lanes` is plain CBC in every lane.
//! The last tests rebuild docs/format.md step by step from `aes`, `cbc`, `hmac` and `hkdf` alone and
//! require the library's sealer to produce the same bytes, so a mistake in the library's
//! key derivation, IVs, tag input or record layout cannot hide behind its own round trip.

use aes::Aes256;
use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, KeyInit, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;

use ringcrypt::format::{self, Header, Layout, Opener, Sealer};
use ringcrypt::lanes::{Block, chunk_ivs, decrypt_chain, encrypt_lanes};
use ringcrypt::stream::SealWriter;

type HmacSha256 = Hmac<Sha256>;

/// Decodes hex, ignoring whitespace, so vectors can be typed as the documents print them.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks_exact(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("bad hex {pair:?}"))
        })
        .collect()
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("length")
}

fn aes256(key: &[u8]) -> Aes256 {
    Aes256::new_from_slice(key).expect("32-byte key")
}

/// A small deterministic generator (SplitMix64), so "random" data is the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for piece in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            piece.copy_from_slice(&word[..piece.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NIST SP 800-38A, F.2.5 CBC-AES256.Encrypt and F.2.6 CBC-AES256.Decrypt.

const SP800_38A_KEY: &str = "603deb1015ca71be2b73aef0857d7781 1f352c073b6108d72d9810a30914dff4";
const SP800_38A_IV: &str = "000102030405060708090a0b0c0d0e0f";
const SP800_38A_PLAIN: &str = "6bc1bee22e409f96e93d7e117393172a
                               ae2d8a571e03ac9c9eb76fac45af8e51
                               30c81c46a35ce411e5fbc1191a0a52ef
                               f69f2445df4f9b17ad2b417be66c3710";
const SP800_38A_CIPHER: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd6
                                9cfc4e967edb808d679f777bc6702c7d
                                39f23369a9d9bacfa530e26304231461
                                b2eb05e2c39be9fcda6c19078c6a9d1b";

fn sp800_38a() -> (Aes256, Block, Vec<u8>, Vec<u8>) {
    let key = hex(SP800_38A_KEY);
    let iv = Block::clone_from_slice(&hex(SP800_38A_IV));
    (
        aes256(&key),
        iv,
        hex(SP800_38A_PLAIN),
        hex(SP800_38A_CIPHER),
    )
}

#[test]
fn sp800_38a_cbc_aes256_one_lane() {
    let (cipher, iv, plain, expected) = sp800_38a();
    let mut buf = plain.clone();
    encrypt_lanes(&cipher, &[iv], &mut buf, 64, 64);
    assert_eq!(buf, expected, "F.2.5 CBC-AES256.Encrypt");
    decrypt_chain(&cipher, &iv, &mut buf);
    assert_eq!(buf, plain, "F.2.6 CBC-AES256.Decrypt");
}

#[test]
fn sp800_38a_cbc_aes256_in_every_lane() {
    let (cipher, iv, plain, expected) = sp800_38a();
    // Stride 64: lanes back to back. Stride 80: a 16-byte gap after every lane, which the
    // engine must neither read into a chain nor write.
    for stride in [64usize, 80] {
        for lanes in 1..=8usize {
            let gap = 0xa5u8;
            let mut buf = vec![gap; lanes * stride];
            for lane in 0..lanes {
                buf[lane * stride..lane * stride + 64].copy_from_slice(&plain);
            }
            let ivs = vec![iv; lanes];
            encrypt_lanes(&cipher, &ivs, &mut buf, stride, 64);
            for lane in 0..lanes {
                let at = lane * stride;
                assert_eq!(
                    buf[at..at + 64],
                    expected[..],
                    "stride {stride}, {lanes} lanes, lane {lane}"
                );
                assert!(
                    buf[at + 64..at + stride].iter().all(|&b| b == gap),
                    "stride {stride}, {lanes} lanes: gap after lane {lane} was written"
                );
            }
            for lane in 0..lanes {
                let at = lane * stride;
                decrypt_chain(&cipher, &iv, &mut buf[at..at + 64]);
                assert_eq!(buf[at..at + 64], plain[..], "decrypt lane {lane}");
            }
        }
    }
}

#[test]
fn sp800_38a_cbc_crate_agrees() {
    let key = hex(SP800_38A_KEY);
    let iv = hex(SP800_38A_IV);
    let plain = hex(SP800_38A_PLAIN);
    let expected = hex(SP800_38A_CIPHER);
    let mut buf = plain.clone();
    cbc::Encryptor::<Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .encrypt_padded_mut::<NoPadding>(&mut buf, 64)
        .unwrap();
    assert_eq!(buf, expected);
    cbc::Decryptor::<Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .unwrap();
    assert_eq!(buf, plain);
}

// ---------------------------------------------------------------------------------------------
// RFC 4231: HMAC-SHA256, test cases 1-7.

#[test]
fn rfc4231_hmac_sha256() {
    let large_key = vec![0xaa; 131];
    let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        ),
        (
            hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
            vec![0xcd; 50],
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        ),
        (
            vec![0x0c; 20],
            b"Test With Truncation".to_vec(),
            // Truncated to 128 bits in the RFC.
            "a3b6167473100ee06e0c796c2955552b",
        ),
        (
            large_key.clone(),
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        (
            large_key,
            b"This is a test using a larger than block-size key and a larger than \
              block-size data. The key needs to be hashed before being used by the HMAC \
              algorithm."
                .to_vec(),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ];
    for (number, (key, data, expected)) in cases.iter().enumerate() {
        let expected = hex(expected);
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap();
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        assert_eq!(
            tag[..expected.len()],
            expected[..],
            "RFC 4231 test case {}",
            number + 1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 5869: HKDF-SHA256, test cases 1-3.

/// One RFC 5869 case: inputs, then the expected PRK and OKM in hex.
struct HkdfCase {
    ikm: Vec<u8>,
    salt: Vec<u8>,
    info: Vec<u8>,
    prk: &'static str,
    okm: &'static str,
}

#[test]
fn rfc5869_hkdf_sha256() {
    let range = |from: u8, to: u8| (from..=to).collect::<Vec<u8>>();
    let cases = [
        HkdfCase {
            ikm: vec![0x0b; 22],
            salt: range(0x00, 0x0c),
            info: range(0xf0, 0xf9),
            prk: "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
            okm: "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf
                  34007208d5b887185865",
        },
        HkdfCase {
            ikm: range(0x00, 0x4f),
            salt: range(0x60, 0xaf),
            info: range(0xb0, 0xff),
            prk: "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
            okm: "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c
                  59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71
                  cc30c58179ec3e87c14c01d5c1f3434f1d87",
        },
        HkdfCase {
            ikm: vec![0x0b; 22],
            salt: Vec::new(),
            info: Vec::new(),
            prk: "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
            okm: "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d
                  9d201395faa4b61a96c8",
        },
    ];
    for (number, case) in cases.iter().enumerate() {
        let number = number + 1;
        let HkdfCase {
            ikm,
            salt,
            info,
            prk,
            okm,
        } = case;
        let (prk_got, hkdf) = Hkdf::<Sha256>::extract(Some(salt), ikm);
        assert_eq!(prk_got[..], hex(prk)[..], "RFC 5869 case {number}: PRK");
        let expected = hex(okm);
        let mut out = vec![0u8; expected.len()];
        hkdf.expand(info, &mut out).unwrap();
        assert_eq!(out, expected, "RFC 5869 case {number}: OKM");
        if salt.is_empty() {
            // Case 3 says "salt = (0 octets)"; an absent salt is the same by RFC 5869 §2.2.
            let mut absent = vec![0u8; expected.len()];
            Hkdf::<Sha256>::new(None, ikm)
                .expand(info, &mut absent)
                .unwrap();
            assert_eq!(absent, expected, "RFC 5869 case {number}: no salt");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The multi-lane engine against the `cbc` crate.

#[test]
fn lanes_match_cbc_crate_chunk_by_chunk() {
    const CHUNK: usize = 4096;
    let mut rng = SplitMix(0x5eed);
    for lanes in 1..=8usize {
        // Stride = CHUNK (records back to back) and CHUNK + 32 (the sealer's record layout,
        // with a tag slot after each chunk that must be left alone).
        for stride in [CHUNK, CHUNK + 32] {
            let mut key = [0u8; 32];
            rng.fill(&mut key);
            let cipher = aes256(&key);
            let mut ivs = vec![Block::default(); lanes];
            for iv in &mut ivs {
                rng.fill(iv);
            }
            let mut plain = vec![0u8; lanes * stride];
            rng.fill(&mut plain);
            let mut buf = plain.clone();
            encrypt_lanes(&cipher, &ivs, &mut buf, stride, CHUNK);
            for (lane, iv) in ivs.iter().enumerate() {
                let at = lane * stride;
                let mut expected = plain[at..at + CHUNK].to_vec();
                cbc::Encryptor::<Aes256>::new_from_slices(&key, iv)
                    .unwrap()
                    .encrypt_padded_mut::<NoPadding>(&mut expected, CHUNK)
                    .unwrap();
                assert_eq!(
                    buf[at..at + CHUNK],
                    expected[..],
                    "{lanes} lanes, stride {stride}, lane {lane}"
                );
                assert_eq!(
                    buf[at + CHUNK..at + stride],
                    plain[at + CHUNK..at + stride],
                    "{lanes} lanes, stride {stride}: bytes after lane {lane} changed"
                );
                decrypt_chain(&cipher, iv, &mut buf[at..at + CHUNK]);
                assert_eq!(buf[at..at + CHUNK], plain[at..at + CHUNK], "lane {lane}");
            }
        }
    }
}

#[test]
fn chunk_ivs_are_ecb_of_the_big_endian_counter() {
    let cipher = aes256(&hex(SP800_38A_KEY));
    let indices = [0u64, 1, 7, 8, 1 << 40];
    let expected: Vec<Block> = indices
        .iter()
        .map(|&i| {
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(&i.to_be_bytes());
            let mut block = Block::from(block);
            cipher.encrypt_block(&mut block);
            block
        })
        .collect();
    for (&index, want) in indices.iter().zip(&expected) {
        let mut got = [Block::default()];
        chunk_ivs(&cipher, index, &mut got);
        assert_eq!(got[0], *want, "IV of chunk {index}");
    }
    // A batch: eight consecutive IVs starting at 2^40 - 3, in one call.
    let first = (1u64 << 40) - 3;
    let mut batch = [Block::default(); 8];
    chunk_ivs(&cipher, first, &mut batch);
    for (offset, got) in batch.iter().enumerate() {
        let mut want = [Block::default()];
        chunk_ivs(&cipher, first + offset as u64, &mut want);
        assert_eq!(*got, want[0], "batch IV {offset}");
    }
    assert_eq!(batch[3], expected[4], "2^40 inside a batch");
    // Pin the counter layout (first 8 bytes big-endian, last 8 zero) on a hand-made block.
    let mut manual = Block::clone_from_slice(&hex("00000100000000000000000000000000"));
    cipher.encrypt_block(&mut manual);
    assert_eq!(manual, expected[4]);
}

#[test]
fn key_id_is_truncated_hmac_of_the_label() {
    for master in [[0u8; 32], [0xff; 32], arr(&hex(SP800_38A_KEY))] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&master).unwrap();
        mac.update(b"ringcrypt key id v1");
        let full = mac.finalize().into_bytes();
        assert_eq!(format::key_id(&master)[..], full[..16]);
    }
}

// ---------------------------------------------------------------------------------------------
// RCRYPT v1 rebuilt from the primitives (docs/format.md).

/// An independent RCRYPT v1 sealer: every step written out from docs/format.md, using only the
/// primitive crates (no code from the library).
fn reference_seal(master: &[u8; 32], chunk_log2: u8, salt: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    let mut header = Vec::with_capacity(96);
    header.extend_from_slice(&[0x89, 0x52, 0x43, 0x52, 0x59, 0x50, 0x54, 0x0a]);
    header.extend_from_slice(&[1, 1, chunk_log2, 0, 0, 0, 0, 0]);
    let mut id_mac = <HmacSha256 as Mac>::new_from_slice(master).unwrap();
    id_mac.update(b"ringcrypt key id v1");
    header.extend_from_slice(&id_mac.finalize().into_bytes()[..16]);
    header.extend_from_slice(salt);
    assert_eq!(header.len(), 64);

    let mut info = b"ringcrypt v1".to_vec();
    info.extend_from_slice(&header[..16]);
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(Some(salt), master)
        .expand(&info, &mut okm)
        .unwrap();
    let (k_enc, k_mac) = okm.split_at(32);

    let mut tag_mac = <HmacSha256 as Mac>::new_from_slice(k_mac).unwrap();
    tag_mac.update(&header);
    let header_tag = tag_mac.finalize().into_bytes();
    header.extend_from_slice(&header_tag);

    let ecb = aes256(k_enc);
    let c = 1usize << chunk_log2;
    let n = plain.len() / c + 1;
    let mut file = header;
    for i in 0..n {
        let last = i == n - 1;
        let piece = &plain[i * c..if last { plain.len() } else { (i + 1) * c }];
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let mut iv = Block::from(iv);
        ecb.encrypt_block(&mut iv);
        let mut ct = vec![0u8; piece.len() + 16];
        ct[..piece.len()].copy_from_slice(piece);
        let encryptor = cbc::Encryptor::<Aes256>::new_from_slices(k_enc, &iv).unwrap();
        let ct_len = if last {
            encryptor
                .encrypt_padded_mut::<Pkcs7>(&mut ct, piece.len())
                .unwrap()
                .len()
        } else {
            encryptor
                .encrypt_padded_mut::<NoPadding>(&mut ct, piece.len())
                .unwrap()
                .len()
        };
        ct.truncate(ct_len);
        let mut mac = <HmacSha256 as Mac>::new_from_slice(k_mac).unwrap();
        mac.update(&header_tag);
        mac.update(&(i as u64).to_be_bytes());
        mac.update(&[u8::from(last)]);
        mac.update(&ct);
        file.extend_from_slice(&ct);
        file.extend_from_slice(&mac.finalize().into_bytes());
    }
    file
}

/// The reference decoder's inverse, for checking that the library opens what the reference
/// seals (decrypts with the `cbc` crate, checks PKCS#7 by hand).
fn reference_unpad_final(k_enc: &[u8], iv: &Block, ct: &[u8]) -> Vec<u8> {
    let mut buf = ct.to_vec();
    let plain = cbc::Decryptor::<Aes256>::new_from_slices(k_enc, iv)
        .unwrap()
        .decrypt_padded_mut::<Pkcs7>(&mut buf)
        .unwrap();
    plain.to_vec()
}

fn library_seal(master: &[u8; 32], chunk_log2: u8, salt: [u8; 32], plain: &[u8]) -> Vec<u8> {
    let sealer = Sealer::new(master, chunk_log2, salt);
    let mut writer = SealWriter::new(sealer, Vec::new()).unwrap();
    // Odd piece sizes so records straddle writes.
    for piece in plain.chunks(1000) {
        writer.write_all(piece).unwrap();
    }
    let (file, written) = writer.finish().unwrap();
    assert_eq!(written as usize, file.len());
    file
}

const KAT_MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KAT_SALT: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff";

fn kat_plain(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 256) as u8).collect()
}

#[test]
fn rcrypt_v1_three_chunk_file_matches_reference() {
    let master: [u8; 32] = arr(&hex(KAT_MASTER));
    let salt: [u8; 32] = arr(&hex(KAT_SALT));
    // Three chunks at 4 KiB: two full ones and a final one of 1234 bytes.
    let plain = kat_plain(2 * 4096 + 1234);
    let expected = reference_seal(&master, 12, &salt, &plain);
    assert_eq!(
        expected.len(),
        96 + 2 * (4096 + 32) + (1234 / 16 + 1) * 16 + 32
    );
    let got = library_seal(&master, 12, salt, &plain);
    assert_eq!(got.len(), expected.len(), "sealed length");
    for (name, range) in [
        ("header prefix", 0..64),
        ("header tag", 64..96),
        ("record 0", 96..96 + 4128),
        ("record 1", 96 + 4128..96 + 2 * 4128),
        ("final record", 96 + 2 * 4128..expected.len()),
    ] {
        assert!(
            got[range.clone()] == expected[range.clone()],
            "{name} differs from the docs/format.md reference"
        );
    }
    assert_eq!(got, expected);
    assert_eq!(format::sealed_len(plain.len() as u64, 12), got.len() as u64);
}

#[test]
fn rcrypt_v1_reference_matches_library_at_edge_lengths() {
    let master: [u8; 32] = arr(&hex(KAT_MASTER));
    let salt: [u8; 32] = arr(&hex(KAT_SALT));
    let c = 4096usize;
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
        9 * c + 17,
    ] {
        let plain = kat_plain(len);
        let expected = reference_seal(&master, 12, &salt, &plain);
        let got = library_seal(&master, 12, salt, &plain);
        assert!(got == expected, "len {len}: library differs from reference");
    }
}

#[test]
fn library_opens_the_reference_file() {
    let master: [u8; 32] = arr(&hex(KAT_MASTER));
    let salt: [u8; 32] = arr(&hex(KAT_SALT));
    let plain = kat_plain(2 * 4096 + 1234);
    let file = reference_seal(&master, 12, &salt, &plain);

    let header = Header::parse(&file).unwrap();
    assert_eq!(header.to_bytes()[..], file[..96]);
    let layout = Layout::for_file(file.len() as u64, 12).unwrap();
    assert_eq!(layout.full_records, 2);
    assert_eq!(layout.final_record_bytes, (1234 / 16 + 1) * 16 + 32);
    let mut opener = Opener::new(&header, &master).unwrap();
    let mut records = file[96..96 + 2 * 4128].to_vec();
    opener.open_full(&mut records).unwrap();
    let mut got = records[..4096].to_vec();
    got.extend_from_slice(&records[4128..4128 + 4096]);
    let mut last = file[96 + 2 * 4128..].to_vec();
    let n = opener.open_final(&mut last).unwrap();
    got.extend_from_slice(&last[..n]);
    assert_eq!(got, plain);
    assert!(opener.is_finished());

    // And the reference's own decryption of the final record, with keys derived by hand.
    let mut info = b"ringcrypt v1".to_vec();
    info.extend_from_slice(&file[..16]);
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(Some(&salt), &master)
        .expand(&info, &mut okm)
        .unwrap();
    let mut iv = [0u8; 16];
    iv[7] = 2;
    let mut iv = Block::from(iv);
    aes256(&okm[..32]).encrypt_block(&mut iv);
    let final_ct = &file[96 + 2 * 4128..file.len() - 32];
    assert_eq!(
        reference_unpad_final(&okm[..32], &iv, final_ct),
        plain[2 * 4096..]
    );
}

// ---------------------------------------------------------------------------------------------
// Forged records: authentic tags over ciphertext the sealer would never write. Only a key
// holder can make these, but the opener must still refuse them with the one opaque failure.

/// K_enc, K_mac and the header of a file sealed under `master` with `salt` at chunk_log2 12,
/// derived by hand from docs/format.md.
fn reference_file_keys(master: &[u8; 32], salt: &[u8; 32]) -> ([u8; 32], [u8; 32], Vec<u8>) {
    let header = reference_seal(master, 12, salt, b"")[..96].to_vec();
    let mut info = b"ringcrypt v1".to_vec();
    info.extend_from_slice(&header[..16]);
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(Some(salt), master)
        .expand(&info, &mut okm)
        .unwrap();
    (arr(&okm[..32]), arr(&okm[32..]), header)
}

/// A record for chunk `index`: `blocks` (whole blocks, already "padded" however the caller
/// likes) CBC-encrypted under the chunk's IV and tagged with `last`.
fn forge_record(
    k_enc: &[u8; 32],
    k_mac: &[u8; 32],
    header: &[u8],
    index: u64,
    last: bool,
    blocks: &[u8],
) -> Vec<u8> {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&index.to_be_bytes());
    let mut iv = Block::from(iv);
    aes256(k_enc).encrypt_block(&mut iv);
    let mut ct = blocks.to_vec();
    cbc::Encryptor::<Aes256>::new_from_slices(k_enc, &iv)
        .unwrap()
        .encrypt_padded_mut::<NoPadding>(&mut ct, blocks.len())
        .unwrap();
    let mut mac = <HmacSha256 as Mac>::new_from_slice(k_mac).unwrap();
    mac.update(&header[64..96]);
    mac.update(&index.to_be_bytes());
    mac.update(&[u8::from(last)]);
    mac.update(&ct);
    ct.extend_from_slice(&mac.finalize().into_bytes());
    ct
}

fn kat_ring() -> ringcrypt::keys::KeyRing {
    ringcrypt::keys::KeyRing::parse(
        &format!("[[key]]\nname = \"kat\"\nsecret = \"{KAT_MASTER}\"\n"),
        "kat ring",
    )
    .unwrap()
}

fn open_stream(file: &[u8]) -> Result<Vec<u8>, ringcrypt::Error> {
    let mut out = Vec::new();
    ringcrypt::stream::open(&mut &file[..], file.len() as u64, &kat_ring(), &mut out)?;
    Ok(out)
}

#[test]
fn authentic_records_with_bad_padding_or_wrong_last_flag_are_refused() {
    let master: [u8; 32] = arr(&hex(KAT_MASTER));
    let salt: [u8; 32] = arr(&hex(KAT_SALT));
    let (k_enc, k_mac, header) = reference_file_keys(&master, &salt);
    let one_record = |last: bool, blocks: &[u8]| {
        let mut file = header.clone();
        file.extend_from_slice(&forge_record(&k_enc, &k_mac, &header, 0, last, blocks));
        file
    };

    // The forgery machinery is right: properly padded blocks open.
    let mut good = [7u8; 32];
    good[16..].fill(16);
    assert_eq!(open_stream(&one_record(true, &good)).unwrap(), [7u8; 16]);
    let mut good = [7u8; 16];
    good[15] = 1;
    assert_eq!(open_stream(&one_record(true, &good)).unwrap(), [7u8; 15]);
    // A final record of a full C bytes of ciphertext (plaintext C - 16, a whole block of
    // padding) is still a final record.
    let mut full_final = vec![9u8; 4096];
    full_final[4096 - 16..].fill(16);
    assert_eq!(
        open_stream(&one_record(true, &full_final)).unwrap(),
        vec![9u8; 4080]
    );

    let mut bad_paddings: Vec<Vec<u8>> = Vec::new();
    for last_byte in [0u8, 17, 0x80, 0xff] {
        let mut block = vec![5u8; 16];
        block[15] = last_byte;
        bad_paddings.push(block);
    }
    let mut inconsistent = vec![3u8; 16];
    inconsistent[13] = 4;
    bad_paddings.push(inconsistent);
    let mut sixteen_but_not_all = vec![16u8; 32];
    sixteen_but_not_all[16] = 15;
    bad_paddings.push(sixteen_but_not_all);
    for blocks in &bad_paddings {
        let err = open_stream(&one_record(true, blocks)).unwrap_err();
        assert_eq!(
            err.code,
            ringcrypt::Code::AuthFailed,
            "padding {blocks:02x?}"
        );
    }

    // A well-padded final chunk tagged as non-final.
    let mut padded = [7u8; 16];
    padded[15] = 1;
    assert_eq!(
        open_stream(&one_record(false, &padded)).unwrap_err().code,
        ringcrypt::Code::AuthFailed
    );
    // A full-size record tagged final, followed by a real final record: a second "final".
    let mut two_finals = header.clone();
    two_finals.extend_from_slice(&forge_record(&k_enc, &k_mac, &header, 0, true, &full_final));
    two_finals.extend_from_slice(&forge_record(&k_enc, &k_mac, &header, 1, true, &padded));
    assert_eq!(
        open_stream(&two_finals).unwrap_err().code,
        ringcrypt::Code::AuthFailed
    );
    // The same with the first record tagged non-final is a good two-chunk file.
    let mut two_records = header.clone();
    two_records.extend_from_slice(&forge_record(
        &k_enc,
        &k_mac,
        &header,
        0,
        false,
        &[1u8; 4096],
    ));
    two_records.extend_from_slice(&forge_record(&k_enc, &k_mac, &header, 1, true, &padded));
    let mut expected = vec![1u8; 4096];
    expected.extend_from_slice(&[7u8; 15]);
    assert_eq!(open_stream(&two_records).unwrap(), expected);
    // Records with the wrong index (a record sealed as chunk 1 in slot 0).
    let mut wrong_index = header.clone();
    wrong_index.extend_from_slice(&forge_record(&k_enc, &k_mac, &header, 1, true, &padded));
    assert_eq!(
        open_stream(&wrong_index).unwrap_err().code,
        ringcrypt::Code::AuthFailed
    );
}

/// The out-of-place seal and open (direct IO's) give exactly the bytes of the in-place
/// ones, for 1 to 17 records (partial and several lane groups) at the smallest and the
/// default chunk size; a damaged record is refused before any plaintext is written.
#[test]
fn out_of_place_seal_and_open_match_in_place() {
    let master = [0x42u8; 32];
    for chunk_log2 in [12u8, 16] {
        let chunk = 1usize << chunk_log2;
        let stride = chunk + 32;
        for k in [1usize, 7, 8, 9, 17] {
            let plain: Vec<u8> = (0..k * chunk).map(|i| (i * 7 + i / 4096) as u8).collect();
            let mut in_place = vec![0u8; k * stride];
            for (record, src) in in_place.chunks_mut(stride).zip(plain.chunks(chunk)) {
                record[..chunk].copy_from_slice(src);
            }
            let mut a = Sealer::new(&master, chunk_log2, [9; 32]);
            a.seal_full(&mut in_place).expect("whole records");
            let mut b = Sealer::new(&master, chunk_log2, [9; 32]);
            let mut out_of_place = vec![0u8; k * stride];
            b.seal_full_to(&plain, &mut out_of_place)
                .expect("whole records");
            assert!(in_place == out_of_place, "seal 2^{chunk_log2} x {k}");

            let mut opener = Opener::new(a.header(), &master).expect("header tag");
            let mut opened = vec![0u8; k * chunk];
            opener
                .open_full_to(&out_of_place, &mut opened)
                .expect("authentic");
            assert!(opened == plain, "open 2^{chunk_log2} x {k}");

            let mut damaged = out_of_place.clone();
            damaged[(k - 1) * stride + 5] ^= 1;
            let mut opener = Opener::new(a.header(), &master).expect("header tag");
            let mut untouched = vec![0u8; k * chunk];
            assert!(opener.open_full_to(&damaged, &mut untouched).is_err());
            assert!(untouched.iter().all(|&b| b == 0), "no plaintext on failure");
        }
    }
}
