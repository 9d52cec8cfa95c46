//! Heap allocations per job in `ringcryptd`'s steady state, and where they come from.
//!
//! A plain bench binary (`harness = false`): `cargo bench --bench allocs` prints a table and a
//! list of allocation call sites, and asserts nothing about the figures. For call sites with
//! file and line (not only function names), build with line tables:
//! `CARGO_PROFILE_BENCH_DEBUG=line-tables-only cargo bench --bench allocs`.
//!
//! How it measures:
//!
//! - A counting `#[global_allocator]` wraps `std::alloc::System` and counts, in atomics,
//!   allocations, reallocations and bytes (requested by allocations, plus what reallocations
//!   grew by), for every thread of the process. While sampling is on it also captures a
//!   backtrace for about one allocation or reallocation in N (a pseudo-random choice, so a
//!   fixed per-job pattern of allocations cannot line up with N); a thread-local guard keeps
//!   the capture's own allocations out of the counters and out of the sampler.
//! - The daemon runs in this process: `ringcrypt::daemon::run` on its own thread, configured
//!   through `Args::parse_from` with a socket, a fresh 0600 key ring, the scratch directory as
//!   the only allowed root, `--fsync never` and `--metrics off` (no recorder, no HTTP thread).
//!   Outside systemd (`NOTIFY_SOCKET`, `LISTEN_FDS` and `WATCHDOG_USEC` unset, which the bench
//!   ensures) `run` sends no notifications and inherits no socket; its signal handlers are
//!   installed but never fire. `run` does not return until SIGTERM, so the bench ends with
//!   `std::process::exit` once it has printed its figures.
//! - The bench re-executes itself once: the parent makes the scratch directory (under
//!   /dev/shm when it exists), starts the measuring child with the systemd variables removed
//!   and its stderr sent to a log file there (the daemon writes one audit line per request),
//!   prints that log's tail if the child fails, and removes the scratch directory.
//! - The client side is allocation-free inside the measured window: request lines are encoded
//!   before it with `protocol::encode_request`, as the `ringcrypt` client encodes them (a
//!   numeric id; `wait` left out, at its default, true), written with `write_all` (or
//!   `sendmsg` with two descriptors), and replies are read into a fixed buffer and split on
//!   `\n` in place. A thread-local count of the client thread's own allocations is printed
//!   next to every figure to show it stays 0, so each window's delta is the daemon's alone.
//! - Before and after each window the bench waits until the daemon is idle, and it measures
//!   the idle daemon for a second first, to show that nothing allocates in the background.
//!
//! The scenarios, in the order they run, each a warm-up and then 2,000 measured jobs,
//! sequential on one connection, each job's `done` read before the next is sent. The
//! warm-up is `FINISHED_JOBS_KEPT` x shards x 5/4 + 500 jobs: the steady state begins once
//! every shard's record of finished jobs is full (from then on a job that ends hands the
//! paths of the oldest record to the next request), the jobs spread over the shards by a hash
//! of their inputs (hence the quarter to spare), and every measured window is in it.
//!
//! 1. encrypt a 4 KiB file by path (2,000 distinct inputs, distinct outputs);
//! 2. encrypt a 1 MiB file by path (64 inputs in turn, distinct outputs);
//! 3. decrypt a 4 KiB file by path (the ciphertexts of 1.);
//! 4. encrypt a 4 KiB file by path with `overwrite: true` onto the existing outputs of 1.
//!    (the overwrite path links under a temp name, then renames);
//! 5. encrypt a 4 KiB file with `fds: true`: the input and an unnamed temp file in the output
//!    directory passed as descriptors, as the `ringcrypt` client sends single files (the
//!    bench closes the temp file after `done` instead of linking it: that is client work);
//! 6. one tree job (`recursive: true`) over a flat directory of 2,000 files of 4 KiB, after a
//!    warm-up tree of 500 files (at least `TREE_WINDOW`, so the paths of a whole window of
//!    files are waiting when the measured tree starts); figures are per file.
//!
//! Requests by path are what trees, scripts and the client's fallback (no `O_TMPFILE`) send.
//! Outputs of each round are removed before the next round. Then the 4 KiB encrypt round runs
//! once more with sampling on, and the 15 call sites with the most sampled allocations and
//! reallocations are printed: the innermost frame in this crate's `src/`, the callee it
//! allocated through, and its most common callers in the crate, with estimates per job.
//!
//! Options: `--quick` (or `RINGCRYPT_BENCH_QUICK=1`) runs 400 jobs after a warm-up of 100 more
//! than the rings hold, and trees of 256 and 400 files; `--sample-tree` samples the tree
//! round (per file) instead of the 4 KiB encrypt round; `--shards N` passes `--shards N` to the daemon (default: one per core);
//! `--samples N` aims the sampler at about N backtraces (default 4,000; a number at least the
//! round's allocation count captures every one); `--sites N` prints N call sites instead of
//! 15; `--metrics` runs the daemon with its Prometheus recorder installed (on an ephemeral
//! port, never scraped) instead of `--metrics off`, as a production daemon runs by default.
//! Other arguments, such as the `--bench` that `cargo bench` passes, are ignored.

