//! One file job on its owner shard: a state machine driven by reactor completions.
//!
//! ```text
//! open input ▸ fstat ▸ open output dir ▸ create temp (O_TMPFILE) ▸ [read header]
//!   ▸ (read batch ▸ crypto ▸ write batch)*   two pool buffers, so the next batch's reads
//!                                            are in flight while this one is sealed
//!   ▸ [end-of-file probe] ▸ fchmod ▸ fsync ▸ link (or rename) into place ▸ fsync dir ▸ done
//! ```
//!
//! A file of a tree skips the directory's open: it opens its input's name in the input
//! directory the walk holds, and creates and links its output in the output directory the
//! walk holds (`held_dirs.rs`).
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
//! The job's stages ([`Stage`], each carrying the descriptors it holds as reactor
//! handles) and the steps that open and create are here; the check of an existing output
//! for `skip_existing` is in `existing.rs`; the byte stream (header, batches, crypto) in
//! `stream.rs`; the last steps (permissions, fsync, link, fsync of the directory) in
//! `commit.rs`; the pieces (lanes, codec, temp names, spans) in `parts.rs`; openssl-format
//! inputs in `legacy.rs`; the checks on passed descriptors in `passed.rs`; a job with a
//! stream end (a passed pipe, socket or device), run in order, in `pipe.rs`.
//!
//! What this room does not do: route, admit, or reply (the shard does), or touch sockets.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode};

use crate::crypto::format::{self, Header, Layout, Opener, Sealer};
use crate::crypto::keys::{KeyMaterial, KeyRing, TailCheck};
use crate::daemon::creds::ActAs;
use crate::daemon::metrics::ShardMetrics;
use crate::daemon::reactor::{BufId, Completion, File, Op, Reactor, Who};
use crate::daemon::roots::{RESOLVE_CONFINED, Roots};
use crate::daemon::token::{Step, Token};
use crate::daemon::tree_job::PROGRESS_EVERY;
use crate::durable::Durability;
use crate::error::{Code, Error};
use crate::failpoint::failpoint;
use crate::limits::{HEADER_BYTES, LANES, TAG_BYTES};
use crate::protocol::{FileJobSpec, FileOp, JobId, Progress};

mod commit;
mod direct;
mod existing;
mod legacy;
mod open;
mod parts;
mod passed;
mod pipe;
mod range;
mod stream;

pub use direct::{IoMode, direct_buf_bytes};
use parts::{Codec, Lane, LaneState, Spans, TempName};
pub use passed::Passed;
use range::{PartOf, Split};
pub use range::{RangeWork, SplitRequest};
use stream::resealer;

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
    /// The roots' directories as this shard's reactor holds them, in `roots` order.
    pub root_files: &'a [File],
    pub durability: Durability,
    /// Chunk size for newly sealed files.
    pub chunk_log2: u8,
    pub metrics: &'a ShardMetrics,
    /// This shard's index and the shard count, for range splitting.
    pub shard: usize,
    pub shards: usize,
    /// Files at least this many bytes are split into ranges (0: never).
    pub split_min: u64,
    /// `--io`: direct or buffered file IO (see `direct.rs`).
    pub io: IoMode,
    /// The process's umask, which the kernel applies to the modes of created files.
    pub umask: u32,
}

