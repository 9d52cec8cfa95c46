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
//! What this room does not do: route, admit, or reply (the shard does), or touch sockets.

use std::ffi::OsStr;
use std::io;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode};

use crate::creds::ActAs;
use crate::error::{Code, Error};
use crate::format::{self, Header, Layout, Opener, Sealer};
use crate::keys::{KeyMaterial, KeyRing};
use crate::limits::{HEADER_BYTES, LANES, TAG_BYTES};
use crate::metrics::ShardMetrics;
use crate::output::{Durability, TEMP_PREFIX};
use crate::protocol::{FileJobSpec, FileOp, JobId};
use crate::reactor::{BufId, Completion, Op, Reactor, Who};
use crate::roots::{RESOLVE_CONFINED, Roots};

/// Pool buffers each running job holds: one being sealed, one being written, and two being
/// read ahead, so the crypto never waits for a read. Measured here (1 GiB on tmpfs,
/// `--fsync never`): two buffers 2.96 s, four 1.64-1.83 s; the offline client takes 1.8 s.
pub const BUFFERS_PER_JOB: usize = 4;

/// Bytes in one pool buffer: a batch of LANES records at the daemon's largest supported
/// chunk size for pool IO (2^16 + tag).
pub fn pool_buf_bytes(chunk_log2: u8) -> usize {
    LANES * ((1usize << chunk_log2) + TAG_BYTES)
}

// Op tags: the low byte of a job op's token.
const TAG_OPEN_INPUT: u64 = 1;
const TAG_OPEN_DIR: u64 = 2;
const TAG_CREATE_TEMP: u64 = 3;
const TAG_CREATE_NAMED: u64 = 4;
const TAG_HEADER_READ: u64 = 5;
const TAG_HEADER_WRITE: u64 = 6;
const TAG_EOF_PROBE: u64 = 7;
const TAG_FSYNC: u64 = 8;
const TAG_LINK: u64 = 9;
const TAG_RENAME: u64 = 10;
const TAG_FSYNC_DIR: u64 = 11;
const TAG_UNLINK: u64 = 12;
const TAG_LANE_READ: u64 = 16;
const TAG_LANE_WRITE: u64 = 32;

/// The two descriptors a request with `"fds": true` passed: the input, open for reading,
/// and an unnamed temp file the caller made in the output's directory, open for writing.
/// The kernel checked the caller's permissions when the caller opened them; the daemon
/// only reads the one and writes the other, and the caller links the output into place.
pub struct Passed {
    input: OwnedFd,
    output: OwnedFd,
}

