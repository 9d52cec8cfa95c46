//! A shard's client connections: their sockets, receive buffers and passed descriptors,
//! request lines found in what arrived, replies waiting to go out, back-pressure, idle and
//! closing. Shard 0 also counts every connection by uid here, for the per-uid limit and the
//! administrators' reserve.
//!
//! What this room does not do: parse or answer a request (the shard's `on_line` does, with
//! the lines this room finds), or count connections across shards (the shard does, with
//! the uid each close hands back).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use crate::daemon::creds::Caller;
use crate::daemon::job::Passed;
use crate::daemon::reactor::{BackendKind, Completion, File, Op, RECV_FDS_MAX, Reactor, RecvBuf};
use crate::error::{Code, Error};
use crate::limits::{
    ADMIN_RESERVED_CONNECTIONS, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_UID,
    MAX_PASSED_FDS_PER_CONN, MAX_PENDING_REPLY_BYTES, RECV_BUFFER_BYTES, RECV_INITIAL_BYTES,
    REFUSED_IDLE_TIMEOUT,
};
use crate::protocol::{FileJobSpec, MAX_REQUEST_LINE_BYTES};

/// Output a connection may hold back (see [`Conns::queue_deferred`]) before it is sent
/// anyway: about a hundred `file` lines.
const DEFERRED_SEND_BYTES: usize = 16 * 1024;

use crate::daemon::token::Token;

/// Largest send buffer a connection keeps for its next reply: a few thousand `done` lines.
/// A buffer grown past it by a rare large reply is freed once sent.
const REPLY_BUFFER_KEPT_BYTES: usize = 64 * 1024;

pub(super) struct Conn {
    /// The socket, owned by the reactor (closed through it, once no op names it).
    fd: File,
    pub caller: Arc<Caller>,
    /// The caller is not on the allow lists: it gets one answer, then the connection
    /// closes, so refused callers cannot hold connection slots.
    pub refused: bool,
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
    /// Read no more: the peer is gone, or the connection must close once answered.
    pub eof: bool,
    /// Requests read whose final line has not been queued yet.
    pub open_requests: usize,
    last_active: Instant,
    /// Shut for reading (a shutdown): what the peer already wrote is still read and
    /// answered, then the end of the stream closes the connection.
    draining: bool,
}

/// The descriptors a connection received and no request took yet (lent from its receive
/// buffer while its lines are handled), with whether the kernel dropped some.
pub(super) struct PassedFds<'a> {
    fds: &'a mut VecDeque<OwnedFd>,
    fds_truncated: &'a mut bool,
}

/// What a receive brought (see [`Conns::received`]).
pub(super) enum Received {
    /// Nothing for the shard: the connection is gone, or it ended (the uid, if it closed).
    Ended(Option<u32>),
    /// Bytes arrived. Complete lines are `buf.data[..consumed]` (the first one is the end of
    /// an over-long line when `skip_first`); `complaints` are error lines to send first
    /// (too many descriptors, a line too long). Hand the buffer back with
    /// [`Conns::done_receiving`].
    Lines {
        buf: Box<RecvBuf>,
        consumed: usize,
        skip_first: bool,
        too_long: bool,
        complaints: [Option<Error>; 2],
    },
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Conns {
    map: HashMap<u64, Conn>,
    next: u64,
    /// Shard 0 only: open connections per uid, across all shards.
    by_uid: HashMap<u32, usize>,
}

impl Conns {
    /// Serves a new connection and starts reading from it.
    pub fn add(
        &mut self,
        fd: OwnedFd,
        caller: Arc<Caller>,
        refused: bool,
        reactor: &mut Reactor,
    ) -> u64 {
        self.next += 1;
        let key = self.next;
        if reactor.kind() == BackendKind::Sync {
            let _ = rustix::io::ioctl_fionbio(&fd, true);
        }
        let conn = Conn {
            fd: reactor.adopt(fd),
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
            draining: false,
        };
        self.map.insert(key, conn);
        self.arm_recv(key, reactor);
        key
    }

