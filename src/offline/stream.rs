//! Streaming over `Read`/`Write` for whole files: [`SealWriter`] seals whatever is written
//! into it in batches of [`LANES`] chunks, and [`open`] verifies and decrypts a sealed file
//! into any `Write`. Memory is constant: one batch buffer, whatever the file size.
//!
//! This is the offline client's engine; the daemon drives `format` directly from its own
//! buffers instead.

use std::io::{self, Read, Write};

use crate::crypto::format::{self, Header, Layout, Opener, Sealer};
use crate::crypto::keys::KeyRing;
use crate::crypto::openssl::read_full;
use crate::error::{Code, Error};
use crate::limits::{HEADER_BYTES, LANES};

/// Seals a plaintext stream written into it. Call [`SealWriter::finish`] at the end.
pub struct SealWriter<W: Write> {
    sealer: Sealer,
    out: W,
    /// One batch: LANES records of C + 32 bytes, plaintext filled into each record's front.
    batch: Vec<u8>,
    /// Plaintext bytes in `batch`.
    filled: usize,
    bytes_out: u64,
    /// The last error came from writing the output, not from reading the input.
    write_failed: bool,
}

impl<W: Write> SealWriter<W> {
    /// Writes the header and returns a writer for the plaintext.
    pub fn new(sealer: Sealer, mut out: W) -> io::Result<Self> {
        out.write_all(&sealer.header().to_bytes())?;
        let batch = vec![0u8; LANES * sealer.record_bytes()];
        Ok(SealWriter {
            sealer,
            out,
            batch,
            filled: 0,
            bytes_out: HEADER_BYTES as u64,
            write_failed: false,
        })
    }

    fn chunk_bytes(&self) -> usize {
        self.sealer.header().chunk_bytes()
    }

    fn seal_and_write_batch(&mut self) -> io::Result<()> {
        let len = self.batch.len();
        self.sealer
            .seal_full(&mut self.batch)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        self.out.write_all(&self.batch)?;
        self.bytes_out += len as u64;
        self.filled = 0;
        Ok(())
    }

