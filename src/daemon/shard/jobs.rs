//! A shard's job table: the file jobs it owns, queued and running, and the record of those
//! that ended. Here is where a new request is decided: attached to an identical job already
//! in flight, queued, or refused `busy` ([`JobTable::decide`]); where queued jobs wait for
//! buffers; and where ended jobs are remembered for `status` and `jobs`, oldest dropped
//! first.
//!
//! What this room does not do: run a job (the job and the reactor do), reply (the shard
//! does, with the waiters this table hands back), or allocate buffers.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::daemon::job::{FileJob, Passed};
use crate::limits::{FINISHED_JOBS_KEPT, MAX_QUEUED_JOBS_PER_SHARD};
use crate::protocol::{FileJobSpec, JobId, JobInfo, JobState};

use super::ReplyTo;

/// Someone waiting for a job's end: a request (its connection and id), or a file of a tree.
pub(super) struct Waiter {
    pub reply: ReplyTo,
    /// Send the final `done`/`error` (false: `wait: false`, the `accepted` was all).
    pub wait: bool,
    /// Send `progress` lines while the job runs (the request's `progress`, with `wait`).
    pub progress: bool,
}

/// Who waits for a job: the request that started it, inline, and any identical requests
/// attached later, so an undisputed job needs no list.
pub(super) struct Waiters {
    pub first: Waiter,
    pub more: Vec<Waiter>,
}

impl Waiters {
    pub fn new(first: Waiter) -> Waiters {
        Waiters {
            first,
            more: Vec::new(),
        }
    }
}

impl IntoIterator for Waiters {
    type Item = Waiter;
    type IntoIter = std::iter::Chain<std::iter::Once<Waiter>, std::vec::IntoIter<Waiter>>;

    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self.first).chain(self.more)
    }
}

/// A running job and who waits for it.
pub(super) struct Slot {
    pub job: FileJob,
    pub waiters: Waiters,
}

/// A job waiting for buffers.
pub(super) struct Queued {
    pub id: JobId,
    pub spec: FileJobSpec,
    pub passed: Option<Passed>,
    pub waiters: Waiters,
}

/// An ended job's record, with the shard its paths were made on (which gets them back when
/// the record is dropped).
pub(super) struct Finished {
    pub info: JobInfo,
    pub home: usize,
}

/// What to do with a new file job (see [`JobTable::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// An identical job is in flight: attach to it; the work runs once.
    Attach(JobId),
    /// Queue it as a new job with this id.
    Queue(JobId),
    /// The queue is full.
    Busy,
}

/// See the module docs.
pub(super) struct JobTable {
    shard: u32,
    /// Running jobs, by slot; a slot index is part of each of its ops' tokens.
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    seq_to_slot: HashMap<u64, usize>,
    queue: VecDeque<Queued>,
    /// In-flight jobs by a hash of their (op, input, output), to attach identical requests;
    /// a hit is confirmed against the job's own spec.
    by_key: HashMap<u64, JobId>,
    /// The key of [`JobTable::by_key`]: a random SipHash key, so clients cannot aim
    /// collisions.
    key_hasher: std::hash::RandomState,
    /// Ended jobs, oldest first, at most [`FINISHED_JOBS_KEPT`].
    finished: VecDeque<Finished>,
    next_seq: u64,
}

impl JobTable {
    pub fn new(shard: usize) -> JobTable {
        JobTable {
            shard: shard as u32,
            slots: Vec::new(),
            free_slots: Vec::new(),
            seq_to_slot: HashMap::new(),
            queue: VecDeque::new(),
            by_key: HashMap::new(),
            key_hasher: std::hash::RandomState::new(),
            finished: VecDeque::with_capacity(FINISHED_JOBS_KEPT),
            next_seq: 1,
        }
    }

