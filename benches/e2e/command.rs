//! Running one timed command of the e2e bench: what the measurements share (`Bench`), a
//! fresh daemon per ringcrypt row, and `Bench::run`, which spawns a command in its own
//! process group with a watchdog, times it from spawn to exit, reads the CPU it used and
//! stops the bench on a failure or a timeout. Also the version probes of the baselines.

use std::cell::RefCell;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;

use crate::cpu::{Cpu, DaemonCpu, DaemonSnapshot, children_ticks};
use crate::support::{self, Daemon, Fsync};

/// How long any one command may run. The slowest in a full run, `xargs openssl` over 20,000
/// files, took under 4 minutes on a loaded 2-core machine; this leaves room for a slower one
/// while still ending a hung run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1800);

/// Everything the measurements share.
pub struct Bench {
    pub dir: PathBuf,
    pub keys: PathBuf,
    /// The Python baseline's AES and HMAC keys, 64 bytes in hex.
    pub python_keys: PathBuf,
    /// False with `--no-baselines`.
    pub baselines: bool,
    pub python: bool,
    pub cores: usize,
    /// `--shards`, passed to every daemon.
    pub shards: Option<u16>,
    /// Clock ticks per second, the unit of the CPU times in /proc.
    pub ticks: f64,
    /// The last daemon's `pong` (version, shards, backend), for the report.
    pub pong: RefCell<Value>,
    /// Numbers the logs of timed commands, so each keeps its own.
    pub commands: RefCell<usize>,
    /// Timed runs of every row (`--runs`); the table shows the median.
    pub runs: usize,
    /// The disk table: baselines that write files are followed by `sync`, as the
    /// daemon's `--fsync always` rows make their outputs durable.
    pub sync_baselines: bool,
}

impl Bench {
    /// Starts a fresh daemon (`shards`: its `--shards`), runs `work` against it, and returns the result with the
    /// daemon's peak RSS in MiB, read before it is stopped.
    pub fn with_daemon<T>(
        &self,
        fsync: Fsync,
        shards: Option<u16>,
        work: impl FnOnce(&Daemon) -> T,
    ) -> (T, Option<f64>) {
        support::with_daemon(&self.dir, &self.keys, fsync, shards, |daemon| {
            *self.pong.borrow_mut() = daemon.pong.clone();
            work(daemon)
        })
    }

    /// Runs `cmd` to its exit and returns how long it took, the CPU it used (with the CPU of
    /// the daemon `daemon`, when a ringcrypt row names one) and its stdout. The command runs
    /// in its own process group with its output in files under the scratch directory (no
    /// pipe to fill up); a watchdog kills the group if it outlives `COMMAND_TIMEOUT`, and a
    /// failure or a timeout stops the bench with the command's stderr.
    pub fn run(&self, cmd: &mut Command, daemon: Option<u32>) -> Timed {
        let n = {
            let mut commands = self.commands.borrow_mut();
            *commands += 1;
            *commands
        };
        let out_path = self.dir.join(format!("cmd{n}.out"));
        let err_path = self.dir.join(format!("cmd{n}.err"));
        let out = fs::File::create(&out_path).expect("create a command's stdout file");
        let err = fs::File::create(&err_path).expect("create a command's stderr file");
        // The client must talk to this run's daemon, never go offline on a key ring or to
        // another socket named in the caller's environment.
        cmd.env_remove("RINGCRYPT_KEYS")
            .env_remove("RINGCRYPT_SOCKET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // The CPU is read before the clock starts and again after it stops, so reading it
        // never counts in the time (reading the daemon's few threads takes well under a
        // millisecond anyway).
        let daemon_before = daemon.map(DaemonSnapshot::take);
        let children_before = children_ticks();
        let cached_before = cached_kib();
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let group = Pid::from_child(&child);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // The watchdog waits on a channel rather than the main thread polling, so the timing
        // ends exactly when `wait` returns.
        let watchdog = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(COMMAND_TIMEOUT) {
                let _ = kill_process_group(group, Signal::KILL);
                true
            } else {
                false
            }
        });
        let status = child.wait().expect("wait for a command");
        let time = start.elapsed();
        // The wait reaped the command, which added its CPU (and that of every descendant it
        // waited for) to this process's children times. No other child of this process is
        // reaped while a command runs: the previous row's daemon was reaped before it began,
        // and this row's is reaped after this.
        let children_after = children_ticks();
        let daemon_after = daemon.map(DaemonSnapshot::take);
        let cached_after = cached_kib();
        let _ = done_tx.send(());
        let timed_out = watchdog.join().expect("the watchdog thread");
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        assert!(
            !timed_out,
            "{cmd:?} ran past {COMMAND_TIMEOUT:?} and was killed; stderr:\n{stderr}"
        );
        assert!(
            status.success(),
            "{cmd:?} failed ({status}); stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        let cpu = Cpu {
            client: children_after.saturating_sub(children_before) as f64 / self.ticks,
            daemon: daemon_before
                .zip(daemon_after)
                .map(|(before, after)| DaemonCpu::between(&before, &after, self.ticks)),
        };
        Timed {
            time,
            cpu,
            stdout,
            cache_growth_mib: (cached_after - cached_before) as f64 / 1024.0,
        }
    }
}

/// What `Bench::run` measured of one command.
pub struct Timed {
    pub time: Duration,
    pub cpu: Cpu,
    pub stdout: String,
    /// How much the page cache (`Cached` in /proc/meminfo) grew over the command, in MiB:
    /// what a job leaves in memory the host's other work then competes with.
    pub cache_growth_mib: f64,
}

/// `Cached` from /proc/meminfo, in KiB (0 where it cannot be read).
pub fn cached_kib() -> i64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Cached:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The first line of a command's stdout, or `None` when it cannot run or fails. Only for
/// version probes, which return at once.
pub fn probe(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
