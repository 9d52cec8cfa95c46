//! ringcrypt end to end against what users run today, side by side in one run (README
//! "Performance").
//!
//! A plain bench binary (`harness = false`): `cargo bench --bench e2e` runs it at full size
//! (several minutes, most of it the `xargs openssl` baseline over 20,000 files) and
//! `cargo bench --bench e2e -- --quick` at small sizes for a smoke run. It prints one table
//! of results, a block of targets marked met or NOT met, and under it, for every row that
//! missed a target, where that row's CPU went. It exits 0 whatever the speeds; it fails
//! loudly only when a tool's outputs are missing, of the wrong size, or (after decryption)
//! differ from the original, so a broken run can never report a speed.
//!
//! Options (after `--`):
//!
//! - `--quick`: the small sizes below (`RINGCRYPT_BENCH_QUICK=1` does the same);
//! - `--dir PATH`: the scratch directory goes under PATH instead of /dev/shm;
//! - `--shards N`: passed to every `ringcryptd`; by default the daemon runs one shard per
//!   core. The header prints the shard count the daemon reported. `--shards 1` and
//!   `--shards 2` side by side show how the daemon scales;
//! - `--sets LIST`: a comma list of `big` (the single large file), `mib` (the 1 MiB files),
//!   `small` (the 4 KiB files); all three by default. Targets of sets left out are not
//!   printed;
//! - `--no-baselines`: only the ringcrypt rows, no openssl or Python; the targets that
//!   compare against a baseline then say "skipped: no baseline in this run".
//!
//! Other arguments, such as the `--bench` that `cargo bench` passes, are ignored; a
//! malformed value of one of these options stops the bench before it measures anything.
//!
//! What it does:
//!
//! 1. Measures, in this process, how fast the library seals on one core:
//!    `ringcrypt::format::Sealer::seal_full` over 256 MiB (64 MiB with `--quick`) in 1 MiB
//!    batches of 64 KiB records, best of 3 after a warm-up; `Opener::open_full` likewise, for
//!    reference. Cores × that rate is the ceiling a daemon with one shard per core can reach.
//! 2. Makes the data sets in a scratch directory (under /dev/shm when it exists, so tmpfs
//!    keeps the disk out of the figures; `--dir PATH` puts it under PATH instead): one 1 GiB
//!    file, 1000 files of 1 MiB in 10 directories, 20,000 files of 4 KiB in 100 directories
//!    (`--quick`: 64 MiB, 100 × 1 MiB, 2,000 × 4 KiB). Every input is read once before any
//!    timing, so the page cache holds it.
//! 3. Times, for each data set, encryption and then decryption of what was encrypted, by:
//!    - the real client through a fresh `ringcryptd` per row, `ringcrypt --socket S encrypt
//!      -r IN -o OUT` (`encrypt FILE -o OUT` for the single file) and `decrypt` likewise,
//!      with the daemon at `--fsync never` and at `--fsync always`; the daemon's peak RSS
//!      (VmHWM from /proc/PID/status) is read before it is stopped with SIGTERM;
//!    - `openssl enc -aes-256-cbc -pbkdf2 -iter 10000` (`-d` to decrypt), one process per
//!      file through `find | xargs -0 -P<cores>` for the trees, and directly on the big file;
//!    - a Python `ProcessPoolExecutor` with one worker per core over the `cryptography`
//!      package (`benches/e2e_pool.py`: AES-256-CBC + PKCS7 + HMAC-SHA256 per file), twice:
//!      "map default" calls `pool.map(fn, files)` as most scripts do, with the standard
//!      library's chunksize of 1, and is the one the targets compare against (the issue's
//!      Python figures come from such a script); "map chunksize tuned" hands each worker
//!      batches of files, and its ratio is printed next to each Python target. Both are
//!      skipped with a printed note when `python3 -c 'import cryptography'` fails.
//!
//!    Each timing runs from spawning the command to its exit, so client start-up and the walk
//!    of the tree are included.
//! 4. Reads the CPU each row used, in clock ticks from /proc (the tick rate is AT_CLKTCK
//!    from /proc/self/auxv, what sysconf(_SC_CLK_TCK) returns), as a difference between a
//!    reading just before the command is spawned and one just after it has been waited for:
//!    - "client": this process's cutime + cstime (/proc/self/stat fields 16 and 17), which
//!      grow by the CPU of each child it reaps and of the descendants that child reaped. The
//!      timed command is the only child reaped in between, so this is the client's CPU; for
//!      a baseline it is all of sh, find, xargs and every openssl, or python and its pool's
//!      workers;
//!    - "daemon", for the ringcrypt rows: the daemon's utime + stime (/proc/PID/stat fields
//!      14 and 15). The kernel folds the time of threads that have exited into it, so this
//!      total misses nothing. Each live thread is read from /proc/PID/task/TID/stat with its
//!      name (field 2): `shard-*` threads are the shards, whose user time is mostly the
//!      crypto and whose system time is their own syscalls. "io+other" is total − shards:
//!      the kernel's io_uring workers (`iou-wrk-*`: the page-cache copies, opens and links
//!      that do not complete inline), the daemon's main and metrics threads, and anything
//!      else. Io workers can exit mid-row (the kernel retires idle ones) and an exited
//!      thread cannot be read on its own, so io+other is the figure that is complete; the
//!      lines under the targets split it further into "live io workers" (the `iou-wrk-*`
//!      threads still alive at the second reading) and "other" = total − shards − live io
//!      workers, which holds the exited workers too;
//!    - "cores busy" = (daemon + client) / (wall time × cores). For each row that missed a
//!      target the line under the targets table gives these figures and reads "CPU-bound"
//!      at 70% or more, "not CPU-bound: latency or a serial step" below it. The daemon pins
//!      each shard to a core and the kernel gives a ring's io workers its owner's affinity,
//!      so with fewer shards than cores (`--shards 1` on 2 cores) the daemon can keep at
//!      most that many cores busy: the line then also gives the daemon's CPU over the cores
//!      its shards may use (the union of their Cpus_allowed_list in /proc/PID/task/TID/
//!      status), and 70% or more of those reads "CPU-bound on the pinned cores". The single
//!      big file is one job on one shard, so its line gives the daemon's CPU over one core
//!      the same way.
//!
//!    Figures are whole ticks (10 ms at the usual 100 Hz), so the short rows of a `--quick`
//!    run show little more than which side the time went to.
//! 5. Checks every output, then deletes it before the next row, so at most one plaintext set,
//!    one encrypted set and one decrypted set exist at a time (about 3 GiB in a full run).
//!
//! Cores are `std::thread::available_parallelism()`. Every wait is bounded: a command that
//! runs past its timeout has its whole process group killed and stops the bench. The scratch
//! directory is removed at the end.

