//! Range splitting: one large file on every shard.
//!
//! A file of at least `--split-min-mib` (`limits::SPLIT_MIN_BYTES` by default) is cut, on
//! its owner, into contiguous ranges of batches, one per shard (each at least half that). The
//! owner keeps the first range and sends each other one to another shard as a
//! [`RangeWork`] message: copies of the input and output descriptors, the file's codec
//! forked at the range's first record (every record has its own IV and tag under the
//! header's keys, so ranges are independent), and the range's bounds. That shard runs it
//! as a job of its own, on its own reactor and buffers, writing at the range's offsets
//! into the same temp file, and reports the result to the owner. No lock is shared: the
//! ranges and their results are messages; progress is two atomic counters.
//!
//! The owner links the file only when its own range and every other one are done; the
//! final record is sealed or opened by whichever range holds it, and stays last because
//! every range writes at its own offsets. A failure or a cancel in any range fails the
//! whole file: the owner cancels the ranges still out and waits for them all before it
//! cleans up, so nothing is linked and no range writes after the owner is gone.
//!
//! What this room does not do: send the messages (the shard takes them from the job after
//! each call) or decide which shard runs a range beyond naming it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Bytes read and written by a split file's ranges on other shards, summed into the
/// owner's progress.
#[derive(Default)]
pub(super) struct SplitProgress {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl SplitProgress {
    pub(super) fn add(&self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    fn get(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }
}

/// One range of a split file, for the shard that runs it (boxed in its message).
pub struct RangeWork {
    /// The file's job on its owner shard, which the result goes back to.
    pub owner: JobId,
    /// Which shard runs it.
    pub shard: usize,
    spec: FileJobSpec,
    input: OwnedFd,
    output: Option<OwnedFd>,
    /// The file runs with direct IO: its `O_DIRECT` descriptors.
    direct: Option<direct::DirectFds>,
    /// The input's length (a direct range's reads may ask past it, to a whole block).
    in_len: u64,
    codec: Codec,
    first_batch: u64,
    end_batch: u64,
    progress: Arc<SplitProgress>,
}

impl RangeWork {
    /// The file's input path, to name it in a refusal.
    pub fn input(&self) -> &Path {
        &self.spec.input
    }
}

/// On the owner: its file's ranges on other shards.
pub(super) struct Split {
    progress: Arc<SplitProgress>,
    /// Ranges sent and not yet reported.
    out: usize,
    /// The shards running a range, for a cancel.
    shards: Vec<usize>,
    /// The owner's own range is written.
    own_done: bool,
    /// Ranges for the shard to send after this call.
    to_send: Vec<RangeWork>,
    /// The shard is to cancel the ranges out (set once, on the first failure).
    cancel: bool,
    cancel_sent: bool,
}

/// On the shard running a range: whose range it is.
pub(super) struct PartOf {
    pub(super) owner: JobId,
    pub(super) progress: Arc<SplitProgress>,
}

/// What a job asks its shard to do for its ranges after a call.
pub enum SplitRequest {
    /// Send each range to its shard.
    Send(Vec<RangeWork>),
    /// Cancel the ranges of job `owner` on these shards.
    Cancel { owner: JobId, shards: Vec<usize> },
}

impl FileJob {
    /// A job that runs one range of another shard's file.
    pub fn for_range(
        id: JobId,
        work: Box<RangeWork>,
        slot: u32,
        bufs: [BufId; BUFFERS_PER_JOB],
        reactor: &mut Reactor,
    ) -> FileJob {
        let RangeWork {
            owner,
            spec,
            input,
            output,
            direct,
            in_len,
            codec,
            first_batch,
            end_batch,
            progress,
            ..
        } = *work;
        let mut job = FileJob::new(id, spec, None, slot, bufs);
        job.on_passed = true;
        job.stage = Stage::Streaming(OpenFiles {
            input: reactor.adopt(input),
            temp: output.map(|output| reactor.adopt(output)),
            dir: None,
        });
        job.direct = direct.map(|fds| fds.adopt(reactor));
        job.in_len = in_len;
        job.codec = Some(codec);
        job.next_read = first_batch;
        job.next_process = first_batch;
        job.end_batch = end_batch;
        job.part_of = Some(PartOf { owner, progress });
        job
    }

    /// The file job this range belongs to, for a job that runs one.
    pub fn range_of(&self) -> Option<JobId> {
        self.part_of.as_ref().map(|part| part.owner)
    }

    /// Bytes read so far, the file's ranges on other shards included.
    pub fn progress_in(&self) -> u64 {
        self.bytes_in + self.split.as_ref().map_or(0, |s| s.progress.get().0)
    }

