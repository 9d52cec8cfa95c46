//! Helpers for driving the real `ringcryptd` binary: a harness that starts it on a temp
//! directory with a fresh 0600 key ring and stops it with SIGTERM (asserting exit 0), and a
//! small JSON-lines client over `std::os::unix::net::UnixStream`.

#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use ringcrypt::keys::KeyRing;
use ringcrypt::offline::{self, Format, Job};
use ringcrypt::output::Durability;
use serde_json::Value;
use tempfile::TempDir;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_ringcryptd");
pub const CLI: &str = env!("CARGO_BIN_EXE_ringcrypt");

/// How long a client waits for one reply line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon may take to answer its first ping.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM may take (the daemon's drain timeout is 30 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// The name prefix of the daemon's named temp files (README "Security").
pub const TEMP_PREFIX: &str = ".ringcrypt-tmp-";

/// One `[[key]]` entry from `ringcrypt keygen --name NAME`.
pub fn keygen(name: &str) -> String {
    let out = Command::new(CLI)
        .args(["keygen", "--name", name])
        .env_remove("RINGCRYPT_KEYS")
        .env_remove("RINGCRYPT_SOCKET")
        .output()
        .expect("ringcrypt keygen runs");
    assert!(out.status.success(), "ringcrypt keygen failed: {out:?}");
    String::from_utf8(out.stdout).expect("keygen prints UTF-8")
}

/// Polls `child` until it exits or `within` passes.
pub fn wait_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command with piped stdout/stderr, killing it (by its own pid) after `within`.
pub fn output_within(cmd: &mut Command, within: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    if wait_within(&mut child, within).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!("command {cmd:?} did not finish within {within:?}; output so far: {out:?}");
    }
    child.wait_with_output().expect("wait")
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// A running daemon on its own temp directory:
///
/// ```text
/// DIR/keys.toml   0600 ring: default = "k2", keys k1 and k2
/// DIR/d.sock      the socket
/// DIR/d.log       the daemon's stderr
/// DIR/root/       the only allowed root
/// DIR/outside/    a directory outside the root
/// ```
pub struct Daemon {
    child: Option<Child>,
    pub dir: TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
    pub socket: PathBuf,
    pub keys: PathBuf,
    pub log: PathBuf,
    pub backend: &'static str,
}

