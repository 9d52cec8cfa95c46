//! The harness the daemon benches share (`benches/daemon.rs`, `benches/e2e/`,
//! `benches/allocs/`), included by each with `mod support;` (from a directory bench,
//! `#[path = "../support/mod.rs"] mod support;`): Cargo builds no bench target from this
//! directory, which has no `main.rs`.
//!
//! It holds the paths of the built binaries and the openssl baseline's command lines; the
//! scratch directory (under /dev/shm when it exists); a fresh `ringcryptd` per measurement,
//! started and pinged with a bounded wait, stopped with SIGTERM and a bounded wait, with its
//! peak RSS read from /proc; the 0600 key ring from `ringcrypt keygen`; pseudo-random inputs,
//! a read to warm the page cache, file counts; and the plain-text table the benches print.
//!
//! Not every bench uses every item, hence `allow(dead_code)`. Safe code only, also inside
//! the allocs bench, whose counting allocator needs `unsafe` of its own.

#![allow(dead_code)]
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};

pub const DAEMON_EXE: &str = env!("CARGO_BIN_EXE_ringcryptd");
pub const CLIENT_EXE: &str = env!("CARGO_BIN_EXE_ringcrypt");

/// How long a fresh daemon may take to answer its first ping.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM may take: the daemon drains running jobs for up to 30 s.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// The baseline's cipher and key derivation, as README "Performance" quotes it.
pub const OPENSSL_ENC: &str = "openssl enc -aes-256-cbc -pbkdf2 -iter 10000 -pass pass:x";
pub const OPENSSL_DEC: &str = "openssl enc -d -aes-256-cbc -pbkdf2 -iter 10000 -pass pass:x";

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// The scratch directory: created empty, removed with everything in it on drop (also when a
/// check fails and the bench unwinds).
pub struct Scratch {
    pub path: PathBuf,
    /// Where it is, in words, for the report.
    pub note: String,
}

impl Scratch {
    /// `ringcrypt-{name}-{pid}` under `dir`, or else under /dev/shm when it exists, or else
    /// under the temp directory.
    pub fn create(dir: Option<PathBuf>, name: &str) -> Scratch {
        let (base, note) = match dir {
            Some(dir) => (dir, "--dir: the figures include that filesystem"),
            None if Path::new("/dev/shm").is_dir() => (
                PathBuf::from("/dev/shm"),
                "tmpfs: the disk is kept out of the figures, and fsync costs little",
            ),
            None => (
                std::env::temp_dir(),
                "no /dev/shm: the figures include the disk",
            ),
        };
        let path = base.join(format!("ringcrypt-{name}-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        // Canonical, so request paths are absolute and free of symlinks as the daemon needs.
        let path = fs::canonicalize(&path).expect("the scratch directory was just made");
        let note = format!("{} ({note})", path.display());
        Scratch { path, note }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Never,
    Always,
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Never => "never",
            Fsync::Always => "always",
        }
    }
}

/// A running `ringcryptd`; SIGTERM and a bounded wait for its exit on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
    /// The `pong` it answered its first ping with (version, shards, backend).
    pub pong: Value,
}

