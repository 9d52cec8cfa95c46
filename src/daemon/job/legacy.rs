//! openssl-format inputs (`Salted__`, unauthenticated) decrypted or rewrapped by a file job:
//! the passphrase entry the request names (`key`, or the ring's only one), the body's
//! layout in chunks, and the crypto of one batch: the CBC chain deciphered in order, in
//! place in the record slots the reads filled, the final piece's padding checked (bad
//! padding: `auth_failed`, nothing linked), then for a rewrap the plaintext sealed into
//! records where it lies.
//!
//! The daemon never writes this format (`encrypt` with it is refused before a job exists).
//!
//! What this room does not do: read or write (the stream in `stream.rs` does), or split a
//! file into ranges (a chain has one order; `Codec::splits`).

use super::*;
use crate::crypto::openssl::{BODY_OFFSET, BodyDecryptor, unpad};
use crate::limits::BLOCK_BYTES;

impl FileJob {
    /// The input starts with `Salted__`: a verify refuses it (no tags), a decrypt or a
    /// rewrap sets up the body's chain and layout.
    pub(super) fn got_openssl(&mut self, ctx: &mut JobCtx, head: &[u8]) -> Result<(), Error> {
        let in_file = |e: Error| e.context(self.spec.input.display());
        if self.spec.op == FileOp::Verify {
            return Err(in_file(Error::new(
                Code::BadFormat,
                "an openssl-format file has no tags to verify (it is not authenticated); \
                 rewrap it into the ringcrypt format",
            )));
        }
        let body_len = self.in_len.saturating_sub(BODY_OFFSET);
        let Some(salt) = head.get(8..16).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
            return Err(in_file(not_whole_blocks()));
        };
        if body_len == 0 || !body_len.is_multiple_of(BLOCK_BYTES as u64) {
            return Err(in_file(not_whole_blocks()));
        }
        let (_, passphrase, iter) = ctx.ring.passphrase_entry(self.spec.key.as_deref())?;
        let body = BodyDecryptor::new(passphrase, &salt, iter);
        // The daemon's chunk size both ways: the plaintext is read a chunk per record slot,
        // and a rewrap seals it in chunks of that size.
        let chunk_log2 = ctx.chunk_log2;
        self.check_fits(ctx, chunk_log2)?;
        let chunk = 1u64 << chunk_log2;
        // The final piece holds the padding (1 to 16 bytes), so it is never empty of
        // ciphertext: a body of whole chunks ends with a whole chunk as its final piece.
        let n_full = (body_len - 1) / chunk;
        let final_ct = (body_len - n_full * chunk) as usize;
        self.bytes_in += BODY_OFFSET;
        let sealer = match self.spec.op {
            FileOp::Rewrap => Some(resealer(ctx, chunk_log2)?),
            _ => None,
        };
        let header = sealer.as_ref().map(|s| s.header().to_bytes());
        self.codec = Some(Codec::Legacy {
            body,
            sealer,
            chunk_log2,
            n_full,
            final_ct,
        });
        self.maybe_split(ctx)?;
        match header {
            Some(header) => self.write_header(ctx, &header)?,
            None => self.pump(ctx),
        }
        Ok(())
    }
}

fn not_whole_blocks() -> Error {
    Error::new(
        Code::BadFormat,
        "an openssl-format file whose ciphertext is not a whole number of 16-byte blocks \
         (or is empty): cut short or damaged",
    )
}

/// One batch of an openssl body: `units` pieces from piece `first`, each in its record slot
/// of `stride` bytes; pieces before `n_full` are `chunk` bytes, the final one `final_ct`.
pub(super) struct Batch {
    pub(super) first: u64,
    pub(super) units: usize,
    pub(super) stride: usize,
    pub(super) chunk: usize,
    pub(super) n_full: u64,
    pub(super) final_ct: usize,
}

impl Batch {
    /// Deciphers the batch in order and, with `sealer`, seals it; pushes the writes (buffer
    /// span, file offset) into `writes`. Batches must come in order: the chain runs on.
    pub(super) fn run(
        &self,
        body: &mut BodyDecryptor,
        sealer: Option<&mut Sealer>,
        buf: &mut [u8],
        writes: &mut Spans,
    ) -> Result<(), Error> {
        let (first, stride, chunk) = (self.first, self.stride, self.chunk);
        let full = (self.n_full.saturating_sub(first)).min(self.units as u64) as usize;
        for slot in 0..full {
            body.decrypt(&mut buf[slot * stride..slot * stride + chunk])?;
        }
        let last = if full < self.units {
            let at = full * stride;
            let piece = &mut buf[at..at + self.final_ct];
            body.decrypt(piece)?;
            Some(unpad(piece)?)
        } else {
            None
        };
        match sealer {
            None => {
                for slot in 0..full {
                    writes.push((slot * stride, chunk, (first + slot as u64) * chunk as u64));
                }
                if let Some(plain) = last
                    && plain > 0
                {
                    let at = full * stride;
                    writes.push((at, plain, (first + full as u64) * chunk as u64));
                }
            }
            Some(sealer) => {
                sealer.seal_full(&mut buf[..full * stride])?;
                let mut len = full * stride;
                if let Some(plain) = last {
                    len += sealer.seal_final(&mut buf[full * stride..], plain)?;
                }
                writes.push((0, len, HEADER_BYTES as u64 + first * stride as u64));
            }
        }
        Ok(())
    }
}
