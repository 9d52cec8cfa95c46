//! One directory-tree job on the shard that received it (the aggregator): walk the input tree
//! a slice at a time, mirror its directories under the output, fan its regular files out as
//! file jobs to their owner shards, count what comes back, and report progress and one final
//! `done`.
//!
//! Bounded however large the tree: at most [`TREE_WINDOW`] file jobs are out at once (the walk
//! pauses until results come back), the walk holds one open directory per level (at most
//! [`TREE_MAX_DEPTH`]), and only the first failures and skips are kept. A walk step stops
//! after [`WALK_SLICE`] so the shard's IO never waits long for it.
//!
//! Confinement: every input directory is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from its allowed root and listed through that descriptor; output
//! directories are made with `mkdirat` in a parent opened the same way. A symlink swapped in
//! for a directory mid-walk is refused, never followed. Files themselves are opened by their
//! file jobs, confined the same way: each by its name in the level's input directory, its
//! output created and linked in the level's output directory, both descriptors shared with
//! the job (`held_dirs.rs`).
//!
//! A batch (`Request::Batch`) runs here too: its files come from the request's list instead
//! of a walk, each checked against the allowed roots and opened by its file job from its
//! path, as a single file's is; everything else (the window, retries, cancel, counts) is
//! the tree's.
//!
//! What this room does not do: run file jobs (their owner shards do) or touch sockets.

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, ResolveFlags};
use rustix::io::Errno;

use crate::daemon::batch_files::BatchFiles;
use crate::daemon::held_dirs::HeldDirs;
use crate::daemon::roots::{RESOLVE_CONFINED, Roots};
use crate::error::{Code, Error};
use crate::limits::{TREE_RETRY_DELAY, TREE_WINDOW};
use crate::protocol::{
    BatchSpec, DoneReport, Failure, FileJobSpec, FileOp, JobId, MAX_FAILURES_REPORTED, Progress,
    Skipped, SparePaths,
};
use crate::tree_rules::{PARTITION_MARKER, REASON_MARKER, Special, output_name_parts};

/// Directory levels a tree may have: each open level holds two descriptors.
pub const TREE_MAX_DEPTH: usize = 256;

/// Longest one walk step runs before the shard goes back to its IO.
pub const WALK_SLICE: Duration = Duration::from_millis(1);

/// Shortest gap between two `progress` lines of one tree.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Bytes of the buffer a directory entry's name is copied into: Linux's longest file name
/// (`NAME_MAX`, 255) and its NUL. A longer name, which no Linux filesystem returns, is copied
/// to the heap instead.
const NAME_BUF_BYTES: usize = 256;

/// The buffer a tree reads directory entries into (`getdents64`), allocated once per tree:
/// room for about a hundred entries with ordinary names per call, and more than the largest
/// single entry (a 255-byte name and its header).
const DIRENTS_BUF_BYTES: usize = 8192;

/// The result of one file of a tree, from its owner shard.
pub enum FileResult {
    Done {
        bytes_in: u64,
        bytes_out: u64,
        micros: u64,
    },
    /// The output existed and verified (skip_existing).
    Skipped,
    Failed(Error),
    /// The owner's queue was full: try again later (trees wait, they never get `busy`).
    Busy(Box<FileJobSpec>),
}

struct Level {
    /// The input directory, read one `getdents64` batch at a time, and the output directory,
    /// opened (confined) so files and subdirectories go into it; shared with the level's
    /// file jobs, which open and link their files in them.
    dirs: HeldDirs,
    /// The entries of the last batch not yet visited, each a type byte, the name and a NUL,
    /// from `pos` on. A walk step may stop anywhere in them (window full, time slice over,
    /// a subdirectory to walk first); they wait here, so no batch is read twice.
    pending: Vec<u8>,
    pos: usize,
    /// The directory has no entries left to read.
    read_all: bool,
    /// The input directory, relative to the tree's input root ("" for the root).
    rel: PathBuf,
}

