//! What crosses between shards: the messages ([`Msg`]), replies as data ([`Reply`]), each
//! shard's bounded inbox and its wake-up, and the fixed state every shard can read
//! ([`Shared`]): configuration, allow lists, and the routing hash.
//!
//! What this room does not do: handle a message (the shard's loop does) or touch a socket
//! or a file.

use std::hash::{Hash, Hasher};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use crate::crypto::keys::KeyRing;
use crate::daemon::creds::Caller;
use crate::daemon::job::RangeWork;
use crate::daemon::roots::Roots;
use crate::daemon::tree_job::FileResult;
use crate::durable::Durability;
use crate::error::Error;
use crate::limits::INBOX_DEPTH;
use crate::protocol::{self, FileJobSpec, JobId, JobInfo, RequestId, ShardStats};

/// Where a reply goes: a connection on some shard, and the request id to echo.
#[derive(Clone, Debug)]
pub struct ReplyTo {
    pub shard: usize,
    pub conn: u64,
    pub id: Option<RequestId>,
    /// A file of tree job `tree` on shard `shard`: results go back as [`Msg::TreeResult`],
    /// not as reply lines.
    pub tree: Option<u64>,
    /// A file of a batch: its index in the request's `inputs` (0 for anything else).
    pub item: u32,
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
        /// The file's index in its batch's `inputs` (0 for a tree's file).
        item: u32,
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
    /// A range of another shard's split file, to run here.
    Range(Box<RangeWork>),
    /// A range of this shard's split file `owner` ended.
    RangeDone {
        owner: JobId,
        result: Result<(), Error>,
    },
    /// Split file `owner` failed or was cancelled: stop its ranges here.
    RangeCancel {
        owner: JobId,
    },
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
    /// A single file's progress, for a request that asked (`progress`).
    Progress(protocol::Progress),
}

impl Reply {
    /// Writes the reply line into `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>, id: Option<&RequestId>) {
        match self {
            Reply::Accepted(job) => protocol::write_accepted(out, id, *job),
            Reply::Done(report) => protocol::write_done(out, id, report),
            Reply::Status(info) => protocol::write_status(out, id, info),
            Reply::Cancelled(job) => protocol::write_cancelled(out, id, *job),
            Reply::Error(err) => protocol::write_error(out, id, err),
            Reply::Progress(p) => protocol::write_progress(out, id, p),
        }
    }
}

/// One shard's inbox: a bounded queue plus the eventfd that wakes it.
pub struct Inbox {
    pub(super) queue: ArrayQueue<Msg>,
    pub(super) sleeping: AtomicBool,
    pub(super) wake: OwnedFd,
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
    /// Files at least this many bytes are split into ranges (0: never).
    pub split_min: u64,
    /// `--io`: direct or buffered file IO.
    pub io: crate::daemon::job::IoMode,
    /// The process's umask, read once at start (file jobs create outputs with modes it
    /// applies to).
    pub umask: u32,
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
