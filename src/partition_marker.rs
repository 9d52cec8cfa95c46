//! The marker a partitioned tree keeps at its output root (docs/fleet.md): the first run of
//! any partition writes it, recording N; every later run checks it, and one with another N
//! is refused before anything of the tree is written. Written and checked here, on the output
//! root's open descriptor, by both engines (the daemon's `tree_job` and the offline `tree`),
//! so they agree to the byte; its text and the verdict are [`crate::tree_rules`]'.
//!
//! The marker appears whole or not at all: it is written to a named temp file (the
//! [`TEMP_PREFIX`] every walk and the daemon's start-up clean-up know as debris), made
//! durable, then hard-linked under its name, which fails if another run's marker got there
//! first; that one is then read and checked instead. Runs that start at the same moment thus
//! agree on one marker.
//!
//! What this room does not do: decide which entries a partition takes (`tree_rules`), walk,
//! or touch anything but the marker and its temp file.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::durable::TEMP_PREFIX;
use crate::error::Error;
use crate::tree_rules::{MARKER_MAX_BYTES, PARTITION_MARKER, Partition, check_marker, marker_text};

/// Makes sure the output root `dir` (shown as `output` in messages) holds the marker of a
/// tree split `partition.count` ways: writes it if there is none, checks it otherwise.
/// `partition_mismatch` when it records another count or is not a marker.
pub fn claim(dir: BorrowedFd<'_>, partition: Partition, output: &Path) -> Result<(), Error> {
    // Twice at most: a marker another run linked between our read and our link is read.
    for _ in 0..2 {
        if let Some(bytes) = read(dir, output)? {
            return check_marker(partition, output, &bytes);
        }
        if publish(dir, partition, output)? {
            return Ok(());
        }
    }
    match read(dir, output)? {
        Some(bytes) => check_marker(partition, output, &bytes),
        None => check_marker(partition, output, b""),
    }
}

/// The marker's bytes (at most one more than [`MARKER_MAX_BYTES`]), or None if there is none.
fn read(dir: BorrowedFd<'_>, output: &Path) -> Result<Option<Vec<u8>>, Error> {
    let shown = output.join(PARTITION_MARKER);
    let opened = rustix::fs::openat(
        dir,
        PARTITION_MARKER,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        // A symlink in its place is no marker: check_marker says so.
        Err(Errno::LOOP) => return Ok(Some(Vec::new())),
        Err(e) => return Err(Error::io("open", &shown, e.into())),
    };
    let mut bytes = Vec::with_capacity(64);
    let read = std::fs::File::from(fd)
        .take(MARKER_MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes);
    match read {
        Ok(_) => Ok(Some(bytes)),
        // A directory (or another thing that cannot be read) in its place is no marker.
        Err(e) if e.kind() == ErrorKind::IsADirectory => Ok(Some(Vec::new())),
        Err(e) => Err(Error::io("read", &shown, e)),
    }
}

/// Writes the marker into a temp file and links it under its name: true when linked, false
/// when a marker appeared meanwhile.
fn publish(dir: BorrowedFd<'_>, partition: Partition, output: &Path) -> Result<bool, Error> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| {
        Error::new(
            crate::error::Code::Internal,
            format!("the OS random generator failed: {e}"),
        )
    })?;
    let temp = format!(
        "{TEMP_PREFIX}partitions-{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let shown = output.join(&temp);
    let fd = rustix::fs::openat(
        dir,
        temp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| Error::io("create", &shown, e.into()))?;
    let text = marker_text(partition.count);
    let written = write_all(fd.as_fd(), text.as_bytes())
        .and_then(|()| rustix::fs::fdatasync(&fd))
        .map_err(|e| Error::io("write", &shown, e.into()))
        .and_then(|()| {
            match rustix::fs::linkat(dir, temp.as_str(), dir, PARTITION_MARKER, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::EXIST) => Ok(false),
                Err(e) => Err(Error::io("link", &output.join(PARTITION_MARKER), e.into())),
            }
        });
    // The temp name goes whatever happened; a failure here leaves debris the walks skip.
    let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
    if matches!(written, Ok(true)) {
        let _ = rustix::fs::fsync(dir);
    }
    written
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(Errno::NOSPC),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use std::fs::File;

    #[test]
    fn the_first_run_writes_the_marker_and_later_runs_check_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = File::open(dir.path()).unwrap();
        let three = |i| Partition::new(i, 3).unwrap();
        claim(root.as_fd(), three(1), dir.path()).unwrap();
        let marker = dir.path().join(PARTITION_MARKER);
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "ringcrypt-partitions v1 count=3\n"
        );
        claim(root.as_fd(), three(0), dir.path()).unwrap();
        claim(root.as_fd(), three(2), dir.path()).unwrap();
        let err = claim(root.as_fd(), Partition::new(0, 2).unwrap(), dir.path()).unwrap_err();
        assert_eq!(err.code, Code::PartitionMismatch);
        // Only the marker is there: no temp file left.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [PARTITION_MARKER]);
        // Something else under the name is refused, not replaced.
        std::fs::remove_file(&marker).unwrap();
        std::fs::create_dir(&marker).unwrap();
        let err = claim(root.as_fd(), three(0), dir.path()).unwrap_err();
        assert_eq!(err.code, Code::PartitionMismatch);
        assert!(marker.is_dir());
    }
}
