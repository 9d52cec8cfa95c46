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
//!
//! `measure` times a pass and prints the tables' rows; `data` makes the two data sets;
//! `syscalls` holds the steps every variant shares; `small_sync` lists the per-file variants
//! and runs the plain-syscall ones and the per-step pass; `small_uring` runs the io_uring
//! ones; `mib` runs the per-MiB variants.

mod data;
mod measure;
mod mib;
mod small_sync;
mod small_uring;
mod syscalls;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use data::{MibSet, SmallSet};
use measure::{fs_type, load_average, measure, print_row, rounds, worker_cpus};
use mib::MibVariant;
use small_sync::{SmallVariant, print_steps, sync_steps_pass};

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
        let samples = rounds(&small, config.runs, |i, variant| {
            let out = set.prepare_outputs()?;
            let sample = measure(|| variant.pass(&set, &out, rings[i].as_mut()))?;
            drop(out);
            set.remove_outputs()?;
            Ok(sample)
        })?;
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
        let samples = rounds(&mib, config.runs, |_, variant| {
            let out = set.prepare_outputs()?;
            let sample = measure(|| variant.pass(&set, &out, &mut buf))?;
            drop(out);
            set.remove_outputs()?;
            Ok(sample)
        })?;
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
