//! Tree jobs on the shard that received them (the aggregator): starting one, walking it a
//! step per loop turn with its caller's rights, sending each file found to its owner shard,
//! counting each result that comes back, and sending progress and the one final line.
//! Batches run the same way, their files taken from the request's list, each answered with
//! its own `file` line as it ends.
//!
//! What this room does not do: walk directories (`tree_job` does) or run the files (their
//! owner shards do, as ordinary file jobs).

use crate::daemon::creds::ActAs;
use crate::daemon::metrics::JobResult;
use crate::daemon::tree_job::{FileResult, TreeJob};
use crate::error::{Code, Error};
use crate::limits::MAX_TREES_PER_SHARD;
use crate::protocol::{self, BatchFileEnd, BatchSpec, FileJobSpec, JobInfo, JobState};
use std::path::PathBuf;

use super::{Msg, ReplyTo, Shard, audit, error_line};

/// A tree job and where its replies go.
pub(super) struct Tree {
    pub job: TreeJob,
    pub reply: ReplyTo,
    pub wait: bool,
}

impl Shard {
    /// Sends a tree file's result to its tree (here or on the tree's shard).
    pub(super) fn answer_tree(
        &mut self,
        reply: &ReplyTo,
        input: PathBuf,
        size: u64,
        result: FileResult,
    ) {
        let tree = reply.tree.expect("only for tree files");
        self.deliver(
            reply.shard,
            Msg::TreeResult {
                tree,
                item: reply.item,
                input,
                size,
                result,
            },
        );
    }

    /// The refusal for one more tree or batch when this shard runs
    /// [`MAX_TREES_PER_SHARD`] already.
    fn too_many_trees(&self) -> Option<Error> {
        (self.trees.len() >= MAX_TREES_PER_SHARD).then(|| {
            Error::new(
                Code::Busy,
                format!(
                    "this shard already runs {MAX_TREES_PER_SHARD} trees and batches, the most \
                     it takes at once; retry when one ends"
                ),
            )
        })
    }

    pub(super) fn start_tree(&mut self, key: u64, spec: FileJobSpec, reply: ReplyTo) {
        if let Some(err) = self.too_many_trees() {
            if let Some(caller) = &spec.caller {
                audit::request_of_spec(caller, &spec, audit::Verdict::Refused(&err));
            }
            self.queue_line(key, &error_line(reply.id.as_ref(), &err), true);
            self.recycle(self.index, spec.input, spec.output);
            return;
        }
        let id = self.jobs.next_id();
        let wait = spec.wait;
        // For the audit record of a refusal: the walk takes the spec.
        let asked = spec.clone();
        // The walk opens and makes directories with the caller's rights, as its files do.
        let started = match ActAs::maybe(self.run_as(&spec).map(|c| &**c)) {
            Ok(_acting) => TreeJob::start(id, spec, &self.shared.roots),
            Err(err) => Err(Error::io(
                "take on the caller's identity for",
                &spec.input,
                err,
            )),
        };
        match started {
            Ok(job) => {
                if let Some(caller) = &job.spec.caller {
                    audit::request_of_spec(caller, &job.spec, audit::Verdict::Accepted(Some(id)));
                }
                let reply_id = reply.id.as_ref();
                self.queue_with(key, !wait, |out| {
                    protocol::write_accepted(out, reply_id, id);
                });
                // The loop walks it on its next turn.
                self.trees.insert(id.seq, Tree { job, reply, wait });
            }
            Err(err) => {
                if let Some(caller) = &asked.caller {
                    audit::request_of_spec(caller, &asked, audit::Verdict::Refused(&err));
                }
                self.queue_line(key, &error_line(reply.id.as_ref(), &err), true)
            }
        }
    }

