//! The reactor: one per shard. It owns the shard's io_uring (or the synchronous fallback),
//! the op slab keyed by `user_data`, and the shard's fixed buffer pool. This is the only room
//! with io_uring `unsafe`; each item that needs it allows it alone and says why it is sound.
//!
//! Ownership: an op owns its memory (its `Vec` or the pool buffer it names) from
//! [`Reactor::push`] until its [`Completion`] hands it back. Paths are borrowed only for the
//! call to `push`, which copies them into path buffers of the op's slot (allocated once per
//! slot and reused), where they stay with the `open_how` until the op completes. The kernel may
//! write into that memory until the completion arrives, so nothing else can reach it: a pool
//! buffer is marked lent and [`Reactor::buf_mut`] refuses it; a `Vec` lives inside the slab.
//! Descriptors are owned by the reactor's table (`files`), and ops name them by [`File`]
//! handles: a descriptor closes only once no op in flight names it, so a queued op can never
//! reach a file that reused its number.
//!
//! The synchronous backend runs the same ops as plain syscalls: file ops complete at once;
//! socket and eventfd ops, and reads and writes on a stream (offset [`STREAM`]), are tried
//! non-blocking and, if they would block, parked until `poll(2)` says they are ready. It is chosen when io_uring cannot be set up, or forced with
//! `RINGCRYPT_BACKEND=sync`.
//!
//! The rooms: this file has the ops and their completions, the [`Reactor`] with what does not
//! depend on the backend (the op slab, caller identities, turning a finished op into its
//! [`Completion`]); `files` the descriptor table; `uring` the io_uring backend; `sync` the synchronous one; `pool` the fixed
//! buffer pool; `recvmsg` a connection's receive buffer and its control messages.
//!
//! What this room does not do: decide what to do with a completion (jobs and connections do),
//! or know about files, keys or the protocol.

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::types;

use crate::daemon::creds::{ActAs, Caller};

mod files;
mod pool;
mod recvmsg;
mod sync;
#[cfg(test)]
mod tests;
mod uring;

pub use files::File;
pub use pool::{BUF_ALIGN, BufId};
pub use recvmsg::{RECV_FDS_MAX, RecvBuf};

use files::Files;
use pool::Pool;
use sync::SyncBackend;
use uring::UringBackend;

/// Which implementation runs the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Uring,
    Sync,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Uring => "uring",
            BackendKind::Sync => "sync",
        }
    }
}

/// One operation. Memory named here is owned by the op until its completion, except paths:
/// they are bytes without the NUL terminator (which no request path can hold), copied by
/// [`Reactor::push`]. Descriptors are [`File`] handles of the reactor's table (`F`); the
/// reactor pins them for the op's life and hands the backends their numbers (`F = RawFd`).
pub enum Op<'a, F = File> {
    /// pread into `buf[at .. at + len]` of a pool buffer.
    ReadFixed {
        fd: F,
        buf: BufId,
        at: usize,
        len: usize,
        offset: u64,
    },
    /// pwrite from `buf[at .. at + len]` of a pool buffer.
    WriteFixed {
        fd: F,
        buf: BufId,
        at: usize,
        len: usize,
        offset: u64,
    },
    /// pread into an owned vector (its capacity). Jobs read into pool buffers; the reactor's
    /// tests use this to read back what they wrote.
    #[cfg_attr(not(test), allow(dead_code))]
    ReadVec {
        fd: F,
        data: Vec<u8>,
        len: usize,
        offset: u64,
    },
    Fsync {
        fd: F,
    },
    /// openat2 relative to `dir`; the result is the new fd.
    OpenAt2 {
        dir: F,
        path: &'a [u8],
        flags: u64,
        mode: u64,
        resolve: u64,
    },
    /// Gives the open (unnamed, `O_TMPFILE`) `file` the name `to` in `to_dir`. `by_fd`:
    /// `linkat(N, "", to_dir, to, AT_EMPTY_PATH)`, no path looked up, which the kernel
    /// allows with `CAP_DAC_READ_SEARCH` or (Linux 6.10 on) to the credentials the file was
    /// opened with, and refuses with `ENOENT` otherwise; else
    /// `linkat(AT_FDCWD, "/proc/self/fd/N", to_dir, to, AT_SYMLINK_FOLLOW)`, which needs
    /// neither but looks the path up through `/proc`.
    LinkFile {
        file: F,
        to_dir: F,
        to: &'a [u8],
        by_fd: bool,
    },
    /// renameat2(dir, from, dir, to, flags)
    RenameAt {
        dir: F,
        from: &'a [u8],
        to: &'a [u8],
        flags: u32,
    },
    UnlinkAt {
        dir: F,
        path: &'a [u8],
    },
    /// accept4 on a listening socket; the result is the new fd (close-on-exec).
    Accept {
        fd: F,
    },
    /// recvmsg into `buf.data[buf.filled..]` (up to its length), taking any descriptors
    /// passed with the bytes (`SCM_RIGHTS`) into `buf.fds`.
    Recv {
        fd: F,
        buf: Box<RecvBuf>,
    },
    /// send `data[sent..]`.
    Send {
        fd: F,
        data: Vec<u8>,
        sent: usize,
    },
    /// read 8 bytes from an eventfd (the shard's wake-up), into a buffer the reactor owns.
    ReadEventfd {
        fd: F,
    },
}

