//! Where a job's paths are opened: beneath the allowed root that holds them, or, for a file
//! of a tree, by its name in the directory the walk holds (`held_dirs.rs`). Both confine the
//! same way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
//!
//! What this room does not do: decide what to open next (`mod.rs`).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::*;

impl FileJob {
    /// Opens `path` beneath the allowed root that holds it (`openat2` confined to it).
    pub(super) fn open_in_root(
        pending: &mut u32,
        slot: u32,
        who: Option<Who>,
        ctx: &mut JobCtx,
        path: &Path,
        flags: u64,
        step: Step,
    ) -> Result<(), Error> {
        let (root, rel) = ctx.roots.position(path)?;
        let op = Op::OpenAt2 {
            dir: ctx.root_files[root],
            path: rel.as_os_str().as_bytes(),
            flags,
            mode: 0,
            resolve: RESOLVE_CONFINED,
        };
        Self::push_op(pending, slot, who, ctx, step, op);
        Ok(())
    }

    /// Opens the input `path` by its file name in `dir`, the directory a tree's walk holds
    /// it in, confined the same way: a symlink swapped in for the file is refused.
    pub(super) fn open_in_held(
        pending: &mut u32,
        slot: u32,
        who: Option<Who>,
        ctx: &mut JobCtx,
        dir: &Arc<OwnedFd>,
        path: &Path,
        flags: u64,
    ) {
        let dir = ctx.reactor.adopt_shared(Arc::clone(dir));
        let op = Op::OpenAt2 {
            dir,
            path: path.file_name().unwrap_or_default().as_bytes(),
            flags,
            mode: 0,
            resolve: RESOLVE_CONFINED,
        };
        Self::push_op(pending, slot, who, ctx, Step::OpenInput, op);
        // The share goes once the open completes.
        ctx.reactor.close(dir);
    }
}