    pub fn get(&self, key: u64) -> Option<&Conn> {
        self.map.get(&key)
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut Conn> {
        self.map.get_mut(&key)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Starts a receive, unless one is out, the connection reads no more, or its replies
    /// pile up unread (back-pressure).
    pub fn arm_recv(&mut self, key: u64, reactor: &mut Reactor) {
        let Some(conn) = self.map.get_mut(&key) else {
            return;
        };
        if conn.eof || conn.out.len() > MAX_PENDING_REPLY_BYTES {
            return;
        }
        let Some(buf) = conn.rbuf.take() else { return };
        let fd = conn.fd;
        reactor.push(Token::ConnRecv(key).encode(), Op::Recv { fd, buf });
    }

    /// Takes a finished receive: where its complete lines are, or that it ended.
    pub fn received(&mut self, key: u64, mut done: Completion, reactor: &mut Reactor) -> Received {
        let Some(mut buf) = done.take_recv() else {
            return Received::Ended(None);
        };
        let Some(conn) = self.map.get_mut(&key) else {
            return Received::Ended(None);
        };
        let n = match done.result {
            Ok(0) | Err(_) => {
                buf.fds.clear();
                conn.rbuf = Some(buf);
                conn.eof = true;
                return Received::Ended(self.maybe_close(key, reactor));
            }
            Ok(n) => n as usize,
        };
        conn.last_active = Instant::now();
        let mut complaints = [None, None];
        if buf.fds.len() > MAX_PASSED_FDS_PER_CONN {
            // Descriptors no request takes: close them rather than hold them.
            buf.fds.clear();
            complaints[0] = Some(Error::new(
                Code::BadRequest,
                format!(
                    "more than {MAX_PASSED_FDS_PER_CONN} passed descriptors are waiting for a \
                     request with \"fds\": true; they were closed"
                ),
            ));
        }
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
            complaints[1] = Some(Error::new(
                Code::TooLarge,
                format!(
                    "request line is longer than {MAX_REQUEST_LINE_BYTES} bytes; it was discarded"
                ),
            ));
        }
        Received::Lines {
            buf,
            consumed,
            skip_first,
            too_long,
            complaints,
        }
    }

    /// Gives a receive buffer back once its lines were handled: keeps the unfinished line,
    /// sizes the buffer, and reads on. Returns the uid if the connection closed.
    pub fn done_receiving(
        &mut self,
        key: u64,
        mut buf: Box<RecvBuf>,
        consumed: usize,
        too_long: bool,
        reactor: &mut Reactor,
    ) -> Option<u32> {
        let filled = buf.filled;
        buf.data.copy_within(consumed..filled, 0);
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
        if let Some(conn) = self.map.get_mut(&key) {
            conn.rbuf = Some(buf);
        }
        self.arm_recv(key, reactor);
        self.maybe_close(key, reactor)
    }

    /// Appends what `encode` writes to a connection's output and sends it; `final_reply`
    /// ends one of its requests. Returns the uid if the connection closed.
    pub fn queue(
        &mut self,
        key: u64,
        final_reply: bool,
        encode: impl FnOnce(&mut Vec<u8>),
        reactor: &mut Reactor,
    ) -> Option<u32> {
        let conn = self.map.get_mut(&key)?;
        if final_reply {
            conn.open_requests = conn.open_requests.saturating_sub(1);
        }
        let closing = conn.eof && conn.open_requests == 0;
        encode(&mut conn.out);
        self.flush(key, reactor);
        if closing {
            return self.maybe_close(key, reactor);
        }
        None
    }

    /// Appends what `encode` writes to a connection's output without sending it yet, unless
    /// [`DEFERRED_SEND_BYTES`] are waiting: for lines that come many at a time (a batch's
    /// `file` lines), so they leave in a few sends, not one each. Returns true when some
    /// output still waits: the caller then calls [`Conns::flush`] before its loop sleeps.
    pub fn queue_deferred(
        &mut self,
        key: u64,
        encode: impl FnOnce(&mut Vec<u8>),
        reactor: &mut Reactor,
    ) -> bool {
        let Some(conn) = self.map.get_mut(&key) else {
            return false;
        };
        encode(&mut conn.out);
        if conn.out.len() >= DEFERRED_SEND_BYTES {
            self.flush(key, reactor);
            return false;
        }
        true
    }

    /// Sends what waits in a connection's output, if no send is in flight; one in flight
    /// sends it when it completes.
    pub fn flush(&mut self, key: u64, reactor: &mut Reactor) {
        let Some(conn) = self.map.get_mut(&key) else {
            return;
        };
        if conn.sending || conn.out.is_empty() {
            return;
        }
        conn.sending = true;
        let data = std::mem::replace(&mut conn.out, std::mem::take(&mut conn.spare));
        let fd = conn.fd;
        reactor.push(
            Token::ConnSend(key).encode(),
            Op::Send { fd, data, sent: 0 },
        );
    }

    /// Takes a finished send. Returns the uid if the connection closed.
    pub fn sent(&mut self, key: u64, mut done: Completion, reactor: &mut Reactor) -> Option<u32> {
        let mut data = done.take_vec();
        let conn = self.map.get_mut(&key)?;
        match done.result {
            Ok(n) if (n as usize) < data.len() => {
                // Partial send: the rest goes first, before anything queued since.
                data.drain(..n as usize);
                data.extend_from_slice(&conn.out);
                conn.out.clear();
                conn.spare = std::mem::replace(&mut conn.out, data);
                conn.sending = false;
                self.flush(key, reactor);
                None
            }
            Ok(_) => {
                // Keep the buffer for the next send unless a large reply (a long `jobs`
                // list) grew it: an idle connection should not pin that memory.
                if data.capacity() <= REPLY_BUFFER_KEPT_BYTES {
                    data.clear();
                    conn.spare = data;
                }
                conn.sending = false;
                self.flush(key, reactor);
                let closed = self.maybe_close(key, reactor);
                // Reading may have paused for back-pressure; resume (no-op if a recv is out).
                self.arm_recv(key, reactor);
                closed
            }
            Err(_) => {
                // The peer is gone: drop what it will never read.
                conn.out.clear();
                conn.sending = false;
                conn.eof = true;
                shut(reactor, conn.fd, rustix::net::Shutdown::Both);
                self.maybe_close(key, reactor)
            }
        }
    }

    /// Closes a connection once its peer is gone (or it must go) and nothing is in flight;
    /// returns its uid if it closed. Jobs it submitted go on: their replies are dropped.
    pub fn maybe_close(&mut self, key: u64, reactor: &mut Reactor) -> Option<u32> {
        let conn = self.map.get(&key)?;
        if conn.eof
            && conn.open_requests == 0
            && !conn.sending
            && conn.rbuf.is_some()
            && conn.out.is_empty()
        {
            let conn = self.map.remove(&key)?;
            reactor.close(conn.fd);
            return Some(conn.caller.uid);
        }
        None
    }

    /// Shuts a connection's socket so its pending receive completes, then it closes.
    pub fn close(&mut self, key: u64, reactor: &mut Reactor) -> Option<u32> {
        if let Some(conn) = self.map.get_mut(&key) {
            conn.eof = true;
            shut(reactor, conn.fd, rustix::net::Shutdown::Both);
        }
        self.maybe_close(key, reactor)
    }

    /// Shuts a connection for reading, once: the peer can write no more (its writes fail),
    /// but every line it already wrote is still read and answered before the end of the
    /// stream closes the connection. A shutdown does this to each connection owed nothing,
    /// so no request a client sent goes unanswered.
    pub fn drain(&mut self, key: u64, reactor: &Reactor) {
        if let Some(conn) = self.map.get_mut(&key)
            && !conn.draining
        {
            conn.draining = true;
            shut(reactor, conn.fd, rustix::net::Shutdown::Read);
        }
    }

    /// Connections with nothing in flight and quiet for longer than their idle limit.
    pub fn idle(&self) -> Vec<u64> {
        self.map
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
            .collect()
    }

    /// Connections owed nothing: every request answered, every reply sent.
    pub fn owed_nothing(&self) -> Vec<u64> {
        self.map
            .iter()
            .filter(|(_, c)| c.open_requests == 0 && c.out.is_empty() && !c.sending)
            .map(|(&k, _)| k)
            .collect()
    }

    /// Shard 0: whether a new connection of `caller` fits, given `open` connections
    /// before it. Root and the daemon's uid may use the last [`ADMIN_RESERVED_CONNECTIONS`]
    /// slots, so an administrator always gets in; every other uid may hold at most
    /// [`MAX_CONNECTIONS_PER_UID`].
    pub fn admits(&self, caller: &Caller, open: usize, daemon_uid: u32) -> Result<(), Error> {
        let busy = |why: String| Err(Error::new(Code::Busy, why));
        if caller.is_admin(daemon_uid) {
            if open >= MAX_CONNECTIONS {
                return busy("too many connections; retry shortly".into());
            }
            return Ok(());
        }
        if open >= MAX_CONNECTIONS - ADMIN_RESERVED_CONNECTIONS {
            return busy("too many connections; retry shortly".into());
        }
        let held = self.by_uid.get(&caller.uid).copied().unwrap_or(0);
        if held >= MAX_CONNECTIONS_PER_UID {
            return busy(format!(
                "uid {} already has {held} connections open, the most one user may; close \
                 some, or send more requests on each (they are pipelined)",
                caller.uid
            ));
        }
        Ok(())
    }

    /// Shard 0: a connection of `uid` opened (on any shard).
    pub fn uid_opened(&mut self, uid: u32) {
        *self.by_uid.entry(uid).or_default() += 1;
    }

    /// Shard 0: a connection of `uid` closed (on any shard).
    pub fn uid_closed(&mut self, uid: u32) {
        if let Some(count) = self.by_uid.get_mut(&uid) {
            *count -= 1;
            if *count == 0 {
                self.by_uid.remove(&uid);
            }
        }
    }
}

impl<'a> PassedFds<'a> {
    /// The descriptors waiting in `buf`, lent while its lines are handled.
    pub fn of(fds: &'a mut VecDeque<OwnedFd>, fds_truncated: &'a mut bool) -> PassedFds<'a> {
        PassedFds { fds, fds_truncated }
    }

    /// Takes the two descriptors a request with `"fds": true` passed (input, then output)
    /// and checks that they are what such a request promises.
    pub fn take(&mut self, spec: &FileJobSpec) -> Result<Passed, Error> {
        let (input, output) = match (self.fds.pop_front(), self.fds.pop_front()) {
            (Some(input), Some(output)) => (input, output),
            _ => {
                let truncated = std::mem::take(self.fds_truncated);
                self.fds.clear();
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
}

/// Shuts a connection's socket (its pending receive then completes); a socket already
/// closed needs nothing.
fn shut(reactor: &Reactor, fd: File, how: rustix::net::Shutdown) {
    if let Ok(fd) = reactor.fd(fd) {
        let _ = rustix::net::shutdown(fd, how);
    }
}