impl Daemon {
    pub fn start(backend: &'static str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        let keys = dir.path().join("keys.toml");
        let ring = format!("default = \"k2\"\n{}{}", keygen("k1"), keygen("k2"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keys)
            .and_then(|mut f| f.write_all(ring.as_bytes()))
            .expect("write key ring");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let child = spawn_daemon(backend, &socket, &keys, &root, &log);
        let mut daemon = Daemon {
            child: Some(child),
            dir,
            root,
            outside,
            socket,
            keys,
            log,
            backend,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "ringcryptd exited before answering ping ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                let mut client = Client::from_stream(stream, Duration::from_secs(5));
                client.send(&serde_json::json!({"op": "ping"}));
                if let Some(line) = client.try_recv_line()
                    && let Ok(reply) = serde_json::from_str::<Value>(&line)
                    && reply["type"] == "pong"
                {
                    // The exact spelling (`"uring"`, protocol.rs) is checked by
                    // `every_op_pipelined`; here only that the backend asked for runs, so a
                    // misspelling does not hide every other result.
                    let got = reply["backend"].as_str().unwrap_or("");
                    let same = match self.backend {
                        "uring" => got == "uring" || got == "io_uring",
                        other => got == other,
                    };
                    assert!(
                        same,
                        "RINGCRYPT_BACKEND={} not honoured: {reply}",
                        self.backend
                    );
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ringcryptd did not answer ping within {START_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The key ring the daemon loaded, for offline checks.
    pub fn ring(&self) -> KeyRing {
        KeyRing::load(&self.keys).expect("key ring loads")
    }

    /// After the daemon was killed from outside (kill -9): reap it and stop tracking it.
    pub fn forget(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts a new daemon on the same directory, key ring, root and socket (after
    /// [`Daemon::forget`] or [`Daemon::stop`]).
    pub fn restart(mut self) -> Daemon {
        assert!(self.child.is_none(), "restart needs the old daemon gone");
        let log = self.dir.path().join("d2.log");
        let child = spawn_daemon(self.backend, &self.socket, &self.keys, &self.root, &log);
        self.log = log;
        self.child = Some(child);
        self.wait_ready();
        self
    }

    /// SIGTERM, then wait up to `within`; returns the exit status and how long it took.
    /// Panics if the daemon is still running after `within` (and kills it).
    pub fn stop(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("daemon running");
        let started = Instant::now();
        sigterm(child.id());
        match wait_within(&mut child, within) {
            Some(status) => (status, started.elapsed()),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ringcryptd did not exit within {within:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        sigterm(child.id());
        let status = wait_within(&mut child, STOP_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let status = status.unwrap_or_else(|| {
                panic!(
                    "ringcryptd did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_text()
                )
            });
            assert!(
                status.success(),
                "ringcryptd exited with {status} after SIGTERM (want 0); log:\n{}",
                self.log_text()
            );
        }
    }
}

/// Starts `ringcryptd --socket S --keys K --allow-root R --shards 2 --fsync never` with
/// stderr to `log`.
pub fn spawn_daemon(backend: &str, socket: &Path, keys: &Path, root: &Path, log: &Path) -> Child {
    let log = File::create(log).expect("log file");
    Command::new(DAEMON)
        .arg("--socket")
        .arg(socket)
        .arg("--keys")
        .arg(keys)
        .arg("--allow-root")
        .arg(root)
        .args(["--shards", "2", "--fsync", "never"])
        .env("RINGCRYPT_BACKEND", backend)
        .env_remove("RINGCRYPT_SOCKET")
        .env_remove("RINGCRYPT_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("ringcryptd starts")
}

/// A JSON-lines client.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        Client::from_stream(stream, READ_TIMEOUT)
    }

    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Client {
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, request: &Value) {
        let mut line = serde_json::to_string(request).unwrap();
        line.push('\n');
        self.send_raw(line.as_bytes());
    }

    /// Sends several requests in one write (pipelined).
    pub fn send_all(&mut self, requests: &[Value]) {
        let mut text = String::new();
        for request in requests {
            text.push_str(&serde_json::to_string(request).unwrap());
            text.push('\n');
        }
        self.send_raw(text.as_bytes());
    }

    /// Sends one request with descriptors attached to its line (`SCM_RIGHTS`), as a
    /// request with `"fds": true` passes its input and output.
    pub fn send_with_fds(&mut self, request: &Value, fds: &[std::os::fd::BorrowedFd<'_>]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut line = serde_json::to_string(request).unwrap();
        line.push('\n');
        let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); 256];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[std::io::IoSlice::new(line.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .expect("sendmsg to the daemon");
        self.send_raw(&line.as_bytes()[sent..]);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the daemon");
    }

    fn try_recv_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.ends_with('\n') => Some(line),
            _ => None,
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
            let end = matches!(reply["type"].as_str(), Some("done" | "error"));
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
}

pub fn parse_line(line: &str) -> Value {
    let reply: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"));
    assert!(
        reply.is_object() && reply["type"].is_string(),
        "reply is not an object with a string type: {line:?}"
    );
    reply
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `{"op": op, "input": .., "output": ..}`.
pub fn file_req(op: &str, input: &Path, output: &Path) -> Value {
    serde_json::json!({"op": op, "input": p(input), "output": p(output)})
}

/// The error code of an `error` reply (panics on any other reply).
#[track_caller]
pub fn code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "expected an error reply: {reply}");
    reply["code"].as_str().expect("error has a code")
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `mib` MiB quickly: one 1 MiB random block, each copy stamped with its index so
/// chunks moved around would be noticed.
pub fn write_big(path: &Path, mib: usize) {
    let mut block = bytes(1 << 20, 99);
    let mut file = std::io::BufWriter::new(File::create(path).unwrap());
    for i in 0..mib {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

/// Decrypts `encrypted` with the library (offline) and checks it equals `plain`'s bytes.
#[track_caller]
pub fn assert_decrypts_to(ring: &KeyRing, encrypted: &Path, plain: &[u8], scratch: &Path) {
    let job = Job {
        input: encrypted,
        output: scratch,
        key: None,
        format: Format::Ringcrypt,
        chunk_log2: 16,
        overwrite: true,
        durability: Durability::None,
    };
    offline::decrypt(ring, &job)
        .unwrap_or_else(|e| panic!("{} does not decrypt offline: {e}", encrypted.display()));
    let got = fs::read(scratch).unwrap();
    assert!(
        got == plain,
        "{} decrypts to {} bytes that differ from the {}-byte input",
        encrypted.display(),
        got.len(),
        plain.len()
    );
    fs::remove_file(scratch).unwrap();
}

/// Every `.ringcrypt-tmp-*` file under `dir`, recursively.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                found.push(path.clone());
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
        }
    }
    found
}

/// Every path under `dir` (not following symlinks) with its contents (files), its target
/// (symlinks) or nothing (directories): a snapshot to prove nothing was written.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                all.push((path, target.into_os_string().into_encoded_bytes()));
            } else if kind.is_dir() {
                all.push((path.clone(), Vec::new()));
                stack.push(path);
            } else if kind.is_file() {
                let data = fs::read(&path).unwrap();
                all.push((path, data));
            } else {
                // A FIFO, socket or device: reading it could block; its presence is enough.
                all.push((path, b"(special)".to_vec()));
            }
        }
    }
    all.sort();
    all
}