#![deny(unsafe_code)]

#[path = "../tests/support/quiet_client.rs"]
mod quiet_client;
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use quiet_client::Conn;
use ringcrypt::limits::FINISHED_JOBS_KEPT;
use ringcrypt::protocol::{self, FileJobSpec, FileOp, Request, RequestId};
use ringcrypt::tree_job::TREE_WINDOW;
use support::{KIB, MIB, Scratch, Table, write_input, write_private};

// ---- the counting allocator -------------------------------------------------------------

/// Counts every allocation of the process; see the module docs.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// 0: sampling off; N: capture a backtrace for about one allocation or reallocation in N.
static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);
/// Allocations seen while sampling is on: the input of the pseudo-random choice.
static SAMPLE_TICKET: AtomicU64 = AtomicU64::new(0);
/// The captured backtraces, each with whether it was a reallocation; resolved after the
/// window.
static SAMPLES: Mutex<Vec<(Backtrace, bool)>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread runs the allocator's own bookkeeping (a capture): allocations
    /// made then are neither counted nor sampled, so the hook cannot recurse.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// Allocations and reallocations made by this thread: the client's proof of silence.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

impl Counting {
    #[inline]
    fn record(new_bytes: usize, realloc: bool) {
        // A thread being torn down may have lost its thread-locals: count it, never sample.
        let in_hook = IN_HOOK.try_with(Cell::get).unwrap_or(false);
        if in_hook {
            return;
        }
        if realloc {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
        } else {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        BYTES.fetch_add(new_bytes as u64, Ordering::Relaxed);
        let _ = THREAD_ALLOCS.try_with(|n| n.set(n.get() + 1));
        let every = SAMPLE_EVERY.load(Ordering::Relaxed);
        if every != 0 {
            let ticket = SAMPLE_TICKET.fetch_add(1, Ordering::Relaxed);
            if splitmix64(ticket).is_multiple_of(every) {
                Self::sample(realloc);
            }
        }
    }

    #[cold]
    fn sample(realloc: bool) {
        if IN_HOOK
            .try_with(|guard| guard.replace(true))
            .unwrap_or(true)
        {
            return;
        }
        let trace = Backtrace::force_capture();
        SAMPLES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((trace, realloc));
        let _ = IN_HOOK.try_with(|guard| guard.set(false));
    }
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's pointer and layout unchanged,
// so `System`'s guarantees are this allocator's; the bookkeeping around the calls touches only
// atomics, const-initialized thread-locals without destructors, and (while sampling, behind
// the re-entrancy guard) a mutex-protected vector, none of which can unwind into the caller.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which
        // is `System::alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::record(layout.size(), false);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`: the caller's layout is valid for `System::alloc_zeroed`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::record(layout.size(), false);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`, as
        // the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`, and
        // `new_size` is valid for it, as the caller guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            Self::record(new_size.saturating_sub(layout.size()), true);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A well-mixed hash of a counter (SplitMix64's finalizer), for the sampler's choice.
fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The process-wide counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
}

impl Counts {
    fn now() -> Counts {
        Counts {
            allocs: ALLOCS.load(Ordering::SeqCst),
            reallocs: REALLOCS.load(Ordering::SeqCst),
            bytes: BYTES.load(Ordering::SeqCst),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            allocs: self.allocs - before.allocs,
            reallocs: self.reallocs - before.reallocs,
            bytes: self.bytes - before.bytes,
        }
    }
}

fn thread_allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}

// ---- options and scratch space ------------------------------------------------------------

/// Set in the measuring child's environment: the scratch directory the parent made.
const CHILD_ENV: &str = "RINGCRYPT_ALLOCS_SCRATCH";

