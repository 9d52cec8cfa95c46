//! Data sets: the input trees, made once, with the output trees made and removed around
//! every pass, and the fixed bytes every output gets.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::{FILES_PER_DIR, HEADER_BYTES, MIB_BYTES, SEALED_BYTES, SMALL_IN_BYTES};

/// Fixed, random-looking bytes (a xorshift stream): the figures do not depend on values.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn dir_name(d: usize) -> String {
    format!("d{d:03}")
}

/// The names `f000`..`f099`, shared by inputs and outputs (they live in separate trees).
fn file_names() -> Vec<CString> {
    (0..FILES_PER_DIR)
        .map(|f| CString::new(format!("f{f:03}")).expect("no NUL in a generated name"))
        .collect()
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A tree of inputs, made once, and its output tree, made and removed around every pass.
pub struct Tree {
    input: PathBuf,
    output: PathBuf,
    pub dirs: Vec<OwnedFd>,
    pub names: Vec<CString>,
}

impl Tree {
    fn create(root: &Path, label: &str, dirs: usize, file_bytes: usize) -> io::Result<Tree> {
        let input = root.join(format!("in-{label}"));
        let output = root.join(format!("out-{label}"));
        let names = file_names();
        let mut fds = Vec::with_capacity(dirs);
        for d in 0..dirs {
            let dir = input.join(dir_name(d));
            fs::create_dir_all(&dir)?;
            for (f, name) in names.iter().enumerate() {
                let data = pattern(file_bytes, (d * FILES_PER_DIR + f) as u64);
                fs::write(dir.join(name.to_str().expect("ASCII name")), data)?;
            }
            fds.push(open_dir(&dir)?);
        }
        Ok(Tree {
            input,
            output,
            dirs: fds,
            names,
        })
    }

    pub fn files(&self) -> usize {
        self.dirs.len() * FILES_PER_DIR
    }

    /// Makes the output directories and opens them, before the clock starts.
    pub fn prepare_outputs(&self) -> io::Result<Vec<OwnedFd>> {
        (0..self.dirs.len())
            .map(|d| {
                let dir = self.output.join(dir_name(d));
                fs::create_dir_all(&dir)?;
                open_dir(&dir)
            })
            .collect()
    }

    pub fn remove_outputs(&self) -> io::Result<()> {
        fs::remove_dir_all(&self.output)
    }

    /// The input directory, output directory and name of file number `i`.
    pub fn file<'a>(
        &'a self,
        out: &'a [OwnedFd],
        i: usize,
    ) -> (BorrowedFd<'a>, BorrowedFd<'a>, &'a CStr) {
        let d = i / FILES_PER_DIR;
        (
            self.dirs[d].as_fd(),
            out[d].as_fd(),
            &self.names[i % FILES_PER_DIR],
        )
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.output);
        let _ = fs::remove_dir_all(&self.input);
    }
}

/// The per-file set, with the fixed bytes every output gets.
pub struct SmallSet {
    tree: Tree,
    pub sealed: Box<[u8; SEALED_BYTES]>,
}

impl std::ops::Deref for SmallSet {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

impl SmallSet {
    pub fn create(root: &Path, dirs: usize) -> io::Result<SmallSet> {
        let mut sealed = Box::new([0u8; SEALED_BYTES]);
        sealed.copy_from_slice(&pattern(SEALED_BYTES, 0x5eed));
        Ok(SmallSet {
            tree: Tree::create(root, "small", dirs, SMALL_IN_BYTES)?,
            sealed,
        })
    }

    pub fn header(&self) -> &[u8] {
        &self.sealed[..HEADER_BYTES]
    }

    pub fn body(&self) -> &[u8] {
        &self.sealed[HEADER_BYTES..]
    }
}

/// The per-MiB set, with the fixed header every output gets.
pub struct MibSet {
    tree: Tree,
    pub header: [u8; HEADER_BYTES],
}

impl std::ops::Deref for MibSet {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

impl MibSet {
    pub fn create(root: &Path, dirs: usize) -> io::Result<MibSet> {
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&pattern(HEADER_BYTES, 0x5eed));
        Ok(MibSet {
            tree: Tree::create(root, "mib", dirs, MIB_BYTES)?,
            header,
        })
    }
}
