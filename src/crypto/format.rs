//! RCRYPT v1 (docs/format.md): the 96-byte header, per-file key derivation, and the chunk
//! [`Sealer`] and [`Opener`] that a caller drives one batch of records at a time.
//!
//! Pure functions over byte slices: no IO, no allocation per chunk, so the daemon can feed it
//! straight from its io_uring buffers and the offline client from a `Read`. Records are
//! sealed and opened in place: a record buffer holds a chunk's plaintext in its first bytes
//! and receives ciphertext and tag over it (and the other way round).
//!
//! What this module does not do: look keys up (the caller passes the master key whose id the
//! header names, see `keys`), or decide which record is the final one when opening (the caller
//! knows the file length; [`Layout`] computes the record plan from it).

use aes::Aes256;
use aes::cipher::KeyInit;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::lanes::{self, Block};
use crate::crypto::sha_mb::{HmacKey, Message};
use crate::error::{Code, Error};
use crate::limits::{BLOCK_BYTES, CHUNK_LOG2_MAX, CHUNK_LOG2_MIN, HEADER_BYTES, LANES, TAG_BYTES};

/// `\x89RCRYPT\n`: the high byte catches 7-bit transfers, the newline catches CRLF mangling.
pub const MAGIC: [u8; 8] = *b"\x89RCRYPT\n";
/// The only version this build reads and writes.
pub const VERSION: u8 = 1;
/// Suite 1: AES-256-CBC + HMAC-SHA256.
pub const SUITE: u8 = 1;

const KEY_ID_LABEL: &[u8] = b"ringcrypt key id v1";
const HKDF_INFO_LABEL: &[u8] = b"ringcrypt v1";

/// First 16 bytes of HMAC-SHA256(master_key, "ringcrypt key id v1").
pub type KeyId = [u8; 16];

type HmacSha256 = Hmac<Sha256>;

/// The key id of a master key.
pub fn key_id(master: &[u8; 32]) -> KeyId {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(master).expect("HMAC takes keys of any length");
    mac.update(KEY_ID_LABEL);
    let full = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&full[..16]);
    id
}

/// A parsed RCRYPT v1 header. Parsing then [`Header::to_bytes`] gives back the same 96 bytes:
/// every byte is either a fixed constant (checked on parse) or a field kept here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub chunk_log2: u8,
    pub key_id: KeyId,
    pub salt: [u8; 32],
    pub header_tag: [u8; 32],
}

impl Header {
    /// Parses the first 96 bytes of `bytes`. Structural problems are `bad_format`: they are
    /// found before any key is touched, so reporting them leaks nothing.
    pub fn parse(bytes: &[u8]) -> Result<Header, Error> {
        let bad = |what: String| Err(Error::new(Code::BadFormat, what));
        if bytes.len() < HEADER_BYTES {
            if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
                return bad("not a ringcrypt file (wrong magic bytes)".into());
            }
            return bad(format!(
                "too short to be a ringcrypt file: {} bytes, the header alone is {HEADER_BYTES}",
                bytes.len()
            ));
        }
        if bytes[..8] != MAGIC {
            return bad("not a ringcrypt file (wrong magic bytes)".into());
        }
        if bytes[8] != VERSION {
            return bad(format!(
                "unsupported ringcrypt format version {} (this build reads version {VERSION})",
                bytes[8]
            ));
        }
        if bytes[9] != SUITE {
            return bad(format!(
                "unsupported cipher suite {} (this build knows suite {SUITE}, AES-256-CBC + HMAC-SHA256)",
                bytes[9]
            ));
        }
        let chunk_log2 = bytes[10];
        if !(CHUNK_LOG2_MIN..=CHUNK_LOG2_MAX).contains(&chunk_log2) {
            return bad(format!(
                "chunk size 2^{chunk_log2} is outside the allowed 2^{CHUNK_LOG2_MIN}..2^{CHUNK_LOG2_MAX}"
            ));
        }
        if bytes[11] != 0 {
            return bad(format!("unknown header flags {:#04x}", bytes[11]));
        }
        if bytes[12..16] != [0; 4] {
            return bad("reserved header bytes are not zero".into());
        }
        let mut header = Header {
            chunk_log2,
            key_id: [0; 16],
            salt: [0; 32],
            header_tag: [0; 32],
        };
        header.key_id.copy_from_slice(&bytes[16..32]);
        header.salt.copy_from_slice(&bytes[32..64]);
        header.header_tag.copy_from_slice(&bytes[64..96]);
        Ok(header)
    }

    /// Bytes 0..64: everything the header tag covers.
    fn tagged_prefix(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..8].copy_from_slice(&MAGIC);
        out[8] = VERSION;
        out[9] = SUITE;
        out[10] = self.chunk_log2;
        // out[11] flags and out[12..16] reserved stay zero.
        out[16..32].copy_from_slice(&self.key_id);
        out[32..64].copy_from_slice(&self.salt);
        out
    }

    /// The 96 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..64].copy_from_slice(&self.tagged_prefix());
        out[64..].copy_from_slice(&self.header_tag);
        out
    }

    /// C, the plaintext bytes in every non-final chunk.
    pub fn chunk_bytes(&self) -> usize {
        1 << self.chunk_log2
    }
}