impl Daemon {
    /// Starts `ringcryptd` on a socket in `dir`, with `dir` as its only allowed root, and
    /// waits for its first `pong`. `shards: None` leaves the daemon's default, one per core.
    pub fn start(dir: &Path, keys: &Path, fsync: Fsync, shards: Option<u16>) -> Daemon {
        let socket = dir.join("d.sock");
        let log = dir.join("daemon.log");
        let log_file = fs::File::create(&log).expect("create the daemon log");
        let mut cmd = Command::new(DAEMON_EXE);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--keys")
            .arg(keys)
            .arg("--allow-root")
            .arg(dir)
            .args(["--fsync", fsync.as_str()]);
        if let Some(shards) = shards {
            cmd.args(["--shards", &shards.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log fd"))
            .stderr(log_file)
            .spawn()
            .expect("spawn ringcryptd");
        let mut daemon = Daemon {
            child,
            socket,
            log,
            pong: Value::Null,
        };
        daemon.pong = daemon.wait_for_pong();
        daemon
    }

    fn wait_for_pong(&mut self) -> Value {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ringcryptd exited at start ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(reply) = ping(&self.socket)
                && reply["type"] == "pong"
            {
                return reply;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "ringcryptd did not answer ping within {START_TIMEOUT:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far, from VmHWM in /proc/PID/status.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return,
                Ok(Some(status)) => {
                    eprintln!("warning: ringcryptd exited with {status} after SIGTERM");
                    eprintln!("{}", self.log_text());
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("warning: ringcryptd ignored SIGTERM for {STOP_TIMEOUT:?}; killed");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

/// One `ping` on a fresh connection, with a bounded wait for the reply.
pub fn ping(socket: &Path) -> io::Result<Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(START_TIMEOUT))?;
    stream.write_all(&[serde_json::to_vec(&json!({"op": "ping"}))?, b"\n".to_vec()].concat())?;
    let mut text = String::new();
    BufReader::new(stream).read_line(&mut text)?;
    Ok(serde_json::from_str(&text)?)
}

/// Starts a fresh daemon, runs `work` against it, and returns the result with the daemon's
/// peak RSS in MiB, read before it is stopped.
pub fn with_daemon<T>(
    dir: &Path,
    keys: &Path,
    fsync: Fsync,
    shards: Option<u16>,
    work: impl FnOnce(&Daemon) -> T,
) -> (T, Option<f64>) {
    let daemon = Daemon::start(dir, keys, fsync, shards);
    let result = work(&daemon);
    let rss = daemon.peak_rss_mib();
    drop(daemon);
    (result, rss)
}

/// A fresh key ring, mode 0600, from `ringcrypt keygen`.
pub fn make_key_ring(dir: &Path) -> PathBuf {
    let out = Command::new(CLIENT_EXE)
        .args(["keygen", "--name", "bench"])
        .output()
        .expect("run ringcrypt keygen");
    assert!(out.status.success(), "ringcrypt keygen failed: {out:?}");
    let path = dir.join("keys.toml");
    write_private(&path, &out.stdout);
    path
}

/// Writes a new file, mode 0600; the file must not exist yet.
pub fn write_private(path: &Path, bytes: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Fills a file with `bytes` of pseudo-random data (the cipher does not care what, but the
/// data should not be trivially compressible by anything in between).
pub fn write_input(path: &Path, bytes: u64, seed: u64) {
    let mut block = vec![0u8; (8 * MIB).min(bytes) as usize];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in block.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    let mut file =
        fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
}

/// Reads every file once so the measurement finds them in the page cache.
pub fn warm<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) {
    for path in paths {
        let path = path.as_ref();
        let mut file =
            fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        io::copy(&mut file, &mut io::sink()).expect("read an input");
    }
}

pub fn remove(path: &Path) {
    fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
}

/// Regular files under `dir` (recursively), and how many of them end in `suffix`.
pub fn count_files(dir: &Path, suffix: &str) -> (usize, usize) {
    let mut all = 0;
    let mut matching = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let entry = entry.expect("a directory entry");
            let kind = entry.file_type().expect("an entry's type");
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                all += 1;
                if entry.file_name().to_string_lossy().ends_with(suffix) {
                    matching += 1;
                }
            }
        }
    }
    (all, matching)
}

/// `openssl enc` from one of the command lines above (`OPENSSL_ENC`, `OPENSSL_DEC`) on one
/// file.
pub fn openssl_command(command: &str, input: &Path, output: &Path) -> Command {
    let mut words = command.split_whitespace();
    let mut cmd = Command::new(words.next().expect("a program name"));
    cmd.args(words)
        .arg("-in")
        .arg(input)
        .arg("-out")
        .arg(output);
    cmd
}

/// A left-aligned first column (or several), right-aligned figures, widths from the contents.
pub struct Table {
    header: Vec<&'static str>,
    left: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first `left` columns are left-aligned.
    pub fn new(header: &[&'static str], left: usize) -> Table {
        Table {
            header: header.to_vec(),
            left,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// The header, a rule of dashes under it, then the rows.
    pub fn print(&self) {
        self.print_with(true);
    }

    /// The header, then the rows.
    pub fn print_without_rule(&self) {
        self.print_with(false);
    }

    fn print_with(&self, rule: bool) {
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|col| {
                std::iter::once(&header)
                    .chain(&self.rows)
                    .map(|row| row[col].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let print_row = |row: &[String]| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(col, (cell, &width))| {
                    if col < self.left {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            println!("{}", cells.join("  ").trim_end());
        };
        print_row(&header);
        if rule {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            println!("{}", rule.join("  "));
        }
        for row in &self.rows {
            print_row(row);
        }
    }
}
