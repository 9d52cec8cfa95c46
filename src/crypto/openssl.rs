//! The `openssl` compatibility format (docs/format.md): exactly what
//! `openssl enc -aes-256-cbc -pbkdf2 -iter N -pass ...` reads and writes:
//! `Salted__` || 8-byte salt || AES-256-CBC/PKCS#7, with key || IV =
//! PBKDF2-HMAC-SHA256(passphrase, salt, N, 48).
//!
//! It exists to migrate legacy archives and is never the default. It is NOT authenticated:
//! anyone who can change such a file can change what it decrypts to, undetected. Padding is
//! the only check, so a wrong passphrase is usually, not always, caught.
//!
//! Streaming: [`OpensslWriter`] encrypts into any `Write`; [`decrypt`] reads any `Read`.

use std::io::{self, Read, Write};

use aes::Aes256;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Code, Error};
use crate::limits::BLOCK_BYTES;

/// The first 8 bytes of every salted openssl file.
pub const MAGIC: &[u8; 8] = b"Salted__";

/// Where the ciphertext starts: after the magic and the 8-byte salt.
pub const BODY_OFFSET: u64 = 16;

/// Plaintext bytes encrypted per call: large enough that per-call overhead vanishes.
const STREAM_BYTES: usize = 1 << 16;

fn derive(passphrase: &str, salt: &[u8; 8], iter: u32) -> Zeroizing<[u8; 48]> {
    let mut out = Zeroizing::new([0u8; 48]);
    pbkdf2::pbkdf2_hmac::<Sha256>(passphrase.as_bytes(), salt, iter, out.as_mut());
    out
}

fn cipher_parts(material: &[u8; 48]) -> (&[u8], &[u8]) {
    material.split_at(32)
}

/// Encrypts a stream into `out` in the openssl format. Call [`OpensslWriter::finish`] at the
/// end: it writes the padded last block.
pub struct OpensslWriter<W: Write> {
    encryptor: cbc::Encryptor<Aes256>,
    out: W,
    buf: Vec<u8>,
    bytes_out: u64,
}

impl<W: Write> OpensslWriter<W> {
    /// Writes the `Salted__` header with `salt` (8 random bytes in production).
    pub fn new(mut out: W, passphrase: &str, iter: u32, salt: [u8; 8]) -> io::Result<Self> {
        let material = derive(passphrase, &salt, iter);
        let (key, iv) = cipher_parts(&material);
        let encryptor = cbc::Encryptor::<Aes256>::new_from_slices(key, iv)
            .expect("PBKDF2 output is split into a 32-byte key and a 16-byte IV");
        out.write_all(MAGIC)?;
        out.write_all(&salt)?;
        Ok(OpensslWriter {
            encryptor,
            out,
            buf: Vec::with_capacity(STREAM_BYTES + BLOCK_BYTES),
            bytes_out: 16,
        })
    }

    fn flush_whole_blocks(&mut self) -> io::Result<()> {
        let whole = self.buf.len() / BLOCK_BYTES * BLOCK_BYTES;
        if whole == 0 {
            return Ok(());
        }
        for block in self.buf[..whole].chunks_exact_mut(BLOCK_BYTES) {
            self.encryptor.encrypt_block_mut(block.into());
        }
        self.out.write_all(&self.buf[..whole])?;
        self.bytes_out += whole as u64;
        self.buf.drain(..whole);
        Ok(())
    }

    /// Pads, encrypts the last block, and returns the sink and the bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.flush_whole_blocks()?;
        let pad = (BLOCK_BYTES - self.buf.len()) as u8;
        self.buf.resize(BLOCK_BYTES, pad);
        self.encryptor
            .encrypt_block_mut(self.buf.as_mut_slice().into());
        self.out.write_all(&self.buf)?;
        self.bytes_out += BLOCK_BYTES as u64;
        Ok((self.out, self.bytes_out))
    }
}

