//! A shard: one OS thread pinned to one core, owning one reactor, its pool buffers, its file
//! jobs and its client connections. Shards share nothing mutable: everything that crosses
//! cores is a [`Msg`] in the target's bounded inbox, and a producer wakes the target (eventfd)
//! only when the target said it is going to sleep, so a busy shard costs no syscall.
//!
//! The data path, top to bottom:
//! 1. Shard 0 accepts a connection and hands it to a shard round-robin ([`Msg::Conn`]).
//! 2. The connection's shard reads request lines, parses them (`protocol`), and routes file
//!    jobs to their owner: stable hash of the input path modulo the shard count
//!    ([`Msg::Submit`]).
//! 3. The owner attaches an identical request to the job already running it, admits the
//!    job when it has buffers (queues it, bounded, or answers `busy`), and runs its state
//!    machine (`job`) on its reactor, with the caller's identity.
//! 4. Replies go back to the connection's shard as data ([`Msg::Reply`]), which encodes them
//!    straight into the connection's output buffer.
//!
//! The three dispatchers are here, so a request reads top to bottom in one place:
//! [`Shard::on_line`] (a request), `on_msg` (a message from a shard), `on_completion` (an op
//! finished). The state they work on lives in rooms of its own, each with a narrow API:
//! - `inbox`: the messages, inboxes, wake-ups and the settings every shard reads;
//! - `conns`: connections, their buffers, back-pressure, and per-uid counts;
//! - `authorize`: the verdict on each request; `audit`: the audit records of requests and
//!   jobs;
//! - `jobs`: the job table (admission, merges, `busy`, the record of ended jobs);
//! - `owner`: file jobs on their owner shard, from submission to the answer to every waiter;
//! - `trees`: tree jobs (and batches) on the shard that received them;
//! - `shutdown`: what SIGTERM starts here, and when the shard may exit.
//!
//! What this room does not do: crypto (`format`), op bookkeeping (`reactor`), wire syntax
//! (`protocol`), or process setup (`daemon`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::crypto::keys::KeyRing;
use crate::daemon::creds::Caller;
use crate::daemon::job::RangeWork;
use crate::daemon::metrics::{self, ShardMetrics};
use crate::daemon::reactor::{BackendKind, Completion, File, Op, Reactor, RecvBuf};
use crate::daemon::token::Token;
use crate::error::{Code, Error};
use crate::limits::{SHUTDOWN_GRACE, SPARE_PATHS_PER_SHARD};
use crate::protocol::{
    self, FileJobSpec, JobId, JobInfo, Request, RequestId, ShardStats, SparePaths,
};

mod audit;
mod authorize;
mod conns;
mod dirsync;
mod inbox;
mod jobs;
mod owner;
mod ranges;
mod shutdown;
mod trees;

use trees::Tree;

use conns::{Conns, PassedFds, Received};

use jobs::JobTable;

pub use inbox::{Callers, Msg, Reply, ReplyTo, Shared};

struct Gathering {
    conn: u64,
    id: Option<RequestId>,
    stats: bool,
    remaining: usize,
    jobs: Vec<JobInfo>,
    shards: Vec<ShardStats>,
}