/// Bytes of a chunk tag's prefix: header_tag || u64(index) || u8(last).
const CHUNK_PREFIX_BYTES: usize = 32 + 8 + 1;

/// The per-file keys: K_enc as an AES key schedule, K_mac as precomputed HMAC states (so a
/// tag skips re-hashing the padded key) that tag a batch's chunks as interleaved chains.
#[derive(Clone)]
struct FileKeys {
    aes: Aes256,
    mac: HmacKey,
    header_tag: [u8; 32],
}

impl FileKeys {
    /// HKDF-SHA256(ikm = master, salt, info = "ringcrypt v1" || bytes 0..16, L = 64).
    fn derive(master: &[u8; 32], prefix: &[u8; 64], salt: &[u8; 32]) -> FileKeys {
        let mut info = [0u8; HKDF_INFO_LABEL.len() + 16];
        info[..HKDF_INFO_LABEL.len()].copy_from_slice(HKDF_INFO_LABEL);
        info[HKDF_INFO_LABEL.len()..].copy_from_slice(&prefix[..16]);
        let mut okm = Zeroizing::new([0u8; 64]);
        Hkdf::<Sha256>::new(Some(salt), master)
            .expand(&info, okm.as_mut())
            .expect("64 bytes is within HKDF-SHA256's 8160-byte limit");
        let aes = Aes256::new_from_slice(&okm[..32]).expect("32-byte AES-256 key");
        let mac = HmacKey::new(&okm[32..]);
        let header_tag = mac.tag(prefix, &[]);
        FileKeys {
            aes,
            mac,
            header_tag,
        }
    }

    /// header_tag || u64(index) || u8(last): what a chunk's tag covers before its ciphertext.
    fn chunk_prefix(&self, index: u64, last: bool) -> [u8; CHUNK_PREFIX_BYTES] {
        let mut prefix = [0u8; CHUNK_PREFIX_BYTES];
        prefix[..32].copy_from_slice(&self.header_tag);
        prefix[32..40].copy_from_slice(&index.to_be_bytes());
        prefix[40] = u8::from(last);
        prefix
    }

    /// HMAC-SHA256(K_mac, header_tag || u64(index) || u8(last) || ct), which the caller either
    /// writes (sealing) or compares in constant time (opening).
    fn chunk_tag(&self, index: u64, last: bool, ct: &[u8]) -> [u8; TAG_BYTES] {
        self.mac.tag(&self.chunk_prefix(index, last), ct)
    }

    /// The tags of the non-final chunks in `group` (up to [`LANES`] records of `stride` bytes,
    /// C = `chunk` ciphertext bytes in front of each), numbered from `first`, into `tags`.
    /// Equal-length chunks are what lets `sha_mb` run their hash chains interleaved.
    fn chunk_tags(
        &self,
        first: u64,
        group: &[u8],
        stride: usize,
        chunk: usize,
        tags: &mut [[u8; TAG_BYTES]],
    ) {
        let count = group.len() / stride;
        debug_assert!(count <= LANES && count == tags.len());
        let prefixes: [[u8; CHUNK_PREFIX_BYTES]; LANES] =
            std::array::from_fn(|lane| self.chunk_prefix(first + lane as u64, false));
        let mut messages = [Message::default(); LANES];
        for ((message, prefix), record) in messages
            .iter_mut()
            .zip(&prefixes)
            .zip(group.chunks_exact(stride))
        {
            *message = Message {
                prefix,
                body: &record[..chunk],
            };
        }
        self.mac.tags(&messages[..count], tags);
    }
}

/// The one failure opening reports for anything wrong after the header: a bad tag, bad
/// padding, a record of the wrong size, a missing or extra record. It carries nothing, so
/// nothing about the cause can leak (no padding oracle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailed;

