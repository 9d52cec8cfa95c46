//! An allocation-free client for `ringcryptd`'s socket, shared by `tests/allocs.rs` and
//! `benches/allocs/`: request lines are encoded before a measured window, replies land in
//! one buffer allocated at connect and are split in place, and descriptors are passed from
//! stack buffers, so whatever a window allocates is the daemon's.

#![allow(dead_code)]

use std::fs;
use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest reply line the client takes: a `done` of a tree lists at most 100 failures.
pub const REPLY_BUFFER_BYTES: usize = 256 * 1024;

/// One connection; replies land in a fixed buffer and are split in place.
pub struct Conn {
    stream: UnixStream,
    buf: Box<[u8]>,
    start: usize,
    filled: usize,
}

impl Conn {
    /// Connects to `socket`; a reply slower than `timeout` fails the caller.
    pub fn connect(socket: &Path, timeout: Duration) -> std::io::Result<Conn> {
        Conn::new(UnixStream::connect(socket)?, timeout)
    }

    /// A client on an already connected stream.
    pub fn new(stream: UnixStream, timeout: Duration) -> std::io::Result<Conn> {
        stream.set_read_timeout(Some(timeout))?;
        Ok(Conn {
            stream,
            buf: vec![0u8; REPLY_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            filled: 0,
        })
    }

    /// The next reply line (without its newline), as a range of `buf`. Allocation-free.
    pub fn next_line(&mut self) -> (usize, usize) {
        loop {
            if let Some(pos) = self.buf[self.start..self.filled]
                .iter()
                .position(|&b| b == b'\n')
            {
                let line = (self.start, self.start + pos);
                self.start += pos + 1;
                return line;
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.filled, 0);
                self.filled -= self.start;
                self.start = 0;
            }
            assert!(
                self.filled < self.buf.len(),
                "a reply line is longer than {REPLY_BUFFER_BYTES} bytes"
            );
            let n = match self.stream.read(&mut self.buf[self.filled..]) {
                // A read with a timeout that a signal interrupts is not restarted.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => read.expect("read a reply"),
            };
            assert!(n > 0, "ringcryptd closed the connection");
            self.filled += n;
        }
    }

    /// Sends one request and reads its replies up to the final one, which must be a `done`
    /// containing `expect`. Allocation-free unless it fails.
    pub fn job(&mut self, line: &[u8], expect: &[u8]) {
        (&self.stream).write_all(line).expect("send a request");
        self.until_done(expect);
    }

    /// As [`Conn::job`] for a request with `"fds": true`: opens `input` and makes an unnamed
    /// temp file (`O_TMPFILE`) in `out_dir`, as the `ringcrypt` client does, and passes both
    /// with the line's first bytes. The temp file is closed unlinked after `done`: linking it
    /// into place is the client's work, not the daemon's. Allocation-free unless it fails
    /// (paths this short are made C strings on the stack).
    pub fn job_passing(&mut self, line: &[u8], input: &Path, out_dir: &Path, expect: &[u8]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let input = fs::File::open(input).expect("open an input");
        let output = tmpfile(out_dir).expect("make an unnamed temp file (O_TMPFILE)");
        let fds = [input.as_fd(), output.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let sent = loop {
            match rustix::net::sendmsg(
                &self.stream,
                &[IoSlice::new(line)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => panic!("send a request with descriptors: {err}"),
            }
        };
        (&self.stream)
            .write_all(&line[sent..])
            .expect("send a request");
        self.until_done(expect);
    }

    /// Reads replies up to the final one, which must be a `done` containing `expect`.
    pub fn until_done(&mut self, expect: &[u8]) {
        loop {
            let (a, b) = self.next_line();
            let reply = &self.buf[a..b];
            if reply.starts_with(b"{\"type\":\"done\"") {
                assert!(
                    contains(reply, expect),
                    "unexpected done: {}",
                    String::from_utf8_lossy(reply)
                );
                return;
            }
            assert!(
                !reply.starts_with(b"{\"type\":\"error\""),
                "job failed: {}",
                String::from_utf8_lossy(reply)
            );
            // `accepted` and `progress` lines: read on.
        }
    }

    /// One reply line as text (outside the measured windows only).
    pub fn request_text(&mut self, line: &[u8]) -> String {
        (&self.stream).write_all(line).expect("send a request");
        let (a, b) = self.next_line();
        String::from_utf8_lossy(&self.buf[a..b]).into_owned()
    }
}

/// An unnamed temp file in `dir`, as the `ringcrypt` client makes a passed output.
pub fn tmpfile(dir: &Path) -> rustix::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{CWD, Mode, OFlags};
    rustix::fs::openat(
        CWD,
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
