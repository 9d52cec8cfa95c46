//! Directory-tree jobs in this process (the client's `--keys` mode with `-r`): walk the input
//! tree, mirror its directories under the output, and run every regular file through
//! [`offline::tree_file`] on all cores.
//!
//! This module owns the walk and its rules (which entries become files of the job, which are
//! skipped and why, the output names, directory modes), the worker pool, the progress
//! counters and the [`Summary`]. It does **not** do the per-file crypto or the atomic output
//! (that is `offline` and `output`), print anything (that is `cli`), or talk to the daemon.
//!
//! The rules are the daemon's (docs/protocol.md, trees; `tree_rules`), so both modes give the same tree:
//!
//! - encrypt appends `.rcrypt` to every file name; decrypt strips it (files without it are
//!   skipped, "not a .rcrypt file"); rewrap keeps names.
//! - Directories are mirrored with their mode bits; each file keeps its mode bits and mtime.
//! - Symlinks are never followed; symlinks, FIFOs, sockets and devices are skipped with the
//!   reason ("symbolic link", "fifo", "socket", "device").
//! - One bad file never stops the tree: it is counted and listed in [`Summary::failures`].
//! - With `skip_existing`, an output that already exists and verifies
//!   ([`offline::verify_sealed`]; for decrypt: exists) is skipped ("exists and verifies");
//!   one that does not verify is replaced.
//!
//! Memory is bounded whatever the tree's size: the walker feeds the workers through a
//! channel of [`QUEUE_PER_WORKER`] items per worker, the failure and skip lists keep the
//! first [`MAX_FAILURES_REPORTED`] entries and count the rest, and the walk holds the sorted
//! names of the directories on the current path only (one directory listing per level: a
//! single directory of a million files costs its names, about 50 MB).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::crypto::keys::KeyRing;
use crate::error::{Code, Error};
use crate::offline::output::{self, Durability};
use crate::offline::{self, Format, Job};
use crate::partition_marker;
use crate::protocol::{FileOp, MAX_FAILURES_REPORTED};
use crate::tree_rules::{PARTITION_MARKER, Partition, REASON_MARKER, Special};

pub use crate::protocol::{Failure, Skipped};

/// Work items queued per worker. Enough that a worker finishing a small file finds the next
/// one waiting while the walker reads a directory; small enough that a million-file tree
/// never sits in memory.
pub const QUEUE_PER_WORKER: usize = 16;

/// How often the caller's progress callback runs: the daemon's `progress` cadence.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// How often the waiting thread looks whether the work is done, so a small tree returns
/// quickly rather than at the next progress tick.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub use crate::tree_rules::{REASON_EXISTS, REASON_NOT_RCRYPT, output_name};

/// One tree job.
#[derive(Clone, Copy, Debug)]
pub struct TreeJob<'a> {
    pub op: FileOp,
    /// A directory.
    pub input: &'a Path,
    /// A directory; created (with the input's mode bits) when missing. May be `input`
    /// itself only for rewrap (in place).
    pub output: &'a Path,
    /// As in [`offline::Job`].
    pub key: Option<&'a str>,
    pub format: Format,
    pub chunk_log2: u8,
    /// Replace existing outputs.
    pub overwrite: bool,
    /// Skip existing outputs that verify; replace the others.
    pub skip_existing: bool,
    /// Only the entries of this partition (docs/fleet.md); every directory is mirrored.
    pub partition: Option<Partition>,
    pub durability: Durability,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
}

/// Where a running tree job is, for a progress display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Regular files finished (ok, failed or skipped as existing).
    pub files_done: u64,
    /// Regular files found so far.
    pub files_total: u64,
    /// Input bytes of the finished files.
    pub bytes_done: u64,
    /// Input bytes of the files found so far.
    pub bytes_total: u64,
    /// Bytes per second since the start.
    pub rate_bytes_per_sec: u64,
    /// False while the walk runs: the totals may still grow.
    pub totals_final: bool,
}

