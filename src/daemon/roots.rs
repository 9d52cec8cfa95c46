//! Allowed roots (README "Security"): every path a request names must lie under one of the daemon's
//! `--allow-root` directories, and is opened relative to that root's directory fd with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so neither `..`
//! nor a symlink (planted before or during the job) can lead outside it, and nothing is
//! checked first and used later.
//!
//! This room maps an absolute request path to (root fd, relative path); the opening itself is
//! an op on the shard's reactor.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::error::{Code, Error};

/// `openat2` resolve flags for every path the daemon opens on a client's behalf.
pub const RESOLVE_CONFINED: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// The allowed roots, each with an `O_PATH` directory fd opened at start.
pub struct Roots {
    roots: Vec<(PathBuf, OwnedFd)>,
}

impl Roots {
    /// Opens each root. Roots are canonicalized once, here, by the administrator's
    /// configuration; request paths are never canonicalized.
    pub fn open(paths: &[PathBuf]) -> Result<Roots, Error> {
        let mut roots = Vec::with_capacity(paths.len());
        for path in paths {
            let canonical = std::fs::canonicalize(path)
                .map_err(|e| Error::io("resolve allowed root", path, e))?;
            let fd = rustix::fs::open(
                &canonical,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io("open allowed root", &canonical, e.into()))?;
            roots.push((canonical, fd));
        }
        // Longest first, so a nested root wins over its parent.
        roots.sort_by_key(|(path, _)| std::cmp::Reverse(path.as_os_str().len()));
        Ok(Roots { roots })
    }

    /// Checks that an absolute, lexically normal path lies under an allowed root, as
    /// [`Roots::locate`] does, without keeping the answer.
    pub fn check(&self, path: &Path) -> Result<(), Error> {
        self.locate(path).map(|_| ())
    }

    /// The root fd and the path relative to it (`.` for the root itself, a part of `path`
    /// otherwise) for an absolute, lexically normal path; `forbidden_path` when no root
    /// contains it.
    pub fn locate<'p>(&self, path: &'p Path) -> Result<(BorrowedFd<'_>, &'p Path), Error> {
        let (index, rel) = self.position(path)?;
        Ok((self.roots[index].1.as_fd(), rel))
    }

    /// [`Roots::locate`], naming the root by its place in [`Roots::dup_all`]'s order.
    pub fn position<'p>(&self, path: &'p Path) -> Result<(usize, &'p Path), Error> {
        let forbidden = || {
            Error::new(
                Code::ForbiddenPath,
                format!(
                    "{} is outside every allowed root of this daemon",
                    path.display()
                ),
            )
        };
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(forbidden());
        }
        for (index, (root, _)) in self.roots.iter().enumerate() {
            if let Ok(rest) = path.strip_prefix(root) {
                let rel = if rest.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    rest
                };
                if rel.as_os_str().as_bytes().contains(&0) {
                    return Err(Error::new(
                        Code::BadRequest,
                        format!("{} contains a NUL byte", path.display()),
                    ));
                }
                return Ok((index, rel));
            }
        }
        Err(forbidden())
    }

    /// A copy of every root's descriptor, in [`Roots::position`]'s order: a shard's reactor
    /// owns its own, so ops name them like any other.
    pub fn dup_all(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.roots.iter().map(|(_, fd)| fd.try_clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_longest_root() {
        let top = tempfile::tempdir().unwrap();
        let outer = std::fs::canonicalize(top.path()).unwrap();
        let inner = outer.join("inner");
        std::fs::create_dir(&inner).unwrap();
        let roots = Roots::open(&[outer.clone(), inner.clone()]).unwrap();
        let nested = inner.join("a/b");
        let (_, rel) = roots.locate(&nested).unwrap();
        assert_eq!(rel.as_os_str().as_bytes(), b"a/b");
        let top_file = outer.join("x");
        let (_, rel) = roots.locate(&top_file).unwrap();
        assert_eq!(rel.as_os_str().as_bytes(), b"x");
        let (_, rel) = roots.locate(&outer).unwrap();
        assert_eq!(rel.as_os_str().as_bytes(), b".");
        for bad in ["/etc/passwd", "relative/x"] {
            assert_eq!(
                roots.locate(Path::new(bad)).unwrap_err().code,
                Code::ForbiddenPath,
                "{bad}"
            );
        }
        let sneaky = outer.join("inner/../../etc");
        assert_eq!(roots.locate(&sneaky).unwrap_err().code, Code::ForbiddenPath);
        let sibling = PathBuf::from(format!("{}x/file", outer.display()));
        assert_eq!(
            roots.locate(&sibling).unwrap_err().code,
            Code::ForbiddenPath
        );
    }
}