/// A linked output's directory, to fsync before the job is done: its handle, and its
/// identity (device, inode), by which the shard batches jobs that linked into the same one.
#[derive(Clone, Copy, Debug)]
pub struct DirSyncWanted {
    pub dir: File,
    pub id: (u64, u64),
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

/// The descriptors of a job that has its output open: handles of the shard's reactor, so
/// none can close under an op in flight (see `reactor::File`).
#[derive(Clone, Copy, Debug)]
struct OpenFiles {
    input: File,
    /// The output; None for `verify`, which writes nothing.
    temp: Option<File>,
    /// The output's directory; None on passed descriptors (the caller links the output).
    dir: Option<File>,
}

/// Where a job is, with the descriptors that stage holds. Each step's completion is taken
/// in the stage that issued it; a completion in any other stage is a bug, reported as an
/// `internal` error of that job rather than a crash of the shard.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Opening the input (or refused before it started).
    Opening,
    /// The input is open; opening the output's directory.
    OpeningDir {
        input: File,
    },
    /// Creating the output: an unnamed temp file in `dir`, or a named one (`temp_name`).
    Creating {
        input: File,
        dir: File,
    },
    /// `skip_existing`: reading the existing output's header and final record (`existing`,
    /// once it is open) to see whether it already is what this job would make.
    Checking {
        input: File,
        dir: File,
        existing: Option<File>,
    },
    /// The header and the batches.
    Streaming(OpenFiles),
    /// Past the last batch: end-of-file probe, permissions, fsync, link, fsync of the
    /// directory. A cancel no longer stops it.
    Committing(OpenFiles),
    Finished,
}

impl Stage {
    /// Every descriptor the stage holds.
    fn files(&self) -> [Option<File>; 3] {
        match *self {
            Stage::Opening | Stage::Finished => [None; 3],
            Stage::OpeningDir { input } => [Some(input), None, None],
            Stage::Creating { input, dir } => [Some(input), Some(dir), None],
            Stage::Checking {
                input,
                dir,
                existing,
            } => [Some(input), Some(dir), existing],
            Stage::Streaming(files) | Stage::Committing(files) => {
                [Some(files.input), files.temp, files.dir]
            }
        }
    }

    /// The output's directory, where a stage has it.
    fn dir(&self) -> Option<File> {
        match *self {
            Stage::Creating { dir, .. } | Stage::Checking { dir, .. } => Some(dir),
            Stage::Streaming(files) | Stage::Committing(files) => files.dir,
            _ => None,
        }
    }
}

