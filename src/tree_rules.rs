//! The rules of a directory tree job, written once for the offline walk (`tree`), the
//! daemon's walk (`tree_job`) and the command line (`cli`): which name a file gets in the
//! output, which entries are skipped and with what reason. Both engines promise the same
//! tree for the same input, so neither spells any of this itself.
//!
//! Names are bytes (`OsStr`), never `str`: a file whose name is not UTF-8 is handled like
//! any other, and `x.rcrypt` decrypts to `x` whatever bytes `x` holds.
//!
//! What this room does not do: walk, open or stat anything.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::protocol::FileOp;

/// The suffix encrypt appends to a name and decrypt strips from it.
pub const SUFFIX: &[u8] = b".rcrypt";

/// The reason a verified existing output is skipped (`skip_existing`).
pub const REASON_EXISTS: &str = "exists and verifies";

/// The reason decrypt skips a file whose name does not end in `.rcrypt` (or is nothing
/// but `.rcrypt`).
pub const REASON_NOT_RCRYPT: &str = "not a .rcrypt file";

/// A directory entry that is neither a regular file nor a directory: skipped, never
/// followed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Symlink,
    Fifo,
    Socket,
    /// A block or character device.
    Device,
    /// A type the file system reports and no other variant names.
    Unknown,
}

impl Special {
    /// The kind of an entry that is not a regular file or a directory.
    pub fn of(kind: std::fs::FileType) -> Special {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_symlink() {
            Special::Symlink
        } else if kind.is_fifo() {
            Special::Fifo
        } else if kind.is_socket() {
            Special::Socket
        } else if kind.is_block_device() || kind.is_char_device() {
            Special::Device
        } else {
            Special::Unknown
        }
    }

    /// The reason listed for the skipped entry.
    pub fn reason(self) -> &'static str {
        match self {
            Special::Symlink => "symbolic link",
            Special::Fifo => "fifo",
            Special::Socket => "socket",
            Special::Device => "device",
            Special::Unknown => "not a regular file",
        }
    }
}

/// The output name of a file named `name` in a tree job doing `op`, as a stem and a suffix
/// to append (so a walk can write it into a buffer it already has), or the reason the file
/// is skipped.
pub fn output_name_parts(op: FileOp, name: &[u8]) -> Result<(&[u8], &'static [u8]), &'static str> {
    match op {
        FileOp::Encrypt => Ok((name, SUFFIX)),
        FileOp::Decrypt => name
            .strip_suffix(SUFFIX)
            .filter(|stem| !stem.is_empty())
            .map(|stem| (stem, &b""[..]))
            .ok_or(REASON_NOT_RCRYPT),
        // The files decrypt would take, under their own names (verify writes nothing).
        FileOp::Verify => name
            .strip_suffix(SUFFIX)
            .filter(|stem| !stem.is_empty())
            .map(|_| (name, &b""[..]))
            .ok_or(REASON_NOT_RCRYPT),
        FileOp::Rewrap => Ok((name, b"")),
    }
}

/// [`output_name_parts`], joined.
pub fn output_name(op: FileOp, name: &OsStr) -> Result<OsString, &'static str> {
    let (stem, suffix) = output_name_parts(op, name.as_bytes())?;
    let mut out = Vec::with_capacity(stem.len() + suffix.len());
    out.extend_from_slice(stem);
    out.extend_from_slice(suffix);
    Ok(OsString::from_vec(out))
}

/// `path` with `.rcrypt` appended: encrypt's default output, for a file or a tree.
pub fn with_suffix(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(OsStr::from_bytes(SUFFIX));
    PathBuf::from(name)
}

/// `path` without its `.rcrypt` suffix: decrypt's default output. None when the name does
/// not end in it, or is nothing but the suffix: no other name is guessed.
pub fn without_suffix(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.as_bytes();
    let stem = name.strip_suffix(SUFFIX).filter(|stem| !stem.is_empty())?;
    Some(path.with_file_name(OsStr::from_bytes(stem)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(op: FileOp, name: &[u8]) -> Result<Vec<u8>, &'static str> {
        output_name(op, OsStr::from_bytes(name)).map(OsStringExt::into_vec)
    }

    #[test]
    fn names_are_mapped_as_bytes() {
        assert_eq!(
            name(FileOp::Encrypt, b"a.txt"),
            Ok(b"a.txt.rcrypt".to_vec())
        );
        assert_eq!(
            name(FileOp::Decrypt, b"a.txt.rcrypt"),
            Ok(b"a.txt".to_vec())
        );
        assert_eq!(name(FileOp::Decrypt, b"a.txt"), Err(REASON_NOT_RCRYPT));
        assert_eq!(name(FileOp::Decrypt, b".rcrypt"), Err(REASON_NOT_RCRYPT));
        assert_eq!(name(FileOp::Rewrap, b"a.rcrypt"), Ok(b"a.rcrypt".to_vec()));
        // Verify takes the files decrypt takes, under their own names.
        assert_eq!(name(FileOp::Verify, b"a.rcrypt"), Ok(b"a.rcrypt".to_vec()));
        assert_eq!(name(FileOp::Verify, b"a.txt"), Err(REASON_NOT_RCRYPT));
        assert_eq!(name(FileOp::Verify, b".rcrypt"), Err(REASON_NOT_RCRYPT));
        // Not UTF-8: mapped all the same.
        assert_eq!(
            name(FileOp::Decrypt, b"caf\xe9.rcrypt"),
            Ok(b"caf\xe9".to_vec())
        );
        assert_eq!(
            name(FileOp::Encrypt, b"\xff\xfe"),
            Ok(b"\xff\xfe.rcrypt".to_vec())
        );
    }

    #[test]
    fn default_outputs_append_or_strip_the_suffix() {
        assert_eq!(
            with_suffix(Path::new("a/b.txt")),
            PathBuf::from("a/b.txt.rcrypt")
        );
        assert_eq!(
            without_suffix(Path::new("a/b.txt.rcrypt")),
            Some(PathBuf::from("a/b.txt"))
        );
        assert_eq!(without_suffix(Path::new("a/b.txt")), None);
        assert_eq!(without_suffix(Path::new("a/.rcrypt")), None);
        let odd = Path::new(OsStr::from_bytes(b"d/\xe9.rcrypt"));
        assert_eq!(
            without_suffix(odd),
            Some(PathBuf::from(OsStr::from_bytes(b"d/\xe9")))
        );
    }
}
