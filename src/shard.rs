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
//! 3. The owner attaches duplicates of an in-flight (op, input, output) to the running job,
//!    admits the job when it has buffers (queues it, bounded, or answers `busy`), and runs
//!    its state machine (`job`) on its reactor.
//! 4. Replies go back to the connection's shard as data ([`Msg::Reply`]), which encodes them
//!    straight into the connection's output buffer.
//!
//! What this room does not do: crypto (`format`), op bookkeeping (`reactor`), wire syntax
//! (`protocol`), or process setup (`daemon`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::creds::{ActAs, Caller};
use crate::error::{Code, Error};
use crate::job::{BUFFERS_PER_JOB, FileJob, JobCtx, JobOutcome, Passed};
use crate::keys::KeyRing;
use crate::limits::{
    ADMIN_RESERVED_CONNECTIONS, FINISHED_JOBS_KEPT, IDLE_TIMEOUT, INBOX_DEPTH, MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_UID, MAX_PASSED_FDS_PER_CONN, MAX_PENDING_REPLY_BYTES,
    MAX_QUEUED_JOBS_PER_SHARD, RECV_BUFFER_BYTES, RECV_INITIAL_BYTES, REFUSED_IDLE_TIMEOUT,
    SHUTDOWN_GRACE, SPARE_PATHS_PER_SHARD, TICK,
};
use crate::metrics::{self, JobResult, ShardMetrics};
use crate::output::Durability;
use crate::protocol::{
    self, FileJobSpec, JobId, JobInfo, JobState, MAX_REQUEST_LINE_BYTES, Request, RequestId,
    ShardStats, SparePaths,
};
use crate::reactor::{BackendKind, BufId, Completion, Op, RECV_FDS_MAX, Reactor, RecvBuf};
use crate::roots::Roots;
use crate::tree_job::{FileResult, TreeJob};

/// Where a reply goes: a connection on some shard, and the request id to echo.
#[derive(Clone, Debug)]
pub struct ReplyTo {
    pub shard: usize,
    pub conn: u64,
    pub id: Option<RequestId>,
    /// A file of tree job `tree` on shard `shard`: results go back as [`Msg::TreeResult`],
    /// not as reply lines.
    pub tree: Option<u64>,
}

/// A message between shards (or from the main thread).
pub enum Msg {
    /// A client connection for this shard to serve, with its peer's identity.
    Conn {
        fd: OwnedFd,
        caller: Arc<Caller>,
    },
    /// A connection of `uid` closed, for shard 0's per-uid connection counts.
    ConnClosed {
        uid: u32,
    },
    /// A file job for its owner shard. `wait`: send `done`/`error` when it ends.
    Submit {
        spec: FileJobSpec,
        reply: ReplyTo,
    },
    /// A reply for one of this shard's connections. `final_reply`: the last line of a
    /// request (a connection closes on EOF only once every request had its last line).
    Reply {
        conn: u64,
        id: Option<RequestId>,
        reply: Reply,
        final_reply: bool,
    },
    Status {
        job: JobId,
        reply: ReplyTo,
    },
    Cancel {
        job: JobId,
        reply: ReplyTo,
    },
    /// Collect this shard's part of a `jobs` or `stats` answer.
    Gather {
        stats: bool,
        reply: ReplyTo,
        gather: u64,
    },
    /// One shard's part, back to the gathering connection's shard.
    Part {
        gather: u64,
        jobs: Vec<JobInfo>,
        stats: Option<ShardStats>,
    },
    /// One file of a tree job ended (or must be retried), for the tree's shard.
    TreeResult {
        tree: u64,
        /// The file's input path, to name it among the failures: empty unless it failed.
        input: PathBuf,
        size: u64,
        result: FileResult,
    },
    /// The path buffers of a job this shard made the spec of (parsed its request, or walked
    /// its tree), back from the owner shard once the job's record left its finished ring,
    /// to be reused for the next job's paths.
    Recycle {
        input: PathBuf,
        output: PathBuf,
    },
    /// A new key ring for every later job.
    Reload(Arc<KeyRing>),
    /// Stop accepting; finish jobs until `deadline`, then cancel the rest; then exit.
    Shutdown {
        deadline: Instant,
    },
}

/// A reply as data, encoded only where it is written: on the connection's shard, straight
/// into the connection's output buffer, so sending one allocates nothing.
pub enum Reply {
    Accepted(JobId),
    Done(protocol::DoneReport),
    Status(JobInfo),
    Cancelled(JobId),
    Error(Error),
}

impl Reply {
    /// Writes the reply line into `out`.
    fn encode(&self, out: &mut Vec<u8>, id: Option<&RequestId>) {
        match self {
            Reply::Accepted(job) => protocol::write_accepted(out, id, *job),
            Reply::Done(report) => protocol::write_done(out, id, report),
            Reply::Status(info) => protocol::write_status(out, id, info),
            Reply::Cancelled(job) => protocol::write_cancelled(out, id, *job),
            Reply::Error(err) => protocol::write_error(out, id, err),
        }
    }
}

/// One shard's inbox: a bounded queue plus the eventfd that wakes it.
pub struct Inbox {
    queue: ArrayQueue<Msg>,
    sleeping: AtomicBool,
    wake: OwnedFd,
    /// Set by the shard on every loop turn (ms since start), read by the watchdog.
    pub heartbeat_ms: AtomicU64,
    /// Jobs ended and bytes written by the shard, for the service manager's status line.
    pub jobs_done: AtomicU64,
    pub bytes_out: AtomicU64,
    /// During a shutdown: the shard has no job, tree or connection left. Shards exit only
    /// once every one of them is quiet, so none leaves while a job elsewhere still owes a
    /// reply to one of its connections.
    pub quiet: AtomicBool,
    /// The shard's loop has ended: nothing will drain this inbox again, so senders that
    /// would wait for room give up instead.
    pub exited: AtomicBool,
}

