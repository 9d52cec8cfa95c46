//! Atomic output files (README "Security"): a job writes into a temp file in the output's directory,
//! fsyncs it, links or renames it into place (never replacing an existing file unless asked),
//! then fsyncs the directory. Until [`AtomicFile::commit`] returns, nothing exists under the
//! output name; dropping an uncommitted file removes every trace of it.
//!
//! The temp file is an unnamed `O_TMPFILE` where the filesystem supports it, so even a crash
//! leaves nothing behind. Elsewhere it is a named file starting with [`TEMP_PREFIX`], which
//! a crash can leave and which the daemon removes at start.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::crypto::keys::hex_encode;
use crate::error::{Code, Error};

pub use crate::durable::{Durability, TEMP_PREFIX, is_temp_name};

/// An output being written. See the module docs.
pub struct AtomicFile {
    dir: OwnedFd,
    file: File,
    path: PathBuf,
    name: OsString,
    /// `Some` for a named temp file (no `O_TMPFILE`), which must be removed on failure.
    temp_name: Option<OsString>,
}

impl AtomicFile {
    /// Starts an output at `path`. Fails early with `exists` when the output exists and
    /// `overwrite` is false (the final link checks again, race-free).
    pub fn create(path: &Path, overwrite: bool) -> Result<AtomicFile, Error> {
        let name = path
            .file_name()
            .ok_or_else(|| {
                Error::new(
                    Code::BadRequest,
                    format!("output {} has no file name", path.display()),
                )
            })?
            .to_os_string();
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let dir = rustix::fs::open(
            parent,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::new(
                Code::NotFound,
                format!("output directory {} does not exist", parent.display()),
            ),
            e => Error::io("open output directory", parent, e.into()),
        })?;
        if !overwrite {
            match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => return Err(exists(path)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::io("check output", path, e.into())),
            }
        }
        let private = Mode::from_raw_mode(0o600);
        let unnamed = if crate::failpoint::tmpfile_refused() {
            Err(Errno::OPNOTSUPP)
        } else {
            rustix::fs::openat(
                &dir,
                ".",
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                private,
            )
        };
        let (fd, temp_name) = match unnamed {
            Ok(fd) => (fd, None),
            // Filesystems without O_TMPFILE answer EOPNOTSUPP (or EISDIR on old kernels).
            Err(Errno::OPNOTSUPP) | Err(Errno::ISDIR) | Err(Errno::INVAL) => {
                let (fd, temp) = create_named_temp(&dir, path)?;
                (fd, Some(temp))
            }
            Err(e) => return Err(Error::io("create a temp file in", parent, e.into())),
        };
        Ok(AtomicFile {
            dir,
            file: File::from(fd),
            path: path.to_path_buf(),
            name,
            temp_name,
        })
    }

    /// True when the temp file is unnamed (`O_TMPFILE`): a crash leaves nothing, and it can
    /// be handed to another process to fill.
    pub fn is_unnamed(&self) -> bool {
        self.temp_name.is_none()
    }

    /// The temp file to write into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temp file, to hand its descriptor on.
    pub fn file_ref(&self) -> &File {
        &self.file
    }

    /// Makes the output visible under its name with permission bits `mode`: fsync, link (or
    /// rename), fsync the directory. With `overwrite` an existing file is replaced atomically.
    pub fn commit(
        mut self,
        mode: u32,
        overwrite: bool,
        durability: Durability,
    ) -> Result<(), Error> {
        let path = self.path.clone();
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(mode & 0o777))
            .map_err(|e| Error::io("set permissions on", &path, e.into()))?;
        if durability == Durability::Fsync {
            self.file
                .sync_all()
                .map_err(|e| Error::io("fsync", &path, e))?;
        }
        match self.temp_name.clone() {
            None if !overwrite => self.link_tmpfile(self.name.clone().as_os_str())?,
            None => {
                // Give the unnamed file a temporary name, then rename it over the target.
                let temp = temp_name()?;
                self.link_tmpfile(&temp)?;
                self.temp_name = Some(temp);
                self.rename_temp(true)?;
            }
            Some(_) => self.rename_temp(overwrite)?,
        }
        if durability == Durability::Fsync {
            rustix::fs::fsync(&self.dir)
                .map_err(|e| Error::io("fsync directory of", &path, e.into()))?;
        }
        Ok(())
    }

    fn link_tmpfile(&self, name: &OsStr) -> Result<(), Error> {
        // AT_EMPTY_PATH links the descriptor itself but needs CAP_DAC_READ_SEARCH; the
        // /proc/self/fd path works for everyone else.
        let linked = match rustix::fs::linkat(&self.file, "", &self.dir, name, AtFlags::EMPTY_PATH)
        {
            Err(Errno::NOENT) | Err(Errno::PERM) | Err(Errno::ACCESS) => {
                let proc_path = format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&self.file)
                );
                rustix::fs::linkat(
                    CWD,
                    proc_path.as_str(),
                    &self.dir,
                    name,
                    AtFlags::SYMLINK_FOLLOW,
                )
            }
            other => other,
        };
        linked.map_err(|e| match e {
            Errno::EXIST => exists(&self.path),
            e => Error::io("link", &self.path, e.into()),
        })
    }

    fn rename_temp(&mut self, overwrite: bool) -> Result<(), Error> {
        let temp = self
            .temp_name
            .clone()
            .expect("only called with a named temp file");
        let flags = if overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(
            &self.dir,
            temp.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
            flags,
        )
        .map_err(|e| match e {
            Errno::EXIST => exists(&self.path),
            e => Error::io("rename into place", &self.path, e.into()),
        })?;
        self.temp_name = None;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp_name.take() {
            // Best effort: the job already failed, and its error is what the caller reports.
            let _ = rustix::fs::unlinkat(&self.dir, temp.as_os_str(), AtFlags::empty());
        }
    }
}