/// The `offset` of a [`Op::ReadFixed`] or [`Op::WriteFixed`] on a stream (a pipe, a
/// socket, a character device): the descriptor's current position, which a stream ignores.
/// io_uring takes it as `-1`; the sync backend waits for such an op's descriptor to be
/// ready, as for a socket op, instead of blocking the shard on it.
pub const STREAM: u64 = u64::MAX;

/// An op as the backends see it: descriptors by number, pinned open by the reactor.
pub(super) type RawOp<'a> = Op<'a, RawFd>;

impl<'a, F> Op<'a, F> {
    /// The op resolves a path, so whose credentials it runs with matters.
    fn names_a_path(&self) -> bool {
        matches!(
            self,
            Op::OpenAt2 { .. } | Op::LinkFile { .. } | Op::RenameAt { .. } | Op::UnlinkAt { .. }
        )
    }

    /// The same op with each descriptor mapped by `f` (at most two per op), or the first
    /// error `f` gives.
    fn map_fds<G, E>(self, mut f: impl FnMut(F) -> Result<G, E>) -> Result<Op<'a, G>, E> {
        Ok(match self {
            Op::ReadFixed {
                fd,
                buf,
                at,
                len,
                offset,
            } => Op::ReadFixed {
                fd: f(fd)?,
                buf,
                at,
                len,
                offset,
            },
            Op::WriteFixed {
                fd,
                buf,
                at,
                len,
                offset,
            } => Op::WriteFixed {
                fd: f(fd)?,
                buf,
                at,
                len,
                offset,
            },
            Op::ReadVec {
                fd,
                data,
                len,
                offset,
            } => Op::ReadVec {
                fd: f(fd)?,
                data,
                len,
                offset,
            },
            Op::Fsync { fd } => Op::Fsync { fd: f(fd)? },
            Op::OpenAt2 {
                dir,
                path,
                flags,
                mode,
                resolve,
            } => Op::OpenAt2 {
                dir: f(dir)?,
                path,
                flags,
                mode,
                resolve,
            },
            Op::LinkFile {
                file,
                to_dir,
                to,
                by_fd,
            } => Op::LinkFile {
                file: f(file)?,
                to_dir: f(to_dir)?,
                to,
                by_fd,
            },
            Op::RenameAt {
                dir,
                from,
                to,
                flags,
            } => Op::RenameAt {
                dir: f(dir)?,
                from,
                to,
                flags,
            },
            Op::UnlinkAt { dir, path } => Op::UnlinkAt { dir: f(dir)?, path },
            Op::Accept { fd } => Op::Accept { fd: f(fd)? },
            Op::Recv { fd, buf } => Op::Recv { fd: f(fd)?, buf },
            Op::Send { fd, data, sent } => Op::Send {
                fd: f(fd)?,
                data,
                sent,
            },
            Op::ReadEventfd { fd } => Op::ReadEventfd { fd: f(fd)? },
        })
    }

    /// The descriptors the op names.
    fn fds(&self) -> [Option<F>; 2]
    where
        F: Copy,
    {
        match self {
            Op::LinkFile { file, to_dir, .. } => [Some(*file), Some(*to_dir)],
            Op::ReadFixed { fd, .. }
            | Op::WriteFixed { fd, .. }
            | Op::ReadVec { fd, .. }
            | Op::Fsync { fd }
            | Op::Accept { fd }
            | Op::Recv { fd, .. }
            | Op::Send { fd, .. }
            | Op::ReadEventfd { fd } => [Some(*fd), None],
            Op::OpenAt2 { dir, .. } | Op::RenameAt { dir, .. } | Op::UnlinkAt { dir, .. } => {
                [Some(*dir), None]
            }
        }
    }

    /// The memory the op owns, for an op that never runs (its descriptor was closed).
    fn into_held(self) -> Held {
        match self {
            Op::ReadVec { data, .. } | Op::Send { data, .. } => Held::Vec(data),
            Op::Recv { buf, .. } => Held::Recv(buf),
            _ => Held::Nothing,
        }
    }
}