/// A shard's state. Runs on its own thread via [`Shard::run`].
pub struct Shard {
    index: usize,
    shared: Arc<Shared>,
    reactor: Reactor,
    ring: Arc<KeyRing>,
    listener: Option<File>,
    /// This shard's wake-up eventfd (a copy its reactor owns).
    wake: File,
    /// The allowed roots' directories (copies its reactor owns), in `Roots` order.
    root_files: Vec<File>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    next_conn_shard: usize,
    conns: Conns,
    /// The file jobs this shard owns: queued, running, and the record of ended ones.
    jobs: JobTable,
    /// Path buffers for the specs this shard makes (request paths, tree files); refilled
    /// from the records [`Shard::finished`] drops, here and on other shards.
    spares: SparePaths,
    gathers: HashMap<u64, Gathering>,
    next_gather: u64,
    stats: ShardStats,
    shutdown: Option<Instant>,
    completions: Vec<Completion>,
    metrics: ShardMetrics,
    trees: HashMap<u64, Tree>,
    /// Ranges of other shards' split files waiting for buffers here.
    ranges: VecDeque<Box<RangeWork>>,
    /// Directory fsyncs, one per batch of jobs that linked into the same directory.
    dir_syncs: dirsync::DirSyncs,
    /// Trees ready to walk and the file jobs one walk step found, kept for the next pump.
    tree_ready: Vec<u64>,
    tree_specs: Vec<(FileJobSpec, u32)>,
    /// Connections holding back output (a batch's `file` lines) to send before the loop
    /// sleeps.
    deferred_sends: Vec<u64>,
    /// Messages this shard sends itself, handled by the loop after the current one: a
    /// handler never calls another handler through the message pump, so no chain of
    /// results (a tree's file refused `busy`, retried, refused again...) can grow the
    /// stack.
    local: VecDeque<Msg>,
    /// Inside `start_queued`: a job that ends while being started does not start more
    /// from inside it (the running loop picks them up).
    admitting: bool,
}

