//! Tree jobs on the shard that received them (the aggregator): starting one, walking it a
//! step per loop turn with its caller's rights, sending each file found to its owner shard,
//! counting each result that comes back, and sending progress and the one final line.
//!
//! What this room does not do: walk directories (`tree_job` does) or run the files (their
//! owner shards do, as ordinary file jobs).

use crate::daemon::creds::ActAs;
use crate::daemon::metrics::JobResult;
use crate::daemon::tree_job::{FileResult, TreeJob};
use crate::error::{Code, Error};
use crate::protocol::{self, FileJobSpec, JobInfo, JobState};
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
                input,
                size,
                result,
            },
        );
    }

    pub(super) fn start_tree(&mut self, key: u64, spec: FileJobSpec, reply: ReplyTo) {
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
            for spec in specs.drain(..) {
                let reply = ReplyTo {
                    shard: self.index,
                    conn: 0,
                    id: None,
                    tree: Some(*seq),
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
        input: &std::path::Path,
        size: u64,
        result: FileResult,
    ) {
        let Some(tree) = self.trees.get_mut(&seq) else {
            return;
        };
        tree.job.on_result(input, size, result);
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
        let error = if cancelled {
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
            report.failures.first().map(|first| {
                Error::new(
                    first.code,
                    format!(
                        "{} of the tree's files failed; the first: {}: {}",
                        report.files_failed,
                        first.path.display(),
                        first.message
                    ),
                )
            })
        };
        audit::tree_ended(&job.spec, result, &report, error.as_ref());
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
        if !tree.wait {
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
