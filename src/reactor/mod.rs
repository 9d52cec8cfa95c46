//! The reactor: one per shard. It owns the shard's io_uring (or the synchronous fallback),
//! the op slab keyed by `user_data`, and the shard's fixed buffer pool. This is the only room
//! with io_uring `unsafe`.
//!
//! Ownership: an op owns its memory (its `Vec` or the pool buffer it names) from
//! [`Reactor::push`] until its [`Completion`] hands it back. Paths are borrowed only for the
//! call to `push`, which copies them into path buffers of the op's slot (allocated once per
//! slot and reused), where they stay with the `open_how` until the op completes. The kernel may
//! write into that memory until the completion arrives, so nothing else can reach it: a pool
//! buffer is marked lent and [`Reactor::buf_mut`] refuses it; a `Vec` lives inside the slab.
//! File descriptors are passed raw: the kernel holds its own reference to an open file for
//! the duration of an op, so closing an fd early cannot corrupt memory (it only fails ops).
//!
//! The synchronous backend runs the same ops as plain syscalls: file ops complete at once;
//! socket and eventfd ops are tried non-blocking and, if they would block, parked until
//! `poll(2)` says they are ready. It is chosen when io_uring cannot be set up, or forced with
//! `RINGCRYPT_BACKEND=sync`.
//!
//! What this room does not do: decide what to do with a completion (jobs and connections do),
//! or know about files, keys or the protocol.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

use crate::creds::{ActAs, Caller};

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

/// A buffer of the shard's fixed pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId(u16);

/// One operation. Memory named here is owned by the op until its completion, except paths:
/// they are bytes without the NUL terminator (which no request path can hold), copied by
/// [`Reactor::push`].
pub enum Op<'a> {
    /// pread into `buf[at .. at + len]` of a pool buffer.
    ReadFixed {
        fd: RawFd,
        buf: BufId,
        at: usize,
        len: usize,
        offset: u64,
    },
    /// pwrite from `buf[at .. at + len]` of a pool buffer.
    WriteFixed {
        fd: RawFd,
        buf: BufId,
        at: usize,
        len: usize,
        offset: u64,
    },
    /// pwrite of a whole owned vector (headers, small writes).
    WriteVec {
        fd: RawFd,
        data: Vec<u8>,
        offset: u64,
    },
    /// pread into an owned vector (its capacity), e.g. a header or the end-of-file probe.
    ReadVec {
        fd: RawFd,
        data: Vec<u8>,
        len: usize,
        offset: u64,
    },
    Fsync {
        fd: RawFd,
    },
    /// openat2 relative to `dir`; the result is the new fd.
    OpenAt2 {
        dir: RawFd,
        path: &'a [u8],
        flags: u64,
        mode: u64,
        resolve: u64,
    },
    /// linkat(from_dir, from, to_dir, to, flags)
    LinkAt {
        from_dir: RawFd,
        from: &'a [u8],
        to_dir: RawFd,
        to: &'a [u8],
        flags: i32,
    },
    /// renameat2(dir, from, dir, to, flags)
    RenameAt {
        dir: RawFd,
        from: &'a [u8],
        to: &'a [u8],
        flags: u32,
    },
    UnlinkAt {
        dir: RawFd,
        path: &'a [u8],
    },
    /// accept4 on a listening socket; the result is the new fd (close-on-exec).
    Accept {
        fd: RawFd,
    },
    /// recvmsg into `buf.data[buf.filled..]` (up to its length), taking any descriptors
    /// passed with the bytes (`SCM_RIGHTS`) into `buf.fds`.
    Recv {
        fd: RawFd,
        buf: Box<RecvBuf>,
    },
    /// send `data[sent..]`.
    Send {
        fd: RawFd,
        data: Vec<u8>,
        sent: usize,
    },
    /// read 8 bytes from an eventfd (the shard's wake-up), into a buffer the reactor owns.
    ReadEventfd {
        fd: RawFd,
    },
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
    /// The owned vector back (for `ReadVec`, `WriteVec`, `Recv`, `Send`).
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

    /// The descriptor an `OpenAt2` or `Accept` produced (None if it failed).
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Fd(fd) => Some(fd),
            _ => None,
        }
    }
}

/// Descriptors one `recvmsg` can take. A request that passes descriptors passes two, and
/// the kernel never hands over more than one `sendmsg`'s worth per call; a peer that sends
/// more has the rest closed by the kernel and sees its requests fail.
pub const RECV_FDS_MAX: usize = 8;

/// Control-message space for [`RECV_FDS_MAX`] descriptors: `CMSG_SPACE(8 * 4)` is 48 bytes
/// on 64-bit Linux; a whole number of u64 keeps the header aligned.
const CONTROL_WORDS: usize = 8;

