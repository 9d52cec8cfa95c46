//! The daemon, connection and `nobody` client these tests share.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::*;
use ringcrypt::keys::KeyRing;
use serde_json::{Value, json};

/// `nobody` on Debian-like systems; the daemons that serve it get `--allow-uid 65534`.
pub const NOBODY: u32 = 65534;
pub const NOBODY_ARG: &str = "65534";

/// The system Python, which `nobody` can run (a per-user interpreter may sit in /root).
pub const PYTHON: &str = "/usr/bin/python3";

/// How long SIGTERM may take: the drain timeout (30 s) and some slack.
pub const SIGTERM_BOUND: Duration = Duration::from_secs(40);

pub fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key id an RCRYPT file names: header bytes 16..32, as hex.
pub fn key_id_of(path: &Path) -> String {
    let mut head = [0u8; 32];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap_or_else(|e| panic!("read the header of {}: {e}", path.display()));
    hex(&head[16..32])
}

pub fn ring_id(ring: &KeyRing, name: &str) -> String {
    ring.by_name(name)
        .and_then(|entry| entry.id_hex())
        .unwrap_or_else(|| panic!("key {name} in the ring"))
}

pub fn write_private(path: &Path, text: &str) {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, 0o600);
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

pub fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A temp directory under /tmp that `nobody` can traverse.
pub fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ringcrypt-rel")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(dir.path(), 0o755);
    dir
}

/// `{"op":"encrypt","recursive":true,...}` with an id.
pub fn tree_req(op: &str, input: &Path, output: &Path, id: &str) -> Value {
    json!({"op": op, "recursive": true, "input": p(input), "output": p(output), "id": id})
}

pub fn with(mut req: Value, fields: Value) -> Value {
    for (k, v) in fields.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
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

pub fn is_final(reply: &Value) -> bool {
    matches!(reply["type"].as_str(), Some("done" | "error"))
}

/// Writes `count` files under `dir`, spread over `subdirs` subdirectories; file i holds
/// `size(i)` pseudo-random bytes of its own.
pub fn make_tree(dir: &Path, count: usize, subdirs: usize, size: impl Fn(usize) -> usize) {
    for i in 0..count {
        let sub = dir.join(format!("d{:02}", i % subdirs));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i}")), bytes(size(i), 50_000 + i as u64)).unwrap();
    }
}

/// Every regular file under `dir`, recursively (symlinks not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Decrypts each (encrypted, plain input) pair offline on two threads and compares.
pub fn verify_pairs(ring: &KeyRing, pairs: &[(PathBuf, PathBuf)], scratch: &Path) {
    std::thread::scope(|s| {
        for t in 0..2 {
            s.spawn(move || {
                let scratch = scratch.join(format!("verify-{t}"));
                for (enc, plain) in pairs.iter().skip(t).step_by(2) {
                    let plain = fs::read(plain).unwrap();
                    assert_decrypts_to(ring, enc, &plain, &scratch);
                }
            });
        }
    });
}

/// Every file under the tree output `out` must be `REL.rcrypt` for a file REL under `input`
/// and decrypt to it. Returns how many outputs there are.
pub fn verify_tree_outputs(ring: &KeyRing, input: &Path, out: &Path, scratch: &Path) -> usize {
    let mut pairs = Vec::new();
    for enc in files_under(out) {
        let rel = enc.strip_prefix(out).unwrap();
        let name = rel.to_str().unwrap();
        let plain_rel = name
            .strip_suffix(".rcrypt")
            .unwrap_or_else(|| panic!("a tree output not named *.rcrypt: {}", enc.display()));
        let plain = input.join(plain_rel);
        assert!(
            plain.is_file(),
            "{} has no input {}",
            enc.display(),
            plain.display()
        );
        pairs.push((enc, plain));
    }
    verify_pairs(ring, &pairs, scratch);
    pairs.len()
}

// ---- a daemon with the flags each test needs ----------------------------------------------

