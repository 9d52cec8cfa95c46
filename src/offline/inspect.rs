//! What a sealed file says about itself, read without decrypting it: the format, the
//! header's fields, the record plan its length gives, and the plaintext size (a range of 16
//! bytes without a key, since the final chunk's padding is encrypted; exact with the key
//! ring, once the header tag and the final record's tag verify). Only the header and, with
//! a key, the final record are read.
//!
//! What this room does not do: verify the records in between (that is [`super::verify`]),
//! or print anything.

#![forbid(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::crypto::format::{self, Header, Layout, Opener};
use crate::crypto::keys::{KeyMaterial, KeyRing, hex_encode};
use crate::crypto::openssl;
use crate::error::{Code, Error};
use crate::limits::{HEADER_BYTES, TAG_BYTES};
use crate::protocol::Format;

/// AES block size: the unit of padding.
const BLOCK: u64 = 16;

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub format: Format,
    pub file_bytes: u64,
    /// ringcrypt: the header's fields.
    pub header: Option<Header>,
    /// ringcrypt: records (chunks) in the file, when its length fits the format.
    pub records: Option<u64>,
    /// The plaintext size lies in this range (both ends included); one value when exact.
    pub plaintext: Option<(u64, u64)>,
    /// With a key ring: the name and state of the key the file names, if the ring has it.
    pub key: Option<(String, &'static str)>,
    /// Something the header or length shows is wrong (the file will not decrypt).
    pub problem: Option<Error>,
}

impl Inspection {
    /// The key id as 32 hex digits (ringcrypt files).
    pub fn key_id_hex(&self) -> Option<String> {
        self.header.as_ref().map(|h| hex_encode(&h.key_id))
    }

    /// The plaintext size when it is known exactly.
    pub fn exact_plaintext(&self) -> Option<u64> {
        self.plaintext.filter(|(lo, hi)| lo == hi).map(|(lo, _)| lo)
    }
}

/// Reads what `path` says about itself; with `ring`, also its key's name and state, and the
/// exact plaintext size when the key opens the header and final record. A file that is
/// neither a ringcrypt nor an openssl file, or whose header does not parse, is the `Err`
/// (`bad_format`).
pub fn inspect(path: &Path, ring: Option<&KeyRing>) -> Result<Inspection, Error> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::new(
            Code::BadRequest,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let len = meta.len();
    let mut head = [0u8; HEADER_BYTES];
    let got = openssl::read_full(&mut file, &mut head).map_err(|e| Error::io("read", path, e))?;
    let in_file = |e: Error| e.context(path.display());
    if head[..got].starts_with(openssl::MAGIC) {
        return Ok(openssl_file(len));
    }
    let header = Header::parse(&head[..got]).map_err(in_file)?;
    let mut found = Inspection {
        format: Format::Ringcrypt,
        file_bytes: len,
        header: Some(header),
        records: None,
        plaintext: None,
        key: None,
        problem: None,
    };
    let layout = match Layout::for_file(len, header.chunk_log2) {
        Ok(layout) => layout,
        Err(_) => {
            found.problem = Some(Error::new(
                Code::AuthFailed,
                format!(
                    "{}: its length ({len} bytes) fits no record plan: it is truncated or \
                     damaged",
                    path.display()
                ),
            ));
            return Ok(found);
        }
    };
    found.records = Some(layout.full_records + 1);
    let before = layout.full_records * header.chunk_bytes() as u64;
    let final_ct = (layout.final_record_bytes - TAG_BYTES) as u64;
    found.plaintext = Some((before + final_ct - BLOCK, before + final_ct - 1));
    if let Some(ring) = ring {
        found.key = key_of(ring, &header.key_id);
        if let Ok(master) = ring.opening_key(&header.key_id) {
            match final_plaintext(&file, &header, master.bytes(), &layout, len) {
                Ok(plain) => found.plaintext = Some((before + plain, before + plain)),
                Err(err) => found.problem = Some(in_file(err)),
            }
        }
    }
    Ok(found)
}

/// The name and state of the ringcrypt key with id `id` in `ring`.
fn key_of(ring: &KeyRing, id: &format::KeyId) -> Option<(String, &'static str)> {
    ring.entries()
        .iter()
        .find_map(|entry| match &entry.material {
            KeyMaterial::Secret(key) if key.id() == id => {
                Some((entry.name.clone(), entry.state.as_str()))
            }
            _ => None,
        })
}

/// The final record's plaintext length, after the header tag and its tag verify.
fn final_plaintext(
    file: &File,
    header: &Header,
    master: &[u8; 32],
    layout: &Layout,
    len: u64,
) -> Result<u64, Error> {
    let auth = |_| Error::from(format::AuthFailed);
    let mut opener = Opener::new(header, master).map_err(auth)?;
    let mut last = vec![0u8; layout.final_record_bytes];
    let at = len - layout.final_record_bytes as u64;
    file.read_exact_at(&mut last, at)
        .map_err(|e| Error::new(Code::from_io(&e), format!("cannot read it: {e}")))?;
    opener.skip_to(layout.full_records);
    Ok(opener.open_final(&mut last).map_err(auth)? as u64)
}

/// An openssl-format file: `Salted__`, 8 bytes of salt, then whole blocks with at least
/// one byte of padding.
fn openssl_file(len: u64) -> Inspection {
    let body = len.saturating_sub(16);
    let valid = len >= 32 && body.is_multiple_of(BLOCK);
    Inspection {
        format: Format::Openssl,
        file_bytes: len,
        header: None,
        records: None,
        plaintext: valid.then(|| (body - BLOCK, body - 1)),
        key: None,
        problem: (!valid).then(|| {
            Error::new(
                Code::BadFormat,
                format!(
                    "an openssl file is 16 bytes of header and whole 16-byte blocks; this one \
                     is {len} bytes"
                ),
            )
        }),
    }
}