impl From<AuthFailed> for Error {
    fn from(_: AuthFailed) -> Error {
        Error::new(
            Code::AuthFailed,
            "authentication failed: the file was modified, truncated or damaged, \
             or was not sealed with the key it names",
        )
    }
}

/// A sealing or opening call out of sequence: after the final record, or a record of the
/// wrong size. These are programmer errors in the caller; they are returned rather than
/// panicking because the daemon must not die for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceError {
    /// The final record was already sealed or opened.
    Finished,
    /// The buffer does not hold whole records of the expected size.
    BadLength,
}

impl From<SequenceError> for Error {
    fn from(err: SequenceError) -> Error {
        Error::new(Code::Internal, format!("chunk stream misuse: {err:?}"))
    }
}

/// Bytes of the sealed final record for `plain_len` (< C) bytes of plaintext: PKCS#7 always
/// adds 1..=16 bytes, then the tag.
pub fn final_record_bytes(plain_len: usize) -> usize {
    (plain_len / BLOCK_BYTES + 1) * BLOCK_BYTES + TAG_BYTES
}

/// Size of the sealed file for `plain_len` plaintext bytes at chunk size 2^chunk_log2.
pub fn sealed_len(plain_len: u64, chunk_log2: u8) -> u64 {
    let full = plain_len >> chunk_log2;
    let rest = (plain_len & ((1u64 << chunk_log2) - 1)) as usize;
    HEADER_BYTES as u64
        + full * ((1u64 << chunk_log2) + TAG_BYTES as u64)
        + final_record_bytes(rest) as u64
}

/// Seals one file: makes the header, then seals records in order. Every non-final record is
/// exactly C + 32 bytes; exactly one final record ends the stream (a second is an error).
pub struct Sealer {
    keys: FileKeys,
    header: Header,
    next_index: u64,
    finished: bool,
}

