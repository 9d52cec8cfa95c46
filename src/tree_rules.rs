//! The rules of a directory tree job, written once for the offline walk (`tree`), the
//! daemon's walk (`tree_job`) and the command line (`cli`): which name a file gets in the
//! output, which entries are skipped and with what reason. Both engines promise the same
//! tree for the same input, so neither spells any of this itself.
//!
//! Names are bytes (`OsStr`), never `str`: a file whose name is not UTF-8 is handled like
//! any other, and `x.rcrypt` decrypts to `x` whatever bytes `x` holds.
//!
//! It also holds the rules of a tree split over several runs (`--partition I/N`,
//! docs/fleet.md): which partition an entry belongs to ([`Partition::owns`]), and the marker
//! at the output root that records N ([`marker_text`], [`check_marker`]), so the two engines
//! and any other tool agree on them.
//!
//! What this room does not do: walk, open or stat anything.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Code, Error};
use crate::protocol::FileOp;

/// The suffix encrypt appends to a name and decrypt strips from it.
pub const SUFFIX: &[u8] = b".rcrypt";

/// The reason a verified existing output is skipped (`skip_existing`).
pub const REASON_EXISTS: &str = "exists and verifies";

/// The reason decrypt skips a file whose name does not end in `.rcrypt` (or is nothing
/// but `.rcrypt`).
pub const REASON_NOT_RCRYPT: &str = "not a .rcrypt file";

/// The name of the marker a partitioned tree keeps at its output root (see
/// [`marker_text`]). A walk skips a regular file of this name at its input root, with
/// [`REASON_MARKER`]: it is no data of the tree.
pub const PARTITION_MARKER: &str = ".ringcrypt-partitions";

/// The reason the marker is skipped when a tree that holds it is walked.
pub const REASON_MARKER: &str = "partition marker";

/// The largest partition count: far more hosts than any scheduler runs tasks of one job,
/// and small enough that `I/N` stays a short, exact decimal.
pub const MAX_PARTITIONS: u32 = 1_000_000;

/// The largest marker file read back; a real one is about 40 bytes.
pub const MARKER_MAX_BYTES: usize = 256;