/// A tree job (or a batch). See the module docs.
pub struct TreeJob {
    pub id: JobId,
    pub spec: FileJobSpec,
    stack: Vec<Level>,
    /// Where `getdents64` writes (see [`DIRENTS_BUF_BYTES`]).
    dirents: Vec<std::mem::MaybeUninit<u8>>,
    /// Pending-entry buffers of levels already walked, for the next levels to reuse.
    spare_pending: Vec<Vec<u8>>,
    walked: bool,
    /// A batch's files still to hand out (None: a tree, walked).
    batch: Option<BatchFiles>,
    /// Files of a batch that failed before they were handed out (outside every allowed
    /// root), each with its index, for the shard to answer.
    pub refused: Vec<(u32, Error)>,
    /// Files refused `busy`, each with its index in its batch (0 for a tree's file).
    retry: VecDeque<(FileJobSpec, u32)>,
    /// Files in `retry` are handed out again from this moment (see
    /// [`TREE_RETRY_DELAY`]).
    retry_at: Instant,
    pub in_flight: usize,
    files_total: u64,
    bytes_total: u64,
    files_ok: u64,
    files_failed: u64,
    files_skipped: u64,
    bytes_done: u64,
    bytes_out: u64,
    failures: Vec<Failure>,
    skipped: Vec<Skipped>,
    started: Instant,
    last_progress: Option<Instant>,
    cancelled: bool,
}

impl TreeJob {
    /// Opens the input root and creates (or reuses) the output root, refusing an output
    /// that lies inside the input (the walk would find its own outputs).
    pub fn start(id: JobId, spec: FileJobSpec, roots: &Roots) -> Result<TreeJob, Error> {
        let input = open_dir(roots, &spec.input)?;
        let out = if spec.op.writes() {
            refuse_output_inside(roots, &input, &spec)?;
            let out = make_dir_path(roots, &spec.output, dir_mode(&input))?;
            if let Some(partition) = spec.partition {
                crate::partition_marker::claim(out.as_fd(), partition, &spec.output)?;
            }
            out
        } else {
            // Verify writes nothing: the input is its own "output" tree, never written.
            out_twin(&input, &spec.input)?
        };
        let mut job = TreeJob::blank(id, spec);
        job.stack.push(Level {
            dirs: HeldDirs::new(input, out),
            pending: Vec::new(),
            pos: 0,
            read_all: false,
            rel: PathBuf::new(),
        });
        job.dirents = vec![std::mem::MaybeUninit::uninit(); DIRENTS_BUF_BYTES];
        Ok(job)
    }

    /// A job with nothing to walk yet and every count at zero.
    fn blank(id: JobId, spec: FileJobSpec) -> TreeJob {
        TreeJob {
            id,
            spec,
            stack: Vec::new(),
            dirents: Vec::new(),
            spare_pending: Vec::new(),
            walked: false,
            batch: None,
            refused: Vec::new(),
            retry: VecDeque::new(),
            retry_at: Instant::now(),
            in_flight: 0,
            files_total: 0,
            bytes_total: 0,
            files_ok: 0,
            files_failed: 0,
            files_skipped: 0,
            bytes_done: 0,
            bytes_out: 0,
            failures: Vec::new(),
            skipped: Vec::new(),
            started: Instant::now(),
            last_progress: None,
            cancelled: false,
        }
    }

    /// A batch: its files are handed out from the list, in order, each opened from its
    /// path by its file job. Nothing is opened here; the paths are checked against the
    /// allowed roots as they go out.
    pub fn start_batch(id: JobId, batch: BatchSpec) -> TreeJob {
        let BatchSpec {
            spec,
            inputs,
            outputs,
        } = batch;
        let mut job = TreeJob::blank(id, spec);
        job.files_total = inputs.len() as u64;
        job.batch = Some(BatchFiles {
            inputs: inputs.into_iter(),
            outputs: outputs.into_iter(),
            next: 0,
            dirs: Vec::new(),
        });
        job
    }

    /// Whether this job is a batch (files listed by the request) rather than a tree.
    pub fn is_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// True while the walk has entries left or files wait for a retry, and there is room
    /// in the window.
    /// Files refused `busy` wait [`TREE_RETRY_DELAY`], and the walk waits with them.
    pub fn wants_step(&self) -> bool {
        let more = if self.retry.is_empty() {
            !self.walked
        } else {
            Instant::now() >= self.retry_at
        };
        !self.cancelled && more && self.in_flight < TREE_WINDOW
    }

    /// When files refused `busy` may go out again, if any wait.
    pub fn retry_at(&self) -> Option<Instant> {
        (!self.cancelled && !self.retry.is_empty()).then_some(self.retry_at)
    }