#![forbid(unsafe_code)]

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::hint::black_box;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringcrypt::format::{Opener, Sealer, sealed_len};
use ringcrypt::limits::{CHUNK_LOG2_DEFAULT, TAG_BYTES};
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;
use support::{
    CLIENT_EXE, Daemon, Fsync, MIB, OPENSSL_DEC, OPENSSL_ENC, Scratch, Table, count_files,
    make_key_ring, openssl_command, remove, warm, write_input, write_private,
};

/// The Python baseline lives in its own file so it can be read and run on its own.
const POOL_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2e_pool.py");

/// How long any one command may run. The slowest in a full run, `xargs openssl` over 20,000
/// files, took under 4 minutes on a loaded 2-core machine; this leaves room for a slower one
/// while still ending a hung run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1800);

/// The seal figure: fixed keys, since the rate does not depend on key or data values.
const MASTER: [u8; 32] = [0x42; 32];
const SALT: [u8; 32] = [0x17; 32];
/// Plaintext per `seal_full` call: 1 MiB, sixteen 64 KiB records.
const SEAL_BATCH_BYTES: usize = MIB as usize;
/// Timed repetitions of the seal figure; the best is kept, since noise on a shared machine
/// only ever makes a repetition slower.
const SEAL_REPS: usize = 3;

/// The issue's targets, for the client through the daemon at `--fsync never`; decryption is
/// held to the same ratios against the decrypting baselines.
const TARGET_MANY_VS_OPENSSL: f64 = 8.0;
const TARGET_MANY_OF_SEAL: f64 = 0.80;
const TARGET_SMALL_VS_OPENSSL: f64 = 60.0;
const TARGET_SMALL_VS_PYTHON: f64 = 10.0;
const TARGET_BIG_VS_OPENSSL: f64 = 3.5;

/// One data set's shape.
#[derive(Clone, Copy)]
struct Shape {
    set: Set,
    files: usize,
    dirs: usize,
    file_bytes: u64,
}

impl Shape {
    fn total_bytes(&self) -> u64 {
        self.file_bytes * self.files as u64
    }

    fn label(&self) -> String {
        let size = if self.file_bytes >= MIB {
            format!("{} MiB", self.file_bytes / MIB)
        } else {
            format!("{} KiB", self.file_bytes / 1024)
        };
        match self.set {
            Set::Big => format!("1 x {size}"),
            _ => format!("{} x {size}", self.files),
        }
    }
}

/// The three data sets; targets name them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Set {
    Big,
    Many,
    Small,
}

struct Sizes {
    sets: [Shape; 3],
    seal_bytes: usize,
}

const FULL: Sizes = Sizes {
    sets: [
        Shape {
            set: Set::Big,
            files: 1,
            dirs: 0,
            file_bytes: 1024 * MIB,
        },
        Shape {
            set: Set::Many,
            files: 1000,
            dirs: 10,
            file_bytes: MIB,
        },
        Shape {
            set: Set::Small,
            files: 20_000,
            dirs: 100,
            file_bytes: 4096,
        },
    ],
    seal_bytes: 256 << 20,
};

const QUICK: Sizes = Sizes {
    sets: [
        Shape {
            set: Set::Big,
            files: 1,
            dirs: 0,
            file_bytes: 64 * MIB,
        },
        Shape {
            set: Set::Many,
            files: 100,
            dirs: 10,
            file_bytes: MIB,
        },
        Shape {
            set: Set::Small,
            files: 2000,
            dirs: 100,
            file_bytes: 4096,
        },
    ],
    seal_bytes: 64 << 20,
};

struct Args {
    quick: bool,
    dir: Option<PathBuf>,
    /// `--shards N` for every daemon; `None` leaves the daemon's default, one per core.
    shards: Option<u16>,
    /// The data sets to run, in the order of `Sizes::sets`.
    sets: Vec<Set>,
    /// False with `--no-baselines`: only the ringcrypt rows run.
    baselines: bool,
}

impl Args {
    fn parse() -> Args {
        let mut parsed = Args {
            quick: std::env::var("RINGCRYPT_BENCH_QUICK").is_ok_and(|v| v == "1"),
            dir: None,
            shards: None,
            sets: vec![Set::Big, Set::Many, Set::Small],
            baselines: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `--name value` and `--name=value` both work; a missing value is an error
            // rather than a silent default, since it would change what the run measures.
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .unwrap_or_else(|| usage(&format!("{name} needs a value")))
            };
            match name.as_str() {
                "--quick" => parsed.quick = true,
                "--no-baselines" => parsed.baselines = false,
                "--dir" => parsed.dir = Some(PathBuf::from(value("--dir"))),
                "--shards" => {
                    let text = value("--shards");
                    parsed.shards = match text.parse::<u16>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => usage(&format!("--shards {text}: expected a number from 1")),
                    };
                }
                "--sets" => {
                    let text = value("--sets");
                    let mut sets = Vec::new();
                    for word in text.split(',').map(str::trim) {
                        let set = match word {
                            "big" => Set::Big,
                            "mib" => Set::Many,
                            "small" => Set::Small,
                            _ => usage(&format!(
                                "--sets {text}: `{word}` is none of big, mib, small"
                            )),
                        };
                        if !sets.contains(&set) {
                            sets.push(set);
                        }
                    }
                    // The run keeps the usual order, whatever order the list has.
                    parsed.sets = [Set::Big, Set::Many, Set::Small]
                        .into_iter()
                        .filter(|set| sets.contains(set))
                        .collect();
                }
                // Anything else, such as the `--bench` that `cargo bench` passes, is not ours.
                _ => {}
            }
        }
        parsed
    }
}

/// Stops the bench on a malformed option of its own, before anything is measured.
fn usage(problem: &str) -> ! {
    eprintln!(
        "e2e: {problem}\nusage: cargo bench --bench e2e -- [--quick] [--dir PATH] [--shards N] \
         [--sets big,mib,small] [--no-baselines]"
    );
    std::process::exit(2);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Encrypt,
    Decrypt,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ringcrypt(Fsync),
    Openssl,
    Python(Chunksize),
}

/// How the Python pool hands out files (benches/e2e_pool.py `--chunksize`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunksize {
    /// `pool.map(fn, files)` as most scripts call it: the standard library's chunksize of 1.
    /// The targets compare against this one.
    Default,
    /// Batches sized to the number of files and workers, shown next to it.
    Tuned,
}

impl Chunksize {
    fn as_str(self) -> &'static str {
        match self {
            Chunksize::Default => "default",
            Chunksize::Tuned => "tuned",
        }
    }
}