/// What a tree job did: the fields of the daemon's `done` reply (without a job id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub files_ok: u64,
    pub files_failed: u64,
    pub files_skipped: u64,
    /// The first [`MAX_FAILURES_REPORTED`] failures.
    pub failures: Vec<Failure>,
    pub failures_omitted: u64,
    /// The first [`MAX_FAILURES_REPORTED`] skipped entries that are not files of the job
    /// (specials, names decrypt cannot map). Outputs skipped because they exist and verify
    /// are only counted: a rerun over a large tree would otherwise fill the list with them
    /// and hide the entries a person needs to see.
    pub skipped: Vec<Skipped>,
    pub skipped_omitted: u64,
}

/// Why a directory entry that is not a regular file or a directory is skipped.
fn special_reason(kind: fs::FileType) -> &'static str {
    Special::of(kind).reason()
}

/// One file for a worker: paths relative to the input and output roots.
struct Item {
    input: PathBuf,
    output: PathBuf,
    /// The input's size when the walker saw it, for the byte counters.
    size: u64,
}

/// Counters and bounded lists shared by the walker and the workers.
#[derive(Default)]
struct Shared {
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    walk_done: AtomicBool,
    summary: Mutex<Summary>,
}

impl Shared {
    fn summary(&self) -> std::sync::MutexGuard<'_, Summary> {
        // A worker that panicked leaves the counters consistent (each update is one
        // statement), and the scope re-raises its panic anyway.
        self.summary.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, path: PathBuf, err: Error) {
        let mut summary = self.summary();
        summary.files_failed += 1;
        if summary.failures.len() < MAX_FAILURES_REPORTED {
            summary.failures.push(Failure {
                path,
                code: err.code,
                message: err.message,
            });
        } else {
            summary.failures_omitted += 1;
        }
    }

    fn skip(&self, path: PathBuf, reason: &str) {
        let mut summary = self.summary();
        summary.files_skipped += 1;
        if summary.skipped.len() < MAX_FAILURES_REPORTED {
            summary.skipped.push(Skipped {
                path,
                reason: reason.to_string(),
            });
        } else {
            summary.skipped_omitted += 1;
        }
    }

    fn snapshot(&self, started: Instant) -> Snapshot {
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let micros = started.elapsed().as_micros().max(1);
        Snapshot {
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_done,
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            rate_bytes_per_sec: u64::try_from(u128::from(bytes_done) * 1_000_000 / micros)
                .unwrap_or(u64::MAX),
            totals_final: self.walk_done.load(Ordering::Relaxed),
        }
    }
}

/// Runs a tree job. Problems with the job as a whole (the input is not a directory, the
/// output root cannot be made, the output lies inside the input) are the `Err`; everything
/// about single entries is in the [`Summary`]. `on_progress` runs on the calling thread
/// every [`PROGRESS_INTERVAL`] while the job runs.
pub fn run(
    ring: &KeyRing,
    job: &TreeJob,
    mut on_progress: impl FnMut(&Snapshot),
) -> Result<Summary, Error> {
    check_roots(job)?;
    let root_meta = fs::metadata(job.input).map_err(|e| Error::io("stat", job.input, e))?;
    make_dir(job.output, root_meta.mode(), job.input == job.output)
        .map_err(|e| Error::io("create output directory", job.output, e))?;
    if let Some(partition) = job.partition {
        let root = fs::File::open(job.output).map_err(|e| Error::io("open", job.output, e))?;
        partition_marker::claim(root.as_fd(), partition, job.output)?;
    }

    let workers = match job.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let shared = Shared::default();
    let started = Instant::now();
    let (sender, receiver) = sync_channel::<Item>(workers * QUEUE_PER_WORKER);
    let receiver = Mutex::new(receiver);
    let deferred = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| work(ring, job, &shared, &receiver)))
            .collect();
        let walker = scope.spawn(|| {
            let deferred = walk(job, &shared, sender);
            shared.walk_done.store(true, Ordering::Relaxed);
            deferred
        });
        let mut last = Instant::now();
        while !(walker.is_finished() && handles.iter().all(|h| h.is_finished())) {
            std::thread::sleep(POLL_INTERVAL);
            if last.elapsed() >= PROGRESS_INTERVAL {
                last = Instant::now();
                on_progress(&shared.snapshot(started));
            }
        }
        // The scope joins the workers (and re-raises a panic); the walker's result is ours.
        walker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    // Directories whose mode would have locked the workers out get it now, deepest first.
    for (dir, mode) in deferred.into_iter().rev() {
        let out = job.output.join(&dir);
        if let Err(e) = fs::set_permissions(&out, fs::Permissions::from_mode(mode)) {
            shared.fail(out.clone(), Error::io("set permissions on", &out, e));
        }
    }
    let summary = shared.summary().clone();
    Ok(summary)
}