impl Sealer {
    /// Starts a file sealed under `master` (whose id is `key_id`) with a caller-chosen salt.
    /// Production callers pass 32 bytes from the OS CSPRNG ([`random_salt`]); tests pass fixed
    /// salts to reproduce golden files.
    pub fn new(master: &[u8; 32], chunk_log2: u8, salt: [u8; 32]) -> Sealer {
        assert!(
            (CHUNK_LOG2_MIN..=CHUNK_LOG2_MAX).contains(&chunk_log2),
            "chunk_log2 {chunk_log2} out of range"
        );
        let mut header = Header {
            chunk_log2,
            key_id: key_id(master),
            salt,
            header_tag: [0; 32],
        };
        let keys = FileKeys::derive(master, &header.tagged_prefix(), &salt);
        header.header_tag = keys.header_tag;
        Sealer {
            keys,
            header,
            next_index: 0,
            finished: false,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// C + 32: the size of every non-final record.
    pub fn record_bytes(&self) -> usize {
        self.header.chunk_bytes() + TAG_BYTES
    }

    /// Seals whole non-final chunks in place. `records` is k records of C + 32 bytes laid end
    /// to end, each holding C plaintext bytes in front; each becomes CT || TAG. Groups of
    /// [`LANES`] records go through the multi-lane CBC engine together.
    pub fn seal_full(&mut self, records: &mut [u8]) -> Result<(), SequenceError> {
        if self.finished {
            return Err(SequenceError::Finished);
        }
        let stride = self.record_bytes();
        if !records.len().is_multiple_of(stride) {
            return Err(SequenceError::BadLength);
        }
        let chunk = self.header.chunk_bytes();
        for group in records.chunks_mut(stride * LANES) {
            let lanes = group.len() / stride;
            let mut ivs = [Block::default(); LANES];
            lanes::chunk_ivs(&self.keys.aes, self.next_index, &mut ivs[..lanes]);
            lanes::encrypt_lanes(&self.keys.aes, &ivs[..lanes], group, stride, chunk);
            self.tag_group(group);
        }
        Ok(())
    }

    /// Seals whole non-final chunks out of place: `plain` is k chunks of C bytes end to end,
    /// `records` has room for k records of C + 32 bytes, which it receives exactly as
    /// [`Sealer::seal_full`] would have left them. For direct IO, where the plaintext is read
    /// into aligned slots and the records go to an aligned staging area.
    pub fn seal_full_to(&mut self, plain: &[u8], records: &mut [u8]) -> Result<(), SequenceError> {
        let (stride, chunk) = (self.record_bytes(), self.header.chunk_bytes());
        if self.finished
            || !plain.len().is_multiple_of(chunk)
            || records.len() != plain.len() / chunk * stride
        {
            return Err(SequenceError::BadLength);
        }
        for (src, group) in plain
            .chunks(chunk * LANES)
            .zip(records.chunks_mut(stride * LANES))
        {
            let lanes = group.len() / stride;
            let mut ivs = [Block::default(); LANES];
            lanes::chunk_ivs(&self.keys.aes, self.next_index, &mut ivs[..lanes]);
            // Each chunk is copied in front of its record, then the lanes run in place: a
            // copy reads and writes one stream at a time, which the prefetchers follow,
            // where eight lanes reading one place and writing another (16 streams) outrun
            // them on data that came by DMA and is in no cache.
            for (record, chunk_in) in group.chunks_exact_mut(stride).zip(src.chunks_exact(chunk)) {
                record[..chunk].copy_from_slice(chunk_in);
            }
            lanes::encrypt_lanes(&self.keys.aes, &ivs[..lanes], group, stride, chunk);
            self.tag_group(group);
        }
        Ok(())
    }

    /// Writes the tags of one group of sealed records (each CT || room for its tag) and
    /// moves past them.
    fn tag_group(&mut self, group: &mut [u8]) {
        let (stride, chunk) = (self.record_bytes(), self.header.chunk_bytes());
        let lanes = group.len() / stride;
        let mut tags = [[0u8; TAG_BYTES]; LANES];
        self.keys
            .chunk_tags(self.next_index, group, stride, chunk, &mut tags[..lanes]);
        for (record, tag) in group.chunks_exact_mut(stride).zip(&tags) {
            record[chunk..].copy_from_slice(tag);
        }
        // A u64 index cannot overflow: chunks are at least 4 KiB, so a file would need
        // 2^76 bytes.
        self.next_index += lanes as u64;
    }

    /// Seals the final chunk in place: `buf[..plain_len]` is its plaintext (`plain_len` < C,
    /// possibly 0) and `buf` has room for [`final_record_bytes`]. Returns the record's length.
    pub fn seal_final(&mut self, buf: &mut [u8], plain_len: usize) -> Result<usize, SequenceError> {
        if self.finished {
            return Err(SequenceError::Finished);
        }
        let record = final_record_bytes(plain_len);
        if plain_len >= self.header.chunk_bytes() || buf.len() < record {
            return Err(SequenceError::BadLength);
        }
        let ct_len = record - TAG_BYTES;
        let pad = (ct_len - plain_len) as u8;
        buf[plain_len..ct_len].fill(pad);
        let mut iv = [Block::default()];
        lanes::chunk_ivs(&self.keys.aes, self.next_index, &mut iv);
        lanes::encrypt_lanes(&self.keys.aes, &iv, &mut buf[..ct_len], ct_len, ct_len);
        let (ct, tag) = buf[..record].split_at_mut(ct_len);
        tag.copy_from_slice(&self.keys.chunk_tag(self.next_index, true, ct));
        self.finished = true;
        Ok(record)
    }

    /// True once the final record is sealed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// A sealer for the same file that starts at record `index`: the file's records are
    /// independent under its keys (each chunk's IV and tag derive from its index), so a
    /// range of them can be sealed apart from the rest and written at its offset.
    pub fn fork_at(&self, index: u64) -> Sealer {
        Sealer {
            keys: self.keys.clone(),
            header: self.header,
            next_index: index,
            finished: false,
        }
    }
}

/// The record plan of a sealed file, from its length: how many full records, and the size of
/// the final one. The final record must end exactly at end of file, and only the final record
/// may be shorter than C + 32, so the length alone fixes the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub full_records: u64,
    pub final_record_bytes: usize,
}

impl Layout {
    /// The plan for a file of `file_len` bytes (header included).
    pub fn for_file(file_len: u64, chunk_log2: u8) -> Result<Layout, AuthFailed> {
        let body = file_len
            .checked_sub(HEADER_BYTES as u64)
            .ok_or(AuthFailed)?;
        if body == 0 {
            return Err(AuthFailed);
        }
        let stride = (1u64 << chunk_log2) + TAG_BYTES as u64;
        let full_records = (body - 1) / stride;
        let final_record_bytes = (body - full_records * stride) as usize;
        let ct = final_record_bytes
            .checked_sub(TAG_BYTES)
            .ok_or(AuthFailed)?;
        if ct < BLOCK_BYTES || ct % BLOCK_BYTES != 0 {
            return Err(AuthFailed);
        }
        Ok(Layout {
            full_records,
            final_record_bytes,
        })
    }
}

/// Opens one file: verifies the header tag on creation, then each record's tag (constant
/// time) before that record is decrypted or unpadded.
pub struct Opener {
    keys: FileKeys,
    header: Header,
    next_index: u64,
    finished: bool,
}

impl Opener {
    /// Starts opening a file whose header is `header`, with the master key its key id names.
    pub fn new(header: &Header, master: &[u8; 32]) -> Result<Opener, AuthFailed> {
        let keys = FileKeys::derive(master, &header.tagged_prefix(), &header.salt);
        let recomputed = keys.header_tag;
        if !bool::from(recomputed[..].ct_eq(&header.header_tag[..])) {
            return Err(AuthFailed);
        }
        Ok(Opener {
            keys,
            header: *header,
            next_index: 0,
            finished: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// C + 32: the size of every non-final record.
    pub fn record_bytes(&self) -> usize {
        self.header.chunk_bytes() + TAG_BYTES
    }

    /// Opens whole non-final records in place: `records` is k records of C + 32 bytes; every
    /// tag is verified first, then each chunk is decrypted, leaving C plaintext bytes at the
    /// front of each record. On failure the buffer holds no plaintext.
    pub fn open_full(&mut self, records: &mut [u8]) -> Result<(), AuthFailed> {
        self.verify_tags(records)?;
        let (stride, chunk) = (self.record_bytes(), self.header.chunk_bytes());
        for group in records.chunks_mut(stride * LANES) {
            let lanes = group.len() / stride;
            let mut ivs = [Block::default(); LANES];
            lanes::chunk_ivs(&self.keys.aes, self.next_index, &mut ivs[..lanes]);
            for (record, iv) in group.chunks_exact_mut(stride).zip(&ivs) {
                lanes::decrypt_chain(&self.keys.aes, iv, &mut record[..chunk]);
            }
            self.next_index += lanes as u64;
        }
        Ok(())
    }

    /// Opens whole non-final records out of place: `records` is k records of C + 32 bytes,
    /// `plain` receives their k chunks of C bytes end to end. Every tag is verified first,
    /// as [`Opener::open_full`] does; on failure `plain` receives nothing. For direct IO,
    /// where the records sit at unaligned offsets of an aligned read window and the
    /// plaintext is written from aligned slots.
    pub fn open_full_to(&mut self, records: &[u8], plain: &mut [u8]) -> Result<(), AuthFailed> {
        let (stride, chunk) = (self.record_bytes(), self.header.chunk_bytes());
        if plain.len() != records.len() / stride * chunk {
            return Err(AuthFailed);
        }
        self.verify_tags(records)?;
        for (group, out) in records
            .chunks(stride * LANES)
            .zip(plain.chunks_mut(chunk * LANES))
        {
            let lanes = group.len() / stride;
            let mut ivs = [Block::default(); LANES];
            lanes::chunk_ivs(&self.keys.aes, self.next_index, &mut ivs[..lanes]);
            for ((record, to), iv) in group
                .chunks_exact(stride)
                .zip(out.chunks_exact_mut(chunk))
                .zip(&ivs)
            {
                lanes::decrypt_chain_to(&self.keys.aes, iv, &record[..chunk], to);
            }
            self.next_index += lanes as u64;
        }
        Ok(())
    }

    /// Checks whole non-final records without decrypting them: every tag is verified, as
    /// [`Opener::open_full`] does, and the records are left as they are. For `verify`, which
    /// wants the verdict and no plaintext.
    pub fn check_full(&mut self, records: &[u8]) -> Result<(), AuthFailed> {
        self.verify_tags(records)?;
        self.next_index += (records.len() / self.record_bytes()) as u64;
        Ok(())
    }

    /// Verifies the tag of every record in `records` (k records of C + 32 bytes), numbered
    /// from the next index, in constant time per group.
    fn verify_tags(&self, records: &[u8]) -> Result<(), AuthFailed> {
        let stride = self.record_bytes();
        if self.finished || !records.len().is_multiple_of(stride) {
            return Err(AuthFailed);
        }
        let chunk = self.header.chunk_bytes();
        for (batch, group) in records.chunks(stride * LANES).enumerate() {
            let lanes = group.len() / stride;
            let first = self.next_index + (batch * LANES) as u64;
            let mut tags = [[0u8; TAG_BYTES]; LANES];
            self.keys
                .chunk_tags(first, group, stride, chunk, &mut tags[..lanes]);
            // Every tag of the group is compared in constant time; which record failed is
            // not secret (the ciphertext is public), so stopping at the group is fine.
            let mut authentic = subtle::Choice::from(1);
            for (record, tag) in group.chunks_exact(stride).zip(&tags) {
                authentic &= record[chunk..].ct_eq(&tag[..]);
            }
            if !bool::from(authentic) {
                return Err(AuthFailed);
            }
        }
        Ok(())
    }

    /// Opens the final record in place (`record` is CT || TAG, the whole rest of the file) and
    /// returns the plaintext length at the front of `record`.
    pub fn open_final(&mut self, record: &mut [u8]) -> Result<usize, AuthFailed> {
        let ct_len = self.final_tag(record)?;
        let ct = &mut record[..ct_len];
        let mut iv = [Block::default()];
        lanes::chunk_ivs(&self.keys.aes, self.next_index, &mut iv);
        lanes::decrypt_chain(&self.keys.aes, &iv[0], ct);
        // The tag is authentic, so the padding was written by a key holder; it is still
        // checked, and any mistake is the same opaque failure.
        let Some(pad) = padding(&ct[ct_len - BLOCK_BYTES..]) else {
            ct.fill(0);
            return Err(AuthFailed);
        };
        self.finished = true;
        Ok(ct_len - pad)
    }

    /// Checks the final record (CT || TAG, the whole rest of the file) without writing any
    /// plaintext: its tag, then its padding, for which only the last block is decrypted,
    /// into a copy. Returns the plaintext length, as [`Opener::open_final`] would.
    pub fn check_final(&mut self, record: &[u8]) -> Result<usize, AuthFailed> {
        let ct_len = self.final_tag(record)?;
        // CBC: the last plaintext block is D(last ciphertext block) XOR the block before
        // it, or the chunk's IV when the record has one block.
        let chain = if ct_len > BLOCK_BYTES {
            Block::clone_from_slice(&record[ct_len - 2 * BLOCK_BYTES..ct_len - BLOCK_BYTES])
        } else {
            let mut iv = [Block::default()];
            lanes::chunk_ivs(&self.keys.aes, self.next_index, &mut iv);
            iv[0]
        };
        let mut last = Zeroizing::new([0u8; BLOCK_BYTES]);
        last.copy_from_slice(&record[ct_len - BLOCK_BYTES..ct_len]);
        lanes::decrypt_chain(&self.keys.aes, &chain, last.as_mut());
        let pad = padding(last.as_ref()).ok_or(AuthFailed)?;
        self.finished = true;
        Ok(ct_len - pad)
    }

    /// Verifies the final record's tag (constant time) and its size; returns the
    /// ciphertext's length.
    fn final_tag(&self, record: &[u8]) -> Result<usize, AuthFailed> {
        if self.finished || record.len() > self.record_bytes() {
            return Err(AuthFailed);
        }
        let ct_len = record.len().checked_sub(TAG_BYTES).ok_or(AuthFailed)?;
        if ct_len < BLOCK_BYTES || ct_len % BLOCK_BYTES != 0 {
            return Err(AuthFailed);
        }
        let (ct, tag) = record.split_at(ct_len);
        let want = self.keys.chunk_tag(self.next_index, true, ct);
        if !bool::from(tag.ct_eq(&want[..])) {
            return Err(AuthFailed);
        }
        Ok(ct_len)
    }

    /// Moves to record `index` without reading the records before it, to check only the
    /// final record of an existing file (its tag names its index). Only for verification:
    /// skipped records are not authenticated.
    pub fn skip_to(&mut self, index: u64) {
        self.next_index = index;
    }

    /// True once the final record is opened: the stream is complete and authentic.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// An opener for the same file that starts at record `index`, for a range of records
    /// opened apart from the rest ([`Sealer::fork_at`]). Every record is still verified by
    /// whoever opens it; the file is authentic once every range opened and one of them
    /// opened the final record.
    pub fn fork_at(&self, index: u64) -> Opener {
        Opener {
            keys: self.keys.clone(),
            header: self.header,
            next_index: index,
            finished: false,
        }
    }
}

/// The PKCS#7 padding length of a final chunk whose last plaintext block is `last`, or None
/// when the padding is malformed. Also the openssl format's one check.
pub(crate) fn padding(last: &[u8]) -> Option<usize> {
    let pad = usize::from(*last.last()?);
    ((1..=BLOCK_BYTES).contains(&pad)
        && last[last.len() - pad..]
            .iter()
            .all(|&b| usize::from(b) == pad))
    .then_some(pad)
}

/// Fills `buf` from the OS CSPRNG. The one place randomness comes from: salts, keys and
/// temp file names all go through here (or [`random_bytes`]).
pub fn random_fill(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|err| {
        Error::new(
            Code::Internal,
            format!("the OS random generator failed: {err}"),
        )
    })
}

/// `N` bytes from the OS CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    random_fill(&mut bytes)?;
    Ok(bytes)
}

/// 32 bytes from the OS CSPRNG, for a file's salt.
pub fn random_salt() -> Result<[u8; 32], Error> {
    random_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: [u8; 32] = [7; 32];

    fn seal(plain: &[u8], chunk_log2: u8, salt: [u8; 32]) -> Vec<u8> {
        let mut sealer = Sealer::new(&MASTER, chunk_log2, salt);
        let chunk = 1usize << chunk_log2;
        let mut out = sealer.header().to_bytes().to_vec();
        let full = plain.len() / chunk;
        let mut records = vec![0u8; full * sealer.record_bytes()];
        for (i, record) in records.chunks_exact_mut(sealer.record_bytes()).enumerate() {
            record[..chunk].copy_from_slice(&plain[i * chunk..(i + 1) * chunk]);
        }
        sealer.seal_full(&mut records).unwrap();
        out.extend_from_slice(&records);
        let rest = &plain[full * chunk..];
        let mut last = vec![0u8; final_record_bytes(rest.len())];
        last[..rest.len()].copy_from_slice(rest);
        let n = sealer.seal_final(&mut last, rest.len()).unwrap();
        out.extend_from_slice(&last[..n]);
        out
    }

    fn open(file: &[u8]) -> Result<Vec<u8>, AuthFailed> {
        let header = Header::parse(file).map_err(|_| AuthFailed)?;
        let layout = Layout::for_file(file.len() as u64, header.chunk_log2)?;
        let mut opener = Opener::new(&header, &MASTER)?;
        let stride = opener.record_bytes();
        let chunk = header.chunk_bytes();
        let full_end = HEADER_BYTES + layout.full_records as usize * stride;
        let mut records = file[HEADER_BYTES..full_end].to_vec();
        opener.open_full(&mut records)?;
        let mut plain = Vec::new();
        for record in records.chunks_exact(stride) {
            plain.extend_from_slice(&record[..chunk]);
        }
        let mut last = file[full_end..].to_vec();
        let n = opener.open_final(&mut last)?;
        plain.extend_from_slice(&last[..n]);
        Ok(plain)
    }

    #[test]
    fn header_round_trips_canonically() {
        let sealer = Sealer::new(&MASTER, 16, [3; 32]);
        let bytes = sealer.header().to_bytes();
        assert_eq!(&bytes[..8], b"\x89RCRYPT\n");
        assert_eq!(bytes[8..16], [1, 1, 16, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[16..32], key_id(&MASTER));
        let parsed = Header::parse(&bytes).unwrap();
        assert_eq!(parsed.to_bytes(), bytes);
    }

    #[test]
    fn header_fields_are_checked() {
        let good = Sealer::new(&MASTER, 12, [3; 32]).header().to_bytes();
        for (at, value) in [
            (0, 0x88),
            (7, b'\r'),
            (8, 2),
            (9, 0),
            (10, 11),
            (10, 25),
            (11, 1),
            (15, 1),
        ] {
            let mut bad = good;
            bad[at] = value;
            let err = Header::parse(&bad).unwrap_err();
            assert_eq!(err.code, Code::BadFormat, "byte {at} = {value}");
        }
        assert_eq!(
            Header::parse(&good[..95]).unwrap_err().code,
            Code::BadFormat
        );
        assert_eq!(Header::parse(&[]).unwrap_err().code, Code::BadFormat);
    }

    #[test]
    fn sealed_length_matches_layout() {
        for chunk_log2 in [12u8, 13] {
            let c = 1usize << chunk_log2;
            for len in [0, 1, 15, 16, 17, c - 1, c, c + 1, 3 * c + 5] {
                let file = seal(&vec![9u8; len], chunk_log2, [1; 32]);
                assert_eq!(file.len() as u64, sealed_len(len as u64, chunk_log2));
                let layout = Layout::for_file(file.len() as u64, chunk_log2).unwrap();
                assert_eq!(layout.full_records as usize, len / c, "len {len}");
            }
        }
    }

    #[test]
    fn round_trip_and_every_truncation_fails() {
        let plain: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        let file = seal(&plain, 12, [5; 32]);
        assert_eq!(open(&file).unwrap(), plain);
        for cut in [
            0,
            95,
            96,
            96 + 4128,
            96 + 2 * 4128,
            file.len() - 16,
            file.len() - 1,
        ] {
            assert_eq!(open(&file[..cut]), Err(AuthFailed), "cut at {cut}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(open(&longer), Err(AuthFailed));
    }

    #[test]
    fn a_second_final_record_is_refused() {
        let mut sealer = Sealer::new(&MASTER, 12, [0; 32]);
        let mut buf = [0u8; 64];
        assert_eq!(sealer.seal_final(&mut buf, 3), Ok(48));
        assert_eq!(sealer.seal_final(&mut buf, 3), Err(SequenceError::Finished));
        assert_eq!(sealer.seal_full(&mut []), Err(SequenceError::Finished));
    }

    #[test]
    fn wrong_master_key_fails_at_the_header() {
        let file = seal(b"hello", 12, [2; 32]);
        let header = Header::parse(&file).unwrap();
        assert!(Opener::new(&header, &[8; 32]).is_err());
    }

    /// [`open`] with the tag-only checks: the plaintext size, and the records untouched.
    fn check(file: &[u8]) -> Result<usize, AuthFailed> {
        let header = Header::parse(file).map_err(|_| AuthFailed)?;
        let layout = Layout::for_file(file.len() as u64, header.chunk_log2)?;
        let mut opener = Opener::new(&header, &MASTER)?;
        let full_end = HEADER_BYTES + layout.full_records as usize * opener.record_bytes();
        opener.check_full(&file[HEADER_BYTES..full_end])?;
        let last = opener.check_final(&file[full_end..])?;
        assert!(opener.is_finished());
        Ok(layout.full_records as usize * header.chunk_bytes() + last)
    }

    #[test]
    fn checking_agrees_with_opening_at_every_size_and_flipped_byte() {
        let c = 4096usize;
        for len in [0, 1, 15, 16, 17, 31, 32, c - 1, c, c + 1, 9 * c + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = seal(&plain, 12, [4; 32]);
            assert_eq!(check(&file), Ok(len), "len {len}");
            assert_eq!(open(&file).map(|p| p.len()), Ok(len), "len {len}");
            // Every byte after the header (the header has its own tag) flipped in turn
            // fails both ways, at a stride that touches every record's body and tag.
            for at in (HEADER_BYTES..file.len())
                .step_by(97)
                .chain([file.len() - 1])
            {
                let mut bad = file.clone();
                bad[at] ^= 0x40;
                assert_eq!(check(&bad), Err(AuthFailed), "len {len}, byte {at}");
                assert_eq!(open(&bad), Err(AuthFailed), "len {len}, byte {at}");
            }
            assert_eq!(check(&file[..file.len() - 1]), Err(AuthFailed));
        }
    }

    #[test]
    fn checking_refuses_bad_padding_under_a_valid_tag() {
        // A final record a key holder sealed with broken padding: the tag verifies, the
        // padding check alone must refuse it, in both the check and the open.
        for (plain_len, last_byte) in [(5usize, 0u8), (20, 17), (16, 3)] {
            let file = seal(&vec![1u8; plain_len], 12, [6; 32]);
            let header = Header::parse(&file).unwrap();
            let opener = Opener::new(&header, &MASTER).unwrap();
            let ct_len = final_record_bytes(plain_len) - TAG_BYTES;
            let mut ct = vec![1u8; ct_len];
            ct[ct_len - 1] = last_byte;
            let mut iv = [Block::default()];
            lanes::chunk_ivs(&opener.keys.aes, 0, &mut iv);
            lanes::encrypt_lanes(&opener.keys.aes, &iv, &mut ct, ct_len, ct_len);
            let tag = opener.keys.chunk_tag(0, true, &ct);
            let mut forged = file[..HEADER_BYTES].to_vec();
            forged.extend_from_slice(&ct);
            forged.extend_from_slice(&tag);
            assert_eq!(check(&forged), Err(AuthFailed), "pad byte {last_byte}");
            assert_eq!(open(&forged), Err(AuthFailed), "pad byte {last_byte}");
        }
    }
}
