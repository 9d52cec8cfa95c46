//! The kernel's floor: what the file work the daemon does per file, and per MiB, costs in
//! the kernel alone, with no crypto and no daemon around it, on this machine
//! (docs/performance.md, "The kernel's floor, measured").
//!
//! A plain bench binary (`harness = false`): `cargo bench --bench kernel_floor -- --dir
//! /dev/shm` prints markdown tables and asserts nothing about speed. It makes its own data
//! under `--dir` (default `/dev/shm`) in a scratch directory it removes at the end.
//!
//! Per file, over 20,000 inputs of 4 KiB in 200 directories of 100, each variant does the
//! daemon's file work for an encrypt minus the crypto: open the input (`openat2` relative to
//! its held directory, `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), `fstat`, read 4 KiB,
//! `close`, `getrandom` 16 bytes, create the output with `O_TMPFILE` in its held output
//! directory, write a 64-byte header and a 4208-byte body of fixed bytes, `futimens`,
//! `linkat(fd, "", dir, name, AT_EMPTY_PATH)`, `close`:
//!
//! - `sync-syscalls`: all of it as plain blocking syscalls;
//! - `sync-one-write`: the same with header and body in one write;
//! - `uring-unlinked`: the output side through one io_uring as the daemon does it: `OPENAT`
//!   (`O_TMPFILE`), then the header `WRITE`, then the body `WRITE`, then (after an inline
//!   `futimens`) `LINKAT`, each submitted when the previous one completed, 16 files in flight;
//! - `uring-linked`: `OPENAT` into a direct descriptor (a sparse registered file table),
//!   linked (`IOSQE_IO_LINK`) to one `WRITE` of header and body through the fixed slot,
//!   linked to `FIXED_FD_INSTALL`, linked to the `CLOSE` of the slot; when the install
//!   completes, `futimens` inline and `LINKAT` by `AT_EMPTY_PATH` on the installed
//!   descriptor, then `close`. 16 files in flight. `LINKAT` cannot join the chain: it names
//!   the file by a plain descriptor whose number only the install's completion tells.
//! - the two io_uring variants again with `setup_single_issuer().setup_defer_taskrun()`.
//!
//! When `sync-syscalls` is measured, one more pass of it and `sync-one-write`, alternated
//! file by file, times every step on its own (median and mean wall time per step).
//!
//! Per MiB, over 1000 inputs of 1 MiB, each variant reads the input, creates, writes, stamps
//! and links a 64-byte header plus the 1 MiB (plain syscalls, one thread):
//!
//! - `read-write`: `read` into a 1 MiB buffer, `write` it out;
//! - `mmap-in-populate` / `mmap-in-faults`: the input mapped (`MAP_PRIVATE`, with or
//!   without `MAP_POPULATE`) and written out from the mapping;
//! - `mmap-out`: read into the buffer, the output `ftruncate`d, mapped `MAP_SHARED |
//!   MAP_POPULATE` and filled by a copy from the buffer;
//! - `mmap-both`: both mapped, one copy from mapping to mapping (where the cipher would
//!   write its output).
//!
//! CPU is the process's `getrusage(RUSAGE_SELF)` user + system time, which includes every
//! thread, io_uring's io-wq workers among them; wall time is also printed. Every variant
//! has one untimed warm-up pass, then `--runs` (3) timed passes, the variants alternated
//! (A B C A B C ...) so a noisy machine hurts them alike; the median and the min and max are
//! printed. Outputs go to a separate tree, removed (untimed) after each pass; the held
//! input and output directories are opened before the clock starts. The process is pinned to
//! one CPU (`--cpu`, default the one it starts on), as a daemon shard is.
//!
//! Options: `--dir PATH`, `--runs N`, `--cpu N`, `--only NAME,NAME` (variants by name),
//! `--quick` (or `RINGCRYPT_BENCH_QUICK=1`: 2000 files and 100 MiB, one timed run); other
//! arguments, such as the `--bench` that `cargo bench` passes, are ignored.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::time::Timespec;

/// Input directories of the per-file set; with `FILES_PER_DIR` the daemon bench's tree shape.
const SMALL_DIRS: usize = 200;
/// Files per directory, in both sets.
const FILES_PER_DIR: usize = 100;
/// Directories of the per-file set with `--quick`.
const QUICK_SMALL_DIRS: usize = 20;
/// Bytes of each per-file input: one page.
const SMALL_IN_BYTES: usize = 4096;
/// The RCRYPT v1 header the daemon writes first.
const HEADER_BYTES: usize = 64;
/// The body written after the header: a 4 KiB file's sealed bytes, rounded up (two pages
/// with the header, as the real output).
const BODY_BYTES: usize = 4208;
/// Header and body in one buffer, for the one-write variants.
const SEALED_BYTES: usize = HEADER_BYTES + BODY_BYTES;
/// Files in flight on the ring, as a daemon shard keeps them.
const IN_FLIGHT: usize = 16;
/// Slots of the sparse registered file table of the linked variant.
const FIXED_SLOTS: u32 = 64;
/// Submission queue entries: 16 files of at most 4 linked entries each, twice over.
const RING_ENTRIES: u32 = 128;
/// Directories of the per-MiB set (10 × 100 = 1000 files).
const MIB_DIRS: usize = 10;
/// Directories of the per-MiB set with `--quick` (100 files).
const QUICK_MIB_DIRS: usize = 1;
/// Bytes of each per-MiB input.
const MIB_BYTES: usize = 1 << 20;
/// Salt bytes drawn per file, as the daemon does for each output.
const SALT_BYTES: usize = 16;
/// Mode of every output file.
const OUT_MODE: u32 = 0o644;

