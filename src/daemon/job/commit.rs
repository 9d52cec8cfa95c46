//! A file job's last steps, once every batch is written: the output's permissions and
//! modification time, its fsync, the link (or rename) that gives it its name, and the fsync
//! of its directory. `done` means all of them happened.
//!
//! What this room does not do: stream bytes (`stream.rs`) or open anything (`mod.rs`).

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// Whether links name the file by its descriptor (`AT_EMPTY_PATH`), which saves the kernel
/// a path lookup through `/proc` per file. The kernel allows it to a daemon with
/// `CAP_DAC_READ_SEARCH`, and from Linux 6.10 to the credentials the file was opened with;
/// where it refuses (`ENOENT`), the job links through `/proc/self/fd`, and once that worked,
/// every later link goes that way at once.
static LINK_BY_FD: AtomicBool = AtomicBool::new(true);

impl FileJob {
    pub(super) fn commit(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        failpoint("written");
        let files = self.open_files()?;
        self.stage = Stage::Committing(files);
        let Some(temp_file) = files.temp else {
            // Verify: every record verified and the file ends after the last; nothing to
            // make durable or to name.
            self.finish(ctx);
            return Ok(());
        };
        let temp = ctx
            .reactor
            .fd(temp_file)
            .map_err(|e| self.io_err("set permissions on", false, e))?;
        // On passed descriptors the caller owns the file: it sets the mode and time as it
        // links it.
        if !self.on_passed {
            if !self.mode_set {
                rustix::fs::fchmod(temp, Mode::from_raw_mode(self.in_mode))
                    .map_err(|e| self.io_err("set permissions on", false, e.into()))?;
            }
            let times = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: self.in_mtime.0,
                    tv_nsec: self.in_mtime.1,
                },
            };
            rustix::fs::futimens(temp, &times)
                .map_err(|e| self.io_err("set the modification time of", false, e.into()))?;
        }
        if ctx.durability == Durability::Fsync {
            self.push(ctx, Step::Fsync, Op::Fsync { fd: temp_file });
            Ok(())
        } else {
            self.link(ctx)
        }
    }

    pub(super) fn link(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        failpoint("fsynced");
        let files = self.open_files()?;
        let Some(dir) = files.dir else {
            // Passed descriptors: the caller links the output.
            self.finish(ctx);
            return Ok(());
        };
        let out_name = self.spec.output.file_name().unwrap_or_default().as_bytes();
        if let Some(temp_name) = self.temp_name {
            let flags = if self.spec.overwrite {
                0
            } else {
                libc::RENAME_NOREPLACE
            };
            let op = Op::RenameAt {
                dir,
                from: &temp_name.0,
                to: out_name,
                flags,
            };
            Self::push_op(
                &mut self.pending,
                self.slot,
                self.who,
                ctx,
                Step::Rename,
                op,
            );
            return Ok(());
        }
        let temp_name;
        let to = if self.spec.overwrite {
            // Link under a temp name, then rename over the target: replacing is atomic.
            temp_name = TempName::random()?;
            self.temp_name = Some(temp_name);
            &temp_name.0[..]
        } else {
            out_name
        };
        self.link_by_fd = !self.link_by_proc && LINK_BY_FD.load(Ordering::Relaxed);
        if self.link_by_fd && crate::failpoint::link_by_fd_refused() {
            let refused = Err(io::Error::from_raw_os_error(libc::ENOENT));
            return self.link_done(ctx, Step::Link, refused);
        }
        let op = Op::LinkFile {
            file: self.temp()?,
            to_dir: dir,
            to,
            by_fd: self.link_by_fd,
        };
        Self::push_op(&mut self.pending, self.slot, self.who, ctx, Step::Link, op);
        Ok(())
    }

    /// A link or rename completed. A link by descriptor that the kernel refused is made
    /// again through `/proc/self/fd` (see [`LINK_BY_FD`]).
    pub(super) fn link_done(
        &mut self,
        ctx: &mut JobCtx,
        step: Step,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        match result {
            Err(e)
                if step == Step::Link
                    && self.link_by_fd
                    && e.raw_os_error() == Some(libc::ENOENT) =>
            {
                self.link_by_proc = true;
                // Nothing was linked: an overwrite's temp name is drawn again.
                self.temp_name = None;
                self.link(ctx)
            }
            Err(e) => Err(self.link_err(e)),
            Ok(_) => {
                if step == Step::Link && self.link_by_proc {
                    LINK_BY_FD.store(false, Ordering::Relaxed);
                }
                self.linked(ctx, step)
            }
        }
    }

    pub(super) fn linked(&mut self, ctx: &mut JobCtx, step: Step) -> Result<(), Error> {
        failpoint("linked");
        if step == Step::Link && self.temp_name.is_some() {
            // Overwrite: the temp name now exists; rename it over the target.
            return self.link(ctx);
        }
        self.temp_name = None;
        match (ctx.durability, self.open_files()?.dir) {
            // The directory's fsync is shared with the other jobs that linked into it
            // meanwhile: the shard runs one for the batch and calls `dir_synced`.
            (Durability::Fsync, Some(dir)) => {
                let id = rustix::fs::fstat(
                    ctx.reactor
                        .fd(dir)
                        .map_err(|e| self.io_err("fsync the directory of", false, e))?,
                )
                .map_err(|e| self.io_err("fsync the directory of", false, e.into()))?;
                self.dir_sync = Some(DirSyncWanted {
                    dir,
                    id: (id.st_dev, id.st_ino),
                });
            }
            _ => self.finish(ctx),
        }
        Ok(())
    }

    /// The directory's fsync for the batch this job's link joined is done: `done` means on
    /// disk. A failed fsync is reported, but the output is complete and valid.
    pub fn dir_synced(&mut self, ctx: &mut JobCtx, result: std::io::Result<u32>) {
        if let Err(e) = result {
            let err = self.io_err("fsync the directory of", false, e);
            return self.fail(ctx, err);
        }
        self.finish(ctx);
    }

    /// The directory fsync this job waits for, for its shard to batch, once.
    pub fn take_dir_sync(&mut self) -> Option<DirSyncWanted> {
        self.dir_sync.take()
    }

    pub(super) fn finish(&mut self, ctx: &mut JobCtx) {
        failpoint("done");
        self.close_all(ctx);
    }
}
