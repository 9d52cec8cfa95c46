//! The directories of one level of a tree job, held open while the level's files are
//! processed, and shared with the file jobs of those files (on whichever shard owns them).
//!
//! A file job of a tree opens its input by its one-component name in the input directory
//! and creates and links its output in the output directory, instead of resolving both full
//! paths from the allowed root and opening the output's directory once per file. Both
//! descriptors were opened confined (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
//! from the root, or from a parent opened that way), and the file's name is opened with the
//! same flags, so a symlink in its place is refused as before. The descriptors close when the
//! walk has left the level and the last file job holding them has ended.
//!
//! What this room does not do: open or walk anything (`tree_job.rs` does).

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// One tree level's input and output directories (see the module docs). Cloning shares them.
#[derive(Clone)]
pub struct HeldDirs {
    pub input: Arc<OwnedFd>,
    /// The output directory; a verify, which writes nothing, holds its input's here.
    pub output: Arc<OwnedFd>,
}

impl HeldDirs {
    pub fn new(input: OwnedFd, output: OwnedFd) -> HeldDirs {
        HeldDirs {
            input: Arc::new(input),
            output: Arc::new(output),
        }
    }
}

/// Two specs name the same held directories only if they share them.
impl PartialEq for HeldDirs {
    fn eq(&self, other: &HeldDirs) -> bool {
        Arc::ptr_eq(&self.input, &other.input) && Arc::ptr_eq(&self.output, &other.output)
    }
}

impl Eq for HeldDirs {}

impl fmt::Debug for HeldDirs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HeldDirs(in fd {}, out fd {})",
            self.input.as_raw_fd(),
            self.output.as_raw_fd()
        )
    }
}
