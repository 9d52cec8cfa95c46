//! The error type every boundary of the library returns: a stable wire `code` (docs/protocol.md)
//! and a message that names the file and the cause in words a person can act on.
//!
//! IO errors carry the operation and the path; the code is derived from the OS error, so a
//! full disk is always `no_space` and a missing file always `not_found`.

use std::fmt;
use std::io;
use std::path::Path;

/// Wire error codes (docs/protocol.md). The string forms are part of the protocol; this list may
/// grow, never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    BadRequest,
    UnknownOp,
    TooLarge,
    NotFound,
    PermissionDenied,
    ForbiddenPath,
    Exists,
    AuthFailed,
    UnknownKey,
    KeyRetired,
    BadFormat,
    Busy,
    Timeout,
    Cancelled,
    IoError,
    NoSpace,
    ShuttingDown,
    Internal,
    /// A partitioned tree (`--partition I/N`) whose N differs from the N its output root's
    /// marker records: another run split the tree otherwise.
    PartitionMismatch,
}

impl Code {
    /// Every code, in the order docs/protocol.md lists them.
    pub const ALL: [Code; 19] = [
        Code::BadRequest,
        Code::UnknownOp,
        Code::TooLarge,
        Code::NotFound,
        Code::PermissionDenied,
        Code::ForbiddenPath,
        Code::Exists,
        Code::AuthFailed,
        Code::UnknownKey,
        Code::KeyRetired,
        Code::BadFormat,
        Code::Busy,
        Code::Timeout,
        Code::Cancelled,
        Code::IoError,
        Code::NoSpace,
        Code::ShuttingDown,
        Code::Internal,
        Code::PartitionMismatch,
    ];

    /// The code as it appears on the wire and in test-vector `expect:` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::UnknownOp => "unknown_op",
            Code::TooLarge => "too_large",
            Code::NotFound => "not_found",
            Code::PermissionDenied => "permission_denied",
            Code::ForbiddenPath => "forbidden_path",
            Code::Exists => "exists",
            Code::AuthFailed => "auth_failed",
            Code::UnknownKey => "unknown_key",
            Code::KeyRetired => "key_retired",
            Code::BadFormat => "bad_format",
            Code::Busy => "busy",
            Code::Timeout => "timeout",
            Code::Cancelled => "cancelled",
            Code::IoError => "io_error",
            Code::NoSpace => "no_space",
            Code::ShuttingDown => "shutting_down",
            Code::Internal => "internal",
            Code::PartitionMismatch => "partition_mismatch",
        }
    }

    /// Parses a wire code.
    pub fn parse(text: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|code| code.as_str() == text)
    }

    /// The code for an OS error.
    pub fn from_io(err: &io::Error) -> Code {
        // ENOSPC and EDQUOT have no stable `io::ErrorKind` mapping on every toolchain we
        // support, so they are matched by number.
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        match err.raw_os_error() {
            Some(ENOSPC) | Some(EDQUOT) => return Code::NoSpace,
            _ => {}
        }
        match err.kind() {
            io::ErrorKind::NotFound => Code::NotFound,
            io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            io::ErrorKind::AlreadyExists => Code::Exists,
            _ => Code::IoError,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its wire code and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// An IO error during `op` on `path`, e.g. `io("read", path, err)` gives
    /// "cannot read /data/x: Permission denied (os error 13)".
    pub fn io(op: &str, path: &Path, err: io::Error) -> Error {
        let code = Code::from_io(&err);
        let cause = match code {
            Code::NoSpace => format!("{err}: the disk or quota is full"),
            _ => err.to_string(),
        };
        Error::new(code, format!("cannot {op} {}: {cause}", path.display()))
    }

    /// The message with a prefix naming where the error happened.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            code: self.code,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_names() {
        for code in Code::ALL {
            assert_eq!(Code::parse(code.as_str()), Some(code));
        }
        assert_eq!(Code::parse("nope"), None);
    }

    #[test]
    fn io_errors_map_to_codes() {
        let path = Path::new("/x");
        let full = Error::io("write", path, io::Error::from_raw_os_error(28));
        assert_eq!(full.code, Code::NoSpace);
        assert!(full.message.contains("/x"), "{}", full.message);
        let quota = Error::io("write", path, io::Error::from_raw_os_error(122));
        assert_eq!(quota.code, Code::NoSpace);
        let missing = Error::io("open", path, io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(missing.code, Code::NotFound);
        let denied = Error::io("open", path, io::Error::from_raw_os_error(13));
        assert_eq!(denied.code, Code::PermissionDenied);
        let exists = Error::io("link", path, io::Error::from_raw_os_error(17));
        assert_eq!(exists.code, Code::Exists);
        let other = Error::io("read", path, io::Error::from_raw_os_error(5));
        assert_eq!(other.code, Code::IoError);
    }
}