/// systemd's variables: in-process, `run` would notify or take a socket through them.
const SYSTEMD_ENV: [&str; 7] = [
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "RINGCRYPT_SOCKET",
];

struct Options {
    warmup: usize,
    jobs: usize,
    shards: Option<String>,
    /// Run with the Prometheus recorder installed (an ephemeral port) instead of `off`.
    metrics: bool,
    samples: u64,
    sites: usize,
    quick: bool,
    /// Sample the call sites of the tree round instead of the 4 KiB encrypt round.
    sample_tree: bool,
}

impl Options {
    fn parse() -> Options {
        let mut quick = std::env::var("RINGCRYPT_BENCH_QUICK").is_ok_and(|v| v == "1");
        let mut shards = None;
        let mut metrics = false;
        let mut samples = 4000;
        let mut sites = 15;
        let mut sample_tree = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--metrics" => metrics = true,
                "--sample-tree" => sample_tree = true,
                "--shards" => shards = args.next(),
                "--samples" => {
                    samples = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .expect("--samples takes a positive number")
                }
                "--sites" => {
                    sites = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .expect("--sites takes a number")
                }
                _ => {}
            }
        }
        let (warmup, jobs) = if quick { (100, 400) } else { (500, 2000) };
        Options {
            warmup,
            jobs,
            shards,
            metrics,
            samples,
            sites,
            quick,
            sample_tree,
        }
    }
}

fn main() {
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => child(Options::parse(), PathBuf::from(dir)),
        None => parent(),
    }
}

/// Runs the measuring child with a clean environment and its stderr in a log file.
fn parent() {
    let scratch = Scratch::create(None, "allocs");
    let log_path = scratch.path.join("daemon.log");
    let log = fs::File::create(&log_path).expect("create the log");
    let mut cmd = Command::new(std::env::current_exe().expect("the bench's own path"));
    cmd.args(std::env::args_os().skip(1))
        .env(CHILD_ENV, &scratch.path)
        .stdin(Stdio::null())
        .stderr(log);
    for name in SYSTEMD_ENV {
        cmd.env_remove(name);
    }
    // Ctrl-C reaches the child too, whose in-process daemon drains and stops, so the child
    // fails and exits; this process stays to report that and remove the scratch directory.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, std::sync::Arc::new(AtomicBool::new(false)));
    }
    let status = cmd.status().expect("start the measuring process");
    if !status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "the measuring process failed ({status}); the last lines of its stderr:\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    drop(scratch);
    std::process::exit(status.code().unwrap_or(1));
}

// ---- inputs -------------------------------------------------------------------------------

/// 1 MiB inputs, used in turn: distinct enough to spread over the shards.
const BIG_INPUTS: usize = 64;

fn make_dir(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    path.to_path_buf()
}

/// Removes a round's outputs (files or a tree), so the next round writes fresh names.
fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        let result = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        result.unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

/// A fresh key ring, mode 0600, from the library's `keygen`.
fn make_key_ring(dir: &Path) -> PathBuf {
    let entry = ringcrypt::keys::keygen_entry("bench").expect("generate a key");
    let path = dir.join("keys.toml");
    write_private(&path, entry.as_bytes());
    path
}

/// How a file job names its files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// By path under the allowed root (trees, scripts, and the client's fallback).
    Path,
    /// By path, `overwrite: true`.
    Overwrite,
    /// A directory tree by path, `recursive: true`.
    Tree,
    /// `fds: true`: the input and an unnamed temp file passed as descriptors (what the
    /// `ringcrypt` client sends for single files).
    Passed,
}

/// One request line, encoded as the `ringcrypt` client encodes it (`protocol::encode_request`).
fn request_line(id: u64, op: FileOp, input: &Path, output: &Path, form: Form) -> Vec<u8> {
    let mut spec = FileJobSpec::new(op, input.to_path_buf(), output.to_path_buf());
    spec.recursive = form == Form::Tree;
    spec.overwrite = form == Form::Overwrite;
    spec.fds = form == Form::Passed;
    protocol::encode_request(Some(&RequestId::from(id)), &Request::File(spec)).into_bytes()
}

// ---- the client ---------------------------------------------------------------------------

/// How long a reply may take before the bench gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

// ---- measuring ----------------------------------------------------------------------------

/// How long the bench waits for the daemon to go idle around each window: longer than the
/// shards' 100 ms tick, so a job's tail (its metrics, its slot, the next admission) is done.
const SETTLE: Duration = Duration::from_millis(250);

