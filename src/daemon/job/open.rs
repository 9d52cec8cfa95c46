//! Where a job's paths are opened: beneath the allowed root that holds them, or, for a file
//! of a tree, by its name in the directory the walk holds (`held_dirs.rs`). Both confine the
//! same way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
//!
//! Also the output's first steps: the directory open, then the temp file created in it
//! (unnamed, or named where the file system has no `O_TMPFILE`).
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

/// The output's side: its directory open, the temp file made in it.
impl FileJob {
    pub(super) fn opened_dir(&mut self, ctx: &mut JobCtx, dir: File) -> Result<(), Error> {
        let Stage::OpeningDir { input } = self.stage else {
            ctx.reactor.close(dir);
            return Err(self.out_of_order());
        };
        self.stage = Stage::Creating { input, dir };
        if self.out_name().is_empty() {
            return Err(Error::new(
                Code::BadRequest,
                format!("{} has no file name", self.spec.output.display()),
            ));
        }
        // Without overwrite or skip_existing, an existing output needs no look-up: the link
        // (or the rename without replace) refuses it with EEXIST, which says the same. The
        // output named as the input is still refused up front, with its own message.
        if !self.spec.overwrite && !self.spec.skip_existing && self.spec.output != self.spec.input {
            return self.create_temp(ctx);
        }
        // Looked up with the caller's rights, like every op.
        let caller = self.who.and_then(|who| ctx.reactor.caller(who));
        let existing = {
            let dir_fd = ctx
                .reactor
                .fd(dir)
                .map_err(|e| self.io_err("check", false, e))?;
            let _acting = ActAs::maybe(caller).map_err(|e| self.io_err("check", false, e))?;
            rustix::fs::statat(dir_fd, self.out_name(), AtFlags::SYMLINK_NOFOLLOW)
        };
        match existing {
            Ok(stat) => {
                let input = ctx
                    .reactor
                    .fd(input)
                    .ok()
                    .and_then(|fd| rustix::fs::fstat(fd).ok());
                let same =
                    input.is_some_and(|i| i.st_dev == stat.st_dev && i.st_ino == stat.st_ino);
                // Replacing the input is only ever a rewrap in place, asked for explicitly.
                if same && !(self.spec.op == FileOp::Rewrap && self.spec.overwrite) {
                    return Err(Error::new(
                        Code::BadRequest,
                        format!(
                            "{} is the input itself; inputs are never modified",
                            self.spec.output.display()
                        ),
                    ));
                }
                if self.spec.skip_existing && !same {
                    return self.check_existing(ctx);
                } else if !self.spec.overwrite {
                    return Err(self.link_err(io::Error::from_raw_os_error(libc::EEXIST)));
                }
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(self.io_err("check", false, e.into())),
        }
        self.create_temp(ctx)
    }

    /// Creates the output as an unnamed temp file in the stage's directory.
    pub(super) fn create_temp(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        let Stage::Creating { dir, .. } = self.stage else {
            return Err(self.out_of_order());
        };
        if crate::failpoint::tmpfile_refused() {
            return self.created_temp(ctx, Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        }
        let flags = (libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) as u64;
        // An unnamed file is reachable by nobody until it is linked, so it is made with the
        // input's mode at once; `commit` needs no fchmod unless the umask took bits away.
        self.mode_set = self.in_mode & ctx.umask == 0;
        let op = Op::OpenAt2 {
            dir,
            path: b".",
            flags,
            mode: u64::from(self.in_mode),
            resolve: 0,
        };
        self.push(ctx, Step::CreateTemp, op);
        Ok(())
    }

    pub(super) fn created_temp(
        &mut self,
        ctx: &mut JobCtx,
        result: io::Result<File>,
    ) -> Result<(), Error> {
        let Stage::Creating { dir, .. } = self.stage else {
            if let Ok(temp) = result {
                ctx.reactor.close(temp);
            }
            return Err(self.out_of_order());
        };
        match result {
            Ok(temp) => self.have_temp(ctx, temp),
            // Filesystems without O_TMPFILE: a named temp file the next start cleans up.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                let name = TempName::random()?;
                self.temp_name = Some(name);
                // A named file is visible at once: owner-only until `commit` sets its mode.
                self.mode_set = false;
                let flags = (libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_RDWR
                    | libc::O_CLOEXEC
                    | libc::O_NOFOLLOW) as u64;
                let op = Op::OpenAt2 {
                    dir,
                    path: &name.0,
                    flags,
                    mode: 0o600,
                    resolve: 0,
                };
                self.push(ctx, Step::CreateNamed, op);
                Ok(())
            }
            Err(e) => Err(self.io_err("create a temp file for", false, e)),
        }
    }
}
