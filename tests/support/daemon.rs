//! The real `ringcryptd` on its own temp directory, for every test that starts one:
//!
//! ```text
//! DIR/keys.toml   0600 ring: default = "k2", keys k1 and k2 (or the test's own)
//! DIR/d.sock      the socket
//! DIR/d.log       the daemon's stderr (audit lines included); d2.log, ... after a relaunch
//! DIR/root/       the only allowed root (or DIR itself, `root_is_dir`)
//! DIR/outside/    a directory outside the root (when the root is DIR/root)
//! ```
//!
//! started as `ringcryptd --socket S --keys K --allow-root R --shards 2 --fsync never` with
//! `RINGCRYPT_BACKEND` set and ready once it answers `ping` with `pong` (naming the backend
//! asked for). [`Builder`] changes what a test needs changed; [`AtDrop`] says what dropping
//! the [`Daemon`] does (by default: SIGTERM, and unless the test is already failing, exit 0
//! within [`STOP_TIMEOUT`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringcrypt::keys::KeyRing;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{
    Client, DAEMON, Next, Run, START_TIMEOUT, STOP_TIMEOUT, chmod, file_req, keygen, kill,
    parse_line, ringcrypt_in, scratch_dir_named, try_ping, wait_within, with, write_private,
};

/// What dropping a [`Daemon`] whose process is still held does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtDrop {
    /// SIGTERM (unless it already exited), at most [`STOP_TIMEOUT`] for it to exit (then
    /// SIGKILL); unless the test is already failing, it must have exited 0 in time.
    ExitZero,
    /// SIGTERM (unless it already exited) and wait for it, whatever its exit status.
    Reap,
    /// SIGKILL and wait: the test judged the daemon's end itself, or failed part-way.
    Kill,
}

/// How to lay out and start a daemon: [`Daemon::builder`], changes, then
/// [`Builder::start`] (or [`Builder::prepare`] for the directory alone).
#[derive(Clone)]
pub struct Builder {
    backend: Option<&'static str>,
    prefix: Option<&'static str>,
    for_nobody: bool,
    root_is_dir: bool,
    ring: Option<String>,
    shards: Option<String>,
    fsync: Option<String>,
    metrics: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    wrap: Option<Arc<Wrap>>,
    at_drop: AtDrop,
}

/// How [`Builder::wrap`] turns the daemon's command into the one to run.
type Wrap = dyn Fn(&Command) -> Command + Send + Sync;

/// The test hooks (`test-hooks` feature) a daemon reads from its environment; none is
/// inherited, a test sets the one it wants.
const HOOK_ENV: [&str; 6] = [
    "RINGCRYPT_FAILPOINT",
    "RINGCRYPT_TEST_HANG_SHARD",
    "RINGCRYPT_TEST_NO_TMPFILE",
    "RINGCRYPT_TEST_NO_LINK_BY_FD",
    "RINGCRYPT_TEST_NO_DIRECT_IO",
    "RINGCRYPT_TEST_TICK_EVERY_LOOP",
];

impl Builder {
    /// The defaults, with no `RINGCRYPT_BACKEND` set (the daemon's own choice, or what the
    /// test's environment says).
    pub fn new() -> Builder {
        Builder {
            backend: None,
            prefix: None,
            for_nobody: false,
            root_is_dir: false,
            ring: None,
            shards: Some("2".into()),
            fsync: Some("never".into()),
            metrics: None,
            args: Vec::new(),
            env: Vec::new(),
            wrap: None,
            at_drop: AtDrop::ExitZero,
        }
    }

    /// `RINGCRYPT_BACKEND=backend`; readiness then checks that `pong` names it.
    pub fn backend(mut self, backend: &'static str) -> Builder {
        self.backend = Some(backend);
        self
    }

    /// The temp directory's name starts with `prefix`.
    pub fn prefix(mut self, prefix: &'static str) -> Builder {
        self.prefix = Some(prefix);
        self
    }

    /// For tests that call as `nobody`: the directory under /tmp, it and the root 0755, and
    /// the socket made 0666 once it listens, so the daemon, not the file mode, decides who
    /// may call.
    pub fn for_nobody(mut self) -> Builder {
        self.for_nobody = true;
        self
    }

    /// The allowed root is the temp directory itself (key ring and socket included).
    pub fn root_is_dir(mut self) -> Builder {
        self.root_is_dir = true;
        self
    }

    /// The key ring's text instead of k1 and k2 (default k2).
    pub fn ring(mut self, text: impl Into<String>) -> Builder {
        self.ring = Some(text.into());
        self
    }

    /// `--shards N` (2 unless set).
    pub fn shards(mut self, n: impl ToString) -> Builder {
        self.shards = Some(n.to_string());
        self
    }

    /// No `--shards`: the daemon's default, one per core.
    pub fn default_shards(mut self) -> Builder {
        self.shards = None;
        self
    }

