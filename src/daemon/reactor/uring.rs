//! The io_uring backend: setting the ring up (and registering the pool as fixed buffers when
//! the locked-memory limit allows), turning an [`Op`] into a submission entry, submitting,
//! reaping completions, cancelling what is in flight when the reactor goes, and registering
//! callers' credentials as personalities.
//!
//! It owns the ring, the wake-up buffer eventfd reads land in, and the list completions are
//! reaped into. It does not own the memory the other entries point at: the op's slot and path
//! buffers (the slab, in `mod.rs`) and pool buffers (`pool`) keep it until the completion is
//! handed back, which is what makes pushing an entry sound.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

use super::pool::Pool;
use super::{Held, Op, OpPaths, RING_ENTRIES, RawOp, Slot, fill_path, fill_proc_path};
use crate::daemon::creds::{ActAs, Caller};

/// `user_data` of cancel requests; their own completions carry no slot and are skipped.
const CANCEL_USER_DATA: u64 = u64::MAX;

/// `IORING_ENTER_GETEVENTS`: the enter also runs the task work that posts completions.
const ENTER_GETEVENTS: u32 = 1;

/// How the ring runs the task work that posts completions, chosen with
/// `RINGCRYPT_RING_SETUP` (for measuring; see docs/performance.md):
/// - `plain`: the kernel interrupts the shard to run it as soon as an op finishes;
/// - `coop` (`COOP_TASKRUN | TASKRUN_FLAG`): it waits for the shard's next entry into the
///   kernel, without an interrupt;
/// - `defer` (`SINGLE_ISSUER | DEFER_TASKRUN`): only when the shard asks for completions,
///   in one batch. Every enter that reaps then passes `IORING_ENTER_GETEVENTS`.
///
/// A setup the kernel refuses falls back to `plain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskRun {
    Plain,
    Coop,
    Defer,
}

impl TaskRun {
    fn from_env() -> TaskRun {
        match std::env::var("RINGCRYPT_RING_SETUP").as_deref() {
            Ok("coop") => TaskRun::Coop,
            Ok("defer") => TaskRun::Defer,
            _ => TaskRun::Plain,
        }
    }

    fn build(self) -> io::Result<IoUring> {
        let mut builder = IoUring::builder();
        match self {
            TaskRun::Plain => {}
            TaskRun::Coop => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            TaskRun::Defer => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
        }
        builder.build(RING_ENTRIES)
    }
}

pub(super) struct UringBackend {
    /// First field, so it is dropped first: the ring goes before the wake-up buffer.
    ring: Box<IoUring>,
    unsubmitted: usize,
    /// The pool is registered: pool reads and writes use the fixed-buffer opcodes.
    fixed: bool,
    /// Where the wake-up eventfd read lands; its value is never looked at. A shard keeps
    /// one such read in flight at a time.
    wake: Box<[u8; 8]>,
    /// Completions taken off the ring in one `wait`, by slot index; kept for the next.
    reaped: Vec<(usize, io::Result<u32>)>,
    /// The ring was set up with `DEFER_TASKRUN` (see [`TaskRun`]).
    defer: bool,
}

impl UringBackend {
    /// Checks that this process may use io_uring at all.
    pub(super) fn probe() -> io::Result<()> {
        IoUring::builder().build(RING_ENTRIES).map(|_: IoUring| ())
    }