    /// A new job id on this shard (file jobs and trees share the sequence).
    pub fn next_id(&mut self) -> JobId {
        let id = JobId {
            shard: self.shard,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        id
    }

    fn key(&self, spec: &FileJobSpec) -> u64 {
        self.key_hasher
            .hash_one((spec.op, spec.input.as_path(), spec.output.as_path()))
    }

    /// Decides a new file job: attach it to an in-flight job asking exactly the same
    /// ([`FileJobSpec::same_work`]; never one on passed descriptors, whose paths are only
    /// names), queue it under a new id, or refuse it (`busy`) when
    /// [`MAX_QUEUED_JOBS_PER_SHARD`] jobs wait already. Takes a new id only for `Queue`.
    pub fn decide(&mut self, spec: &FileJobSpec, passed: bool) -> Decision {
        if !passed && let Some(id) = self.identical(spec) {
            return Decision::Attach(id);
        }
        if self.queue.len() >= MAX_QUEUED_JOBS_PER_SHARD {
            return Decision::Busy;
        }
        Decision::Queue(self.next_id())
    }

    /// The in-flight job doing exactly what `spec` asks, if any. Two different jobs whose
    /// keys collide (a 2^-64 chance) are both run.
    fn identical(&self, spec: &FileJobSpec) -> Option<JobId> {
        let id = *self.by_key.get(&self.key(spec))?;
        let found = match self.seq_to_slot.get(&id.seq) {
            Some(&slot) => self.slots[slot].as_ref().map(|s| &s.job.spec),
            None => self.queue.iter().find(|q| q.id == id).map(|q| &q.spec),
        };
        found.filter(|other| other.same_work(spec)).map(|_| id)
    }

    /// Adds a waiter to job `id` (after [`Decision::Attach`]).
    pub fn attach(&mut self, id: JobId, waiter: Waiter) {
        if let Some(&slot) = self.seq_to_slot.get(&id.seq)
            && let Some(running) = self.slots[slot].as_mut()
        {
            running.waiters.more.push(waiter);
        } else if let Some(queued) = self.queue.iter_mut().find(|q| q.id == id) {
            queued.waiters.more.push(waiter);
        }
    }

    /// Queues a new job (after [`Decision::Queue`]).
    pub fn enqueue(
        &mut self,
        id: JobId,
        spec: FileJobSpec,
        passed: Option<Passed>,
        waiter: Waiter,
    ) {
        if passed.is_none() {
            self.by_key.insert(self.key(&spec), id);
        }
        self.queue.push_back(Queued {
            id,
            spec,
            passed,
            waiters: Waiters::new(waiter),
        });
    }

    /// Takes the oldest queued job, to start.
    pub fn pop_queued(&mut self) -> Option<Queued> {
        self.queue.pop_front()
    }

    /// The slot the next started job gets: its ops' tokens name it.
    pub fn free_slot(&mut self) -> usize {
        match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    /// Installs a started job in `slot` (from [`JobTable::free_slot`]).
    pub fn run(&mut self, slot: usize, job: FileJob, waiters: Waiters) {
        self.seq_to_slot.insert(job.id.seq, slot);
        self.slots[slot] = Some(Slot { job, waiters });
    }

    /// Every running job, without allocating.
    pub fn running_iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().flatten()
    }

    pub fn running_mut(&mut self, slot: usize) -> Option<&mut Slot> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// The slot of running job `id`.
    pub fn slot_of(&self, id: JobId) -> Option<usize> {
        self.seq_to_slot.get(&id.seq).copied()
    }

    /// Every running job's slot.
    pub fn running_slots(&self) -> Vec<usize> {
        self.seq_to_slot.values().copied().collect()
    }

    /// Takes an ended job out of its slot.
    pub fn remove(&mut self, slot: usize) -> Option<Slot> {
        let ended = self.slots.get_mut(slot)?.take()?;
        self.free_slots.push(slot);
        self.seq_to_slot.remove(&ended.job.id.seq);
        self.forget_key(&ended.job.spec, ended.job.id);
        Some(ended)
    }

    /// Takes queued job `id` out of the queue (a cancel).
    pub fn remove_queued(&mut self, id: JobId) -> Option<Queued> {
        let pos = self.queue.iter().position(|q| q.id == id)?;
        let queued = self.queue.remove(pos)?;
        self.forget_key(&queued.spec, id);
        Some(queued)
    }

    fn forget_key(&mut self, spec: &FileJobSpec, id: JobId) {
        let key = self.key(spec);
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
    }

    /// Ids of the queued jobs, oldest first.
    pub fn queued_ids(&self) -> Vec<JobId> {
        self.queue.iter().map(|q| q.id).collect()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn running(&self) -> usize {
        self.seq_to_slot.len()
    }

    /// No job queued or running.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.seq_to_slot.is_empty()
    }

    /// Records an ended job whose paths were made on shard `home`; hands back the record
    /// that had to go to make room, if one did (its paths go home for reuse).
    pub fn remember(&mut self, info: JobInfo, home: usize) -> Option<Finished> {
        let evicted = self.make_room();
        self.finished.push_back(Finished { info, home });
        evicted
    }

    /// Drops the oldest record if the record is full, and hands it back.
    pub fn make_room(&mut self) -> Option<Finished> {
        if self.finished.len() < FINISHED_JOBS_KEPT {
            return None;
        }
        self.finished.pop_front()
    }

    /// What is known of job `id` here: running, queued, or ended and still remembered.
    pub fn info(&self, id: JobId) -> Option<JobInfo> {
        if let Some(&slot) = self.seq_to_slot.get(&id.seq) {
            let job = &self.slots[slot].as_ref()?.job;
            if job.range_of().is_some() {
                // A range of another shard's split file: that file's job reports it.
                return None;
            }
            return Some(JobInfo {
                job: id,
                op: job.spec.op,
                input: job.spec.input.clone(),
                output: job.spec.output.clone(),
                state: JobState::Running,
                bytes_done: job.progress_in(),
                bytes_total: job.input_len(),
                error: None,
            });
        }
        if let Some(queued) = self.queue.iter().find(|q| q.id == id) {
            return Some(JobInfo {
                job: id,
                op: queued.spec.op,
                input: queued.spec.input.clone(),
                output: queued.spec.output.clone(),
                state: JobState::Queued,
                bytes_done: 0,
                bytes_total: 0,
                error: None,
            });
        }
        self.ended(id).cloned()
    }

    /// The record of ended job `id`, if still kept.
    pub fn ended(&self, id: JobId) -> Option<&JobInfo> {
        self.finished
            .iter()
            .find(|done| done.info.job == id)
            .map(|done| &done.info)
    }

    /// Every job here: running, then queued, then ended (oldest first).
    pub fn all(&self) -> Vec<JobInfo> {
        let live = self
            .seq_to_slot
            .keys()
            .chain(self.queue.iter().map(|q| &q.id.seq));
        let mut out: Vec<JobInfo> = live
            .filter_map(|&seq| {
                self.info(JobId {
                    shard: self.shard,
                    seq,
                })
            })
            .collect();
        out.extend(self.finished.iter().map(|done| done.info.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FileOp;
    use std::path::PathBuf;

    fn spec(input: &str, output: &str) -> FileJobSpec {
        FileJobSpec::new(FileOp::Encrypt, PathBuf::from(input), PathBuf::from(output))
    }

    fn waiter(conn: u64) -> Waiter {
        Waiter {
            reply: ReplyTo {
                shard: 0,
                conn,
                id: None,
                tree: None,
                item: 0,
            },
            wait: true,
            progress: false,
        }
    }

    fn queue(table: &mut JobTable, spec: FileJobSpec) -> JobId {
        let Decision::Queue(id) = table.decide(&spec, false) else {
            panic!("not queued");
        };
        table.enqueue(id, spec, None, waiter(1));
        id
    }

    #[test]
    fn identical_requests_attach_and_others_do_not() {
        let mut table = JobTable::new(3);
        let id = queue(&mut table, spec("/r/a", "/r/a.rcrypt"));
        assert_eq!(id.shard, 3);
        assert_eq!(
            table.decide(&spec("/r/a", "/r/a.rcrypt"), false),
            Decision::Attach(id)
        );
        table.attach(id, waiter(2));
        assert_eq!(table.queue[0].waiters.more.len(), 1);
        // Anything that changes the output or the verdict makes a job of its own.
        let mut other_key = spec("/r/a", "/r/a.rcrypt");
        other_key.key = Some("k1".into());
        let mut overwrite = spec("/r/a", "/r/a.rcrypt");
        overwrite.overwrite = true;
        let mut caller = spec("/r/a", "/r/a.rcrypt");
        caller.caller = Some(std::sync::Arc::new(crate::daemon::creds::Caller::plain(
            65534, 65534,
        )));
        for different in [other_key, overwrite, caller, spec("/r/a", "/r/b.rcrypt")] {
            assert!(matches!(
                table.decide(&different, false),
                Decision::Queue(_)
            ));
        }
        // Passed descriptors are never merged: their paths are only names.
        assert!(matches!(
            table.decide(&spec("/r/a", "/r/a.rcrypt"), true),
            Decision::Queue(_)
        ));
    }

    #[test]
    fn a_full_queue_is_busy_and_a_cancel_makes_room() {
        let mut table = JobTable::new(0);
        let ids: Vec<JobId> = (0..MAX_QUEUED_JOBS_PER_SHARD)
            .map(|i| queue(&mut table, spec(&format!("/r/{i}"), &format!("/r/{i}.o"))))
            .collect();
        assert_eq!(table.queued(), MAX_QUEUED_JOBS_PER_SHARD);
        assert_eq!(table.decide(&spec("/r/x", "/r/x.o"), false), Decision::Busy);
        // An identical request still attaches when the queue is full: it adds no job.
        assert_eq!(
            table.decide(&spec("/r/0", "/r/0.o"), false),
            Decision::Attach(ids[0])
        );
        let cancelled = table.remove_queued(ids[5]).expect("queued");
        assert_eq!(cancelled.id, ids[5]);
        // Its key is forgotten: the same request now makes a new job.
        assert!(matches!(
            table.decide(&spec("/r/5", "/r/5.o"), false),
            Decision::Queue(_)
        ));
        assert_eq!(table.pop_queued().map(|q| q.id), Some(ids[0]));
    }

    #[test]
    fn the_record_keeps_the_newest_ended_jobs() {
        let mut table = JobTable::new(1);
        let info = |seq| JobInfo {
            job: JobId { shard: 1, seq },
            op: FileOp::Encrypt,
            input: PathBuf::from(format!("/r/{seq}")),
            output: PathBuf::new(),
            state: JobState::Done,
            bytes_done: 0,
            bytes_total: 0,
            error: None,
        };
        let total = FINISHED_JOBS_KEPT as u64 + 10;
        let mut evicted = Vec::new();
        for seq in 1..=total {
            if let Some(gone) = table.remember(info(seq), 2) {
                assert_eq!(gone.home, 2, "records remember where their paths came from");
                evicted.push(gone.info.job.seq);
            }
        }
        assert_eq!(evicted, (1..=10).collect::<Vec<u64>>(), "oldest first");
        assert!(table.ended(JobId { shard: 1, seq: 10 }).is_none());
        let kept = table.ended(JobId { shard: 1, seq: 11 }).expect("kept");
        assert_eq!(kept.state, JobState::Done);
        assert_eq!(table.all().len(), FINISHED_JOBS_KEPT);
        assert!(table.is_idle());
    }

    #[test]
    fn a_failed_job_keeps_its_code_and_message() {
        use crate::error::{Code, Error};
        let mut table = JobTable::new(2);
        let id = table.next_id();
        let why = Error::new(
            Code::AuthFailed,
            "/r/a.rcrypt: the input failed authentication",
        );
        let failed = JobInfo {
            job: id,
            op: FileOp::Decrypt,
            input: PathBuf::from("/r/a.rcrypt"),
            output: PathBuf::from("/r/a"),
            state: JobState::Failed,
            bytes_done: 4096,
            bytes_total: 8192,
            error: Some(why.clone()),
        };
        assert!(table.remember(failed, 2).is_none());
        let kept = table.info(id).expect("remembered");
        assert_eq!(kept.state, JobState::Failed);
        assert_eq!(kept.error, Some(why.clone()), "status says why");
        assert_eq!(table.all()[0].error, Some(why), "and so does jobs");
    }
}