/// What every shard can see: the inboxes and the fixed configuration.
/// Who may use the daemon, by the uid and gid the kernel reports for the peer
/// (`SO_PEERCRED`), never by anything the client says. Empty lists allow every peer that
/// can open the socket (its file mode is the gate). Root and the daemon's own uid are
/// always allowed.
#[derive(Clone, Debug, Default)]
pub struct Callers {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Callers {
    pub fn allows(&self, uid: u32, gid: u32, daemon_uid: u32) -> bool {
        (self.uids.is_empty() && self.gids.is_empty())
            || uid == 0
            || uid == daemon_uid
            || self.uids.contains(&uid)
            || self.gids.contains(&gid)
    }
}

pub struct Shared {
    pub inboxes: Vec<Inbox>,
    pub callers: Callers,
    pub roots: Roots,
    pub durability: Durability,
    pub chunk_log2: u8,
    pub keys_path: PathBuf,
    pub daemon_uid: u32,
    /// Path jobs of callers other than root and the daemon's uid run with the caller's
    /// credentials (see `creds`); false only when the operator chose `--path-credentials
    /// daemon`.
    pub act_as_callers: bool,
    /// The daemon can take on a caller's credentials (it has CAP_SETUID and CAP_SETGID).
    pub can_act_as: bool,
    pub version: &'static str,
    pub connections: AtomicUsize,
    pub started: Instant,
}

impl Shared {
    pub fn new_inbox() -> std::io::Result<Inbox> {
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Inbox {
            queue: ArrayQueue::new(INBOX_DEPTH),
            sleeping: AtomicBool::new(false),
            wake,
            heartbeat_ms: AtomicU64::new(0),
            jobs_done: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            quiet: AtomicBool::new(false),
            exited: AtomicBool::new(false),
        })
    }

    /// Delivers `msg` to shard `to`, waking it if it sleeps. A full inbox gives the message
    /// back; the caller decides (`busy` for new work, retry for replies).
    // The message itself comes back on failure, so nothing is allocated or lost.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, to: usize, msg: Msg) -> Result<(), Msg> {
        let inbox = &self.inboxes[to];
        inbox.queue.push(msg)?;
        if inbox.sleeping.swap(false, Ordering::SeqCst) {
            // A failed write means the counter is saturated: the shard is already awake.
            let _ = rustix::io::write(&inbox.wake, &1u64.to_ne_bytes());
        }
        Ok(())
    }

    /// Delivers a message that must not be lost (a reply): waits while the inbox is full.
    /// Inboxes drain every loop turn, so this waits microseconds, not more; a shard that
    /// has exited (the end of a shutdown) drains nothing, and the message is dropped.
    pub fn send_must(&self, to: usize, mut msg: Msg) {
        loop {
            match self.send(to, msg) {
                Ok(()) => return,
                Err(_) if self.inboxes[to].exited.load(Ordering::SeqCst) => return,
                Err(back) => {
                    msg = back;
                    std::thread::yield_now();
                }
            }
        }
    }

    /// The owner shard of an input path: a stable hash (FNV-1a, the same in every build
    /// and run) of its bytes, modulo the shard count.
    pub fn owner_of(&self, input: &std::path::Path) -> usize {
        let mut hasher = Fnv1a::default();
        input.as_os_str().hash(&mut hasher);
        (hasher.finish() % self.inboxes.len() as u64) as usize
    }
}

#[derive(Default)]
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

/// Largest send buffer a connection keeps for its next reply: a few thousand `done` lines.
/// A buffer grown past it by a rare large reply is freed once sent.
const REPLY_BUFFER_KEPT_BYTES: usize = 64 * 1024;

// Token kinds: the top byte of a reactor token.
const KIND_JOB: u64 = 1 << 56;
const KIND_CONN_RECV: u64 = 2 << 56;
const KIND_CONN_SEND: u64 = 3 << 56;
const KIND_ACCEPT: u64 = 4 << 56;
const KIND_WAKE: u64 = 5 << 56;
const KIND_MASK: u64 = 0xff << 56;

struct Conn {
    fd: OwnedFd,
    caller: Arc<Caller>,
    /// The caller is not on the allow lists: it gets one answer, then the connection
    /// closes, so refused callers cannot hold connection slots.
    refused: bool,
    /// The receive buffer (bytes and passed descriptors), or None while a recv owns it.
    rbuf: Option<Box<RecvBuf>>,
    /// Inside a line longer than the limit: drop bytes until the next newline.
    discarding: bool,
    /// Replies not yet handed to a send.
    out: Vec<u8>,
    /// The buffer of the last finished send, kept for the next one, so replies go out
    /// through two buffers that swap rather than a new one per send.
    spare: Vec<u8>,
    sending: bool,
    eof: bool,
    open_requests: usize,
    last_active: Instant,
}

/// The descriptors a connection received and no request took yet (lent from its receive
/// buffer while its lines are handled), with whether the kernel dropped some.
struct PassedFds<'a> {
    fds: &'a mut VecDeque<OwnedFd>,
    fds_truncated: &'a mut bool,
}

struct Waiter {
    reply: ReplyTo,
    wait: bool,
}

/// Who waits for a job: the request that started it, inline, and any duplicates attached
/// later, so an undisputed job needs no list.
struct Waiters {
    first: Waiter,
    more: Vec<Waiter>,
}

impl Waiters {
    fn push(&mut self, waiter: Waiter) {
        self.more.push(waiter);
    }
}

impl IntoIterator for Waiters {
    type Item = Waiter;
    type IntoIter = std::iter::Chain<std::iter::Once<Waiter>, std::vec::IntoIter<Waiter>>;

    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self.first).chain(self.more)
    }
}

struct Slot {
    job: FileJob,
    waiters: Waiters,
}

struct Queued {
    id: JobId,
    spec: FileJobSpec,
    passed: Option<Passed>,
    waiters: Waiters,
}

/// A tree job and where its replies go.
struct Tree {
    job: TreeJob,
    reply: ReplyTo,
    wait: bool,
}

