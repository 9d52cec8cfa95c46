//! Shutdown on this shard: what SIGTERM starts (trees cancelled, the listener shut, jobs on
//! streams and queued jobs cancelled, running ones left until the drain deadline) and when
//! the shard may exit.
//!
//! What this room does not do: decide the deadline (the main thread does) or answer the
//! requests that come during the drain (`on_line` refuses new work).

use super::*;

impl Shard {
    pub(super) fn begin_shutdown(&mut self, deadline: Instant) {
        self.shutdown = Some(deadline);
        for tree in self.trees.values_mut() {
            tree.job.cancel();
        }
        let idle: Vec<u64> = self
            .trees
            .iter()
            .filter(|(_, t)| t.job.is_finished())
            .map(|(&k, _)| k)
            .collect();
        for seq in idle {
            self.tree_result_finish(seq);
        }
        if let Some(listener) = self.listener
            && let Ok(fd) = self.reactor.fd(listener)
        {
            self.accepting = false;
            let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
        }
        // A job on a stream has no end to wait for (a pipe may never close): cancelled now.
        for slot in self.jobs.running_slots() {
            self.with_job(slot, |job, ctx| {
                if job.is_stream() {
                    job.cancel(ctx);
                }
            });
        }
        // Queued jobs never started: cancel them now; running ones get until the deadline.
        let queued = self.jobs.queued_ids();
        for id in queued {
            let reply = ReplyTo {
                shard: self.index,
                conn: 0,
                id: None,
                tree: None,
                item: 0,
            };
            self.cancel(id, reply);
        }
    }

    /// During a shutdown: whether this shard may exit now. Once its own jobs are over, it
    /// shuts each connection owed nothing more (no request without its final line, nothing
    /// left to send) for reading: lines the client already wrote are still read and
    /// answered (`shutting_down` for new work), and the end of the stream closes it. It exits when every shard is quiet (no job, tree or
    /// connection anywhere, so no reply can still be on its way to one of its clients), or
    /// at the latest [`SHUTDOWN_GRACE`] after the drain deadline, whatever is left.
    pub(super) fn finished_shutdown(&mut self) -> bool {
        let Some(deadline) = self.shutdown else {
            return false;
        };
        let jobs_left = !self.jobs.is_idle()
            || !self.ranges.is_empty()
            || !self.trees.is_empty()
            || !self.local.is_empty()
            || !self.gathers.is_empty();
        if !jobs_left {
            for key in self.conns.owed_nothing() {
                self.conns.drain(key, &self.reactor);
            }
        }
        let quiet = !jobs_left && self.conns.is_empty();
        let inboxes = &self.shared.inboxes;
        inboxes[self.index].quiet.store(quiet, Ordering::SeqCst);
        if Instant::now() >= deadline + SHUTDOWN_GRACE {
            return true;
        }
        quiet
            && inboxes
                .iter()
                .all(|inbox| inbox.quiet.load(Ordering::SeqCst))
    }
}