/// One measured window.
struct Window {
    units: usize,
    counts: Counts,
    /// Allocations the client thread itself made inside the window (must be 0).
    client: u64,
    elapsed: Duration,
}

/// Runs `jobs` in order, each to its `done`, inside a measured window.
fn measure(conn: &mut Conn, jobs: &Jobs, units: usize) -> Window {
    thread::sleep(SETTLE);
    let client_before = thread_allocs();
    let before = Counts::now();
    let started = Instant::now();
    jobs.run(conn);
    let elapsed = started.elapsed();
    thread::sleep(SETTLE);
    let counts = Counts::now().since(before);
    let client = thread_allocs() - client_before;
    Window {
        units,
        counts,
        client,
        elapsed,
    }
}

/// A round of requests, encoded before the window: the lines, and for `fds: true` the
/// input paths to open and the directory to make the temp files in.
struct Jobs<'a> {
    lines: Vec<Vec<u8>>,
    /// What every job's `done` must contain.
    expect: &'a [u8],
    passed: Option<(Vec<PathBuf>, &'a Path)>,
}

impl Jobs<'_> {
    /// Runs the round, each job to its `done`. Allocation-free.
    fn run(&self, conn: &mut Conn) {
        match &self.passed {
            None => {
                for line in &self.lines {
                    conn.job(line, self.expect);
                }
            }
            Some((inputs, out_dir)) => {
                for (line, input) in self.lines.iter().zip(inputs) {
                    conn.job_passing(line, input, out_dir, self.expect);
                }
            }
        }
    }
}

struct Row {
    name: String,
    per: &'static str,
    window: Window,
}

fn per(value: u64, units: usize) -> f64 {
    value as f64 / units.max(1) as f64
}

fn print_table(rows: &[Row]) {
    let mut table = Table::new(
        &[
            "scenario",
            "per",
            "measured",
            "allocs/unit",
            "reallocs/unit",
            "bytes/unit",
            "client allocs",
            "us/unit",
        ],
        1,
    );
    for row in rows {
        let w = &row.window;
        table.row(vec![
            row.name.clone(),
            row.per.to_string(),
            w.units.to_string(),
            format!("{:.2}", per(w.counts.allocs, w.units)),
            format!("{:.2}", per(w.counts.reallocs, w.units)),
            format!("{:.0}", per(w.counts.bytes, w.units)),
            w.client.to_string(),
            format!(
                "{:.1}",
                w.elapsed.as_secs_f64() * 1e6 / w.units.max(1) as f64
            ),
        ]);
    }
    table.print_without_rule();
}

// ---- call sites ---------------------------------------------------------------------------

/// One frame of a resolved backtrace.
struct Frame {
    symbol: String,
    /// `src/file.rs:line` for frames in this crate, else the file as printed (if any).
    location: Option<String>,
}

/// Parses a `Backtrace`'s display (`  N: symbol` then `at file:line:col`).
fn frames(trace: &Backtrace) -> Vec<Frame> {
    let text = trace.to_string();
    let mut frames: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(at) = trimmed.strip_prefix("at ") {
            if let Some(frame) = frames.last_mut() {
                frame.location = Some(short_location(at));
            }
            continue;
        }
        let symbol = match trimmed.split_once(": ") {
            Some((index, symbol)) if index.bytes().all(|b| b.is_ascii_digit()) => symbol,
            // An inlined frame printed without a number of its own.
            _ => trimmed,
        };
        frames.push(Frame {
            symbol: strip_hash(symbol).to_string(),
            location: None,
        });
    }
    frames
}

/// `./src/job.rs:617:21` or `/abs/.../src/job.rs:617:21` as `src/job.rs:617`.
fn short_location(at: &str) -> String {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    let path = at
        .strip_prefix(manifest)
        .or_else(|| at.strip_prefix("./"))
        .unwrap_or(at);
    match path.rsplit_once(':') {
        Some((file_line, col)) if col.bytes().all(|b| b.is_ascii_digit()) => file_line.to_string(),
        _ => path.to_string(),
    }
}

/// Drops the `::h0123456789abcdef` suffix of a mangled-then-demangled symbol.
fn strip_hash(symbol: &str) -> &str {
    match symbol.rsplit_once("::h") {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => symbol,
    }
}

/// Whether a frame is this crate's code (its `src/`, not a dependency's or the bench's).
fn in_crate(frame: &Frame) -> bool {
    match &frame.location {
        Some(location) => location.starts_with("src/"),
        None => frame.symbol.starts_with("ringcrypt::") || frame.symbol.starts_with("<ringcrypt::"),
    }
}

