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

pub mod inspect;
pub mod output;
pub mod stream;
pub mod tree;
pub mod verify;

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
        // A verify writes nothing: `verify::verify_all` is its walk.
        FileOp::Verify => Err(Error::new(
            Code::BadRequest,
            format!(
                "{}: verify writes no output; use `ringcrypt verify`",
                job.input.display()
            ),
        )),
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
    let entry = sealing_entry(ring, job.key, job.format)?;
    let mut input = open_input(job.input, rules)?;
    refuse_same_file(&input, job)?;
    let mut out = AtomicFile::create(job.output, job.overwrite)?;
    let names = Names {
        input: job.input,
        output: job.output,
    };
    let read_len = Some(input.len);
    let (_, bytes_out) = seal(entry, job, &names, &mut input.file, read_len, out.file())?;
    commit(out, &input, job, rules)?;
    Ok(Outcome {
        bytes_in: input.len,
        bytes_out,
        format: job.format,
        key: entry.name.clone(),
    })
}

/// The entry that seals in `format`: a ringcrypt key, or an openssl passphrase.
fn sealing_entry<'r>(
    ring: &'r KeyRing,
    key: Option<&str>,
    format: Format,
) -> Result<&'r crate::crypto::keys::KeyEntry, Error> {
    match format {
        Format::Ringcrypt => ring.sealing_entry(key),
        Format::Openssl => Ok(ring.sealing_passphrase(key)?.0),
    }
}

/// What the input and output are called in messages: their paths, or "standard input".
#[derive(Clone, Copy, Debug)]
pub struct Names<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
}

/// Seals all of `input` into `out` under `entry` in `job.format`; returns the bytes read
/// and written. With `expected`, the input must be exactly that long (it did not change while
/// being read).
fn seal(
    entry: &crate::crypto::keys::KeyEntry,
    job: &Job,
    names: &Names,
    input: &mut impl Read,
    expected: Option<u64>,
    out: &mut impl Write,
) -> Result<(u64, u64), Error> {
    let check_len = |read: u64| match expected {
        Some(len) if len != read => Err(changed_while_reading(names.input)),
        _ => Ok(()),
    };
    match (&entry.material, job.format) {
        (KeyMaterial::Secret(master), Format::Ringcrypt) => {
            let sealer = Sealer::new(master.bytes(), job.chunk_log2, format::random_salt()?);
            let mut writer = SealWriter::new(sealer, out).map_err(write_error(names.output))?;
            let read = writer.fill_from(input).map_err(|e| {
                if writer.write_failed() {
                    Error::io("write", names.output, e)
                } else {
                    Error::io("read", names.input, e)
                }
            })?;
            check_len(read)?;
            Ok((read, writer.finish().map_err(write_error(names.output))?.1))
        }
        (KeyMaterial::Passphrase { passphrase, iter }, Format::Openssl) => {
            let salt = openssl::random_salt()?;
            let mut writer = OpensslWriter::new(out, passphrase, *iter, salt)
                .map_err(write_error(names.output))?;
            let read = copy(input, &mut writer, names)?;
            check_len(read)?;
            Ok((read, writer.finish().map_err(write_error(names.output))?.1))
        }
        (_, format) => Err(Error::new(
            Code::BadRequest,
            format!(
                "key {:?} cannot write the {} format",
                entry.name,
                format.as_str()
            ),
        )),
    }
}

/// `std::io::copy`, with a failure named after the side it came from.
fn copy(input: &mut impl Read, out: &mut impl Write, names: &Names) -> Result<u64, Error> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let got =
            openssl::read_full(input, &mut buf).map_err(|e| Error::io("read", names.input, e))?;
        if got == 0 {
            return Ok(total);
        }
        out.write_all(&buf[..got])
            .map_err(|e| Error::io("write", names.output, e))?;
        total += got as u64;
    }
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