fn exists(path: &Path) -> Error {
    Error::new(
        Code::Exists,
        format!(
            "{} already exists; choose another output or allow overwriting",
            path.display()
        ),
    )
}

fn temp_name() -> Result<OsString, Error> {
    let random: [u8; 8] = crate::crypto::format::random_bytes()?;
    Ok(OsString::from(format!(
        "{TEMP_PREFIX}{}",
        hex_encode(&random)
    )))
}

fn create_named_temp(dir: &OwnedFd, path: &Path) -> Result<(OwnedFd, OsString), Error> {
    for _ in 0..16 {
        let temp = temp_name()?;
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat(
            dir.as_fd(),
            temp.as_os_str(),
            flags,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((fd, temp)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(Error::io("create a temp file for", path, e.into())),
        }
    }
    Err(Error::new(
        Code::Internal,
        format!("could not pick a free temp name next to {}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_is_visible_until_commit_and_nothing_remains_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut file = AtomicFile::create(&path, false).unwrap();
        file.file().write_all(b"data").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(file);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut file = AtomicFile::create(&path, false).unwrap();
        file.file().write_all(b"data").unwrap();
        file.commit(0o640, false, Durability::Fsync).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn existing_outputs_are_kept_unless_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        assert_eq!(
            AtomicFile::create(&path, false).err().unwrap().code,
            Code::Exists
        );

        // The target appears between create and commit: the link refuses to replace it.
        let other = dir.path().join("later");
        let mut file = AtomicFile::create(&other, false).unwrap();
        file.file().write_all(b"new").unwrap();
        std::fs::write(&other, b"raced").unwrap();
        assert_eq!(
            file.commit(0o600, false, Durability::None)
                .unwrap_err()
                .code,
            Code::Exists
        );
        assert_eq!(std::fs::read(&other).unwrap(), b"raced");

        let mut file = AtomicFile::create(&path, true).unwrap();
        file.file().write_all(b"new").unwrap();
        file.commit(0o600, true, Durability::Fsync).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.iter().all(|name| !is_temp_name(name)), "{names:?}");
    }

    #[test]
    fn a_missing_directory_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = AtomicFile::create(&dir.path().join("no/such/out"), false)
            .err()
            .unwrap();
        assert_eq!(err.code, Code::NotFound);
    }
}