/// Everything the measurements share.
struct Bench {
    dir: PathBuf,
    keys: PathBuf,
    /// The Python baseline's AES and HMAC keys, 64 bytes in hex.
    python_keys: PathBuf,
    /// False with `--no-baselines`.
    baselines: bool,
    python: bool,
    cores: usize,
    /// `--shards`, passed to every daemon.
    shards: Option<u16>,
    /// Clock ticks per second, the unit of the CPU times in /proc.
    ticks: f64,
    /// The last daemon's `pong` (version, shards, backend), for the report.
    pong: RefCell<Value>,
    /// Numbers the logs of timed commands, so each keeps its own.
    commands: RefCell<usize>,
}

impl Bench {
    /// Starts a fresh daemon, runs `work` against it, and returns the result with the
    /// daemon's peak RSS in MiB, read before it is stopped.
    fn with_daemon<T>(&self, fsync: Fsync, work: impl FnOnce(&Daemon) -> T) -> (T, Option<f64>) {
        support::with_daemon(&self.dir, &self.keys, fsync, self.shards, |daemon| {
            *self.pong.borrow_mut() = daemon.pong.clone();
            work(daemon)
        })
    }

    /// Runs `cmd` to its exit and returns how long it took, the CPU it used (with the CPU of
    /// the daemon `daemon`, when a ringcrypt row names one) and its stdout. The command runs
    /// in its own process group with its output in files under the scratch directory (no
    /// pipe to fill up); a watchdog kills the group if it outlives `COMMAND_TIMEOUT`, and a
    /// failure or a timeout stops the bench with the command's stderr.
    fn run(&self, cmd: &mut Command, daemon: Option<u32>) -> Timed {
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
        Timed { time, cpu, stdout }
    }
}

/// What `Bench::run` measured of one command.
struct Timed {
    time: Duration,
    cpu: Cpu,
    stdout: String,
}

/// The CPU seconds of one row, from /proc: user + system time, counted in clock ticks.
#[derive(Clone, Copy)]
struct Cpu {
    /// The timed command with every descendant it waited for: the client; or sh, find, xargs
    /// and each openssl; or python with its pool's workers. The change in this process's
    /// cutime + cstime (/proc/self/stat fields 16 and 17) across the wait.
    client: f64,
    /// The daemon's, for the ringcrypt rows.
    daemon: Option<DaemonCpu>,
}

impl Cpu {
    fn all(&self) -> f64 {
        self.client + self.daemon.map_or(0.0, |d| d.total)
    }

    /// All CPU as a share of what the machine could give in the wall time, in percent.
    fn busy_percent(&self, wall: Duration, cores: usize) -> f64 {
        100.0 * self.all() / (wall.as_secs_f64() * cores as f64)
    }
}

/// The daemon's CPU over one command, the change between two `DaemonSnapshot`s.
#[derive(Clone, Copy)]
struct DaemonCpu {
    /// utime + stime of the whole process (/proc/PID/stat fields 14 and 15). The kernel
    /// keeps the time of threads that have exited in it, so it misses nothing.
    total: f64,
    /// Threads named `shard-*` (/proc/PID/task/TID/stat): user time, which is mostly the
    /// crypto, and system time, the syscalls the shards make themselves.
    shard_user: f64,
    shard_sys: f64,
    /// Threads named `iou-wrk-*` alive at the end of the command: the kernel's io_uring
    /// workers, which do what cannot complete inline (page-cache copies, opens, links).
    io_live: f64,
    /// How many CPUs the shards may run on (the union of their Cpus_allowed_list). The
    /// daemon pins each shard to a core, and the kernel starts a ring's io workers with the
    /// affinity of the thread that owns the ring, so with fewer shards than cores the daemon
    /// cannot use the whole machine, however busy it is.
    pinned_cores: Option<usize>,
}

impl DaemonCpu {
    fn between(before: &DaemonSnapshot, after: &DaemonSnapshot, ticks: f64) -> DaemonCpu {
        let mut cpu = DaemonCpu {
            total: after.total.saturating_sub(before.total) as f64 / ticks,
            shard_user: 0.0,
            shard_sys: 0.0,
            io_live: 0.0,
            pinned_cores: after.shard_cpus.as_ref().map(|cpus| cpus.len()),
        };
        for (tid, now) in &after.threads {
            // A thread new since the first snapshot counts from zero; so does a reused thread
            // id, recognised by its new name.
            let (user0, sys0) = before
                .threads
                .get(tid)
                .filter(|then| then.comm == now.comm)
                .map_or((0, 0), |then| (then.utime, then.stime));
            let user = now.utime.saturating_sub(user0) as f64 / ticks;
            let sys = now.stime.saturating_sub(sys0) as f64 / ticks;
            if now.comm.starts_with("shard-") {
                cpu.shard_user += user;
                cpu.shard_sys += sys;
            } else if now.comm.starts_with("iou-wrk-") {
                cpu.io_live += user + sys;
            }
        }
        cpu
    }

    fn shards(&self) -> f64 {
        self.shard_user + self.shard_sys
    }

    /// total − shards: the io_uring workers, including those that exited during the command
    /// (the kernel retires idle ones, and a thread gone by the second snapshot cannot be read
    /// on its own), and every other thread of the daemon. Never below zero, since the process
    /// and its threads are read at slightly different instants.
    fn io_other(&self) -> f64 {
        (self.total - self.shards()).max(0.0)
    }

    /// total − shards − live io workers: the daemon's other threads, plus io workers that
    /// exited during the command.
    fn other(&self) -> f64 {
        (self.io_other() - self.io_live).max(0.0)
    }
}

/// The CPU times of one process or thread, from a /proc stat file.
struct ProcStat {
    /// Field 2, the thread's name.
    comm: String,
    /// Fields 14 to 17, in clock ticks.
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl ProcStat {
    /// `None` when the file is gone (the thread exited) or does not parse.
    fn read(path: &Path) -> Option<ProcStat> {
        let text = fs::read_to_string(path).ok()?;
        // The name sits in parentheses and may itself hold spaces and parentheses, so the
        // numbered fields are counted from the last ')'.
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
        // fields[0] is field 3 (the state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(ProcStat {
            comm,
            utime: field(14)?,
            stime: field(15)?,
            cutime: field(16)?,
            cstime: field(17)?,
        })
    }
}

/// The daemon's CPU times at one instant: the process's, and each live thread's by id.
struct DaemonSnapshot {
    total: u64,
    threads: HashMap<u32, ProcStat>,
    /// The CPUs any shard may run on; `None` when a status file could not be read.
    shard_cpus: Option<Vec<usize>>,
}