fn describe(frame: &Frame) -> String {
    match &frame.location {
        Some(location) if location.starts_with("src/") => {
            format!("{location} ({})", frame.symbol)
        }
        _ => frame.symbol.clone(),
    }
}

/// Caller chains printed per call site.
const CALLER_CHAINS_SHOWN: usize = 3;

/// Call site statistics for one innermost crate frame.
#[derive(Default)]
struct Site {
    /// Sampled allocations and reallocations.
    allocs: u64,
    reallocs: u64,
    /// The frame the allocation went through just inside the site (a dependency or std).
    callees: HashMap<String, u64>,
    /// The next crate frames out (callers), as one string.
    callers: HashMap<String, u64>,
}

/// The `n` most common entries, most common first.
fn most_common(map: &HashMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut entries: Vec<(&str, u64)> = map.iter().map(|(k, &v)| (k.as_str(), v)).collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    entries.truncate(n);
    entries
}

impl Site {
    fn count(&self) -> u64 {
        self.allocs + self.reallocs
    }

    fn add(&mut self, realloc: bool) {
        if realloc {
            self.reallocs += 1;
        } else {
            self.allocs += 1;
        }
    }
}

/// Groups the samples by call site and prints the `top` most common. `events` is the
/// window's allocations plus reallocations, which the samples were drawn from.
fn print_sites(
    traces: &[(Backtrace, bool)],
    events: u64,
    (round, unit): (&str, &str),
    jobs: usize,
    top: usize,
) {
    let started = Instant::now();
    let mut sites: HashMap<String, Site> = HashMap::new();
    let mut with_lines = false;
    for (trace, realloc) in traces {
        let frames = frames(trace);
        with_lines |= frames
            .iter()
            .any(|f| f.location.as_deref().is_some_and(|l| l.starts_with("src/")));
        let Some(index) = frames.iter().position(in_crate) else {
            let site = sites
                .entry("(no frame in the ringcrypt crate)".to_string())
                .or_default();
            site.add(*realloc);
            continue;
        };
        let site = sites.entry(describe(&frames[index])).or_default();
        site.add(*realloc);
        if index > 0 {
            let callee = &frames[index - 1];
            *site.callees.entry(callee.symbol.clone()).or_default() += 1;
        }
        let callers: Vec<String> = frames[index + 1..]
            .iter()
            .filter(|f| in_crate(f))
            .take(3)
            .map(|f| match &f.location {
                Some(location) => location.clone(),
                None => f.symbol.clone(),
            })
            .collect();
        *site.callers.entry(callers.join(" < ")).or_default() += 1;
    }
    let total: u64 = sites.values().map(Site::count).sum();
    // Each sample stands for this many allocator calls of the window, per job.
    let scale = events as f64 / total.max(1) as f64 / jobs.max(1) as f64;
    let mut ranked: Vec<(&String, &Site)> = sites.iter().collect();
    ranked.sort_by(|a, b| b.1.count().cmp(&a.1.count()).then(a.0.cmp(b.0)));
    println!(
        "\nallocation call sites, {round}: {total} backtraces sampled from {events} \
         allocations and reallocations over {jobs} {unit}s (resolved in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "top {top} by count (allocations + reallocations), each at its innermost frame in the \
         ringcrypt crate, with the callee it allocated through and its most common callers in \
         the crate (innermost first); per-{unit} figures are estimates from the samples"
    );
    if !with_lines {
        println!(
            "note: no file:line information (no debug info); rerun with \
             CARGO_PROFILE_BENCH_DEBUG=line-tables-only for call sites by line"
        );
    }
    for (rank, (name, site)) in ranked.iter().take(top).enumerate() {
        let share = 100.0 * site.count() as f64 / total.max(1) as f64;
        println!(
            "{:>2}. {share:5.1}%  ~{:5.2} allocs + {:5.2} reallocs /{unit}  {name}",
            rank + 1,
            site.allocs as f64 * scale,
            site.reallocs as f64 * scale,
        );
        for (callee, n) in most_common(&site.callees, 1) {
            println!(
                "        via  {callee} ({:.0}%)",
                100.0 * n as f64 / site.count() as f64
            );
        }
        for (callers, n) in most_common(&site.callers, CALLER_CHAINS_SHOWN) {
            if !callers.is_empty() {
                println!(
                    "        from {callers} ({:.0}%)",
                    100.0 * n as f64 / site.count() as f64
                );
            }
        }
    }
    let shown: u64 = ranked.iter().take(top).map(|(_, s)| s.count()).sum();
    println!(
        "    (the top {top} hold {:.1}% of the samples; {} sites in all)",
        100.0 * shown as f64 / total.max(1) as f64,
        ranked.len()
    );
}