    /// Walks for up to [`WALK_SLICE`], adding the file jobs to submit to `out` (empty when
    /// called; the caller keeps it from step to step). Their paths are written into buffers
    /// taken from `spares`, the shard's, which get them back when the jobs' records go.
    pub fn step(
        &mut self,
        roots: &Roots,
        out: &mut Vec<(FileJobSpec, u32)>,
        spares: &mut SparePaths,
    ) {
        let until = Instant::now() + WALK_SLICE;
        while self.in_flight + out.len() < TREE_WINDOW
            && let Some(file) = self.retry.pop_front()
        {
            out.push(file);
        }
        if self.batch.is_some() {
            self.step_batch(roots, out);
            self.in_flight += out.len();
            return;
        }
        while !self.walked && self.in_flight + out.len() < TREE_WINDOW && Instant::now() < until {
            let Some(level) = self.stack.last_mut() else {
                self.walked = true;
                break;
            };
            if level.pos == level.pending.len() {
                if level.read_all {
                    let done = self.stack.pop().expect("a level is open");
                    self.spare_pending.push(done.pending);
                    continue;
                }
                if let Err(err) = Self::read_batch(level, &mut self.dirents) {
                    let path = self.spec.input.join(&level.rel);
                    self.fail(&path, Error::io("list", &path, err.into()));
                    let done = self.stack.pop().expect("a level is open");
                    self.spare_pending.push(done.pending);
                }
                continue;
            }
            // The name is copied out of the pending entries, which a visit that enters a
            // subdirectory leaves waiting.
            let kind = type_of(level.pending[level.pos]);
            let start = level.pos + 1;
            let len = level.pending[start..]
                .iter()
                .position(|&b| b == 0)
                .expect("every pending name ends in a NUL");
            level.pos = start + len + 1;
            let with_nul = &level.pending[start..start + len + 1];
            let mut buf = [0u8; NAME_BUF_BYTES];
            let heap;
            let name = if with_nul.len() <= NAME_BUF_BYTES {
                buf[..with_nul.len()].copy_from_slice(with_nul);
                CStr::from_bytes_with_nul(&buf[..with_nul.len()]).expect("one NUL, at the end")
            } else {
                heap = CStr::from_bytes_with_nul(with_nul)
                    .expect("one NUL, at the end")
                    .to_owned();
                heap.as_c_str()
            };
            self.visit(roots, name, kind, out, spares);
        }
        self.in_flight += out.len();
    }

    /// Hands out a batch's next files, up to the window. A file whose input, or its
    /// output's directory, lies outside every allowed root fails here (in `refused`), as a
    /// single file's request would be refused.
    fn step_batch(&mut self, roots: &Roots, out: &mut Vec<(FileJobSpec, u32)>) {
        let Some(batch) = self.batch.as_mut() else {
            return;
        };
        while self.in_flight + out.len() < TREE_WINDOW {
            let (Some(input), Some(output)) = (batch.inputs.next(), batch.outputs.next()) else {
                // The files still out hold their directories; the batch lets go of them.
                batch.dirs.clear();
                self.walked = true;
                return;
            };
            let item = batch.next;
            batch.next += 1;
            let parent = output.parent().unwrap_or(Path::new("/"));
            if let Err(err) = roots.check(&input).and_then(|()| roots.check(parent)) {
                self.files_failed += 1;
                if self.failures.len() < MAX_FAILURES_REPORTED {
                    self.failures.push(Failure {
                        path: input,
                        code: err.code,
                        message: err.message.clone(),
                    });
                }
                self.refused.push((item, err));
                continue;
            }
            let held = batch.held(roots, self.spec.op, &input, &output);
            let mut spec = FileJobSpec::new(self.spec.op, input, output);
            spec.key = self.spec.key.clone();
            spec.format = self.spec.format;
            spec.caller = self.spec.caller.clone();
            spec.overwrite = self.spec.overwrite;
            spec.skip_existing = self.spec.skip_existing;
            spec.held_dirs = held;
            out.push((spec, item));
        }
    }

