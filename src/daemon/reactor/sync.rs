//! The synchronous backend, for where io_uring is not allowed (or `RINGCRYPT_BACKEND=sync`):
//! file ops run at once as plain syscalls; socket and eventfd ops, and reads and writes on a
//! stream (offset [`STREAM`]: a pipe, a socket, a device), are tried without blocking and, if
//! they would block, parked in their slot until `poll(2)` says they are ready. A stream a job
//! was handed is in blocking mode (its file description is shared with the caller, so the
//! daemon leaves its flags alone): it is tried with `RWF_NOWAIT`, or, where the descriptor
//! has no such mode, asked `poll` first and then read (a read returns what is there) or
//! written at most `PIPE_BUF` bytes (which fit where `poll` saw room). A stalled pipe parks
//! its op; the shard goes on serving.
//!
//! It owns the queue of finished ops waiting to be handed back and the list of parked ones.
//! It does not own the memory ops use (their slots and the pool do), and nothing here is
//! `unsafe` beyond borrowing the raw descriptors an op names, for the one call that uses them.

use std::io;
use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};

use super::pool::Pool;
use super::{Held, Op, OpPaths, RawOp, STREAM, Slab, Slot, fill_path, fill_proc_path};

pub(super) struct SyncBackend {
    /// Finished ops by slot index, oldest first, handed back by the next `wait`.
    ready: Vec<(usize, io::Result<u32>)>,
    /// Slot indices of socket and stream ops that would have blocked.
    parked: Vec<usize>,
}

impl RawOp<'_> {
    /// A socket op, or a read or write on a stream (which borrow nothing), as one the sync
    /// backend can park; other ops come back unchanged.
    fn into_socket_op(self) -> Result<RawOp<'static>, Self> {
        if let Some(span) = self.stream_span() {
            return Ok(span.op());
        }
        match self {
            Op::Accept { fd } => Ok(Op::Accept { fd }),
            Op::ReadEventfd { fd } => Ok(Op::ReadEventfd { fd }),
            Op::Recv { fd, buf } => Ok(Op::Recv { fd, buf }),
            Op::Send { fd, data, sent } => Ok(Op::Send { fd, data, sent }),
            other => Err(other),
        }
    }

    /// A read or write on a stream: what it names.
    fn stream_span(&self) -> Option<StreamSpan> {
        let (fd, buf, at, len, write) = match *self {
            Op::ReadFixed {
                fd,
                buf,
                at,
                len,
                offset: STREAM,
            } => (fd, buf, at, len, false),
            Op::WriteFixed {
                fd,
                buf,
                at,
                len,
                offset: STREAM,
            } => (fd, buf, at, len, true),
            _ => return None,
        };
        Some(StreamSpan {
            fd,
            buf,
            at,
            len,
            write,
        })
    }

    /// The descriptor a parked op waits on, and whether it waits to write.
    fn pollable(&self) -> Option<(RawFd, bool)> {
        match self {
            Op::Accept { fd } | Op::Recv { fd, .. } | Op::ReadEventfd { fd } => Some((*fd, false)),
            Op::Send { fd, .. } => Some((*fd, true)),
            Op::ReadFixed { .. } | Op::WriteFixed { .. } => {
                self.stream_span().map(|span| (span.fd, span.write))
            }
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Op::ReadFixed { .. } => "read",
            Op::WriteFixed { .. } => "write",
            Op::ReadVec { .. } => "read",
            Op::Fsync { .. } => "fsync",
            Op::OpenAt2 { .. } => "open",
            Op::LinkFile { .. } => "link",
            Op::RenameAt { .. } => "rename",
            Op::UnlinkAt { .. } => "unlink",
            Op::Accept { .. } => "accept",
            Op::Recv { .. } => "recv",
            Op::Send { .. } => "send",
            Op::ReadEventfd { .. } => "wake",
        }
    }
}

impl SyncBackend {
    pub(super) fn new() -> SyncBackend {
        SyncBackend {
            ready: Vec::new(),
            parked: Vec::new(),
        }
    }

    /// Runs a file op now, or tries a socket op and parks it if it would block. `slot` is the
    /// op's, already in the slab at `index`.
    pub(super) fn push(
        &mut self,
        slot: &mut Slot,
        paths: &mut Option<Box<OpPaths>>,
        pool: &mut Pool,
        op: RawOp,
        index: usize,
    ) {
        match op.into_socket_op() {
            Ok(parked) => {
                // A stream op's span is lent from now until it completes, parked or not.
                if let Some(span) = parked.stream_span() {
                    pool.lend(span.buf, span.at, span.len);
                    slot.held = Held::Buf(span.buf);
                }
                slot.parked = Some(parked);
                self.try_parked(slot, pool, index);
            }
            Err(op) => {
                let result = run(slot, paths, pool, op);
                self.ready.push((index, result));
            }
        }
    }