    /// A ring, with the pool registered as fixed buffers if it may be. Registration counts
    /// against RLIMIT_MEMLOCK for unprivileged users (8 MiB by default, less than a shard's
    /// pool); when it is refused the ring still runs, with plain reads and writes into the
    /// same buffers, and the caller is told why.
    #[allow(unsafe_code)]
    pub(super) fn new(pool: &mut Pool) -> io::Result<(UringBackend, Option<String>)> {
        let asked = TaskRun::from_env();
        let mut refused = None;
        let (ring, task_run) = match asked.build() {
            Ok(ring) => (ring, asked),
            Err(err) if asked != TaskRun::Plain => {
                refused = Some(format!(
                    "the kernel refused the ring setup RINGCRYPT_RING_SETUP asked for ({asked:?}: \
                     {err}); using the plain one"
                ));
                (TaskRun::Plain.build()?, TaskRun::Plain)
            }
            Err(err) => return Err(err),
        };
        let iovecs: Vec<libc::iovec> = pool
            .buffers_mut()
            .map(|buf| libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            })
            .collect();
        let (fixed, warning) = if iovecs.is_empty() {
            (false, None)
        } else {
            // SAFETY: the buffers are boxed slices owned by the pool for the reactor's whole
            // life (never reallocated, and dropped only after the ring, see `Reactor`), so
            // the registered addresses stay valid while the ring can use them.
            match unsafe { ring.submitter().register_buffers(&iovecs) } {
                Ok(()) => (true, None),
                Err(err) => {
                    let bytes: usize = iovecs.iter().map(|v| v.iov_len).sum();
                    let warning = format!(
                        "cannot register {} MiB of fixed buffers ({err}); using plain io_uring \
                         reads and writes. Raise the locked-memory limit (LimitMEMLOCK=, \
                         ulimit -l) to use them",
                        bytes >> 20
                    );
                    (false, Some(warning))
                }
            }
        };
        let backend = UringBackend {
            ring: Box::new(ring),
            unsubmitted: 0,
            fixed,
            wake: Box::new([0; 8]),
            reaped: Vec::new(),
            defer: task_run == TaskRun::Defer,
        };
        Ok((backend, refused.or(warning)))
    }

    /// Queues `op`, whose slot (already in the slab at `index`) keeps its memory until it
    /// completes; with `personality`, it runs with those credentials.
    pub(super) fn push(
        &mut self,
        slot: &mut Slot,
        paths: &mut Option<Box<OpPaths>>,
        pool: &mut Pool,
        op: RawOp,
        index: usize,
        personality: Option<u16>,
    ) {
        let mut entry = self.prepare(slot, paths, pool, op, index as u64);
        if let Some(personality) = personality {
            entry = entry.personality(personality);
        }
        self.push_entry(entry);
    }

    /// The submission entry for `op`, moving the memory it names into `slot` (or `paths`).
    fn prepare(
        &mut self,
        slot: &mut Slot,
        paths: &mut Option<Box<OpPaths>>,
        pool: &mut Pool,
        op: RawOp,
        ud: u64,
    ) -> squeue::Entry {
        let write = matches!(op, Op::WriteFixed { .. });
        match op {
            Op::ReadFixed {
                fd,
                buf,
                at,
                len,
                offset,
            }
            | Op::WriteFixed {
                fd,
                buf,
                at,
                len,
                offset,
            } => {
                let ptr = pool.lend(buf, at, len).as_mut_ptr();
                slot.held = Held::Buf(buf);
                let (fd, len) = (types::Fd(fd), len as u32);
                // Registered buffers by index where the ring has them, plain ones otherwise.
                let entry = match (write, self.fixed) {
                    (false, true) => opcode::ReadFixed::new(fd, ptr, len, buf.index())
                        .offset(offset)
                        .build(),
                    (false, false) => opcode::Read::new(fd, ptr, len).offset(offset).build(),
                    (true, true) => opcode::WriteFixed::new(fd, ptr, len, buf.index())
                        .offset(offset)
                        .build(),
                    (true, false) => opcode::Write::new(fd, ptr, len).offset(offset).build(),
                };
                entry.user_data(ud)
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
                let paths = OpPaths::of(paths);
                paths.how = types::OpenHow::new()
                    .flags(flags)
                    .mode(mode)
                    .resolve(resolve);
                let path = fill_path(&mut paths.from, path).as_ptr();
                opcode::OpenAt2::new(types::Fd(dir), path, &paths.how)
                    .build()
                    .user_data(ud)
            }
            Op::LinkFile {
                file,
                to_dir,
                to,
                by_fd,
            } => {
                let paths = OpPaths::of(paths);
                let (from_dir, from, flags) = if by_fd {
                    (
                        file,
                        fill_path(&mut paths.from, b"").as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )
                } else {
                    let from = fill_proc_path(&mut paths.from, file).as_ptr();
                    (libc::AT_FDCWD, from, libc::AT_SYMLINK_FOLLOW)
                };
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
                let paths = OpPaths::of(paths);
                let from = fill_path(&mut paths.from, from).as_ptr();
                let to = fill_path(&mut paths.to, to).as_ptr();
                opcode::RenameAt::new(types::Fd(dir), from, types::Fd(dir), to)
                    .flags(flags)
                    .build()
                    .user_data(ud)
            }
            Op::UnlinkAt { dir, path } => {
                let path = fill_path(&mut OpPaths::of(paths).from, path).as_ptr();
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

    #[allow(unsafe_code)]
    fn push_entry(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every pointer in `entry` points into memory that stays put until the
            // completion for this user_data is reaped and handed back: the slot's boxed path
            // buffers and open_how (rewritten only by the next op in the same slot, after
            // this one completed), a Vec or boxed RecvBuf in the slot's `held`, a lent pool
            // buffer (which `buf_mut` and `release` refuse until it is unlent), or this
            // backend's boxed wake-up buffer, which only the kernel writes and nothing reads.
            // A cancel entry points at nothing.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.unsubmitted += 1;
                return;
            }
            // The submission queue is full: hand it to the kernel and retry.
            if let Err(err) = self.ring.submit()
                && err.raw_os_error() != Some(libc::EBUSY)
                && err.raw_os_error() != Some(libc::EAGAIN)
            {
                panic!("io_uring submit failed: {err}");
            }
        }
    }

    /// Asks the kernel to cancel the op in slot `index`; its completion still comes.
    pub(super) fn cancel(&mut self, index: usize) {
        let entry = opcode::AsyncCancel::new(index as u64)
            .build()
            .user_data(CANCEL_USER_DATA);
        self.push_entry(entry);
    }

    pub(super) fn submit(&mut self) {
        if self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(_) => self.unsubmitted = 0,
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
                Err(err) => panic!("io_uring submit failed: {err}"),
            }
        }
    }

    /// Submits, waits as [`super::Reactor::wait`] says, and returns the finished ops by slot
    /// index, with their results.
    pub(super) fn wait(
        &mut self,
        timeout: Option<Duration>,
    ) -> std::vec::Drain<'_, (usize, io::Result<u32>)> {
        let ring = &mut self.ring;
        let want = usize::from(timeout != Some(Duration::ZERO) && ring.completion().is_empty());
        let result = match timeout {
            // DEFER_TASKRUN posts completions only when an enter asks for events.
            _ if want == 0 && self.defer => self.enter_for_events(),
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
            Ok(_) => self.unsubmitted = 0,
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                self.unsubmitted = 0;
            }
            Err(err) => panic!("io_uring wait failed: {err}"),
        }
        self.reaped.extend(
            self.ring
                .completion()
                .filter(|cqe| cqe.user_data() != CANCEL_USER_DATA)
                .map(|cqe| {
                    let raw = cqe.result();
                    let result = if raw < 0 {
                        Err(io::Error::from_raw_os_error(-raw))
                    } else {
                        Ok(raw as u32)
                    };
                    (cqe.user_data() as usize, result)
                }),
        );
        self.reaped.drain(..)
    }

    /// Submits what is queued and posts the completions ready, without waiting.
    #[allow(unsafe_code)]
    fn enter_for_events(&self) -> io::Result<usize> {
        let to_submit = u32::try_from(self.unsubmitted).unwrap_or(u32::MAX);
        // SAFETY: a plain io_uring_enter with no argument: every entry it submits was
        // pushed by `push_entry`, whose safety note covers the memory they name.
        unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(to_submit, 0, ENTER_GETEVENTS, None)
        }
    }

    /// Registers `caller`'s credentials as a personality: the thread takes them on for the
    /// call ([`ActAs`]) and the kernel copies them.
    pub(super) fn register_personality(&self, caller: &Arc<Caller>) -> io::Result<u16> {
        let acting = ActAs::enter(caller)?;
        let id = self.ring.submitter().register_personality();
        drop(acting);
        id
    }

    pub(super) fn unregister_personality(&self, id: u16) {
        // Ops in flight with it keep their own reference to the credentials.
        let _ = self.ring.submitter().unregister_personality(id);
    }
}
