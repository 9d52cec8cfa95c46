//! One file job on its owner shard: a state machine driven by reactor completions.
//!
//! ```text
//! open input ▸ fstat ▸ open output dir ▸ create temp (O_TMPFILE) ▸ [read header]
//!   ▸ (read batch ▸ crypto ▸ write batch)*   two pool buffers, so the next batch's reads
//!                                            are in flight while this one is sealed
//!   ▸ [end-of-file probe] ▸ fchmod ▸ fsync ▸ link (or rename) into place ▸ fsync dir ▸ done
//! ```
//!
//! Every step is an op on the shard's reactor except `fstat`/`fchmod`/`statat`, which are
//! metadata calls on descriptors the job already holds. The crypto is the pure `format` code
//! run in place on the pool buffers: encryption reads each chunk straight into its record slot
//! and writes the batch in one op; decryption reads whole records and writes each chunk's
//! plaintext from where it was decrypted. Nothing is copied.
//!
//! On any failure or cancel the job stops issuing ops, waits for those in flight (their
//! buffers belong to the kernel until then), removes a named temp file if it made one, and
//! reports. An `O_TMPFILE` output simply vanishes when its fd closes. Nothing ever appears
//! under the output name before the link, which happens only after the last chunk verified.
//!
//! The job's steps that open, create, link and sync are here; the byte stream (header,
//! batches, crypto) is in `stream.rs`; its pieces (lanes, codec, temp names, spans) in
//! `parts.rs`; the checks on passed descriptors in `passed.rs`.
//!
//! What this room does not do: route, admit, or reply (the shard does), or touch sockets.

use std::ffi::OsStr;
use std::io;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode};

use crate::crypto::format::{self, Header, Layout, Opener, Sealer};
use crate::crypto::keys::{KeyMaterial, KeyRing};
use crate::daemon::creds::ActAs;
use crate::daemon::metrics::ShardMetrics;
use crate::daemon::reactor::{BufId, Completion, Op, Reactor, Who};
use crate::daemon::roots::{RESOLVE_CONFINED, Roots};
use crate::daemon::token::{Step, Token};
use crate::durable::Durability;
use crate::error::{Code, Error};
use crate::failpoint::failpoint;
use crate::limits::{HEADER_BYTES, LANES, TAG_BYTES};
use crate::protocol::{FileJobSpec, FileOp, JobId};

mod parts;
mod passed;
mod stream;

use parts::{Codec, Lane, LaneState, PROC_FD_PATH_BYTES, Spans, TempName};
pub use passed::Passed;

/// Pool buffers each running job holds: one being sealed, one being written, and two being
/// read ahead, so the crypto never waits for a read. Measured here (1 GiB on tmpfs,
/// `--fsync never`): two buffers 2.96 s, four 1.64-1.83 s; the offline client takes 1.8 s.
pub const BUFFERS_PER_JOB: usize = 4;

/// Bytes in one pool buffer: a batch of LANES records at the daemon's largest supported
/// chunk size for pool IO (2^16 + tag).
pub fn pool_buf_bytes(chunk_log2: u8) -> usize {
    LANES * ((1usize << chunk_log2) + TAG_BYTES)
}

/// What the shard must pass a job on every call.
pub struct JobCtx<'a> {
    pub reactor: &'a mut Reactor,
    pub ring: &'a KeyRing,
    pub roots: &'a Roots,
    pub durability: Durability,
    /// Chunk size for newly sealed files.
    pub chunk_log2: u8,
    pub metrics: &'a ShardMetrics,
}

/// How a job ended.
#[derive(Clone, Debug)]
pub struct JobOutcome {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub micros: u64,
    /// The output already existed and verified (`skip_existing`): nothing was done.
    pub skipped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Opening,
    Streaming,
    Committing,
    Finished,
}