impl Shard {
    /// Builds shard `index` (shard 0 also gets the listener). The reactor is made on the
    /// shard's own thread, so its buffers are allocated on that core's memory.
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        ring: Arc<KeyRing>,
        listener: Option<OwnedFd>,
        backend: Option<BackendKind>,
        buffers: u16,
        buf_bytes: usize,
    ) -> std::io::Result<(Shard, Option<String>)> {
        let (mut reactor, warning) = Reactor::new(backend, buffers, buf_bytes)?;
        let wake = reactor.adopt(shared.inboxes[index].wake.try_clone()?);
        let root_files = shared
            .roots
            .dup_all()?
            .into_iter()
            .map(|fd| reactor.adopt(fd))
            .collect();
        let listener = listener.map(|fd| reactor.adopt(fd));
        let stats = ShardStats {
            shard: index as u32,
            queued: 0,
            running: 0,
            jobs_done: 0,
            bytes_in: 0,
            bytes_out: 0,
        };
        let shard = Shard {
            index,
            shared,
            reactor,
            ring,
            accepting: listener.is_some(),
            listener,
            wake,
            root_files,
            accept_paused_until: None,
            next_conn_shard: 0,
            conns: Conns::default(),
            jobs: JobTable::new(index),
            spares: SparePaths::with_bound(SPARE_PATHS_PER_SHARD),
            gathers: HashMap::new(),
            next_gather: 1,
            stats,
            shutdown: None,
            completions: Vec::new(),
            metrics: ShardMetrics::new(index),
            trees: HashMap::new(),
            ranges: VecDeque::new(),
            dir_syncs: dirsync::DirSyncs::default(),
            tree_ready: Vec::new(),
            tree_specs: Vec::new(),
            deferred_sends: Vec::new(),
            local: VecDeque::new(),
            admitting: false,
        };
        Ok((shard, warning))
    }

    pub fn backend(&self) -> BackendKind {
        self.reactor.kind()
    }

    /// The event loop. Returns when a shutdown has drained every job and connection.
    pub fn run(mut self) {
        self.arm_wake();
        if self.listener.is_some() {
            self.arm_accept();
        }
        let mut last_tick = Instant::now();
        loop {
            self.shared.inboxes[self.index].heartbeat_ms.store(
                self.shared.started.elapsed().as_millis() as u64,
                Ordering::Relaxed,
            );
            let mut progressed = self.drain_inbox();
            let mut done = std::mem::take(&mut self.completions);
            self.reactor.wait(Some(Duration::ZERO), &mut done);
            progressed |= !done.is_empty();
            for completion in done.drain(..) {
                self.on_completion(completion);
            }
            self.completions = done;
            if !self.trees.is_empty() {
                progressed |= self.pump_trees();
            }
            if last_tick.elapsed() >= crate::failpoint::tick_every() {
                last_tick = Instant::now();
                self.tick();
            }
            if self.finished_shutdown() {
                self.shared.inboxes[self.index]
                    .exited
                    .store(true, Ordering::SeqCst);
                return;
            }
            if progressed {
                continue;
            }
            // Nothing more to do this turn: what lines were held back leave now.
            self.send_deferred();
            // Announce sleep, then look once more: a producer that pushed before seeing the
            // flag is caught here; one that pushed after sees it and writes the eventfd.
            let inbox = &self.shared.inboxes[self.index];
            inbox.sleeping.store(true, Ordering::SeqCst);
            if !inbox.queue.is_empty() {
                inbox.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            let mut done = std::mem::take(&mut self.completions);
            self.reactor.wait(Some(self.sleep_limit()), &mut done);
            self.shared.inboxes[self.index]
                .sleeping
                .store(false, Ordering::SeqCst);
            for completion in done.drain(..) {
                self.on_completion(completion);
            }
            self.completions = done;
        }
    }

    /// Sends the output connections held back (see [`Conns::queue_deferred`]).
    fn send_deferred(&mut self) {
        for key in self.deferred_sends.drain(..) {
            self.conns.flush(key, &mut self.reactor);
        }
    }

    /// How long the loop may sleep: until its next tick, or until a tree's files refused
    /// `busy` may go out again, whichever is sooner.
    fn sleep_limit(&self) -> Duration {
        let now = Instant::now();
        self.trees
            .values()
            .filter_map(|tree| tree.job.retry_at())
            .map(|at| at.saturating_duration_since(now))
            .fold(crate::failpoint::tick_every(), Duration::min)
            .max(Duration::from_millis(1))
    }

    fn arm_wake(&mut self) {
        let fd = self.wake;
        self.reactor
            .push(Token::Wake.encode(), Op::ReadEventfd { fd });
    }

    fn arm_accept(&mut self) {
        if let Some(fd) = self.listener {
            self.reactor.push(Token::Accept.encode(), Op::Accept { fd });
        }
    }

    /// Handles the messages this shard sent itself and those in its inbox, until both are
    /// empty. Each handler runs to its end before the next message: none nests.
    fn drain_inbox(&mut self) -> bool {
        let mut any = false;
        loop {
            let msg = match self.local.pop_front() {
                Some(msg) => msg,
                None => match self.shared.inboxes[self.index].queue.pop() {
                    Some(msg) => msg,
                    None => return any,
                },
            };
            any = true;
            self.on_msg(msg);
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Conn { fd, caller } => self.add_conn(fd, caller),
            Msg::ConnClosed { uid } => self.conns.uid_closed(uid),
            Msg::Submit { spec, reply } => self.submit(spec, reply, None),
            Msg::Reply {
                conn,
                id,
                reply,
                final_reply,
            } => self.queue_with(conn, final_reply, |out| reply.encode(out, id.as_ref())),
            Msg::Status { job, reply } => {
                let answer = match self.job_info(job) {
                    Some(info) => Reply::Status(info),
                    None => Reply::Error(unknown_job(job)),
                };
                self.reply(&reply, answer, true);
            }
            Msg::Cancel { job, reply } => self.cancel(job, reply),
            Msg::Gather {
                stats,
                reply,
                gather,
            } => {
                let part = if stats {
                    Msg::Part {
                        gather,
                        jobs: Vec::new(),
                        stats: Some(self.current_stats()),
                    }
                } else {
                    Msg::Part {
                        gather,
                        jobs: self.all_jobs(),
                        stats: None,
                    }
                };
                self.deliver(reply.shard, part);
            }
            Msg::Part {
                gather,
                jobs,
                stats,
            } => self.gathered(gather, jobs, stats),
            Msg::Recycle { input, output } => {
                self.spares.give(input);
                self.spares.give(output);
            }
            Msg::Reload(ring) => self.ring = ring,
            Msg::Range(work) => self.range_arrived(work),
            Msg::RangeDone { owner, result } => self.range_done(owner, result),
            Msg::RangeCancel { owner } => self.range_cancel(owner),
            Msg::TreeResult {
                tree,
                item,
                input,
                size,
                result,
            } => self.tree_result(tree, item, &input, size, result),
            Msg::Shutdown { deadline } => self.begin_shutdown(deadline),
        }
    }

    /// Sends to a shard; to this shard, queues it for the loop's next turn (never handled
    /// inside the caller: see [`Shard::local`]).
    fn deliver(&mut self, to: usize, msg: Msg) {
        if to == self.index {
            self.local.push_back(msg);
        } else {
            self.shared.send_must(to, msg);
        }
    }

    /// Sends a reply to its connection: encoded into the connection's buffer here when the
    /// connection is this shard's, sent as data to the connection's shard otherwise.
    fn reply(&mut self, to: &ReplyTo, reply: Reply, final_reply: bool) {
        if let Reply::Error(err) = &reply {
            metrics::error_reply(err.code);
        }
        if to.shard == self.index {
            let id = to.id.as_ref();
            self.queue_with(to.conn, final_reply, |out| reply.encode(out, id));
        } else {
            let msg = Msg::Reply {
                conn: to.conn,
                id: to.id.clone(),
                reply,
                final_reply,
            };
            self.shared.send_must(to.shard, msg);
        }
    }

    // ---- connections -------------------------------------------------------------------

    fn add_conn(&mut self, fd: OwnedFd, caller: Arc<Caller>) {
        let refused = !self
            .shared
            .callers
            .allows(caller.uid, caller.gid, self.shared.daemon_uid);
        self.conns.add(fd, caller, refused, &mut self.reactor);
    }

    /// The client on connection `key` went away (or closed its side): its jobs with a stream
    /// end are cancelled, as nothing else could end one whose pipe stalls, and no one is left
    /// to read its output or link it. Jobs on files run on, as always.
    fn cancel_streams_of(&mut self, key: u64) {
        for slot in self.jobs.running_slots() {
            let theirs = self.jobs.running_mut(slot).is_some_and(|entry| {
                entry.job.is_stream()
                    && entry.waiters.first.reply.conn == key
                    && entry.waiters.first.reply.shard == self.index
            });
            if theirs {
                self.with_job(slot, |job, ctx| job.cancel(ctx));
            }
        }
    }

    /// Hands each complete request line that arrived on connection `key` to `on_line`.
    fn on_recv(&mut self, key: u64, done: Completion) {
        let (mut buf, consumed, skip_first, too_long, complaints) =
            match self.conns.received(key, done, &mut self.reactor) {
                Received::Ended(closed) => {
                    self.cancel_streams_of(key);
                    return self.closed(closed);
                }
                Received::Lines {
                    buf,
                    consumed,
                    skip_first,
                    too_long,
                    complaints,
                } => (buf, consumed, skip_first, too_long, complaints),
            };
        for err in complaints.into_iter().flatten() {
            if let Some(conn) = self.conns.get(key) {
                // Not a request: a line over the limit, or descriptors no request took.
                audit::unparsable(&conn.caller, &err, None);
            }
            self.queue_line(key, &error_line(None, &err), false);
        }
        // The lines are handled where they lie in the receive buffer, which the connection
        // gets back afterwards (until then it cannot close: it has no buffer).
        let RecvBuf {
            data,
            fds,
            fds_truncated,
            ..
        } = &mut *buf;
        let mut passed = PassedFds::of(fds, fds_truncated);
        let mut at = 0;
        while at < consumed {
            let end = at
                + data[at..consumed]
                    .iter()
                    .position(|&b| b == b'\n')
                    .expect("the consumed bytes end with a newline");
            if at > 0 || !skip_first {
                self.on_line(key, &data[at..end], &mut passed);
            }
            at = end + 1;
            // A refused caller's connection closes after its one answer.
            if self.conns.get(key).is_none_or(|c| c.eof) {
                break;
            }
        }
        let closed = self
            .conns
            .done_receiving(key, buf, consumed, too_long, &mut self.reactor);
        self.closed(closed);
    }

    fn queue_line(&mut self, key: u64, line: &str, final_reply: bool) {
        self.queue_with(key, final_reply, |out| {
            out.extend_from_slice(line.as_bytes())
        });
    }

    /// Appends what `encode` writes to a connection's output and sends it.
    fn queue_with(&mut self, key: u64, final_reply: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        let closed = self
            .conns
            .queue(key, final_reply, encode, &mut self.reactor);
        self.closed(closed);
    }

    fn on_send(&mut self, key: u64, done: Completion) {
        let closed = self.conns.sent(key, done, &mut self.reactor);
        self.closed(closed);
    }

    /// Counts a connection of `uid` that closed (if one did): here, and on shard 0 by uid.
    fn closed(&mut self, uid: Option<u32>) {
        let Some(uid) = uid else {
            return;
        };
        let open = self.shared.connections.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::connections(open);
        self.deliver(0, Msg::ConnClosed { uid });
    }

    /// Handles one request line of connection `key`: parse, authorize, audit, then answer
    /// it here or route it (file jobs to their owner, `status`/`cancel` to the job's shard).
    fn on_line(&mut self, key: u64, line: &[u8], fds: &mut PassedFds) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.open_requests += 1;
        }
        let parsed = protocol::parse_request_reusing(line, &mut self.spares);
        let id = parsed.id;
        let request = match parsed.request {
            Ok(request) => request,
            Err(err) => {
                if let Some(conn) = self.conns.get(key) {
                    audit::unparsable(&conn.caller, &err, Some(line.len()));
                }
                self.queue_line(key, &error_line(id.as_ref(), &err), true);
                return;
            }
        };
        // Descriptors passed with this line are taken now, whatever happens to the request,
        // so a refused request cannot leave them to be taken by the next one.
        let mut request = request;
        let spec = match &mut request {
            Request::File(spec) => Some(spec),
            Request::Batch(batch) => Some(&mut batch.spec),
            _ => None,
        };
        if let Some(spec) = spec
            && let Some(conn) = self.conns.get(key)
        {
            spec.caller = Some(Arc::clone(&conn.caller));
        }
        let passed = match &request {
            Request::File(spec) if spec.fds => Some(fds.take(spec)),
            _ => None,
        };
        let reply = ReplyTo {
            shard: self.index,
            conn: key,
            id,
            tree: None,
            item: 0,
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let caller = Arc::clone(&conn.caller);
        let refused_caller = conn.refused;
        if refused_caller {
            // One answer, then the connection closes: read nothing more from it.
            conn.eof = true;
        }
        let verdict = authorize::verdict(&self.shared, &caller, refused_caller, &request);
        if let Err(err) = verdict {
            audit::request(&caller, &request, audit::Verdict::Refused(&err));
            self.queue_line(key, &error_line(reply.id.as_ref(), &err), true);
            if let Request::File(spec) = request {
                self.recycle(self.index, spec.input, spec.output);
            }
            return;
        }
        if self.shutdown.is_some()
            && !matches!(
                request,
                Request::Ping | Request::Status { .. } | Request::Jobs | Request::Stats
            )
        {
            let err = Error::new(
                Code::ShuttingDown,
                "the daemon is shutting down; it takes no new work",
            );
            audit::request(&caller, &request, audit::Verdict::Refused(&err));
            self.queue_line(key, &error_line(reply.id.as_ref(), &err), true);
            return;
        }
        if !matches!(request, Request::File(_) | Request::Batch(_)) {
            // A file request's verdict comes with its job: on its owner shard (the queue
            // may be full), or where its tree or batch starts.
            audit::request(&caller, &request, audit::Verdict::Accepted(None));
        }
        match request {
            Request::Ping => {
                let line = protocol::pong(
                    reply.id.as_ref(),
                    self.shared.version,
                    self.shared.inboxes.len(),
                    self.reactor.kind().as_str(),
                );
                self.queue_line(key, &line, true);
            }
            Request::File(spec) if spec.fds => match passed.expect("taken above") {
                // The caller opened both files itself, so its own permissions were checked
                // by the kernel; no root applies. The job runs here, on the connection's
                // shard: its paths are only names, so hashing them would route nothing.
                Ok(passed) => self.submit(spec, reply, Some(passed)),
                Err(err) => {
                    audit::request_of_spec(&caller, &spec, audit::Verdict::Refused(&err));
                    self.queue_line(key, &error_line(reply.id.as_ref(), &err), true)
                }
            },
            Request::File(spec) => {
                // Paths outside every allowed root are refused here, before a job exists.
                // A tree's output directory itself must lie under a root (it is created).
                let parent = spec.output.parent().unwrap_or(std::path::Path::new("/"));
                let out_check = if spec.recursive {
                    spec.output.as_path()
                } else {
                    parent
                };
                let confined = self
                    .shared
                    .roots
                    .check(&spec.input)
                    .and_then(|()| self.shared.roots.check(out_check));
                if let Err(err) = confined {
                    audit::request_of_spec(&caller, &spec, audit::Verdict::Refused(&err));
                    self.queue_line(key, &error_line(reply.id.as_ref(), &err), true);
                    self.recycle(self.index, spec.input, spec.output);
                    return;
                }
                if spec.recursive {
                    self.start_tree(key, spec, reply);
                    return;
                }
                let owner = self.shared.owner_of(&spec.input);
                let msg = Msg::Submit { spec, reply };
                if owner == self.index {
                    self.on_msg(msg);
                } else if let Err(Msg::Submit { spec, reply }) = self.shared.send(owner, msg) {
                    let err = Error::new(Code::Busy, "the daemon's queues are full; retry shortly");
                    audit::request_of_spec(&caller, &spec, audit::Verdict::Refused(&err));
                    self.refuse(&reply, err);
                    self.recycle(self.index, spec.input, spec.output);
                }
            }
            // Each file is checked against the allowed roots as it goes out, and fails alone.
            Request::Batch(batch) => self.start_batch(key, *batch, reply),
            Request::Status { job } | Request::Cancel { job }
                if job.shard as usize >= self.shared.inboxes.len() =>
            {
                self.queue_line(key, &error_line(reply.id.as_ref(), &unknown_job(job)), true);
            }
            Request::Status { job } => self.deliver(job.shard as usize, Msg::Status { job, reply }),
            Request::Cancel { job } => self.deliver(job.shard as usize, Msg::Cancel { job, reply }),
            Request::Jobs | Request::Stats => {
                let stats = matches!(request, Request::Stats);
                let gather = self.next_gather;
                self.next_gather += 1;
                let shards = self.shared.inboxes.len();
                self.gathers.insert(
                    gather,
                    Gathering {
                        conn: key,
                        id: reply.id.clone(),
                        stats,
                        remaining: shards,
                        jobs: Vec::new(),
                        shards: Vec::new(),
                    },
                );
                for shard in 0..shards {
                    self.deliver(
                        shard,
                        Msg::Gather {
                            stats,
                            reply: reply.clone(),
                            gather,
                        },
                    );
                }
            }
            Request::Keys => {
                let ring = Arc::clone(&self.ring);
                let infos: Vec<protocol::KeyInfo> = ring
                    .entries()
                    .iter()
                    .map(|entry| protocol::KeyInfo {
                        name: entry.name.clone(),
                        id: entry.id_hex(),
                        kind: entry.material.kind(),
                        state: entry.state.as_str(),
                    })
                    .collect();
                let default = ring.default_entry().map(|entry| entry.name.as_str());
                let line = protocol::keys(reply.id.as_ref(), default, &infos);
                self.queue_line(key, &line, true);
            }
            Request::Reload => {
                let line = match self.reload() {
                    Ok(count) => protocol::reloaded(reply.id.as_ref(), count),
                    Err(err) => error_line(reply.id.as_ref(), &err),
                };
                self.queue_line(key, &line, true);
            }
        }
    }

    /// Loads the key ring again and hands it to every shard. A ring that fails to load
    /// leaves the current one in force.
    pub fn reload(&mut self) -> Result<usize, Error> {
        let ring = Arc::new(KeyRing::load_for_daemon(&self.shared.keys_path)?);
        let count = ring.entries().len();
        for shard in 0..self.shared.inboxes.len() {
            self.deliver(shard, Msg::Reload(Arc::clone(&ring)));
        }
        Ok(count)
    }

    fn gathered(&mut self, gather: u64, jobs: Vec<JobInfo>, stats: Option<ShardStats>) {
        let Some(state) = self.gathers.get_mut(&gather) else {
            return;
        };
        state.jobs.extend(jobs);
        state.shards.extend(stats);
        state.remaining -= 1;
        if state.remaining > 0 {
            return;
        }
        let mut state = self.gathers.remove(&gather).expect("present");
        let line = if state.stats {
            state.shards.sort_by_key(|s| s.shard);
            protocol::stats(state.id.as_ref(), &state.shards)
        } else {
            protocol::jobs(state.id.as_ref(), &state.jobs)
        };
        self.queue_line(state.conn, &line, true);
    }

    // ---- completions, timers, shutdown -------------------------------------------------

    fn on_completion(&mut self, mut done: Completion) {
        match Token::decode(done.token) {
            Some(Token::Job { slot, step }) => {
                self.with_job(slot as usize, |job, ctx| job.on_complete(ctx, step, done));
            }
            Some(Token::ConnRecv(key)) => self.on_recv(key, done),
            Some(Token::ConnSend(key)) => self.on_send(key, done),
            Some(Token::Accept) => self.on_accept(done.opened()),
            Some(Token::Wake) => self.arm_wake(),
            Some(Token::DirSync(batch)) => self.dir_synced(batch, done),
            // Every op this shard pushes carries an encoded token.
            None => debug_assert!(
                false,
                "a completion with an unknown token {:#x}",
                done.token
            ),
        }
    }

    fn on_accept(&mut self, result: std::io::Result<OwnedFd>) {
        match result {
            Ok(fd) => {
                let open = self.shared.connections.fetch_add(1, Ordering::Relaxed);
                metrics::connections(open + 1);
                match self.admit_conn(&fd, open) {
                    Ok(caller) => {
                        let target = self.next_conn_shard % self.shared.inboxes.len();
                        self.next_conn_shard += 1;
                        self.conns.uid_opened(caller.uid);
                        let caller = Arc::new(caller);
                        self.deliver(target, Msg::Conn { fd, caller });
                    }
                    Err(err) => {
                        // Say why, then close.
                        let _ = rustix::net::send(
                            &fd,
                            error_line(None, &err).as_bytes(),
                            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                        );
                        let open = self.shared.connections.fetch_sub(1, Ordering::Relaxed) - 1;
                        metrics::connections(open);
                    }
                }
            }
            Err(err) => {
                if matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    // Out of descriptors: pause accepting instead of spinning.
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
                if !self.accepting {
                    return;
                }
            }
        }
        if self.accepting {
            self.arm_accept();
        }
    }

    /// The identity of a new connection's peer, if the connection fits (see
    /// [`Conns::admits`]).
    fn admit_conn(&self, fd: &OwnedFd, open: usize) -> Result<Caller, Error> {
        let caller = Caller::of_peer(fd.as_fd()).map_err(|e| {
            Error::new(
                Code::Internal,
                format!("cannot read the connecting peer's credentials: {e}"),
            )
        })?;
        self.conns
            .admits(&caller, open, self.shared.daemon_uid)
            .map(|()| caller)
    }

    fn tick(&mut self) {
        crate::failpoint::maybe_hang(self.index, self.shared.started);
        if let Some(until) = self.accept_paused_until
            && Instant::now() >= until
        {
            self.accept_paused_until = None;
            if self.accepting {
                self.arm_accept();
            }
        }
        for key in self.conns.idle() {
            self.close_conn(key);
        }
        self.file_progress();
        // A loop that never sleeps still sends held-back lines at least once a tick.
        self.send_deferred();
        if let Some(deadline) = self.shutdown
            && Instant::now() >= deadline
        {
            let running = self.jobs.running_slots();
            for slot in running {
                self.with_job(slot, |job, ctx| job.cancel(ctx));
            }
        }
    }

    /// Shuts a connection's socket so its pending recv completes, then it closes.
    fn close_conn(&mut self, key: u64) {
        let closed = self.conns.close(key, &mut self.reactor);
        self.closed(closed);
    }
}

fn error_line(id: Option<&RequestId>, err: &Error) -> String {
    metrics::error_reply(err.code);
    protocol::error(id, err)
}

fn unknown_job(id: JobId) -> Error {
    Error::new(
        Code::NotFound,
        format!("no job {id} is known to this daemon"),
    )
}