impl DaemonSnapshot {
    fn take(pid: u32) -> DaemonSnapshot {
        let stat = ProcStat::read(Path::new(&format!("/proc/{pid}/stat")))
            .unwrap_or_else(|| panic!("read /proc/{pid}/stat of the running ringcryptd"));
        let mut threads = HashMap::new();
        let tasks = format!("/proc/{pid}/task");
        for entry in fs::read_dir(&tasks).unwrap_or_else(|e| panic!("read {tasks}: {e}")) {
            let Ok(entry) = entry else { continue };
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A thread may exit between the listing and the read; its time is in the
            // process total all the same.
            if let Some(thread) = ProcStat::read(&entry.path().join("stat")) {
                threads.insert(tid, thread);
            }
        }
        let mut shard_cpus = Some(Vec::new());
        for (tid, thread) in &threads {
            if !thread.comm.starts_with("shard-") {
                continue;
            }
            let allowed = fs::read_to_string(format!("{tasks}/{tid}/status"))
                .ok()
                .and_then(|status| {
                    let line = status
                        .lines()
                        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
                    cpu_list(line.trim())
                });
            shard_cpus = match (shard_cpus, allowed) {
                (Some(mut cpus), Some(allowed)) => {
                    cpus.extend(allowed);
                    cpus.sort_unstable();
                    cpus.dedup();
                    Some(cpus)
                }
                _ => None,
            };
        }
        DaemonSnapshot {
            total: stat.utime + stat.stime,
            threads,
            shard_cpus: shard_cpus.filter(|cpus| !cpus.is_empty()),
        }
    }
}

/// The CPUs of a kernel CPU list such as `0-3,6`; `None` when it does not parse.
fn cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.parse::<usize>().ok()?..=last.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// cutime + cstime of this process: the CPU of every child it has waited for, and of their
/// own waited-for descendants.
fn children_ticks() -> u64 {
    let stat = ProcStat::read(Path::new("/proc/self/stat")).expect("read /proc/self/stat");
    stat.cutime + stat.cstime
}

/// The kernel's USER_HZ, the unit of the times in /proc stat files: the AT_CLKTCK entry (17)
/// of this process's auxiliary vector, which is where sysconf(_SC_CLK_TCK) and
/// `rustix::param::clock_ticks_per_second` read it too. Reading /proc/self/auxv keeps the
/// bench free of unsafe code without the rustix `param` feature, which the crate does not
/// enable; `getconf CLK_TCK` is asked only when the vector cannot be read.
fn clock_ticks_per_second() -> u64 {
    const AT_CLKTCK: usize = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let from_auxv = fs::read("/proc/self/auxv").ok().and_then(|auxv| {
        auxv.chunks_exact(2 * WORD).find_map(|entry| {
            let word = |i: usize| {
                usize::from_ne_bytes(entry[i * WORD..(i + 1) * WORD].try_into().expect("a word"))
            };
            (word(0) == AT_CLKTCK).then(|| word(1) as u64)
        })
    });
    from_auxv
        .or_else(|| probe("getconf", &["CLK_TCK"]).and_then(|text| text.parse().ok()))
        .filter(|&ticks| ticks > 0)
        .expect("clock ticks per second, from /proc/self/auxv or `getconf CLK_TCK`")
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// True when two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    if fa.metadata().expect("stat").len() != fb.metadata().expect("stat").len() {
        return false;
    }
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    loop {
        let n = fa.read(&mut ba).expect("read a file to compare");
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).expect("read a file to compare");
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Encrypted sizes, from the plaintext size, for each tool's format.
fn expected_sealed_len(tool: Tool, plain: u64) -> u64 {
    let padded = (plain / 16 + 1) * 16;
    match tool {
        Tool::Ringcrypt(_) => sealed_len(plain, CHUNK_LOG2_DEFAULT),
        // "Salted__" and an 8-byte salt, then the padded ciphertext.
        Tool::Openssl => 16 + padded,
        // IV, padded ciphertext, HMAC-SHA256 tag.
        Tool::Python(_) => 16 + padded + 32,
    }
}

/// Fails the bench unless every output of a row exists with the size its format gives (and,
/// after decryption, the original's exact bytes), and `count_dir` holds exactly
/// `count_expected` files (no strays such as temp files). `pairs` are (plaintext, output).
fn verify(
    what: &str,
    op: Op,
    tool: Tool,
    pairs: &[(PathBuf, PathBuf)],
    count_dir: &Path,
    count_expected: usize,
) {
    for (plain, output) in pairs {
        let meta = fs::metadata(output).unwrap_or_else(|e| {
            panic!(
                "{what}: output {} is missing ({e}): the run is broken",
                output.display()
            )
        });
        let plain_len = fs::metadata(plain).expect("stat an input").len();
        match op {
            Op::Encrypt => assert_eq!(
                meta.len(),
                expected_sealed_len(tool, plain_len),
                "{what}: {} has the wrong size",
                output.display()
            ),
            Op::Decrypt => assert!(
                same_bytes(plain, output),
                "{what}: {} differs from {}",
                output.display(),
                plain.display()
            ),
        }
    }
    let (found, _) = count_files(count_dir, "");
    assert_eq!(
        found,
        count_expected,
        "{what}: {} holds {found} files, expected {count_expected}",
        count_dir.display()
    );
}

/// One timed row.
struct Row {
    shape: Shape,
    tool: Tool,
    op: Op,
    time: Duration,
    cpu: Cpu,
    /// The daemon's VmHWM in MiB, for the ringcrypt rows.
    rss: Option<f64>,
}

impl Row {
    fn mb_s(&self) -> f64 {
        self.shape.total_bytes() as f64 / self.time.as_secs_f64() / 1e6
    }

    fn busy_percent(&self, cores: usize) -> f64 {
        self.cpu.busy_percent(self.time, cores)
    }
}

/// One data set on disk, and the names every tool's outputs take under it.
struct DataSet<'b> {
    bench: &'b Bench,
    shape: Shape,
    label: String,
    root: PathBuf,
    /// The plaintext tree (for the big file, a directory holding it).
    input_dir: PathBuf,
    /// Where encrypted and decrypted sets go, except openssl's, which land next to the inputs.
    enc_dir: PathBuf,
    dec_dir: PathBuf,
    /// Paths of the plaintext files relative to `input_dir`; every layout mirrors them.
    rels: Vec<PathBuf>,
    inputs: Vec<PathBuf>,
}

impl<'b> DataSet<'b> {
    /// Writes the plaintext files and reads each once, so every timing finds them cached.
    fn create(bench: &'b Bench, shape: Shape, index: usize) -> DataSet<'b> {
        let label = shape.label();
        let root = bench.dir.join(format!("set-{index}"));
        let input_dir = root.join("in");
        fs::create_dir_all(&input_dir).expect("create the input directory");
        eprintln!("{label}: writing inputs");
        let rels: Vec<PathBuf> = (0..shape.files)
            .map(|i| match shape.set {
                Set::Big => PathBuf::from("big.bin"),
                _ => Path::new(&format!("d{:03}", i % shape.dirs)).join(format!("f{i:06}.bin")),
            })
            .collect();
        let inputs: Vec<PathBuf> = rels.iter().map(|rel| input_dir.join(rel)).collect();
        for (i, (rel, input)) in rels.iter().zip(&inputs).enumerate() {
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty())
                && i < shape.dirs
            {
                fs::create_dir_all(input_dir.join(parent)).expect("create an input directory");
            }
            write_input(input, shape.file_bytes, i as u64 + 1);
        }
        warm(&inputs);
        DataSet {
            bench,
            shape,
            label,
            enc_dir: root.join("enc"),
            dec_dir: root.join("dec"),
            root,
            input_dir,
            rels,
            inputs,
        }
    }

