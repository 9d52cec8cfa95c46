//! A job on descriptors the caller passed (`"fds": true`): what the daemon checks about
//! them before it reads one and writes the other, and whether either is a stream (a pipe,
//! a socket or a character device: `fstat` says so), which the job then streams through
//! `pipe.rs` instead of reading and writing at offsets.

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
    /// The output is a stream: written in order, never linked or fsynced.
    pub(super) output_stream: bool,
}

/// Whether a descriptor of this type is a stream: no size, no offsets, read or written in
/// order (a FIFO, a socket, a character device such as a terminal or `/dev/null`).
pub(super) fn is_stream(kind: FileType) -> bool {
    matches!(
        kind,
        FileType::Fifo | FileType::Socket | FileType::CharacterDevice
    )
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
        let out_stat = rustix::fs::fstat(&output).map_err(|e| io("stat", &spec.output, e))?;
        let out_kind = FileType::from_raw_mode(out_stat.st_mode);
        // O_APPEND would move a file's writes to its end; a stream has no offsets to move.
        if out_flags.contains(OFlags::PATH)
            || (out_mode != OFlags::WRONLY && out_mode != OFlags::RDWR)
            || (out_flags.contains(OFlags::APPEND) && !is_stream(out_kind))
        {
            return Err(bad(format!(
                "the descriptor passed for {} is not open for writing (without O_APPEND)",
                spec.output.display()
            )));
        }
        let in_stat = rustix::fs::fstat(&input).map_err(|e| io("stat", &spec.input, e))?;
        // One device both ways (`/dev/null`) is no loop; one file or pipe is.
        if in_stat.st_dev == out_stat.st_dev
            && in_stat.st_ino == out_stat.st_ino
            && out_kind != FileType::CharacterDevice
        {
            return Err(bad(format!(
                "the descriptors passed for {} and {} are the same file (or pipe)",
                spec.input.display(),
                spec.output.display()
            )));
        }
        let output_stream = is_stream(out_kind);
        if output_stream {
            // A pipe (or socket, or device) the caller holds: written in order, nothing to
            // link. Only the open mode matters, checked above.
            return Ok(Passed {
                input,
                output,
                output_stream,
            });
        }
        if out_kind != FileType::RegularFile || out_stat.st_nlink != 0 || out_stat.st_size != 0 {
            return Err(bad(format!(
                "the descriptor passed for {} must be a new, empty, unnamed temp file \
                 (open(dir, O_TMPFILE | O_WRONLY)); the daemon never writes into a file that \
                 has a name",
                spec.output.display()
            )));
        }
        Ok(Passed {
            input,
            output,
            output_stream: false,
        })
    }
}
