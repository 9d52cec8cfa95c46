//! The checks that keep a broken run from reporting a speed: every output of a row exists
//! with the size its tool's format gives, after decryption holds the original's exact bytes,
//! and the output directory holds no stray files.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use ringcrypt::format::sealed_len;
use ringcrypt::limits::CHUNK_LOG2_DEFAULT;

use crate::runners::{Op, Tool};
use crate::support::{MIB, count_files};

/// True when two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    if fa.metadata().expect("stat").len() != fb.metadata().expect("stat").len() {
        return false;
    }
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    loop {
        let n = fa.read(&mut ba).expect("read a file to compare");
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).expect("read a file to compare");
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Encrypted sizes, from the plaintext size, for each tool's format.
fn expected_sealed_len(tool: Tool, plain: u64) -> u64 {
    let padded = (plain / 16 + 1) * 16;
    match tool {
        Tool::Ringcrypt(_) | Tool::RingcryptOneShard | Tool::PyClient(_) => {
            sealed_len(plain, CHUNK_LOG2_DEFAULT)
        }
        // "Salted__" and an 8-byte salt, then the padded ciphertext.
        Tool::Openssl => 16 + padded,
        // IV, padded ciphertext, HMAC-SHA256 tag.
        Tool::Python(_) => 16 + padded + 32,
    }
}

/// Fails the bench unless every output of a row exists with the size its format gives (and,
/// after decryption, the original's exact bytes), and `count_dir` holds exactly
/// `count_expected` files (no strays such as temp files). `pairs` are (plaintext, output).
pub fn verify(
    what: &str,
    op: Op,
    tool: Tool,
    pairs: &[(PathBuf, PathBuf)],
    count_dir: &Path,
    count_expected: usize,
) {
    for (plain, output) in pairs {
        let meta = fs::metadata(output).unwrap_or_else(|e| {
            panic!(
                "{what}: output {} is missing ({e}): the run is broken",
                output.display()
            )
        });
        let plain_len = fs::metadata(plain).expect("stat an input").len();
        match op {
            Op::Encrypt => assert_eq!(
                meta.len(),
                expected_sealed_len(tool, plain_len),
                "{what}: {} has the wrong size",
                output.display()
            ),
            Op::Decrypt => assert!(
                same_bytes(plain, output),
                "{what}: {} differs from {}",
                output.display(),
                plain.display()
            ),
        }
    }
    let (found, _) = count_files(count_dir, "");
    assert_eq!(
        found,
        count_expected,
        "{what}: {} holds {found} files, expected {count_expected}",
        count_dir.display()
    );
}
