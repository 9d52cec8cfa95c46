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
//!
//! Layout: this file reads the options and runs the parent process; `counting` is the
//! counting allocator and its sampler; `daemon` starts the in-process daemon; `scenarios`
//! is the measuring child, which makes the inputs and runs the scenarios in order;
//! `measure` encodes a round's requests, runs it inside a measured window and prints the
//! table; `sites` groups the sampled backtraces into call sites. What the daemon benches
//! share (scratch directory, inputs, the plain-text table) is in `benches/support/`, and the
//! allocation-free client is `tests/support/quiet_client.rs`, which `tests/allocs.rs` uses
//! too.

#![deny(unsafe_code)]

#[path = "../../tests/support/quiet_client.rs"]
mod quiet_client;
#[path = "../support/mod.rs"]
mod support;

mod counting;
mod daemon;
mod measure;
mod scenarios;
mod sites;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use scenarios::child;
use support::Scratch;

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