/// A file job. See the module docs.
pub struct FileJob {
    pub id: JobId,
    pub spec: FileJobSpec,
    /// The job's slot in its shard's job table, named by its ops' tokens.
    slot: u32,
    phase: Phase,
    pending: u32,
    failure: Option<Error>,
    input: Option<OwnedFd>,
    in_len: u64,
    in_mode: u32,
    /// The input's modification time (seconds, nanoseconds), given to the output.
    in_mtime: (i64, i64),
    /// Finished without work: the output existed and verified.
    skipped: bool,
    out_dir: Option<OwnedFd>,
    /// The descriptors the caller passed, until the job starts on them.
    passed: Option<Passed>,
    /// The job runs on passed descriptors: no paths are opened, and the caller, not the
    /// job, sets the output's mode and time and links it into place.
    on_passed: bool,
    temp: Option<OwnedFd>,
    temp_name: Option<TempName>,
    codec: Option<Codec>,
    lanes: [Lane; BUFFERS_PER_JOB],
    next_read: u64,
    next_process: u64,
    /// Bytes read from the input and written to the output so far (progress and stats).
    pub bytes_in: u64,
    pub bytes_out: u64,
    started: Instant,
    /// The caller whose credentials the job's path ops run with (None: the daemon's).
    who: Option<Who>,
}

impl FileJob {
    /// A job that will use `bufs` (acquired by the shard on admission) and whose ops carry
    /// [`Token::Job`] with its job-table `slot`.
    pub fn new(
        id: JobId,
        spec: FileJobSpec,
        passed: Option<Passed>,
        slot: u32,
        bufs: [BufId; BUFFERS_PER_JOB],
    ) -> FileJob {
        FileJob {
            id,
            spec,
            slot,
            phase: Phase::Opening,
            pending: 0,
            failure: None,
            input: None,
            in_len: 0,
            in_mode: 0o600,
            in_mtime: (0, 0),
            skipped: false,
            out_dir: None,
            on_passed: passed.is_some(),
            passed,
            temp: None,
            temp_name: None,
            codec: None,
            lanes: bufs.map(|buf| Lane {
                buf,
                batch: 0,
                ops_left: 0,
                expected: 0,
                done: 0,
                state: LaneState::Idle,
            }),
            next_read: 0,
            next_process: 0,
            bytes_in: 0,
            bytes_out: 0,
            started: Instant::now(),
            who: None,
        }
    }

    /// Runs the job's path ops, and the calls it makes directly on paths, as `who`.
    pub fn run_as(&mut self, who: Who) {
        self.who = Some(who);
    }

    /// The identity the job holds, for the shard to release when it ends.
    pub fn who(&self) -> Option<Who> {
        self.who
    }

    /// Makes the job fail with `err` as soon as it starts, before it touches anything.
    pub fn refuse(&mut self, err: Error) {
        self.failure = Some(err);
    }

    /// The pool buffers, for the shard to release once the job is finished.
    pub fn buffers(&self) -> [BufId; BUFFERS_PER_JOB] {
        self.lanes.each_ref().map(|lane| lane.buf)
    }