    /// Reads the next `getdents64` batch of `level` into its pending entries (skipping `.`
    /// and `..`), or marks it read to the end.
    fn read_batch(
        level: &mut Level,
        dirents: &mut [std::mem::MaybeUninit<u8>],
    ) -> Result<(), rustix::io::Errno> {
        level.pending.clear();
        level.pos = 0;
        let mut entries = RawDir::new(&*level.dirs.input, dirents);
        loop {
            match entries.next() {
                None => {
                    level.read_all = true;
                    return Ok(());
                }
                Some(Err(err)) => return Err(err),
                Some(Ok(entry)) => {
                    let name = entry.file_name().to_bytes_with_nul();
                    if name != b".\0" && name != b"..\0" {
                        level.pending.push(type_code(entry.file_type()));
                        level.pending.extend_from_slice(name);
                    }
                }
            }
            // One batch: asking for more now would read past what the walk can use.
            if entries.is_buffer_empty() {
                return Ok(());
            }
        }
    }

    fn visit(
        &mut self,
        roots: &Roots,
        name: &CStr,
        kind: FileType,
        out: &mut Vec<(FileJobSpec, u32)>,
        spares: &mut SparePaths,
    ) {
        let level = self.stack.last().expect("visit runs inside a level");
        let input = joined(spares, &self.spec.input, &level.rel, &[name.to_bytes()]);
        // Every entry but a file to process is named only in the failures and skips,
        // which copy the name: its buffer goes back at once.
        if let Some(input) = self.visit_entry(roots, name, kind, input, out, spares) {
            spares.give(input);
        }
    }

    /// [`TreeJob::visit`] for the entry at `input`: pushes a file job, which keeps `input`,
    /// or hands `input` back.
    fn visit_entry(
        &mut self,
        roots: &Roots,
        name: &CStr,
        kind: FileType,
        input: PathBuf,
        out: &mut Vec<(FileJobSpec, u32)>,
        spares: &mut SparePaths,
    ) -> Option<PathBuf> {
        // Another partition's entry costs no stat when its type is known.
        let known = kind != FileType::Unknown;
        if known && self.other_partition(kind, name) {
            return Some(input);
        }
        let level = self.stack.last().expect("visit runs inside a level");
        // d_type can be unknown on some filesystems: ask without following links.
        let stat = match rustix::fs::statat(&*level.dirs.input, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(err) => {
                self.fail(&input, Error::io("stat", &input, err.into()));
                return Some(input);
            }
        };
        let kind = if kind == FileType::Unknown {
            FileType::from_raw_mode(stat.st_mode)
        } else {
            kind
        };
        if !known && self.other_partition(kind, name) {
            return Some(input);
        }
        let level = self.stack.last().expect("visit runs inside a level");
        match kind {
            FileType::Directory => {
                if self.stack.len() >= TREE_MAX_DEPTH {
                    let err = Error::new(
                        Code::BadRequest,
                        format!(
                            "{}: deeper than {TREE_MAX_DEPTH} levels; not descended",
                            input.display()
                        ),
                    );
                    self.fail(&input, err);
                    return Some(input);
                }
                let rel = level.rel.join(OsStr::from_bytes(name.to_bytes()));
                match self.descend(roots, name, &rel, stat.st_mode & 0o7777) {
                    Ok(mut level) => {
                        level.pending = self.spare_pending.pop().unwrap_or_default();
                        self.stack.push(level);
                    }
                    Err(err) => self.fail(&input, err),
                }
            }
            FileType::RegularFile => {
                if self.stack.len() == 1 && name.to_bytes() == PARTITION_MARKER.as_bytes() {
                    self.skip(&input, REASON_MARKER);
                    return Some(input);
                }
                let (stem, suffix) = match output_name_parts(self.spec.op, name.to_bytes()) {
                    Ok(parts) => parts,
                    Err(reason) => {
                        self.skip(&input, reason);
                        return Some(input);
                    }
                };
                let output = joined(spares, &self.spec.output, &level.rel, &[stem, suffix]);
                let mut spec = FileJobSpec::new(self.spec.op, input, output);
                spec.key = self.spec.key.clone();
                spec.caller = self.spec.caller.clone();
                spec.overwrite = self.spec.overwrite;
                spec.skip_existing = self.spec.skip_existing;
                spec.held_dirs = Some(level.dirs.clone());
                self.files_total += 1;
                self.bytes_total += stat.st_size as u64;
                out.push((spec, 0));
                return None;
            }
            FileType::Symlink => self.skip(&input, Special::Symlink.reason()),
            FileType::Fifo => self.skip(&input, Special::Fifo.reason()),
            FileType::Socket => self.skip(&input, Special::Socket.reason()),
            FileType::BlockDevice | FileType::CharacterDevice => {
                self.skip(&input, Special::Device.reason())
            }
            FileType::Unknown => self.skip(&input, Special::Unknown.reason()),
        }
        Some(input)
    }

