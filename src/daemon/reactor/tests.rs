//! The reactor's unit tests: each op kind on both backends, with real files and sockets.

use super::*;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};

/// `fd`'s copy, owned by `reactor`'s table.
fn adopt(reactor: &mut Reactor, fd: impl AsFd) -> File {
    reactor.adopt(fd.as_fd().try_clone_to_owned().unwrap())
}

fn backends() -> Vec<BackendKind> {
    vec![BackendKind::Uring, BackendKind::Sync]
}

fn run_one(reactor: &mut Reactor, token: u64, op: Op) -> Completion {
    reactor.push(token, op);
    let mut out = Vec::new();
    while out.is_empty() {
        reactor.wait(Some(Duration::from_secs(5)), &mut out);
    }
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

#[test]
fn fixed_reads_and_writes_round_trip_on_both_backends() {
    for kind in backends() {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 2, 4096) else {
            eprintln!("skipping {kind:?}: not available here");
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        file.write_all(&[7u8; 100]).unwrap();
        let buf = reactor.acquire().unwrap();
        let handle = adopt(&mut reactor, &file);
        let done = run_one(
            &mut reactor,
            1,
            Op::ReadFixed {
                fd: handle,
                buf,
                at: 10,
                len: 100,
                offset: 0,
            },
        );
        assert_eq!(done.token, 1);
        assert_eq!(done.result.unwrap(), 100);
        assert!(reactor.buf_mut(buf)[10..110].iter().all(|&b| b == 7));
        reactor.buf_mut(buf)[..5].copy_from_slice(b"hello");
        let done = run_one(
            &mut reactor,
            2,
            Op::WriteFixed {
                fd: handle,
                buf,
                at: 0,
                len: 5,
                offset: 200,
            },
        );
        assert_eq!(done.result.unwrap(), 5);
        reactor.release(buf);
        let mut done = run_one(
            &mut reactor,
            3,
            Op::ReadVec {
                fd: handle,
                data: Vec::new(),
                len: 5,
                offset: 200,
            },
        );
        assert_eq!(done.take_vec(), b"hello");
        let done = run_one(
            &mut reactor,
            4,
            Op::ReadVec {
                fd: handle,
                data: Vec::new(),
                len: 5,
                offset: 1000,
            },
        );
        assert_eq!(
            done.result.unwrap(),
            0,
            "{kind:?}: read past the end gives 0"
        );
        assert_eq!(reactor.in_flight(), 0);
    }
}

#[test]
fn errors_come_back_as_os_errors() {
    for kind in backends() {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 0, 0) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let dirfd = adopt(&mut reactor, std::fs::File::open(dir.path()).unwrap());
        let done = run_one(
            &mut reactor,
            9,
            Op::OpenAt2 {
                dir: dirfd,
                path: b"missing",
                flags: libc::O_RDONLY as u64,
                mode: 0,
                resolve: 0,
            },
        );
        assert_eq!(
            done.result.unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "{kind:?}"
        );
    }
}

#[test]
fn socket_ops_wait_for_readiness_on_both_backends() {
    for kind in backends() {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 0, 0) else {
            continue;
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        if kind == BackendKind::Sync {
            a.set_nonblocking(true).unwrap();
        }
        let a = adopt(&mut reactor, &a);
        reactor.push(
            5,
            Op::Recv {
                fd: a,
                buf: RecvBuf::new(16),
            },
        );
        let mut out = Vec::new();
        reactor.wait(Some(Duration::from_millis(50)), &mut out);
        assert!(out.is_empty(), "{kind:?}: recv completed with nothing sent");
        (&b).write_all(b"ping").unwrap();
        while out.is_empty() {
            reactor.wait(Some(Duration::from_secs(5)), &mut out);
        }
        let mut done = out.pop().unwrap();
        assert_eq!(done.result.as_ref().unwrap(), &4);
        let buf = done.take_recv().expect("recv hands its buffer back");
        assert_eq!(&buf.data[..4], b"ping");
        assert!(buf.fds.is_empty());
    }
}

