//! File-level encrypt, decrypt and rewrap in this process (the client's `--keys` mode): open
//! the input, stream it through `stream`/`openssl` into an [`AtomicFile`], commit. Inputs are
//! only read; on any failure nothing appears under the output name and no temp file remains.
//!
//! Directory trees are walked by [`crate::offline::tree`], which runs each file through
//! [`tree_file`] (the same work, plus the tree rules: no symlink followed, mtime kept) and
//! checks existing outputs with [`verify_sealed`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

pub mod output;
pub mod stream;
pub mod tree;

use crate::crypto::format::{self, Sealer};
use crate::crypto::keys::{KeyMaterial, KeyRing};
use crate::crypto::openssl::{self, OpensslWriter};
use crate::error::{Code, Error};
use crate::offline::output::{AtomicFile, Durability};
use crate::protocol::FileOp;
use stream::SealWriter;

pub use crate::protocol::Format;

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
    mtime: Option<SystemTime>,
}

/// How a file job treats its input and output beyond the [`Job`] fields. Single-file jobs
/// follow a symlink the user named and give the output a fresh mtime; files of a tree are
/// opened without following symlinks and keep their mtime (the tree is mirrored).
#[derive(Clone, Copy, Debug, Default)]
struct Rules {
    in_tree: bool,
}

fn open_input(path: &Path, rules: Rules) -> Result<Input, Error> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if rules.in_tree {
        // The walker saw a regular file; if it was swapped for a symlink or a FIFO since,
        // refuse it (ELOOP) or do not block on it (O_NONBLOCK; the is_file check below
        // refuses it). O_NONBLOCK does nothing to reads of regular files.
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io("open", path, e))?;
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
        mtime: meta.modified().ok(),
    })
}

/// Commits `out` with the input's mode bits and, in a tree, its mtime. The mtime is set on
/// the temp file before it is linked, so the output never appears with a fresh mtime (a
/// `--skip-existing` rerun or an rsync in between sees the final state), and the fsync in
/// `commit` makes it durable with the data. Linking and chmod change only the ctime.
fn commit(mut out: AtomicFile, input: &Input, job: &Job, rules: Rules) -> Result<(), Error> {
    if rules.in_tree
        && let Some(mtime) = input.mtime
    {
        out.file()
            .set_modified(mtime)
            .map_err(|e| Error::io("set the modification time of", job.output, e))?;
    }
    out.commit(input.mode, job.overwrite, job.durability)
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
    encrypt_with(ring, job, Rules::default())
}

/// One file of a directory tree: `op` on `job`, with the tree rules (the input is not
/// followed if it is a symlink, nor waited on if it is a FIFO; the output keeps the
/// input's mtime as well as its mode bits).
pub fn tree_file(op: FileOp, ring: &KeyRing, job: &Job) -> Result<Outcome, Error> {
    let rules = Rules { in_tree: true };
    match op {
        FileOp::Encrypt => encrypt_with(ring, job, rules),
        FileOp::Decrypt => decrypt_with(ring, job, rules),
        FileOp::Rewrap => rewrap_with(ring, job, rules),
    }
}

/// Checks an existing output of a tree being resumed: a ringcrypt file whose header
/// parses, whose key is in the ring (not retired), and whose header tag and final record's
/// tag verify (see [`stream::verify_last_record`]); returns the key id it names. A symlink at
/// `path` is not followed (it does not verify). Used by `--skip-existing`, as the daemon does.
pub fn verify_sealed(ring: &KeyRing, path: &Path) -> Result<format::KeyId, Error> {
    let input = open_input(path, Rules { in_tree: true })?;
    stream::verify_last_record(&input.file, ring).map_err(|e| e.context(path.display()))
}

fn encrypt_with(ring: &KeyRing, job: &Job, rules: Rules) -> Result<Outcome, Error> {
    let entry = match job.format {
        Format::Ringcrypt => ring.sealing_entry(job.key)?,
        Format::Openssl => ring.sealing_passphrase(job.key)?.0,
    };
    let mut input = open_input(job.input, rules)?;
    refuse_same_file(&input, job)?;
    let mut out = AtomicFile::create(job.output, job.overwrite)?;
    let bytes_out = match (&entry.material, job.format) {
        (KeyMaterial::Secret(master), Format::Ringcrypt) => {
            let sealer = Sealer::new(master.bytes(), job.chunk_log2, format::random_salt()?);
            let mut writer =
                SealWriter::new(sealer, out.file()).map_err(write_error(job.output))?;
            let read = writer.fill_from(&mut input.file).map_err(|e| {
                if writer.write_failed() {
                    Error::io("write", job.output, e)
                } else {
                    Error::io("read", job.input, e)
                }
            })?;
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
    commit(out, &input, job, rules)?;
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
    decrypt_with(ring, job, Rules::default())
}

fn decrypt_with(ring: &KeyRing, job: &Job, rules: Rules) -> Result<Outcome, Error> {
    let mut input = open_input(job.input, rules)?;
    refuse_same_file(&input, job)?;
    let mut out = AtomicFile::create(job.output, job.overwrite)?;
    let (plain, format, key) = decrypt_into(
        ring,
        job,
        &mut input,
        &mut std::io::BufWriter::with_capacity(1 << 20, out.file()),
    )?;
    commit(out, &input, job, rules)?;
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
    rewrap_with(ring, job, Rules::default())
}

fn rewrap_with(ring: &KeyRing, job: &Job, rules: Rules) -> Result<Outcome, Error> {
    let entry = ring.sealing_entry(None)?;
    let KeyMaterial::Secret(master) = &entry.material else {
        return Err(Error::new(
            Code::Internal,
            "the default key is not a ringcrypt key",
        ));
    };
    let mut input = open_input(job.input, rules)?;
    let mut out = AtomicFile::create(job.output, job.overwrite)?;
    let sealer = Sealer::new(master.bytes(), job.chunk_log2, format::random_salt()?);
    let mut writer = SealWriter::new(sealer, out.file()).map_err(write_error(job.output))?;
    decrypt_into(ring, job, &mut input, &mut writer)?;
    let bytes_out = writer.finish().map_err(write_error(job.output))?.1;
    commit(out, &input, job, rules)?;
    Ok(Outcome {
        bytes_in: input.len,
        bytes_out,
        format: Format::Ringcrypt,
        key: entry.name.clone(),
    })
}
