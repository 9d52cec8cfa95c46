//! A job on descriptors the caller passed (`"fds": true`): what the daemon checks about
//! them before it reads one and writes the other.

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::error::{Code, Error};
use std::io;

use rustix::fs::FileType;

use crate::protocol::FileJobSpec;

/// The two descriptors a request with `"fds": true` passed: the input, open for reading,
/// and an unnamed temp file the caller made in the output's directory, open for writing.
/// The kernel checked the caller's permissions when the caller opened them; the daemon
/// only reads the one and writes the other, and the caller links the output into place.
pub struct Passed {
    pub(super) input: OwnedFd,
    pub(super) output: OwnedFd,
}

impl Passed {
    /// Checks that the descriptors are what the request promises, so the daemon never
    /// writes into a file that has a name (it could be anyone's) or reads through a
    /// descriptor that was not opened for reading.
    pub fn check(input: OwnedFd, output: OwnedFd, spec: &FileJobSpec) -> Result<Passed, Error> {
        use rustix::fs::OFlags;
        let bad = |message: String| Error::new(Code::BadRequest, message);
        let io = |what: &str, path: &Path, e: rustix::io::Errno| {
            Error::new(
                Code::IoError,
                format!(
                    "cannot {what} the descriptor passed for {}: {}",
                    path.display(),
                    io::Error::from(e)
                ),
            )
        };
        let in_flags =
            rustix::fs::fcntl_getfl(&input).map_err(|e| io("inspect", &spec.input, e))?;
        if in_flags.contains(OFlags::PATH)
            || in_flags.intersection(OFlags::RWMODE) == OFlags::WRONLY
        {
            return Err(bad(format!(
                "the descriptor passed for {} is not open for reading",
                spec.input.display()
            )));
        }
        let out_flags =
            rustix::fs::fcntl_getfl(&output).map_err(|e| io("inspect", &spec.output, e))?;
        let out_mode = out_flags.intersection(OFlags::RWMODE);
        if out_flags.contains(OFlags::PATH)
            || (out_mode != OFlags::WRONLY && out_mode != OFlags::RDWR)
            || out_flags.contains(OFlags::APPEND)
        {
            return Err(bad(format!(
                "the descriptor passed for {} is not open for writing (without O_APPEND)",
                spec.output.display()
            )));
        }
        let out_stat = rustix::fs::fstat(&output).map_err(|e| io("stat", &spec.output, e))?;
        if FileType::from_raw_mode(out_stat.st_mode) != FileType::RegularFile
            || out_stat.st_nlink != 0
            || out_stat.st_size != 0
        {
            return Err(bad(format!(
                "the descriptor passed for {} must be a new, empty, unnamed temp file \
                 (open(dir, O_TMPFILE | O_WRONLY)); the daemon never writes into a file that \
                 has a name",
                spec.output.display()
            )));
        }
        let in_stat = rustix::fs::fstat(&input).map_err(|e| io("stat", &spec.input, e))?;
        if in_stat.st_dev == out_stat.st_dev && in_stat.st_ino == out_stat.st_ino {
            return Err(bad(format!(
                "the descriptors passed for {} and {} are the same file",
                spec.input.display(),
                spec.output.display()
            )));
        }
        Ok(Passed { input, output })
    }
}