#[test]
fn recv_takes_passed_descriptors_on_both_backends() {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    for kind in backends() {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 0, 0) else {
            continue;
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        if kind == BackendKind::Sync {
            a.set_nonblocking(true).unwrap();
        }
        let file = tempfile::tempfile().unwrap();
        (&file).write_all(b"passed").unwrap();
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [file.as_fd(), file.as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &b,
            &[io::IoSlice::new(b"line\n")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        let mut buf = RecvBuf::new(64);
        buf.filled = 3;
        let a = adopt(&mut reactor, &a);
        reactor.push(6, Op::Recv { fd: a, buf });
        let mut out = Vec::new();
        while out.is_empty() {
            reactor.wait(Some(Duration::from_secs(5)), &mut out);
        }
        let mut done = out.pop().unwrap();
        assert_eq!(done.result.as_ref().unwrap(), &5, "{kind:?}");
        let mut buf = done.take_recv().unwrap();
        assert_eq!(
            &buf.data[3..8],
            b"line\n",
            "{kind:?}: bytes land after `filled`"
        );
        assert_eq!(buf.fds.len(), 2, "{kind:?}");
        assert!(!buf.fds_truncated);
        for fd in buf.fds.drain(..) {
            let mut got = [0u8; 6];
            rustix::io::pread(&fd, &mut got, 0).unwrap();
            assert_eq!(&got, b"passed", "{kind:?}: the descriptor is the same file");
            let flags = rustix::io::fcntl_getfd(&fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "{kind:?}");
        }
    }
}

#[test]
fn a_closed_descriptor_stays_open_until_its_ops_complete() {
    for kind in backends() {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 0, 0) else {
            continue;
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(kind == BackendKind::Sync).unwrap();
        let handle = adopt(&mut reactor, &a);
        let raw = reactor.fd(handle).unwrap().as_raw_fd();
        reactor.push(
            7,
            Op::Recv {
                fd: handle,
                buf: RecvBuf::new(16),
            },
        );
        let mut out = Vec::new();
        reactor.wait(Some(Duration::from_millis(20)), &mut out);
        assert!(out.is_empty(), "{kind:?}");
        reactor.close(handle);
        // Closed by its owner, but a receive still names it: the number must stay taken,
        // so nothing opened now can be reached by the queued op.
        assert_eq!(reactor.files.held(), 1, "{kind:?}");
        assert!(
            rustix::io::fcntl_getfd(unsafe_borrow(raw)).is_ok(),
            "{kind:?}"
        );
        assert!(
            reactor.fd(handle).is_err(),
            "{kind:?}: a closed handle lends nothing"
        );
        (&b).write_all(b"late").unwrap();
        while out.is_empty() {
            reactor.wait(Some(Duration::from_secs(5)), &mut out);
        }
        assert_eq!(out[0].result.as_ref().unwrap(), &4, "{kind:?}");
        assert_eq!(reactor.files.held(), 0, "{kind:?}: closed with its last op");
    }
}

/// Borrows a raw descriptor number for one `fcntl` probe (the number may be closed: that is
/// what the caller checks, and `F_GETFD` on a closed number only fails with `EBADF`).
#[allow(unsafe_code)]
fn unsafe_borrow(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: used only for F_GETFD, which reads the descriptor table and nothing behind it.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

#[test]
fn a_stale_handle_fails_with_ebadf_and_never_names_a_new_file() {
    for kind in backends() {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 0, 0) else {
            continue;
        };
        let first = adopt(&mut reactor, tempfile::tempfile().unwrap());
        reactor.close(first);
        // The entry is reused for the next descriptor, under a new generation.
        let mut second_file = tempfile::tempfile().unwrap();
        second_file.write_all(b"second").unwrap();
        let second = adopt(&mut reactor, &second_file);
        assert_ne!(first, second);
        let mut done = run_one(
            &mut reactor,
            8,
            Op::ReadVec {
                fd: first,
                data: Vec::with_capacity(6),
                len: 6,
                offset: 0,
            },
        );
        assert_eq!(
            done.result.as_ref().unwrap_err().raw_os_error(),
            Some(libc::EBADF),
            "{kind:?}"
        );
        assert_eq!(
            done.take_vec().capacity(),
            6,
            "{kind:?}: the op's memory comes back"
        );
        let mut done = run_one(
            &mut reactor,
            9,
            Op::ReadVec {
                fd: second,
                data: Vec::new(),
                len: 6,
                offset: 0,
            },
        );
        assert_eq!(done.take_vec(), b"second", "{kind:?}");
        assert_eq!(reactor.in_flight(), 0);
    }
}

/// Both ways of linking (by descriptor, and through `/proc/self/fd`), on both backends: the
/// unnamed file gets the name with its bytes, and a second link to the same name is refused
/// with `EEXIST`, never replacing it. By descriptor needs `CAP_DAC_READ_SEARCH` or Linux 6.10;
/// where the kernel refuses it (`ENOENT`), that is what the job's fallback sees.
#[test]
fn link_file_names_an_unnamed_file_on_both_backends() {
    for (kind, by_fd) in backends()
        .into_iter()
        .flat_map(|kind| [(kind, false), (kind, true)])
    {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 0, 0) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let dir_file = std::fs::File::open(dir.path()).unwrap();
        let Ok(temp) = rustix::fs::openat(
            &dir_file,
            ".",
            rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR,
            rustix::fs::Mode::from_raw_mode(0o600),
        ) else {
            eprintln!("skipping: no O_TMPFILE here");
            return;
        };
        rustix::io::write(&temp, b"linked").unwrap();
        let temp = reactor.adopt(temp);
        let to_dir = adopt(&mut reactor, &dir_file);
        let done = run_one(
            &mut reactor,
            10,
            Op::LinkFile {
                file: temp,
                to_dir,
                to: b"named",
                by_fd,
            },
        );
        if by_fd && done.result.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::ENOENT)
        {
            eprintln!("{kind:?}: linking by descriptor refused here (ENOENT)");
            assert!(!dir.path().join("named").exists());
            continue;
        }
        assert_eq!(done.result.unwrap(), 0, "{kind:?} by_fd {by_fd}");
        assert_eq!(std::fs::read(dir.path().join("named")).unwrap(), b"linked");
        let again = run_one(
            &mut reactor,
            11,
            Op::LinkFile {
                file: temp,
                to_dir,
                to: b"named",
                by_fd,
            },
        );
        assert_eq!(
            again.result.unwrap_err().raw_os_error(),
            Some(libc::EEXIST),
            "{kind:?} by_fd {by_fd}: a link never replaces"
        );
    }
}

