//! What both engines (the daemon's jobs and the offline client's) agree on about an output
//! while it is being made: how durable it must be, and the name of a temp file that an
//! interrupted job can leave behind.
//!
//! What this room does not do: write files (`output` offline, `job` in the daemon).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Prefix of named temp files; anything starting with it in an output directory is debris
/// of an interrupted job.
pub const TEMP_PREFIX: &str = ".ringcrypt-tmp-";

/// How an output is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before linking and the directory after: `done` means on disk.
    Fsync,
    /// Skip both fsyncs (benchmarks, scratch data): atomic, but not durable across power loss.
    None,
}

/// True when `name` is a named temp file left by an interrupted job.
pub fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}