/// The whole-job checks: the input is a directory; the output is not inside it (the walk
/// would find its own outputs), unless they are the same directory (rewrap in place).
fn check_roots(job: &TreeJob) -> Result<(), Error> {
    let meta = fs::metadata(job.input).map_err(|e| Error::io("open", job.input, e))?;
    if !meta.is_dir() {
        return Err(Error::new(
            Code::BadRequest,
            format!(
                "{} is not a directory; -r takes a directory",
                job.input.display()
            ),
        ));
    }
    let input = fs::canonicalize(job.input).map_err(|e| Error::io("resolve", job.input, e))?;
    let output = resolve_maybe_missing(job.output);
    if output == input {
        if job.op != FileOp::Rewrap {
            return Err(Error::new(
                Code::BadRequest,
                format!(
                    "{} is the input directory itself; choose another output directory",
                    job.output.display()
                ),
            ));
        }
    } else if output.starts_with(&input) {
        return Err(Error::new(
            Code::BadRequest,
            format!(
                "{} lies inside the input directory {}; the walk would find its own outputs",
                job.output.display(),
                job.input.display()
            ),
        ));
    }
    Ok(())
}

/// `path` with symlinks resolved as far as it exists, then the missing rest appended.
fn resolve_maybe_missing(path: &Path) -> PathBuf {
    if let Ok(real) = fs::canonicalize(path) {
        return real;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            resolve_maybe_missing(parent).join(name)
        }
        _ => path.to_path_buf(),
    }
}

/// Whether a directory with `mode` lets its owner create files in it.
fn owner_can_write(mode: u32) -> bool {
    mode & 0o300 == 0o300
}

/// Creates the output directory `path` (or uses an existing one) with the source's mode
/// bits; a mode without owner write and search is given later (see [`run`]).
fn make_dir(path: &Path, mode: u32, in_place: bool) -> std::io::Result<()> {
    let mode = mode & 0o7777;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path)?;
            if !meta.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "it exists and is not a directory",
                ));
            }
            if in_place {
                return Ok(());
            }
        }
        Err(e) => return Err(e),
    }
    // chmod, not the mkdir mode: the umask would take bits away.
    let now = if owner_can_write(mode) {
        mode
    } else {
        mode | 0o700
    };
    fs::set_permissions(path, fs::Permissions::from_mode(now))
}

/// Walks the input tree depth first, in name order (so runs and reports are reproducible),
/// mirroring directories and queueing files. Returns the directories (relative) whose mode
/// must be set after the workers are done.
fn walk(job: &TreeJob, shared: &Shared, sender: SyncSender<Item>) -> Vec<(PathBuf, u32)> {
    let in_place = job.input == job.output;
    let mut deferred = Vec::new();
    // Each level: the directory (relative to the roots) and its remaining names, reversed so
    // that `pop` yields them in order.
    let mut stack: Vec<(PathBuf, Vec<OsString>)> = Vec::new();
    match list(job.input) {
        Ok(names) => stack.push((PathBuf::new(), names)),
        Err(e) => shared.fail(job.input.to_path_buf(), Error::io("list", job.input, e)),
    }
    if !owner_can_write(mode_of(job.input)) && !in_place {
        deferred.push((PathBuf::new(), mode_of(job.input)));
    }
    while let Some((dir, names)) = stack.last_mut() {
        let Some(name) = names.pop() else {
            stack.pop();
            continue;
        };
        let rel = dir.join(&name);
        let input = job.input.join(&rel);
        // Directories belong to every partition, other entries to one (`tree_rules`).
        let mine = job
            .partition
            .is_none_or(|p| p.owns(dir.as_os_str().as_bytes(), name.as_bytes()));
        if output::is_temp_name(&name) {
            // Debris of an interrupted job (or, in place, this job's own temp file).
            if mine {
                shared.skip(input, "temp file of an interrupted job");
            }
            continue;
        }
        let meta = match fs::symlink_metadata(&input) {
            Ok(meta) => meta,
            Err(e) => {
                if mine {
                    shared.fail(input.clone(), Error::io("stat", &input, e));
                }
                continue;
            }
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            let out = job.output.join(&rel);
            if let Err(e) = make_dir(&out, meta.mode(), in_place) {
                shared.fail(input, Error::io("create directory", &out, e));
                continue;
            }
            if !owner_can_write(meta.mode()) && !in_place {
                deferred.push((rel.clone(), meta.mode() & 0o7777));
            }
            match list(&input) {
                Ok(names) => stack.push((rel, names)),
                Err(e) => shared.fail(input.clone(), Error::io("list", &input, e)),
            }
        } else if !mine {
            continue;
        } else if kind.is_file() {
            if dir.as_os_str().is_empty() && name == PARTITION_MARKER {
                shared.skip(input, REASON_MARKER);
                continue;
            }
            let out_name = match output_name(job.op, &name) {
                Ok(out_name) => out_name,
                Err(reason) => {
                    shared.skip(input, reason);
                    continue;
                }
            };
            shared.files_total.fetch_add(1, Ordering::Relaxed);
            shared.bytes_total.fetch_add(meta.len(), Ordering::Relaxed);
            let item = Item {
                output: rel.with_file_name(out_name),
                input: rel,
                size: meta.len(),
            };
            if sender.send(item).is_err() {
                // Every worker is gone: they only stop early by panicking, which the scope
                // re-raises; nothing more to queue.
                break;
            }
        } else {
            shared.skip(input, special_reason(kind));
        }
    }
    deferred
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).map_or(0o700, |m| m.mode() & 0o7777)
}

