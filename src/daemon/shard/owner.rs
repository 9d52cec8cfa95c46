//! File jobs on their owner shard: a submitted job decided (attached, queued or `busy`,
//! by the [`JobTable`](super::jobs::JobTable)), started when buffers are free, run with its
//! caller's identity, and ended: every waiter answered, the record kept, the paths sent home
//! for reuse. Also `cancel`, `status` and the shard's part of `jobs` and `stats`.
//!
//! What this room does not do: run a job's steps (`job` does, on completions the shard's
//! loop hands it) or read requests (`on_line` in the shard's loop).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::daemon::creds::Caller;
use crate::daemon::job::{BUFFERS_PER_JOB, FileJob, JobCtx, JobOutcome, Passed};
use crate::daemon::metrics::JobResult;
use crate::daemon::reactor::BufId;
use crate::daemon::tree_job::FileResult;
use crate::error::{Code, Error};
use crate::limits::RANGE_JOBS_RESERVED_PER_SHARD;
use crate::protocol::{self, FileJobSpec, FileOp, JobId, JobInfo, JobState, ShardStats};

use super::audit;
use super::jobs::{self, Decision, Waiter, Waiters};
use super::{Msg, Reply, ReplyTo, Shard, unknown_job};

/// The audit record of a single-file request, decided here on its owner shard (its caller
/// was attached when the line was read).
fn audit_request(spec: &FileJobSpec, verdict: audit::Verdict) {
    if let Some(caller) = &spec.caller {
        audit::request_of_spec(caller, spec, verdict);
    }
}

impl Shard {
    /// Sends a `progress` line to each waiter that asked for one (`progress`), for every
    /// running file job whose last report is at least `PROGRESS_EVERY` old. Called on the
    /// loop's tick; allocates only when a report is due.
    pub(super) fn file_progress(&mut self) {
        let mut due = Vec::new();
        for slot in self.jobs.running_iter_mut() {
            let waiters = std::iter::once(&slot.waiters.first).chain(&slot.waiters.more);
            if !waiters.clone().any(|w| w.progress) || slot.job.is_finished() {
                continue;
            }
            let Some(progress) = slot.job.progress_due() else {
                continue;
            };
            for waiter in waiters.filter(|w| w.progress) {
                due.push((waiter.reply.clone(), progress.clone()));
            }
        }
        for (to, progress) in due {
            self.reply(&to, Reply::Progress(progress), false);
        }
    }

    pub(super) fn refuse(&mut self, reply: &ReplyTo, err: Error) {
        self.reply(reply, Reply::Error(err), true);
    }

    pub(super) fn submit(&mut self, spec: FileJobSpec, reply: ReplyTo, passed: Option<Passed>) {
        let waiter = Waiter {
            wait: spec.wait,
            progress: spec.wait && spec.progress && reply.tree.is_none(),
            reply,
        };
        if self.shutdown.is_some() {
            let err = Error::new(
                Code::ShuttingDown,
                "the daemon is shutting down; it takes no new work",
            );
            if waiter.reply.tree.is_some() {
                self.answer_tree(
                    &waiter.reply,
                    spec.input.clone(),
                    0,
                    FileResult::Failed(err),
                );
            } else {
                audit_request(&spec, audit::Verdict::Refused(&err));
                self.refuse(&waiter.reply, err);
            }
            return;
        }
        match self.jobs.decide(&spec, passed.is_some()) {
            Decision::Attach(id) => {
                // The same work is in flight: attach to it; it runs once.
                if waiter.reply.tree.is_none() {
                    audit_request(&spec, audit::Verdict::Accepted(Some(id)));
                    self.reply(&waiter.reply, Reply::Accepted(id), !waiter.wait);
                }
                let home = waiter.reply.shard;
                self.jobs.attach(id, waiter);
                // The running job has the same paths; this spec's buffers go back.
                self.recycle(home, spec.input, spec.output);
            }
            Decision::Busy if waiter.reply.tree.is_some() => {
                // Trees wait for capacity: the file goes back to its tree for a retry.
                let input = spec.input.clone();
                self.answer_tree(&waiter.reply, input, 0, FileResult::Busy(Box::new(spec)));
            }
            Decision::Busy => {
                let err = Error::new(Code::Busy, "this shard's job queue is full; retry shortly");
                audit_request(&spec, audit::Verdict::Refused(&err));
                self.refuse(&waiter.reply, err);
                self.recycle(waiter.reply.shard, spec.input, spec.output);
            }
            Decision::Queue(id) => {
                if waiter.reply.tree.is_none() {
                    audit_request(&spec, audit::Verdict::Accepted(Some(id)));
                    self.reply(&waiter.reply, Reply::Accepted(id), !waiter.wait);
                }
                self.jobs.enqueue(id, spec, passed, waiter);
                self.admit();
            }
        }
    }

