//! A JSON-lines client of the daemon's socket, and the requests and replies it carries.
//!
//! [`Client`] has two ways to read: [`Client::recv`] and the calls built on it fail the test
//! on EOF or a timeout, and [`Client::next`] reports them ([`Next`]) for tests where the
//! daemon closing a connection is what is checked; [`Client::recv_noting`] fails saying
//! whether the daemon died, and how its log ends.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{Daemon, READ_TIMEOUT};

/// What one read of a reply line gave.
pub enum Next {
    Line(String),
    /// EOF, a reset, or a line cut short.
    Closed(String),
    Timeout(String),
}

/// A JSON-lines client.
pub struct Client {
    pub stream: UnixStream,
    pub reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to `socket`; a reply slower than [`READ_TIMEOUT`] fails the read.
    pub fn connect(socket: &Path) -> Client {
        Client::open(socket, READ_TIMEOUT)
    }

    /// Connects to `socket` with a read timeout of `timeout`.
    pub fn open(socket: &Path, timeout: Duration) -> Client {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        Client::from_stream(stream, timeout)
    }

    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Client {
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Writes the requests, one line each, in one write.
    pub fn try_send_all(&mut self, requests: &[Value]) -> std::io::Result<()> {
        let mut text = String::new();
        for request in requests {
            text.push_str(&serde_json::to_string(request).unwrap());
            text.push('\n');
        }
        self.stream.write_all(text.as_bytes())
    }

    pub fn try_send(&mut self, request: &Value) -> std::io::Result<()> {
        self.try_send_all(std::slice::from_ref(request))
    }

    pub fn send(&mut self, request: &Value) {
        self.try_send(request)
            .unwrap_or_else(|e| panic!("write {request} to the daemon: {e}"));
    }

    /// Sends several requests in one write (pipelined).
    pub fn send_all(&mut self, requests: &[Value]) {
        self.try_send_all(requests)
            .unwrap_or_else(|e| panic!("write {} requests to the daemon: {e}", requests.len()));
    }

    /// Sends one request with descriptors attached to its line (`SCM_RIGHTS`), as a
    /// request with `"fds": true` passes its input and output.
    pub fn send_with_fds(&mut self, request: &Value, fds: &[std::os::fd::BorrowedFd<'_>]) {
        let mut line = serde_json::to_string(request).unwrap();
        line.push('\n');
        let sent =
            send_with_fds(&self.stream, line.as_bytes(), fds).expect("sendmsg to the daemon");
        self.send_raw(&line.as_bytes()[sent..]);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the daemon");
    }

    /// The next reply line, or how the connection ended.
    pub fn next(&mut self) -> Next {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Next::Closed("EOF".into()),
            Ok(_) if line.ends_with('\n') => Next::Line(line),
            Ok(_) => Next::Closed(format!("EOF in the middle of a line: {line:?}")),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Next::Timeout(format!("no reply line within the read timeout ({e})"))
            }
            Err(e) => Next::Closed(format!("read error: {e}")),
        }
    }

    /// One reply line, raw (with its newline). Panics on EOF, timeout or a partial line.
    pub fn recv_line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("the daemon closed the connection (no reply line)"),
            Ok(_) => {
                assert!(line.ends_with('\n'), "reply line cut short: {line:?}");
                line
            }
            Err(e) => panic!("no reply line within {READ_TIMEOUT:?}: {e} (partial: {line:?})"),
        }
    }

    /// One reply, parsed; it must be a JSON object with a string `type`.
    pub fn recv(&mut self) -> Value {
        parse_line(&self.recv_line())
    }

    pub fn call(&mut self, request: &Value) -> Value {
        self.send(request);
        self.recv()
    }

    /// Reads replies up to and including the first `done` or `error`.
    pub fn until_end(&mut self) -> Vec<Value> {
        let mut replies = Vec::new();
        loop {
            let reply = self.recv();
            let end = is_final(&reply);
            replies.push(reply);
            if end {
                return replies;
            }
        }
    }

    /// Sends a file job and returns its replies through `done` or `error`.
    pub fn job(&mut self, request: &Value) -> Vec<Value> {
        self.send(request);
        self.until_end()
    }

    /// One reply; a closed connection or a timeout fails the test, saying whether `d`
    /// died.
    pub fn recv_noting(&mut self, d: &Daemon, what: &str) -> Value {
        match self.next() {
            Next::Line(line) => parse_line(&line),
            Next::Closed(why) | Next::Timeout(why) => {
                panic!("{what}: {why} before a reply; {}", d.note())
            }
        }
    }

    /// As [`Client::until_end`], failing as [`Client::recv_noting`] does.
    pub fn until_end_noting(&mut self, d: &Daemon, what: &str) -> Vec<Value> {
        let mut replies = Vec::new();
        loop {
            let reply = self.recv_noting(d, what);
            let end = is_final(&reply);
            replies.push(reply);
            if end {
                return replies;
            }
        }
    }

    pub fn send_and_recv(&mut self, d: &Daemon, request: &Value) -> Value {
        self.send(request);
        self.recv_noting(d, &request.to_string())
    }

    /// Every line until the connection closes or a read times out; returns the lines and
    /// how it ended (`Closed` or `Timeout`).
    pub fn drain(mut self) -> (Vec<String>, Next) {
        let mut lines = Vec::new();
        loop {
            match self.next() {
                Next::Line(line) => lines.push(line),
                end => return (lines, end),
            }
        }
    }
}