/// One part of a tree split `count` ways: the entries whose [`partition_hash`] modulo
/// `count` is `index`. Written `I/N` (`2/8`) on the command line and the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    /// `index/count`, or why not: `count` is 1 to [`MAX_PARTITIONS`], `index` below it.
    pub fn new(index: u32, count: u32) -> Result<Partition, String> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(format!(
                "partition count {count} is out of range; N is 1 to {MAX_PARTITIONS}"
            ));
        }
        if index >= count {
            return Err(format!(
                "partition {index}/{count} does not exist: I counts from 0 to N-1 (here 0 to \
                 {}), as Kubernetes' JOB_COMPLETION_INDEX and Slurm's SLURM_ARRAY_TASK_ID from \
                 --array=0-{} do",
                count - 1,
                count - 1
            ));
        }
        Ok(Partition { index, count })
    }

    /// Parses `I/N`: two decimals without sign or leading zeros (`0/3`, `2/3`).
    pub fn parse(text: &str) -> Result<Partition, String> {
        let invalid = || {
            format!(
                "{text:?} is not a partition; write I/N, e.g. 0/3, 1/3 and 2/3 for three \
                 runs that together cover the tree"
            )
        };
        let (index, count) = text.split_once('/').ok_or_else(invalid)?;
        let number = |digits: &str| -> Option<u32> {
            let canonical = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'));
            if canonical { digits.parse().ok() } else { None }
        };
        match (number(index), number(count)) {
            (Some(index), Some(count)) => Partition::new(index, count),
            _ => Err(invalid()),
        }
    }

    /// Whether the entry `name` in the directory `dir` (both relative to the tree's root,
    /// `dir` empty for the root itself, components joined by `/`) belongs to this partition.
    pub fn owns(&self, dir: &[u8], name: &[u8]) -> bool {
        partition_hash(dir, name) % u64::from(self.count) == u64::from(self.index)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The partition hash of an entry (docs/fleet.md): the first 8 bytes of the SHA-256 of its
/// path relative to the tree's root, as raw bytes (`dir/name`, or `name` at the root; no
/// leading `./` or `/`), read as a little-endian integer. An entry belongs to partition
/// `hash % N`.
pub fn partition_hash(dir: &[u8], name: &[u8]) -> u64 {
    let mut sha = Sha256::new();
    if !dir.is_empty() {
        sha.update(dir);
        sha.update(b"/");
    }
    sha.update(name);
    let digest = sha.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The text of the marker a partitioned run writes at its output root when none is there:
/// one line naming the partition count, `ringcrypt-partitions v1 count=N`.
pub fn marker_text(count: u32) -> String {
    format!("ringcrypt-partitions v1 count={count}\n")
}

/// The partition count a marker records, if `bytes` is a marker.
pub fn parse_marker(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    let count = text
        .strip_suffix('\n')?
        .strip_prefix("ringcrypt-partitions v1 count=")?;
    let count: u32 = count.parse().ok()?;
    (1..=MAX_PARTITIONS).contains(&count).then_some(count)
}

/// Checks a run of `partition` against the marker found at `output` (its bytes): the same
/// count is fine; another count, or something that is not a marker, is refused with
/// `partition_mismatch` before anything of the tree is written.
pub fn check_marker(partition: Partition, output: &Path, bytes: &[u8]) -> Result<(), Error> {
    let marker = output.join(PARTITION_MARKER);
    match parse_marker(bytes) {
        Some(count) if count == partition.count => Ok(()),
        Some(count) => Err(Error::new(
            Code::PartitionMismatch,
            format!(
                "partition {partition} refused: {} says this output tree is split into {count} \
                 partitions, not {}; every run into one output must use the same N (run \
                 --partition I/{count}), or, to split it anew, remove the marker first",
                marker.display(),
                partition.count
            ),
        )),
        None => Err(Error::new(
            Code::PartitionMismatch,
            format!(
                "partition {partition} refused: {} is not a partition marker ringcrypt wrote \
                 (it should hold one line, `ringcrypt-partitions v1 count=N`); remove it or \
                 choose another output directory",
                marker.display()
            ),
        )),
    }
}

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

    /// The values docs/fleet.md gives, computed with Python's hashlib (`int.from_bytes(
    /// sha256(path).digest()[:8], "little")`), not with this code.
    #[test]
    fn the_partition_hash_is_the_documented_one() {
        let cases: [(&[u8], &[u8], u64); 4] = [
            (b"", b"a.txt", 0xf5a3_9e9a_09cb_b718),
            (b"d1/e2", b"f3.dat", 0xe8ca_971f_54e7_ce1c),
            (b"photos/2024", b"IMG_0001.jpg", 0x6339_4258_8db2_24f8),
            (
                "caf\u{e9}".as_bytes(),
                "na\u{ef}ve.txt".as_bytes(),
                0x0e7f_776b_5086_41a7,
            ),
        ];
        for (dir, name, want) in cases {
            assert_eq!(partition_hash(dir, name), want, "{dir:?} {name:?}");
        }
        let p = |text: &str| Partition::parse(text).unwrap();
        assert!(p("2/3").owns(b"", b"a.txt"));
        assert!(p("1/3").owns(b"d1/e2", b"f3.dat"));
        assert!(p("4/8").owns(b"d1/e2", b"f3.dat"));
        assert!(!p("0/3").owns(b"d1/e2", b"f3.dat"));
        // Every entry is in exactly one partition.
        for name in [&b"x"[..], b"y.rcrypt", b"\xff\xfe"] {
            let owners = (0..5).filter(|&i| p(&format!("{i}/5")).owns(b"d", name));
            assert_eq!(owners.count(), 1);
        }
    }

    #[test]
    fn partitions_parse_exactly() {
        assert_eq!(
            Partition::parse("0/1"),
            Ok(Partition { index: 0, count: 1 })
        );
        assert_eq!(Partition::parse("7/8").unwrap().to_string(), "7/8");
        for bad in [
            "", "1", "1/", "/3", "a/3", "+1/3", "01/3", "1/03", "1/3/4", " 1/3", "-1/3",
        ] {
            let err = Partition::parse(bad).unwrap_err();
            assert!(err.contains("write I/N"), "{bad:?}: {err}");
        }
        assert!(Partition::parse("3/3").unwrap_err().contains("0 to 2"));
        assert!(
            Partition::parse("0/0")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(Partition::parse("0/1000001").is_err());
        assert!(Partition::parse("0/1000000").is_ok());
    }

    #[test]
    fn markers_record_the_count_and_refuse_another() {
        let out = Path::new("/o");
        let three = Partition::new(1, 3).unwrap();
        assert_eq!(parse_marker(marker_text(3).as_bytes()), Some(3));
        assert_eq!(check_marker(three, out, marker_text(3).as_bytes()), Ok(()));
        let err = check_marker(three, out, marker_text(4).as_bytes()).unwrap_err();
        assert_eq!(err.code, Code::PartitionMismatch);
        assert!(
            err.message.contains("/o/.ringcrypt-partitions")
                && err.message.contains("into 4 partitions, not 3"),
            "{}",
            err.message
        );
        for junk in [
            &b""[..],
            b"count=3\n",
            b"ringcrypt-partitions v1 count=3",
            b"ringcrypt-partitions v1 count=0\n",
        ] {
            let err = check_marker(three, out, junk).unwrap_err();
            assert_eq!(err.code, Code::PartitionMismatch);
            assert!(
                err.message.contains("not a partition marker"),
                "{}",
                err.message
            );
        }
    }
}
