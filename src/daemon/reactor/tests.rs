//! The reactor's unit tests: each op kind on both backends, with real files and sockets.

use super::*;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};

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
        let done = run_one(
            &mut reactor,
            1,
            Op::ReadFixed {
                fd: file.as_raw_fd(),
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
                fd: file.as_raw_fd(),
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
                fd: file.as_raw_fd(),
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
                fd: file.as_raw_fd(),
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
        let dirfd = std::fs::File::open(dir.path()).unwrap();
        let done = run_one(
            &mut reactor,
            9,
            Op::OpenAt2 {
                dir: dirfd.as_raw_fd(),
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
        reactor.push(
            5,
            Op::Recv {
                fd: a.as_raw_fd(),
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
        reactor.push(
            6,
            Op::Recv {
                fd: a.as_raw_fd(),
                buf,
            },
        );
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