/// A `ping` on a new connection, with a 5 s read timeout: the reply, if one came.
pub fn try_ping(socket: &Path) -> Option<Value> {
    let stream = UnixStream::connect(socket).ok()?;
    let mut c = Client::from_stream(stream, Duration::from_secs(5));
    c.try_send(&serde_json::json!({"op": "ping"})).ok()?;
    match c.next() {
        Next::Line(line) => Some(parse_line(&line)),
        Next::Closed(_) | Next::Timeout(_) => None,
    }
}

/// Sends `bytes` with `fds` attached (`SCM_RIGHTS`); returns how many bytes went (the rest
/// is the caller's to write).
pub fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> rustix::io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); 256];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    rustix::net::sendmsg(
        stream,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
}

/// One reply line parsed; it must be an object with a string `type` that
/// `docs/protocol.schema.json` describes.
#[track_caller]
pub fn parse_line(line: &str) -> Value {
    let reply: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"));
    assert!(
        reply.is_object() && reply["type"].is_string(),
        "reply is not an object with a string type: {line:?}"
    );
    super::schema::check_reply(line, &reply);
    reply
}

/// A path as the `&str` requests and command lines take (temp paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `{"op": op, "input": .., "output": ..}`.
pub fn file_req(op: &str, input: &Path, output: &Path) -> Value {
    serde_json::json!({"op": op, "input": p(input), "output": p(output)})
}

/// `{"op": op, "recursive": true, "input": .., "output": .., "id": id}`.
pub fn tree_req(op: &str, input: &Path, output: &Path, id: &str) -> Value {
    serde_json::json!({"op": op, "recursive": true, "input": p(input), "output": p(output), "id": id})
}

/// `req` with the fields of the object `fields` set.
pub fn with(mut req: Value, fields: Value) -> Value {
    for (k, v) in fields.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

/// The error code of an `error` reply (panics on any other reply).
#[track_caller]
pub fn code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "expected an error reply: {reply}");
    reply["code"].as_str().expect("error has a code")
}

/// `done` and `error` end a request.
pub fn is_final(reply: &Value) -> bool {
    matches!(reply["type"].as_str(), Some("done" | "error"))
}

/// Replies for a failure message, one per line, each cut to 300 characters.
pub fn brief(replies: &[Value]) -> String {
    replies
        .iter()
        .map(|r| {
            let text = r.to_string();
            if text.chars().count() > 300 {
                format!("{}...", text.chars().take(300).collect::<String>())
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// After a reply stream ended: exactly one `done`/`error`, as the last line, then EOF.
/// Returns that final reply.
#[track_caller]
pub fn one_final_then_eof(what: &str, lines: &[String], end: &Next) -> Value {
    match end {
        Next::Closed(why) if why == "EOF" => {}
        Next::Closed(why) => panic!("{what}: the connection ended with {why}, not a clean EOF"),
        Next::Timeout(why) => panic!("{what}: {why}: the connection never reached EOF"),
        Next::Line(line) => unreachable!("drain stops only at the end: {line}"),
    }
    let replies: Vec<Value> = lines.iter().map(|l| parse_line(l)).collect();
    let finals: Vec<&Value> = replies.iter().filter(|r| is_final(r)).collect();
    assert_eq!(
        finals.len(),
        1,
        "{what}: want exactly one done/error before EOF, got:\n{}",
        brief(&replies)
    );
    assert!(
        is_final(replies.last().unwrap()),
        "{what}: lines after the final reply:\n{}",
        brief(&replies)
    );
    finals[0].clone()
}
