//! Drives the real `ringcrypt` binary in offline mode (`--keys FILE`) over real files in temp
//! directories: key generation, round trips, tampering, existing and missing files, key ring
//! checks, key states, rewrap, interop with the real `openssl` binary, and usage errors.
//!
//! Each test says in a comment what must stay intact and checks it. Exit codes are README "Using it":
//! 0 success, 1 the job failed (stderr `error: ... [code]`), 2 usage error. The one test that
//! tries every byte position of a file goes through the library (`offline::decrypt`) for
//! speed; the binary gets a sample of the same positions.
//!
//! By subject: `keys.rs` (keygen, key ring checks, key states, rewrap), `files.rs` (round
//! trips, tampering, existing and missing files), `openssl.rs` (the real `openssl` binary)
//! and `usage.rs` (usage errors); the helpers are here.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod files;
mod keys;
mod many;
mod openssl;
mod pipes;
mod scrub;
mod usage;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use support::{CLI, Run, hex, mode_of, p, ringcrypt, running_as_root, write_private};

/// RCRYPT v1 header bytes (docs/format.md).
const HEADER: u64 = 96;
/// HMAC-SHA256 tag bytes after every chunk (docs/format.md).
const TAG: u64 = 32;
/// Magic bytes of an RCRYPT v1 file.
const MAGIC: &[u8; 8] = b"\x89RCRYPT\n";

/// Runs `ringcrypt --keys RING ARGS`.
fn with_ring(ring: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--keys", p(ring)];
    all.extend_from_slice(args);
    ringcrypt(&all)
}

/// `ringcrypt --keys RING encrypt PLAIN --format openssl --key legacy -o OUT`: the openssl
/// format, with the passphrase key `legacy`.
fn encrypt_legacy(ring: &Path, plain: &Path, out: &Path) -> Run {
    with_ring(
        ring,
        &[
            "encrypt",
            p(plain),
            "--format",
            "openssl",
            "--key",
            "legacy",
            "-o",
            p(out),
        ],
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp directory")
}

/// splitmix64: deterministic, fast test data, different for every seed.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A 64-hex-digit secret, different for every seed.
fn secret(seed: u64) -> String {
    hex(&random_bytes(32, seed ^ 0x5EC2E7))
}

/// The key id (docs/format.md) of a secret given as hex.
fn key_id(secret_hex: &str) -> [u8; 16] {
    let bytes: [u8; 32] = unhex(secret_hex).try_into().expect("32 bytes");
    ringcrypt::format::key_id(&bytes)
}

/// One `[[key]]` entry with a secret.
fn key(name: &str, secret_hex: &str, state: &str) -> String {
    format!("[[key]]\nname = \"{name}\"\nsecret = \"{secret_hex}\"\nstate = \"{state}\"\n\n")
}

/// One `[[key]]` entry with an openssl passphrase.
fn passphrase(name: &str, pass: &str, iter: u32, state: &str) -> String {
    format!(
        "[[key]]\nname = \"{name}\"\npassphrase = \"{pass}\"\niter = {iter}\nstate = \"{state}\"\n\n"
    )
}

/// Writes `data` to `path` and backdates its mtime, so any later write shows.
fn write_input(path: &Path, data: &[u8]) {
    fs::write(path, data).expect("write input");
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(past))
        .expect("backdate mtime");
}

/// A file's bytes and mtime, to prove it was left alone.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    bytes: Vec<u8>,
    mtime: SystemTime,
}

fn snapshot(path: &Path) -> Snapshot {
    Snapshot {
        bytes: fs::read(path).expect("read file"),
        mtime: fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime"),
    }
}

/// The names in a directory.
fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("list directory")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| name.to_string()).collect()
}

/// Size of a sealed file (docs/format.md): the header, floor(len / C) full records of C + 32 bytes,
/// and a final record holding len mod C bytes PKCS#7-padded to the next multiple of 16
/// (always at least one byte of padding) plus its tag.
fn sealed_size(len: u64, chunk_log2: u8) -> u64 {
    let c = 1u64 << chunk_log2;
    HEADER + (len / c) * (c + TAG) + ((len % c) / 16 + 1) * 16 + TAG
}

/// Size of an openssl-format file: `Salted__`, 8 bytes of salt, PKCS#7-padded ciphertext.
fn openssl_size(len: u64) -> u64 {
    16 + (len / 16 + 1) * 16
}

/// A temp dir with a 0600 ring `keys.toml` holding one active key `k` (no `default` line).
fn one_key_setup() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempdir();
    let ring = dir.path().join("keys.toml");
    let k = secret(1);
    write_private(&ring, &key("k", &k, "active"));
    (dir, ring, k)
}

/// The `openssl` binary, or a failure that says to install it.
fn openssl() -> Command {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => Command::new("openssl"),
        other => panic!(
            "the `openssl` command is needed for the interop tests and was not found or does \
             not run ({other:?}); install it (e.g. `apt-get install openssl`)"
        ),
    }
}

#[track_caller]
fn run_openssl(args: &[&str]) {
    let out = openssl().args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