    /// Every data set but the big file is a tree of directories.
    fn is_tree(&self) -> bool {
        self.shape.set != Set::Big
    }

    /// `dir/<rel><suffix>` for each input.
    fn mirrored(&self, dir: &Path, suffix: &str) -> Vec<PathBuf> {
        self.rels
            .iter()
            .map(|rel| with_suffix(&dir.join(rel), suffix))
            .collect()
    }

    /// Each input paired with its output, for `verify`.
    fn pairs(&self, outputs: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
        self.inputs
            .iter()
            .cloned()
            .zip(outputs.iter().cloned())
            .collect()
    }

    fn row(&self, tool: Tool, op: Op, timed: &Timed, rss: Option<f64>) -> Row {
        Row {
            shape: self.shape,
            tool,
            op,
            time: timed.time,
            cpu: timed.cpu,
            rss,
        }
    }

    /// The real client through a fresh daemon per row, at both fsync settings. The encrypted
    /// set of the last encrypt row is the input of both decrypt rows, so it goes after them.
    fn ringcrypt(&self, rows: &mut Vec<Row>) {
        let tree = self.is_tree();
        let enc_paths = self.mirrored(&self.enc_dir, ".rcrypt");
        let dec_paths = self.mirrored(&self.dec_dir, "");
        for op in [Op::Encrypt, Op::Decrypt] {
            for fsync in [Fsync::Never, Fsync::Always] {
                let tool = Tool::Ringcrypt(fsync);
                let what = format!(
                    "{}, ringcrypt {} via ringcryptd, fsync {}",
                    self.label,
                    op.as_str(),
                    fsync.as_str()
                );
                eprintln!("{what}");
                let (src, dst, out_dir, outputs) = match (op, tree) {
                    (Op::Encrypt, true) => {
                        (&self.input_dir, &self.enc_dir, &self.enc_dir, &enc_paths)
                    }
                    (Op::Decrypt, true) => {
                        (&self.enc_dir, &self.dec_dir, &self.dec_dir, &dec_paths)
                    }
                    (Op::Encrypt, false) => {
                        (&self.inputs[0], &enc_paths[0], &self.enc_dir, &enc_paths)
                    }
                    (Op::Decrypt, false) => {
                        (&enc_paths[0], &dec_paths[0], &self.dec_dir, &dec_paths)
                    }
                };
                if op == Op::Decrypt && fsync == Fsync::Never {
                    warm(&enc_paths);
                }
                if !tree {
                    // The single-file client writes into an existing directory.
                    fs::create_dir_all(out_dir).expect("create the output directory");
                }
                let (timed, rss) = self.bench.with_daemon(fsync, |daemon| {
                    let mut cmd = Command::new(CLIENT_EXE);
                    cmd.arg("--socket").arg(&daemon.socket).arg(op.as_str());
                    if tree {
                        cmd.arg("-r");
                    }
                    cmd.arg(src).arg("-o").arg(dst).arg("--quiet");
                    self.bench.run(&mut cmd, Some(daemon.pid()))
                });
                verify(
                    &what,
                    op,
                    tool,
                    &self.pairs(outputs),
                    out_dir,
                    self.shape.files,
                );
                let keep = op == Op::Encrypt && fsync == Fsync::Always;
                if !keep {
                    fs::remove_dir_all(out_dir).expect("remove an output set");
                }
                rows.push(self.row(tool, op, &timed, rss));
            }
        }
        fs::remove_dir_all(&self.enc_dir).expect("remove the encrypted set");
    }

    /// openssl, one process per file: `find | xargs -P<cores>` over the trees, directly on
    /// the big file. Its outputs land next to the inputs, as that pipeline is written in
    /// practice: `F.enc`, then `F.enc.dec`.
    fn openssl(&self, rows: &mut Vec<Row>) {
        let cores = self.bench.cores;
        let enc_paths: Vec<PathBuf> = self.inputs.iter().map(|p| with_suffix(p, ".enc")).collect();
        let dec_paths: Vec<PathBuf> = enc_paths.iter().map(|p| with_suffix(p, ".dec")).collect();
        for op in [Op::Encrypt, Op::Decrypt] {
            let (command, pattern, suffix, srcs, outputs) = match op {
                Op::Encrypt => (OPENSSL_ENC, "*.bin", "enc", &self.inputs, &enc_paths),
                Op::Decrypt => (OPENSSL_DEC, "*.bin.enc", "dec", &enc_paths, &dec_paths),
            };
            let what = format!("{}, openssl {}", self.label, op.as_str());
            eprintln!("{what}");
            if op == Op::Decrypt {
                warm(&enc_paths);
            }
            let mut cmd = if self.is_tree() {
                let script = format!(
                    "find \"$1\" -type f -name '{pattern}' -print0 | xargs -0 -P{cores} -I{{}} \
                     {command} -in {{}} -out {{}}.{suffix}"
                );
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &script, "sh"]).arg(&self.input_dir);
                cmd
            } else {
                openssl_command(command, &srcs[0], &outputs[0])
            };
            let timed = self.bench.run(&mut cmd, None);
            // The plaintexts, their .enc files, and after decryption the .dec files.
            let expected = match op {
                Op::Encrypt => 2 * self.shape.files,
                Op::Decrypt => 3 * self.shape.files,
            };
            verify(
                &what,
                op,
                Tool::Openssl,
                &self.pairs(outputs),
                &self.input_dir,
                expected,
            );
            rows.push(self.row(Tool::Openssl, op, &timed, None));
        }
        for path in enc_paths.iter().chain(&dec_paths) {
            remove(path);
        }
    }

    /// The Python pool (benches/e2e_pool.py), mirroring the tree under enc/ and dec/: first
    /// with `pool.map`'s default chunksize, then with the tuned one.
    fn python(&self, rows: &mut Vec<Row>) {
        for chunksize in [Chunksize::Default, Chunksize::Tuned] {
            self.python_with(chunksize, rows);
        }
    }

    fn python_with(&self, chunksize: Chunksize, rows: &mut Vec<Row>) {
        let n = self.shape.files;
        let tool = Tool::Python(chunksize);
        let enc_paths = self.mirrored(&self.enc_dir, ".enc");
        let dec_paths = self.mirrored(&self.dec_dir, "");
        for op in [Op::Encrypt, Op::Decrypt] {
            let what = format!(
                "{}, python pool {}, chunksize {}",
                self.label,
                op.as_str(),
                chunksize.as_str()
            );
            eprintln!("{what}");
            // The script takes a directory, or a single file whose output goes into OUT.
            let (src, dst, outputs) = match (op, self.is_tree()) {
                (Op::Encrypt, true) => (&self.input_dir, &self.enc_dir, &enc_paths),
                (Op::Encrypt, false) => (&self.inputs[0], &self.enc_dir, &enc_paths),
                (Op::Decrypt, true) => (&self.enc_dir, &self.dec_dir, &dec_paths),
                (Op::Decrypt, false) => (&enc_paths[0], &self.dec_dir, &dec_paths),
            };
            if op == Op::Decrypt {
                warm(&enc_paths);
            }
            let timed = self.bench.run(
                Command::new("python3")
                    .arg(POOL_SCRIPT)
                    .arg(op.as_str())
                    .arg(src)
                    .arg(dst)
                    .arg(&self.bench.python_keys)
                    .arg(self.bench.cores.to_string())
                    .args(["--chunksize", chunksize.as_str()]),
                None,
            );
            assert_eq!(
                timed.stdout.trim(),
                format!("{n} {}", self.shape.total_bytes()),
                "{what}: the pool's count of files and bytes"
            );
            verify(&what, op, tool, &self.pairs(outputs), dst, n);
            if op == Op::Decrypt {
                fs::remove_dir_all(&self.dec_dir).expect("remove an output set");
            }
            rows.push(self.row(tool, op, &timed, None));
        }
        fs::remove_dir_all(&self.enc_dir).expect("remove the encrypted set");
    }

    fn remove(self) {
        fs::remove_dir_all(&self.root).expect("remove the data set");
    }
}