/// What an op held, handed back with its completion.
pub enum Held {
    Nothing,
    Vec(Vec<u8>),
    Recv(Box<RecvBuf>),
    Buf(BufId),
    /// The descriptor an open or accept produced, owned from the moment it completed.
    Fd(OwnedFd),
}

/// A finished op: the owner's token, the result (bytes or fd, or the OS error), and the
/// memory the op owned.
pub struct Completion {
    pub token: u64,
    pub result: io::Result<u32>,
    pub held: Held,
}

impl Completion {
    /// The owned vector back (for `ReadVec`, `Recv`, `Send`).
    pub fn take_vec(&mut self) -> Vec<u8> {
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Vec(data) => data,
            _ => Vec::new(),
        }
    }

    /// The receive buffer of a `Recv` back.
    pub fn take_recv(&mut self) -> Option<Box<RecvBuf>> {
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Recv(buf) => Some(buf),
            _ => None,
        }
    }

    /// The descriptor an `OpenAt2` or `Accept` produced, or the error it failed with.
    pub fn opened(&mut self) -> io::Result<OwnedFd> {
        let result = std::mem::replace(&mut self.result, Ok(0));
        result.and_then(|_| {
            self.take_fd()
                .ok_or_else(|| io::Error::other("the op produced no descriptor"))
        })
    }

    /// The descriptor an `OpenAt2` or `Accept` produced (None if it failed).
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Fd(fd) => Some(fd),
            _ => None,
        }
    }
}

/// Ops per ring submission queue: enough for every running job's batch reads (8 per
/// buffer) plus connection traffic; the completion queue is twice this by default.
pub const RING_ENTRIES: u32 = 1024;

/// Caller identities one reactor keeps at once. A running job holds one (at most
/// `limits::RUNNING_JOBS_PER_SHARD` per shard), and identities no job holds stay cached for
/// the caller's next job, evicted when room is needed. With io_uring each one is a
/// registered personality, a kernel object: this bounds them.
pub const IDENTITIES_PER_REACTOR: usize = 64;

/// A caller's identity registered with a reactor, for [`Reactor::push_as`]: ops pushed with
/// it run with the caller's credentials. Valid until [`Reactor::release_identity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who(u16);

struct Identity {
    caller: Arc<Caller>,
    /// Jobs holding this identity; an entry with none may be evicted.
    users: usize,
    /// io_uring: the personality id the kernel gave these credentials.
    personality: Option<u16>,
}

// ---- the op slab ------------------------------------------------------------------------

/// What an in-flight op keeps alive until completion.
struct Slot {
    token: u64,
    held: Held,
    /// For socket ops parked by the sync backend: the op to retry. Socket ops borrow
    /// nothing.
    parked: Option<RawOp<'static>>,
    /// The table entries of the descriptors the op names, pinned open until it completes.
    files: [Option<u32>; 2],
    /// The op's result is a new descriptor (open, accept) that the completion must own.
    yields_fd: bool,
}