    /// Polls the parked ops (without blocking when some ops already finished) and returns
    /// every finished op by slot index, with its result.
    pub(super) fn wait(
        &mut self,
        slab: &mut Slab,
        pool: &mut Pool,
        timeout: Option<Duration>,
    ) -> std::vec::Drain<'_, (usize, io::Result<u32>)> {
        // Parked sockets are polled on every call, without blocking when file ops already
        // completed: a long job whose ops complete at once must not starve the connections
        // (a `cancel` for it, say) on the same shard.
        let limit = if self.ready.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        if !self.parked.is_empty() {
            self.poll_parked(slab, pool, limit);
        } else if let Some(limit) = limit
            && !limit.is_zero()
        {
            std::thread::sleep(limit);
        }
        if crate::failpoint::reverse_completions() {
            self.ready.reverse();
        }
        self.ready.drain(..)
    }

    #[allow(unsafe_code)]
    fn poll_parked(&mut self, slab: &mut Slab, pool: &mut Pool, timeout: Option<Duration>) {
        let indices = self.parked.clone();
        let wanted: Vec<(BorrowedFd<'_>, PollFlags)> = indices
            .iter()
            .map(|&index| {
                let op = slab.slot(index).parked.as_ref().expect("parked op");
                let (raw, write) = op.pollable().expect("parkable");
                // SAFETY: the op's owner keeps `raw` open until the op's completion is handed
                // back (module docs of the reactor), and it is parked, so not yet; the borrow
                // ends with this function.
                let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                let flags = if write { PollFlags::OUT } else { PollFlags::IN };
                (fd, flags)
            })
            .collect();
        let mut fds: Vec<_> = wanted
            .iter()
            .map(|(fd, flags)| PollFd::new(fd, *flags))
            .collect();
        let limit = timeout.map(|d| {
            Timespec::try_from(d).unwrap_or(Timespec {
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
            self.try_parked(slab.slot(index), pool, index);
        }
    }

    /// Completes the parked op in slot `index` with `ECANCELED` (a job gave up on its
    /// stream); an op not parked has finished or is about to, and completes as it does.
    pub(super) fn cancel(&mut self, slab: &mut Slab, index: usize) {
        if !self.parked.contains(&index) {
            return;
        }
        let slot = slab.slot(index);
        if let Some(op) = slot.parked.take() {
            slot.held = held_by(op);
        }
        self.parked.retain(|&i| i != index);
        self.ready
            .push((index, Err(io::Error::from_raw_os_error(libc::ECANCELED))));
    }

    /// Tries the parked op of `slot` without blocking; on success queues its completion, on
    /// EAGAIN leaves it parked.
    #[allow(unsafe_code)]
    fn try_parked(&mut self, slot: &mut Slot, pool: &mut Pool, index: usize) {
        let op = slot.parked.take().expect("parked op");
        let fd = |raw: RawFd| {
            // SAFETY: the op's owner keeps `raw` open until the op's completion is handed
            // back (module docs of the reactor), and it is parked, so not yet; the borrow
            // ends with the one call it is made for.
            unsafe { BorrowedFd::borrow_raw(raw) }
        };
        let (result, op) = match op {
            Op::Accept { fd: raw } => {
                let flags = rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK;
                let result = rustix::net::accept_with(fd(raw), flags)
                    .map(|owned| owned.into_raw_fd() as u32)
                    .map_err(io::Error::from);
                (result, Op::Accept { fd: raw })
            }
            Op::Recv { fd: raw, mut buf } => {
                let result = buf.recv_now(fd(raw));
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
            op @ (Op::ReadFixed { .. } | Op::WriteFixed { .. }) => {
                let span = op
                    .stream_span()
                    .expect("only stream reads and writes are parked");
                let bytes = pool.lent_span(span.buf, span.at, span.len);
                let bytes = match span.write {
                    true => Span::Write(bytes),
                    false => Span::Read(bytes),
                };
                (stream_io(fd(span.fd), bytes), op)
            }
            other => unreachable!("not a parkable op: {}", other.name()),
        };
        match result {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                slot.parked = Some(op);
                if !self.parked.contains(&index) {
                    self.parked.push(index);
                }
            }
            result => {
                slot.held = held_by(op);
                self.parked.retain(|&i| i != index);
                self.ready.push((index, result));
            }
        }
    }
}

/// What a parked op holds, to hand back with its completion.
fn held_by(op: RawOp<'static>) -> Held {
    match op {
        Op::Recv { buf, .. } => Held::Recv(buf),
        Op::Send { data, .. } => Held::Vec(data),
        Op::ReadFixed { buf, .. } | Op::WriteFixed { buf, .. } => Held::Buf(buf),
        _ => Held::Nothing,
    }
}

/// What a read or write on a stream names: its descriptor, its span of a pool buffer, and
/// whether it writes.
#[derive(Clone, Copy)]
struct StreamSpan {
    fd: RawFd,
    buf: super::BufId,
    at: usize,
    len: usize,
    write: bool,
}

impl StreamSpan {
    /// The op again (it borrows nothing), to park.
    fn op(self) -> RawOp<'static> {
        let StreamSpan {
            fd,
            buf,
            at,
            len,
            write,
        } = self;
        let offset = STREAM;
        match write {
            true => Op::WriteFixed {
                fd,
                buf,
                at,
                len,
                offset,
            },
            false => Op::ReadFixed {
                fd,
                buf,
                at,
                len,
                offset,
            },
        }
    }
}

/// The span a stream op reads into or writes from.
enum Span<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// One read or write on a stream without blocking: `WouldBlock` when it is not ready.
fn stream_io(fd: BorrowedFd<'_>, span: Span<'_>) -> io::Result<u32> {
    use rustix::io::{Errno, ReadWriteFlags};
    use std::io::{IoSlice, IoSliceMut};
    let nowait = ReadWriteFlags::NOWAIT;
    let mut span = span;
    let tried = match &mut span {
        Span::Read(buf) => rustix::io::preadv2(fd, &mut [IoSliceMut::new(buf)], STREAM, nowait),
        Span::Write(buf) => rustix::io::pwritev2(fd, &[IoSlice::new(buf)], STREAM, nowait),
    };
    match tried {
        Err(Errno::OPNOTSUPP) => {}
        other => return other.map(|n| n as u32).map_err(io::Error::from),
    }
    // No RWF_NOWAIT for this descriptor: readiness first, then an op that cannot block.
    let events = match span {
        Span::Read(_) => PollFlags::IN,
        Span::Write(_) => PollFlags::OUT,
    };
    let mut fds = [PollFd::new(&fd, events)];
    rustix::event::poll(
        &mut fds,
        Some(&Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    )?;
    if fds[0].revents().is_empty() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let done = match span {
        Span::Read(buf) => rustix::io::read(fd, buf),
        Span::Write(buf) => rustix::io::write(fd, &buf[..buf.len().min(libc::PIPE_BUF)]),
    };
    done.map(|n| n as u32).map_err(io::Error::from)
}

/// Runs a file op (not a socket op) now, keeping the memory it names in `slot`.
#[allow(unsafe_code)]
fn run(
    slot: &mut Slot,
    paths: &mut Option<Box<OpPaths>>,
    pool: &mut Pool,
    op: RawOp,
) -> io::Result<u32> {
    use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
    let fd = |raw: RawFd| {
        // SAFETY: the caller keeps `raw` open for the duration of the op (module docs of the
        // reactor), and the op runs and ends inside this function, as does the borrow.
        unsafe { BorrowedFd::borrow_raw(raw) }
    };
    let count = |n: usize| Ok(n as u32);
    let write = matches!(op, Op::WriteFixed { .. });
    match op {
        Op::ReadFixed {
            fd: raw,
            buf,
            at,
            len,
            offset,
        }
        | Op::WriteFixed {
            fd: raw,
            buf,
            at,
            len,
            offset,
        } => {
            slot.held = Held::Buf(buf);
            let span = pool.lend(buf, at, len);
            let done = if write {
                rustix::io::pwrite(fd(raw), span, offset)
            } else {
                rustix::io::pread(fd(raw), span, offset)
            };
            done.map_err(io::Error::from).and_then(count)
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
            fill_path(&mut OpPaths::of(paths).from, path),
            OFlags::from_bits_retain(flags as u32),
            Mode::from_raw_mode(mode as u32),
            ResolveFlags::from_bits_retain(resolve),
        )
        .map(|owned| owned.into_raw_fd() as u32)
        .map_err(io::Error::from),
        Op::LinkFile {
            file,
            to_dir,
            to,
            by_fd,
        } => {
            let paths = OpPaths::of(paths);
            let to = fill_path(&mut paths.to, to);
            if by_fd {
                rustix::fs::linkat(fd(file), c"", fd(to_dir), to, AtFlags::EMPTY_PATH)
            } else {
                let from = fill_proc_path(&mut paths.from, file);
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    from,
                    fd(to_dir),
                    to,
                    AtFlags::SYMLINK_FOLLOW,
                )
            }
            .map(|()| 0)
            .map_err(io::Error::from)
        }
        Op::RenameAt {
            dir,
            from,
            to,
            flags,
        } => {
            let paths = OpPaths::of(paths);
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
            fill_path(&mut OpPaths::of(paths).from, path),
            AtFlags::empty(),
        )
        .map(|()| 0)
        .map_err(io::Error::from),
        Op::Accept { .. } | Op::Recv { .. } | Op::Send { .. } | Op::ReadEventfd { .. } => {
            unreachable!("socket ops are parked, not run directly")
        }
    }
}