/// A running `ringcryptd` on its own directory:
///
/// ```text
/// DIR/keys.toml   0600 ring: default = "k2", keys k1 and k2
/// DIR/d.sock      the socket (made 0666 once it listens)
/// DIR/d.log       the daemon's stderr (audit lines included)
/// DIR/root/       the only allowed root (0755)
/// ```
///
/// Dropping it sends SIGTERM and, unless the test is already failing, asserts exit 0 within
/// 40 s; a daemon that already exited must have exited 0.
pub struct Rd {
    pub child: Mutex<Option<Child>>,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub keys: PathBuf,
    pub log: PathBuf,
}

pub fn daemon_command(
    backend: &str,
    socket: &Path,
    keys: &Path,
    root: &Path,
    log: &Path,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--socket")
        .arg(socket)
        .arg("--keys")
        .arg(keys)
        .arg("--allow-root")
        .arg(root)
        .args(["--fsync", "never", "--metrics", "off"]);
    if !extra.contains(&"--shards") {
        cmd.args(["--shards", "2"]);
    }
    cmd.args(extra)
        .env("RINGCRYPT_BACKEND", backend)
        .env_remove("RINGCRYPT_SOCKET")
        .env_remove("RINGCRYPT_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(log).expect("log file")));
    cmd
}

impl Rd {
    pub fn start(backend: &'static str, extra: &[&str]) -> Rd {
        let dir = scratch_dir();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        chmod(&root, 0o755);
        let keys = dir.path().join("keys.toml");
        write_private(
            &keys,
            &format!("default = \"k2\"\n{}{}", keygen("k1"), keygen("k2")),
        );
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let child = daemon_command(backend, &socket, &keys, &root, &log, extra)
            .spawn()
            .expect("ringcryptd starts");
        let rd = Rd {
            child: Mutex::new(Some(child)),
            dir,
            root,
            socket,
            keys,
            log,
        };
        rd.wait_ready(backend);
        chmod(&rd.socket, 0o666);
        rd
    }

    pub fn wait_ready(&self, backend: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "ringcryptd exited before answering ping ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                let mut c = Conn::from_stream(stream, Duration::from_secs(5));
                if c.try_send(&json!({"op": "ping"})).is_ok()
                    && let Next::Line(line) = c.next()
                    && let Ok(reply) = serde_json::from_str::<Value>(&line)
                    && reply["type"] == "pong"
                {
                    let got = reply["backend"].as_str().unwrap_or("");
                    assert!(
                        got == backend || (backend == "uring" && got == "io_uring"),
                        "RINGCRYPT_BACKEND={backend} not honoured: {reply}"
                    );
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ringcryptd did not answer ping within {START_TIMEOUT:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn conn(&self) -> Conn {
        Conn::open(&self.socket, READ_TIMEOUT)
    }

    pub fn ring(&self) -> KeyRing {
        KeyRing::load(&self.keys).expect("key ring loads")
    }

    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap()
            .as_ref()
            .expect("daemon started")
            .id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// The exit status if the daemon has exited (it is reaped once; later calls repeat it).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    pub fn wait_exit(&self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = guard.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// For failure messages: whether the daemon died (waiting up to 2 s), and its log tail.
    pub fn note(&self) -> String {
        match self.wait_exit(Duration::from_secs(2)) {
            Some(status) => format!(
                "the daemon has EXITED ({status}); log tail:\n{}",
                self.log_tail()
            ),
            None => format!(
                "the daemon is still running; log tail:\n{}",
                self.log_tail()
            ),
        }
    }

    /// A `ping` on a new connection.
    pub fn ping(&self) -> Value {
        let mut c = Conn::open(&self.socket, Duration::from_secs(10));
        // A daemon that refuses the connection answers and closes before the ping is
        // written; its line is still there to read.
        let sent = c.try_send(&json!({"op": "ping", "id": "health"}));
        match c.next() {
            Next::Line(line) => parse_line(&line),
            Next::Closed(why) | Next::Timeout(why) => panic!(
                "ping on a new connection (write: {sent:?}): {why}; {}",
                self.note()
            ),
        }
    }

    /// Encrypts `input` to `output` on a new connection and returns the final reply.
    pub fn encrypt(&self, input: &Path, output: &Path, fields: Value) -> Value {
        let mut c = self.conn();
        let req = with(file_req("encrypt", input, output), fields);
        c.send(&req);
        c.until_end(self, "encrypt").pop().unwrap()
    }
}

impl Drop for Rd {
    fn drop(&mut self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(child) = guard.as_mut() else {
            return;
        };
        let status = match child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                wait_within(child, STOP_TIMEOUT)
            }
        };
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            match status {
                Some(status) => assert!(
                    status.success(),
                    "ringcryptd exited with {status} (want 0); log:\n{log}"
                ),
                None => panic!("ringcryptd did not exit within {STOP_TIMEOUT:?} of SIGTERM"),
            }
        }
    }
}

// ---- a JSON-lines connection that reports EOF instead of panicking ------------------------

pub enum Next {
    Line(String),
    /// EOF, a reset, or a line cut short.
    Closed(String),
    Timeout(String),
}

pub struct Conn {
    pub stream: UnixStream,
    pub reader: BufReader<UnixStream>,
}

impl Conn {
    pub fn open(socket: &Path, timeout: Duration) -> Conn {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        Conn::from_stream(stream, timeout)
    }

    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Conn {
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { stream, reader }
    }

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

    pub fn send_all(&mut self, requests: &[Value]) {
        self.try_send_all(requests)
            .unwrap_or_else(|e| panic!("write {} requests to the daemon: {e}", requests.len()));
    }

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

    /// One reply; a closed connection or a timeout fails the test, saying whether the daemon
    /// died.
    pub fn recv(&mut self, rd: &Rd, what: &str) -> Value {
        match self.next() {
            Next::Line(line) => parse_line(&line),
            Next::Closed(why) | Next::Timeout(why) => {
                panic!("{what}: {why} before a reply; {}", rd.note())
            }
        }
    }

    pub fn until_end(&mut self, rd: &Rd, what: &str) -> Vec<Value> {
        let mut replies = Vec::new();
        loop {
            let reply = self.recv(rd, what);
            let end = is_final(&reply);
            replies.push(reply);
            if end {
                return replies;
            }
        }
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

// ---- raw requests as `nobody` -----------------------------------------------------------

/// A client run as `nobody`. `end SOCK SECS REQ...` sends the requests in one write and prints
/// each reply line until every request has a final reply (`#END`); `eof SOCK SECS REQ...`
/// prints reply lines until the daemon closes the connection (`#EOF seconds`); either prints
/// `#TIMEOUT` when SECS pass first. `hold SOCK N ping|silent` opens N connections (sending a
/// ping on each, or nothing), prints a JSON summary of what came back and `#READY`, then
/// keeps them open until stdin closes or it is killed. It never half-closes a connection, so
/// an EOF is the daemon's doing.
pub const NOBODY_CLIENT: &str = r##"
import json, signal, socket, sys, time
signal.alarm(170)
def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
mode, path = sys.argv[1], sys.argv[2]
if mode in ("end", "eof"):
    limit = float(sys.argv[3])
    requests = sys.argv[4:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(limit)
    s.connect(path)
    s.sendall("".join(r + "\n" for r in requests).encode())
    start = time.monotonic()
    buf = b""
    finals = 0
    while True:
        if mode == "end" and finals >= len(requests):
            out("#END")
            break
        left = start + limit - time.monotonic()
        if left <= 0:
            out("#TIMEOUT")
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            out("#TIMEOUT")
            break
        except OSError as e:
            out("#RESET %s" % e)
            break
        if not chunk:
            out("#EOF %.3f" % (time.monotonic() - start))
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out(line.decode())
            if json.loads(line).get("type") not in ("accepted", "progress"):
                finals += 1
elif mode == "hold":
    count, ping = int(sys.argv[3]), sys.argv[4] == "ping"
    res = dict(opened=0, connect_failed=0, pong=0, busy=0, closed=0, silent=0, other=0)
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            res["connect_failed"] += 1
            s.close()
            continue
        res["opened"] += 1
        socks.append(s)
        if ping:
            try:
                s.sendall(b'{"op":"ping"}\n')
            except OSError:
                pass
    time.sleep(0.5)
    deadline = time.monotonic() + 20
    for s in socks:
        if ping:
            s.settimeout(max(0.01, deadline - time.monotonic()))
        else:
            s.setblocking(False)
        try:
            data = s.recv(65536)
        except (BlockingIOError, socket.timeout):
            res["silent"] += 1
            continue
        except OSError:
            res["closed"] += 1
            continue
        if not data:
            res["closed"] += 1
        elif b'"busy"' in data:
            res["busy"] += 1
        elif b'"pong"' in data:
            res["pong"] += 1
        else:
            res["other"] += 1
    out(json.dumps(res))
    out("#READY")
    sys.stdin.read()
"##;

pub fn nobody_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        NOBODY_ARG,
        "--regid",
        NOBODY_ARG,
        "--clear-groups",
        "--",
        PYTHON,
        "-I",
        "-c",
        NOBODY_CLIENT,
    ])
    .args(args)
    .current_dir("/");
    cmd
}

/// What the `nobody` client saw: the reply lines, parsed, and how it stopped (`#END`,
/// `#EOF s`, `#TIMEOUT`, `#RESET ...`).
pub struct Session {
    pub replies: Vec<Value>,
    pub end: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", brief(&self.replies), self.end)
    }
}