/// `user_data` tags of the io_uring ops; the in-flight slot sits above them.
const TAG_OPEN: u64 = 1;
const TAG_HEADER: u64 = 2;
const TAG_BODY: u64 = 3;
const TAG_SEALED: u64 = 4;
const TAG_INSTALL: u64 = 5;
const TAG_CLOSE_FIXED: u64 = 6;
const TAG_LINK: u64 = 7;
const TAG_BITS: u32 = 8;

struct Config {
    dir: PathBuf,
    runs: usize,
    cpu: Option<usize>,
    only: Option<Vec<String>>,
    small_dirs: usize,
    mib_dirs: usize,
}

impl Config {
    fn from_args() -> Result<Config, String> {
        let quick_env = std::env::var("RINGCRYPT_BENCH_QUICK").is_ok_and(|v| v == "1");
        let mut config = Config {
            dir: PathBuf::from("/dev/shm"),
            runs: 3,
            cpu: None,
            only: None,
            small_dirs: SMALL_DIRS,
            mib_dirs: MIB_DIRS,
        };
        let mut quick = quick_env;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--dir" => config.dir = PathBuf::from(value("--dir")?),
                "--runs" => {
                    config.runs = value("--runs")?
                        .parse()
                        .map_err(|e| format!("--runs: {e}"))?;
                }
                "--cpu" => {
                    config.cpu = Some(value("--cpu")?.parse().map_err(|e| format!("--cpu: {e}"))?);
                }
                "--only" => {
                    let names = value("--only")?;
                    config.only = Some(names.split(',').map(str::to_owned).collect());
                }
                "--quick" => quick = true,
                _ => {}
            }
        }
        if quick {
            config.runs = 1;
            config.small_dirs = QUICK_SMALL_DIRS;
            config.mib_dirs = QUICK_MIB_DIRS;
        }
        if config.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        Ok(config)
    }

    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

fn main() {
    let config = match Config::from_args() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&config) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(config: &Config) -> io::Result<()> {
    let cpu = config.cpu.unwrap_or_else(rustix::thread::sched_getcpu);
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;

    let root = config
        .dir
        .join(format!("ringcrypt-kernel-floor-{}", std::process::id()));
    fs::create_dir(&root)?;
    let result = run_in(config, &root, cpu);
    let cleanup = fs::remove_dir_all(&root);
    result?;
    cleanup
}