    /// `--fsync MODE` (`never` unless set).
    pub fn fsync(mut self, mode: &str) -> Builder {
        self.fsync = Some(mode.into());
        self
    }

    /// No `--fsync`: the daemon's default.
    pub fn default_fsync(mut self) -> Builder {
        self.fsync = None;
        self
    }

    /// `--metrics ADDR` or `off` (unless set, the daemon's default).
    pub fn metrics(mut self, setting: &str) -> Builder {
        self.metrics = Some(setting.into());
        self
    }

    /// `--allow-uid UID`.
    pub fn allow_uid(self, uid: impl ToString) -> Builder {
        self.args(&["--allow-uid", &uid.to_string()])
    }

    /// More arguments, after the others.
    pub fn args(mut self, args: &[&str]) -> Builder {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for the daemon (a test hook, say).
    pub fn env(self, key: &str, value: &str) -> Builder {
        let mut builder = self.unset_env(key);
        builder.env.push((key.into(), value.into()));
        builder
    }

    /// Drops an environment variable set with [`Builder::env`].
    pub fn unset_env(mut self, key: &str) -> Builder {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// Starts the daemon through another program: `wrap` gets the daemon's command (program,
    /// arguments and environment, no stdio yet) and returns the one to run, which must end
    /// up exec'ing it in place (so its pid is the daemon's): see [`super::through_shell`].
    pub fn wrap(mut self, wrap: impl Fn(&Command) -> Command + Send + Sync + 'static) -> Builder {
        self.wrap = Some(Arc::new(wrap));
        self
    }

    pub fn at_drop(mut self, at_drop: AtDrop) -> Builder {
        self.at_drop = at_drop;
        self
    }

    /// Lays out the directory and writes the key ring; starts nothing.
    pub fn prepare(self) -> Daemon {
        let dir = match (self.for_nobody, self.prefix) {
            (true, prefix) => scratch_dir_named(prefix.unwrap_or("ringcrypt-rel")),
            (false, Some(prefix)) => tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("temp dir"),
            (false, None) => tempfile::tempdir().expect("temp dir"),
        };
        let outside = dir.path().join("outside");
        let root = if self.root_is_dir {
            dir.path().to_path_buf()
        } else {
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            if self.for_nobody {
                chmod(&root, 0o755);
            }
            fs::create_dir(&outside).unwrap();
            root
        };
        let keys = dir.path().join("keys.toml");
        let ring = match &self.ring {
            Some(text) => text.clone(),
            None => format!("default = \"k2\"\n{}{}", keygen("k1"), keygen("k2")),
        };
        write_private(&keys, &ring);
        Daemon {
            child: Mutex::new(None),
            socket: dir.path().join("d.sock"),
            log: dir.path().join("d.log"),
            dir,
            root,
            outside,
            keys,
            pong: Value::Null,
            launches: 0,
            spec: self,
        }
    }

    /// Lays out the directory, starts the daemon and waits until it answers `ping`.
    pub fn start(self) -> Daemon {
        let mut daemon = self.prepare();
        daemon.launch();
        daemon
    }
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

/// A daemon's directory and, while it runs, its process.
pub struct Daemon {
    child: Mutex<Option<Child>>,
    pub dir: TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
    pub socket: PathBuf,
    pub keys: PathBuf,
    /// The current (last started) process's stderr.
    pub log: PathBuf,
    /// The `pong` that said the current process was ready.
    pub pong: Value,
    launches: usize,
    spec: Builder,
}

impl Daemon {
    /// The defaults with `RINGCRYPT_BACKEND=backend`.
    pub fn builder(backend: &'static str) -> Builder {
        Builder::new().backend(backend)
    }

    /// A daemon with every default, ready.
    pub fn start(backend: &'static str) -> Daemon {
        Daemon::builder(backend).start()
    }

    /// `ringcryptd` on this directory with the builder's flags and environment, stderr to
    /// `log`; not started.
    pub fn command(&self, log: &Path) -> Command {
        let spec = &self.spec;
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--keys")
            .arg(&self.keys)
            .arg("--allow-root")
            .arg(&self.root);
        for (flag, value) in [
            ("--shards", &spec.shards),
            ("--fsync", &spec.fsync),
            ("--metrics", &spec.metrics),
        ] {
            if let Some(value) = value {
                cmd.args([flag, value]);
            }
        }
        cmd.args(&spec.args);
        if let Some(backend) = spec.backend {
            cmd.env("RINGCRYPT_BACKEND", backend);
        }
        cmd.env_remove("RINGCRYPT_SOCKET")
            .env_remove("RINGCRYPT_KEYS");
        for key in HOOK_ENV {
            cmd.env_remove(key);
        }
        for (key, value) in &spec.env {
            cmd.env(key, value);
        }
        if let Some(wrap) = &spec.wrap {
            cmd = wrap(&cmd);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(log).expect("log file")));
        cmd
    }

    /// Starts the daemon (again, once the last process is gone: the same directory, key
    /// ring, root and socket, a new log) and waits until it answers `ping`.
    pub fn launch(&mut self) {
        assert!(
            self.child().is_none(),
            "a new daemon needs the old one gone"
        );
        self.launches += 1;
        if self.launches > 1 {
            self.log = self.dir.path().join(format!("d{}.log", self.launches));
        }
        let child = self.command(&self.log).spawn().expect("ringcryptd starts");
        *self.child() = Some(child);
        self.wait_ready();
        if self.spec.for_nobody {
            chmod(&self.socket, 0o666);
        }
    }

    /// [`Daemon::launch`] with the builder changed first (a test hook set or unset, ...).
    pub fn relaunch_with(&mut self, change: impl FnOnce(Builder) -> Builder) {
        self.spec = change(self.spec.clone());
        self.launch();
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "ringcryptd exited before answering ping ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if let Some(reply) = try_ping(&self.socket)
                && reply["type"] == "pong"
            {
                // The exact spelling (`"uring"`, protocol.rs) is checked by
                // `every_op_pipelined`; here only that the backend asked for runs, so a
                // misspelling does not hide every other result.
                if let Some(backend) = self.spec.backend {
                    let got = reply["backend"].as_str().unwrap_or("");
                    assert!(
                        got == backend || (backend == "uring" && got == "io_uring"),
                        "RINGCRYPT_BACKEND={backend} not honoured: {reply}"
                    );
                }
                self.pong = reply;
                return;
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
        self.child().as_ref().expect("daemon running").id()
    }

    /// A JSON-lines client on a new connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Runs `ringcrypt --socket SOCKET ARGS` in the root.
    pub fn cli(&self, args: &[&str]) -> Run {
        ringcrypt_in(&self.root, &self.socket, args)
    }

    /// The key ring the daemon loaded, for offline checks.
    pub fn ring(&self) -> KeyRing {
        KeyRing::load(&self.keys).expect("key ring loads")
    }

    /// A place for the test's own files, outside the root.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
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

    /// `kill -NAME` (`TERM`, `HUP`, ...) to the daemon; the signal must be sent.
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        assert!(kill(name, pid), "kill -{name} {pid} failed");
    }

    /// The exit status if the daemon has exited (it is reaped once; later calls repeat it).
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child()
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
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

    /// SIGKILL, and reap.
    pub fn kill(&self) {
        if let Some(child) = self.child().as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// After the daemon was killed from outside (kill -9) or exited: reap it and stop
    /// tracking it.
    pub fn forget(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `within`: the exit status and how long it took, or None
    /// (and the daemon is killed with SIGKILL) when it did not exit in time. The process is
    /// no longer tracked either way.
    pub fn terminate(&self, within: Duration) -> (Option<ExitStatus>, Duration) {
        let mut child = self.child().take().expect("daemon running");
        let started = Instant::now();
        assert!(kill("TERM", child.id()), "kill -TERM {} failed", child.id());
        let status = wait_within(&mut child, within);
        let took = started.elapsed();
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (status, took)
    }

    /// SIGTERM, then wait up to `within`; returns the exit status and how long it took.
    /// Panics if the daemon is still running after `within` (and kills it).
    pub fn stop(&mut self, within: Duration) -> (ExitStatus, Duration) {
        match self.terminate(within) {
            (Some(status), took) => (status, took),
            (None, _) => panic!(
                "ringcryptd did not exit within {within:?} of SIGTERM; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Ends the process, if one is held, as [`AtDrop`] says (dropping the daemon does this);
    /// the directory stays, for [`Daemon::launch`].
    pub fn end(&mut self) {
        let at_drop = self.spec.at_drop;
        let Some(mut child) = self.child().take() else {
            return;
        };
        let child = &mut child;
        let exited = child.try_wait().ok().flatten();
        if at_drop == AtDrop::Kill {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if exited.is_none() {
            let _ = kill("TERM", child.id());
        }
        if at_drop == AtDrop::Reap {
            let _ = child.wait();
            return;
        }
        let status = exited.or_else(|| wait_within(child, STOP_TIMEOUT));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            match status {
                Some(status) => assert!(
                    status.success(),
                    "ringcryptd exited with {status} (want 0 after SIGTERM); log:\n{}",
                    self.log_text()
                ),
                None => panic!(
                    "ringcryptd did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// A `ping` on a new connection.
    pub fn ping(&self) -> Value {
        let mut c = Client::open(&self.socket, Duration::from_secs(10));
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
        let mut c = self.client();
        c.send(&with(file_req("encrypt", input, output), fields));
        c.until_end_noting(self, "encrypt").pop().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.end();
    }
}