    /// Starts a batch: nothing is opened until its files go out, so it always starts
    /// (each file that cannot run fails alone, with its own `file` line).
    pub(super) fn start_batch(&mut self, key: u64, batch: BatchSpec, reply: ReplyTo) {
        let files = batch.inputs.len() as u64;
        if let Some(err) = self.too_many_trees() {
            if let Some(caller) = &batch.spec.caller {
                audit::request_of_batch(caller, &batch.spec, files, audit::Verdict::Refused(&err));
            }
            self.queue_line(key, &error_line(reply.id.as_ref(), &err), true);
            return;
        }
        let id = self.jobs.next_id();
        let wait = batch.spec.wait;
        let job = TreeJob::start_batch(id, batch);
        if let Some(caller) = &job.spec.caller {
            audit::request_of_batch(caller, &job.spec, files, audit::Verdict::Accepted(Some(id)));
        }
        let reply_id = reply.id.as_ref();
        self.queue_with(key, !wait, |out| {
            protocol::write_accepted(out, reply_id, id);
        });
        // The loop hands out its first files on its next turn.
        self.trees.insert(id.seq, Tree { job, reply, wait });
    }

    /// Writes a batch file's `file` line, if the batch's caller waits for answers.
    fn batch_file_line(&mut self, seq: u64, item: u32, end: &BatchFileEnd) {
        let Some(tree) = self.trees.get(&seq) else {
            return;
        };
        if !tree.wait || !tree.job.is_batch() {
            return;
        }
        let (conn, id, job) = (tree.reply.conn, tree.reply.id.clone(), tree.job.id);
        // Sent with the next lines, or before the loop sleeps: a batch's files end many at
        // a time, and one send each would wake the client once per file.
        let waits = self.conns.queue_deferred(
            conn,
            |out| protocol::write_file_end(out, id.as_ref(), job, item as usize, end),
            &mut self.reactor,
        );
        if waits && !self.deferred_sends.contains(&conn) {
            self.deferred_sends.push(conn);
        }
    }

    /// Walks every tree that has room for more files; returns whether any did. Called by
    /// the loop only, once a turn: results and retries wait for the next turn, so walking
    /// never nests inside the handling of a result.
    pub(super) fn pump_trees(&mut self) -> bool {
        // The lists are kept from turn to turn, so a walk step allocates none.
        let mut ready = std::mem::take(&mut self.tree_ready);
        let mut specs = std::mem::take(&mut self.tree_specs);
        ready.clear();
        ready.extend(
            self.trees
                .iter()
                .filter(|(_, t)| t.job.wants_step())
                .map(|(&k, _)| k),
        );
        for seq in &ready {
            specs.clear();
            let Some(tree) = self.trees.get(seq) else {
                continue;
            };
            let caller = self.run_as(&tree.job.spec).cloned();
            let acting = ActAs::maybe(caller.as_deref());
            let Some(tree) = self.trees.get_mut(seq) else {
                continue;
            };
            match acting {
                Ok(_acting) => tree
                    .job
                    .step(&self.shared.roots, &mut specs, &mut self.spares),
                Err(err) => {
                    let err = Error::io(
                        "take on the caller's identity for",
                        &tree.job.spec.input,
                        err,
                    );
                    tree.job.abort(err);
                }
            }
            let refused = self
                .trees
                .get_mut(seq)
                .map(|tree| std::mem::take(&mut tree.job.refused))
                .unwrap_or_default();
            for (item, err) in refused {
                self.batch_file_line(*seq, item, &BatchFileEnd::Failed(&err));
            }
            for (spec, item) in specs.drain(..) {
                let reply = ReplyTo {
                    shard: self.index,
                    conn: 0,
                    id: None,
                    tree: Some(*seq),
                    item,
                };
                let owner = self.shared.owner_of(&spec.input);
                if owner == self.index {
                    self.submit(spec, reply, None);
                } else if let Err(Msg::Submit { spec, reply }) =
                    self.shared.send(owner, Msg::Submit { spec, reply })
                {
                    let input = spec.input.clone();
                    self.answer_tree(&reply, input, 0, FileResult::Busy(Box::new(spec)));
                }
            }
            self.tree_progress(*seq);
            // A tree whose walk found no file (or whose files all came back during the
            // step) ends here: no result will arrive to end it.
            if self.trees.get(seq).is_some_and(|t| t.job.is_finished()) {
                self.tree_result_finish(*seq);
            }
        }
        let any = !ready.is_empty();
        self.tree_ready = ready;
        self.tree_specs = specs;
        any
    }