/// A file job. See the module docs.
pub struct FileJob {
    pub id: JobId,
    pub spec: FileJobSpec,
    /// The job's slot in its shard's job table, named by its ops' tokens.
    slot: u32,
    stage: Stage,
    pending: u32,
    failure: Option<Error>,
    in_len: u64,
    in_mode: u32,
    /// The input's modification time (seconds, nanoseconds), given to the output.
    in_mtime: (i64, i64),
    /// Finished without work: the output existed and verified.
    skipped: bool,
    /// The output was created with the input's mode (an unnamed temp file the umask left
    /// whole): `commit` sets it no more.
    mode_set: bool,
    /// The descriptors the caller passed, until the job starts on them.
    passed: Option<Passed>,
    /// The job runs on passed descriptors: no paths are opened, and the caller, not the
    /// job, sets the output's mode and time and links it into place.
    on_passed: bool,
    temp_name: Option<TempName>,
    codec: Option<Codec>,
    /// `skip_existing`: the existing output's header, checked, waiting for its final record.
    check: Option<TailCheck>,
    /// `skip_existing`: the existing output's size.
    check_len: u64,
    lanes: [Lane; BUFFERS_PER_JOB],
    next_read: u64,
    next_process: u64,
    /// The batch after the last this job runs: the file's last, or its range's end.
    end_batch: u64,
    /// A file split into ranges: the ranges on other shards (see `range.rs`).
    split: Option<Box<Split>>,
    /// A job that runs one range of another shard's file.
    part_of: Option<PartOf>,
    /// A job with a stream end: its state (see `pipe.rs`).
    pipe: Option<Box<pipe::PipeRun>>,
    /// The passed output is a stream.
    stream_out: bool,
    /// The file runs with direct IO (see `direct.rs`).
    direct: Option<direct::Direct>,
    /// A file sealed in one batch: its header goes out with the batch, in one write.
    inline_header: bool,
    /// Linked, waiting for its directory's fsync, which the shard batches.
    dir_sync: Option<DirSyncWanted>,
    /// The link in flight names the file by its descriptor; the job links through
    /// `/proc/self/fd` (see `commit.rs`).
    link_by_fd: bool,
    link_by_proc: bool,
    /// Bytes read from the input and written to the output so far (progress and stats).
    pub bytes_in: u64,
    pub bytes_out: u64,
    started: Instant,
    /// When the last `progress` report was made (see [`FileJob::progress_due`]).
    last_progress: Option<Instant>,
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
        let stream_out = passed.as_ref().is_some_and(|p| p.output_stream);
        FileJob {
            id,
            spec,
            slot,
            stage: Stage::Opening,
            pending: 0,
            failure: None,
            in_len: 0,
            in_mode: 0o600,
            in_mtime: (0, 0),
            skipped: false,
            mode_set: false,
            on_passed: passed.is_some(),
            passed,
            temp_name: None,
            codec: None,
            check: None,
            check_len: 0,
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
            end_batch: 0,
            split: None,
            part_of: None,
            pipe: None,
            stream_out,
            direct: None,
            inline_header: false,
            dir_sync: None,
            link_by_fd: false,
            link_by_proc: false,
            bytes_in: 0,
            bytes_out: 0,
            started: Instant::now(),
            last_progress: None,
            who: None,
        }
    }

    /// The descriptors of the streaming and committing stages.
    fn open_files(&self) -> Result<OpenFiles, Error> {
        match self.stage {
            Stage::Streaming(files) | Stage::Committing(files) => Ok(files),
            _ => Err(self.out_of_order()),
        }
    }

    /// The output of the streaming and committing stages.
    fn temp(&self) -> Result<File, Error> {
        self.open_files()?.temp.ok_or_else(|| self.out_of_order())
    }

    fn out_of_order(&self) -> Error {
        Error::new(
            Code::Internal,
            format!(
                "{}: a step of the job completed out of order ({:?})",
                self.spec.input.display(),
                self.stage
            ),
        )
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
        matches!(self.stage, Stage::Finished)
    }

    /// Time since the job was created.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Bytes this job wrote, for the shard's counters: `bytes_out`, but for a verify, whose
    /// `bytes_out` counts the plaintext it checked and which writes nothing.
    pub fn bytes_written(&self) -> u64 {
        if self.spec.op.writes() {
            self.bytes_out
        } else {
            0
        }
    }

    /// A single file's `progress` report, if one is due: at most one per
    /// [`PROGRESS_EVERY`], the first once the input is open and its size known.
    pub fn progress_due(&mut self) -> Option<Progress> {
        // Until the input is open and its size known, there is nothing true to report.
        if !matches!(self.stage, Stage::Streaming(_) | Stage::Committing(_)) {
            return None;
        }
        if self
            .last_progress
            .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
        {
            return None;
        }
        self.last_progress = Some(Instant::now());
        let done = self.progress_in();
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        Some(Progress {
            job: self.id,
            files_done: 0,
            files_total: 1,
            bytes_done: done,
            bytes_total: self.in_len,
            rate_bytes_per_sec: (done as f64 / seconds) as u64,
            // A stream input has no size: bytes are counted without a total.
            totals_final: !self.pipe.as_ref().is_some_and(|run| run.in_stream()),
        })
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
                bytes_in: self.totals().0,
                bytes_out: self.totals().1,
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
        if self.part_of.is_some() {
            // A range of another shard's file: its descriptors and codec came with it.
            return self.pump(ctx);
        }
        if let Some(passed) = self.passed.take() {
            let input = ctx.reactor.adopt(passed.input);
            let temp = ctx.reactor.adopt(passed.output);
            if let Err(err) = self.opened_input(ctx, input, Some(temp)) {
                self.fail(ctx, err);
            }
            return;
        }
        let flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
        let (pending, slot, who) = (&mut self.pending, self.slot, self.who);
        let opened = match &self.spec.held_dirs {
            // A file of a tree: its name, in its directory as the walk holds it.
            Some(dirs) => {
                let input = &self.spec.input;
                Self::open_in_held(pending, slot, who, ctx, &dirs.input, input, flags);
                Ok(())
            }
            None => {
                let input = &self.spec.input;
                Self::open_in_root(pending, slot, who, ctx, input, flags, Step::OpenInput)
            }
        };
        if let Err(err) = opened {
            self.fail(ctx, err);
        }
    }

    /// Cancels the job unless it is already linking its output into place.
    pub fn cancel(&mut self, ctx: &mut JobCtx) {
        if !matches!(self.stage, Stage::Committing(_) | Stage::Finished) {
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
            self.abort_pipe(ctx);
        }
        self.drain_or_finish(ctx);
    }

    /// After a failure: once no op is in flight, remove a named temp file and finish.
    fn drain_or_finish(&mut self, ctx: &mut JobCtx) {
        if self.pending > 0 || self.ranges_out() {
            return;
        }
        if let (Some(dir), Some(name)) = (self.stage.dir(), self.temp_name.take()) {
            self.push(ctx, Step::Unlink, Op::UnlinkAt { dir, path: &name.0 });
            return;
        }
        self.close_all(ctx);
    }

    /// Closes every descriptor the job holds and finishes it.
    fn close_all(&mut self, ctx: &mut JobCtx) {
        let direct = self.direct.take();
        let direct = [direct.map(|d| d.input), direct.and_then(|d| d.out)];
        for file in self.stage.files().into_iter().chain(direct).flatten() {
            ctx.reactor.close(file);
        }
        self.check = None;
        self.stage = Stage::Finished;
    }

    /// Feeds one completion of this job's ops.
    pub fn on_complete(&mut self, ctx: &mut JobCtx, step: Step, mut done: Completion) {
        self.pending -= 1;
        if self.failure.is_some() {
            self.drain_or_finish(ctx);
            return;
        }
        let outcome = match step {
            Step::LaneRead(_) | Step::LaneWrite(_) if self.pipe.is_some() => {
                self.pipe_complete(ctx, step, done.result)
            }
            Step::OpenInput => done
                .opened()
                .map_err(|e| self.io_err("open", true, e))
                .and_then(|fd| {
                    let input = ctx.reactor.adopt(fd);
                    self.opened_input(ctx, input, None)
                }),
            Step::OpenDir => done
                .opened()
                .map_err(|e| self.io_err("open the directory of", false, e))
                .and_then(|fd| {
                    let dir = ctx.reactor.adopt(fd);
                    self.opened_dir(ctx, dir)
                }),
            Step::CreateTemp => {
                let temp = done.opened().map(|fd| ctx.reactor.adopt(fd));
                self.created_temp(ctx, temp)
            }
            Step::CreateNamed => done
                .opened()
                .map_err(|e| self.io_err("create a temp file for", false, e))
                .and_then(|fd| {
                    let temp = ctx.reactor.adopt(fd);
                    self.have_temp(ctx, temp)
                }),
            Step::CheckOpen => {
                let existing = done.opened().ok().map(|fd| ctx.reactor.adopt(fd));
                self.check_opened(ctx, existing)
            }
            Step::CheckHead => self.check_head(ctx, done.result),
            Step::CheckTail => self.check_tail(ctx, done.result),
            Step::HeaderRead => done
                .result
                .map_err(|e| self.io_err("read", true, e))
                .and_then(|n| {
                    ctx.metrics.read(u64::from(n));
                    // Copied out of the pool buffer, which the job's batches use next.
                    let n = (n as usize).min(HEADER_BYTES);
                    let mut head = [0u8; HEADER_BYTES];
                    head[..n].copy_from_slice(&ctx.reactor.buf_mut(self.lanes[0].buf)[..n]);
                    self.got_header(ctx, &head[..n])
                }),
            Step::HeaderWrite => self.wrote(done.result, HEADER_BYTES as u32).map(|()| {
                ctx.metrics.written(HEADER_BYTES as u64);
                self.pump(ctx)
            }),
            Step::EofProbe => match done.result {
                Ok(0) => self.commit(ctx),
                Ok(_) => Err(format::AuthFailed.into()),
                Err(e) => Err(self.io_err("read", true, e)),
            },
            Step::Fsync => done
                .result
                .map_err(|e| self.io_err("fsync", false, e))
                .and_then(|_| self.link(ctx)),
            Step::Link | Step::Rename => self.link_done(ctx, step, done.result),
            Step::Unlink => {
                self.drain_or_finish(ctx);
                Ok(())
            }
            Step::LaneRead(lane) => self.lane_read(ctx, usize::from(lane), done.result),
            Step::LaneWrite(lane) => self.lane_written(ctx, usize::from(lane), done.result),
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

    /// The input is open (`temp`: the passed output, on passed descriptors).
    fn opened_input(
        &mut self,
        ctx: &mut JobCtx,
        input: File,
        temp: Option<File>,
    ) -> Result<(), Error> {
        // The stage holds what is open from here on, so a failure closes it.
        self.stage = match temp {
            Some(temp) => Stage::Streaming(OpenFiles {
                input,
                temp: Some(temp),
                dir: None,
            }),
            // Verify reads its input and opens nothing else.
            None if !self.spec.op.writes() => Stage::Streaming(OpenFiles {
                input,
                temp: None,
                dir: None,
            }),
            None => Stage::OpeningDir { input },
        };
        failpoint("opened");
        let stat = rustix::fs::fstat(
            ctx.reactor
                .fd(input)
                .map_err(|e| self.io_err("stat", true, e))?,
        )
        .map_err(|e| self.io_err("stat", true, e.into()))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        let in_stream = self.on_passed && passed::is_stream(kind);
        match kind {
            FileType::RegularFile => {}
            // A passed pipe (or socket, or device): streamed in order, see `pipe.rs`.
            _ if in_stream => {}
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
        if let Some(temp) = temp {
            if in_stream || self.stream_out {
                self.in_len = if in_stream { 0 } else { self.in_len };
                return self.start_pipe(ctx, in_stream);
            }
            return self.have_temp(ctx, temp);
        }
        if !self.spec.op.writes() {
            return self.read_header(ctx, input);
        }
        if let Some(dirs) = &self.spec.held_dirs {
            // A file of a tree: the output's directory is the one the walk holds.
            let dir = ctx.reactor.adopt_shared(Arc::clone(&dirs.output));
            return self.opened_dir(ctx, dir);
        }
        let parent = self.spec.output.parent().unwrap_or(Path::new("/"));
        let flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        let (pending, slot, who) = (&mut self.pending, self.slot, self.who);
        Self::open_in_root(pending, slot, who, ctx, parent, flags, Step::OpenDir)
    }

    /// The output is open: start the stream. On passed descriptors the stage already holds
    /// both; otherwise it moves from creating to streaming with the directory.
    fn have_temp(&mut self, ctx: &mut JobCtx, temp: File) -> Result<(), Error> {
        let (input, dir) = match self.stage {
            Stage::Creating { input, dir } => (input, Some(dir)),
            Stage::Streaming(files) if files.temp == Some(temp) => (files.input, files.dir),
            _ => {
                ctx.reactor.close(temp);
                return Err(self.out_of_order());
            }
        };
        self.stage = Stage::Streaming(OpenFiles {
            input,
            temp: Some(temp),
            dir,
        });
        failpoint("temp_created");
        match self.spec.op {
            FileOp::Encrypt => {
                let sealer = self.sealer(ctx)?;
                self.start_sealing(ctx, sealer, self.in_len)
            }
            FileOp::Decrypt | FileOp::Rewrap | FileOp::Verify => self.read_header(ctx, input),
        }
    }

    /// Reads the input's header, into the first pool buffer: no batch has started yet.
    fn read_header(&mut self, ctx: &mut JobCtx, input: File) -> Result<(), Error> {
        let buf = self.lanes[0].buf;
        let op = Op::ReadFixed {
            fd: input,
            buf,
            at: 0,
            len: HEADER_BYTES,
            offset: 0,
        };
        self.push(ctx, Step::HeaderRead, op);
        Ok(())
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
