//! CPU accounting for the e2e bench, from /proc: the CPU of the timed command and its
//! descendants (this process's cutime + cstime), the daemon's CPU split into its shards, its
//! live io_uring workers and the rest, the cores its shards are pinned to, and the clock
//! tick rate the /proc figures are counted in.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::command::probe;

/// The CPU seconds of one row, from /proc: user + system time, counted in clock ticks.
#[derive(Clone, Copy)]
pub struct Cpu {
    /// The timed command with every descendant it waited for: the client; or sh, find, xargs
    /// and each openssl; or python with its pool's workers. The change in this process's
    /// cutime + cstime (/proc/self/stat fields 16 and 17) across the wait.
    pub client: f64,
    /// The daemon's, for the ringcrypt rows.
    pub daemon: Option<DaemonCpu>,
}

impl Cpu {
    fn all(&self) -> f64 {
        self.client + self.daemon.map_or(0.0, |d| d.total)
    }

    /// All CPU as a share of what the machine could give in the wall time, in percent.
    pub fn busy_percent(&self, wall: Duration, cores: usize) -> f64 {
        100.0 * self.all() / (wall.as_secs_f64() * cores as f64)
    }
}

/// The daemon's CPU over one command, the change between two `DaemonSnapshot`s.
#[derive(Clone, Copy)]
pub struct DaemonCpu {
    /// utime + stime of the whole process (/proc/PID/stat fields 14 and 15). The kernel
    /// keeps the time of threads that have exited in it, so it misses nothing.
    pub total: f64,
    /// Threads named `shard-*` (/proc/PID/task/TID/stat): user time, which is mostly the
    /// crypto, and system time, the syscalls the shards make themselves.
    pub shard_user: f64,
    pub shard_sys: f64,
    /// Threads named `iou-wrk-*` alive at the end of the command: the kernel's io_uring
    /// workers, which do what cannot complete inline (page-cache copies, opens, links).
    pub io_live: f64,
    /// How many CPUs the shards may run on (the union of their Cpus_allowed_list). The
    /// daemon pins each shard to a core, and the kernel starts a ring's io workers with the
    /// affinity of the thread that owns the ring, so with fewer shards than cores the daemon
    /// cannot use the whole machine, however busy it is.
    pub pinned_cores: Option<usize>,
}

impl DaemonCpu {
    pub fn between(before: &DaemonSnapshot, after: &DaemonSnapshot, ticks: f64) -> DaemonCpu {
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

    pub fn shards(&self) -> f64 {
        self.shard_user + self.shard_sys
    }

    /// total − shards: the io_uring workers, including those that exited during the command
    /// (the kernel retires idle ones, and a thread gone by the second snapshot cannot be read
    /// on its own), and every other thread of the daemon. Never below zero, since the process
    /// and its threads are read at slightly different instants.
    pub fn io_other(&self) -> f64 {
        (self.total - self.shards()).max(0.0)
    }

    /// total − shards − live io workers: the daemon's other threads, plus io workers that
    /// exited during the command.
    pub fn other(&self) -> f64 {
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
pub struct DaemonSnapshot {
    total: u64,
    threads: HashMap<u32, ProcStat>,
    /// The CPUs any shard may run on; `None` when a status file could not be read.
    shard_cpus: Option<Vec<usize>>,
}

impl DaemonSnapshot {
    pub fn take(pid: u32) -> DaemonSnapshot {
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
pub fn children_ticks() -> u64 {
    let stat = ProcStat::read(Path::new("/proc/self/stat")).expect("read /proc/self/stat");
    stat.cutime + stat.cstime
}

/// The kernel's USER_HZ, the unit of the times in /proc stat files: the AT_CLKTCK entry (17)
/// of this process's auxiliary vector, which is where sysconf(_SC_CLK_TCK) and
/// `rustix::param::clock_ticks_per_second` read it too. Reading /proc/self/auxv keeps the
/// bench free of unsafe code without the rustix `param` feature, which the crate does not
/// enable; `getconf CLK_TCK` is asked only when the vector cannot be read.
pub fn clock_ticks_per_second() -> u64 {
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