/// Decrypts `input` (either format) into `sink`; returns (plaintext bytes, format, key).
/// `len` is the input's length when it is a file; a stream's end is found as it comes.
fn decrypt_into(
    ring: &KeyRing,
    key: Option<&str>,
    names: &Names,
    input: &mut impl Read,
    len: Option<u64>,
    sink: &mut impl Write,
) -> Result<(u64, Format, String), Error> {
    let mut magic = [0u8; 8];
    let got =
        openssl::read_full(input, &mut magic).map_err(|e| Error::io("read", names.input, e))?;
    let format = detect(names.input, &magic[..got])?;
    let mut whole = (&magic[..got]).chain(input);
    let in_file = |e: Error| e.context(names.input.display());
    match format {
        Format::Ringcrypt => {
            let (plain, id) = match len {
                Some(len) => stream::open(&mut whole, len, ring, sink),
                None => stream::open_stream(&mut whole, ring, sink),
            }
            .map_err(in_file)?;
            let name = ring.name_for_id(&id).unwrap_or_default().to_string();
            Ok((plain, format, name))
        }
        Format::Openssl => {
            let (entry, passphrase, iter) = ring.passphrase_entry(key)?;
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
    let names = Names {
        input: job.input,
        output: job.output,
    };
    let (plain, format, key) = decrypt_into(
        ring,
        job.key,
        &names,
        &mut input.file,
        Some(input.len),
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
    let names = Names {
        input: job.input,
        output: job.output,
    };
    let len = Some(input.len);
    decrypt_into(ring, job.key, &names, &mut input.file, len, &mut writer)?;
    let bytes_out = writer.finish().map_err(write_error(job.output))?.1;
    commit(out, &input, job, rules)?;
    Ok(Outcome {
        bytes_in: input.len,
        bytes_out,
        format: Format::Ringcrypt,
        key: entry.name.clone(),
    })
}

/// Encrypts a stream (standard input, a pipe) into a stream or an output file the caller
/// commits. `job.input` and `job.output` only name the two ends in messages.
pub fn encrypt_stream(
    ring: &KeyRing,
    job: &Job,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<Outcome, Error> {
    let entry = sealing_entry(ring, job.key, job.format)?;
    let names = Names {
        input: job.input,
        output: job.output,
    };
    let (bytes_in, bytes_out) = seal(entry, job, &names, input, None, out)?;
    out.flush().map_err(write_error(job.output))?;
    Ok(Outcome {
        bytes_in,
        bytes_out,
        format: job.format,
        key: entry.name.clone(),
    })
}

/// Decrypts a stream (either format, detected) into `out`, each ringcrypt chunk verified
/// before it is written ([`stream::open_stream`]). On failure `out` may hold the verified
/// chunks before the bad one. `bytes_in` is not counted (0): the plaintext is.
pub fn decrypt_stream(
    ring: &KeyRing,
    job: &Job,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<Outcome, Error> {
    let names = Names {
        input: job.input,
        output: job.output,
    };
    let (plain, format, key) = decrypt_into(ring, job.key, &names, input, None, out)?;
    out.flush().map_err(write_error(job.output))?;
    Ok(Outcome {
        bytes_in: 0,
        bytes_out: plain,
        format,
        key,
    })
}

/// Re-encrypts a stream under the ring's default key into `out`, with no plaintext
/// anywhere but memory.
pub fn rewrap_stream(
    ring: &KeyRing,
    job: &Job,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<Outcome, Error> {
    let entry = ring.sealing_entry(None)?;
    let KeyMaterial::Secret(master) = &entry.material else {
        return Err(Error::new(
            Code::Internal,
            "the default key is not a ringcrypt key",
        ));
    };
    let names = Names {
        input: job.input,
        output: job.output,
    };
    let sealer = Sealer::new(master.bytes(), job.chunk_log2, format::random_salt()?);
    let mut writer = SealWriter::new(sealer, &mut *out).map_err(write_error(job.output))?;
    decrypt_into(ring, job.key, &names, input, None, &mut writer)?;
    let bytes_out = writer.finish().map_err(write_error(job.output))?.1;
    out.flush().map_err(write_error(job.output))?;
    Ok(Outcome {
        bytes_in: 0,
        bytes_out,
        format: Format::Ringcrypt,
        key: entry.name.clone(),
    })
}