    /// Whether the entry `name` of the current level, of type `kind`, belongs to another
    /// partition than this tree's (`tree_rules::Partition`): directories belong to every
    /// partition (each mirrors them all), other entries to one.
    fn other_partition(&self, kind: FileType, name: &CStr) -> bool {
        let Some(partition) = self.spec.partition else {
            return false;
        };
        let level = self.stack.last().expect("inside a level");
        kind != FileType::Directory
            && !partition.owns(level.rel.as_os_str().as_bytes(), name.to_bytes())
    }

    /// Opens an input subdirectory and creates its output twin with the same mode bits.
    fn descend(&self, roots: &Roots, name: &CStr, rel: &Path, mode: u32) -> Result<Level, Error> {
        let input = self.spec.input.join(rel);
        let output = self.spec.output.join(rel);
        let fd = open_dir(roots, &input)?;
        let parent = &self.stack.last().expect("inside a level").dirs.output;
        let out = if self.spec.op.writes() {
            make_dir_in(parent, name, mode, &output)?
        } else {
            out_twin(&fd, &input)?
        };
        Ok(Level {
            dirs: HeldDirs::new(fd, out),
            pending: Vec::new(),
            pos: 0,
            read_all: false,
            rel: rel.to_path_buf(),
        })
    }

    fn fail(&mut self, path: &Path, err: Error) {
        self.files_failed += 1;
        if self.failures.len() < MAX_FAILURES_REPORTED {
            self.failures.push(Failure {
                path: path.to_path_buf(),
                code: err.code,
                message: err.message,
            });
        }
    }

    fn skip(&mut self, path: &Path, reason: &str) {
        self.files_skipped += 1;
        if self.skipped.len() < MAX_FAILURES_REPORTED {
            self.skipped.push(Skipped {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            });
        }
    }

    /// Counts one file's result; `item` is its index in its batch (0 for a tree's file).
    pub fn on_result(&mut self, input: &Path, item: u32, size: u64, result: FileResult) {
        match result {
            FileResult::Busy(spec) => {
                self.in_flight -= 1;
                // A cancelled tree hands nothing out again: the file is simply not done.
                if !self.cancelled {
                    self.retry.push_back((*spec, item));
                    self.retry_at = Instant::now() + TREE_RETRY_DELAY;
                }
                return;
            }
            FileResult::Done {
                bytes_in,
                bytes_out,
                ..
            } => {
                self.files_ok += 1;
                self.bytes_out += bytes_out;
                let _ = bytes_in;
            }
            // Counted, not listed: on a rerun they would crowd the list that shows the
            // symlinks and FIFOs a person needs to see.
            FileResult::Skipped => self.files_skipped += 1,
            FileResult::Failed(err) => self.fail(input, err),
        }
        self.in_flight -= 1;
        self.bytes_done += size;
        if self.batch.is_some() {
            // A batch's sizes are learnt as its files end.
            self.bytes_total += size;
        }
    }

    /// Ends the walk with `err` counted as a failure of the whole input; files already out
    /// finish and are counted.
    pub fn abort(&mut self, err: Error) {
        let input = self.spec.input.clone();
        self.fail(&input, err);
        self.walked = true;
        self.retry.clear();
        self.stack.clear();
    }

