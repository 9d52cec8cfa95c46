//! File-level encrypt, decrypt and rewrap in this process (the client's `--keys` mode): open
//! the input, stream it through `stream`/`openssl` into an [`AtomicFile`], commit. Inputs are
//! only read; on any failure nothing appears under the output name and no temp file remains.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Code, Error};
use crate::format::{self, Sealer};
use crate::keys::{KeyMaterial, KeyRing};
use crate::openssl::{self, OpensslWriter};
use crate::output::{AtomicFile, Durability};
use crate::stream::{self, SealWriter};

/// The on-disk format of an encrypted file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// RCRYPT v1: authenticated. The default.
    Ringcrypt,
    /// `openssl enc -aes-256-cbc -pbkdf2`: unauthenticated, for legacy archives.
    Openssl,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ringcrypt => "ringcrypt",
            Format::Openssl => "openssl",
        }
    }
}

/// One file job.
#[derive(Clone, Copy, Debug)]
pub struct Job<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    /// encrypt: the key to seal under (default: the ring's default). decrypt and rewrap: the
    /// passphrase entry for openssl-format inputs (ringcrypt files name their own key).
    pub key: Option<&'a str>,
    /// encrypt only.
    pub format: Format,
    /// encrypt only: 2^chunk_log2-byte chunks.
    pub chunk_log2: u8,
    /// Replace an existing output atomically instead of failing with `exists`.
    pub overwrite: bool,
    pub durability: Durability,
}

/// What a finished job did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The format written (encrypt, rewrap) or read (decrypt).
    pub format: Format,
    /// The key used to seal (encrypt, rewrap) or the key the input named (decrypt).
    pub key: String,
}

struct Input {
    file: File,
    len: u64,
    mode: u32,
    dev_ino: (u64, u64),
}

