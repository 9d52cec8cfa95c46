//! Test data, key rings and file modes, checks of what the daemon wrote, and what `/proc`
//! says about a process.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ringcrypt::keys::KeyRing;
use ringcrypt::offline::{self, Format, Job};
use ringcrypt::output::Durability;

use super::TEMP_PREFIX;

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `mib` MiB quickly: one 1 MiB random block, each copy stamped with its index so
/// chunks moved around would be noticed.
pub fn write_big(path: &Path, mib: usize) {
    let mut block = bytes(1 << 20, 99);
    let mut file = std::io::BufWriter::new(File::create(path).unwrap());
    for i in 0..mib {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `text` to `path` with mode 0600 (whatever the umask), replacing what was there:
/// how a key ring must be kept.
pub fn write_private(path: &Path, text: &str) {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, 0o600);
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A temp directory under /tmp that `nobody` can traverse (0755), named `PREFIX...`.
pub fn scratch_dir_named(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    chmod(dir.path(), 0o755);
    dir
}

/// [`scratch_dir_named`] `ringcrypt-rel`.
pub fn scratch_dir() -> tempfile::TempDir {
    scratch_dir_named("ringcrypt-rel")
}

/// The key id an RCRYPT file names: header bytes 16..32, as hex.
pub fn key_id_of(path: &Path) -> String {
    let mut head = [0u8; 32];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap_or_else(|e| panic!("read the header of {}: {e}", path.display()));
    hex(&head[16..32])
}

pub fn ring_id(ring: &KeyRing, name: &str) -> String {
    ring.by_name(name)
        .and_then(|entry| entry.id_hex())
        .unwrap_or_else(|| panic!("key {name} in the ring"))
}

/// Decrypts `encrypted` with the library (offline) and checks it equals `plain`'s bytes.
#[track_caller]
pub fn assert_decrypts_to(ring: &KeyRing, encrypted: &Path, plain: &[u8], scratch: &Path) {
    let job = Job {
        input: encrypted,
        output: scratch,
        key: None,
        format: Format::Ringcrypt,
        chunk_log2: 16,
        overwrite: true,
        durability: Durability::None,
    };
    offline::decrypt(ring, &job)
        .unwrap_or_else(|e| panic!("{} does not decrypt offline: {e}", encrypted.display()));
    let got = fs::read(scratch).unwrap();
    assert!(
        got == plain,
        "{} decrypts to {} bytes that differ from the {}-byte input",
        encrypted.display(),
        got.len(),
        plain.len()
    );
    fs::remove_file(scratch).unwrap();
}

/// Calls `visit` with every entry under `dir` and its type, recursively, not following
/// symlinks; a directory that cannot be read is passed over.
pub fn walk(dir: &Path, mut visit: impl FnMut(&fs::DirEntry, fs::FileType)) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            }
            visit(&entry, kind);
        }
    }
}

/// Every `.ringcrypt-tmp-*` file under `dir`, recursively.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(dir, |entry, _| {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            found.push(entry.path());
        }
    });
    found
}

/// Every path under `dir` (not following symlinks) with its contents (files), its target
/// (symlinks) or nothing (directories): a snapshot to prove nothing was written.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                all.push((path, target.into_os_string().into_encoded_bytes()));
            } else if kind.is_dir() {
                all.push((path.clone(), Vec::new()));
                stack.push(path);
            } else if kind.is_file() {
                let data = fs::read(&path).unwrap();
                all.push((path, data));
            } else {
                // A FIFO, socket or device: reading it could block; its presence is enough.
                all.push((path, b"(special)".to_vec()));
            }
        }
    }
    all.sort();
    all
}

/// Writes `count` files under `dir`, spread over `subdirs` subdirectories; file i holds
/// `size(i)` pseudo-random bytes of its own.
pub fn make_tree(dir: &Path, count: usize, subdirs: usize, size: impl Fn(usize) -> usize) {
    for i in 0..count {
        let sub = dir.join(format!("d{:02}", i % subdirs));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i}")), bytes(size(i), 50_000 + i as u64)).unwrap();
    }
}

/// Every regular file under `dir`, recursively (symlinks not followed), sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(dir, |entry, kind| {
        if kind.is_file() {
            found.push(entry.path());
        }
    });
    found.sort();
    found
}

/// Decrypts each (encrypted, plain input) pair offline on two threads and compares.
pub fn verify_pairs(ring: &KeyRing, pairs: &[(PathBuf, PathBuf)], scratch: &Path) {
    std::thread::scope(|s| {
        for t in 0..2 {
            s.spawn(move || {
                let scratch = scratch.join(format!("verify-{t}"));
                for (enc, plain) in pairs.iter().skip(t).step_by(2) {
                    let plain = fs::read(plain).unwrap();
                    assert_decrypts_to(ring, enc, &plain, &scratch);
                }
            });
        }
    });
}

/// Every file under the tree output `out` must be `REL.rcrypt` for a file REL under `input`
/// and decrypt to it. Returns how many outputs there are.
pub fn verify_tree_outputs(ring: &KeyRing, input: &Path, out: &Path, scratch: &Path) -> usize {
    let mut pairs = Vec::new();
    for enc in files_under(out) {
        let rel = enc.strip_prefix(out).unwrap();
        let name = rel.to_str().unwrap();
        let plain_rel = name
            .strip_suffix(".rcrypt")
            .unwrap_or_else(|| panic!("a tree output not named *.rcrypt: {}", enc.display()));
        let plain = input.join(plain_rel);
        assert!(
            plain.is_file(),
            "{} has no input {}",
            enc.display(),
            plain.display()
        );
        pairs.push((enc, plain));
    }
    verify_pairs(ring, &pairs, scratch);
    pairs.len()
}

/// An unnamed temp file in `dir`, open for reading and writing, as the client makes one.
pub fn tmpfile_in(dir: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .expect("O_TMPFILE in the test directory")
}

/// Gives an unnamed temp file the name `path` (what the client does after `done`).
pub fn link_into_place(file: &File, path: &Path) -> std::io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(Into::into)
}

/// How many descriptors the process `pid` holds (None once it is gone).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The resident memory (`VmRSS`) of the process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Makes a FIFO (named pipe) at `path`, mode 0644 (less the umask).
pub fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// Mounts a tmpfs of `size` (`8m`, ...) on `dir`; false where this container may not mount.
pub fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Unmounts a mount when dropped (lazily if it is busy).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}