    /// Stops walking; files already out finish and are counted.
    pub fn cancel(&mut self) {
        self.cancelled = true;
        self.retry.clear();
        self.stack.clear();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// True once the walk ended and every file reported.
    pub fn is_finished(&self) -> bool {
        (self.walked || self.cancelled) && self.in_flight == 0 && self.retry.is_empty()
    }

    /// A progress report, if one is due.
    pub fn progress_due(&mut self) -> Option<Progress> {
        if self
            .last_progress
            .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
        {
            return None;
        }
        self.last_progress = Some(Instant::now());
        Some(self.progress())
    }

    pub fn progress(&self) -> Progress {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        Progress {
            job: self.id,
            files_done: self.files_ok + self.files_failed + self.files_skipped_files(),
            files_total: self.files_total,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            rate_bytes_per_sec: (self.bytes_done as f64 / seconds) as u64,
            totals_final: self.walked,
        }
    }

    /// Regular files among the skipped entries (outputs that exist and verify), which
    /// count towards `files_done`; skipped specials never entered `files_total`.
    fn files_skipped_files(&self) -> u64 {
        self.files_total
            .saturating_sub(
                self.files_ok + self.files_failed + self.in_flight as u64 + self.retry.len() as u64,
            )
            .min(self.files_skipped)
    }

    /// The final report.
    pub fn report(&self) -> DoneReport {
        DoneReport {
            job: self.id,
            bytes_in: self.bytes_done,
            bytes_out: self.bytes_out,
            micros: self.started.elapsed().as_micros() as u64,
            files_ok: self.files_ok,
            files_failed: self.files_failed,
            files_skipped: self.files_skipped,
            failures: self.failures.clone(),
            skipped: self.skipped.clone(),
        }
    }
}

/// `base.join(rel).join(name)`, with `name` given in parts, written into a spare from
/// `spares` with room for all of it (so at most one allocation, none when a spare fits).
/// `rel` is empty or relative without a trailing `/`; `name` holds no `/`.
fn joined(spares: &mut SparePaths, base: &Path, rel: &Path, name: &[&[u8]]) -> PathBuf {
    let base = base.as_os_str().as_bytes();
    let rel = rel.as_os_str().as_bytes();
    let name_len: usize = name.iter().map(|part| part.len()).sum();
    let mut path = spares
        .take(base.len() + rel.len() + name_len + 2)
        .into_os_string()
        .into_vec();
    path.extend_from_slice(base);
    if !rel.is_empty() {
        if !path.ends_with(b"/") {
            path.push(b'/');
        }
        path.extend_from_slice(rel);
    }
    if !path.ends_with(b"/") {
        path.push(b'/');
    }
    for part in name {
        path.extend_from_slice(part);
    }
    PathBuf::from(OsString::from_vec(path))
}

/// Refuses a tree whose output directory is the input directory (but for a rewrap in
/// place) or lies anywhere beneath it, by the identity (device, inode) of the directories
/// as opened, not by their path strings: a bind mount or another route to the same
/// directory cannot slip past. The output may not exist yet: its nearest existing ancestor
/// is where the check starts, then every directory above it up to `/`.
fn refuse_output_inside(roots: &Roots, input: &OwnedFd, spec: &FileJobSpec) -> Result<(), Error> {
    let input_id = identity(input).map_err(|e| Error::io("stat", &spec.input, e.into()))?;
    let inside = |what: &str| {
        Error::new(
            Code::BadRequest,
            format!(
                "{} {what} the input directory {}; the walk would find its own outputs \
                 (an output inside the input directory is refused); choose another output \
                 directory",
                spec.output.display(),
                spec.input.display()
            ),
        )
    };
    // The output itself, or its nearest ancestor that exists and lies under a root.
    let mut at = spec.output.as_path();
    let mut dir = loop {
        // Asked without building an error: a missing output is the usual case.
        let opened = roots.locate(at).ok().and_then(|(root, rel)| {
            rustix::fs::openat2(
                root,
                rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::from_bits_retain(RESOLVE_CONFINED),
            )
            .ok()
        });
        match opened {
            Some(fd) => break fd,
            None => match at.parent() {
                Some(parent) if roots.locate(parent).is_ok() => at = parent,
                // Nothing of the output exists under a root yet: creating it will say why.
                _ => return Ok(()),
            },
        }
    };
    if at == spec.output {
        let output_id = identity(&dir).map_err(|e| Error::io("stat", at, e.into()))?;
        if output_id == input_id {
            if spec.op == FileOp::Rewrap {
                // Rewrap in place: every file is replaced by its own rewrapped self.
                return Ok(());
            }
            return Err(inside("is"));
        }
    }
    loop {
        let id = identity(&dir).map_err(|e| Error::io("stat", at, e.into()))?;
        if id == input_id {
            return Err(inside("lies inside"));
        }
        // `..` of `/` is `/` itself: the walk up ends there.
        let parent = rustix::fs::openat(
            &dir,
            c"..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open the parent of", at, e.into()))?;
        if identity(&parent).map_err(|e| Error::io("stat", at, e.into()))? == id {
            return Ok(());
        }
        dir = parent;
    }
}

/// A verify's level has no output directory: its input's, duplicated, stands in for it.
pub(crate) fn out_twin(input: &OwnedFd, path: &Path) -> Result<OwnedFd, Error> {
    input.try_clone().map_err(|e| Error::io("open", path, e))
}