/// Bytes reserved for each path buffer of a slot when it is first used: most request paths
/// fit, so a buffer rarely grows; a longer path grows it once, up to `PATH_MAX`.
const OP_PATH_INITIAL_BYTES: usize = 256;

/// The path arguments of a slot's ops (NUL-terminated copies) and their `open_how`. Boxed
/// per slot index, allocated the first time an op in that slot needs one and reused by every
/// later op there, so the addresses the kernel reads stay put while an op is in flight.
struct OpPaths {
    from: Vec<u8>,
    to: Vec<u8>,
    how: types::OpenHow,
}

impl OpPaths {
    /// The path buffers kept in `cell` (a slot index's), made the first time they are needed.
    fn of(cell: &mut Option<Box<OpPaths>>) -> &mut OpPaths {
        cell.get_or_insert_with(|| {
            Box::new(OpPaths {
                from: Vec::with_capacity(OP_PATH_INITIAL_BYTES),
                to: Vec::with_capacity(OP_PATH_INITIAL_BYTES),
                how: types::OpenHow::new(),
            })
        })
    }
}

/// Copies `path` and a NUL terminator into `buf` and returns it as a C string.
fn fill_path<'b>(buf: &'b mut Vec<u8>, path: &[u8]) -> &'b CStr {
    // Request paths are refused with a NUL in them (protocol), and names the daemon makes
    // are hex: a NUL here is a bug, and passing it on would name another file.
    assert!(!path.contains(&0), "an op path holds a NUL byte");
    buf.clear();
    buf.extend_from_slice(path);
    buf.push(0);
    CStr::from_bytes_with_nul(buf).expect("one NUL, at the end")
}

/// Writes `/proc/self/fd/N` for `fd` and a NUL terminator into `buf` and returns it as a C
/// string: the name through which `linkat` gives an unnamed file a name.
fn fill_proc_path(buf: &mut Vec<u8>, fd: RawFd) -> &CStr {
    use std::io::Write as _;
    buf.clear();
    write!(buf, "/proc/self/fd/{fd}\0").expect("writing to a Vec cannot fail");
    CStr::from_bytes_with_nul(buf).expect("one NUL, at the end")
}

/// The ops in flight, by index: the index is an op's io_uring `user_data`. Slots are reused
/// (their path buffers with them), so the slab stops growing once it has seen the most ops
/// a shard ever has in flight at once.
struct Slab {
    slots: Vec<Option<Slot>>,
    /// Path buffers, by slot index (see [`OpPaths`]).
    paths: Vec<Option<Box<OpPaths>>>,
    free: Vec<usize>,
    in_flight: usize,
}

impl Slab {
    /// Keeps `slot` for a new op and returns its index.
    fn insert(&mut self, slot: Slot) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.paths.push(None);
                self.slots.len() - 1
            }
        };
        self.in_flight += 1;
        self.slots[index] = Some(slot);
        index
    }

    /// The live slot at `index` and its index's path buffers (made when first needed).
    fn entry(&mut self, index: usize) -> (&mut Slot, &mut Option<Box<OpPaths>>) {
        let slot = self.slots[index].as_mut().expect("a live slot");
        (slot, &mut self.paths[index])
    }

    fn slot(&mut self, index: usize) -> &mut Slot {
        self.slots[index].as_mut().expect("a live slot")
    }

    /// The indices of the ops in flight.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&i| self.slots[i].is_some())
    }

    /// Turns the finished op at `index` into its completion, freeing the slot. A descriptor
    /// it produced becomes owned; with io_uring, so do descriptors a recvmsg received.
    #[allow(unsafe_code)]
    fn complete(
        &mut self,
        pool: &mut Pool,
        files: &mut Files,
        kind: BackendKind,
        index: usize,
        result: io::Result<u32>,
    ) -> Completion {
        let slot = self.slots[index]
            .take()
            .expect("completion for a live slot");
        self.free.push(index);
        self.in_flight -= 1;
        for index in slot.files.into_iter().flatten() {
            files.unpin(index);
        }
        let mut held = slot.held;
        if let Held::Buf(buf) = held {
            pool.unlend(buf);
        }
        if let Held::Recv(buf) = &mut held
            && kind == BackendKind::Uring
            && result.is_ok()
        {
            buf.collect_fds();
        }
        if slot.yields_fd
            && let Ok(fd) = &result
        {
            // SAFETY: the kernel just returned this descriptor from open/accept for this
            // op; nothing else knows it, so this is its single owner.
            held = Held::Fd(unsafe { OwnedFd::from_raw_fd(*fd as RawFd) });
        }
        Completion {
            token: slot.token,
            result,
            held,
        }
    }
}