    /// Bytes read and written, the other shards' ranges included.
    pub(super) fn totals(&self) -> (u64, u64) {
        let (more_in, more_out) = self.split.as_ref().map_or((0, 0), |s| s.progress.get());
        (self.bytes_in + more_in, self.bytes_out + more_out)
    }

    /// What the shard must send for this job's ranges, once.
    pub fn split_request(&mut self) -> Option<SplitRequest> {
        let split = self.split.as_mut()?;
        if !split.to_send.is_empty() {
            return Some(SplitRequest::Send(std::mem::take(&mut split.to_send)));
        }
        if split.cancel && !split.cancel_sent {
            split.cancel_sent = true;
            return Some(SplitRequest::Cancel {
                owner: self.id,
                shards: split.shards.clone(),
            });
        }
        None
    }

    /// With the codec known and the output open: cuts a large file into ranges, keeps the
    /// first and prepares the others for the shard to send. A small file, a single shard, or
    /// a range itself runs whole.
    pub(super) fn maybe_split(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        let Some(codec) = &self.codec else {
            return Err(self.out_of_order());
        };
        self.end_batch = codec.batches();
        if !codec.splits() {
            return Ok(());
        }
        // Each range holds at least half the threshold, so a file just over it is cut in
        // two, not into as many ranges as there are shards.
        let part_min = (ctx.split_min / 2).max(1);
        let parts = (self.in_len / part_min).min(ctx.shards as u64) as usize;
        let parts = parts.min(self.end_batch as usize);
        if self.part_of.is_some() || ctx.split_min == 0 || self.in_len < ctx.split_min || parts < 2
        {
            return Ok(());
        }
        let files = self.open_files()?;
        let dup = |file: File| -> Result<OwnedFd, Error> {
            ctx.reactor
                .fd(file)
                .and_then(|fd| fd.try_clone_to_owned())
                .map_err(|e| Error::io("split", &self.spec.input, e))
        };
        let batches = self.end_batch;
        let per = batches / parts as u64;
        let progress = Arc::new(SplitProgress::default());
        let mut to_send = Vec::with_capacity(parts - 1);
        let mut shards = Vec::with_capacity(parts - 1);
        for part in 1..parts {
            let first_batch = per * part as u64;
            let end_batch = if part == parts - 1 {
                batches
            } else {
                first_batch + per
            };
            let shard = (ctx.shard + part) % ctx.shards;
            to_send.push(RangeWork {
                owner: self.id,
                shard,
                spec: FileJobSpec::new(
                    self.spec.op,
                    self.spec.input.clone(),
                    self.spec.output.clone(),
                ),
                input: dup(files.input)?,
                output: files.temp.map(dup).transpose()?,
                direct: self.direct_dup(ctx)?,
                in_len: self.in_len,
                codec: codec
                    .fork_at(first_batch)
                    .ok_or_else(|| self.out_of_order())?,
                first_batch,
                end_batch,
                progress: Arc::clone(&progress),
            });
            shards.push(shard);
        }
        self.end_batch = per;
        self.split = Some(Box::new(Split {
            progress,
            out: parts - 1,
            shards,
            own_done: false,
            to_send,
            cancel: false,
            cancel_sent: false,
        }));
        Ok(())
    }

    /// The owner's own range is written: true if the file must still wait for others.
    pub(super) fn waits_for_ranges(&mut self) -> bool {
        match self.split.as_mut() {
            Some(split) if split.out > 0 => {
                split.own_done = true;
                true
            }
            _ => false,
        }
    }

    /// Ranges still out on other shards: the job may not clean up or end before they
    /// report (they write into its output). Asks the shard to cancel them after a failure.
    pub(super) fn ranges_out(&mut self) -> bool {
        let failed = self.failure.is_some();
        match self.split.as_mut() {
            Some(split) if split.out > 0 => {
                split.cancel |= failed;
                true
            }
            _ => false,
        }
    }

    /// One of this file's ranges ended on another shard.
    pub fn range_done(&mut self, ctx: &mut JobCtx, result: Result<(), Error>) {
        let Some(split) = self.split.as_mut() else {
            return;
        };
        split.out = split.out.saturating_sub(1);
        let all_done = split.out == 0 && split.own_done;
        if let Err(err) = result {
            // The first failure names the file; a range cancelled because of it adds nothing.
            return self.fail(ctx, err);
        }
        if self.failure.is_some() {
            self.drain_or_finish(ctx);
        } else if all_done {
            self.end_of_stream(ctx);
        }
    }
}
