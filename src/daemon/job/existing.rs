//! `skip_existing`: whether an output already there is what this job would make, read
//! through the reactor like every other op (never a blocking call on the shard thread).
//!
//! A ringcrypt output is kept when its header parses, names a key of the ring (for a
//! rewrap: the default key), and the header tag and the final record's tag verify; a
//! decrypt output is kept when it is a regular file. Earlier records are not read: an
//! interrupted job never leaves a partial output (outputs are linked only when complete), so
//! this catches foreign or damaged files, not torn ones. An output that is not kept is
//! replaced, atomically, as with `overwrite`.
//!
//! What this room does not do: decide what happens next (the job's steps in `mod.rs` do).

use super::*;

impl FileJob {
    /// The output exists: open it (without following a link) to check it.
    pub(super) fn check_existing(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        let Stage::Creating { input, dir } = self.stage else {
            return Err(self.out_of_order());
        };
        self.stage = Stage::Checking {
            input,
            dir,
            existing: None,
        };
        let flags = (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let name = self.spec.output.file_name().unwrap_or_default().as_bytes();
        let op = Op::OpenAt2 {
            dir,
            path: name,
            flags,
            mode: 0,
            resolve: 0,
        };
        Self::push_op(
            &mut self.pending,
            self.slot,
            self.who,
            ctx,
            Step::CheckOpen,
            op,
        );
        Ok(())
    }

    /// The existing output opened (None: it could not be, so it is replaced).
    pub(super) fn check_opened(
        &mut self,
        ctx: &mut JobCtx,
        existing: Option<File>,
    ) -> Result<(), Error> {
        let Stage::Checking { input, dir, .. } = self.stage else {
            if let Some(file) = existing {
                ctx.reactor.close(file);
            }
            return Err(self.out_of_order());
        };
        self.stage = Stage::Checking {
            input,
            dir,
            existing,
        };
        let Some(file) = existing else {
            return self.replace_existing(ctx);
        };
        let stat = ctx
            .reactor
            .fd(file)
            .ok()
            .and_then(|fd| rustix::fs::fstat(fd).ok());
        let Some(stat) = stat.filter(|st| FileType::from_raw_mode(st.st_mode).is_file()) else {
            return self.replace_existing(ctx);
        };
        if self.spec.op == FileOp::Decrypt {
            return self.keep_existing(ctx);
        }
        self.check_len = stat.st_size as u64;
        let op = Op::ReadFixed {
            fd: file,
            buf: self.lanes[0].buf,
            at: 0,
            len: HEADER_BYTES,
            offset: 0,
        };
        self.push(ctx, Step::CheckHead, op);
        Ok(())
    }

    /// The existing output's first bytes: check its header, then read its final record.
    pub(super) fn check_head(
        &mut self,
        ctx: &mut JobCtx,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        let Stage::Checking {
            existing: Some(file),
            ..
        } = self.stage
        else {
            return Err(self.out_of_order());
        };
        let Ok(n) = result else {
            return self.replace_existing(ctx);
        };
        let head = &ctx.reactor.buf_mut(self.lanes[0].buf)[..n as usize];
        let check = match ctx.ring.tail_check(head, self.check_len) {
            Ok(check) if check.final_len <= ctx.reactor.buf_bytes() => check,
            _ => return self.replace_existing(ctx),
        };
        let op = Op::ReadFixed {
            fd: file,
            buf: self.lanes[0].buf,
            at: 0,
            len: check.final_len,
            offset: check.final_offset,
        };
        self.check = Some(check);
        self.push(ctx, Step::CheckTail, op);
        Ok(())
    }

    /// The existing output's final record: keep the output if its tag verifies (under the
    /// default key, for a rewrap), replace it otherwise.
    pub(super) fn check_tail(
        &mut self,
        ctx: &mut JobCtx,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        let Some(check) = self.check.take() else {
            return Err(self.out_of_order());
        };
        let want = check.final_len;
        if result.ok() != Some(want as u32) {
            return self.replace_existing(ctx);
        }
        let last = &mut ctx.reactor.buf_mut(self.lanes[0].buf)[..want];
        match check.verify(last) {
            Ok(id) if self.spec.op == FileOp::Encrypt || ctx.ring.is_default_key(&id) => {
                self.keep_existing(ctx)
            }
            _ => self.replace_existing(ctx),
        }
    }

    /// The output already is what this job would make: nothing to do.
    fn keep_existing(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        self.skipped = true;
        self.finish(ctx);
        Ok(())
    }

    /// The output exists but is not this job's (damaged, foreign, another key): make the
    /// output anew and replace it atomically.
    fn replace_existing(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        let Stage::Checking {
            input,
            dir,
            existing,
        } = self.stage
        else {
            return Err(self.out_of_order());
        };
        if let Some(file) = existing {
            ctx.reactor.close(file);
        }
        self.check = None;
        self.stage = Stage::Creating { input, dir };
        self.spec.overwrite = true;
        self.create_temp(ctx)
    }
}