/// The names in `dir`, sorted, reversed (for popping in order).
fn list(dir: &Path) -> std::io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

/// A worker: takes items until the walker is done and the queue is empty.
fn work(ring: &KeyRing, job: &TreeJob, shared: &Shared, receiver: &Mutex<Receiver<Item>>) {
    loop {
        let item = {
            let receiver = receiver.lock().unwrap_or_else(PoisonError::into_inner);
            match receiver.recv() {
                Ok(item) => item,
                Err(_) => return,
            }
        };
        let input = job.input.join(&item.input);
        let output = job.output.join(&item.output);
        one_file(ring, job, shared, &input, &output);
        shared.files_done.fetch_add(1, Ordering::Relaxed);
        shared.bytes_done.fetch_add(item.size, Ordering::Relaxed);
    }
}

fn one_file(ring: &KeyRing, job: &TreeJob, shared: &Shared, input: &Path, output: &Path) {
    let mut overwrite = job.overwrite;
    if job.skip_existing && fs::symlink_metadata(output).is_ok() {
        let verified = match job.op {
            FileOp::Decrypt => true,
            // Nothing is written, so nothing is ever skipped as existing.
            FileOp::Verify => false,
            FileOp::Encrypt => offline::verify_sealed(ring, output).is_ok(),
            // A rewrap is done only when the output is under the current default key, as
            // in the daemon.
            FileOp::Rewrap => {
                offline::verify_sealed(ring, output).is_ok_and(|id| ring.is_default_key(&id))
            }
        };
        if verified {
            // Counted, not listed: see `Summary::skipped`.
            shared.summary().files_skipped += 1;
            return;
        }
        overwrite = true;
    }
    let file_job = Job {
        input,
        output,
        key: job.key,
        format: job.format,
        chunk_log2: job.chunk_log2,
        overwrite,
        durability: job.durability,
    };
    match offline::tree_file(job.op, ring, &file_job) {
        Ok(outcome) => {
            let mut summary = shared.summary();
            summary.files_ok += 1;
            summary.bytes_in += outcome.bytes_in;
            summary.bytes_out += outcome.bytes_out;
        }
        Err(err) => shared.fail(input.to_path_buf(), err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_inside_the_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let job = TreeJob {
            op: FileOp::Encrypt,
            input: dir.path(),
            output: &dir.path().join("out"),
            key: None,
            format: Format::Ringcrypt,
            chunk_log2: 12,
            overwrite: false,
            skip_existing: false,
            partition: None,
            durability: Durability::None,
            workers: 1,
        };
        let err = check_roots(&job).unwrap_err();
        assert_eq!(err.code, Code::BadRequest);
        assert!(err.message.contains("inside the input"), "{}", err.message);
    }
}