    pub(super) fn tree_result(
        &mut self,
        seq: u64,
        item: u32,
        input: &std::path::Path,
        size: u64,
        result: FileResult,
    ) {
        let end = match &result {
            FileResult::Done {
                bytes_in,
                bytes_out,
                micros,
            } => Some(BatchFileEnd::Done {
                bytes_in: *bytes_in,
                bytes_out: *bytes_out,
                micros: *micros,
            }),
            FileResult::Skipped => Some(BatchFileEnd::Skipped),
            FileResult::Failed(err) => Some(BatchFileEnd::Failed(err)),
            FileResult::Busy(_) => None,
        };
        if let Some(end) = end {
            self.batch_file_line(seq, item, &end);
        }
        let Some(tree) = self.trees.get_mut(&seq) else {
            return;
        };
        tree.job.on_result(input, item, size, result);
        if !tree.job.is_finished() {
            // The loop walks on (or retries) on its next turn.
            self.tree_progress(seq);
            return;
        }
        self.tree_result_finish(seq);
    }

    /// Ends a finished tree: metrics, the job record, and its one `done` (or `error`).
    pub(super) fn tree_result_finish(&mut self, seq: u64) {
        let Tree {
            mut job,
            reply,
            wait,
        } = self.trees.remove(&seq).expect("present");
        let report = job.report();
        let cancelled = job.is_cancelled();
        let result = match (cancelled, report.files_failed) {
            (true, _) => JobResult::Cancelled,
            (false, 0) => JobResult::Ok,
            _ => JobResult::Failed,
        };
        self.metrics
            .job_ended(job.spec.op, result, report.micros as f64 / 1e6);
        let progress = job.progress();
        let state = match result {
            JobResult::Ok => JobState::Done,
            JobResult::Failed => JobState::Failed,
            JobResult::Cancelled => JobState::Cancelled,
        };
        // Why it did not succeed, for its record, its status and its `error` line.
        let error = if cancelled && job.is_batch() {
            Some(Error::new(
                Code::Cancelled,
                format!(
                    "the batch was cancelled after {} of its {} files ({} failed); the rest \
                     were not started",
                    report.files_ok + report.files_failed + report.files_skipped,
                    progress.files_total,
                    report.files_failed
                ),
            ))
        } else if cancelled {
            Some(Error::new(
                Code::Cancelled,
                format!(
                    "{}: the tree job was cancelled after {} files ({} failed)",
                    job.spec.input.display(),
                    report.files_ok,
                    report.files_failed
                ),
            ))
        } else {
            let whose = if job.is_batch() { "batch" } else { "tree" };
            report.failures.first().map(|first| {
                Error::new(
                    first.code,
                    format!(
                        "{} of the {whose}'s files failed; the first: {}: {}",
                        report.files_failed,
                        first.path.display(),
                        first.message
                    ),
                )
            })
        };
        audit::tree_ended(&job.spec, job.is_batch(), result, &report, error.as_ref());
        let line = match (&error, wait) {
            (_, false) => None,
            (Some(err), true) if cancelled => Some(error_line(reply.id.as_ref(), err)),
            _ => Some(protocol::done(reply.id.as_ref(), &report)),
        };
        // The tree's request was parsed here; its paths move into the record.
        self.remember(
            JobInfo {
                job: job.id,
                op: job.spec.op,
                input: std::mem::take(&mut job.spec.input),
                output: std::mem::take(&mut job.spec.output),
                state,
                bytes_done: progress.bytes_done,
                bytes_total: progress.bytes_total,
                error,
            },
            self.index,
        );
        if let Some(line) = line {
            self.queue_line(reply.conn, &line, true);
        }
    }

    pub(super) fn tree_progress(&mut self, seq: u64) {
        let Some(tree) = self.trees.get_mut(&seq) else {
            return;
        };
        // A batch answers each file with its own line: `progress` only when asked.
        if !tree.wait || (tree.job.is_batch() && !tree.job.spec.progress) {
            return;
        }
        if let Some(progress) = tree.job.progress_due() {
            let id = tree.reply.id.clone();
            let conn = tree.reply.conn;
            self.queue_with(conn, false, |out| {
                protocol::write_progress(out, id.as_ref(), &progress);
            });
        }
    }
}