impl Passed {
    /// Checks that the descriptors are what the request promises, so the daemon never
    /// writes into a file that has a name (it could be anyone's) or reads through a
    /// descriptor that was not opened for reading.
    pub fn check(input: OwnedFd, output: OwnedFd, spec: &FileJobSpec) -> Result<Passed, Error> {
        use rustix::fs::OFlags;
        let bad = |message: String| Error::new(Code::BadRequest, message);
        let io = |what: &str, path: &Path, e: rustix::io::Errno| {
            Error::new(
                Code::IoError,
                format!(
                    "cannot {what} the descriptor passed for {}: {}",
                    path.display(),
                    io::Error::from(e)
                ),
            )
        };
        let in_flags =
            rustix::fs::fcntl_getfl(&input).map_err(|e| io("inspect", &spec.input, e))?;
        if in_flags.contains(OFlags::PATH)
            || in_flags.intersection(OFlags::RWMODE) == OFlags::WRONLY
        {
            return Err(bad(format!(
                "the descriptor passed for {} is not open for reading",
                spec.input.display()
            )));
        }
        let out_flags =
            rustix::fs::fcntl_getfl(&output).map_err(|e| io("inspect", &spec.output, e))?;
        let out_mode = out_flags.intersection(OFlags::RWMODE);
        if out_flags.contains(OFlags::PATH)
            || (out_mode != OFlags::WRONLY && out_mode != OFlags::RDWR)
            || out_flags.contains(OFlags::APPEND)
        {
            return Err(bad(format!(
                "the descriptor passed for {} is not open for writing (without O_APPEND)",
                spec.output.display()
            )));
        }
        let out_stat = rustix::fs::fstat(&output).map_err(|e| io("stat", &spec.output, e))?;
        if FileType::from_raw_mode(out_stat.st_mode) != FileType::RegularFile
            || out_stat.st_nlink != 0
            || out_stat.st_size != 0
        {
            return Err(bad(format!(
                "the descriptor passed for {} must be a new, empty, unnamed temp file \
                 (open(dir, O_TMPFILE | O_WRONLY)); the daemon never writes into a file that \
                 has a name",
                spec.output.display()
            )));
        }
        let in_stat = rustix::fs::fstat(&input).map_err(|e| io("stat", &spec.input, e))?;
        if in_stat.st_dev == out_stat.st_dev && in_stat.st_ino == out_stat.st_ino {
            return Err(bad(format!(
                "the descriptors passed for {} and {} are the same file",
                spec.input.display(),
                spec.output.display()
            )));
        }
        Ok(Passed { input, output })
    }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaneState {
    Idle,
    Reading,
    Ready,
    Writing,
}

struct Lane {
    buf: BufId,
    batch: u64,
    ops_left: u32,
    /// Bytes the lane's current reads or writes must move, and have moved.
    expected: usize,
    done: usize,
    state: LaneState,
}

/// The crypto of a job, chosen once the header is known. The keys live inline, in the job's
/// slot, so starting a job allocates nothing for them; the variants differ in size by a key
/// schedule, which the job slot holds either way.
#[allow(clippy::large_enum_variant)]
enum Codec {
    /// encrypt: plaintext chunks into records.
    Seal {
        sealer: Sealer,
        n_full: u64,
        final_len: usize,
    },
    /// decrypt: records into plaintext chunks.
    Open {
        opener: Opener,
        full_records: u64,
        final_record: usize,
    },
    /// rewrap: records opened and resealed in place (same chunk size, same layout).
    Reseal {
        opener: Opener,
        sealer: Sealer,
        full_records: u64,
        final_record: usize,
    },
}

impl Codec {
    fn chunk_bytes(&self) -> usize {
        match self {
            Codec::Seal { sealer, .. } => sealer.header().chunk_bytes(),
            Codec::Open { opener, .. } | Codec::Reseal { opener, .. } => {
                opener.header().chunk_bytes()
            }
        }
    }

    fn stride(&self) -> usize {
        self.chunk_bytes() + TAG_BYTES
    }

    /// Units (chunks or records) in the file, counting the final one.
    fn units(&self) -> u64 {
        match self {
            Codec::Seal { n_full, .. } => n_full + 1,
            Codec::Open { full_records, .. } | Codec::Reseal { full_records, .. } => {
                full_records + 1
            }
        }
    }

    fn batches(&self) -> u64 {
        self.units().div_ceil(LANES as u64)
    }

    /// (first unit, units) of batch `b`.
    fn span(&self, batch: u64) -> (u64, usize) {
        let first = batch * LANES as u64;
        (first, (self.units() - first).min(LANES as u64) as usize)
    }
}

/// Bytes of a temp file's name: the prefix and 16 hex digits (8 random bytes).
const TEMP_NAME_BYTES: usize = TEMP_PREFIX.len() + 16;

/// A temp file's name, `.ringcrypt-tmp-<16 hex digits>`, held inline.
#[derive(Clone, Copy)]
struct TempName([u8; TEMP_NAME_BYTES]);

impl TempName {
    /// A fresh random name.
    fn random() -> Result<TempName, Error> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| Error::new(Code::Internal, e.to_string()))?;
        let mut name = [0u8; TEMP_NAME_BYTES];
        let (prefix, hex) = name.split_at_mut(TEMP_PREFIX.len());
        prefix.copy_from_slice(TEMP_PREFIX.as_bytes());
        for (pair, byte) in hex.chunks_exact_mut(2).zip(random) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        Ok(TempName(name))
    }
}

