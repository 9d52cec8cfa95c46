//! One tree over many hosts (docs/fleet.md): `--partition I/N` through the real daemon and
//! the offline engine, the marker that refuses a mismatched N, and the files in
//! `contrib/kubernetes/` and `contrib/slurm/` that put them to work.
//!
//! - `hosts.rs`: three `ringcryptd` processes, each with its own socket, shards and roots,
//!   play three hosts over one shared tree of 3,000 files. The three partitions together
//!   give exactly the tree; every output is written by exactly one daemon (their `done`
//!   counts, `stats` job counts and audit `finished` lines say so); one daemon killed
//!   mid-run, restarted and rerun with `--skip-existing` completes its part without
//!   rewriting a file (inodes unchanged); a run with another N is refused from the marker.
//! - `engines.rs`: the daemon and the offline engine take the same files for each
//!   partition, every partition mirrors every directory, counts are the partition's own,
//!   the marker is checked offline too, and the command line refuses what cannot work.
//! - `contrib.rs`: the Kubernetes manifests pass `kubernetes-validate --strict` and agree
//!   with each other (socket, volume, partition count, metrics port); the Slurm array script
//!   run as three array tasks against a real daemon completes a tree.
//!
//! The partition of a path is computed here from the spec in docs/fleet.md (SHA-256, first
//! 8 bytes little-endian, modulo N), not with the crate's function.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod contrib;
mod engines;
// Kills a daemon at its K-th link through a test hook (`RINGCRYPT_FAILPOINT`), which only
// builds with `test-hooks`; the README's test command turns it on.
#[cfg(feature = "test-hooks")]
mod hosts;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use support::*;

/// The partition of the entry at `rel` (relative to the tree's root) when the tree is split
/// `count` ways, as docs/fleet.md specifies it.
fn partition_of(rel: &Path, count: u64) -> u64 {
    let digest = Sha256::digest(rel.as_os_str().as_encoded_bytes());
    u64::from_le_bytes(digest[..8].try_into().unwrap()) % count
}

/// A shared tree: `files` regular files in nested directories, an empty directory chain,
/// a symbolic link and a FIFO. What a partitioned run must produce is computed from it.
struct Tree {
    root: PathBuf,
    /// Regular files, relative, with their contents.
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// Entries every run skips: the symlink and the FIFO, relative.
    specials: Vec<PathBuf>,
    /// Every directory, relative (the root excluded).
    dirs: BTreeSet<PathBuf>,
}

impl Tree {
    fn make(root: &Path, files: usize) -> Tree {
        let mut tree = Tree {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            specials: vec![PathBuf::from("d1/link"), PathBuf::from("d2/fifo")],
            dirs: BTreeSet::new(),
        };
        for i in 0..files {
            let dir = PathBuf::from(format!("d{}/e{}", i % 5, i % 7));
            let size = match i % 100 {
                0 => 70_000,
                1 => 0,
                _ => (i * 53) % 3000,
            };
            let rel = dir.join(format!("f{i}.dat"));
            let data = bytes(size, i as u64 + 7);
            fs::create_dir_all(root.join(&dir)).unwrap();
            fs::write(root.join(&rel), &data).unwrap();
            tree.files.insert(rel, data);
        }
        fs::create_dir_all(root.join("empty/deeper")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("d1/link")).unwrap();
        mkfifo(&root.join("d2/fifo"));
        walk(root, |entry, kind| {
            if kind.is_dir() {
                let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
                tree.dirs.insert(rel);
            }
        });
        tree
    }

    /// The outputs (relative, `.rcrypt` appended) of partition `index` of `count`.
    fn outputs(&self, index: u64, count: u64) -> BTreeSet<PathBuf> {
        self.files
            .keys()
            .filter(|rel| partition_of(rel, count) == index)
            .map(|rel| sealed_name(rel))
            .collect()
    }

    /// How many regular files partition `index` of `count` takes.
    fn files_of(&self, index: u64, count: u64) -> u64 {
        self.outputs(index, count).len() as u64
    }

    /// How many specials partition `index` of `count` reports as skipped.
    fn specials_of(&self, index: u64, count: u64) -> u64 {
        self.specials
            .iter()
            .filter(|rel| partition_of(rel, count) == index)
            .count() as u64
    }
}

/// `rel` with `.rcrypt` appended to its name.
fn sealed_name(rel: &Path) -> PathBuf {
    let mut name = rel.file_name().unwrap().to_os_string();
    name.push(".rcrypt");
    rel.with_file_name(name)
}

/// What an output tree holds: its regular files (relative) with their inode numbers, and
/// its directories.
#[derive(Debug, PartialEq)]
struct Outputs {
    files: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
}

fn outputs_of(root: &Path) -> Outputs {
    let mut out = Outputs {
        files: BTreeMap::new(),
        dirs: BTreeSet::new(),
    };
    if !root.exists() {
        return out;
    }
    walk(root, |entry, kind| {
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        if kind.is_dir() {
            out.dirs.insert(rel);
        } else {
            assert!(kind.is_file(), "{}: not a file or directory", rel.display());
            let ino = entry.metadata().unwrap().ino();
            out.files.insert(rel, ino);
        }
    });
    out
}

/// The marker's name and text for `count` partitions (docs/fleet.md).
const MARKER: &str = ".ringcrypt-partitions";

fn marker_text(count: u64) -> String {
    format!("ringcrypt-partitions v1 count={count}\n")
}

/// The last line of a `--json` run's stdout, parsed: the request's final reply.
#[track_caller]
fn final_line(run: &Run) -> serde_json::Value {
    let last = run
        .stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{run:?}"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

use contrib::the_slurm_array_completes_a_tree;
use engines::both_engines_take_the_same_partitions;

// The three hosts kill one daemon at its K-th link, a test hook (`RINGCRYPT_FAILPOINT`)
// that only builds with `test-hooks` have; the README's test command turns it on.
#[cfg(feature = "test-hooks")]
use hosts::three_hosts_share_one_tree;
#[cfg(feature = "test-hooks")]
both_backends!(
    three_hosts_share_one_tree,
    both_engines_take_the_same_partitions,
    the_slurm_array_completes_a_tree,
);
#[cfg(not(feature = "test-hooks"))]
both_backends!(
    both_engines_take_the_same_partitions,
    the_slurm_array_completes_a_tree,
);
