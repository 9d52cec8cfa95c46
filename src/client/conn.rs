//! The client's side of the socket (docs/protocol.md): connect to `ringcryptd`'s Unix socket, send
//! one request line, read reply lines until the one that ends the request.
//!
//! This module owns the connection and the "which line is the last one" rule. It does **not**
//! build requests from a command line or print anything (that is `cli`), nor define the wire
//! format or read a line's fields (that is `protocol`: [`protocol::encode_request`],
//! [`protocol::parse_reply`], and the typed [`ReplyLine`] each reply line is read into once).
//!
//! A request with a file job and `wait` (the default) gets `accepted`, any number of
//! `progress` lines, then exactly one `done` or `error`; every other request gets one line.
//! Reply types this client does not know are passed on and otherwise ignored, as the protocol
//! asks ("this list may grow").

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::error::{Code, Error};
use crate::protocol::{self, ReplyLine, Request, RequestId};

/// How long a request that is not a file job may wait for its one reply line. `ping`,
/// `status`, `jobs`, `stats`, `keys`, `reload` and `cancel` are answered by a shard without
/// touching files, so a daemon that is silent this long is stuck or is not `ringcryptd`.
/// File jobs get no read timeout: a large file may take minutes, and `done` comes when it is
/// on disk.
pub const SHORT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing the request line may block. The line is at most a few KiB and the
/// daemon reads it at once; a full socket buffer this long means the daemon is stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request did not get a final reply.
#[derive(Debug)]
pub enum ClientError {
    /// The daemon could not be reached: no socket file, nobody listening, no permission, or
    /// no answer within [`SHORT_REPLY_TIMEOUT`]. The CLI's exit code 3.
    Unreachable {
        socket: PathBuf,
        cause: String,
        reason: Unreachable,
    },
    /// The daemon answered with an `error` reply (its code and message), or the conversation
    /// broke after it began (the connection closed early, a line that is not a reply).
    Failed(Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { socket, cause, .. } => write!(
                f,
                "cannot reach ringcryptd at {}: {cause}",
                socket.display()
            ),
            ClientError::Failed(err) => write!(f, "{} [{}]", err.message, err.code),
        }
    }
}

impl std::error::Error for ClientError {}

/// Why the daemon could not be reached, so the next step suggested can fit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// No socket file, or nobody listening on it: the daemon is not running there.
    NotRunning,
    /// The socket exists but this user may not connect to it.
    PermissionDenied,
    /// Connected, but no answer in time.
    NoAnswer,
    /// Anything else that stopped the connection.
    Other,
}