fn run_in(config: &Config, root: &Path, cpu: usize) -> io::Result<()> {
    println!(
        "kernel floor under {} ({}), pinned to CPU {cpu}, {} timed runs per variant after one warm-up, alternated",
        config.dir.display(),
        fs_type(&config.dir),
        config.runs
    );
    println!("load average at start: {}", load_average());

    let small: Vec<SmallVariant> = SmallVariant::ALL
        .into_iter()
        .filter(|v| config.wants(v.name()))
        .collect();
    if !small.is_empty() {
        let set = SmallSet::create(root, config.small_dirs)?;
        let mut rings = small
            .iter()
            .map(|v| v.ring())
            .collect::<io::Result<Vec<_>>>()?;
        let mut samples = vec![Vec::new(); small.len()];
        for run in 0..=config.runs {
            for (i, variant) in small.iter().enumerate() {
                let out = set.prepare_outputs()?;
                let sample = measure(|| variant.pass(&set, &out, rings[i].as_mut()))?;
                drop(out);
                set.remove_outputs()?;
                if run > 0 {
                    samples[i].push(sample);
                }
            }
        }
        println!();
        println!(
            "per file: {} files of {SMALL_IN_BYTES} bytes in {} directories; output {HEADER_BYTES} + {BODY_BYTES} bytes",
            set.files(),
            set.dirs.len()
        );
        println!();
        println!(
            "| variant | CPU µs/file, median | min–max | user / sys µs | wall µs/file | context switches/file | io-wq threads after |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (variant, runs) in small.iter().zip(&samples) {
            let uring = matches!(variant, SmallVariant::Uring { .. });
            print_row(variant.name(), runs, set.files(), 1.0, "µs", uring);
        }
        if config.wants("sync-syscalls") {
            let out = set.prepare_outputs()?;
            let steps = sync_steps_pass(&set, &out)?;
            drop(out);
            set.remove_outputs()?;
            print_steps(&steps);
        }
        if let Some(cpus) = worker_cpus() {
            println!();
            println!("io-wq workers may run on CPUs {cpus}");
        }
        println!(
            "load average after the per-file variants: {}",
            load_average()
        );
    }

    let mib: Vec<MibVariant> = MibVariant::ALL
        .into_iter()
        .filter(|v| config.wants(v.name()))
        .collect();
    if !mib.is_empty() {
        let set = MibSet::create(root, config.mib_dirs)?;
        let mut buf = vec![0u8; MIB_BYTES];
        let mut samples = vec![Vec::new(); mib.len()];
        for run in 0..=config.runs {
            for (i, variant) in mib.iter().enumerate() {
                let out = set.prepare_outputs()?;
                let sample = measure(|| variant.pass(&set, &out, &mut buf))?;
                drop(out);
                set.remove_outputs()?;
                if run > 0 {
                    samples[i].push(sample);
                }
            }
        }
        println!();
        println!(
            "per MiB: {} files of 1 MiB in {} directories; output {HEADER_BYTES} + 1 MiB bytes",
            set.files(),
            set.dirs.len()
        );
        println!();
        println!(
            "| variant | CPU ms/MiB, median | min–max | user / sys ms | wall ms/MiB | context switches/MiB | io-wq threads after |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (variant, runs) in mib.iter().zip(&samples) {
            print_row(variant.name(), runs, set.files(), 1000.0, "ms", false);
        }
        println!(
            "load average after the per-MiB variants: {}",
            load_average()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measuring

/// One timed pass: CPU of all the process's threads, wall time, context switches, and the
/// io-wq worker threads alive at its end.
#[derive(Clone, Copy)]
struct Sample {
    user_us: f64,
    sys_us: f64,
    wall_us: f64,
    switches: f64,
    workers: usize,
}

impl Sample {
    fn cpu_us(&self) -> f64 {
        self.user_us + self.sys_us
    }
}

struct Usage {
    user_us: f64,
    sys_us: f64,
    switches: f64,
}

fn usage() -> io::Result<Usage> {
    let mut ru = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` points to writable memory of the size of a `rusage`, which getrusage
    // fills on success; it is read only after the return value says so.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getrusage succeeded, so every field is written (and a zeroed rusage is valid).
    let ru = unsafe { ru.assume_init() };
    let micros = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
    Ok(Usage {
        user_us: micros(ru.ru_utime),
        sys_us: micros(ru.ru_stime),
        switches: (ru.ru_nvcsw + ru.ru_nivcsw) as f64,
    })
}

fn measure(pass: impl FnOnce() -> io::Result<()>) -> io::Result<Sample> {
    let before = usage()?;
    let start = Instant::now();
    pass()?;
    let wall_us = start.elapsed().as_secs_f64() * 1e6;
    let after = usage()?;
    Ok(Sample {
        user_us: after.user_us - before.user_us,
        sys_us: after.sys_us - before.sys_us,
        wall_us,
        switches: after.switches - before.switches,
        workers: io_workers(),
    })
}

/// The process's io-wq worker threads (`iou-wrk-PID`) alive now.
fn io_workers() -> usize {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("iou-wrk"))
        })
        .count()
}

/// The CPUs the first live io-wq worker may run on, if one is alive.
fn worker_cpus() -> Option<String> {
    let tasks = fs::read_dir("/proc/self/task").ok()?;
    tasks.filter_map(Result::ok).find_map(|task| {
        let comm = fs::read_to_string(task.path().join("comm")).ok()?;
        if !comm.starts_with("iou-wrk") {
            return None;
        }
        let status = fs::read_to_string(task.path().join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|s| s.trim().to_owned())
    })
}

/// One table row; `workers` says whether the io-wq thread count belongs to the variant
/// (the rings of the other variants keep theirs alive during the plain-syscall ones).
fn print_row(name: &str, runs: &[Sample], units: usize, scale: f64, unit: &str, workers: bool) {
    let per = |us: f64| us / units as f64 / scale;
    let mut cpu: Vec<f64> = runs.iter().map(|s| s.cpu_us()).collect();
    cpu.sort_by(f64::total_cmp);
    let median = median_by(runs, Sample::cpu_us);
    let fmt = |v: f64| {
        if unit == "µs" {
            format!("{v:.1}")
        } else {
            format!("{v:.3}")
        }
    };
    println!(
        "| {name} | **{}** | {}–{} | {} / {} | {} | {:.2} | {} |",
        fmt(per(median.cpu_us())),
        fmt(per(cpu[0])),
        fmt(per(cpu[cpu.len() - 1])),
        fmt(per(median.user_us)),
        fmt(per(median.sys_us)),
        fmt(per(median.wall_us)),
        median.switches / units as f64,
        if workers {
            median.workers.to_string()
        } else {
            "–".into()
        }
    );
}

/// The sample whose `key` is the median of the runs (the lower middle one for an even count).
fn median_by(runs: &[Sample], key: fn(&Sample) -> f64) -> Sample {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[(sorted.len() - 1) / 2]
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn fs_type(dir: &Path) -> String {
    match rustix::fs::statfs(dir) {
        Ok(st) if st.f_type == libc::TMPFS_MAGIC => "tmpfs".into(),
        Ok(st) if st.f_type == libc::EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(st) => format!("filesystem magic {:#x}", st.f_type),
        Err(_) => "?".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Data sets

/// Fixed, random-looking bytes (a xorshift stream): the figures do not depend on values.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn dir_name(d: usize) -> String {
    format!("d{d:03}")
}

/// The names `f000`..`f099`, shared by inputs and outputs (they live in separate trees).
fn file_names() -> Vec<CString> {
    (0..FILES_PER_DIR)
        .map(|f| CString::new(format!("f{f:03}")).expect("no NUL in a generated name"))
        .collect()
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A tree of inputs, made once, and its output tree, made and removed around every pass.
struct Tree {
    input: PathBuf,
    output: PathBuf,
    dirs: Vec<OwnedFd>,
    names: Vec<CString>,
}

impl Tree {
    fn create(root: &Path, label: &str, dirs: usize, file_bytes: usize) -> io::Result<Tree> {
        let input = root.join(format!("in-{label}"));
        let output = root.join(format!("out-{label}"));
        let names = file_names();
        let mut fds = Vec::with_capacity(dirs);
        for d in 0..dirs {
            let dir = input.join(dir_name(d));
            fs::create_dir_all(&dir)?;
            for (f, name) in names.iter().enumerate() {
                let data = pattern(file_bytes, (d * FILES_PER_DIR + f) as u64);
                fs::write(dir.join(name.to_str().expect("ASCII name")), data)?;
            }
            fds.push(open_dir(&dir)?);
        }
        Ok(Tree {
            input,
            output,
            dirs: fds,
            names,
        })
    }

    fn files(&self) -> usize {
        self.dirs.len() * FILES_PER_DIR
    }

    /// Makes the output directories and opens them, before the clock starts.
    fn prepare_outputs(&self) -> io::Result<Vec<OwnedFd>> {
        (0..self.dirs.len())
            .map(|d| {
                let dir = self.output.join(dir_name(d));
                fs::create_dir_all(&dir)?;
                open_dir(&dir)
            })
            .collect()
    }

    fn remove_outputs(&self) -> io::Result<()> {
        fs::remove_dir_all(&self.output)
    }

    /// The input directory, output directory and name of file number `i`.
    fn file<'a>(
        &'a self,
        out: &'a [OwnedFd],
        i: usize,
    ) -> (BorrowedFd<'a>, BorrowedFd<'a>, &'a CStr) {
        let d = i / FILES_PER_DIR;
        (
            self.dirs[d].as_fd(),
            out[d].as_fd(),
            &self.names[i % FILES_PER_DIR],
        )
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.output);
        let _ = fs::remove_dir_all(&self.input);
    }
}

/// The per-file set, with the fixed bytes every output gets.
struct SmallSet {
    tree: Tree,
    sealed: Box<[u8; SEALED_BYTES]>,
}

impl std::ops::Deref for SmallSet {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

impl SmallSet {
    fn create(root: &Path, dirs: usize) -> io::Result<SmallSet> {
        let mut sealed = Box::new([0u8; SEALED_BYTES]);
        sealed.copy_from_slice(&pattern(SEALED_BYTES, 0x5eed));
        Ok(SmallSet {
            tree: Tree::create(root, "small", dirs, SMALL_IN_BYTES)?,
            sealed,
        })
    }

    fn header(&self) -> &[u8] {
        &self.sealed[..HEADER_BYTES]
    }

    fn body(&self) -> &[u8] {
        &self.sealed[HEADER_BYTES..]
    }
}

/// The per-MiB set, with the fixed header every output gets.
struct MibSet {
    tree: Tree,
    header: [u8; HEADER_BYTES],
}

impl std::ops::Deref for MibSet {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

impl MibSet {
    fn create(root: &Path, dirs: usize) -> io::Result<MibSet> {
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&pattern(HEADER_BYTES, 0x5eed));
        Ok(MibSet {
            tree: Tree::create(root, "mib", dirs, MIB_BYTES)?,
            header,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The steps every variant shares

/// Opens an input as the daemon does: one component, beneath its held directory.
fn open_input(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?)
}

/// Reads all of `buf` from the start of `fd`.
fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = rustix::io::read(fd, &mut buf[done..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "input shorter than expected",
            ));
        }
        done += n;
    }
    Ok(())
}

fn write_full(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        done += rustix::io::write(fd, &buf[done..])?;
    }
    Ok(())
}

/// The daemon's salt for one output.
fn salt() -> io::Result<[u8; SALT_BYTES]> {
    let mut salt = [0u8; SALT_BYTES];
    // SAFETY: the pointer and length describe `salt`, writable for the call.
    let n = unsafe { libc::getrandom(salt.as_mut_ptr().cast(), SALT_BYTES, 0) };
    if n != SALT_BYTES as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(salt)
}

/// Creates an unnamed output; `readable` for a shared writable mapping, which needs it.
fn create_output(out_dir: BorrowedFd<'_>, readable: bool) -> io::Result<OwnedFd> {
    let access = if readable {
        OFlags::RDWR
    } else {
        OFlags::WRONLY
    };
    Ok(rustix::fs::openat(
        out_dir,
        c".",
        OFlags::TMPFILE | access | OFlags::CLOEXEC,
        Mode::from_raw_mode(OUT_MODE),
    )?)
}

/// The output's modification time is the input's; its access time is left alone.
fn stamp(fd: BorrowedFd<'_>, mtime: Timespec) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: mtime,
    };
    Ok(rustix::fs::futimens(fd, &times)?)
}

fn link(fd: BorrowedFd<'_>, out_dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        fd,
        c"",
        out_dir,
        name,
        AtFlags::EMPTY_PATH,
    )?)
}

fn mtime_of(fd: BorrowedFd<'_>) -> io::Result<(Timespec, usize)> {
    let st = rustix::fs::fstat(fd)?;
    let mtime = Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    };
    Ok((mtime, st.st_size as usize))
}

/// The input side of a 4 KiB file: open, `fstat`, read, close; then the salt.
fn small_input(in_dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<Timespec> {
    let fd = open_input(in_dir, name)?;
    let (mtime, len) = mtime_of(fd.as_fd())?;
    read_full(fd.as_fd(), &mut buf[..len])?;
    drop(fd);
    std::hint::black_box(salt()?);
    Ok(mtime)
}

// ---------------------------------------------------------------------------------------
// Per-file variants

#[derive(Clone, Copy)]
enum SmallVariant {
    SyncSyscalls,
    SyncOneWrite,
    Uring { linked: bool, defer: bool },
}

impl SmallVariant {
    const ALL: [SmallVariant; 6] = [
        SmallVariant::SyncSyscalls,
        SmallVariant::SyncOneWrite,
        SmallVariant::Uring {
            linked: false,
            defer: false,
        },
        SmallVariant::Uring {
            linked: true,
            defer: false,
        },
        SmallVariant::Uring {
            linked: false,
            defer: true,
        },
        SmallVariant::Uring {
            linked: true,
            defer: true,
        },
    ];

    fn name(&self) -> &'static str {
        match self {
            SmallVariant::SyncSyscalls => "sync-syscalls",
            SmallVariant::SyncOneWrite => "sync-one-write",
            SmallVariant::Uring {
                linked: false,
                defer: false,
            } => "uring-unlinked",
            SmallVariant::Uring {
                linked: true,
                defer: false,
            } => "uring-linked",
            SmallVariant::Uring {
                linked: false,
                defer: true,
            } => "uring-unlinked-defer",
            SmallVariant::Uring {
                linked: true,
                defer: true,
            } => "uring-linked-defer",
        }
    }

    /// The variant's ring, made once and kept across its passes, as a shard keeps its own.
    fn ring(&self) -> io::Result<Option<IoUring>> {
        let SmallVariant::Uring { linked, defer } = *self else {
            return Ok(None);
        };
        let mut builder = IoUring::builder();
        if defer {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        let ring = builder.build(RING_ENTRIES)?;
        if linked {
            ring.submitter().register_files_sparse(FIXED_SLOTS)?;
        }
        Ok(Some(ring))
    }

    fn pass(&self, set: &SmallSet, out: &[OwnedFd], ring: Option<&mut IoUring>) -> io::Result<()> {
        match (*self, ring) {
            (SmallVariant::SyncSyscalls, _) => sync_pass(set, out, false),
            (SmallVariant::SyncOneWrite, _) => sync_pass(set, out, true),
            (SmallVariant::Uring { linked, .. }, Some(ring)) => {
                UringPass::new(set, out, ring, linked).run()
            }
            (SmallVariant::Uring { .. }, None) => {
                unreachable!("an io_uring variant is given its ring")
            }
        }
    }
}

fn sync_pass(set: &SmallSet, out: &[OwnedFd], one_write: bool) -> io::Result<()> {
    let mut buf = [0u8; SMALL_IN_BYTES];
    for i in 0..set.files() {
        let (in_dir, out_dir, name) = set.file(out, i);
        let mtime = small_input(in_dir, name, &mut buf)?;
        let fd = create_output(out_dir, false)?;
        if one_write {
            write_full(fd.as_fd(), &set.sealed[..])?;
        } else {
            write_full(fd.as_fd(), set.header())?;
            write_full(fd.as_fd(), set.body())?;
        }
        stamp(fd.as_fd(), mtime)?;
        link(fd.as_fd(), out_dir, name)?;
    }
    Ok(())
}

/// The steps of `sync-syscalls`, in order, for the per-step table.
const STEPS: [&str; 12] = [
    "openat2 of the input",
    "fstat",
    "read 4 KiB",
    "close of the input",
    "getrandom 16 bytes",
    "open O_TMPFILE",
    "write header (64 bytes)",
    "write body (4208 bytes)",
    "write header and body in one (4272 bytes)",
    "futimens",
    "linkat AT_EMPTY_PATH",
    "close of the output",
];

/// `sync-syscalls` and `sync-one-write` once more, alternated file by file (even files write
/// twice, odd files once) so both see the same machine, with the wall time of each step
/// taken apart: per step, the nanoseconds of every file that took it. Pinned and
/// single-threaded, a step's wall time is its CPU time unless the thread was preempted,
/// which the median leaves out.
fn sync_steps_pass(set: &SmallSet, out: &[OwnedFd]) -> io::Result<Vec<Vec<u64>>> {
    let mut steps: Vec<Vec<u64>> = STEPS
        .iter()
        .map(|_| Vec::with_capacity(set.files()))
        .collect();
    let mut buf = [0u8; SMALL_IN_BYTES];
    for i in 0..set.files() {
        let one_write = i % 2 == 1;
        let (in_dir, out_dir, name) = set.file(out, i);
        let mut at = Instant::now();
        let mut lap = |step: usize| {
            let now = Instant::now();
            steps[step].push((now - at).as_nanos() as u64);
            at = now;
        };
        let input = open_input(in_dir, name)?;
        lap(0);
        let (mtime, len) = mtime_of(input.as_fd())?;
        lap(1);
        read_full(input.as_fd(), &mut buf[..len])?;
        lap(2);
        drop(input);
        lap(3);
        std::hint::black_box(salt()?);
        lap(4);
        let fd = create_output(out_dir, false)?;
        lap(5);
        if one_write {
            write_full(fd.as_fd(), &set.sealed[..])?;
            lap(8);
        } else {
            write_full(fd.as_fd(), set.header())?;
            lap(6);
            write_full(fd.as_fd(), set.body())?;
            lap(7);
        }
        stamp(fd.as_fd(), mtime)?;
        lap(9);
        link(fd.as_fd(), out_dir, name)?;
        lap(10);
        drop(fd);
        lap(11);
    }
    Ok(steps)
}

/// The median and mean of each step, in µs, or `None` for a step the pass did not take.
fn step_stats(times: &[u64]) -> Option<(f64, f64)> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let median = sorted[(sorted.len() - 1) / 2] as f64 / 1e3;
    let mean = sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1e3;
    Some((median, mean))
}

fn print_steps(steps: &[Vec<u64>]) {
    println!();
    println!(
        "sync-syscalls and sync-one-write taken apart: wall time per step, one extra pass over every file, the two alternated file by file"
    );
    println!();
    println!("| step | median µs | mean µs |");
    println!("| --- | --- | --- |");
    // Sums of medians and means of the steps every file takes, then of each way to write.
    let (mut common, mut two, mut one) = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0));
    for (i, (name, times)) in STEPS.iter().zip(steps).enumerate() {
        let Some((median, mean)) = step_stats(times) else {
            continue;
        };
        let sum = match i {
            6 | 7 => &mut two,
            8 => &mut one,
            _ => &mut common,
        };
        sum.0 += median;
        sum.1 += mean;
        println!("| {name} | {median:.2} | {mean:.2} |");
    }
    println!(
        "| all steps, two writes | {:.2} | {:.2} |",
        common.0 + two.0,
        common.1 + two.1
    );
    println!(
        "| all steps, one write | {:.2} | {:.2} |",
        common.0 + one.0,
        common.1 + one.1
    );
}

/// One in-flight file of an io_uring pass.
#[derive(Default)]
struct Slot {
    file: usize,
    mtime: Option<Timespec>,
    fd: Option<OwnedFd>,
    /// Ops submitted and not yet completed; the slot is free again at zero.
    pending: u32,
}

struct UringPass<'a> {
    set: &'a SmallSet,
    out: &'a [OwnedFd],
    ring: &'a mut IoUring,
    linked: bool,
    slots: Vec<Slot>,
    buf: [u8; SMALL_IN_BYTES],
}

fn user_data(slot: usize, tag: u64) -> u64 {
    ((slot as u64) << TAG_BITS) | tag
}

/// The result of a completion, or its error with the op named.
fn completed(res: i32, what: &str) -> io::Result<i32> {
    if res < 0 {
        let e = io::Error::from_raw_os_error(-res);
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(res)
}

impl<'a> UringPass<'a> {
    fn new(
        set: &'a SmallSet,
        out: &'a [OwnedFd],
        ring: &'a mut IoUring,
        linked: bool,
    ) -> UringPass<'a> {
        UringPass {
            set,
            out,
            ring,
            linked,
            slots: (0..IN_FLIGHT).map(|_| Slot::default()).collect(),
            buf: [0u8; SMALL_IN_BYTES],
        }
    }

    fn run(mut self) -> io::Result<()> {
        let total = self.set.files();
        let mut next = 0;
        let mut done = 0;
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(RING_ENTRIES as usize * 2);
        while done < total {
            for s in 0..IN_FLIGHT {
                if next < total && self.slots[s].pending == 0 {
                    self.start(s, next)?;
                    next += 1;
                }
            }
            self.ring.submit_and_wait(1)?;
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c: cqueue::Entry| (c.user_data(), c.result())),
            );
            for &(data, res) in &cqes {
                let slot = (data >> TAG_BITS) as usize;
                let tag = data & ((1 << TAG_BITS) - 1);
                self.slots[slot].pending -= 1;
                self.complete(slot, tag, res)?;
                if self.slots[slot].pending == 0 {
                    done += 1;
                }
            }
        }
        Ok(())
    }

    /// Pushes entries that must reach the kernel in one submission (a linked chain).
    fn push(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < entries.len() {
            self.ring.submit()?;
        }
        // SAFETY: every pointer in these entries stays valid until the op completes: the
        // names and the output bytes live in `self.set`, borrowed for the whole pass, and
        // the pass waits for every op's completion before it returns; no buffer the kernel
        // reads is written while an op is in flight. The descriptors the entries name are
        // held in `self.slots` or `self.out` until their ops complete.
        unsafe { self.ring.submission().push_multiple(entries) }
            .map_err(|_| io::Error::other("submission queue full"))?;
        self.slots[(entries[0].get_user_data() >> TAG_BITS) as usize].pending +=
            entries.len() as u32;
        Ok(())
    }

    fn start(&mut self, s: usize, file: usize) -> io::Result<()> {
        let (in_dir, out_dir, _) = self.set.file(self.out, file);
        let mtime = small_input(in_dir, &self.set.names[file % FILES_PER_DIR], &mut self.buf)?;
        self.slots[s].file = file;
        self.slots[s].mtime = Some(mtime);
        let out_fd = types::Fd(out_dir.as_raw_fd());
        let flags = libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC;
        if !self.linked {
            let open = opcode::OpenAt::new(out_fd, c".".as_ptr())
                .flags(flags)
                .mode(OUT_MODE)
                .build()
                .user_data(user_data(s, TAG_OPEN));
            return self.push(&[open]);
        }
        let fixed = types::Fixed(s as u32);
        let dest = types::DestinationSlot::try_from_slot_target(s as u32)
            .map_err(|_| io::Error::other("slot out of range"))?;
        let chain = [
            // A direct descriptor takes no O_CLOEXEC (the kernel refuses it): it is no
            // descriptor of the process until installed, and the install sets it.
            opcode::OpenAt::new(out_fd, c".".as_ptr())
                .flags(flags & !libc::O_CLOEXEC)
                .mode(OUT_MODE)
                .file_index(Some(dest))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(s, TAG_OPEN)),
            opcode::Write::new(fixed, self.set.sealed.as_ptr(), SEALED_BYTES as u32)
                .offset(0)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(s, TAG_SEALED)),
            opcode::FixedFdInstall::new(fixed, 0)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(s, TAG_INSTALL)),
            opcode::Close::new(fixed)
                .build()
                .user_data(user_data(s, TAG_CLOSE_FIXED)),
        ];
        self.push(&chain)
    }

    fn complete(&mut self, s: usize, tag: u64, res: i32) -> io::Result<()> {
        match tag {
            TAG_OPEN if self.linked => {
                completed(res, "OPENAT O_TMPFILE into a direct descriptor")?;
            }
            TAG_OPEN => {
                let fd = completed(res, "OPENAT O_TMPFILE")?;
                // SAFETY: the kernel just installed this descriptor for this op; nothing
                // else owns it.
                self.slots[s].fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                self.write(s, TAG_HEADER, 0, HEADER_BYTES)?;
            }
            TAG_HEADER => {
                expect_len(completed(res, "WRITE header")?, HEADER_BYTES)?;
                self.write(s, TAG_BODY, HEADER_BYTES, BODY_BYTES)?;
            }
            TAG_BODY => {
                expect_len(completed(res, "WRITE body")?, BODY_BYTES)?;
                self.stamp_and_link(s)?;
            }
            TAG_SEALED => {
                expect_len(
                    completed(res, "WRITE header and body (fixed)")?,
                    SEALED_BYTES,
                )?;
            }
            TAG_INSTALL => {
                let fd = completed(res, "FIXED_FD_INSTALL")?;
                // SAFETY: the kernel just installed this descriptor for this op; nothing
                // else owns it.
                self.slots[s].fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                self.stamp_and_link(s)?;
            }
            TAG_CLOSE_FIXED => {
                completed(res, "CLOSE of the fixed slot")?;
            }
            TAG_LINK => {
                completed(res, "LINKAT")?;
                self.slots[s].fd = None;
            }
            _ => unreachable!("every tag pushed is handled"),
        }
        Ok(())
    }

    fn write(&mut self, s: usize, tag: u64, at: usize, len: usize) -> io::Result<()> {
        let fd = self.slots[s]
            .fd
            .as_ref()
            .expect("a write follows the open")
            .as_raw_fd();
        let entry = opcode::Write::new(types::Fd(fd), self.set.sealed[at..].as_ptr(), len as u32)
            .offset(at as u64)
            .build()
            .user_data(user_data(s, tag));
        self.push(&[entry])
    }

    fn stamp_and_link(&mut self, s: usize) -> io::Result<()> {
        let slot = &self.slots[s];
        let fd = slot.fd.as_ref().expect("the output is open").as_fd();
        stamp(fd, slot.mtime.expect("the input was read"))?;
        let (_, out_dir, name) = self.set.file(self.out, slot.file);
        let entry = opcode::LinkAt::new(
            types::Fd(fd.as_raw_fd()),
            c"".as_ptr(),
            types::Fd(out_dir.as_raw_fd()),
            name.as_ptr(),
        )
        .flags(libc::AT_EMPTY_PATH)
        .build()
        .user_data(user_data(s, TAG_LINK));
        self.push(&[entry])
    }
}

fn expect_len(got: i32, want: usize) -> io::Result<()> {
    if got as usize != want {
        return Err(io::Error::other(format!(
            "short write: {got} of {want} bytes"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Per-MiB variants

#[derive(Clone, Copy)]
enum MibVariant {
    ReadWrite,
    MmapInPopulate,
    MmapInFaults,
    MmapOut,
    MmapBoth,
}

impl MibVariant {
    const ALL: [MibVariant; 5] = [
        MibVariant::ReadWrite,
        MibVariant::MmapInPopulate,
        MibVariant::MmapInFaults,
        MibVariant::MmapOut,
        MibVariant::MmapBoth,
    ];

    fn name(&self) -> &'static str {
        match self {
            MibVariant::ReadWrite => "read-write",
            MibVariant::MmapInPopulate => "mmap-in-populate",
            MibVariant::MmapInFaults => "mmap-in-faults",
            MibVariant::MmapOut => "mmap-out",
            MibVariant::MmapBoth => "mmap-both",
        }
    }

    fn maps_input(&self) -> Option<MapFlags> {
        match self {
            MibVariant::MmapInPopulate | MibVariant::MmapBoth => {
                Some(MapFlags::PRIVATE | MapFlags::POPULATE)
            }
            MibVariant::MmapInFaults => Some(MapFlags::PRIVATE),
            MibVariant::ReadWrite | MibVariant::MmapOut => None,
        }
    }

    fn maps_output(&self) -> bool {
        matches!(self, MibVariant::MmapOut | MibVariant::MmapBoth)
    }

    fn pass(&self, set: &MibSet, out: &[OwnedFd], buf: &mut [u8]) -> io::Result<()> {
        for i in 0..set.files() {
            let (in_dir, out_dir, name) = set.file(out, i);
            let input = open_input(in_dir, name)?;
            let (mtime, len) = mtime_of(input.as_fd())?;
            let data: Mapping;
            let plain: &[u8] = match self.maps_input() {
                Some(flags) => {
                    data = Mapping::new(input.as_fd(), len, ProtFlags::READ, flags)?;
                    data.bytes()
                }
                None => {
                    read_full(input.as_fd(), &mut buf[..len])?;
                    &buf[..len]
                }
            };
            drop(input);
            std::hint::black_box(salt()?);
            let fd = create_output(out_dir, self.maps_output())?;
            if self.maps_output() {
                let total = HEADER_BYTES + len;
                rustix::fs::ftruncate(&fd, total as u64)?;
                let mut dst = Mapping::new(
                    fd.as_fd(),
                    total,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED | MapFlags::POPULATE,
                )?;
                let dst = dst.bytes_mut();
                dst[..HEADER_BYTES].copy_from_slice(&set.header);
                dst[HEADER_BYTES..].copy_from_slice(plain);
            } else {
                write_full(fd.as_fd(), &set.header)?;
                write_full(fd.as_fd(), plain)?;
            }
            stamp(fd.as_fd(), mtime)?;
            link(fd.as_fd(), out_dir, name)?;
        }
        Ok(())
    }
}

/// A file mapping, unmapped when dropped.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: ProtFlags,
        flags: MapFlags,
    ) -> io::Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel picks aliases no Rust memory; the
        // file is the caller's and is not truncated while mapped, and the mapping lives
        // until `drop` unmaps it.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0)? };
        Ok(Mapping { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, valid until drop, which the borrow
        // of `self` outlives; nothing writes the (private, read-only) input through it.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` writable bytes (mapped with PROT_WRITE by the one
        // caller that asks for this), valid until drop, and borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are the mapping `new` made, unmapped once, here; no slice
        // of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}