    /// Seals the rest (whole chunks, then the final chunk) and returns the sink and the total
    /// bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let chunk = self.chunk_bytes();
        let stride = self.sealer.record_bytes();
        let full = self.filled / chunk;
        let rest = self.filled % chunk;
        // `full < LANES`: a full batch is sealed as soon as it fills.
        let (whole, tail) = self.batch.split_at_mut(full * stride);
        self.sealer
            .seal_full(whole)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        let last = self
            .sealer
            .seal_final(tail, rest)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        self.out.write_all(&self.batch[..full * stride + last])?;
        self.bytes_out += (full * stride + last) as u64;
        Ok((self.out, self.bytes_out))
    }

    /// Whether the error [`SealWriter::fill_from`] returned came from writing the output
    /// (a full disk, say) rather than from reading the input, so it can name the right file.
    pub fn write_failed(&self) -> bool {
        self.write_failed
    }

    /// Fills the batch straight from `input` until end of input (no intermediate copy), and
    /// returns the plaintext bytes read.
    pub fn fill_from(&mut self, input: &mut impl Read) -> io::Result<u64> {
        let chunk = self.chunk_bytes();
        let stride = self.sealer.record_bytes();
        let mut total = 0u64;
        loop {
            let slot = self.filled / chunk;
            let offset = self.filled % chunk;
            let at = slot * stride + offset;
            let got = read_full(input, &mut self.batch[at..slot * stride + chunk])?;
            self.filled += got;
            total += got as u64;
            if self.filled == LANES * chunk {
                self.seal_and_write_batch()
                    .inspect_err(|_| self.write_failed = true)?;
            }
            if got < chunk - offset {
                return Ok(total);
            }
        }
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let written = data.len();
        let chunk = self.chunk_bytes();
        let stride = self.sealer.record_bytes();
        while !data.is_empty() {
            let slot = self.filled / chunk;
            let offset = self.filled % chunk;
            let take = data.len().min(chunk - offset);
            let at = slot * stride + offset;
            self.batch[at..at + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == LANES * chunk {
                self.seal_and_write_batch()?;
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Verifies and decrypts a sealed file of `file_len` bytes from `input` into `out`; returns
/// the plaintext length and the key id the file names. Every record's tag is checked before its plaintext is written, and
/// the file must end exactly after the final record. Plaintext already written when a later
/// record fails must be discarded by the caller (the output is an uncommitted temp file).
pub fn open(
    input: &mut impl Read,
    file_len: u64,
    ring: &KeyRing,
    out: &mut impl Write,
) -> Result<(u64, format::KeyId), Error> {
    let (header, mut opener) = read_header(input, ring)?;
    let auth = || Error::from(format::AuthFailed);
    let layout = Layout::for_file(file_len, header.chunk_log2).map_err(|_| auth())?;
    let chunk = header.chunk_bytes();
    let stride = opener.record_bytes();
    let mut batch = vec![0u8; LANES * stride];
    let mut remaining = layout.full_records;
    let mut written = 0u64;
    while remaining > 0 {
        let records = remaining.min(LANES as u64) as usize;
        let want = &mut batch[..records * stride];
        if read_full(input, want).map_err(read_error)? != want.len() {
            return Err(auth());
        }
        opener.open_full(want).map_err(|_| auth())?;
        write_plain(&mut batch, records, stride, chunk, out)?;
        written += (records * chunk) as u64;
        remaining -= records as u64;
    }
    let last = &mut batch[..layout.final_record_bytes];
    if read_full(input, last).map_err(read_error)? != last.len() {
        return Err(auth());
    }
    let plain = opener.open_final(last).map_err(|_| auth())?;
    // The file must end here: bytes appended since its length was taken are not ours.
    let mut probe = [0u8; 1];
    if read_full(input, &mut probe).map_err(read_error)? != 0 {
        return Err(auth());
    }
    out.write_all(&batch[..plain]).map_err(write_error)?;
    Ok((written + plain as u64, header.key_id))
}

/// As [`open`], for an input whose length is not known in advance (a pipe): the final record
/// is the one the input ends after, so each batch is read with one byte to spare, and only
/// records followed by more input are opened as non-final. Every record's tag is checked
/// before its plaintext is written to `out`, so a consumer of `out` only ever sees verified
/// chunks; when a later record fails, what it already got stays valid but incomplete.
pub fn open_stream(
    input: &mut impl Read,
    ring: &KeyRing,
    out: &mut impl Write,
) -> Result<(u64, format::KeyId), Error> {
    let (header, mut opener) = read_header(input, ring)?;
    let auth = || Error::from(format::AuthFailed);
    let chunk = header.chunk_bytes();
    let stride = opener.record_bytes();
    // One batch and the byte that proves the batch is not the end.
    let mut batch = vec![0u8; LANES * stride + 1];
    let mut held = 0usize;
    let mut written = 0u64;
    loop {
        held += read_full(input, &mut batch[held..]).map_err(read_error)?;
        if held == batch.len() {
            // More follows every record of this batch: all of them are non-final.
            let records = &mut batch[..LANES * stride];
            opener.open_full(records).map_err(|_| auth())?;
            write_plain(&mut batch, LANES, stride, chunk, out)?;
            written += (LANES * chunk) as u64;
            batch[0] = batch[LANES * stride];
            held = 1;
            continue;
        }
        // The input ended: the plan of what is left, as `Layout` makes it for a file.
        let layout = Layout::for_file((HEADER_BYTES + held) as u64, header.chunk_log2)
            .map_err(|_| auth())?;
        let full = layout.full_records as usize;
        opener
            .open_full(&mut batch[..full * stride])
            .map_err(|_| auth())?;
        let last = &mut batch[full * stride..held];
        let plain = opener.open_final(last).map_err(|_| auth())?;
        write_plain(&mut batch, full, stride, chunk, out)?;
        written += (full * chunk) as u64;
        let at = full * stride;
        out.write_all(&batch[at..at + plain]).map_err(write_error)?;
        out.flush().map_err(write_error)?;
        return Ok((written + plain as u64, header.key_id));
    }
}

/// Reads and parses the header, finds its key in `ring` and checks the header tag.
fn read_header(input: &mut impl Read, ring: &KeyRing) -> Result<(Header, Opener), Error> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    let got = read_full(input, &mut header_bytes).map_err(read_error)?;
    let header = Header::parse(&header_bytes[..got])?;
    let master = ring.opening_key(&header.key_id)?;
    let opener = Opener::new(&header, master.bytes())?;
    Ok((header, opener))
}

/// Writes the plaintext of the first `records` opened records of `batch` as one piece.
fn write_plain(
    batch: &mut [u8],
    records: usize,
    stride: usize,
    chunk: usize,
    out: &mut impl Write,
) -> Result<(), Error> {
    for record in 1..records {
        batch.copy_within(record * stride..record * stride + chunk, record * chunk);
    }
    out.write_all(&batch[..records * chunk])
        .map_err(write_error)
}

/// Checks an existing sealed file cheaply, for resuming trees (see
/// [`KeyRing::verify_tail`]): reads only its header and its final record. Returns the key id
/// the file names.
pub fn verify_last_record(file: &std::fs::File, ring: &KeyRing) -> Result<format::KeyId, Error> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_err(read_error)?.len();
    ring.verify_tail(len, |buf, offset| file.read_exact_at(buf, offset))
}

fn read_error(e: io::Error) -> Error {
    Error::new(Code::from_io(&e), format!("cannot read the input: {e}"))
}

fn write_error(e: io::Error) -> Error {
    Error::new(Code::from_io(&e), format!("cannot write the output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::KeyRing;

    const SECRET: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    fn ring() -> KeyRing {
        KeyRing::parse(
            &format!("[[key]]\nname = \"k\"\nsecret = \"{SECRET}\"\n"),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn write_and_fill_from_agree_and_open_round_trips() {
        let ring = ring();
        let master = match &ring.by_name("k").unwrap().material {
            crate::crypto::keys::KeyMaterial::Secret(key) => key.clone(),
            crate::crypto::keys::KeyMaterial::Passphrase { .. } => unreachable!(),
        };
        let c = 4096usize;
        for len in [
            0,
            1,
            c - 1,
            c,
            c + 1,
            8 * c - 1,
            8 * c,
            8 * c + 1,
            8 * c + 17,
            20 * c + 3,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let mut by_write =
                SealWriter::new(Sealer::new(master.bytes(), 12, [9; 32]), Vec::new()).unwrap();
            for piece in plain.chunks(1000) {
                by_write.write_all(piece).unwrap();
            }
            let (a, n) = by_write.finish().unwrap();
            assert_eq!(n as usize, a.len());
            let mut by_fill =
                SealWriter::new(Sealer::new(master.bytes(), 12, [9; 32]), Vec::new()).unwrap();
            assert_eq!(by_fill.fill_from(&mut &plain[..]).unwrap(), len as u64);
            let (b, _) = by_fill.finish().unwrap();
            assert_eq!(a, b, "len {len}");
            assert_eq!(a.len() as u64, format::sealed_len(len as u64, 12));
            let mut out = Vec::new();
            assert_eq!(
                open(&mut &a[..], a.len() as u64, &ring, &mut out)
                    .unwrap()
                    .0,
                len as u64
            );
            assert_eq!(out, plain);

            // The same file as a stream of unknown length, read in small pieces.
            let mut streamed = Vec::new();
            let mut pieces = Trickle(&a[..]);
            assert_eq!(
                open_stream(&mut pieces, &ring, &mut streamed).unwrap().0,
                len as u64
            );
            assert_eq!(streamed, plain, "len {len} as a stream");
            // Cut at a record boundary or one byte short, or one byte more: never accepted,
            // and what was written is a whole-chunk prefix of the plaintext.
            for cut in [a.len() - 1, a.len() - 48, a.len() + 1] {
                let mut bytes = a.clone();
                bytes.resize(cut, 0);
                let mut got = Vec::new();
                let err = open_stream(&mut &bytes[..], &ring, &mut got).unwrap_err();
                assert_eq!(err.code, Code::AuthFailed, "len {len}, cut {cut}");
                assert!(
                    plain.starts_with(&got) && got.len() % c == 0,
                    "len {len}, cut {cut}"
                );
            }
        }
    }

    /// A reader that hands out at most 1000 bytes a call, as a pipe may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
}
