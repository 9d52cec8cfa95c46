//! A client connection whose every request and reply goes into its ledger, to be audited at
//! the end (one final reply per request, none for an id never sent, ...).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::state::{JobPool, Soak};
use crate::support::schema::reply_errors;
use crate::support::send_with_fds;
use crate::{SIGTERM_EXIT_WITHIN, load_secs};

pub(crate) fn is_final_kind(kind: &str) -> bool {
    !matches!(kind, "accepted" | "progress")
}

/// `done`, `pong`, `error busy`, ...: a reply's type, with the code for errors.
pub(crate) fn reply_kind(reply: &Value) -> String {
    match reply["type"].as_str().unwrap_or("?") {
        "error" => format!("error {}", reply["code"].as_str().unwrap_or("?")),
        other => other.to_string(),
    }
}

pub(crate) fn code_of(reply: &Value) -> &str {
    if reply["type"] == "error" {
        reply["code"].as_str().unwrap_or("?")
    } else {
        ""
    }
}

pub(crate) enum Sent {
    /// Registered, being written.
    Writing,
    /// The whole line was written at this moment.
    At(Instant),
    /// The write failed: the daemon may or may not have the whole line.
    Failed,
}

pub(crate) struct Track {
    pub(crate) what: &'static str,
    pub(crate) sent: Sent,
    pub(crate) accepted: u32,
    pub(crate) progress: u32,
    pub(crate) finals: Vec<Value>,
    /// `accepted` / `progress` lines that came after the final reply.
    pub(crate) after_final: Vec<String>,
}

#[derive(Default)]
pub(crate) struct LedgerState {
    pub(crate) order: Vec<String>,
    pub(crate) tracks: HashMap<String, Track>,
    /// When each line without an id (junk, over-long) was fully written, and the error
    /// code it must get.
    pub(crate) idless_sent: Vec<(Instant, &'static str)>,
    /// Id-less lines whose write failed part-way (the daemon may have seen enough of an
    /// over-long one to answer it): the code each may get.
    pub(crate) idless_failed: Vec<&'static str>,
    pub(crate) idless_replies: Vec<Value>,
    /// Replies that match nothing sent, or are not JSON objects with a type.
    pub(crate) strays: Vec<String>,
    pub(crate) eof: bool,
    /// Whether the test closed the connection itself (rather than the daemon).
    pub(crate) closed_by_test: bool,
    /// The daemon closed the connection with bytes of ours unread (ECONNRESET).
    pub(crate) reset: bool,
    pub(crate) read_error: Option<String>,
}

/// Everything one connection sent and received.
pub(crate) struct Ledger {
    pub(crate) name: String,
    /// Opened on the first daemon during phase 2: its writes are timed against the SIGTERM
    /// in the report.
    pub(crate) shutdown_rule: bool,
    pub(crate) state: Mutex<LedgerState>,
    pub(crate) cv: Condvar,
}

impl Ledger {
    pub(crate) fn register(&self, id: &str, what: &'static str) {
        let mut st = self.state.lock().unwrap();
        st.order.push(id.to_string());
        st.tracks.insert(
            id.to_string(),
            Track {
                what,
                sent: Sent::Writing,
                accepted: 0,
                progress: 0,
                finals: Vec::new(),
                after_final: Vec::new(),
            },
        );
    }

    pub(crate) fn written(&self, id: &str, ok: bool) {
        let mut st = self.state.lock().unwrap();
        if let Some(track) = st.tracks.get_mut(id) {
            track.sent = if ok {
                Sent::At(Instant::now())
            } else {
                Sent::Failed
            };
        }
    }