    /// Starts queued jobs while buffers last. A job that ends while being started calls
    /// this again from inside the loop below: that call returns at once, and the loop goes
    /// on, so starting never recurses.
    pub(super) fn admit(&mut self) {
        if self.admitting {
            return;
        }
        self.admitting = true;
        self.start_queued();
        self.admitting = false;
        self.metrics.jobs(self.jobs.queued(), self.jobs.running());
    }

    pub(super) fn start_queued(&mut self) {
        // Ranges first, on any free buffers; ordinary jobs leave the ranges' reserve free
        // (see `limits::RANGE_JOBS_RESERVED_PER_SHARD`).
        if !self.start_ranges() {
            return;
        }
        let reserve = usize::from(RANGE_JOBS_RESERVED_PER_SHARD) * BUFFERS_PER_JOB;
        while self.reactor.free_buffers() >= BUFFERS_PER_JOB + reserve {
            let Some(queued) = self.jobs.pop_queued() else {
                return;
            };
            let bufs: [BufId; BUFFERS_PER_JOB] = std::array::from_fn(|_| {
                self.reactor
                    .acquire()
                    .expect("enough buffers are free, checked above")
            });
            let slot = self.jobs.free_slot();
            let run_as = self.run_as(&queued.spec).cloned();
            let mut job = FileJob::new(queued.id, queued.spec, queued.passed, slot as u32, bufs);
            if let Some(caller) = run_as {
                match self.reactor.identity(&caller) {
                    Ok(who) => job.run_as(who),
                    Err(err) => job.refuse(Error::new(
                        Code::Internal,
                        format!(
                            "cannot take on the credentials of uid {}: {err}",
                            caller.uid
                        ),
                    )),
                }
            }
            self.jobs.run(slot, job, queued.waiters);
            self.with_job(slot, |job, ctx| job.start(ctx));
        }
    }