impl<W: Write> Write for OpensslWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Take at most what fits, so memory stays at one buffer whatever the caller writes.
        // After a flush fewer than 16 bytes remain, so there is always room.
        let take = data.len().min(STREAM_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() >= STREAM_BYTES {
            self.flush_whole_blocks()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Decrypts an openssl-format stream (starting at `Salted__`) into `out`, returning the
/// plaintext length. Short or misaligned input is `bad_format`; bad padding (a wrong
/// passphrase, or damage) is `auth_failed`. On failure, some plaintext may already have been
/// written to `out`: the caller discards it (the offline and daemon paths write to a temp
/// file that is never linked on failure).
pub fn decrypt(
    input: &mut impl Read,
    out: &mut impl Write,
    passphrase: &str,
    iter: u32,
) -> Result<u64, Error> {
    let io_err = |e: io::Error| Error::new(Code::from_io(&e), format!("read/write failed: {e}"));
    let mut head = [0u8; 16];
    let got = read_full(input, &mut head).map_err(io_err)?;
    if got < 16 || &head[..8] != MAGIC {
        return Err(Error::new(
            Code::BadFormat,
            "not an openssl `Salted__` file (header too short)",
        ));
    }
    let salt: [u8; 8] = head[8..].try_into().expect("8 bytes");
    let material = derive(passphrase, &salt, iter);
    let (key, iv) = cipher_parts(&material);
    let mut decryptor = cbc::Decryptor::<Aes256>::new_from_slices(key, iv)
        .expect("PBKDF2 output is split into a 32-byte key and a 16-byte IV");
    // Hold back the last block of what has been read: it carries the padding, and it is only
    // known to be last at end of input.
    let mut buf = vec![0u8; STREAM_BYTES + BLOCK_BYTES];
    let mut held = 0usize;
    let mut written = 0u64;
    loop {
        let got = read_full(input, &mut buf[held..]).map_err(io_err)?;
        let filled = held + got;
        if got == 0 {
            break;
        }
        let release = if filled.is_multiple_of(BLOCK_BYTES) {
            filled - BLOCK_BYTES
        } else {
            filled / BLOCK_BYTES * BLOCK_BYTES
        };
        // When the read filled the buffer it is whole blocks; otherwise this is the end and
        // the loop comes round once more to see the 0-byte read.
        for block in buf[..release].chunks_exact_mut(BLOCK_BYTES) {
            decryptor.decrypt_block_mut(block.into());
        }
        out.write_all(&buf[..release]).map_err(io_err)?;
        written += release as u64;
        buf.copy_within(release..filled, 0);
        held = filled - release;
    }
    if held != BLOCK_BYTES {
        return Err(Error::new(
            Code::BadFormat,
            "the openssl ciphertext is not a whole number of 16-byte blocks (or is empty)",
        ));
    }
    let last = &mut buf[..BLOCK_BYTES];
    decryptor.decrypt_block_mut(last.into());
    let pad = usize::from(last[BLOCK_BYTES - 1]);
    if !(1..=BLOCK_BYTES).contains(&pad)
        || !last[BLOCK_BYTES - pad..]
            .iter()
            .all(|&b| usize::from(b) == pad)
    {
        last.fill(0);
        return Err(Error::new(
            Code::AuthFailed,
            "decryption failed: wrong passphrase or a damaged file (openssl-format files are not authenticated, so this is all that can be said)",
        ));
    }
    out.write_all(&last[..BLOCK_BYTES - pad]).map_err(io_err)?;
    Ok(written + (BLOCK_BYTES - pad) as u64)
}

/// The body of an openssl-format file (after `Salted__` and the salt) deciphered in pieces
/// of whole blocks, in order, in place: one CBC chain whose IV is carried from piece to piece,
/// so a caller that reads the body in batches (the daemon) needs no copy. The caller strips
/// the padding of the last block with [`unpad`].
pub struct BodyDecryptor {
    aes: Aes256,
    /// The chain's state: the file's IV, then the last ciphertext block deciphered.
    iv: crate::crypto::lanes::Block,
}

impl BodyDecryptor {
    /// Derives the key and IV from `passphrase`, the file's `salt` and `iter` (PBKDF2).
    pub fn new(passphrase: &str, salt: &[u8; 8], iter: u32) -> BodyDecryptor {
        use aes::cipher::KeyInit;
        let material = derive(passphrase, salt, iter);
        let (key, iv) = cipher_parts(&material);
        BodyDecryptor {
            aes: Aes256::new_from_slice(key).expect("PBKDF2 output gives a 32-byte key"),
            iv: crate::crypto::lanes::Block::clone_from_slice(iv),
        }
    }

    /// Deciphers the next `data` of the body in place. `data` is whole blocks; a piece
    /// that is not is refused (`bad_format`) and nothing is changed.
    pub fn decrypt(&mut self, data: &mut [u8]) -> Result<(), Error> {
        if data.is_empty() || !data.len().is_multiple_of(BLOCK_BYTES) {
            return Err(not_whole_blocks());
        }
        let next = crate::crypto::lanes::Block::clone_from_slice(&data[data.len() - BLOCK_BYTES..]);
        crate::crypto::lanes::decrypt_chain(&self.aes, &self.iv, data);
        self.iv = next;
        Ok(())
    }
}

/// The plaintext length of the deciphered final piece `last` (its PKCS#7 padding removed),
/// or `auth_failed` when the padding is malformed: a wrong passphrase, or damage. The only
/// check this format has.
pub fn unpad(last: &[u8]) -> Result<usize, Error> {
    let tail = &last[last.len().saturating_sub(BLOCK_BYTES)..];
    crate::crypto::format::padding(tail)
        .filter(|_| tail.len() == BLOCK_BYTES)
        .map(|pad| last.len() - pad)
        .ok_or_else(wrong_padding)
}

fn wrong_padding() -> Error {
    Error::new(
        Code::AuthFailed,
        "bad padding: the passphrase is wrong or the openssl-format file is damaged",
    )
}

fn not_whole_blocks() -> Error {
    Error::new(
        Code::BadFormat,
        "the openssl ciphertext is not a whole number of 16-byte blocks (or is empty)",
    )
}

/// Reads until `buf` is full or end of input; returns the bytes read.
pub(crate) fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// 8 bytes from the OS CSPRNG, for an openssl-format salt.
pub fn random_salt() -> Result<[u8; 8], Error> {
    crate::crypto::format::random_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(plain: &[u8], salt: [u8; 8]) -> Vec<u8> {
        let mut writer = OpensslWriter::new(Vec::new(), "pw", 1000, salt).unwrap();
        for piece in plain.chunks(7000) {
            writer.write_all(piece).unwrap();
        }
        let (out, n) = writer.finish().unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    #[test]
    fn round_trips_at_block_edges() {
        for len in [0usize, 1, 15, 16, 17, 65535, 65536, 65537, 200_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = encrypt(&plain, [1; 8]);
            assert_eq!(file.len(), 16 + (len / 16 + 1) * 16);
            let mut out = Vec::new();
            let n = decrypt(&mut &file[..], &mut out, "pw", 1000).unwrap();
            assert_eq!((n as usize, out), (len, plain), "len {len}");
        }
    }

    /// The body deciphered in pieces (chunk-sized, as the daemon reads it) gives exactly what
    /// the streaming [`decrypt`] gives, at every edge; a wrong passphrase fails at the padding.
    #[test]
    fn body_in_pieces_matches_the_stream() {
        for len in [0usize, 1, 15, 16, 17, 4095, 4096, 4097, 3 * 4096 + 16] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = encrypt(&plain, [3; 8]);
            let salt: [u8; 8] = file[8..16].try_into().unwrap();
            let mut body = file[16..].to_vec();
            let mut chain = BodyDecryptor::new("pw", &salt, 1000);
            for piece in body.chunks_mut(4096) {
                chain.decrypt(piece).unwrap();
            }
            let n = unpad(&body).unwrap();
            assert_eq!(&body[..n], &plain[..], "len {len}");

            let mut body = file[16..].to_vec();
            let mut wrong = BodyDecryptor::new("not pw", &salt, 1000);
            wrong.decrypt(&mut body).unwrap();
            // A wrong key gives valid-looking padding about once in 256 tries; not with
            // these fixed inputs.
            assert_eq!(
                unpad(&body).unwrap_err().code,
                Code::AuthFailed,
                "len {len}"
            );
        }
        let mut chain = BodyDecryptor::new("pw", &[0; 8], 1000);
        assert_eq!(
            chain.decrypt(&mut [0u8; 15]).unwrap_err().code,
            Code::BadFormat
        );
    }

    #[test]
    fn short_and_misaligned_files_are_bad_format() {
        let file = encrypt(b"hello", [2; 8]);
        for cut in [0, 8, 15, 16, 17, file.len() - 1] {
            let err = decrypt(&mut &file[..cut], &mut Vec::new(), "pw", 1000).unwrap_err();
            assert_eq!(err.code, Code::BadFormat, "cut {cut}");
        }
    }
}