/// A connection's receive state: the bytes read so far, the descriptors that came with
/// them, and the `msghdr` an io_uring `recvmsg` points at. Boxed and owned by the
/// connection, lent to each `Recv` op and handed back with its completion, so its address
/// is stable while the kernel writes into it and no receive allocates.
pub struct RecvBuf {
    /// Received bytes; the next recv writes at `filled` up to the vector's length.
    pub data: Vec<u8>,
    pub filled: usize,
    /// Descriptors received and not yet taken by a request, oldest first.
    pub fds: VecDeque<OwnedFd>,
    /// The kernel dropped descriptors that did not fit (`MSG_CTRUNC`).
    pub fds_truncated: bool,
    hdr: libc::msghdr,
    iov: libc::iovec,
    control: [u64; CONTROL_WORDS],
}

// SAFETY: the raw pointers in `hdr` and `iov` only ever point into this same box (its
// `data` vector and `control` array) and are rewritten before every op, so moving the box
// to another thread moves everything they point to along with it.
unsafe impl Send for RecvBuf {}

impl RecvBuf {
    pub fn new(bytes: usize) -> Box<RecvBuf> {
        Box::new(RecvBuf {
            data: vec![0u8; bytes],
            filled: 0,
            fds: VecDeque::new(),
            fds_truncated: false,
            // SAFETY: msghdr and iovec are plain C structs for which all-zero is a valid
            // (empty) value.
            hdr: unsafe { std::mem::zeroed() },
            iov: unsafe { std::mem::zeroed() },
            control: [0; CONTROL_WORDS],
        })
    }

    /// Points `hdr` at this box's free bytes and control space for one recvmsg.
    fn prepare(&mut self) -> *mut libc::msghdr {
        let free = &mut self.data[self.filled..];
        self.iov.iov_base = free.as_mut_ptr().cast();
        self.iov.iov_len = free.len();
        self.control = [0; CONTROL_WORDS];
        // SAFETY: as in `new`.
        self.hdr = unsafe { std::mem::zeroed() };
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = self.control.as_mut_ptr().cast();
        self.hdr.msg_controllen = std::mem::size_of_val(&self.control) as _;
        &mut self.hdr
    }

    /// After an io_uring recvmsg completed: takes ownership of the descriptors the kernel
    /// installed, from the control messages it wrote back (`msg_controllen`, `msg_flags`).
    fn collect_fds(&mut self) {
        if self.hdr.msg_flags & libc::MSG_CTRUNC != 0 {
            self.fds_truncated = true;
        }
        let limit = std::mem::size_of_val(&self.control);
        if self.hdr.msg_controllen > limit {
            return;
        }
        // SAFETY: the kernel filled `control` with well-formed control messages up to
        // `msg_controllen`, which is checked to lie inside it; CMSG_FIRSTHDR/NXTHDR stay
        // within that length, and an SCM_RIGHTS message's data is an array of ints that
        // the kernel installed as new descriptors of this process, owned by nobody else.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&self.hdr);
            while !cmsg.is_null() {
                let header_len = libc::CMSG_LEN(0) as usize;
                let len = (*cmsg).cmsg_len as usize;
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                    && len >= header_len
                {
                    let count = (len - header_len) / std::mem::size_of::<RawFd>();
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        let raw = data.add(i).read_unaligned();
                        self.fds.push_back(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&self.hdr, cmsg);
            }
        }
    }
}

