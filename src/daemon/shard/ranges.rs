//! The shard's side of range splitting (see `job/range.rs`): sending a split file's ranges
//! to their shards, running the ranges other shards send here as jobs of this shard, and
//! passing their results and cancels back and forth. Ranges start before queued jobs, on
//! buffers ordinary jobs leave free, so a file waiting for its ranges never waits on a
//! shard full of files waiting for theirs.
//!
//! What this room does not do: run a range's steps (the job does) or decide how a file is
//! cut (the owner's job does).

use crate::daemon::job::{BUFFERS_PER_JOB, FileJob, RangeWork, SplitRequest};
use crate::daemon::reactor::BufId;
use crate::error::{Code, Error};
use crate::protocol::JobId;

use super::jobs::{Waiter, Waiters};
use super::{Msg, ReplyTo, Shard};

impl Shard {
    /// Sends what a job asked for its ranges after a call: its ranges to their shards, or
    /// a cancel of those still out.
    pub(super) fn split_requests(&mut self, slot: usize) {
        loop {
            let Some(request) = self
                .jobs
                .running_mut(slot)
                .and_then(|entry| entry.job.split_request())
            else {
                return;
            };
            match request {
                SplitRequest::Send(ranges) => {
                    for work in ranges {
                        self.deliver(work.shard, Msg::Range(Box::new(work)));
                    }
                }
                SplitRequest::Cancel { owner, shards } => {
                    for shard in shards {
                        self.deliver(shard, Msg::RangeCancel { owner });
                    }
                }
            }
        }
    }

    /// A range of another shard's file, to run here.
    pub(super) fn range_arrived(&mut self, work: Box<RangeWork>) {
        // A range is part of a job its owner already runs: a shutdown lets it run until the
        // drain deadline, as it lets the job; past the deadline it is refused.
        if self
            .shutdown
            .is_some_and(|deadline| std::time::Instant::now() >= deadline)
        {
            let err = Error::new(
                Code::ShuttingDown,
                format!(
                    "{}: the daemon is shutting down; it takes no new work",
                    work.input().display()
                ),
            );
            return self.range_ended(work.owner, Err(err));
        }
        self.ranges.push_back(work);
        self.admit();
    }

    /// Starts the ranges waiting here while buffers last; true if none is left waiting.
    pub(super) fn start_ranges(&mut self) -> bool {
        while self.reactor.free_buffers() >= BUFFERS_PER_JOB {
            let Some(work) = self.ranges.pop_front() else {
                return true;
            };
            let bufs: [BufId; BUFFERS_PER_JOB] = std::array::from_fn(|_| {
                self.reactor
                    .acquire()
                    .expect("enough buffers are free, checked above")
            });
            let slot = self.jobs.free_slot();
            let id = self.jobs.next_id();
            let job = FileJob::for_range(id, work, slot as u32, bufs, &mut self.reactor);
            // Nobody waits on a range but its owner, which `finish` tells.
            let waiter = Waiter {
                wait: false,
                progress: false,
                reply: ReplyTo {
                    shard: self.index,
                    conn: 0,
                    id: None,
                    tree: None,
                    item: 0,
                },
            };
            self.jobs.run(slot, job, Waiters::new(waiter));
            self.with_job(slot, |job, ctx| job.start(ctx));
        }
        self.ranges.is_empty()
    }

    /// A range that ran here ended: its result goes to the file's owner.
    pub(super) fn range_ended(&mut self, owner: JobId, result: Result<(), Error>) {
        self.deliver(owner.shard as usize, Msg::RangeDone { owner, result });
    }

    /// One of this shard's split files heard from a range.
    pub(super) fn range_done(&mut self, owner: JobId, result: Result<(), Error>) {
        if let Some(slot) = self.jobs.slot_of(owner) {
            self.with_job(slot, |job, ctx| job.range_done(ctx, result));
        }
    }

    /// The owner of a split file failed or was cancelled: stop its ranges here.
    pub(super) fn range_cancel(&mut self, owner: JobId) {
        let waiting: std::collections::VecDeque<Box<RangeWork>> = {
            let (gone, kept) = std::mem::take(&mut self.ranges)
                .into_iter()
                .partition(|work| work.owner == owner);
            self.ranges = kept;
            gone
        };
        for work in waiting {
            let err = Error::new(
                Code::Cancelled,
                format!("{}: the job was cancelled", work.input().display()),
            );
            self.range_ended(owner, Err(err));
        }
        for slot in self.jobs.running_slots() {
            let of_owner = self
                .jobs
                .running_mut(slot)
                .is_some_and(|entry| entry.job.range_of() == Some(owner));
            if of_owner {
                self.with_job(slot, |job, ctx| job.cancel(ctx));
            }
        }
    }
}