// ---- the reactor ------------------------------------------------------------------------

/// The shard's reactor. See the module docs.
pub struct Reactor {
    /// First field, so it is dropped first: a ring is torn down before the pool buffers and
    /// slab memory it may have been given (after [`Drop`] has drained its ops).
    backend: Backend,
    /// Caller identities, by [`Who`] index (see [`IDENTITIES_PER_REACTOR`]).
    identities: Vec<Option<Identity>>,
    /// The personality the op being pushed runs with (set only inside `push_as`).
    personality: Option<u16>,
    slab: Slab,
    pool: Pool,
    /// Every descriptor ops name (see [`File`]). After `backend`: a ring is torn down (its
    /// ops drained) before the descriptors close.
    files: Files,
    /// Ops that failed before they ran (a closed handle, credentials the thread could not
    /// take), by slot index, handed back by the next `wait`.
    failed: Vec<(usize, io::Error)>,
}

enum Backend {
    Uring(UringBackend),
    Sync(SyncBackend),
}

impl Reactor {
    /// A reactor with `buffers` pool buffers of `buf_bytes` each, allocated now and, with
    /// io_uring, registered as fixed buffers. `kind` None picks io_uring and falls back to
    /// sync when it cannot be set up; the second value says why it fell back, if it did.
    pub fn new(
        kind: Option<BackendKind>,
        buffers: u16,
        buf_bytes: usize,
    ) -> io::Result<(Reactor, Option<String>)> {
        let mut pool = Pool::new(buffers, buf_bytes);
        let mut fallback = None;
        let backend = match kind {
            Some(BackendKind::Sync) => Backend::Sync(SyncBackend::new()),
            _ => match UringBackend::new(&mut pool) {
                Ok((ring, warning)) => {
                    fallback = warning;
                    Backend::Uring(ring)
                }
                Err(err) if kind.is_none() => {
                    fallback = Some(format!(
                        "io_uring is not available ({err}); using the synchronous backend"
                    ));
                    Backend::Sync(SyncBackend::new())
                }
                Err(err) => return Err(err),
            },
        };
        let reactor = Reactor {
            backend,
            identities: Vec::new(),
            personality: None,
            slab: Slab {
                slots: Vec::new(),
                paths: Vec::new(),
                free: Vec::new(),
                in_flight: 0,
            },
            pool,
            files: Files::default(),
            failed: Vec::new(),
        };
        Ok((reactor, fallback))
    }