/// Longest `/proc/self/fd/<fd>` path: the prefix and the 10 digits of the largest `int`.
const PROC_FD_PATH_BYTES: usize = "/proc/self/fd/".len() + 10;

/// Up to [`LANES`] spans of a pool buffer with their file offsets, `(at, len, offset)`: the
/// reads or writes of one batch, kept inline.
struct Spans {
    items: [(usize, usize, u64); LANES],
    len: usize,
}

impl Spans {
    fn new() -> Spans {
        Spans {
            items: [(0, 0, 0); LANES],
            len: 0,
        }
    }

    fn push(&mut self, span: (usize, usize, u64)) {
        // A batch is at most LANES units, and each unit is at most one span.
        assert!(self.len < LANES, "more than LANES spans in a batch");
        self.items[self.len] = span;
        self.len += 1;
    }

    fn as_slice(&self) -> &[(usize, usize, u64)] {
        &self.items[..self.len]
    }
}

/// A file job. See the module docs.
pub struct FileJob {
    pub id: JobId,
    pub spec: FileJobSpec,
    token_base: u64,
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
    /// A job that will use `bufs` (acquired by the shard on admission) and whose op tokens
    /// are `token_base | tag`.
    pub fn new(
        id: JobId,
        spec: FileJobSpec,
        passed: Option<Passed>,
        token_base: u64,
        bufs: [BufId; BUFFERS_PER_JOB],
    ) -> FileJob {
        FileJob {
            id,
            spec,
            token_base,
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

    fn push(&mut self, ctx: &mut JobCtx, tag: u64, op: Op) {
        Self::push_op(&mut self.pending, self.token_base, self.who, ctx, tag, op);
    }

    /// [`FileJob::push`] for ops that borrow a path from the job: the reactor copies it.
    fn push_op(
        pending: &mut u32,
        token_base: u64,
        who: Option<Who>,
        ctx: &mut JobCtx,
        tag: u64,
        op: Op,
    ) {
        *pending += 1;
        ctx.reactor.push_as(token_base | tag, op, who);
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
                    self.token_base,
                    self.who,
                    ctx,
                    TAG_OPEN_INPUT,
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
            self.push(ctx, TAG_UNLINK, Op::UnlinkAt { dir, path: &name.0 });
            return;
        }
        self.input = None;
        self.temp = None;
        self.out_dir = None;
        self.phase = Phase::Finished;
    }

    /// Feeds one completion of this job's ops.
    pub fn on_complete(&mut self, ctx: &mut JobCtx, tag: u64, mut done: Completion) {
        self.pending -= 1;
        if self.failure.is_some() {
            self.drain_or_finish(ctx);
            return;
        }
        let result = std::mem::replace(&mut done.result, Ok(0));
        let step = match tag {
            TAG_OPEN_INPUT => result
                .map_err(|e| self.io_err("open", true, e))
                .and_then(|_| self.opened_input(ctx, done.take_fd().expect("open yields an fd"))),
            TAG_OPEN_DIR => result
                .map_err(|e| self.io_err("open the directory of", false, e))
                .and_then(|_| self.opened_dir(ctx, done.take_fd().expect("open yields an fd"))),
            TAG_CREATE_TEMP => {
                let fd = done.take_fd();
                self.created_temp(ctx, result.map(|_| fd.expect("open yields an fd")))
            }
            TAG_CREATE_NAMED => result
                .map_err(|e| self.io_err("create a temp file for", false, e))
                .and_then(|_| self.have_temp(ctx, done.take_fd().expect("open yields an fd"))),
            TAG_HEADER_READ => result
                .map_err(|e| self.io_err("read", true, e))
                .and_then(|n| {
                    ctx.metrics.read(u64::from(n));
                    // Copied out of the pool buffer, which the job's batches use next.
                    let n = (n as usize).min(HEADER_BYTES);
                    let mut head = [0u8; HEADER_BYTES];
                    head[..n].copy_from_slice(&ctx.reactor.buf_mut(self.lanes[0].buf)[..n]);
                    self.got_header(ctx, &head[..n])
                }),
            TAG_HEADER_WRITE => self.wrote(result, HEADER_BYTES as u32).map(|()| {
                ctx.metrics.written(HEADER_BYTES as u64);
                self.pump(ctx)
            }),
            TAG_EOF_PROBE => match result {
                Ok(0) => self.commit(ctx),
                Ok(_) => Err(format::AuthFailed.into()),
                Err(e) => Err(self.io_err("read", true, e)),
            },
            TAG_FSYNC => result
                .map_err(|e| self.io_err("fsync", false, e))
                .and_then(|_| self.link(ctx)),
            TAG_LINK | TAG_RENAME => result
                .map_err(|e| self.link_err(e))
                .and_then(|_| self.linked(ctx, tag)),
            TAG_FSYNC_DIR => {
                // The output is in place; a failed directory fsync is reported, but the
                // file is complete and valid.
                result
                    .map_err(|e| self.io_err("fsync the directory of", false, e))
                    .map(|_| self.finish())
            }
            TAG_UNLINK => {
                self.drain_or_finish(ctx);
                Ok(())
            }
            t if (TAG_LANE_READ..TAG_LANE_WRITE).contains(&t) => {
                self.lane_read(ctx, (t - TAG_LANE_READ) as usize, result)
            }
            t if (TAG_LANE_WRITE..TAG_LANE_WRITE + 16).contains(&t) => {
                self.lane_written(ctx, (t - TAG_LANE_WRITE) as usize, result)
            }
            other => Err(Error::new(
                Code::Internal,
                format!("unknown op tag {other}"),
            )),
        };
        if let Err(err) = step {
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
            self.token_base,
            self.who,
            ctx,
            TAG_OPEN_DIR,
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
        if crate::output::tmpfile_refused() {
            return self.created_temp(ctx, Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        }
        let flags = (libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) as u64;
        self.push(
            ctx,
            TAG_CREATE_TEMP,
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
                    TAG_CREATE_NAMED,
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
                    TAG_HEADER_READ,
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

    fn start_sealing(
        &mut self,
        ctx: &mut JobCtx,
        sealer: Sealer,
        plain_len: u64,
    ) -> Result<(), Error> {
        let chunk_log2 = sealer.header().chunk_log2;
        self.check_fits(ctx, chunk_log2)?;
        let header = sealer.header().to_bytes();
        self.codec = Some(Codec::Seal {
            sealer,
            n_full: plain_len >> chunk_log2,
            final_len: (plain_len & ((1 << chunk_log2) - 1)) as usize,
        });
        self.write_header(ctx, &header);
        Ok(())
    }

    /// Writes the header from the first pool buffer: no batch starts before it is written.
    fn write_header(&mut self, ctx: &mut JobCtx, header: &[u8; HEADER_BYTES]) {
        self.phase = Phase::Streaming;
        let fd = self.temp.as_ref().expect("temp is open").as_raw_fd();
        let buf = self.lanes[0].buf;
        ctx.reactor.buf_mut(buf)[..HEADER_BYTES].copy_from_slice(header);
        self.bytes_out += HEADER_BYTES as u64;
        self.push(
            ctx,
            TAG_HEADER_WRITE,
            Op::WriteFixed {
                fd,
                buf,
                at: 0,
                len: HEADER_BYTES,
                offset: 0,
            },
        );
    }

    fn check_fits(&self, ctx: &JobCtx, chunk_log2: u8) -> Result<(), Error> {
        if pool_buf_bytes(chunk_log2) > ctx.reactor.buf_bytes() {
            return Err(Error::new(
                Code::BadFormat,
                format!(
                    "{}: chunks of 2^{chunk_log2} bytes are larger than this daemon's buffers; \
                     decrypt it offline with `ringcrypt --keys FILE decrypt`",
                    self.spec.input.display()
                ),
            ));
        }
        Ok(())
    }

    fn got_header(&mut self, ctx: &mut JobCtx, head: &[u8]) -> Result<(), Error> {
        let in_file = |e: Error| e.context(self.spec.input.display());
        if head.starts_with(crate::openssl::MAGIC) {
            return Err(in_file(Error::new(
                Code::BadFormat,
                "openssl-format files are decrypted by the client's offline mode (`ringcrypt --keys FILE`), not by the daemon",
            )));
        }
        let header = Header::parse(head).map_err(in_file)?;
        let master = ctx.ring.opening_key(&header.key_id).map_err(in_file)?;
        let opener = Opener::new(&header, master.bytes()).map_err(|e| in_file(e.into()))?;
        let layout =
            Layout::for_file(self.in_len, header.chunk_log2).map_err(|e| in_file(e.into()))?;
        self.check_fits(ctx, header.chunk_log2)?;
        self.bytes_in += HEADER_BYTES as u64;
        match self.spec.op {
            FileOp::Decrypt => {
                self.codec = Some(Codec::Open {
                    opener,
                    full_records: layout.full_records,
                    final_record: layout.final_record_bytes,
                });
                self.phase = Phase::Streaming;
                self.pump(ctx);
            }
            FileOp::Rewrap => {
                let entry = ctx.ring.sealing_entry(None)?;
                let KeyMaterial::Secret(new_master) = &entry.material else {
                    return Err(Error::new(
                        Code::Internal,
                        "the default key is not a ringcrypt key",
                    ));
                };
                let sealer = Sealer::new(
                    new_master.bytes(),
                    header.chunk_log2,
                    format::random_salt()?,
                );
                let new_header = sealer.header().to_bytes();
                self.codec = Some(Codec::Reseal {
                    opener,
                    sealer,
                    full_records: layout.full_records,
                    final_record: layout.final_record_bytes,
                });
                self.write_header(ctx, &new_header);
            }
            FileOp::Encrypt => unreachable!("encrypt does not read a header"),
        }
        Ok(())
    }

    /// Issues reads for idle lanes and processes ready batches in order.
    fn pump(&mut self, ctx: &mut JobCtx) {
        let Some(codec) = &self.codec else { return };
        let batches = codec.batches();
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].state == LaneState::Idle && self.next_read < batches {
                let batch = self.next_read;
                self.next_read += 1;
                self.issue_reads(ctx, lane, batch);
            }
        }
        if let Err(err) = self.process_ready(ctx) {
            self.fail(ctx, err);
            return;
        }
        let all_idle = self.lanes.iter().all(|lane| lane.state == LaneState::Idle);
        if self.next_process == batches && all_idle && self.phase == Phase::Streaming {
            self.end_of_stream(ctx);
        }
    }

    fn issue_reads(&mut self, ctx: &mut JobCtx, lane: usize, batch: u64) {
        let codec = self.codec.as_ref().expect("codec set");
        let (first, units) = codec.span(batch);
        let stride = codec.stride();
        let chunk = codec.chunk_bytes() as u64;
        let fd = self.input.as_ref().expect("input is open").as_raw_fd();
        let buf = self.lanes[lane].buf;
        let mut reads = Spans::new();
        match codec {
            Codec::Seal {
                n_full, final_len, ..
            } => {
                for slot in 0..units {
                    let index = first + slot as u64;
                    let len = if index < *n_full {
                        chunk as usize
                    } else {
                        *final_len
                    };
                    if len > 0 {
                        reads.push((slot * stride, len, index * chunk));
                    }
                }
            }
            Codec::Open {
                full_records,
                final_record,
                ..
            }
            | Codec::Reseal {
                full_records,
                final_record,
                ..
            } => {
                let last = first + units as u64 - 1;
                let len = (units - 1) * stride
                    + if last == *full_records {
                        *final_record
                    } else {
                        stride
                    };
                reads.push((0, len, HEADER_BYTES as u64 + first * stride as u64));
            }
        }
        let tag = TAG_LANE_READ + lane as u64;
        self.lanes[lane] = Lane {
            buf,
            batch,
            ops_left: reads.len as u32,
            expected: 0,
            done: 0,
            state: LaneState::Reading,
        };
        if reads.len == 0 {
            self.lanes[lane].state = LaneState::Ready;
        }
        self.lanes[lane].expected = reads.as_slice().iter().map(|r| r.1).sum();
        // The reads of one batch fill disjoint spans of the lane's buffer.
        for &(at, len, offset) in reads.as_slice() {
            self.push(
                ctx,
                tag,
                Op::ReadFixed {
                    fd,
                    buf,
                    at,
                    len,
                    offset,
                },
            );
        }
    }

    fn lane_read(
        &mut self,
        ctx: &mut JobCtx,
        lane: usize,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        let n = result.map_err(|e| self.io_err("read", true, e))?;
        self.bytes_in += u64::from(n);
        ctx.metrics.read(u64::from(n));
        let state = &mut self.lanes[lane];
        state.ops_left -= 1;
        state.done += n as usize;
        if state.ops_left == 0 {
            if state.done != state.expected {
                return Err(self.changed_size());
            }
            state.state = LaneState::Ready;
        }
        self.pump(ctx);
        Ok(())
    }

    /// Runs the crypto of every ready lane whose batch is next, then submits its writes.
    fn process_ready(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        loop {
            let Some(lane) = self
                .lanes
                .iter()
                .position(|l| l.state == LaneState::Ready && l.batch == self.next_process)
            else {
                return Ok(());
            };
            let batch = self.next_process;
            self.next_process += 1;
            let started = Instant::now();
            let writes = self.crypto(ctx, lane, batch)?;
            ctx.metrics.crypto(started.elapsed());
            let fd = self.temp.as_ref().expect("temp is open").as_raw_fd();
            let buf = self.lanes[lane].buf;
            self.lanes[lane].state = LaneState::Writing;
            self.lanes[lane].ops_left = writes.len as u32;
            if writes.len == 0 {
                self.lanes[lane].state = LaneState::Idle;
            }
            self.lanes[lane].expected = writes.as_slice().iter().map(|w| w.1).sum();
            self.lanes[lane].done = 0;
            for &(at, len, offset) in writes.as_slice() {
                self.bytes_out += len as u64;
                self.push(
                    ctx,
                    TAG_LANE_WRITE + lane as u64,
                    Op::WriteFixed {
                        fd,
                        buf,
                        at,
                        len,
                        offset,
                    },
                );
            }
            // Hand the writes (and any reads queued before) to the kernel now, so IO runs
            // while the next batch's crypto does.
            ctx.reactor.submit();
        }
    }

    /// The crypto of one batch, in place; returns the writes (buffer span, file offset).
    fn crypto(&mut self, ctx: &mut JobCtx, lane: usize, batch: u64) -> Result<Spans, Error> {
        let buf_id = self.lanes[lane].buf;
        let codec = self.codec.as_mut().expect("codec set");
        let (first, units) = codec.span(batch);
        let stride = codec.stride();
        let chunk = codec.chunk_bytes();
        let auth = |_| Error::from(format::AuthFailed).context(self.spec.input.display());
        let buf = ctx.reactor.buf_mut(buf_id);
        let mut writes = Spans::new();
        match codec {
            Codec::Seal {
                sealer,
                n_full,
                final_len,
            } => {
                let full = ((*n_full).saturating_sub(first)).min(units as u64) as usize;
                sealer.seal_full(&mut buf[..full * stride])?;
                let mut len = full * stride;
                if full < units {
                    len += sealer.seal_final(&mut buf[full * stride..], *final_len)?;
                }
                writes.push((0, len, HEADER_BYTES as u64 + first * stride as u64));
            }
            Codec::Open {
                opener,
                full_records,
                final_record,
            } => {
                let full = ((*full_records).saturating_sub(first)).min(units as u64) as usize;
                opener.open_full(&mut buf[..full * stride]).map_err(auth)?;
                for slot in 0..full {
                    writes.push((slot * stride, chunk, (first + slot as u64) * chunk as u64));
                }
                if full < units {
                    let at = full * stride;
                    let plain = opener
                        .open_final(&mut buf[at..at + *final_record])
                        .map_err(auth)?;
                    if plain > 0 {
                        writes.push((at, plain, (first + full as u64) * chunk as u64));
                    }
                }
            }
            Codec::Reseal {
                opener,
                sealer,
                full_records,
                final_record,
            } => {
                let full = ((*full_records).saturating_sub(first)).min(units as u64) as usize;
                opener.open_full(&mut buf[..full * stride]).map_err(auth)?;
                sealer.seal_full(&mut buf[..full * stride])?;
                let mut len = full * stride;
                if full < units {
                    let at = full * stride;
                    let plain = opener
                        .open_final(&mut buf[at..at + *final_record])
                        .map_err(auth)?;
                    len += sealer.seal_final(&mut buf[at..], plain)?;
                }
                writes.push((0, len, HEADER_BYTES as u64 + first * stride as u64));
            }
        }
        Ok(writes)
    }

    fn lane_written(
        &mut self,
        ctx: &mut JobCtx,
        lane: usize,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        let n = result.map_err(|e| self.io_err("write", false, e))?;
        ctx.metrics.written(u64::from(n));
        let state = &mut self.lanes[lane];
        state.ops_left -= 1;
        state.done += n as usize;
        if state.ops_left == 0 {
            if state.done != state.expected {
                // A short write to a regular file means the disk filled up.
                return Err(Error::io(
                    "write",
                    &self.spec.output,
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
            state.state = LaneState::Idle;
        }
        self.pump(ctx);
        Ok(())
    }

    fn end_of_stream(&mut self, ctx: &mut JobCtx) {
        self.phase = Phase::Committing;
        match self.spec.op {
            // The file must end exactly after the final record: probe one byte past it.
            // Into the first pool buffer: every batch is written by now.
            FileOp::Decrypt | FileOp::Rewrap => {
                let fd = self.input.as_ref().expect("input is open").as_raw_fd();
                let buf = self.lanes[0].buf;
                self.push(
                    ctx,
                    TAG_EOF_PROBE,
                    Op::ReadFixed {
                        fd,
                        buf,
                        at: 0,
                        len: 1,
                        offset: self.in_len,
                    },
                );
            }
            FileOp::Encrypt => {
                if let Err(err) = self.commit(ctx) {
                    self.fail(ctx, err);
                }
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
            self.push(ctx, TAG_FSYNC, Op::Fsync { fd });
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
                self.token_base,
                self.who,
                ctx,
                TAG_RENAME,
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
            self.token_base,
            self.who,
            ctx,
            TAG_LINK,
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

    fn linked(&mut self, ctx: &mut JobCtx, tag: u64) -> Result<(), Error> {
        failpoint("linked");
        if tag == TAG_LINK && self.temp_name.is_some() {
            // Overwrite: the temp name now exists; rename it over the target.
            return self.link(ctx);
        }
        self.temp_name = None;
        if ctx.durability == Durability::Fsync {
            let dir = self.out_dir.as_ref().expect("dir is open").as_raw_fd();
            self.push(ctx, TAG_FSYNC_DIR, Op::Fsync { fd: dir });
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
        FileOp::Encrypt => crate::stream::verify_last_record(&file, ring).is_ok(),
        // A rewrap is done only when the output is under the current default key.
        FileOp::Rewrap => {
            crate::stream::verify_last_record(&file, ring).is_ok_and(|id| ring.is_default_key(&id))
        }
    }
}

/// A test hook: with the `test-hooks` feature and `RINGCRYPT_FAILPOINT=NAME` in the
/// environment, the daemon kills itself (SIGKILL, as `kill -9` would) when a job reaches the
/// step NAME: `opened`, `temp_created`, `written` (all data written, before the fsync),
/// `fsynced` (before the link), `linked` (before the directory fsync), `done`.
#[cfg(feature = "test-hooks")]
fn failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("RINGCRYPT_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
fn failpoint(_name: &str) {}
