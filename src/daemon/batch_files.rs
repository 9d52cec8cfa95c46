//! The files of a batch (`Request::Batch`), which a [`TreeJob`](super::tree_job::TreeJob)
//! hands out in the request's order instead of walking a tree, and the directories the
//! batch holds open for them.
//!
//! What this room does not do: hand files out or count them (`tree_job.rs` does).

use std::path::{Path, PathBuf};

use crate::daemon::held_dirs::HeldDirs;
use crate::daemon::roots::Roots;
use crate::daemon::tree_job::{open_dir, out_twin};
use crate::protocol::FileOp;

/// Directory pairs a batch keeps open for its files (see [`BatchFiles::dirs`]).
const BATCH_HELD_DIRS: usize = 8;

/// The files of a batch, handed out in the request's order.
pub(crate) struct BatchFiles {
    pub inputs: std::vec::IntoIter<PathBuf>,
    pub outputs: std::vec::IntoIter<PathBuf>,
    /// The index of the next file to hand out.
    pub next: u32,
    /// The input and output directories of the latest files, held open (confined, with
    /// the caller's rights) and shared with the files in them, as a tree's levels are: a
    /// file then opens its name in the one and links its output in the other, instead of
    /// resolving both paths from the root. At most [`BATCH_HELD_DIRS`], oldest dropped.
    pub dirs: Vec<(PathBuf, PathBuf, HeldDirs)>,
}

impl BatchFiles {
    /// The held directories for a file of `input`'s directory with its output in
    /// `output`'s; None when either cannot be opened here (the file job then opens its
    /// paths itself, and reports why it cannot).
    pub fn held(
        &mut self,
        roots: &Roots,
        op: FileOp,
        input: &Path,
        output: &Path,
    ) -> Option<HeldDirs> {
        input.file_name()?;
        output.file_name()?;
        let (in_dir, out_dir) = (input.parent()?, output.parent()?);
        if let Some((_, _, dirs)) = self
            .dirs
            .iter()
            .find(|(i, o, _)| i == in_dir && o == out_dir)
        {
            return Some(dirs.clone());
        }
        let held_in = open_dir(roots, in_dir).ok()?;
        let held_out = if op.writes() {
            open_dir(roots, out_dir).ok()?
        } else {
            out_twin(&held_in, in_dir).ok()?
        };
        let dirs = HeldDirs::new(held_in, held_out);
        if self.dirs.len() >= BATCH_HELD_DIRS {
            self.dirs.remove(0);
        }
        self.dirs
            .push((in_dir.to_path_buf(), out_dir.to_path_buf(), dirs.clone()));
        Some(dirs)
    }
}