impl Session {
    pub fn by_id(&self, id: &str) -> Vec<&Value> {
        self.replies.iter().filter(|r| r["id"] == id).collect()
    }

    pub fn final_of(&self, id: &str) -> &Value {
        self.by_id(id)
            .into_iter()
            .find(|r| r["type"] != "accepted" && r["type"] != "progress")
            .unwrap_or_else(|| panic!("no final reply for {id} as nobody: {self:?}"))
    }
}

pub fn nobody_session(socket: &Path, mode: &str, secs: u64, requests: &[Value]) -> Session {
    let texts: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
    let secs_text = secs.to_string();
    let mut args = vec![mode, p(socket), &secs_text];
    args.extend(texts.iter().map(String::as_str));
    let out = output_within(&mut nobody_command(&args), Duration::from_secs(secs + 30));
    assert!(out.status.success(), "the client as nobody failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut replies = Vec::new();
    let mut end = String::new();
    for line in stdout.lines() {
        if line.starts_with('#') {
            end = line.to_string();
        } else {
            replies.push(parse_line(line));
        }
    }
    Session { replies, end }
}

/// The `hold` client, killed (by its pid) when dropped.
pub struct Holder {
    pub child: Child,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nobody_hold(socket: &Path, count: usize, ping: bool) -> (Holder, Value) {
    let count_text = count.to_string();
    let mut child = nobody_command(&[
        "hold",
        p(socket),
        &count_text,
        if ping { "ping" } else { "silent" },
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("setpriv python3 starts");
    let stdout = child.stdout.take().unwrap();
    let holder = Holder { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "#READY" => break,
            Ok(line) => last = Some(line),
            Err(_) => panic!(
                "nobody's {count} connections were not all open and checked within 90 s \
                 (last output: {last:?})"
            ),
        }
    }
    let summary: Value =
        serde_json::from_str(&last.expect("a summary before #READY")).expect("JSON summary");
    (holder, summary)
}

/// The daemon's root laid out for `nobody`: `pub/` owned by nobody (0755) with `in.txt`
/// (nobody's, 0644), for tests where the daemon serves uid 65534.
pub fn nobody_pub(rd: &Rd, content: &[u8]) -> (PathBuf, PathBuf) {
    let public = rd.root.join("pub");
    fs::create_dir(&public).unwrap();
    chmod(&public, 0o755);
    chown_nobody(&public);
    let input = public.join("in.txt");
    fs::write(&input, content).unwrap();
    chmod(&input, 0o644);
    chown_nobody(&input);
    (public, input)
}

/// Unmounts a bind mount when dropped (lazily if it is busy).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// One raw request as nobody; returns its final reply.
pub fn as_nobody(rd: &Rd, request: Value) -> Value {
    let session = nobody_session(&rd.socket, "end", 60, &[with(request, json!({"id": "n"}))]);
    assert_eq!(session.end, "#END", "{session:?}");
    session.final_of("n").clone()
}

impl Conn {
    pub fn send_and_recv(&mut self, rd: &Rd, request: &Value) -> Value {
        self.send(request);
        self.recv(rd, &request.to_string())
    }
}