/// A finished job's record, with the shard its paths were made on (which gets them back
/// when the record is dropped).
struct Finished {
    info: JobInfo,
    home: usize,
}

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
    listener: Option<OwnedFd>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    next_conn_shard: usize,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    jobs: Vec<Option<Slot>>,
    free_jobs: Vec<usize>,
    queue: VecDeque<Queued>,
    /// In-flight jobs by a hash of their (op, input, output), to attach duplicates; a hit is
    /// confirmed against the job's own spec (see [`Shard::duplicate_of`]).
    by_key: HashMap<u64, JobId>,
    /// Keys of [`Shard::by_key`]: a random SipHash key, so clients cannot aim collisions.
    key_hasher: std::hash::RandomState,
    seq_to_slot: HashMap<u64, usize>,
    /// Ended jobs, oldest first, at most [`FINISHED_JOBS_KEPT`].
    finished: VecDeque<Finished>,
    /// Path buffers for the specs this shard makes (request paths, tree files); refilled
    /// from the records [`Shard::finished`] drops, here and on other shards.
    spares: SparePaths,
    next_seq: u64,
    gathers: HashMap<u64, Gathering>,
    next_gather: u64,
    stats: ShardStats,
    shutdown: Option<Instant>,
    completions: Vec<Completion>,
    metrics: ShardMetrics,
    trees: HashMap<u64, Tree>,
    /// Trees ready to walk and the file jobs one walk step found, kept for the next pump.
    tree_ready: Vec<u64>,
    tree_specs: Vec<FileJobSpec>,
    /// Messages this shard sends itself, handled by the loop after the current one: a
    /// handler never calls another handler through the message pump, so no chain of
    /// results (a tree's file refused `busy`, retried, refused again...) can grow the
    /// stack.
    local: VecDeque<Msg>,
    /// Inside `start_queued`: a job that ends while being started does not start more
    /// from inside it (the running loop picks them up).
    admitting: bool,
    /// Shard 0 only: open connections per uid, for [`MAX_CONNECTIONS_PER_UID`].
    conns_by_uid: HashMap<u32, usize>,
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
        let (reactor, warning) = Reactor::new(backend, buffers, buf_bytes)?;
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
            accept_paused_until: None,
            next_conn_shard: 0,
            conns: HashMap::new(),
            next_conn: 1,
            jobs: Vec::new(),
            free_jobs: Vec::new(),
            queue: VecDeque::new(),
            by_key: HashMap::new(),
            key_hasher: std::hash::RandomState::new(),
            seq_to_slot: HashMap::new(),
            finished: VecDeque::with_capacity(FINISHED_JOBS_KEPT),
            spares: SparePaths::with_bound(SPARE_PATHS_PER_SHARD),
            next_seq: 1,
            gathers: HashMap::new(),
            next_gather: 1,
            stats,
            shutdown: None,
            completions: Vec::new(),
            metrics: ShardMetrics::new(index),
            trees: HashMap::new(),
            tree_ready: Vec::new(),
            tree_specs: Vec::new(),
            local: VecDeque::new(),
            admitting: false,
            conns_by_uid: HashMap::new(),
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
            if last_tick.elapsed() >= TICK {
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

    /// How long the loop may sleep: until its next tick, or until a tree's files refused
    /// `busy` may go out again, whichever is sooner.
    fn sleep_limit(&self) -> Duration {
        let now = Instant::now();
        self.trees
            .values()
            .filter_map(|tree| tree.job.retry_at())
            .map(|at| at.saturating_duration_since(now))
            .fold(TICK, Duration::min)
            .max(Duration::from_millis(1))
    }

    fn arm_wake(&mut self) {
        let fd = self.shared.inboxes[self.index].wake.as_raw_fd();
        self.reactor.push(KIND_WAKE, Op::ReadEventfd { fd });
    }

    fn arm_accept(&mut self) {
        if let Some(listener) = &self.listener {
            let fd = listener.as_raw_fd();
            self.reactor.push(KIND_ACCEPT, Op::Accept { fd });
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
            Msg::ConnClosed { uid } => self.uid_closed(uid),
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
            Msg::TreeResult {
                tree,
                input,
                size,
                result,
            } => self.tree_result(tree, &input, size, result),
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
        let key = self.next_conn;
        self.next_conn += 1;
        if self.reactor.kind() == BackendKind::Sync {
            let _ = rustix::io::ioctl_fionbio(&fd, true);
        }
        let refused = !self
            .shared
            .callers
            .allows(caller.uid, caller.gid, self.shared.daemon_uid);
        let conn = Conn {
            fd,
            caller,
            refused,
            rbuf: Some(RecvBuf::new(RECV_INITIAL_BYTES)),
            discarding: false,
            out: Vec::new(),
            spare: Vec::new(),
            sending: false,
            eof: false,
            open_requests: 0,
            last_active: Instant::now(),
        };
        self.conns.insert(key, conn);
        self.arm_recv(key);
    }

    fn arm_recv(&mut self, key: u64) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        // Back-pressure: while its replies pile up unread, read no more of its requests.
        if conn.eof || conn.out.len() > MAX_PENDING_REPLY_BYTES {
            return;
        }
        let Some(buf) = conn.rbuf.take() else { return };
        let fd = conn.fd.as_raw_fd();
        self.reactor
            .push(KIND_CONN_RECV | key, Op::Recv { fd, buf });
    }

    fn on_recv(&mut self, key: u64, mut done: Completion) {
        let Some(mut buf) = done.take_recv() else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let n = match done.result {
            Ok(0) | Err(_) => {
                buf.fds.clear();
                conn.rbuf = Some(buf);
                conn.eof = true;
                self.maybe_close(key);
                return;
            }
            Ok(n) => n as usize,
        };
        conn.last_active = Instant::now();
        if buf.fds.len() > MAX_PASSED_FDS_PER_CONN {
            // Descriptors no request takes: close them rather than hold them.
            buf.fds.clear();
            let err = Error::new(
                Code::BadRequest,
                format!(
                    "more than {MAX_PASSED_FDS_PER_CONN} passed descriptors are waiting for a \
                     request with \"fds\": true; they were closed"
                ),
            );
            self.queue_line(key, &error_line(None, &err), false);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let start = buf.filled;
        buf.filled += n;
        let filled = buf.filled;
        // Complete lines end at the last newline; bytes before `start` hold none (they are
        // the unfinished line of earlier receives).
        let consumed = buf.data[start..filled]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |pos| start + pos + 1);
        // A line that was being discarded ends at the first newline.
        let skip_first = conn.discarding && consumed > 0;
        let discarding = conn.discarding && consumed == 0;
        let too_long = filled - consumed > MAX_REQUEST_LINE_BYTES;
        conn.discarding = discarding || too_long;
        if too_long && !discarding {
            // Too long and still no newline: answer now, drop the rest of the line.
            let err = Error::new(
                Code::TooLarge,
                format!(
                    "request line is longer than {MAX_REQUEST_LINE_BYTES} bytes; it was discarded"
                ),
            );
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
        let mut passed = PassedFds { fds, fds_truncated };
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
            if self.conns.get(&key).is_none_or(|c| c.eof) {
                break;
            }
        }
        data.copy_within(consumed..filled, 0);
        buf.filled -= consumed;
        if too_long {
            buf.filled = 0;
        }
        // Grow for a long line, shrink back once it is consumed: an idle connection
        // costs RECV_INITIAL_BYTES, not a whole maximal line.
        if buf.filled == buf.data.len() && buf.data.len() < RECV_BUFFER_BYTES {
            let grown = (buf.data.len() * 2).min(RECV_BUFFER_BYTES);
            buf.data.resize(grown, 0);
        } else if buf.filled == 0 && buf.data.len() > RECV_INITIAL_BYTES {
            buf.data.truncate(RECV_INITIAL_BYTES);
            buf.data.shrink_to_fit();
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.rbuf = Some(buf);
        }
        self.arm_recv(key);
        self.maybe_close(key);
    }

    /// Takes the two descriptors a request with `"fds": true` passed (input, then output)
    /// and checks that they are what such a request promises.
    fn take_passed(passed: &mut PassedFds, spec: &FileJobSpec) -> Result<Passed, Error> {
        let (input, output) = match passed.fds.len() {
            2.. => {
                let input = passed.fds.pop_front().expect("two are queued");
                let output = passed.fds.pop_front().expect("two are queued");
                (input, output)
            }
            _ => {
                let truncated = std::mem::take(passed.fds_truncated);
                passed.fds.clear();
                return Err(Error::new(
                    Code::BadRequest,
                    if truncated {
                        format!(
                            "the request says \"fds\": true, but the descriptors passed with \
                             it did not fit (at most {RECV_FDS_MAX} per message); the kernel \
                             closed them"
                        )
                    } else {
                        "the request says \"fds\": true, but two descriptors (the input, \
                         then the output) did not come with it; pass them with SCM_RIGHTS in \
                         the same sendmsg as the line, or send paths without \"fds\""
                            .to_string()
                    },
                ));
            }
        };
        Passed::check(input, output, spec)
    }

    fn queue_line(&mut self, key: u64, line: &str, final_reply: bool) {
        self.queue_with(key, final_reply, |out| {
            out.extend_from_slice(line.as_bytes())
        });
    }

    /// Appends what `encode` writes to a connection's output and sends it.
    fn queue_with(&mut self, key: u64, final_reply: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if final_reply {
            conn.open_requests = conn.open_requests.saturating_sub(1);
        }
        let closing = conn.eof && conn.open_requests == 0;
        encode(&mut conn.out);
        self.flush(key);
        if closing {
            self.maybe_close(key);
        }
    }

    fn flush(&mut self, key: u64) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.sending || conn.out.is_empty() {
            return;
        }
        conn.sending = true;
        let data = std::mem::replace(&mut conn.out, std::mem::take(&mut conn.spare));
        let fd = conn.fd.as_raw_fd();
        self.reactor
            .push(KIND_CONN_SEND | key, Op::Send { fd, data, sent: 0 });
    }

    fn on_send(&mut self, key: u64, mut done: Completion) {
        let mut data = done.take_vec();
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match done.result {
            Ok(n) if (n as usize) < data.len() => {
                // Partial send: the rest goes first, before anything queued since.
                data.drain(..n as usize);
                data.extend_from_slice(&conn.out);
                conn.out.clear();
                conn.spare = std::mem::replace(&mut conn.out, data);
                conn.sending = false;
                self.flush(key);
            }
            Ok(_) => {
                // Keep the buffer for the next send unless a large reply (a long `jobs`
                // list) grew it: an idle connection should not pin that memory.
                if data.capacity() <= REPLY_BUFFER_KEPT_BYTES {
                    data.clear();
                    conn.spare = data;
                }
                conn.sending = false;
                self.flush(key);
                self.maybe_close(key);
                // Reading may have paused for back-pressure; resume (no-op if a recv is out).
                self.arm_recv(key);
            }
            Err(_) => {
                // The peer is gone: drop what it will never read.
                conn.out.clear();
                conn.sending = false;
                conn.eof = true;
                let _ = rustix::net::shutdown(&conn.fd, rustix::net::Shutdown::Both);
                self.maybe_close(key);
            }
        }
    }

    /// Closes a connection once its peer is gone (or it must go) and nothing is in flight.
    /// Jobs it submitted go on: their replies are dropped.
    fn maybe_close(&mut self, key: u64) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if conn.eof
            && conn.open_requests == 0
            && !conn.sending
            && conn.rbuf.is_some()
            && conn.out.is_empty()
        {
            let uid = conn.caller.uid;
            self.conns.remove(&key);
            let open = self.shared.connections.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::connections(open);
            self.deliver(0, Msg::ConnClosed { uid });
        }
    }

    /// Shard 0: one connection of `uid` closed.
    fn uid_closed(&mut self, uid: u32) {
        if let Some(count) = self.conns_by_uid.get_mut(&uid) {
            *count -= 1;
            if *count == 0 {
                self.conns_by_uid.remove(&uid);
            }
        }
    }

    fn on_line(&mut self, key: u64, line: &[u8], fds: &mut PassedFds) {
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.open_requests += 1;
        }
        let parsed = protocol::parse_request_reusing(line, &mut self.spares);
        let id = parsed.id;
        let request = match parsed.request {
            Ok(request) => request,
            Err(err) => {
                self.queue_line(key, &error_line(id.as_ref(), &err), true);
                return;
            }
        };
        // Descriptors passed with this line are taken now, whatever happens to the request,
        // so a refused request cannot leave them to be taken by the next one.
        let mut request = request;
        if let Request::File(spec) = &mut request
            && let Some(conn) = self.conns.get(&key)
        {
            spec.caller = Some(Arc::clone(&conn.caller));
        }
        let passed = match &request {
            Request::File(spec) if spec.fds => Some(Self::take_passed(fds, spec)),
            _ => None,
        };
        let reply = ReplyTo {
            shard: self.index,
            conn: key,
            id,
            tree: None,
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let caller = Arc::clone(&conn.caller);
        let (uid, gid) = (caller.uid, caller.gid);
        let refused_caller = conn.refused;
        if refused_caller {
            // One answer, then the connection closes: read nothing more from it.
            conn.eof = true;
        }
        let verdict = if refused_caller && !matches!(request, Request::Ping) {
            Err(Error::new(
                Code::PermissionDenied,
                format!(
                    "uid {uid} (gid {gid}) may not use this daemon; ask its administrator to add it to allow_uids or allow_gids"
                ),
            ))
        } else if matches!(request, Request::Reload) && !caller.is_admin(self.shared.daemon_uid) {
            Err(Error::new(
                Code::PermissionDenied,
                "reload is an admin operation: it needs uid 0 or the daemon's uid",
            ))
        } else if let Request::File(spec) = &request
            && !spec.fds
            && !caller.is_admin(self.shared.daemon_uid)
            && self.shared.act_as_callers
            && !self.shared.can_act_as
        {
            Err(Error::new(
                Code::PermissionDenied,
                format!(
                    "this daemon cannot act with the credentials of uid {uid} (it runs without \
                     CAP_SETUID and CAP_SETGID), so it opens no paths for it; pass the files as \
                     descriptors (the ringcrypt client does for single files), or ask the \
                     administrator about path_credentials"
                ),
            ))
        } else {
            Ok(())
        };
        audit(uid, gid, &request, verdict.as_ref().err());
        if let Err(err) = verdict {
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
            self.queue_line(key, &error_line(reply.id.as_ref(), &err), true);
            return;
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
                Err(err) => self.queue_line(key, &error_line(reply.id.as_ref(), &err), true),
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
                    self.refuse(
                        &reply,
                        Error::new(Code::Busy, "the daemon's queues are full; retry shortly"),
                    );
                    self.recycle(self.index, spec.input, spec.output);
                }
            }
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

    // ---- jobs on the owner shard -------------------------------------------------------

    fn refuse(&mut self, reply: &ReplyTo, err: Error) {
        self.reply(reply, Reply::Error(err), true);
    }

    fn submit(&mut self, spec: FileJobSpec, reply: ReplyTo, passed: Option<Passed>) {
        let waiter = Waiter {
            wait: spec.wait,
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
                self.refuse(&waiter.reply, err);
            }
            return;
        }
        // Jobs on passed descriptors are never merged: their paths are only names.
        let key = self.job_key(&spec);
        let duplicate = match passed {
            None => self.duplicate_of(key, &spec),
            Some(_) => None,
        };
        if let Some(id) = duplicate {
            // The same work is in flight: attach to it; it runs once.
            if waiter.reply.tree.is_none() {
                self.reply(&waiter.reply, Reply::Accepted(id), !waiter.wait);
            }
            let home = waiter.reply.shard;
            if let Some(&slot) = self.seq_to_slot.get(&id.seq) {
                self.jobs[slot]
                    .as_mut()
                    .expect("live slot")
                    .waiters
                    .push(waiter);
            } else if let Some(queued) = self.queue.iter_mut().find(|q| q.id == id) {
                queued.waiters.push(waiter);
            }
            // The running job has the same paths; this spec's buffers go back.
            self.recycle(home, spec.input, spec.output);
            return;
        }
        if self.queue.len() >= MAX_QUEUED_JOBS_PER_SHARD {
            if waiter.reply.tree.is_some() {
                // Trees wait for capacity: the file goes back to its tree for a retry.
                let input = spec.input.clone();
                self.answer_tree(&waiter.reply, input, 0, FileResult::Busy(Box::new(spec)));
            } else {
                self.refuse(
                    &waiter.reply,
                    Error::new(Code::Busy, "this shard's job queue is full; retry shortly"),
                );
                self.recycle(waiter.reply.shard, spec.input, spec.output);
            }
            return;
        }
        let id = JobId {
            shard: self.index as u32,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        if passed.is_none() {
            self.by_key.insert(key, id);
        }
        if waiter.reply.tree.is_none() {
            self.reply(&waiter.reply, Reply::Accepted(id), !waiter.wait);
        }
        self.queue.push_back(Queued {
            id,
            spec,
            passed,
            waiters: Waiters {
                first: waiter,
                more: Vec::new(),
            },
        });
        self.admit();
    }

    /// The dedup key of a job's (op, input, output).
    fn job_key(&self, spec: &FileJobSpec) -> u64 {
        self.key_hasher
            .hash_one((spec.op, spec.input.as_path(), spec.output.as_path()))
    }

    /// The in-flight job doing exactly what `spec` asks, for the same caller
    /// ([`FileJobSpec::same_work`]), if any. Requests for the same (op, input, output) that
    /// differ in anything else (key, overwrite, caller...) run as jobs of their own. Two
    /// different jobs whose keys collide (a 2^-64 chance) are both run.
    fn duplicate_of(&self, key: u64, spec: &FileJobSpec) -> Option<JobId> {
        let id = *self.by_key.get(&key)?;
        let same = |other: &FileJobSpec| other.same_work(spec);
        let found = match self.seq_to_slot.get(&id.seq) {
            Some(&slot) => self.jobs[slot].as_ref().map(|s| &s.job.spec),
            None => self.queue.iter().find(|q| q.id == id).map(|q| &q.spec),
        };
        found.filter(|other| same(other)).map(|_| id)
    }

    /// Starts queued jobs while buffers last. A job that ends while being started calls
    /// this again from inside the loop below: that call returns at once, and the loop goes
    /// on, so starting never recurses.
    fn admit(&mut self) {
        if self.admitting {
            return;
        }
        self.admitting = true;
        self.start_queued();
        self.admitting = false;
        self.metrics.jobs(self.queue.len(), self.seq_to_slot.len());
    }

    fn start_queued(&mut self) {
        while !self.queue.is_empty() {
            if self.reactor.free_buffers() < BUFFERS_PER_JOB {
                return;
            }
            let bufs: [BufId; BUFFERS_PER_JOB] = std::array::from_fn(|_| {
                self.reactor
                    .acquire()
                    .expect("enough buffers are free, checked above")
            });
            let queued = self.queue.pop_front().expect("not empty");
            let slot = match self.free_jobs.pop() {
                Some(slot) => slot,
                None => {
                    self.jobs.push(None);
                    self.jobs.len() - 1
                }
            };
            let token_base = KIND_JOB | ((slot as u64) << 8);
            let run_as = self.run_as(&queued.spec).cloned();
            let mut job = FileJob::new(queued.id, queued.spec, queued.passed, token_base, bufs);
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
            self.seq_to_slot.insert(queued.id.seq, slot);
            self.jobs[slot] = Some(Slot {
                job,
                waiters: queued.waiters,
            });
            self.with_job(slot, |job, ctx| job.start(ctx));
        }
    }

    /// The identity a job's path ops run with: the caller's, unless the caller is root or
    /// the daemon's own uid (or the operator chose the daemon's rights for everyone). Jobs
    /// on passed descriptors open nothing, so they need none.
    fn run_as<'s>(&self, spec: &'s FileJobSpec) -> Option<&'s Arc<Caller>> {
        spec.caller.as_ref().filter(|caller| {
            !spec.fds && self.shared.act_as_callers && !caller.is_admin(self.shared.daemon_uid)
        })
    }

    fn with_job(&mut self, slot: usize, f: impl FnOnce(&mut FileJob, &mut JobCtx)) {
        let Some(entry) = self.jobs[slot].as_mut() else {
            return;
        };
        let mut ctx = JobCtx {
            reactor: &mut self.reactor,
            ring: &self.ring,
            roots: &self.shared.roots,
            durability: self.shared.durability,
            chunk_log2: self.shared.chunk_log2,
            metrics: &self.metrics,
        };
        f(&mut entry.job, &mut ctx);
        if entry.job.is_finished() {
            self.finish(slot);
        }
    }

    fn finish(&mut self, slot: usize) {
        let Slot { mut job, waiters } = self.jobs[slot].take().expect("live slot");
        self.free_jobs.push(slot);
        self.seq_to_slot.remove(&job.id.seq);
        let key = self.job_key(&job.spec);
        if self.by_key.get(&key) == Some(&job.id) {
            self.by_key.remove(&key);
        }
        for buf in job.buffers() {
            self.reactor.release(buf);
        }
        if let Some(who) = job.who() {
            self.reactor.release_identity(who);
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
        self.stats.bytes_in += job.bytes_in;
        self.stats.bytes_out += job.bytes_out;
        self.stats.jobs_done += 1;
        let inbox = &self.shared.inboxes[self.index];
        inbox.jobs_done.fetch_add(1, Ordering::Relaxed);
        inbox.bytes_out.fetch_add(job.bytes_out, Ordering::Relaxed);
        // The spec's paths were made where the first waiter's replies go: the connection's
        // shard parsed the request (and runs jobs on passed descriptors itself), a tree's
        // shard built its files' specs. Room is made in the record first, so the buffers
        // it frees travel ahead of the replies: the request a reply prompts finds them.
        let home = waiters.first.reply.shard;
        self.make_room_in_finished();
        let size = job.input_len();
        self.answer_waiters(waiters, job.id, &job.spec, size, &outcome);
        // The job is over: its paths move into the record of finished jobs.
        self.remember(
            JobInfo {
                job: job.id,
                op: job.spec.op,
                input: std::mem::take(&mut job.spec.input),
                output: std::mem::take(&mut job.spec.output),
                state,
                bytes_done: job.bytes_in,
                bytes_total: job.input_len(),
            },
            home,
        );
        self.admit();
    }

    /// Gives every waiter of an ended job its one final answer: a `done` or `error` line
    /// for a request, a result for a tree's file (whatever ended it: the job, a cancel, a
    /// shutdown), so no tree is left waiting for a file and no client for a reply.
    fn answer_waiters(
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

    // ---- tree jobs on the connection's shard ----------------------------------------------

    /// Sends a tree file's result to its tree (here or on the tree's shard).
    fn answer_tree(&mut self, reply: &ReplyTo, input: PathBuf, size: u64, result: FileResult) {
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

    fn start_tree(&mut self, key: u64, spec: FileJobSpec, reply: ReplyTo) {
        let id = JobId {
            shard: self.index as u32,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let wait = spec.wait;
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
                let reply_id = reply.id.as_ref();
                self.queue_with(key, !wait, |out| {
                    protocol::write_accepted(out, reply_id, id);
                });
                // The loop walks it on its next turn.
                self.trees.insert(id.seq, Tree { job, reply, wait });
            }
            Err(err) => self.queue_line(key, &error_line(reply.id.as_ref(), &err), true),
        }
    }

    /// Walks every tree that has room for more files; returns whether any did. Called by
    /// the loop only, once a turn: results and retries wait for the next turn, so walking
    /// never nests inside the handling of a result.
    fn pump_trees(&mut self) -> bool {
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

    fn tree_result(&mut self, seq: u64, input: &std::path::Path, size: u64, result: FileResult) {
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
    fn tree_result_finish(&mut self, seq: u64) {
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
        let line = if !wait {
            None
        } else if cancelled {
            let err = Error::new(
                Code::Cancelled,
                format!(
                    "{}: the tree job was cancelled after {} files ({} failed)",
                    job.spec.input.display(),
                    report.files_ok,
                    report.files_failed
                ),
            );
            Some(error_line(reply.id.as_ref(), &err))
        } else {
            Some(protocol::done(reply.id.as_ref(), &report))
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
            },
            self.index,
        );
        if let Some(line) = line {
            self.queue_line(reply.conn, &line, true);
        }
    }

    fn tree_progress(&mut self, seq: u64) {
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

    /// Records an ended job whose paths were made on shard `home`.
    fn remember(&mut self, info: JobInfo, home: usize) {
        self.make_room_in_finished();
        self.finished.push_back(Finished { info, home });
    }

    /// Drops the oldest record if the ring is full, sending its paths home for reuse.
    fn make_room_in_finished(&mut self) {
        if self.finished.len() < FINISHED_JOBS_KEPT {
            return;
        }
        let Some(Finished { info, home }) = self.finished.pop_front() else {
            return;
        };
        self.recycle(home, info.input, info.output);
    }

    /// Gives a spec's path buffers back to the shard that made them. A full inbox or pool
    /// drops them instead: recycling saves an allocation, it is never worth a wait.
    fn recycle(&mut self, home: usize, input: PathBuf, output: PathBuf) {
        if home == self.index {
            self.spares.give(input);
            self.spares.give(output);
        } else {
            let _ = self.shared.send(home, Msg::Recycle { input, output });
        }
    }

    fn job_info(&self, id: JobId) -> Option<JobInfo> {
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
            });
        }
        if let Some(&slot) = self.seq_to_slot.get(&id.seq) {
            let job = &self.jobs[slot].as_ref()?.job;
            return Some(JobInfo {
                job: id,
                op: job.spec.op,
                input: job.spec.input.clone(),
                output: job.spec.output.clone(),
                state: JobState::Running,
                bytes_done: job.bytes_in,
                bytes_total: job.input_len(),
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
            });
        }
        self.finished
            .iter()
            .find(|done| done.info.job == id)
            .map(|done| done.info.clone())
    }

    fn all_jobs(&self) -> Vec<JobInfo> {
        let live = self
            .seq_to_slot
            .keys()
            .chain(self.trees.keys())
            .chain(self.queue.iter().map(|q| &q.id.seq));
        let mut out: Vec<JobInfo> = live
            .filter_map(|&seq| {
                self.job_info(JobId {
                    shard: self.index as u32,
                    seq,
                })
            })
            .collect();
        out.extend(self.finished.iter().map(|done| done.info.clone()));
        out
    }

    fn current_stats(&self) -> ShardStats {
        ShardStats {
            queued: self.queue.len() as u64,
            running: self.seq_to_slot.len() as u64,
            ..self.stats.clone()
        }
    }

    fn cancel(&mut self, id: JobId, reply: ReplyTo) {
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
        if let Some(pos) = self.queue.iter().position(|q| q.id == id) {
            let queued = self.queue.remove(pos).expect("position is valid");
            self.metrics
                .job_ended(queued.spec.op, JobResult::Cancelled, 0.0);
            self.metrics.jobs(self.queue.len(), self.seq_to_slot.len());
            let key = self.job_key(&queued.spec);
            if self.by_key.get(&key) == Some(&id) {
                self.by_key.remove(&key);
            }
            let err = Error::new(
                Code::Cancelled,
                format!("{}: the job was cancelled", queued.spec.input.display()),
            );
            // As in `finish`: the first waiter's shard made the spec.
            let home = queued.waiters.first.reply.shard;
            self.answer_waiters(queued.waiters, id, &queued.spec, 0, &Err(err));
            self.remember(
                JobInfo {
                    job: id,
                    op: queued.spec.op,
                    input: queued.spec.input,
                    output: queued.spec.output,
                    state: JobState::Cancelled,
                    bytes_done: 0,
                    bytes_total: 0,
                },
                home,
            );
            self.reply(&reply, Reply::Cancelled(id), true);
            return;
        }
        if let Some(&slot) = self.seq_to_slot.get(&id.seq) {
            self.with_job(slot, |job, ctx| job.cancel(ctx));
            self.reply(&reply, Reply::Cancelled(id), true);
            return;
        }
        let err = match self.finished.iter().find(|done| done.info.job == id) {
            Some(Finished { info, .. }) => Error::new(
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

    // ---- completions, timers, shutdown -------------------------------------------------

    fn on_completion(&mut self, mut done: Completion) {
        let kind = done.token & KIND_MASK;
        let rest = done.token & !KIND_MASK;
        match kind {
            KIND_JOB => {
                let slot = (rest >> 8) as usize;
                let tag = rest & 0xff;
                self.with_job(slot, |job, ctx| job.on_complete(ctx, tag, done));
            }
            KIND_CONN_RECV => self.on_recv(rest, done),
            KIND_CONN_SEND => self.on_send(rest, done),
            KIND_ACCEPT => {
                let fd = done.take_fd();
                self.on_accept(done.result.map(|_| fd.expect("accept yields an fd")));
            }
            KIND_WAKE => self.arm_wake(),
            _ => {}
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
                        *self.conns_by_uid.entry(caller.uid).or_default() += 1;
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

    /// Whether a new connection fits, given `open` connections before it: the caller's
    /// identity if so. Root and the daemon's uid may use the last
    /// [`ADMIN_RESERVED_CONNECTIONS`] slots, so an administrator always gets in; every
    /// other uid may hold at most [`MAX_CONNECTIONS_PER_UID`].
    fn admit_conn(&self, fd: &OwnedFd, open: usize) -> Result<Caller, Error> {
        let caller = Caller::of_peer(fd.as_fd()).map_err(|e| {
            Error::new(
                Code::Internal,
                format!("cannot read the connecting peer's credentials: {e}"),
            )
        })?;
        let busy = |why: String| Error::new(Code::Busy, why);
        if caller.is_admin(self.shared.daemon_uid) {
            if open >= MAX_CONNECTIONS {
                return Err(busy("too many connections; retry shortly".into()));
            }
            return Ok(caller);
        }
        if open >= MAX_CONNECTIONS - ADMIN_RESERVED_CONNECTIONS {
            return Err(busy("too many connections; retry shortly".into()));
        }
        let held = self.conns_by_uid.get(&caller.uid).copied().unwrap_or(0);
        if held >= MAX_CONNECTIONS_PER_UID {
            return Err(busy(format!(
                "uid {} already has {held} connections open, the most one user may; close \
                 some, or send more requests on each (they are pipelined)",
                caller.uid
            )));
        }
        Ok(caller)
    }

    fn tick(&mut self) {
        test_hooks::maybe_hang(self.index, self.shared.started);
        if let Some(until) = self.accept_paused_until
            && Instant::now() >= until
        {
            self.accept_paused_until = None;
            if self.accepting {
                self.arm_accept();
            }
        }
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let limit = if c.refused {
                    REFUSED_IDLE_TIMEOUT
                } else {
                    IDLE_TIMEOUT
                };
                c.open_requests == 0 && !c.sending && c.last_active.elapsed() > limit
            })
            .map(|(&k, _)| k)
            .collect();
        for key in idle {
            self.close_conn(key);
        }
        if let Some(deadline) = self.shutdown
            && Instant::now() >= deadline
        {
            let running: Vec<usize> = self.seq_to_slot.values().copied().collect();
            for slot in running {
                self.with_job(slot, |job, ctx| job.cancel(ctx));
            }
        }
    }

    /// Shuts a connection's socket so its pending recv completes, then it closes.
    fn close_conn(&mut self, key: u64) {
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.eof = true;
            let _ = rustix::net::shutdown(&conn.fd, rustix::net::Shutdown::Both);
        }
        self.maybe_close(key);
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
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
        if let Some(listener) = &self.listener {
            self.accepting = false;
            let _ = rustix::net::shutdown(listener, rustix::net::Shutdown::Both);
        }
        // Queued jobs never started: cancel them now; running ones get until the deadline.
        let queued: Vec<JobId> = self.queue.iter().map(|q| q.id).collect();
        for id in queued {
            let reply = ReplyTo {
                shard: self.index,
                conn: 0,
                id: None,
                tree: None,
            };
            self.cancel(id, reply);
        }
    }

    /// During a shutdown: whether this shard may exit now. It closes each connection that
    /// is owed nothing more (no request without its final line, nothing left to send) once
    /// its own jobs are over, and exits when every shard is quiet (no job, tree or
    /// connection anywhere, so no reply can still be on its way to one of its clients), or
    /// at the latest [`SHUTDOWN_GRACE`] after the drain deadline, whatever is left.
    fn finished_shutdown(&mut self) -> bool {
        let Some(deadline) = self.shutdown else {
            return false;
        };
        let jobs_left = !self.seq_to_slot.is_empty()
            || !self.queue.is_empty()
            || !self.trees.is_empty()
            || !self.local.is_empty()
            || !self.gathers.is_empty();
        if !jobs_left {
            let owed_nothing: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.open_requests == 0 && c.out.is_empty() && !c.sending)
                .map(|(&k, _)| k)
                .collect();
            for key in owed_nothing {
                self.close_conn(key);
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

/// Hooks that exist only with the `test-hooks` feature (the test suite's).
mod test_hooks {
    use std::time::Instant;

    /// `RINGCRYPT_TEST_HANG_SHARD=I:MS` makes shard I stop looping MS milliseconds after
    /// start, as a wedged shard would, so the watchdog test can see the pings stop.
    #[cfg(feature = "test-hooks")]
    pub fn maybe_hang(index: usize, started: Instant) {
        let Ok(spec) = std::env::var("RINGCRYPT_TEST_HANG_SHARD") else {
            return;
        };
        let Some((shard, after)) = spec.split_once(':') else {
            return;
        };
        let (Ok(shard), Ok(after)) = (shard.parse::<usize>(), after.parse::<u64>()) else {
            return;
        };
        if shard == index && started.elapsed().as_millis() as u64 >= after {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    pub fn maybe_hang(_index: usize, _started: Instant) {}
}

/// One audit line per request, accepted or refused: who (from SO_PEERCRED), what, and on
/// which paths. Never key material (requests carry key names at most).
fn audit(uid: u32, gid: u32, request: &Request, refused: Option<&Error>) {
    let (verdict, code) = match refused {
        None => ("accepted", ""),
        Some(err) => ("refused", err.code.as_str()),
    };
    let code = if code.is_empty() {
        String::new()
    } else {
        format!(" code={code}")
    };
    match request {
        Request::File(spec) => eprintln!(
            "audit: {verdict} uid={uid} gid={gid} op={}{}{} input={:?} output={:?}{code}",
            spec.op.as_str(),
            if spec.recursive { " recursive" } else { "" },
            // Passed descriptors: the paths are the caller's names for them.
            if spec.fds { " fds" } else { "" },
            spec.input,
            spec.output
        ),
        // Health checks are not audited: a monitoring loop would drown the log.
        Request::Ping if refused.is_none() => {}
        other => eprintln!(
            "audit: {verdict} uid={uid} gid={gid} op={}{code}",
            other.op()
        ),
    }
}

/// An error reply line, counted by code.
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