/// One data set: make it, time every tool in both directions, check and delete each output.
fn measure_set(bench: &Bench, shape: Shape, index: usize, rows: &mut Vec<Row>) {
    let set = DataSet::create(bench, shape, index);
    set.ringcrypt(rows);
    if bench.baselines {
        set.openssl(rows);
        if bench.python {
            set.python(rows);
        }
    }
    set.remove();
}

/// One core's rate through the library, in MB/s of plaintext: `Sealer::seal_full` (and
/// `Opener::open_full`) over `bytes` in 1 MiB batches of default-size records, best of
/// `SEAL_REPS` after one untimed warm-up (page faults, CPU feature detection, clock ramp).
fn library_rates(bytes: usize) -> (f64, f64) {
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let batch = SEAL_BATCH_BYTES / chunk * stride;
    let mut records = vec![0u8; bytes / chunk * stride];
    for (i, byte) in records.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31);
    }
    let mut best_seal = Duration::MAX;
    let mut header = None;
    for rep in 0..=SEAL_REPS {
        // A fresh sealer per repetition, so chunk indices start at 0 as in a real file; its
        // key derivation takes microseconds and stays outside the timing.
        let mut sealer = Sealer::new(&MASTER, CHUNK_LOG2_DEFAULT, SALT);
        let start = Instant::now();
        for group in records.chunks_mut(batch) {
            sealer.seal_full(group).expect("whole records");
        }
        let time = start.elapsed();
        black_box(&records);
        if rep > 0 {
            best_seal = best_seal.min(time);
        }
        header = Some(*sealer.header());
    }
    // Open what one fresh seal wrote: the repetitions above sealed the buffer repeatedly.
    let header = header.expect("at least one repetition");
    let mut sealed = records;
    for (i, byte) in sealed.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31);
    }
    let mut sealer = Sealer::new(&MASTER, CHUNK_LOG2_DEFAULT, SALT);
    sealer.seal_full(&mut sealed).expect("whole records");
    let mut opened = sealed.clone();
    let mut best_open = Duration::MAX;
    for rep in 0..=SEAL_REPS {
        opened.copy_from_slice(&sealed);
        let mut opener = Opener::new(&header, &MASTER).expect("header made by the sealer");
        let start = Instant::now();
        for group in opened.chunks_mut(batch) {
            opener.open_full(group).expect("records the sealer wrote");
        }
        let time = start.elapsed();
        black_box(&opened);
        if rep > 0 {
            best_open = best_open.min(time);
        }
    }
    let rate = |time: Duration| bytes as f64 / time.as_secs_f64() / 1e6;
    (rate(best_seal), rate(best_open))
}

/// Fresh AES and HMAC keys for the Python baseline, 64 random bytes in hex.
fn make_python_keys(dir: &Path) -> PathBuf {
    let mut hex = String::new();
    for _ in 0..2 {
        let key = ringcrypt::format::random_salt().expect("32 bytes from the OS CSPRNG");
        hex.extend(key.iter().map(|b| format!("{b:02x}")));
    }
    let path = dir.join("python-keys.hex");
    write_private(&path, hex.as_bytes());
    path
}