    /// The output's file name in its directory (empty when the path has none).
    fn out_name(&self) -> &OsStr {
        self.spec.output.file_name().unwrap_or_default()
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Time since the job was created.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Bytes of input, for progress reports.
    pub fn input_len(&self) -> u64 {
        self.in_len
    }

    /// The result once finished.
    pub fn outcome(&self) -> Result<JobOutcome, Error> {
        match &self.failure {
            Some(err) => Err(err.clone()),
            None => Ok(JobOutcome {
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                micros: self.started.elapsed().as_micros() as u64,
                skipped: self.skipped,
            }),
        }
    }

    fn push(&mut self, ctx: &mut JobCtx, step: Step, op: Op) {
        Self::push_op(&mut self.pending, self.slot, self.who, ctx, step, op);
    }

    /// [`FileJob::push`] for ops that borrow a path from the job: the reactor copies it.
    fn push_op(
        pending: &mut u32,
        slot: u32,
        who: Option<Who>,
        ctx: &mut JobCtx,
        step: Step,
        op: Op,
    ) {
        *pending += 1;
        ctx.reactor
            .push_as(Token::Job { slot, step }.encode(), op, who);
    }

    /// Starts the job: opens the input (or takes the passed one).
    pub fn start(&mut self, ctx: &mut JobCtx) {
        if self.failure.is_some() {
            // Refused before it started (see [`FileJob::refuse`]).
            self.drain_or_finish(ctx);
            return;
        }
        if let Some(passed) = self.passed.take() {
            self.temp = Some(passed.output);
            if let Err(err) = self.opened_input(ctx, passed.input) {
                self.fail(ctx, err);
            }
            return;
        }
        let roots = ctx.roots;
        match roots.locate(&self.spec.input) {
            Ok((root, rel)) => {
                let root = root.as_raw_fd();
                let flags =
                    (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
                Self::push_op(
                    &mut self.pending,
                    self.slot,
                    self.who,
                    ctx,
                    Step::OpenInput,
                    Op::OpenAt2 {
                        dir: root,
                        path: rel.as_os_str().as_bytes(),
                        flags,
                        mode: 0,
                        resolve: RESOLVE_CONFINED,
                    },
                );
            }
            Err(err) => self.fail(ctx, err),
        }
    }

    /// Cancels the job unless it is already linking its output into place.
    pub fn cancel(&mut self, ctx: &mut JobCtx) {
        if self.phase != Phase::Committing && self.phase != Phase::Finished {
            self.fail(
                ctx,
                Error::new(
                    Code::Cancelled,
                    format!("{}: the job was cancelled", self.spec.input.display()),
                ),
            );
        }
    }

    fn fail(&mut self, ctx: &mut JobCtx, err: Error) {
        if self.failure.is_none() {
            self.failure = Some(err);
        }
        self.drain_or_finish(ctx);
    }

    /// After a failure: once no op is in flight, remove a named temp file and finish.
    fn drain_or_finish(&mut self, ctx: &mut JobCtx) {
        if self.pending > 0 {
            return;
        }
        if let (Some(dir), Some(name)) = (&self.out_dir, self.temp_name.take()) {
            let dir = dir.as_raw_fd();
            self.push(ctx, Step::Unlink, Op::UnlinkAt { dir, path: &name.0 });
            return;
        }
        self.input = None;
        self.temp = None;
        self.out_dir = None;
        self.phase = Phase::Finished;
    }

    /// Feeds one completion of this job's ops.
    pub fn on_complete(&mut self, ctx: &mut JobCtx, step: Step, mut done: Completion) {
        self.pending -= 1;
        if self.failure.is_some() {
            self.drain_or_finish(ctx);
            return;
        }
        let result = std::mem::replace(&mut done.result, Ok(0));
        let outcome = match step {
            Step::OpenInput => result
                .map_err(|e| self.io_err("open", true, e))
                .and_then(|_| self.opened_input(ctx, done.take_fd().expect("open yields an fd"))),
            Step::OpenDir => result
                .map_err(|e| self.io_err("open the directory of", false, e))
                .and_then(|_| self.opened_dir(ctx, done.take_fd().expect("open yields an fd"))),
            Step::CreateTemp => {
                let fd = done.take_fd();
                self.created_temp(ctx, result.map(|_| fd.expect("open yields an fd")))
            }
            Step::CreateNamed => result
                .map_err(|e| self.io_err("create a temp file for", false, e))
                .and_then(|_| self.have_temp(ctx, done.take_fd().expect("open yields an fd"))),
            Step::HeaderRead => result
                .map_err(|e| self.io_err("read", true, e))
                .and_then(|n| {
                    ctx.metrics.read(u64::from(n));
                    // Copied out of the pool buffer, which the job's batches use next.
                    let n = (n as usize).min(HEADER_BYTES);
                    let mut head = [0u8; HEADER_BYTES];
                    head[..n].copy_from_slice(&ctx.reactor.buf_mut(self.lanes[0].buf)[..n]);
                    self.got_header(ctx, &head[..n])
                }),
            Step::HeaderWrite => self.wrote(result, HEADER_BYTES as u32).map(|()| {
                ctx.metrics.written(HEADER_BYTES as u64);
                self.pump(ctx)
            }),
            Step::EofProbe => match result {
                Ok(0) => self.commit(ctx),
                Ok(_) => Err(format::AuthFailed.into()),
                Err(e) => Err(self.io_err("read", true, e)),
            },
            Step::Fsync => result
                .map_err(|e| self.io_err("fsync", false, e))
                .and_then(|_| self.link(ctx)),
            Step::Link | Step::Rename => result
                .map_err(|e| self.link_err(e))
                .and_then(|_| self.linked(ctx, step)),
            Step::FsyncDir => {
                // The output is in place; a failed directory fsync is reported, but the
                // file is complete and valid.
                result
                    .map_err(|e| self.io_err("fsync the directory of", false, e))
                    .map(|_| self.finish())
            }
            Step::Unlink => {
                self.drain_or_finish(ctx);
                Ok(())
            }
            Step::LaneRead(lane) => self.lane_read(ctx, usize::from(lane), result),
            Step::LaneWrite(lane) => self.lane_written(ctx, usize::from(lane), result),
        };
        if let Err(err) = outcome {
            self.fail(ctx, err);
        }
    }

    fn io_err(&self, op: &str, input: bool, err: io::Error) -> Error {
        let path = if input {
            &self.spec.input
        } else {
            &self.spec.output
        };
        let err = match err.raw_os_error() {
            // RESOLVE_BENEATH / NO_SYMLINKS refusals: the path leaves its root or crosses
            // a symlink.
            Some(libc::EXDEV) | Some(libc::ELOOP) => {
                return Error::new(
                    Code::ForbiddenPath,
                    format!(
                        "{}: refused: the path crosses a symbolic link or leaves its allowed root",
                        path.display()
                    ),
                );
            }
            _ => err,
        };
        Error::io(op, path, err)
    }

    fn link_err(&self, err: io::Error) -> Error {
        if err.raw_os_error() == Some(libc::EEXIST) {
            return Error::new(
                Code::Exists,
                format!(
                    "{} already exists; pass overwrite to replace it",
                    self.spec.output.display()
                ),
            );
        }
        self.io_err("link into place", false, err)
    }

    fn wrote(&self, result: io::Result<u32>, want: u32) -> Result<(), Error> {
        match result {
            Ok(n) if n == want => Ok(()),
            // A short write to a regular file means the disk filled up between blocks.
            Ok(_) => Err(Error::io(
                "write",
                &self.spec.output,
                io::Error::from_raw_os_error(libc::ENOSPC),
            )),
            Err(e) => Err(self.io_err("write", false, e)),
        }
    }

    fn opened_input(&mut self, ctx: &mut JobCtx, fd: OwnedFd) -> Result<(), Error> {
        failpoint("opened");
        let stat = rustix::fs::fstat(&fd).map_err(|e| self.io_err("stat", true, e.into()))?;
        self.input = Some(fd);
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => {
                return Err(Error::new(
                    Code::BadRequest,
                    format!(
                        "{} is a directory; use recursive for directory trees",
                        self.spec.input.display()
                    ),
                ));
            }
            _ => {
                return Err(Error::new(
                    Code::BadRequest,
                    format!("{} is not a regular file", self.spec.input.display()),
                ));
            }
        }
        self.in_len = stat.st_size as u64;
        self.in_mode = stat.st_mode & 0o777;
        self.in_mtime = (stat.st_mtime, stat.st_mtime_nsec as i64);
        if self.on_passed {
            let temp = self
                .temp
                .take()
                .expect("the passed output is kept until now");
            return self.have_temp(ctx, temp);
        }
        let parent = self.spec.output.parent().unwrap_or(Path::new("/"));
        let roots = ctx.roots;
        let (root, rel) = roots.locate(parent)?;
        let root = root.as_raw_fd();
        let flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        Self::push_op(
            &mut self.pending,
            self.slot,
            self.who,
            ctx,
            Step::OpenDir,
            Op::OpenAt2 {
                dir: root,
                path: rel.as_os_str().as_bytes(),
                flags,
                mode: 0,
                resolve: RESOLVE_CONFINED,
            },
        );
        Ok(())
    }

    fn opened_dir(&mut self, ctx: &mut JobCtx, dir: OwnedFd) -> Result<(), Error> {
        if self.out_name().is_empty() {
            return Err(Error::new(
                Code::BadRequest,
                format!("{} has no file name", self.spec.output.display()),
            ));
        }
        // Looked up, and read for `skip_existing`, with the caller's rights like every op.
        let caller = self.who.and_then(|who| ctx.reactor.caller(who));
        let existing = {
            let _acting = ActAs::maybe(caller).map_err(|e| self.io_err("check", false, e))?;
            rustix::fs::statat(&dir, self.out_name(), AtFlags::SYMLINK_NOFOLLOW)
        };
        match existing {
            Ok(stat) => {
                let input = self
                    .input
                    .as_ref()
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
                    let verified = {
                        let _acting =
                            ActAs::maybe(caller).map_err(|e| self.io_err("check", false, e))?;
                        verify_existing(&dir, self.out_name(), self.spec.op, ctx.ring)
                    };
                    if verified {
                        self.skipped = true;
                        self.finish();
                        return Ok(());
                    }
                    // It exists but does not verify (damaged, or another key): replace it.
                    self.spec.overwrite = true;
                } else if !self.spec.overwrite {
                    return Err(self.link_err(io::Error::from_raw_os_error(libc::EEXIST)));
                }
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(self.io_err("check", false, e.into())),
        }
        let dir_raw = dir.as_raw_fd();
        self.out_dir = Some(dir);
        if crate::failpoint::tmpfile_refused() {
            return self.created_temp(ctx, Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        }
        let flags = (libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) as u64;
        self.push(
            ctx,
            Step::CreateTemp,
            Op::OpenAt2 {
                dir: dir_raw,
                path: b".",
                flags,
                mode: 0o600,
                resolve: 0,
            },
        );
        Ok(())
    }

    fn created_temp(&mut self, ctx: &mut JobCtx, result: io::Result<OwnedFd>) -> Result<(), Error> {
        match result {
            Ok(fd) => self.have_temp(ctx, fd),
            // Filesystems without O_TMPFILE: a named temp file the next start cleans up.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                let name = TempName::random()?;
                self.temp_name = Some(name);
                let dir = self.out_dir.as_ref().expect("dir is open").as_raw_fd();
                let flags = (libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_RDWR
                    | libc::O_CLOEXEC
                    | libc::O_NOFOLLOW) as u64;
                self.push(
                    ctx,
                    Step::CreateNamed,
                    Op::OpenAt2 {
                        dir,
                        path: &name.0,
                        flags,
                        mode: 0o600,
                        resolve: 0,
                    },
                );
                Ok(())
            }
            Err(e) => Err(self.io_err("create a temp file for", false, e)),
        }
    }

    fn have_temp(&mut self, ctx: &mut JobCtx, fd: OwnedFd) -> Result<(), Error> {
        failpoint("temp_created");
        self.temp = Some(fd);
        match self.spec.op {
            FileOp::Encrypt => {
                let entry = ctx.ring.sealing_entry(self.spec.key.as_deref())?;
                let KeyMaterial::Secret(master) = &entry.material else {
                    return Err(Error::new(
                        Code::BadRequest,
                        format!(
                            "key {:?} is a passphrase; the daemon seals the ringcrypt format only",
                            entry.name
                        ),
                    ));
                };
                let sealer = Sealer::new(master.bytes(), ctx.chunk_log2, format::random_salt()?);
                self.start_sealing(ctx, sealer, self.in_len)
            }
            FileOp::Decrypt | FileOp::Rewrap => {
                // Into the first pool buffer: no batch has started yet.
                let fd = self.input.as_ref().expect("input is open").as_raw_fd();
                let buf = self.lanes[0].buf;
                self.push(
                    ctx,
                    Step::HeaderRead,
                    Op::ReadFixed {
                        fd,
                        buf,
                        at: 0,
                        len: HEADER_BYTES,
                        offset: 0,
                    },
                );
                Ok(())
            }
        }
    }

    fn commit(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        failpoint("written");
        self.phase = Phase::Committing;
        let temp = self.temp.as_ref().expect("temp is open");
        // On passed descriptors the caller owns the file: it sets the mode and time as it
        // links it.
        if !self.on_passed {
            rustix::fs::fchmod(temp, Mode::from_raw_mode(self.in_mode))
                .map_err(|e| self.io_err("set permissions on", false, e.into()))?;
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
            let fd = temp.as_raw_fd();
            self.push(ctx, Step::Fsync, Op::Fsync { fd });
            Ok(())
        } else {
            self.link(ctx)
        }
    }

    fn link(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        failpoint("fsynced");
        if self.on_passed {
            self.finish();
            return Ok(());
        }
        let dir = self.out_dir.as_ref().expect("dir is open").as_raw_fd();
        let out_name = self.spec.output.file_name().unwrap_or_default().as_bytes();
        if let Some(temp_name) = self.temp_name {
            let flags = if self.spec.overwrite {
                0
            } else {
                libc::RENAME_NOREPLACE
            };
            Self::push_op(
                &mut self.pending,
                self.slot,
                self.who,
                ctx,
                Step::Rename,
                Op::RenameAt {
                    dir,
                    from: &temp_name.0,
                    to: out_name,
                    flags,
                },
            );
            return Ok(());
        }
        let temp = self.temp.as_ref().expect("temp is open").as_raw_fd();
        let mut proc_path = [0u8; PROC_FD_PATH_BYTES];
        let proc_len = {
            let mut rest = &mut proc_path[..];
            write!(rest, "/proc/self/fd/{temp}").expect("a descriptor's path fits");
            PROC_FD_PATH_BYTES - rest.len()
        };
        let temp_name;
        let to = if self.spec.overwrite {
            // Link under a temp name, then rename over the target: replacing is atomic.
            temp_name = TempName::random()?;
            self.temp_name = Some(temp_name);
            &temp_name.0[..]
        } else {
            out_name
        };
        Self::push_op(
            &mut self.pending,
            self.slot,
            self.who,
            ctx,
            Step::Link,
            Op::LinkAt {
                from_dir: libc::AT_FDCWD,
                from: &proc_path[..proc_len],
                to_dir: dir,
                to,
                flags: libc::AT_SYMLINK_FOLLOW,
            },
        );
        Ok(())
    }

    fn linked(&mut self, ctx: &mut JobCtx, step: Step) -> Result<(), Error> {
        failpoint("linked");
        if step == Step::Link && self.temp_name.is_some() {
            // Overwrite: the temp name now exists; rename it over the target.
            return self.link(ctx);
        }
        self.temp_name = None;
        if ctx.durability == Durability::Fsync {
            let dir = self.out_dir.as_ref().expect("dir is open").as_raw_fd();
            self.push(ctx, Step::FsyncDir, Op::Fsync { fd: dir });
        } else {
            self.finish();
        }
        Ok(())
    }

    fn finish(&mut self) {
        failpoint("done");
        self.input = None;
        self.temp = None;
        self.out_dir = None;
        self.phase = Phase::Finished;
    }

    fn changed_size(&self) -> Error {
        Error::new(
            Code::IoError,
            format!(
                "{} changed size while it was being read; nothing was written",
                self.spec.input.display()
            ),
        )
    }
}

/// True when an existing output is already what this job would make, for `skip_existing`:
/// a ringcrypt output's header parses, names a key of the ring (for rewrap: the default key),
/// and its header tag and final chunk's tag verify; a decrypt output is a regular file.
/// Earlier chunks are not read: an interrupted job never leaves a partial output (outputs are
/// linked only when complete), so this catches foreign or damaged files, not torn ones.
fn verify_existing(dir: &OwnedFd, name: &OsStr, op: FileOp, ring: &KeyRing) -> bool {
    use rustix::fs::OFlags;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else {
        return false;
    };
    let file = std::fs::File::from(fd);
    if !file.metadata().is_ok_and(|meta| meta.is_file()) {
        return false;
    }
    match op {
        FileOp::Decrypt => true,
        FileOp::Encrypt => verify_tail(&file, ring).is_ok(),
        // A rewrap is done only when the output is under the current default key.
        FileOp::Rewrap => verify_tail(&file, ring).is_ok_and(|id| ring.is_default_key(&id)),
    }
}

/// [`KeyRing::verify_tail`] of an open file.
fn verify_tail(file: &std::fs::File, ring: &KeyRing) -> Result<format::KeyId, Error> {
    use std::os::unix::fs::FileExt;
    let len = file
        .metadata()
        .map_err(|e| Error::new(Code::from_io(&e), e.to_string()))?
        .len();
    ring.verify_tail(len, |buf, offset| file.read_exact_at(buf, offset))
}