/// One connection to the daemon. Requests on it are sent one at a time, each with a fresh id.
pub struct Client {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `socket`. Every failure here is [`ClientError::Unreachable`]:
    /// a missing socket file (`ENOENT`), a stale one (`ECONNREFUSED`), one we may not open
    /// (`EACCES`), or anything else that stops the connection.
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let failed = |cause: String, reason| ClientError::Unreachable {
            socket: socket.to_path_buf(),
            cause,
            reason,
        };
        let unreachable = |cause: String| failed(cause, Unreachable::Other);
        let stream = UnixStream::connect(socket).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => failed(
                "no such socket (is the daemon running?)".into(),
                Unreachable::NotRunning,
            ),
            io::ErrorKind::ConnectionRefused => failed(
                "connection refused (the daemon is not running, or the socket is stale)".into(),
                Unreachable::NotRunning,
            ),
            io::ErrorKind::PermissionDenied => failed(
                "permission denied: this user may not use the daemon's socket".into(),
                Unreachable::PermissionDenied,
            ),
            _ => unreachable(err.to_string()),
        })?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|err| unreachable(format!("cannot set a write timeout: {err}")))?;
        let writer = stream
            .try_clone()
            .map_err(|err| unreachable(format!("cannot use the connection: {err}")))?;
        Ok(Client {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and reads replies until the final one, which it returns. Every reply
    /// line, raw and with its newline, is first given to `on_line` with its parsed form (the
    /// CLI's `--json` prints it; a progress display could use it). An `error` reply becomes
    /// [`ClientError::Failed`] after `on_line` has seen it.
    pub fn request(
        &mut self,
        request: &Request,
        on_line: impl FnMut(&str, &ReplyLine),
    ) -> Result<ReplyLine, ClientError> {
        self.request_passing(request, &[], on_line)
    }

    /// As [`Client::request`], passing `fds` with the request line (`SCM_RIGHTS`, attached
    /// to its first byte), as a request with `"fds": true` needs: the input, then the output.
    pub fn request_passing(
        &mut self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
        mut on_line: impl FnMut(&str, &ReplyLine),
    ) -> Result<ReplyLine, ClientError> {
        let id = RequestId::from(self.next_id);
        self.next_id += 1;
        let waits_for_job = matches!(request, Request::File(spec) if spec.wait);
        let timeout = (!waits_for_job).then_some(SHORT_REPLY_TIMEOUT);
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|err| self.failed(format!("cannot set a read timeout: {err}")))?;

        let line = protocol::encode_request(Some(&id), request);
        self.send_line(line.as_bytes(), fds)
            .map_err(|err| self.broken(request.op(), "sending the request", err))?;

        loop {
            let (text, reply_id, line) = self.read_reply(request.op())?;
            on_line(&text, &line);
            // An error without an id is the daemon refusing a line it could not read far
            // enough to find the id; on this connection it can only be about our request.
            let answers = reply_id.as_ref() == Some(id.value());
            let ours = answers || (reply_id.is_none() && matches!(line, ReplyLine::Error(_)));
            if !ours {
                continue;
            }
            match line {
                ReplyLine::Error(err) => return Err(ClientError::Failed(err)),
                ReplyLine::Done(_) => return Ok(line),
                line if !waits_for_job => return Ok(line),
                _ => {}
            }
        }
    }

    /// Sends a file job that waits for its outcome, without reading any reply, so several
    /// can be in flight on this connection; returns the id its replies carry. Read them with
    /// [`Client::next_reply`]. `fds` as in [`Client::request_passing`].
    pub fn send(
        &mut self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<RequestId, ClientError> {
        let id = RequestId::from(self.next_id);
        self.next_id += 1;
        self.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|err| self.failed(format!("cannot set a read timeout: {err}")))?;
        let line = protocol::encode_request(Some(&id), request);
        self.send_line(line.as_bytes(), fds)
            .map_err(|err| self.broken(request.op(), "sending the request", err))?;
        Ok(id)
    }

    /// The next reply line on this connection: as received (with its newline), the id it
    /// answers (none for a line the daemon could not read an id from), and what it says.
    pub fn next_reply(
        &mut self,
    ) -> Result<(String, Option<serde_json::Value>, ReplyLine), ClientError> {
        self.read_reply("file job")
    }

    fn read_reply(
        &mut self,
        op: &str,
    ) -> Result<(String, Option<serde_json::Value>, ReplyLine), ClientError> {
        let mut raw = Vec::new();
        let read = self
            .reader
            .read_until(b'\n', &mut raw)
            .map_err(|err| self.broken(op, "reading the reply", err))?;
        if read == 0 || raw.last() != Some(&b'\n') {
            return Err(self.failed(format!(
                "the daemon closed the connection before answering the {op} request \
                 (did it stop?)"
            )));
        }
        let text = String::from_utf8(raw).map_err(|_| {
            self.failed(
                "the reply from the socket is not UTF-8; is ringcryptd listening there?"
                    .to_string(),
            )
        })?;
        let reply = protocol::parse_reply(&text).map_err(ClientError::Failed)?;
        let id = reply.id.clone();
        let line = reply.into_line().map_err(ClientError::Failed)?;
        Ok((text, id, line))
    }

    /// Writes one request line; descriptors go with the first `sendmsg`, so they arrive
    /// with the line's first bytes.
    fn send_line(&mut self, line: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut sent = 0;
        if !fds.is_empty() {
            let mut space = vec![
                std::mem::MaybeUninit::<u8>::uninit();
                rustix::cmsg_space!(ScmRights(fds.len()))
            ];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::other("too many descriptors for one message"));
            }
            sent = loop {
                match rustix::net::sendmsg(
                    &self.writer,
                    &[io::IoSlice::new(line)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                ) {
                    Ok(n) => break n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(err) => return Err(err.into()),
                }
            };
        }
        self.writer.write_all(&line[sent..])?;
        self.writer.flush()
    }

    fn failed(&self, message: String) -> ClientError {
        ClientError::Failed(Error::new(Code::Internal, message))
    }

    /// An IO error after connecting. A timeout on a short request means the daemon is not
    /// answering: unreachable, as far as the caller can tell. Anything else broke mid-way.
    fn broken(&self, op: &str, during: &str, err: io::Error) -> ClientError {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Unreachable {
                socket: self.socket.clone(),
                cause: format!(
                    "no answer to the {op} request within {} s",
                    SHORT_REPLY_TIMEOUT.as_secs()
                ),
                reason: Unreachable::NoAnswer,
            },
            _ => ClientError::Failed(Error::new(
                Code::IoError,
                format!(
                    "connection to {} broke while {during}: {err}",
                    self.socket.display()
                ),
            )),
        }
    }
}

/// Makes `path` absolute against `cwd`, lexically: `.` components and repeated `/` go, `..`
/// stays (the daemon refuses it with a clear message), and no symlink is resolved, so the
/// daemon sees the path the user named and can apply its own symlink rules.
pub fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    cwd.join(path)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_lexically() {
        let cwd = Path::new("/home/u/work");
        assert_eq!(
            absolute(cwd, Path::new("a.txt")),
            PathBuf::from("/home/u/work/a.txt")
        );
        assert_eq!(
            absolute(cwd, Path::new("./x/./y//z")),
            PathBuf::from("/home/u/work/x/y/z")
        );
        assert_eq!(
            absolute(cwd, Path::new("../b")),
            PathBuf::from("/home/u/work/../b")
        );
        assert_eq!(
            absolute(cwd, Path::new("/abs/./p")),
            PathBuf::from("/abs/p")
        );
    }

    #[test]
    fn a_missing_socket_is_unreachable_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let err = Client::connect(&socket)
            .err()
            .expect("nothing listens there");
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