/// The first line of a command's stdout, or `None` when it cannot run or fails. Only for
/// version probes, which return at once.
fn probe(program: &str, args: &[&str]) -> Option<String> {
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

/// The row of one tool on one data set in one direction, from this run.
fn baseline(rows: &[Row], set: Set, op: Op, tool: Tool) -> Option<&Row> {
    rows.iter()
        .find(|row| row.shape.set == set && row.op == op && row.tool == tool)
}

fn ratio(rate: f64, base: Option<f64>) -> String {
    match base {
        Some(base) => {
            let ratio = rate / base;
            let digits = if ratio < 10.0 { 2 } else { 1 };
            format!("{:.digits$}x", floor_to(ratio, digits))
        }
        None => "-".to_string(),
    }
}

fn tool_name(tool: Tool, set: Set, cores: usize) -> String {
    match tool {
        Tool::Ringcrypt(_) => "ringcrypt -> ringcryptd".to_string(),
        Tool::Openssl if set == Set::Big => "openssl enc".to_string(),
        Tool::Openssl => format!("find | xargs -P{cores} openssl enc"),
        Tool::Python(Chunksize::Default) => format!("python pool({cores}), map default"),
        Tool::Python(Chunksize::Tuned) => format!("python pool({cores}), map chunksize tuned"),
    }
}

fn main() {
    let args = Args::parse();
    let all_sizes = if args.quick { QUICK } else { FULL };
    let shapes: Vec<Shape> = all_sizes
        .sets
        .into_iter()
        .filter(|shape| args.sets.contains(&shape.set))
        .collect();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let ticks = clock_ticks_per_second() as f64;

    // The library figure first, while nothing else of this bench runs.
    eprintln!(
        "library: seal and open {} MiB on one core, best of {SEAL_REPS}",
        all_sizes.seal_bytes >> 20
    );
    let (seal_mb_s, open_mb_s) = library_rates(all_sizes.seal_bytes);

    let scratch = Scratch::create(args.dir, "e2e");
    // The baselines' versions are asked only when they run, so `--no-baselines` works on a
    // machine without them.
    let python_version = args
        .baselines
        .then(|| {
            probe(
                "python3",
                &[
                    "-c",
                    "import sys, cryptography; print(sys.version.split()[0], \
                     cryptography.__version__)",
                ],
            )
        })
        .flatten();
    let openssl_version = args.baselines.then(|| {
        probe("openssl", &["version"]).expect("the openssl CLI runs (apt-get install openssl)")
    });
    let bench = Bench {
        keys: make_key_ring(&scratch.path),
        python_keys: make_python_keys(&scratch.path),
        dir: scratch.path.clone(),
        baselines: args.baselines,
        python: python_version.is_some(),
        cores,
        shards: args.shards,
        ticks,
        pong: RefCell::new(Value::Null),
        commands: RefCell::new(0),
    };
    let python_skipped = args.baselines && !bench.python;
    let python_note = "note: python pool skipped: `python3 -c 'import cryptography'` failed (pip \
                       install cryptography)";
    if python_skipped {
        eprintln!("{python_note}");
    }

    let started = Instant::now();
    let mut rows = Vec::new();
    for (index, shape) in shapes.iter().enumerate() {
        measure_set(&bench, *shape, index, &mut rows);
    }
    let elapsed = started.elapsed();

    let seal_ceiling = cores as f64 * seal_mb_s;
    let pong = bench.pong.borrow().clone();
    println!(
        "\nringcrypt end to end{}: ringcryptd {} with {} ({}), backend {}, {cores} cores",
        if args.quick { " (quick)" } else { "" },
        pong["version"].as_str().unwrap_or("?"),
        match pong["shards"].as_u64() {
            Some(1) => "1 shard".to_string(),
            Some(n) => format!("{n} shards"),
            None => "? shards".to_string(),
        },
        match args.shards {
            Some(n) => format!("--shards {n}"),
            None => "default: one per core".to_string(),
        },
        pong["backend"].as_str().unwrap_or("?"),
    );
    let set_names: Vec<String> = shapes.iter().map(Shape::label).collect();
    println!("data sets: {}", set_names.join(", "));
    println!("scratch: {}", scratch.note);
    match &openssl_version {
        Some(openssl) => println!(
            "baselines: {openssl}; python3 + cryptography {}",
            python_version.as_deref().unwrap_or("unavailable")
        ),
        None => println!("baselines: none (--no-baselines)"),
    }
    println!(
        "library on one core ({} MiB in 1 MiB batches, best of {SEAL_REPS}): Sealer::seal_full \
         {seal_mb_s:.0} MB/s, Opener::open_full {open_mb_s:.0} MB/s; {cores} x seal = \
         {seal_ceiling:.0} MB/s",
        all_sizes.seal_bytes >> 20
    );
    if let Some(shards) = args.shards.map(usize::from).filter(|&n| n < cores) {
        println!(
            "with --shards {shards} the shards can use at most {shards} of {cores} cores: \
             {shards} x seal = {:.0} MB/s",
            shards as f64 * seal_mb_s
        );
    }
    println!("measurements took {:.0} s\n", elapsed.as_secs_f64());

    results_table(&rows, cores, seal_ceiling).print();
    if python_skipped {
        println!("{python_note}");
    }
    println!(
        "\nMB/s = 10^6 plaintext bytes/s from spawning the command to its exit; files/s the same \
         for files. \"vs openssl\" and \"vs python\" divide by those tools' rate on the same data \
         set in the same direction in this run (openssl: `{OPENSSL_ENC}`, `-d` to decrypt, one \
         process per file, no MAC; python: the pool at `pool.map`'s default chunksize of 1). \
         \"of cores x seal\" is the share of {cores} x the library's one-core seal rate. A \
         fresh daemon per ringcrypt row: VmHWM is that row's peak RSS."
    );
    println!(
        "CPU, in CPU seconds over the timed span: \"daemon\" is the daemon's utime + stime from \
         /proc/PID/stat, exited threads included, split into its shard-* threads and the rest \
         (io+other = total - shards: the kernel's iou-wrk-* io_uring workers, live or exited, \
         and any other thread). \"client\" is everything the timed command ran, waited for: \
         the client; or sh, find, xargs and each openssl; or python and its workers. \"cores \
         busy\" = (daemon + client) / (seconds x {cores} cores)."
    );

    println!();
    let (targets, missed) = targets_table(&rows, cores, seal_ceiling);
    targets.print();
    for row in missed {
        println!("{}", cpu_picture(row, cores));
    }
    if shapes.len() < 3 {
        println!("note: --sets: the targets of the data sets not in this run are left out");
    }
    if args.quick {
        println!(
            "note: --quick sizes; the targets are meant for the full run (`cargo bench --bench e2e`)"
        );
    }
}

/// Below this share of the machine busy, a missed target is not for want of CPU.
const CPU_BOUND_PERCENT: f64 = 70.0;

/// One line on where a row that missed a target spent its CPU, so the table says why.
fn cpu_picture(row: &Row, cores: usize) -> String {
    let busy = row.busy_percent(cores);
    let mut daemon = String::new();
    // The share of the cores the daemon may use, when its shards are pinned to fewer than
    // all of them: one shard on a 2-core machine can keep its core saturated while the
    // machine as a whole reads half idle.
    let mut pinned = None;
    if let Some(d) = row.cpu.daemon {
        daemon = format!(
            "shards {:.2} core-s (user {:.2} + sys {:.2}), io+other {:.2} core-s (live io \
             workers {:.2} + other {:.2}), ",
            d.shards(),
            d.shard_user,
            d.shard_sys,
            d.io_other(),
            d.io_live,
            d.other()
        );
        if let Some(n) = d.pinned_cores.filter(|&n| n < cores) {
            pinned = Some((n, 100.0 * d.total / (row.time.as_secs_f64() * n as f64)));
        } else if row.shape.files == 1 {
            // One file is one job on one shard, and the kernel's io workers for that shard's
            // ring inherit its pinned core: the daemon can keep only that core busy.
            pinned = Some((1, 100.0 * d.total / row.time.as_secs_f64()));
        }
    }
    let pinned_note = match pinned {
        Some((1, share)) if row.shape.files == 1 => format!(
            "; one file runs on one shard, whose io workers share its pinned core, which the \
             daemon kept {:.0}% busy",
            floor_to(share, 0)
        ),
        Some((n, share)) => format!(
            "; the shards and their io workers are pinned to {n} of {cores} cores, which the \
             daemon kept {:.0}% busy",
            floor_to(share, 0)
        ),
        None => String::new(),
    };
    let cpu_bound =
        busy >= CPU_BOUND_PERCENT || pinned.is_some_and(|(_, share)| share >= CPU_BOUND_PERCENT);
    let why = if !cpu_bound {
        "not CPU-bound: latency or a serial step"
    } else if busy >= CPU_BOUND_PERCENT {
        "CPU-bound; see docs/performance.md"
    } else {
        "CPU-bound on the pinned cores; see docs/performance.md"
    };
    format!(
        "{} {}: {:.2} s, cores busy {:.0}%: {daemon}client {:.2} core-s{pinned_note} — {why}",
        row.shape.label(),
        row.op.as_str(),
        row.time.as_secs_f64(),
        floor_to(busy, 0),
        row.cpu.client
    )
}

/// `x` rounded down to `digits` decimals. Figures are shown rounded down so that one just
/// short of a target (7.996x against 8x) never reads as reaching it.
fn floor_to(x: f64, digits: usize) -> f64 {
    let scale = 10f64.powi(digits as i32);
    (x * scale).floor() / scale
}

fn verdict(met: bool) -> String {
    if met { "met" } else { "NOT met" }.to_string()
}

/// The table of every row, with its rates, its ratios to the baselines of the same run, and
/// the CPU it used.
fn results_table(rows: &[Row], cores: usize, seal_ceiling: f64) -> Table {
    let mut table = Table::new(
        &[
            "data set",
            "tool",
            "op",
            "fsync",
            "seconds",
            "MB/s",
            "files/s",
            "daemon VmHWM",
            "vs openssl",
            "vs python",
            "of cores x seal",
            "daemon CPU s (shards / io+other)",
            "client CPU s",
            "cores busy %",
        ],
        4,
    );
    for row in rows {
        let set = row.shape.set;
        let base = |tool| baseline(rows, set, row.op, tool).map(Row::mb_s);
        let mb_s = row.mb_s();
        table.row(vec![
            row.shape.label(),
            tool_name(row.tool, set, cores),
            row.op.as_str().to_string(),
            match row.tool {
                Tool::Ringcrypt(fsync) => fsync.as_str().to_string(),
                Tool::Python(_) | Tool::Openssl => "-".to_string(),
            },
            format!("{:.3}", row.time.as_secs_f64()),
            // Small rates keep a decimal so the slow baselines do not read as zero.
            if mb_s < 10.0 {
                format!("{mb_s:.1}")
            } else {
                format!("{mb_s:.0}")
            },
            // A single file's files/s only restates its time.
            match set {
                Set::Big => "-".to_string(),
                _ => format!("{:.0}", row.shape.files as f64 / row.time.as_secs_f64()),
            },
            row.rss
                .map_or("-".to_string(), |mib| format!("{mib:.0} MiB")),
            ratio(mb_s, base(Tool::Openssl)),
            ratio(mb_s, base(Tool::Python(Chunksize::Default))),
            format!("{:.0}%", floor_to(100.0 * mb_s / seal_ceiling, 0)),
            row.cpu.daemon.map_or("-".to_string(), |d| {
                format!("{:.2} ({:.2} / {:.2})", d.total, d.shards(), d.io_other())
            }),
            format!("{:.2}", row.cpu.client),
            format!("{:.0}%", floor_to(row.busy_percent(cores), 0)),
        ]);
    }
    table
}

/// The issue's targets for the client through the daemon at `--fsync never`, each marked
/// met or NOT met with the numbers behind it, and the rows that missed one (each once, in
/// table order).
fn targets_table(rows: &[Row], cores: usize, seal_ceiling: f64) -> (Table, Vec<&Row>) {
    let mut targets = Table::new(
        &[
            "target (fsync never)",
            "needed",
            "measured",
            "verdict",
            "vs python chunksize tuned",
        ],
        1,
    );
    let mut missed: Vec<&Row> = Vec::new();
    for op in [Op::Encrypt, Op::Decrypt] {
        let ours = |set| baseline(rows, set, op, Tool::Ringcrypt(Fsync::Never));
        // Each target: the row held to it, whether it was met (`None` when there is nothing
        // to compare with), and the table's cells.
        let versus = |set: Set, tool: Tool, needed: f64| {
            let row = ours(set)?;
            let name = format!(
                "{} {}: vs {}",
                row.shape.label(),
                op.as_str(),
                tool_name(tool, set, cores)
            );
            // The Python target is set against the pool as people call it; the tuned pool's
            // ratio stands next to it so the comparison hides nothing.
            let tuned = match tool {
                Tool::Python(Chunksize::Default) => {
                    let base = baseline(rows, set, op, Tool::Python(Chunksize::Tuned));
                    ratio(row.mb_s(), base.map(Row::mb_s))
                }
                _ => "-".to_string(),
            };
            Some(match baseline(rows, set, op, tool) {
                Some(base) => {
                    let measured = row.mb_s() / base.mb_s();
                    let met = measured >= needed;
                    let cells = vec![
                        name,
                        format!(">= {needed}x"),
                        format!("{:.2}x", floor_to(measured, 2)),
                        verdict(met),
                        tuned,
                    ];
                    (row, Some(met), cells)
                }
                None => {
                    let cells = vec![
                        name,
                        format!(">= {needed}x"),
                        "-".to_string(),
                        "skipped: no baseline in this run".to_string(),
                        tuned,
                    ];
                    (row, None, cells)
                }
            })
        };
        let of_seal = |set: Set| {
            let row = ours(set)?;
            let needed = TARGET_MANY_OF_SEAL * seal_ceiling;
            let met = row.mb_s() >= needed;
            let cells = vec![
                format!(
                    "{} {}: of {cores} x seal ({seal_ceiling:.0} MB/s)",
                    row.shape.label(),
                    op.as_str()
                ),
                format!(">= {:.0}% = {needed:.0} MB/s", 100.0 * TARGET_MANY_OF_SEAL),
                format!(
                    "{:.0}% = {:.0} MB/s",
                    floor_to(100.0 * row.mb_s() / seal_ceiling, 0),
                    row.mb_s()
                ),
                verdict(met),
                "-".to_string(),
            ];
            Some((row, Some(met), cells))
        };
        let lines = [
            versus(Set::Many, Tool::Openssl, TARGET_MANY_VS_OPENSSL),
            of_seal(Set::Many),
            versus(Set::Small, Tool::Openssl, TARGET_SMALL_VS_OPENSSL),
            versus(
                Set::Small,
                Tool::Python(Chunksize::Default),
                TARGET_SMALL_VS_PYTHON,
            ),
            versus(Set::Big, Tool::Openssl, TARGET_BIG_VS_OPENSSL),
        ];
        for (row, met, cells) in lines.into_iter().flatten() {
            targets.row(cells);
            if met == Some(false) && !missed.iter().any(|seen| std::ptr::eq(*seen, row)) {
                missed.push(row);
            }
        }
    }
    (targets, missed)
}