// ---- the run ------------------------------------------------------------------------------

/// Starts the daemon on its own thread and waits for its first `pong`.
fn start_daemon(scratch: &Path, keys: &Path, socket: &Path, opts: &Options) -> String {
    let mut argv: Vec<String> = vec!["ringcryptd".into()];
    let mut arg = |a: &str| argv.push(a.to_string());
    arg("--socket");
    arg(socket.to_str().expect("UTF-8 scratch path"));
    arg("--keys");
    arg(keys.to_str().expect("UTF-8 scratch path"));
    arg("--allow-root");
    arg(scratch.to_str().expect("UTF-8 scratch path"));
    arg("--fsync");
    arg("never");
    arg("--metrics");
    arg(if opts.metrics { "127.0.0.1:0" } else { "off" });
    if let Some(n) = &opts.shards {
        arg("--shards");
        arg(n);
    }
    let args = ringcrypt::daemon::Args::parse_from(&argv);
    let config = ringcrypt::daemon::Config::from_args(args).expect("a valid configuration");
    let failed = std::sync::Arc::new(AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&failed);
    thread::Builder::new()
        .name("ringcryptd".into())
        .spawn(move || {
            if let Err(err) = ringcrypt::daemon::run(config) {
                eprintln!("ringcryptd: error: {err}");
                flag.store(true, Ordering::SeqCst);
            }
        })
        .expect("start the daemon thread");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ping = b"{\"op\":\"ping\"}\n";
    while Instant::now() < deadline {
        assert!(
            !failed.load(Ordering::SeqCst),
            "the daemon did not start (see its stderr)"
        );
        if let Ok(mut conn) = Conn::connect(socket, REPLY_TIMEOUT) {
            let pong = conn.request_text(ping);
            if pong.starts_with("{\"type\":\"pong\"") {
                return pong;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("the daemon did not answer ping within 20 s");
}

/// A JSON field of the pong, for the header.
fn pong_field(pong: &str, name: &str) -> String {
    serde_json::from_str::<serde_json::Value>(pong)
        .ok()
        .and_then(|v| {
            v.get(name).map(|f| match f.as_str() {
                Some(text) => text.to_string(),
                None => f.to_string(),
            })
        })
        .unwrap_or_else(|| "?".into())
}

fn child(opts: Options, scratch: PathBuf) {
    let Options {
        warmup,
        jobs,
        samples,
        sites,
        quick,
        metrics,
        sample_tree,
        ..
    } = opts;
    // A warm-up tree of a whole window of files leaves that window's paths behind as spares.
    let tree_warm = warmup.max(TREE_WINDOW);
    let tree_files = jobs;
    println!("preparing inputs in {}", scratch.display());
    let keys = make_key_ring(&scratch);
    let small_dir = make_dir(&scratch.join("small"));
    let small: Vec<PathBuf> = (0..jobs)
        .map(|i| {
            let path = small_dir.join(format!("f{i:05}.bin"));
            write_input(&path, 4 * KIB, i as u64);
            path
        })
        .collect();
    let big_dir = make_dir(&scratch.join("big"));
    let big: Vec<PathBuf> = (0..BIG_INPUTS)
        .map(|i| {
            let path = big_dir.join(format!("b{i:02}.bin"));
            write_input(&path, MIB, 1_000_000 + i as u64);
            path
        })
        .collect();
    let tree_dirs = [("tree-warm", tree_warm), ("tree", tree_files)].map(|(name, n)| {
        let dir = make_dir(&scratch.join(name));
        for i in 0..n {
            write_input(
                &dir.join(format!("t{i:05}.bin")),
                4 * KIB,
                2_000_000 + i as u64,
            );
        }
        dir
    });
    let out_dir = make_dir(&scratch.join("out"));

    let socket = scratch.join("s.sock");
    let pong = start_daemon(&scratch, &keys, &socket, &opts);
    let shards: usize = pong_field(&pong, "shards")
        .parse()
        .expect("the pong gives the shard count");
    let base_warmup = warmup;
    let warmup = FINISHED_JOBS_KEPT * shards * 5 / 4 + base_warmup;
    println!(
        "warm-up: {warmup} jobs per scenario ({FINISHED_JOBS_KEPT} finished jobs kept per shard \
         x {shards} shards x 5/4 + {base_warmup}), so every window measures the steady state"
    );
    let mut conn = Conn::connect(&socket, REPLY_TIMEOUT).expect("connect to the daemon");

    // Ids go up across the whole run, as a client's do on one connection.
    let next_id = Cell::new(1u64);
    let id = || {
        next_id.set(next_id.get() + 1);
        next_id.get()
    };
    // `n` jobs of `op` on `inputs` in turn, outputs named `{tag}{i}{ext}` in `out`.
    let round = |op: FileOp, form: Form, inputs: &[PathBuf], n: usize, tag: &str, ext: &str| {
        let pairs: Vec<(PathBuf, PathBuf)> = (0..n)
            .map(|i| {
                let input = inputs[i % inputs.len()].clone();
                (input, out_dir.join(format!("{tag}{i:05}{ext}")))
            })
            .collect();
        let lines = pairs
            .iter()
            .map(|(input, output)| request_line(id(), op, input, output, form))
            .collect();
        let passed = (form == Form::Passed).then(|| {
            let inputs = pairs.iter().map(|(input, _)| input.clone()).collect();
            (inputs, out_dir.as_path())
        });
        let jobs = Jobs {
            lines,
            expect: b"\"files_ok\":1,",
            passed,
        };
        // Jobs on passed descriptors leave no output behind (the bench does not link it).
        let outputs = if form == Form::Passed {
            Vec::new()
        } else {
            pairs.into_iter().map(|(_, output)| output).collect()
        };
        (jobs, outputs)
    };

    // The idle daemon: nothing should allocate in the background.
    thread::sleep(Duration::from_millis(500));
    let before = Counts::now();
    thread::sleep(Duration::from_secs(1));
    let idle = Counts::now().since(before);

    let mut rows = Vec::new();
    // A scenario of single-file jobs: warm up, remove, measure; returns the measured outputs.
    let mut single = |name: &str, op: FileOp, form: Form, inputs: &[PathBuf], tag: &str, ext| {
        println!("{name}: {warmup} warm-up jobs, {jobs} measured");
        let (warm, warm_outputs) = round(op, form, inputs, warmup, &format!("w-{tag}"), ext);
        warm.run(&mut conn);
        remove_all(&warm_outputs);
        let (measured, outputs) = round(op, form, inputs, jobs, tag, ext);
        let window = measure(&mut conn, &measured, jobs);
        rows.push(Row {
            name: name.to_string(),
            per: "job",
            window,
        });
        outputs
    };

    // 1. encrypt 4 KiB; its ciphertexts are the inputs of 3. and the existing outputs of 4.
    let sealed = single(
        "encrypt 4 KiB",
        FileOp::Encrypt,
        Form::Path,
        &small,
        "enc4k-",
        ".rcrypt",
    );
    // 2. encrypt 1 MiB.
    let outputs = single(
        "encrypt 1 MiB",
        FileOp::Encrypt,
        Form::Path,
        &big,
        "enc1m-",
        ".rcrypt",
    );
    remove_all(&outputs);
    // 3. decrypt 4 KiB.
    let outputs = single(
        "decrypt 4 KiB",
        FileOp::Decrypt,
        Form::Path,
        &sealed,
        "dec4k-",
        ".bin",
    );
    remove_all(&outputs);
    // 4. encrypt 4 KiB with overwrite onto the outputs of 1. (the same names); the warm-up's
    // outputs are new names, written by the same temp-name-and-rename path.
    let overwritten = single(
        "encrypt 4 KiB, overwrite existing",
        FileOp::Encrypt,
        Form::Overwrite,
        &small,
        "enc4k-",
        ".rcrypt",
    );
    remove_all(&overwritten);
    // 5. encrypt 4 KiB with the files passed as descriptors.
    single(
        "encrypt 4 KiB, fds passed",
        FileOp::Encrypt,
        Form::Passed,
        &small,
        "fds-",
        ".rcrypt",
    );
    let enc4k_row = &rows[0].window;
    let enc4k_events = enc4k_row.counts.allocs + enc4k_row.counts.reallocs;

    // 6. a tree of 4 KiB files.
    println!("tree: a warm-up tree of {tree_warm} files, a measured tree of {tree_files}");
    let [tree_warm_dir, tree_dir] = &tree_dirs;
    for (dir, out, files, measured) in [
        (tree_warm_dir, "tree-warm-out", tree_warm, false),
        (tree_dir, "tree-out", tree_files, true),
    ] {
        let out = scratch.join(out);
        let expect = format!("\"files_ok\":{files},\"files_failed\":0,");
        let tree = Jobs {
            lines: vec![request_line(id(), FileOp::Encrypt, dir, &out, Form::Tree)],
            expect: expect.as_bytes(),
            passed: None,
        };
        if measured {
            rows.push(Row {
                name: format!("tree encrypt, {files} x 4 KiB (1 job)"),
                per: "file",
                window: measure(&mut conn, &tree, files),
            });
        } else {
            tree.run(&mut conn);
        }
        remove_all(std::slice::from_ref(&out));
    }

    // Call sites: the encrypt 4 KiB round again (same names, removed above), or the measured
    // tree again (its output removed above), sampled.
    let tree_row = &rows.last().expect("the tree row").window;
    let tree_expect = format!("\"files_ok\":{tree_files},\"files_failed\":0,");
    let (sampled_round, sampled_unit, events, (sampled_jobs, outputs)) = if sample_tree {
        let out = scratch.join("tree-out");
        let tree = Jobs {
            lines: vec![request_line(
                id(),
                FileOp::Encrypt,
                &tree_dirs[1],
                &out,
                Form::Tree,
            )],
            expect: tree_expect.as_bytes(),
            passed: None,
        };
        let events = tree_row.counts.allocs + tree_row.counts.reallocs;
        ("tree encrypt", "file", events, (tree, vec![out]))
    } else {
        let round = round(
            FileOp::Encrypt,
            Form::Path,
            &small,
            jobs,
            "enc4k-",
            ".rcrypt",
        );
        ("encrypt 4 KiB", "job", enc4k_events, round)
    };
    println!("{sampled_round} again, {jobs} {sampled_unit}s, sampling allocation call sites");
    let every = (events / samples).max(1);
    SAMPLES
        .lock()
        .expect("the sampler is not poisoned")
        .reserve(4 * samples as usize);
    thread::sleep(SETTLE);
    SAMPLE_TICKET.store(0, Ordering::SeqCst);
    SAMPLE_EVERY.store(every, Ordering::SeqCst);
    let sampled = measure(&mut conn, &sampled_jobs, jobs);
    SAMPLE_EVERY.store(0, Ordering::SeqCst);
    thread::sleep(SETTLE);
    let traces = std::mem::take(&mut *SAMPLES.lock().expect("the sampler is not poisoned"));
    remove_all(&outputs);

    println!(
        "\nringcrypt allocation bench{}: ringcryptd {} in-process, {} shards, {} backend, \
         --fsync never, {}; scratch on {}",
        if quick { " (quick)" } else { "" },
        pong_field(&pong, "version"),
        pong_field(&pong, "shards"),
        pong_field(&pong, "backend"),
        if metrics {
            "metrics on (Prometheus recorder, not scraped)"
        } else {
            "--metrics off"
        },
        scratch
            .parent()
            .map_or("?".into(), |p| p.display().to_string()),
    );
    println!(
        "idle daemon, 1 s: {} allocations, {} reallocations, {} bytes",
        idle.allocs, idle.reallocs, idle.bytes
    );
    println!(
        "counts are process-wide deltas over each measured window (warm-up of {warmup} jobs \
         excluded: every shard's record of finished jobs is full, the steady state); \
         \"client allocs\" is the bench's own thread inside the window\n"
    );
    print_table(&rows);
    println!(
        "\nbytes = bytes requested by allocations plus growth by reallocations; a realloc is not \
         counted as an allocation. us/unit is wall time with the sampler off, for orientation."
    );
    println!(
        "sampling round ({sampled_round}): {:.2} allocs/{sampled_unit}, {:.2} \
         reallocs/{sampled_unit} (client {}), a backtrace for about 1 in {every}",
        per(sampled.counts.allocs, jobs),
        per(sampled.counts.reallocs, jobs),
        sampled.client
    );
    let events = sampled.counts.allocs + sampled.counts.reallocs;
    print_sites(&traces, events, (sampled_round, sampled_unit), jobs, sites);
    std::io::stdout().flush().expect("flush stdout");
    // The daemon thread runs until SIGTERM; the figures are out, so end here.
    std::process::exit(0);
}