/// A directory's identity: its device and inode.
fn identity(fd: &OwnedFd) -> Result<(u64, u64), Errno> {
    rustix::fs::fstat(fd).map(|st| (st.st_dev, st.st_ino))
}

fn dir_mode(fd: &OwnedFd) -> u32 {
    rustix::fs::fstat(fd)
        .map(|s| s.st_mode & 0o7777)
        .unwrap_or(0o755)
}

/// A directory entry's type as one byte in the pending entries, and back.
fn type_code(kind: FileType) -> u8 {
    match kind {
        FileType::RegularFile => 1,
        FileType::Directory => 2,
        FileType::Symlink => 3,
        FileType::Fifo => 4,
        FileType::Socket => 5,
        FileType::CharacterDevice => 6,
        FileType::BlockDevice => 7,
        _ => 0,
    }
}

fn type_of(code: u8) -> FileType {
    match code {
        1 => FileType::RegularFile,
        2 => FileType::Directory,
        3 => FileType::Symlink,
        4 => FileType::Fifo,
        5 => FileType::Socket,
        6 => FileType::CharacterDevice,
        7 => FileType::BlockDevice,
        _ => FileType::Unknown,
    }
}

/// Opens a directory confined beneath its allowed root.
pub(crate) fn open_dir(roots: &Roots, path: &Path) -> Result<OwnedFd, Error> {
    let (root, rel) = roots.locate(path)?;
    rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::from_bits_retain(RESOLVE_CONFINED),
    )
    .map_err(|e| confined_error("open", path, e))
}

/// Creates `path` (its parent must exist) with `mode` if missing, and opens it confined.
fn make_dir_path(roots: &Roots, path: &Path, mode: u32) -> Result<OwnedFd, Error> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            Code::BadRequest,
            format!("{} has no directory name", path.display()),
        )
    })?;
    let parent = open_dir(roots, parent)?;
    let name =
        CString::new(name.as_bytes()).map_err(|_| Error::new(Code::BadRequest, "NUL in a path"))?;
    make_dir_in(&parent, &name, mode, path)
}

/// `mkdirat(parent, name, mode)` (an existing directory is reused), then opens it without
/// following a symlink.
fn make_dir_in(parent: &OwnedFd, name: &CStr, mode: u32, shown: &Path) -> Result<OwnedFd, Error> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) => {
            // mkdir applies the umask; set the source's bits exactly.
            let _ = rustix::fs::chmodat(parent, name, Mode::from_raw_mode(mode), AtFlags::empty());
        }
        Err(Errno::EXIST) => {}
        Err(e) => return Err(Error::io("create directory", shown, e.into())),
    }
    rustix::fs::openat2(
        parent.as_fd(),
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::from_bits_retain(RESOLVE_CONFINED),
    )
    .map_err(|e| confined_error("open", shown, e))
}

fn confined_error(op: &str, path: &Path, err: Errno) -> Error {
    match err {
        Errno::XDEV | Errno::LOOP | Errno::NOTDIR => Error::new(
            Code::ForbiddenPath,
            format!(
                "{}: refused: not a directory, or the path crosses a symbolic link or leaves its allowed root",
                path.display()
            ),
        ),
        e => Error::io(op, path, e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_paths_are_written_into_spares() {
        let mut spares = SparePaths::with_bound(2);
        // A spare that held another path: it is emptied, then written.
        let mut spare = OsString::with_capacity(64);
        let at_spare = spare.as_encoded_bytes().as_ptr();
        spare.push("old contents");
        spares.give(PathBuf::from(spare));
        let path = joined(
            &mut spares,
            Path::new("/in"),
            Path::new("a/b"),
            &[b"f", b".x"],
        );
        assert_eq!(path, Path::new("/in/a/b/f.x"));
        assert_eq!(path.as_os_str().as_encoded_bytes().as_ptr(), at_spare);
        assert!(spares.is_empty());
        // No rel, and a base that is the root: one `/` between the parts, never two.
        assert_eq!(
            joined(&mut spares, Path::new("/"), Path::new(""), &[b"f"]),
            Path::new("/f")
        );
        assert_eq!(
            joined(&mut spares, Path::new("/o"), Path::new(""), &[b"f", b""]),
            Path::new("/o/f")
        );
    }
}