    /// Checks that this process may use io_uring with fixed buffers (seccomp, the
    /// `kernel.io_uring_disabled` sysctl and the memlock limit all can forbid it).
    pub fn probe_uring() -> io::Result<()> {
        UringBackend::probe()
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Uring(_) => BackendKind::Uring,
            Backend::Sync(_) => BackendKind::Sync,
        }
    }

    /// Ops pushed and not yet completed.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.slab.in_flight
    }

    pub fn buf_bytes(&self) -> usize {
        self.pool.buf_bytes()
    }

    /// A free pool buffer, or None when all are in use (the caller waits: no allocation on
    /// the data path).
    pub fn acquire(&mut self) -> Option<BufId> {
        self.pool.acquire()
    }

    /// Pool buffers free now, so a caller can see whether [`Reactor::acquire`] will give it
    /// all it needs before taking any.
    pub fn free_buffers(&self) -> usize {
        self.pool.free_buffers()
    }

    /// Returns a buffer to the pool.
    pub fn release(&mut self, id: BufId) {
        self.pool.release(id)
    }

    /// The buffer's bytes. Panics if an op on it is in flight: that is a bug in the caller,
    /// and touching the memory would race the kernel.
    pub fn buf_mut(&mut self, id: BufId) -> &mut [u8] {
        self.pool.buf_mut(id)
    }

    /// Registers `caller` for [`Reactor::push_as`], or finds it registered, and counts one
    /// more holder. With io_uring this registers the caller's credentials as a personality:
    /// the thread takes them on for the call ([`ActAs`]) and the kernel copies them.
    pub fn identity(&mut self, caller: &Arc<Caller>) -> io::Result<Who> {
        if let Some(index) = self
            .identities
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| *e.caller == **caller))
        {
            self.identities[index].as_mut().expect("found").users += 1;
            return Ok(Who(index as u16));
        }
        let index = match self.identities.iter().position(Option::is_none) {
            Some(index) => index,
            None if self.identities.len() < IDENTITIES_PER_REACTOR => {
                self.identities.push(None);
                self.identities.len() - 1
            }
            None => {
                let Some(index) = self
                    .identities
                    .iter()
                    .position(|e| e.as_ref().is_some_and(|e| e.users == 0))
                else {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "every caller identity slot of this shard is in use",
                    ));
                };
                self.evict_identity(index);
                index
            }
        };
        let personality = match &self.backend {
            Backend::Uring(ring) => Some(ring.register_personality(caller)?),
            Backend::Sync(_) => None,
        };
        self.identities[index] = Some(Identity {
            caller: Arc::clone(caller),
            users: 1,
            personality,
        });
        Ok(Who(index as u16))
    }

    /// One holder of `who` is done with it. The identity stays cached for the caller's
    /// next job until its slot is needed.
    pub fn release_identity(&mut self, who: Who) {
        if let Some(entry) = self.identities[usize::from(who.0)].as_mut() {
            entry.users = entry.users.saturating_sub(1);
        }
    }

    fn evict_identity(&mut self, index: usize) {
        if let Some(entry) = self.identities[index].take()
            && let (Some(id), Backend::Uring(ring)) = (entry.personality, &self.backend)
        {
            ring.unregister_personality(id);
        }
    }

    /// The caller behind `who`, for calls made directly on this thread.
    pub fn caller(&self, who: Who) -> Option<&Caller> {
        self.identities[usize::from(who.0)]
            .as_ref()
            .map(|e| &*e.caller)
    }

    /// Starts `op` with the credentials of `who` (None: the daemon's own); its completion
    /// carries `token`.
    pub fn push_as(&mut self, token: u64, op: Op, who: Option<Who>) {
        let Some(who) = who else {
            return self.push(token, op);
        };
        let Some(entry) = self.identities[usize::from(who.0)].as_ref() else {
            return self.push(token, op);
        };
        match entry.personality {
            Some(personality) => {
                self.personality = Some(personality);
                self.push(token, op);
                self.personality = None;
            }
            None if !op.names_a_path() => self.push(token, op),
            None => {
                // The sync backend runs path ops at once: on this thread, as the caller.
                // (Reads and writes go through descriptors already opened as the caller.)
                let caller = Arc::clone(&entry.caller);
                match ActAs::enter(&caller) {
                    Ok(acting) => {
                        self.push(token, op);
                        drop(acting);
                    }
                    Err(err) => self.push_failed(token, op, err),
                }
            }
        }
    }

    /// Completes `token` at once with `err`: the op never ran, and its memory comes back
    /// with the completion.
    fn push_failed(&mut self, token: u64, op: Op, err: io::Error) {
        let index = self.slab.insert(Slot {
            yields_fd: false,
            token,
            held: op.into_held(),
            parked: None,
            files: [None, None],
        });
        self.failed.push((index, err));
    }

    /// Starts `op`; its completion carries `token`. An op naming a closed [`File`] fails
    /// with `EBADF` without running.
    pub fn push(&mut self, token: u64, op: Op) {
        if let Some(err) = op
            .fds()
            .into_iter()
            .flatten()
            .find_map(|file| self.files.borrow(file).err())
        {
            return self.push_failed(token, op, err);
        }
        let mut pinned = [None, None];
        let mut next = 0;
        let op = op
            .map_fds(|file| {
                let (raw, index) = self.files.pin(file)?;
                pinned[next] = Some(index);
                next += 1;
                Ok::<_, io::Error>(raw)
            })
            .expect("every descriptor was checked open just now");
        let index = self.slab.insert(Slot {
            yields_fd: matches!(op, Op::OpenAt2 { .. } | Op::Accept { .. }),
            token,
            held: Held::Nothing,
            parked: None,
            files: pinned,
        });
        let (slot, paths) = self.slab.entry(index);
        match &mut self.backend {
            Backend::Uring(ring) => {
                ring.push(slot, paths, &mut self.pool, op, index, self.personality)
            }
            Backend::Sync(sync) => sync.push(slot, paths, &mut self.pool, op, index),
        }
    }

    /// Takes ownership of `fd`: ops name it by the handle from now on, and it closes with
    /// [`Reactor::close`] (or the reactor).
    pub fn adopt(&mut self, fd: OwnedFd) -> File {
        self.files.adopt(fd)
    }

    /// Takes a share of `fd` (see `files.rs`) and returns its handle, which is closed like
    /// any other: the descriptor itself closes when its last share goes.
    pub fn adopt_shared(&mut self, fd: Arc<OwnedFd>) -> File {
        self.files.adopt_shared(fd)
    }

    /// Closes `file` once no op in flight names it.
    pub fn close(&mut self, file: File) {
        self.files.close(file)
    }

    /// The descriptor behind `file`, for a call made directly on this thread; `EBADF` once
    /// it was closed.
    pub fn fd(&self, file: File) -> io::Result<BorrowedFd<'_>> {
        self.files.borrow(file)
    }

    /// Cancels every op in flight on `file` (a stream a job gives up on: a read waiting for a
    /// writer that never comes, a write to a reader that stopped). Each still completes,
    /// with `ECANCELED` unless it finished first.
    pub fn cancel_on(&mut self, file: File) {
        let index = file.index();
        let on_file: Vec<usize> = self
            .slab
            .live()
            .filter(|&slot| {
                self.slab.slots[slot]
                    .as_ref()
                    .is_some_and(|s| s.files.contains(&Some(index)))
            })
            .collect();
        for slot in on_file {
            match &mut self.backend {
                Backend::Uring(ring) => ring.cancel(slot),
                Backend::Sync(sync) => sync.cancel(&mut self.slab, slot),
            }
        }
    }

    /// Hands queued ops to the kernel without waiting (after each crypto batch, so reads
    /// overlap the AES loop).
    pub fn submit(&mut self) {
        if let Backend::Uring(ring) = &mut self.backend {
            ring.submit();
        }
    }

    /// Submits, then waits until at least one op completes or `timeout` passes (None: wait
    /// without limit; zero: do not wait). Returns the completions, in no particular order.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) {
        let kind = self.kind();
        let timeout = if self.failed.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let finished = match &mut self.backend {
            Backend::Uring(ring) => ring.wait(timeout),
            Backend::Sync(sync) => sync.wait(&mut self.slab, &mut self.pool, timeout),
        };
        for (index, result) in finished {
            out.push(
                self.slab
                    .complete(&mut self.pool, &mut self.files, kind, index, result),
            );
        }
        for (index, err) in self.failed.drain(..) {
            out.push(
                self.slab
                    .complete(&mut self.pool, &mut self.files, kind, index, Err(err)),
            );
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // The kernel may still write into slot memory for ops in flight (a shard always has
        // its wake-up read and, on shard 0, an accept armed): cancel them all, then wait for
        // their completions so freeing the buffers cannot race the kernel.
        if let Backend::Uring(ring) = &mut self.backend {
            for index in self.slab.live() {
                ring.cancel(index);
            }
            let mut sink = Vec::new();
            let mut rounds = 0;
            while self.slab.in_flight > 0 && rounds < 1000 {
                self.wait(Some(Duration::from_millis(10)), &mut sink);
                sink.clear();
                rounds += 1;
            }
        }
    }
}