    /// One reply line; returns a job id to offer the canceller when it was an `accepted`.
    pub(crate) fn on_line(&self, line: &[u8]) -> Option<String> {
        let mut st = self.state.lock().unwrap();
        let text = String::from_utf8_lossy(line).into_owned();
        let reply: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                st.strays.push(format!("not JSON ({e}): {text:?}"));
                return None;
            }
        };
        let Some(kind) = reply["type"].as_str().map(str::to_string) else {
            st.strays.push(format!("no type: {text}"));
            return None;
        };
        if let Some(errors) = reply_errors(&reply) {
            st.strays.push(format!(
                "breaks docs/protocol.schema.json: {text}\n{errors}"
            ));
        }
        let mut offer = None;
        match reply.get("id") {
            None => st.idless_replies.push(reply),
            Some(Value::String(id)) => {
                let id = id.clone();
                match st.tracks.get_mut(&id) {
                    None => st
                        .strays
                        .push(format!("reply for an id never sent: {text}")),
                    Some(track) if is_final_kind(&kind) => track.finals.push(reply),
                    Some(track) => {
                        if !track.finals.is_empty() {
                            track.after_final.push(text.trim_end().to_string());
                        }
                        if kind == "accepted" {
                            track.accepted += 1;
                            offer = reply["job"].as_str().map(str::to_string);
                        } else {
                            track.progress += 1;
                        }
                    }
                }
            }
            Some(_) => st.strays.push(format!("id of another type: {text}")),
        }
        drop(st);
        self.cv.notify_all();
        offer
    }

    pub(crate) fn mark_eof(&self, error: Option<String>) {
        let mut st = self.state.lock().unwrap();
        st.eof = true;
        st.read_error = error;
        drop(st);
        self.cv.notify_all();
    }

    /// The first final reply to `id`; None at EOF or when `deadline` passes first.
    pub(crate) fn final_of(&self, id: &str, deadline: Instant) -> Option<Value> {
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(first) = st.tracks.get(id).and_then(|t| t.finals.first()) {
                return Some(first.clone());
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                return None;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits until every request written has its final reply and every id-less line its
    /// error (or EOF, or `deadline`); returns whether all came.
    pub(crate) fn wait_all(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        loop {
            let missing = st
                .tracks
                .values()
                .any(|t| matches!(t.sent, Sent::At(_)) && t.finals.is_empty())
                || st.idless_replies.len() < st.idless_sent.len();
            if !missing {
                return true;
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                return false;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    pub(crate) fn wait_eof(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.eof {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

/// Reads reply lines into the ledger until EOF (the daemon's close, or the test's own).
pub(crate) fn read_replies(
    stream: UnixStream,
    ledger: Arc<Ledger>,
    pool: Option<(Arc<JobPool>, &'static str)>,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Bounded: a reader still running 10 minutes after the longest the load can last gives up.
    let give_up = Instant::now() + Duration::from_secs(2 * load_secs() + 600);
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                if !line.is_empty() {
                    let cut = String::from_utf8_lossy(&line).into_owned();
                    ledger
                        .state
                        .lock()
                        .unwrap()
                        .strays
                        .push(format!("reply line cut short by EOF: {cut:?}"));
                }
                ledger.mark_eof(None);
                return;
            }
            Ok(_) if line.ends_with(b"\n") => {
                if let Some(job) = ledger.on_line(&line)
                    && let Some((pool, kind)) = &pool
                {
                    pool.push(job, kind);
                }
                line.clear();
            }
            Ok(_) => {} // EOF in the middle of a line: the next read says 0
            // The daemon closed with bytes of ours unread (a line cut short by a failed write,
            // or whole lines it never read: those the audit finds unanswered). Replies that
            // came before are all read; the next read says EOF.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                let mut st = ledger.state.lock().unwrap();
                if st.reset {
                    drop(st);
                    ledger.mark_eof(Some(format!("{e}, twice")));
                    return;
                }
                st.reset = true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= give_up {
                    ledger.mark_eof(Some("reader gave up after an hour".into()));
                    return;
                }
            }
            Err(e) => {
                ledger.mark_eof(Some(e.to_string()));
                return;
            }
        }
    }
}

/// A client connection whose every request and reply goes into its ledger.
pub(crate) struct Conn {
    pub(crate) stream: UnixStream,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) reader: Option<JoinHandle<()>>,
    pub(crate) tag: String,
    pub(crate) broken: bool,
}

impl Conn {
    /// `pool`: offer the job ids this connection's `accepted` replies give to the canceller,
    /// as jobs of that kind.
    pub(crate) fn open(s: &Soak, tag: &str, pool: Option<&'static str>) -> Option<Conn> {
        let stream = match UnixStream::connect(&s.socket) {
            Ok(stream) => stream,
            Err(e) => {
                if !s.stopped() {
                    s.violation(format!("{tag}: cannot connect: {e}"));
                }
                return None;
            }
        };
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let ledger = Arc::new(Ledger {
            name: tag.to_string(),
            shutdown_rule: s.phase.load(Ordering::SeqCst) == 2,
            state: Mutex::new(LedgerState::default()),
            cv: Condvar::new(),
        });
        s.ledgers.lock().unwrap().push(Arc::clone(&ledger));
        let reader = {
            let stream = stream.try_clone().unwrap();
            let ledger = Arc::clone(&ledger);
            let pool = pool.map(|kind| (Arc::clone(&s.pool), kind));
            std::thread::spawn(move || read_replies(stream, ledger, pool))
        };
        Some(Conn {
            stream,
            ledger,
            reader: Some(reader),
            tag: tag.to_string(),
            broken: false,
        })
    }

    /// Sends `req` with a fresh id; returns the id once the whole line is written.
    pub(crate) fn send(&mut self, s: &Soak, mut req: Value, what: &'static str) -> Option<String> {
        if self.broken {
            return None;
        }
        let id = s.new_id(&self.tag);
        req["id"] = json!(id);
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.ledger.register(&id, what);
        let ok = (&self.stream).write_all(&line).is_ok();
        self.ledger.written(&id, ok);
        if !ok {
            self.broken = true;
            return None;
        }
        Some(id)
    }

    /// Sends `req` (with `"fds": true`) with `fds` attached to its first byte.
    pub(crate) fn send_fds(
        &mut self,
        s: &Soak,
        mut req: Value,
        fds: &[BorrowedFd<'_>],
        what: &'static str,
    ) -> Option<String> {
        if self.broken {
            return None;
        }
        let id = s.new_id(&self.tag);
        req["id"] = json!(id);
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.ledger.register(&id, what);
        let ok = match send_with_fds(&self.stream, &line, fds) {
            Ok(sent) => (&self.stream).write_all(&line[sent..]).is_ok(),
            Err(_) => false,
        };
        self.ledger.written(&id, ok);
        if !ok {
            self.broken = true;
            return None;
        }
        Some(id)
    }

    /// Sends a line that carries no id (it must end in a newline); `expect` is the error
    /// code it must get.
    pub(crate) fn send_idless(&mut self, line: &[u8], expect: &'static str) -> bool {
        if self.broken {
            return false;
        }
        if (&self.stream).write_all(line).is_err() {
            self.broken = true;
            self.ledger.state.lock().unwrap().idless_failed.push(expect);
            return false;
        }
        self.ledger
            .state
            .lock()
            .unwrap()
            .idless_sent
            .push((Instant::now(), expect));
        true
    }

    pub(crate) fn final_of(&self, id: &str, deadline: Instant) -> Option<Value> {
        self.ledger.final_of(id, deadline)
    }

    /// Phase 1's end: wait for every reply, then close from this side.
    pub(crate) fn close(mut self, s: &Soak, within: Duration) {
        // Missing replies are reported by the audit; here only a daemon that neither
        // answers nor closes.
        if !self.ledger.wait_all(Instant::now() + within) && !self.ledger.state.lock().unwrap().eof
        {
            s.violation(format!(
                "{}: replies still missing {within:?} after the load stopped",
                self.tag
            ));
        }
        self.ledger.state.lock().unwrap().closed_by_test = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    /// Phase 2's end: the daemon closes the connection as it exits; wait for that.
    pub(crate) fn finish_at_eof(mut self, s: &Soak, within: Duration) {
        if !self.ledger.wait_eof(Instant::now() + within) {
            s.violation(format!(
                "{}: the connection was still open {within:?} after the SIGTERM",
                self.tag
            ));
            self.ledger.state.lock().unwrap().closed_by_test = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    pub(crate) fn end(self, s: &Soak, phase: u8) {
        if phase == 2 {
            self.finish_at_eof(s, SIGTERM_EXIT_WITHIN + Duration::from_secs(20));
        } else {
            self.close(s, Duration::from_secs(120));
        }
    }
}