/// Intact: a read at [`STREAM`] on an empty pipe does not complete (nor block the thread:
/// `wait` returns after its timeout) until bytes come, then completes with them; a write to
/// a pipe nobody reads waits the same way; `cancel_on` ends a waiting op with `ECANCELED`,
/// and the pool buffer comes back (it can be released).
#[test]
fn stream_ops_wait_for_the_pipe_and_can_be_cancelled_on_both_backends() {
    for kind in backends() {
        let Ok((mut reactor, _)) = Reactor::new(Some(kind), 2, 1 << 20) else {
            eprintln!("skipping {kind:?}: not available here");
            continue;
        };
        let (reader, mut writer) = std::io::pipe().unwrap();
        let buf = reactor.acquire().unwrap();
        let input = adopt(&mut reactor, &reader);
        let read = |fd| Op::ReadFixed {
            fd,
            buf,
            at: 0,
            len: 4096,
            offset: STREAM,
        };
        reactor.push(1, read(input));
        let mut out = Vec::new();
        reactor.wait(Some(Duration::from_millis(100)), &mut out);
        assert!(out.is_empty(), "{kind:?}: an empty pipe completed a read");
        writer.write_all(b"some bytes").unwrap();
        while out.is_empty() {
            reactor.wait(Some(Duration::from_secs(5)), &mut out);
        }
        assert_eq!(out[0].result.as_ref().unwrap(), &10, "{kind:?}");
        assert_eq!(&reactor.buf_mut(buf)[..10], b"some bytes");

        // A waiting read, cancelled.
        reactor.push(2, read(input));
        out.clear();
        reactor.wait(Some(Duration::from_millis(50)), &mut out);
        assert!(out.is_empty());
        reactor.cancel_on(input);
        while out.is_empty() {
            reactor.wait(Some(Duration::from_secs(5)), &mut out);
        }
        let err = out[0].result.as_ref().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECANCELED), "{kind:?}: {err}");

        // A write larger than the pipe holds, nobody reading: part goes (or none), then it
        // waits; cancelled likewise.
        let output = adopt(&mut reactor, &writer);
        let write = Op::WriteFixed {
            fd: output,
            buf,
            at: 0,
            len: 1 << 20,
            offset: STREAM,
        };
        let mut partial = 0;
        out.clear();
        reactor.push(3, write);
        reactor.wait(Some(Duration::from_millis(100)), &mut out);
        if let Some(done) = out.pop() {
            // A backend that takes what fits at once: the next write waits.
            partial = *done.result.as_ref().unwrap();
            assert!(partial < 1 << 20, "{kind:?}: a full pipe took everything");
            reactor.push(
                4,
                Op::WriteFixed {
                    fd: output,
                    buf,
                    at: 0,
                    len: 1 << 20,
                    offset: STREAM,
                },
            );
            reactor.wait(Some(Duration::from_millis(100)), &mut out);
            assert!(out.is_empty(), "{kind:?}: a write to a full pipe completed");
        }
        reactor.cancel_on(output);
        while out.is_empty() {
            reactor.wait(Some(Duration::from_secs(5)), &mut out);
        }
        let result = out.pop().unwrap().result;
        let cancelled = result
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ECANCELED));
        // io_uring may complete a cancelled write with what it wrote before.
        assert!(
            cancelled || result.is_ok(),
            "{kind:?}: {result:?} after {partial}"
        );
        reactor.release(buf);
        drop(reader);
    }
}
