//! Directory fsyncs in batches. With `--fsync always`, a job is done only once its output's
//! directory is fsynced after the link. Jobs that link into the same directory while one
//! fsync of it is in flight wait for the next one, which covers every link made before it
//! started: one fsync per batch of links instead of one per file, so a tree of small files
//! costs the journal a commit per batch. `done` still means on disk: a job is answered only
//! after an fsync that started after its own link has completed.
//!
//! What this room does not do: link or fsync files (the job does), or decide durability.

use std::collections::HashMap;

use crate::daemon::job::DirSyncWanted;
use crate::daemon::reactor::{Completion, File, Op};
use crate::daemon::token::Token;

use super::Shard;

/// One directory's fsyncs: the batch in flight and the one gathering behind it.
struct Dir {
    /// The batch whose fsync is in flight, by its number, with its jobs' slots.
    running: Option<(u64, Vec<usize>)>,
    /// Jobs that linked after the running fsync started, and a handle of the directory to
    /// fsync for them (one of theirs: each job keeps its own open until it is done).
    next: Vec<usize>,
    next_handle: Option<File>,
}

#[derive(Default)]
pub(super) struct DirSyncs {
    dirs: HashMap<(u64, u64), Dir>,
    /// Batch number to directory.
    batches: HashMap<u64, (u64, u64)>,
    next_batch: u64,
}

impl Shard {
    /// Job `slot` linked its output into `wanted.dir` and waits for the directory's fsync.
    pub(super) fn join_dir_sync(&mut self, slot: usize, wanted: DirSyncWanted) {
        let dir = self.dir_syncs.dirs.entry(wanted.id).or_insert(Dir {
            running: None,
            next: Vec::new(),
            next_handle: None,
        });
        dir.next.push(slot);
        dir.next_handle.get_or_insert(wanted.dir);
        if dir.running.is_none() {
            self.start_dir_sync(wanted.id);
        }
    }

    /// Starts the fsync of directory `id` for the jobs gathered behind it.
    fn start_dir_sync(&mut self, id: (u64, u64)) {
        let syncs = &mut self.dir_syncs;
        let Some(dir) = syncs.dirs.get_mut(&id) else {
            return;
        };
        let Some(handle) = dir.next_handle.take() else {
            syncs.dirs.remove(&id);
            return;
        };
        syncs.next_batch += 1;
        let batch = syncs.next_batch;
        dir.running = Some((batch, std::mem::take(&mut dir.next)));
        syncs.batches.insert(batch, id);
        self.metrics.dir_fsync();
        self.reactor
            .push(Token::DirSync(batch).encode(), Op::Fsync { fd: handle });
    }

    /// A directory's fsync completed: every job of its batch is done (or failed with it),
    /// and the next batch's fsync starts.
    pub(super) fn dir_synced(&mut self, batch: u64, done: Completion) {
        let Some(id) = self.dir_syncs.batches.remove(&batch) else {
            return;
        };
        let slots = match self.dir_syncs.dirs.get_mut(&id) {
            Some(dir) => dir.running.take().map(|(_, slots)| slots),
            None => None,
        };
        for slot in slots.unwrap_or_default() {
            let result = match &done.result {
                Ok(n) => Ok(*n),
                Err(err) => Err(std::io::Error::from_raw_os_error(
                    err.raw_os_error().unwrap_or(libc::EIO),
                )),
            };
            self.with_job(slot, |job, ctx| job.dir_synced(ctx, result));
        }
        let gathering = self
            .dir_syncs
            .dirs
            .get(&id)
            .is_some_and(|dir| !dir.next.is_empty());
        if gathering {
            self.start_dir_sync(id);
        } else {
            self.dir_syncs.dirs.remove(&id);
        }
    }
}