    /// The identity a job's path ops run with: the caller's, unless the caller is root or
    /// the daemon's own uid (or the operator chose the daemon's rights for everyone). Jobs
    /// on passed descriptors open nothing, so they need none.
    pub(super) fn run_as<'s>(&self, spec: &'s FileJobSpec) -> Option<&'s Arc<Caller>> {
        spec.caller.as_ref().filter(|caller| {
            !spec.fds && self.shared.act_as_callers && !caller.is_admin(self.shared.daemon_uid)
        })
    }

    pub(super) fn with_job(&mut self, slot: usize, f: impl FnOnce(&mut FileJob, &mut JobCtx)) {
        let Some(entry) = self.jobs.running_mut(slot) else {
            return;
        };
        let mut ctx = JobCtx {
            reactor: &mut self.reactor,
            ring: &self.ring,
            roots: &self.shared.roots,
            root_files: &self.root_files,
            durability: self.shared.durability,
            chunk_log2: self.shared.chunk_log2,
            metrics: &self.metrics,
            shard: self.index,
            shards: self.shared.inboxes.len(),
            split_min: self.shared.split_min,
            io: self.shared.io,
            umask: self.shared.umask,
        };
        f(&mut entry.job, &mut ctx);
        let finished = entry.job.is_finished();
        let dir_sync = entry.job.take_dir_sync();
        self.split_requests(slot);
        if let Some(wanted) = dir_sync {
            self.join_dir_sync(slot, wanted);
        }
        if finished {
            self.finish(slot);
        }
    }

    pub(super) fn finish(&mut self, slot: usize) {
        let Some(jobs::Slot { mut job, waiters }) = self.jobs.remove(slot) else {
            return;
        };
        for buf in job.buffers() {
            self.reactor.release(buf);
        }
        if let Some(who) = job.who() {
            self.reactor.release_identity(who);
        }
        if let Some(owner) = job.range_of() {
            // A range of another shard's file: its bytes count here, its result there.
            let written = job.bytes_written();
            self.stats.bytes_in += job.bytes_in;
            self.stats.bytes_out += written;
            let inbox = &self.shared.inboxes[self.index];
            inbox.bytes_out.fetch_add(written, Ordering::Relaxed);
            self.range_ended(owner, job.outcome().map(|_| ()));
            self.admit();
            return;
        }
        let outcome = job.outcome();
        let state = match &outcome {
            Ok(_) => JobState::Done,
            Err(err) if err.code == Code::Cancelled => JobState::Cancelled,
            Err(_) => JobState::Failed,
        };
        let result = match state {
            JobState::Done => JobResult::Ok,
            JobState::Cancelled => JobResult::Cancelled,
            _ => JobResult::Failed,
        };
        self.metrics
            .job_ended(job.spec.op, result, job.elapsed().as_secs_f64());
        if let (FileOp::Verify, Err(err)) = (job.spec.op, &outcome)
            && state == JobState::Failed
        {
            self.metrics.verify_failed(err.code);
        }
        let written = job.bytes_written();
        self.stats.bytes_in += job.bytes_in;
        self.stats.bytes_out += written;
        self.stats.jobs_done += 1;
        let inbox = &self.shared.inboxes[self.index];
        inbox.jobs_done.fetch_add(1, Ordering::Relaxed);
        inbox.bytes_out.fetch_add(written, Ordering::Relaxed);
        // The spec's paths were made where the first waiter's replies go: the connection's
        // shard parsed the request (and runs jobs on passed descriptors itself), a tree's
        // shard built its files' specs. Room is made in the record first, so the buffers
        // it frees travel ahead of the replies: the request a reply prompts finds them.
        let home = waiters.first.reply.shard;
        if let Some(evicted) = self.jobs.make_room() {
            self.recycle(evicted.home, evicted.info.input, evicted.info.output);
        }
        let size = job.input_len();
        let tree = waiters.first.reply.tree.map(|seq| JobId {
            shard: home as u32,
            seq,
        });
        audit::job_ended(&audit::Ended {
            id: job.id,
            spec: &job.spec,
            tree,
            outcome: &outcome,
            bytes_in: job.bytes_in,
            bytes_out: job.bytes_out,
            micros: job.elapsed().as_micros() as u64,
        });
        self.answer_waiters(waiters, job.id, &job.spec, size, &outcome);
        // The job is over: its paths move into the record of finished jobs, with the
        // error that ended it.
        self.remember(
            JobInfo {
                job: job.id,
                op: job.spec.op,
                input: std::mem::take(&mut job.spec.input),
                output: std::mem::take(&mut job.spec.output),
                state,
                bytes_done: job.progress_in(),
                bytes_total: job.input_len(),
                error: outcome.err(),
            },
            home,
        );
        self.admit();
    }

    /// Gives every waiter of an ended job its one final answer: a `done` or `error` line
    /// for a request, a result for a tree's file (whatever ended it: the job, a cancel, a
    /// shutdown), so no tree is left waiting for a file and no client for a reply.
    pub(super) fn answer_waiters(
        &mut self,
        waiters: Waiters,
        id: JobId,
        spec: &FileJobSpec,
        size: u64,
        outcome: &Result<JobOutcome, Error>,
    ) {
        for waiter in waiters.into_iter().filter(|w| w.wait) {
            if waiter.reply.tree.is_some() {
                // The input path names a failure; a file that did not fail needs none.
                let (result, input) = match outcome {
                    Ok(done) if done.skipped => (FileResult::Skipped, PathBuf::new()),
                    Ok(done) => (
                        FileResult::Done {
                            bytes_in: done.bytes_in,
                            bytes_out: done.bytes_out,
                            micros: done.micros,
                        },
                        PathBuf::new(),
                    ),
                    Err(err) => (FileResult::Failed(err.clone()), spec.input.clone()),
                };
                self.answer_tree(&waiter.reply, input, size, result);
                continue;
            }
            let answer = match outcome {
                Ok(done) => {
                    let skipped = if done.skipped {
                        vec![protocol::Skipped {
                            path: spec.output.clone(),
                            reason: crate::tree_rules::REASON_EXISTS.into(),
                        }]
                    } else {
                        Vec::new()
                    };
                    Reply::Done(protocol::DoneReport {
                        job: id,
                        bytes_in: done.bytes_in,
                        bytes_out: done.bytes_out,
                        micros: done.micros,
                        files_ok: u64::from(!done.skipped),
                        files_failed: 0,
                        files_skipped: u64::from(done.skipped),
                        failures: Vec::new(),
                        skipped,
                    })
                }
                Err(err) => Reply::Error(err.clone()),
            };
            self.reply(&waiter.reply, answer, true);
        }
    }

    /// Records an ended job whose paths were made on shard `home`; the record it pushes out
    /// sends its paths home for reuse.
    pub(super) fn remember(&mut self, info: JobInfo, home: usize) {
        if let Some(evicted) = self.jobs.remember(info, home) {
            self.recycle(evicted.home, evicted.info.input, evicted.info.output);
        }
    }

    /// Gives a spec's path buffers back to the shard that made them. A full inbox or pool
    /// drops them instead: recycling saves an allocation, it is never worth a wait.
    pub(super) fn recycle(&mut self, home: usize, input: PathBuf, output: PathBuf) {
        if home == self.index {
            self.spares.give(input);
            self.spares.give(output);
        } else {
            let _ = self.shared.send(home, Msg::Recycle { input, output });
        }
    }

    pub(super) fn job_info(&self, id: JobId) -> Option<JobInfo> {
        if let Some(tree) = self.trees.get(&id.seq) {
            let progress = tree.job.progress();
            return Some(JobInfo {
                job: id,
                op: tree.job.spec.op,
                input: tree.job.spec.input.clone(),
                output: tree.job.spec.output.clone(),
                state: JobState::Running,
                bytes_done: progress.bytes_done,
                bytes_total: progress.bytes_total,
                error: None,
            });
        }
        self.jobs.info(id)
    }

    pub(super) fn all_jobs(&self) -> Vec<JobInfo> {
        let mut out: Vec<JobInfo> = self
            .trees
            .keys()
            .filter_map(|&seq| {
                self.job_info(JobId {
                    shard: self.index as u32,
                    seq,
                })
            })
            .collect();
        out.extend(self.jobs.all());
        out
    }

    pub(super) fn current_stats(&self) -> ShardStats {
        ShardStats {
            queued: self.jobs.queued() as u64,
            running: self.jobs.running() as u64,
            ..self.stats.clone()
        }
    }

    pub(super) fn cancel(&mut self, id: JobId, reply: ReplyTo) {
        if let Some(tree) = self.trees.get_mut(&id.seq) {
            // The walk stops; files already handed out finish, then the tree ends with a
            // `cancelled` error.
            tree.job.cancel();
            self.reply(&reply, Reply::Cancelled(id), true);
            if self.trees[&id.seq].job.is_finished() {
                self.tree_result_finish(id.seq);
            }
            return;
        }
        if let Some(queued) = self.jobs.remove_queued(id) {
            self.metrics
                .job_ended(queued.spec.op, JobResult::Cancelled, 0.0);
            self.metrics.jobs(self.jobs.queued(), self.jobs.running());
            let err = Error::new(
                Code::Cancelled,
                format!("{}: the job was cancelled", queued.spec.input.display()),
            );
            // As in `finish`: the first waiter's shard made the spec.
            let home = queued.waiters.first.reply.shard;
            let outcome = Err(err);
            audit::job_ended(&audit::Ended {
                id,
                spec: &queued.spec,
                tree: queued.waiters.first.reply.tree.map(|seq| JobId {
                    shard: home as u32,
                    seq,
                }),
                outcome: &outcome,
                bytes_in: 0,
                bytes_out: 0,
                micros: 0,
            });
            self.answer_waiters(queued.waiters, id, &queued.spec, 0, &outcome);
            self.remember(
                JobInfo {
                    job: id,
                    op: queued.spec.op,
                    input: queued.spec.input,
                    output: queued.spec.output,
                    state: JobState::Cancelled,
                    bytes_done: 0,
                    bytes_total: 0,
                    error: outcome.err(),
                },
                home,
            );
            self.reply(&reply, Reply::Cancelled(id), true);
            return;
        }
        if let Some(slot) = self.jobs.slot_of(id) {
            self.with_job(slot, |job, ctx| job.cancel(ctx));
            self.reply(&reply, Reply::Cancelled(id), true);
            return;
        }
        let err = match self.jobs.ended(id) {
            Some(info) => Error::new(
                Code::NotFound,
                format!(
                    "job {id} already ended ({}); there is nothing to cancel",
                    info.state.as_str()
                ),
            ),
            None => unknown_job(id),
        };
        self.reply(&reply, Reply::Error(err), true);
    }
}