fn open_input(path: &Path) -> Result<Input, Error> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if meta.is_dir() {
        return Err(Error::new(
            Code::BadRequest,
            format!("{} is a directory; give a file", path.display()),
        ));
    }
    if !meta.is_file() {
        return Err(Error::new(
            Code::BadRequest,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(Input {
        file,
        len: meta.len(),
        mode: meta.mode() & 0o777,
        dev_ino: (meta.dev(), meta.ino()),
    })
}

/// Refuses an output that is the input itself: inputs are never modified.
fn refuse_same_file(input: &Input, job: &Job) -> Result<(), Error> {
    if let Ok(meta) = std::fs::metadata(job.output)
        && (meta.dev(), meta.ino()) == input.dev_ino
    {
        return Err(Error::new(
            Code::BadRequest,
            format!(
                "{} is the input itself; inputs are never modified, choose another output",
                job.output.display()
            ),
        ));
    }
    Ok(())
}

fn write_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io("write", path, e)
}

/// Encrypts `job.input` into `job.output`.
pub fn encrypt(ring: &KeyRing, job: &Job) -> Result<Outcome, Error> {
    let entry = match job.format {
        Format::Ringcrypt => ring.sealing_entry(job.key)?,
        Format::Openssl => ring.sealing_passphrase(job.key)?.0,
    };
    let mut input = open_input(job.input)?;
    refuse_same_file(&input, job)?;
    let mut out = AtomicFile::create(job.output, job.overwrite)?;
    let bytes_out = match (&entry.material, job.format) {
        (KeyMaterial::Secret(master), Format::Ringcrypt) => {
            let sealer = Sealer::new(master.bytes(), job.chunk_log2, format::random_salt()?);
            let mut writer =
                SealWriter::new(sealer, out.file()).map_err(write_error(job.output))?;
            let read = writer
                .fill_from(&mut input.file)
                .map_err(|e| Error::io("read", job.input, e))?;
            if read != input.len {
                return Err(changed_while_reading(job.input));
            }
            writer.finish().map_err(write_error(job.output))?.1
        }
        (KeyMaterial::Passphrase { passphrase, iter }, Format::Openssl) => {
            let salt = openssl::random_salt()?;
            let mut writer = OpensslWriter::new(out.file(), passphrase, *iter, salt)
                .map_err(write_error(job.output))?;
            let read = std::io::copy(&mut input.file, &mut writer)
                .map_err(|e| Error::io("read", job.input, e))?;
            if read != input.len {
                return Err(changed_while_reading(job.input));
            }
            writer.finish().map_err(write_error(job.output))?.1
        }
        (_, format) => {
            return Err(Error::new(
                Code::BadRequest,
                format!(
                    "key {:?} cannot write the {} format",
                    entry.name,
                    format.as_str()
                ),
            ));
        }
    };
    out.commit(input.mode, job.overwrite, job.durability)?;
    Ok(Outcome {
        bytes_in: input.len,
        bytes_out,
        format: job.format,
        key: entry.name.clone(),
    })
}

fn changed_while_reading(path: &Path) -> Error {
    Error::new(
        Code::IoError,
        format!(
            "{} changed size while it was being read; nothing was written",
            path.display()
        ),
    )
}

/// The format of an encrypted input, from its first bytes.
fn detect(path: &Path, magic: &[u8]) -> Result<Format, Error> {
    if magic.starts_with(&format::MAGIC) {
        Ok(Format::Ringcrypt)
    } else if magic.starts_with(openssl::MAGIC) {
        Ok(Format::Openssl)
    } else if magic.len() < 8 && !magic.is_empty() && format::MAGIC.starts_with(magic) {
        // A truncated ringcrypt header: let the header parser say what is wrong.
        Ok(Format::Ringcrypt)
    } else {
        Err(Error::new(
            Code::BadFormat,
            format!(
                "{} is neither a ringcrypt file nor an openssl `Salted__` file",
                path.display()
            ),
        ))
    }
}

/// Decrypts the input (either format) into `sink`; returns (plaintext bytes, format, key).
fn decrypt_into(
    ring: &KeyRing,
    job: &Job,
    input: &mut Input,
    sink: &mut impl Write,
) -> Result<(u64, Format, String), Error> {
    let mut magic = [0u8; 8];
    let got = openssl::read_full(&mut input.file, &mut magic)
        .map_err(|e| Error::io("read", job.input, e))?;
    let format = detect(job.input, &magic[..got])?;
    let mut whole = (&magic[..got]).chain(&mut input.file);
    let in_file = |e: Error| e.context(job.input.display());
    match format {
        Format::Ringcrypt => {
            let (plain, id) = stream::open(&mut whole, input.len, ring, sink).map_err(in_file)?;
            let name = ring.name_for_id(&id).unwrap_or_default().to_string();
            Ok((plain, format, name))
        }
        Format::Openssl => {
            let (entry, passphrase, iter) = ring.passphrase_entry(job.key)?;
            let plain = openssl::decrypt(&mut whole, sink, passphrase, iter).map_err(in_file)?;
            Ok((plain, format, entry.name.clone()))
        }
    }
}

/// Decrypts `job.input` (format detected from its first bytes) into `job.output`.
pub fn decrypt(ring: &KeyRing, job: &Job) -> Result<Outcome, Error> {
    let mut input = open_input(job.input)?;
    refuse_same_file(&input, job)?;
    let mut out = AtomicFile::create(job.output, job.overwrite)?;
    let (plain, format, key) = decrypt_into(
        ring,
        job,
        &mut input,
        &mut std::io::BufWriter::with_capacity(1 << 20, out.file()),
    )?;
    out.commit(input.mode, job.overwrite, job.durability)?;
    Ok(Outcome {
        bytes_in: input.len,
        bytes_out: plain,
        format,
        key,
    })
}

/// Re-encrypts `job.input` (either format) under the ring's default key in one streaming
/// pass: plaintext only ever exists in memory. With `job.output == job.input` and
/// `overwrite`, the input is replaced atomically once the new file is complete.
pub fn rewrap(ring: &KeyRing, job: &Job) -> Result<Outcome, Error> {
    let entry = ring.sealing_entry(None)?;
    let KeyMaterial::Secret(master) = &entry.material else {
        return Err(Error::new(
            Code::Internal,
            "the default key is not a ringcrypt key",
        ));
    };
    let mut input = open_input(job.input)?;
    let mut out = AtomicFile::create(job.output, job.overwrite)?;
    let sealer = Sealer::new(master.bytes(), job.chunk_log2, format::random_salt()?);
    let mut writer = SealWriter::new(sealer, out.file()).map_err(write_error(job.output))?;
    decrypt_into(ring, job, &mut input, &mut writer)?;
    let bytes_out = writer.finish().map_err(write_error(job.output))?.1;
    out.commit(input.mode, job.overwrite, job.durability)?;
    Ok(Outcome {
        bytes_in: input.len,
        bytes_out,
        format: Format::Ringcrypt,
        key: entry.name.clone(),
    })
}