/// What an in-flight op keeps alive until completion.
struct Slot {
    token: u64,
    held: Held,
    /// For socket ops parked by the sync backend: the op to retry. Socket ops borrow
    /// nothing.
    parked: Option<Op<'static>>,
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
    fn new() -> Box<OpPaths> {
        Box::new(OpPaths {
            from: Vec::with_capacity(OP_PATH_INITIAL_BYTES),
            to: Vec::with_capacity(OP_PATH_INITIAL_BYTES),
            how: types::OpenHow::new(),
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

/// `user_data` of cancel requests; their own completions carry no slot and are skipped.
const CANCEL_USER_DATA: u64 = u64::MAX;

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
    caller: std::sync::Arc<Caller>,
    /// Jobs holding this identity; an entry with none may be evicted.
    users: usize,
    /// io_uring: the personality id the kernel gave these credentials.
    personality: Option<u16>,
}

/// The shard's reactor. See the module docs.
pub struct Reactor {
    backend: Backend,
    /// Caller identities, by [`Who`] index (see [`IDENTITIES_PER_REACTOR`]).
    identities: Vec<Option<Identity>>,
    /// The personality the op being pushed runs with (set only inside `push_as`).
    personality: Option<u16>,
    slots: Vec<Option<Slot>>,
    /// Path buffers, by slot index (see [`OpPaths`]).
    paths: Vec<Option<Box<OpPaths>>>,
    free_slots: Vec<usize>,
    in_flight: usize,
    /// Where the wake-up eventfd read lands; its value is never looked at. A shard keeps
    /// one such read in flight at a time.
    wake: Box<[u8; 8]>,
    /// Completions taken off the ring in one `wait`, kept for the next.
    reaped: Vec<(usize, i32)>,
    pool: Vec<Box<[u8]>>,
    /// In-flight ops per pool buffer (reads of one batch share a buffer at distinct spans).
    lent: Vec<u16>,
    free_bufs: Vec<u16>,
    buf_bytes: usize,
}

enum Backend {
    Uring {
        ring: Box<IoUring>,
        unsubmitted: usize,
        /// The pool is registered: pool reads and writes use the fixed-buffer opcodes.
        fixed: bool,
    },
    Sync {
        ready: VecDeque<(usize, io::Result<u32>)>,
        parked: Vec<usize>,
    },
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
        let mut pool: Vec<Box<[u8]>> = (0..buffers)
            .map(|_| vec![0u8; buf_bytes].into_boxed_slice())
            .collect();
        let mut fallback = None;
        let backend = match kind {
            Some(BackendKind::Sync) => Backend::Sync {
                ready: VecDeque::new(),
                parked: Vec::new(),
            },
            _ => match Self::setup_uring(&mut pool) {
                Ok((ring, fixed, warning)) => {
                    fallback = warning;
                    Backend::Uring {
                        ring: Box::new(ring),
                        unsubmitted: 0,
                        fixed,
                    }
                }
                Err(err) if kind.is_none() => {
                    fallback = Some(format!(
                        "io_uring is not available ({err}); using the synchronous backend"
                    ));
                    Backend::Sync {
                        ready: VecDeque::new(),
                        parked: Vec::new(),
                    }
                }
                Err(err) => return Err(err),
            },
        };
        let reactor = Reactor {
            backend,
            identities: Vec::new(),
            personality: None,
            slots: Vec::new(),
            paths: Vec::new(),
            free_slots: Vec::new(),
            in_flight: 0,
            wake: Box::new([0; 8]),
            reaped: Vec::new(),
            lent: vec![0; pool.len()],
            free_bufs: (0..buffers).rev().collect(),
            pool,
            buf_bytes,
        };
        Ok((reactor, fallback))
    }

    /// Checks that this process may use io_uring with fixed buffers (seccomp, the
    /// `kernel.io_uring_disabled` sysctl and the memlock limit all can forbid it).
    pub fn probe_uring() -> io::Result<()> {
        IoUring::builder().build(RING_ENTRIES).map(|_: IoUring| ())
    }

    /// A ring, and whether the pool is registered as fixed buffers. Registration counts
    /// against RLIMIT_MEMLOCK for unprivileged users (8 MiB by default, less than a shard's
    /// pool); when it is refused the ring still runs, with plain reads and writes into the
    /// same buffers, and the caller is told why.
    fn setup_uring(pool: &mut [Box<[u8]>]) -> io::Result<(IoUring, bool, Option<String>)> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        if pool.is_empty() {
            return Ok((ring, false, None));
        }
        let iovecs: Vec<libc::iovec> = pool
            .iter_mut()
            .map(|buf| libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            })
            .collect();
        // SAFETY: the buffers are boxed slices owned by the reactor for its whole life
        // (never reallocated or dropped before the ring), so the registered addresses
        // stay valid while the ring can use them.
        match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => Ok((ring, true, None)),
            Err(err) => {
                let bytes: usize = pool.iter().map(|b| b.len()).sum();
                let warning = format!(
                    "cannot register {} MiB of fixed buffers ({err}); using plain io_uring reads \
                     and writes. Raise the locked-memory limit (LimitMEMLOCK=, ulimit -l) to use them",
                    bytes >> 20
                );
                Ok((ring, false, Some(warning)))
            }
        }
    }

    /// True when pool buffers are registered with the kernel.
    pub fn fixed_buffers(&self) -> bool {
        matches!(self.backend, Backend::Uring { fixed: true, .. })
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Uring { .. } => BackendKind::Uring,
            Backend::Sync { .. } => BackendKind::Sync,
        }
    }

    /// Ops pushed and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    /// A free pool buffer, or None when all are in use (the caller waits: no allocation on
    /// the data path).
    pub fn acquire(&mut self) -> Option<BufId> {
        self.free_bufs.pop().map(BufId)
    }

    /// Pool buffers free now, so a caller can see whether [`Reactor::acquire`] will give it
    /// all it needs before taking any.
    pub fn free_buffers(&self) -> usize {
        self.free_bufs.len()
    }

    /// Returns a buffer to the pool.
    pub fn release(&mut self, id: BufId) {
        assert_eq!(
            self.lent[usize::from(id.0)],
            0,
            "released a buffer the kernel still uses"
        );
        debug_assert!(!self.free_bufs.contains(&id.0), "double release");
        self.free_bufs.push(id.0);
    }

    /// The buffer's bytes. Panics if an op on it is in flight: that is a bug in the caller,
    /// and touching the memory would race the kernel.
    pub fn buf_mut(&mut self, id: BufId) -> &mut [u8] {
        assert_eq!(
            self.lent[usize::from(id.0)],
            0,
            "buffer {id:?} is in flight"
        );
        &mut self.pool[usize::from(id.0)]
    }

    /// Registers `caller` for [`Reactor::push_as`], or finds it registered, and counts one
    /// more holder. With io_uring this registers the caller's credentials as a personality:
    /// the thread takes them on for the call ([`ActAs`]) and the kernel copies them.
    pub fn identity(&mut self, caller: &std::sync::Arc<Caller>) -> io::Result<Who> {
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
            Backend::Uring { ring, .. } => {
                let acting = ActAs::enter(caller)?;
                let id = ring.submitter().register_personality();
                drop(acting);
                Some(id?)
            }
            Backend::Sync { .. } => None,
        };
        self.identities[index] = Some(Identity {
            caller: std::sync::Arc::clone(caller),
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
            && let (Some(id), Backend::Uring { ring, .. }) = (entry.personality, &self.backend)
        {
            // Ops in flight with it keep their own reference to the credentials.
            let _ = ring.submitter().unregister_personality(id);
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
                let caller = std::sync::Arc::clone(&entry.caller);
                match ActAs::enter(&caller) {
                    Ok(acting) => {
                        self.push(token, op);
                        drop(acting);
                    }
                    Err(err) => self.push_failed(token, err),
                }
            }
        }
    }

    /// Completes `token` at once with `err` (the op never ran).
    fn push_failed(&mut self, token: u64, err: io::Error) {
        let index = match self.free_slots.pop() {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.paths.push(None);
                self.slots.len() - 1
            }
        };
        self.in_flight += 1;
        self.slots[index] = Some(Slot {
            yields_fd: false,
            token,
            held: Held::Nothing,
            parked: None,
        });
        match &mut self.backend {
            Backend::Sync { ready, .. } => ready.push_back((index, Err(err))),
            // Identities of a ring are personalities, which never fail at push.
            Backend::Uring { .. } => unreachable!("only the sync backend acts on this thread"),
        }
    }

    /// Starts `op`; its completion carries `token`.
    pub fn push(&mut self, token: u64, op: Op) {
        let index = match self.free_slots.pop() {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.paths.push(None);
                self.slots.len() - 1
            }
        };
        self.in_flight += 1;
        let yields_fd = matches!(op, Op::OpenAt2 { .. } | Op::Accept { .. });
        let mut slot = Slot {
            yields_fd,
            token,
            held: Held::Nothing,
            parked: None,
        };
        match &mut self.backend {
            Backend::Uring { .. } => {
                let mut entry = self.prepare_uring(&mut slot, op, index);
                if let Some(personality) = self.personality {
                    entry = entry.personality(personality);
                }
                self.slots[index] = Some(slot);
                self.push_entry(entry);
            }
            Backend::Sync { .. } => match op.into_socket_op() {
                Ok(parked) => {
                    slot.parked = Some(parked);
                    self.slots[index] = Some(slot);
                    self.try_parked(index);
                }
                Err(op) => {
                    let result = self.run_sync(&mut slot, op, index);
                    self.slots[index] = Some(slot);
                    if let Backend::Sync { ready, .. } = &mut self.backend {
                        ready.push_back((index, result));
                    }
                }
            },
        }
    }

    fn push_entry(&mut self, entry: squeue::Entry) {
        let Backend::Uring {
            ring, unsubmitted, ..
        } = &mut self.backend
        else {
            unreachable!("uring only")
        };
        loop {
            // SAFETY: every pointer in `entry` points into memory that stays put until the
            // completion for this user_data is reaped in `complete`: the slot's boxed path
            // buffers and open_how (rewritten only by the next op in the same slot, after
            // this one completed), a Vec in `held`, a lent pool buffer, or the reactor's
            // boxed wake-up buffer, which only the kernel writes and nothing reads.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_ok() {
                *unsubmitted += 1;
                return;
            }
            // The submission queue is full: hand it to the kernel and retry.
            if let Err(err) = ring.submit()
                && err.raw_os_error() != Some(libc::EBUSY)
                && err.raw_os_error() != Some(libc::EAGAIN)
            {
                panic!("io_uring submit failed: {err}");
            }
        }
    }

    /// The path buffers of slot `index`, made the first time that slot needs them.
    fn op_paths(&mut self, index: usize) -> &mut OpPaths {
        self.paths[index].get_or_insert_with(OpPaths::new)
    }

    fn prepare_uring(&mut self, slot: &mut Slot, op: Op, index: usize) -> squeue::Entry {
        let ud = index as u64;
        match op {
            Op::ReadFixed {
                fd,
                buf,
                at,
                len,
                offset,
            } => {
                let ptr = self.lend(buf, at, len);
                slot.held = Held::Buf(buf);
                if self.fixed_buffers() {
                    opcode::ReadFixed::new(types::Fd(fd), ptr, len as u32, buf.0)
                        .offset(offset)
                        .build()
                        .user_data(ud)
                } else {
                    opcode::Read::new(types::Fd(fd), ptr, len as u32)
                        .offset(offset)
                        .build()
                        .user_data(ud)
                }
            }
            Op::WriteFixed {
                fd,
                buf,
                at,
                len,
                offset,
            } => {
                let ptr = self.lend(buf, at, len);
                slot.held = Held::Buf(buf);
                if self.fixed_buffers() {
                    opcode::WriteFixed::new(types::Fd(fd), ptr, len as u32, buf.0)
                        .offset(offset)
                        .build()
                        .user_data(ud)
                } else {
                    opcode::Write::new(types::Fd(fd), ptr, len as u32)
                        .offset(offset)
                        .build()
                        .user_data(ud)
                }
            }
            Op::WriteVec { fd, data, offset } => {
                let entry = opcode::Write::new(types::Fd(fd), data.as_ptr(), data.len() as u32)
                    .offset(offset);
                slot.held = Held::Vec(data);
                entry.build().user_data(ud)
            }
            Op::ReadVec {
                fd,
                mut data,
                len,
                offset,
            } => {
                data.resize(len, 0);
                let entry =
                    opcode::Read::new(types::Fd(fd), data.as_mut_ptr(), len as u32).offset(offset);
                slot.held = Held::Vec(data);
                entry.build().user_data(ud)
            }
            Op::Fsync { fd } => opcode::Fsync::new(types::Fd(fd)).build().user_data(ud),
            Op::OpenAt2 {
                dir,
                path,
                flags,
                mode,
                resolve,
            } => {
                let paths = self.op_paths(index);
                paths.how = types::OpenHow::new()
                    .flags(flags)
                    .mode(mode)
                    .resolve(resolve);
                let path = fill_path(&mut paths.from, path).as_ptr();
                opcode::OpenAt2::new(types::Fd(dir), path, &paths.how)
                    .build()
                    .user_data(ud)
            }
            Op::LinkAt {
                from_dir,
                from,
                to_dir,
                to,
                flags,
            } => {
                let paths = self.op_paths(index);
                let from = fill_path(&mut paths.from, from).as_ptr();
                let to = fill_path(&mut paths.to, to).as_ptr();
                opcode::LinkAt::new(types::Fd(from_dir), from, types::Fd(to_dir), to)
                    .flags(flags)
                    .build()
                    .user_data(ud)
            }
            Op::RenameAt {
                dir,
                from,
                to,
                flags,
            } => {
                let paths = self.op_paths(index);
                let from = fill_path(&mut paths.from, from).as_ptr();
                let to = fill_path(&mut paths.to, to).as_ptr();
                opcode::RenameAt::new(types::Fd(dir), from, types::Fd(dir), to)
                    .flags(flags)
                    .build()
                    .user_data(ud)
            }
            Op::UnlinkAt { dir, path } => {
                let paths = self.op_paths(index);
                let path = fill_path(&mut paths.from, path).as_ptr();
                opcode::UnlinkAt::new(types::Fd(dir), path)
                    .build()
                    .user_data(ud)
            }
            Op::Accept { fd } => {
                opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(ud)
            }
            Op::Recv { fd, mut buf } => {
                let hdr = buf.prepare();
                // Received descriptors are close-on-exec, like every descriptor we open.
                let entry = opcode::RecvMsg::new(types::Fd(fd), hdr)
                    .flags(libc::MSG_CMSG_CLOEXEC as u32)
                    .build()
                    .user_data(ud);
                slot.held = Held::Recv(buf);
                entry
            }
            Op::Send { fd, data, sent } => {
                let entry = opcode::Send::new(
                    types::Fd(fd),
                    data[sent..].as_ptr(),
                    (data.len() - sent) as u32,
                )
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud);
                slot.held = Held::Vec(data);
                entry
            }
            Op::ReadEventfd { fd } => opcode::Read::new(types::Fd(fd), self.wake.as_mut_ptr(), 8)
                .build()
                .user_data(ud),
        }
    }

    /// Marks a pool buffer lent to the kernel and returns the address of `[at, at + len)`.
    fn lend(&mut self, buf: BufId, at: usize, len: usize) -> *mut u8 {
        let index = usize::from(buf.0);

        assert!(at + len <= self.buf_bytes, "span {at}+{len} outside buffer");
        // Concurrent ops on one buffer use disjoint spans (a batch's chunk reads).
        self.lent[index] += 1;
        self.pool[index][at..].as_mut_ptr()
    }

    fn is_pollable(op: &Op) -> Option<(RawFd, bool)> {
        match op {
            Op::Accept { fd } | Op::Recv { fd, .. } | Op::ReadEventfd { fd } => Some((*fd, false)),
            Op::Send { fd, .. } => Some((*fd, true)),
            _ => None,
        }
    }

    /// Sync backend: runs a non-socket op now.
    fn run_sync(&mut self, slot: &mut Slot, op: Op, index: usize) -> io::Result<u32> {
        use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
        let fd = |raw: RawFd| {
            // SAFETY: the caller keeps `raw` open for the duration of the op (module docs);
            // the borrow ends inside this function.
            unsafe { BorrowedFd::borrow_raw(raw) }
        };
        let count = |n: usize| Ok(n as u32);
        match op {
            Op::ReadFixed {
                fd: raw,
                buf,
                at,
                len,
                offset,
            } => {
                slot.held = Held::Buf(buf);
                self.lent[usize::from(buf.0)] += 1;
                let target = &mut self.pool[usize::from(buf.0)][at..at + len];
                rustix::io::pread(fd(raw), target, offset)
                    .map_err(io::Error::from)
                    .and_then(count)
            }
            Op::WriteFixed {
                fd: raw,
                buf,
                at,
                len,
                offset,
            } => {
                slot.held = Held::Buf(buf);
                self.lent[usize::from(buf.0)] += 1;
                let source = &self.pool[usize::from(buf.0)][at..at + len];
                rustix::io::pwrite(fd(raw), source, offset)
                    .map_err(io::Error::from)
                    .and_then(count)
            }
            Op::WriteVec {
                fd: raw,
                data,
                offset,
            } => {
                let result = rustix::io::pwrite(fd(raw), &data, offset)
                    .map_err(io::Error::from)
                    .and_then(count);
                slot.held = Held::Vec(data);
                result
            }
            Op::ReadVec {
                fd: raw,
                mut data,
                len,
                offset,
            } => {
                data.resize(len, 0);
                let result = rustix::io::pread(fd(raw), &mut data, offset)
                    .map_err(io::Error::from)
                    .and_then(count);
                slot.held = Held::Vec(data);
                result
            }
            Op::Fsync { fd: raw } => rustix::fs::fsync(fd(raw))
                .map(|()| 0)
                .map_err(io::Error::from),
            Op::OpenAt2 {
                dir,
                path,
                flags,
                mode,
                resolve,
            } => rustix::fs::openat2(
                fd(dir),
                fill_path(&mut self.op_paths(index).from, path),
                OFlags::from_bits_retain(flags as u32),
                Mode::from_raw_mode(mode as u32),
                ResolveFlags::from_bits_retain(resolve),
            )
            .map(|owned| std::os::fd::IntoRawFd::into_raw_fd(owned) as u32)
            .map_err(io::Error::from),
            Op::LinkAt {
                from_dir,
                from,
                to_dir,
                to,
                flags,
            } => {
                let paths = self.op_paths(index);
                rustix::fs::linkat(
                    fd(from_dir),
                    fill_path(&mut paths.from, from),
                    fd(to_dir),
                    fill_path(&mut paths.to, to),
                    AtFlags::from_bits_retain(flags as u32),
                )
                .map(|()| 0)
                .map_err(io::Error::from)
            }
            Op::RenameAt {
                dir,
                from,
                to,
                flags,
            } => {
                let paths = self.op_paths(index);
                rustix::fs::renameat_with(
                    fd(dir),
                    fill_path(&mut paths.from, from),
                    fd(dir),
                    fill_path(&mut paths.to, to),
                    RenameFlags::from_bits_retain(flags),
                )
                .map(|()| 0)
                .map_err(io::Error::from)
            }
            Op::UnlinkAt { dir, path } => rustix::fs::unlinkat(
                fd(dir),
                fill_path(&mut self.op_paths(index).from, path),
                AtFlags::empty(),
            )
            .map(|()| 0)
            .map_err(io::Error::from),
            Op::Accept { .. } | Op::Recv { .. } | Op::Send { .. } | Op::ReadEventfd { .. } => {
                unreachable!("socket ops are parked, not run directly")
            }
        }
    }

    /// Sync backend: tries a parked socket op without blocking; on success queues its
    /// completion, on EAGAIN leaves it parked.
    fn try_parked(&mut self, index: usize) {
        let slot = self.slots[index].as_mut().expect("parked slot exists");
        let op = slot.parked.take().expect("parked op");
        let fd = |raw: RawFd| {
            // SAFETY: as in `run_sync`: the owner keeps the fd open while the op is parked.
            unsafe { BorrowedFd::borrow_raw(raw) }
        };
        let (result, op) = match op {
            Op::Accept { fd: raw } => {
                let flags = rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK;
                let result = rustix::net::accept_with(fd(raw), flags)
                    .map(|owned| std::os::fd::IntoRawFd::into_raw_fd(owned) as u32)
                    .map_err(io::Error::from);
                (result, Op::Accept { fd: raw })
            }
            Op::Recv { fd: raw, mut buf } => {
                use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
                let mut space = [std::mem::MaybeUninit::<u8>::uninit();
                    rustix::cmsg_space!(ScmRights(RECV_FDS_MAX))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let filled = buf.filled;
                let mut iov = [io::IoSliceMut::new(&mut buf.data[filled..])];
                let result = rustix::net::recvmsg(
                    fd(raw),
                    &mut iov,
                    &mut control,
                    RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
                );
                let result = match result {
                    Ok(msg) => {
                        if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                            buf.fds_truncated = true;
                        }
                        for message in control.drain() {
                            if let RecvAncillaryMessage::ScmRights(fds) = message {
                                buf.fds.extend(fds);
                            }
                        }
                        Ok(msg.bytes as u32)
                    }
                    Err(err) => Err(io::Error::from(err)),
                };
                (result, Op::Recv { fd: raw, buf })
            }
            Op::Send {
                fd: raw,
                data,
                sent,
            } => {
                let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
                let result = rustix::net::send(fd(raw), &data[sent..], flags)
                    .map(|n| n as u32)
                    .map_err(io::Error::from);
                (
                    result,
                    Op::Send {
                        fd: raw,
                        data,
                        sent,
                    },
                )
            }
            Op::ReadEventfd { fd: raw } => {
                let mut value = [0u8; 8];
                let result = rustix::io::read(fd(raw), &mut value)
                    .map(|n| n as u32)
                    .map_err(io::Error::from);
                (result, Op::ReadEventfd { fd: raw })
            }
            other => unreachable!("not a parkable op: {}", other.name()),
        };
        let Backend::Sync { ready, parked } = &mut self.backend else {
            unreachable!("sync only")
        };
        let slot = self.slots[index].as_mut().expect("parked slot exists");
        match result {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                slot.parked = Some(op);
                if !parked.contains(&index) {
                    parked.push(index);
                }
            }
            result => {
                slot.held = match op {
                    Op::Recv { buf, .. } => Held::Recv(buf),
                    Op::Send { data, .. } => Held::Vec(data),
                    _ => Held::Nothing,
                };
                parked.retain(|&i| i != index);
                ready.push_back((index, result));
            }
        }
    }

    /// Hands queued ops to the kernel without waiting (after each crypto batch, so reads
    /// overlap the AES loop).
    pub fn submit(&mut self) {
        if let Backend::Uring {
            ring, unsubmitted, ..
        } = &mut self.backend
            && *unsubmitted > 0
        {
            match ring.submit() {
                Ok(_) => *unsubmitted = 0,
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
                Err(err) => panic!("io_uring submit failed: {err}"),
            }
        }
    }

    /// Submits, then waits until at least one op completes or `timeout` passes (None: wait
    /// without limit; zero: do not wait). Returns the completions, in no particular order.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) {
        match &mut self.backend {
            Backend::Uring {
                ring, unsubmitted, ..
            } => {
                let want =
                    usize::from(timeout != Some(Duration::ZERO) && ring.completion().is_empty());
                let result = match timeout {
                    Some(limit) if want > 0 => {
                        let ts = types::Timespec::new()
                            .sec(limit.as_secs())
                            .nsec(limit.subsec_nanos());
                        let args = types::SubmitArgs::new().timespec(&ts);
                        ring.submitter().submit_with_args(want, &args)
                    }
                    _ => ring.submitter().submit_and_wait(want),
                };
                match result {
                    Ok(_) => *unsubmitted = 0,
                    Err(err)
                        if matches!(
                            err.raw_os_error(),
                            Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                        ) =>
                    {
                        *unsubmitted = 0;
                    }
                    Err(err) => panic!("io_uring wait failed: {err}"),
                }
                let mut reaped = std::mem::take(&mut self.reaped);
                reaped.extend(
                    ring.completion()
                        .map(|cqe| (cqe.user_data() as usize, cqe.result())),
                );
                for &(index, raw) in &reaped {
                    if index as u64 == CANCEL_USER_DATA {
                        continue;
                    }
                    let result = if raw < 0 {
                        Err(io::Error::from_raw_os_error(-raw))
                    } else {
                        Ok(raw as u32)
                    };
                    out.push(self.complete(index, result));
                }
                reaped.clear();
                self.reaped = reaped;
            }
            Backend::Sync { ready, parked } => {
                // Parked sockets are polled on every call, without blocking when file ops
                // already completed: a long job whose ops complete at once must not starve
                // the connections (a `cancel` for it, say) on the same shard.
                let limit = if ready.is_empty() {
                    timeout
                } else {
                    Some(Duration::ZERO)
                };
                if !parked.is_empty() {
                    self.poll_parked(limit);
                } else if let Some(limit) = limit
                    && !limit.is_zero()
                {
                    std::thread::sleep(limit);
                }
                while let Backend::Sync { ready, .. } = &mut self.backend
                    && let Some((index, result)) = ready.pop_front()
                {
                    out.push(self.complete(index, result));
                }
            }
        }
    }

    fn poll_parked(&mut self, timeout: Option<Duration>) {
        let Backend::Sync { parked, .. } = &self.backend else {
            unreachable!()
        };
        let indices = parked.clone();
        let wanted: Vec<(BorrowedFd<'_>, rustix::event::PollFlags)> = indices
            .iter()
            .map(|&index| {
                let slot = self.slots[index].as_ref().expect("parked slot");
                let op = slot.parked.as_ref().expect("parked op");
                let (raw, write) = Self::is_pollable(op).expect("parkable");
                // SAFETY: as in `run_sync`: the owner keeps the fd open while it is parked.
                let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                let flags = if write {
                    rustix::event::PollFlags::OUT
                } else {
                    rustix::event::PollFlags::IN
                };
                (fd, flags)
            })
            .collect();
        let mut fds: Vec<_> = wanted
            .iter()
            .map(|(fd, flags)| rustix::event::PollFd::new(fd, *flags))
            .collect();
        let limit = timeout.map(|d| {
            rustix::event::Timespec::try_from(d).unwrap_or(rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        let _ = rustix::event::poll(&mut fds, limit.as_ref());
        let ready: Vec<usize> = indices
            .iter()
            .zip(&fds)
            .filter(|(_, pfd)| !pfd.revents().is_empty())
            .map(|(&index, _)| index)
            .collect();
        drop(fds);
        for index in ready {
            self.try_parked(index);
        }
    }

    fn complete(&mut self, index: usize, result: io::Result<u32>) -> Completion {
        let slot = self.slots[index]
            .take()
            .expect("completion for a live slot");
        self.free_slots.push(index);
        self.in_flight -= 1;
        let mut held = slot.held;
        if let Held::Buf(buf) = held {
            self.lent[usize::from(buf.0)] -= 1;
        }
        if let Held::Recv(buf) = &mut held
            && matches!(self.backend, Backend::Uring { .. })
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

impl<'a> Op<'a> {
    /// A socket op (which borrows nothing) as one the sync backend can park; other ops
    /// come back unchanged.
    /// The op resolves a path, so whose credentials it runs with matters.
    fn names_a_path(&self) -> bool {
        matches!(
            self,
            Op::OpenAt2 { .. } | Op::LinkAt { .. } | Op::RenameAt { .. } | Op::UnlinkAt { .. }
        )
    }

    fn into_socket_op(self) -> Result<Op<'static>, Op<'a>> {
        match self {
            Op::Accept { fd } => Ok(Op::Accept { fd }),
            Op::ReadEventfd { fd } => Ok(Op::ReadEventfd { fd }),
            Op::Recv { fd, buf } => Ok(Op::Recv { fd, buf }),
            Op::Send { fd, data, sent } => Ok(Op::Send { fd, data, sent }),
            other => Err(other),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Op::ReadFixed { .. } => "read",
            Op::WriteFixed { .. } => "write",
            Op::WriteVec { .. } => "write",
            Op::ReadVec { .. } => "read",
            Op::Fsync { .. } => "fsync",
            Op::OpenAt2 { .. } => "open",
            Op::LinkAt { .. } => "link",
            Op::RenameAt { .. } => "rename",
            Op::UnlinkAt { .. } => "unlink",
            Op::Accept { .. } => "accept",
            Op::Recv { .. } => "recv",
            Op::Send { .. } => "send",
            Op::ReadEventfd { .. } => "wake",
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // The kernel may still write into slot memory for ops in flight (a shard always has
        // its wake-up read and, on shard 0, an accept armed): cancel them all, then wait for
        // their completions so freeing the buffers cannot race the kernel.
        if let Backend::Uring { .. } = self.backend {
            let live: Vec<u64> = (0..self.slots.len())
                .filter(|&i| self.slots[i].is_some())
                .map(|i| i as u64)
                .collect();
            for user_data in live {
                let entry = opcode::AsyncCancel::new(user_data)
                    .build()
                    .user_data(CANCEL_USER_DATA);
                self.push_entry(entry);
            }
            let mut sink = Vec::new();
            let mut rounds = 0;
            while self.in_flight > 0 && rounds < 1000 {
                self.wait(Some(Duration::from_millis(10)), &mut sink);
                sink.clear();
                rounds += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
