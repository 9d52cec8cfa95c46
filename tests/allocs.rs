//! Regression test: once warm, a single-file job makes no heap allocation.
//!
//! `benches/allocs/` shows that in the steady state (every shard's record of finished jobs
//! full, so a job that ends hands the path buffers of the oldest record to the next request)
//! a single-file job costs 0 allocations. This test fails if that stops being true: for each
//! scenario it runs a window of [`JOBS`] jobs against a warm daemon and asserts that the
//! allocations plus reallocations of the whole process over the window stay within
//! [`JOBS`] / 20, so one allocation per job (or one every few jobs) fails it, while a rare
//! one-off growth of some buffer cannot make it flake.
//!
//! Scenarios, each a short warm-up of its own and then the window, sequential on one
//! connection, each job's `done` read before the next is sent: encrypt a 4 KiB file by path,
//! decrypt 4 KiB by path, encrypt by path with `overwrite: true` onto existing outputs (temp
//! name and rename), and encrypt with `fds: true` (input and an unnamed `O_TMPFILE` output
//! passed as descriptors; skipped where the file system has no `O_TMPFILE`).
//!
//! Why a child process: a counting `#[global_allocator]` sees every thread of the process,
//! and in the test harness's process other tests run on other threads and captured output
//! goes into growing buffers, any of which would land in the window. So the test
//! (`steady_state_allocations`) re-executes this binary to run only
//! `steady_state_allocations_child`, armed by [`CHILD_ENV`] (without it, that test returns at
//! once and passes), with `--nocapture --test-threads=1`, systemd's variables removed, and its
//! stderr (the daemon's audit lines) in a file. The child runs `ringcrypt::daemon::run`
//! in-process on a thread (`--shards 2 --fsync never --metrics off`), warms it up, measures,
//! prints one `ALLOCS` line per scenario and exits with `std::process::exit(0)` (the daemon
//! thread runs until SIGTERM). The parent parses those lines and asserts. The client side of
//! the child allocates nothing inside a window: request lines are encoded before it, replies
//! are read into a fixed buffer, and a thread-local count proves it (printed, asserted 0).

#![deny(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
#[path = "support/quiet_client.rs"]
mod quiet_client;
mod support;

use quiet_client::{Conn, tmpfile};
use ringcrypt::limits::FINISHED_JOBS_KEPT;
use ringcrypt::protocol::{self, FileJobSpec, FileOp, Request, RequestId};

// ---- the counting allocator -------------------------------------------------------------

/// Counts the allocations and reallocations of every thread of the process.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Allocations and reallocations made by this thread: the client's proof of silence.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

impl Counting {
    #[inline]
    fn record(realloc: bool) {
        if realloc {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
        } else {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // A thread being torn down may have lost its thread-locals: counted above anyway.
        let _ = THREAD_ALLOCS.try_with(|n| n.set(n.get() + 1));
    }
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's pointer and layout unchanged,
// so `System`'s guarantees are this allocator's; the bookkeeping around the calls touches only
// atomics and a const-initialized thread-local without a destructor, none of which allocates
// or can unwind into the caller.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which
        // is `System::alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::record(false);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`: the caller's layout is valid for `System::alloc_zeroed`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::record(false);
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
            Self::record(true);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---- the parameters -----------------------------------------------------------------------

/// Set in the child's environment: the scratch directory the parent made. Arms the child test.
const CHILD_ENV: &str = "RINGCRYPT_TEST_ALLOCS_CHILD";

/// The child test, run by name.
const CHILD_TEST: &str = "steady_state_allocations_child";

/// Variables the child must not inherit: systemd's (in-process, `run` would notify or take a
/// socket through them) and the daemon's own test hooks and settings.
const REMOVED_ENV: [&str; 12] = [
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "RINGCRYPT_SOCKET",
    "RINGCRYPT_BACKEND",
    "RINGCRYPT_FAILPOINT",
    "RINGCRYPT_TEST_NO_TMPFILE",
    "RINGCRYPT_TEST_HANG_SHARD",
    "RINGCRYPT_TEST_NO_LINK_BY_FD",
];

/// Shards of the daemon under test.
const SHARDS: usize = 2;

/// Jobs measured per scenario. Allowed: `JOBS / 20` allocations plus reallocations in all.
const JOBS: usize = 200;

/// Jobs each scenario runs (after the daemon-wide warm-up) before its window, so a buffer
/// that one kind of job uses and the others do not has grown before the window opens.
const SCENARIO_WARMUP: usize = 50;

/// Distinct 4 KiB inputs, used in turn. The owner shard of a job is a hash of its input path,
/// so many inputs spread the jobs over both shards.
const INPUTS: usize = 256;

/// Longest the parent waits for the child before killing it and failing (a debug build on
/// two cores takes about 10 s).
const CHILD_TIMEOUT: Duration = Duration::from_secs(55);

/// How long a reply may take before the child gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// What every measured job's `done` must say: one file done.
const ONE_FILE_DONE: &[u8] = b"\"files_ok\":1,";

/// How long the child waits around each window for the daemon to go idle: longer than the
/// shards' 100 ms tick, so a job's tail (metrics, its slot, the next admission) is done.
const SETTLE: Duration = Duration::from_millis(300);

/// Each request path is `{root}/p/{tag}{i:05}.bin` with a two-letter tag: every path of the
/// run has the same length, so a recycled path buffer always fits the next path and the
/// windows see no growth that a change of name length would cause.
fn name(dir: &Path, tag: &str, i: usize) -> PathBuf {
    assert_eq!(tag.len(), 2);
    dir.join(format!("{tag}{i:05}.bin"))
}

// ---- the parent ---------------------------------------------------------------------------

/// One `ALLOCS` line of the child.
struct Figures {
    scenario: String,
    jobs: u64,
    allocs: u64,
    reallocs: u64,
    done: u64,
    client: u64,
}

fn parse_line(line: &str) -> Option<Figures> {
    let mut words = line.strip_prefix("ALLOCS ")?.split_whitespace();
    let scenario = words.next()?.to_string();
    let mut number = || words.next()?.parse::<u64>().ok();
    Some(Figures {
        scenario,
        jobs: number()?,
        allocs: number()?,
        reallocs: number()?,
        done: number()?,
        client: number()?,
    })
}

#[test]
fn steady_state_allocations() {
    let dir = tempfile::tempdir().expect("make a temp directory");
    let base = fs::canonicalize(dir.path()).expect("canonicalize the temp directory");
    let stdout_path = base.join("child.out");
    let stderr_path = base.join("child.err");
    let scratch = base.join("scratch");
    fs::create_dir(&scratch).expect("make the scratch directory");

    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's own path"));
    cmd.args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &scratch)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("create the child's stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("create the child's stderr file"));
    for name in REMOVED_ENV {
        cmd.env_remove(name);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start the child");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if started.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let report = || {
        let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        // The daemon's audit lines (one per request) would bury a panic message.
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.starts_with("audit: "))
            .collect();
        format!(
            "child stdout:\n{stdout}\nlast lines of the child's stderr (audit lines left \
             out):\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    };
    let Some(status) = status else {
        panic!(
            "the child did not finish within {CHILD_TIMEOUT:?}\n{}",
            report()
        );
    };
    assert!(
        status.success(),
        "the child failed ({status})\n{}",
        report()
    );

    let figures: Vec<Figures> = stdout.lines().filter_map(parse_line).collect();
    let names: Vec<&str> = figures.iter().map(|f| f.scenario.as_str()).collect();
    for expected in ["encrypt-4k", "decrypt-4k", "encrypt-overwrite"] {
        assert!(
            names.contains(&expected),
            "no figures for {expected}\n{}",
            report()
        );
    }
    let mut failures = Vec::new();
    for f in &figures {
        let events = f.allocs + f.reallocs;
        let allowed = f.jobs / 20;
        let summary = format!(
            "{}: {} jobs, {} done, {} allocations + {} reallocations ({:.3} per job; allowed \
             {allowed} in all), client thread {}",
            f.scenario,
            f.jobs,
            f.done,
            f.allocs,
            f.reallocs,
            events as f64 / f.jobs.max(1) as f64,
            f.client
        );
        println!("{summary}");
        if f.jobs != JOBS as u64 || f.done != f.jobs || f.client != 0 || events > allowed {
            failures.push(summary);
        }
    }
    println!(
        "child ran in {:.1} s; its stdout:\n{stdout}",
        elapsed.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "the steady state allocates (or a window did not run as planned):\n{}\n\
         child stdout:\n{stdout}",
        failures.join("\n"),
    );
}

// ---- the child ----------------------------------------------------------------------------

/// Runs only in the child the parent starts; returns at once (and passes) otherwise.
#[test]
fn steady_state_allocations_child() {
    let Some(scratch) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    child(Path::new(&scratch));
    std::io::stdout().flush().expect("flush stdout");
    // The daemon thread runs until SIGTERM; the figures are out, so end here.
    std::process::exit(0);
}

fn child(scratch: &Path) {
    let started = Instant::now();
    let root = scratch.join("root");
    let dir = root.join("p");
    fs::create_dir_all(&dir).expect("make the file directory");
    let keys = scratch.join("keys.toml");
    let entry = ringcrypt::keys::keygen_entry("allocs").expect("generate a key");
    support::write_private(&keys, &entry);
    let inputs: Vec<PathBuf> = (0..INPUTS)
        .map(|i| {
            let path = name(&dir, "in", i);
            fs::write(&path, support::bytes(4096, i as u64)).expect("write an input");
            path
        })
        .collect();

    let socket = scratch.join("d.sock");
    start_daemon(&root, &keys, &socket);
    let mut conn = Conn::connect(&socket, REPLY_TIMEOUT).expect("connect to the daemon");
    let mut ids = 0u64;

    // The daemon-wide warm-up, as `benches/allocs/` computes it: every shard's record of
    // finished jobs must be full (FINISHED_JOBS_KEPT each) before a job's paths come from
    // recycled buffers; the jobs spread over the shards by a hash of their input paths, hence
    // a quarter to spare; and 500 more for the spare pools to gain some slack. The spread
    // depends on the temp directory's random name, so `stats` then confirms that every
    // shard has ended enough jobs, and tops the warm-up up if one has not. It runs once, not
    // before every scenario as in the bench: the records stay full from then on, so each
    // scenario needs only its short warm-up of its own. A debug build on two cores takes
    // about 5 s for these 3,060 jobs (10 s with both cores busy elsewhere).
    let warmup = FINISHED_JOBS_KEPT * SHARDS * 5 / 4 + 500;
    let warm_started = Instant::now();
    let round = |conn: &mut Conn, ids: &mut u64, from: usize, n: usize| {
        let lines: Vec<Vec<u8>> = (from..from + n)
            .map(|i| {
                let output = name(&dir, "wu", i);
                request_line(
                    ids,
                    FileOp::Encrypt,
                    &inputs[i % INPUTS],
                    &output,
                    Form::Path,
                )
            })
            .collect();
        for line in &lines {
            conn.job(line, ONE_FILE_DONE);
        }
        from + n
    };
    let mut warmed = round(&mut conn, &mut ids, 0, warmup);
    let need = FINISHED_JOBS_KEPT as u64 + 100;
    loop {
        let done = jobs_done_per_shard(&mut conn);
        assert_eq!(done.len(), SHARDS, "stats lists every shard");
        if done.iter().all(|&n| n >= need) {
            break;
        }
        assert!(
            warmed < 4 * warmup,
            "the jobs do not spread over the shards: {done:?}"
        );
        warmed = round(&mut conn, &mut ids, warmed, 250);
    }
    println!(
        "warm-up: {warmed} jobs in {:.1} s",
        warm_started.elapsed().as_secs_f64()
    );

    // encrypt 4 KiB by path, distinct new outputs (the ciphertexts for the next scenarios).
    let sealed: Vec<PathBuf> = (0..JOBS + SCENARIO_WARMUP)
        .map(|i| name(&dir, "ct", i))
        .collect();
    let plain = |i: usize| &inputs[i % INPUTS];
    let encrypt: Vec<(PathBuf, PathBuf)> = (0..JOBS + SCENARIO_WARMUP)
        .map(|i| (plain(i).clone(), sealed[i].clone()))
        .collect();
    scenario(
        &mut conn,
        &mut ids,
        "encrypt-4k",
        FileOp::Encrypt,
        &encrypt,
        Form::Path,
    );

    // decrypt 4 KiB by path: the ciphertexts just made, to new outputs.
    let decrypt: Vec<(PathBuf, PathBuf)> = (0..JOBS + SCENARIO_WARMUP)
        .map(|i| (sealed[i].clone(), name(&dir, "pt", i)))
        .collect();
    scenario(
        &mut conn,
        &mut ids,
        "decrypt-4k",
        FileOp::Decrypt,
        &decrypt,
        Form::Path,
    );

    // encrypt by path with overwrite onto the existing ciphertexts (temp name, rename).
    scenario(
        &mut conn,
        &mut ids,
        "encrypt-overwrite",
        FileOp::Encrypt,
        &encrypt,
        Form::Overwrite,
    );

    // encrypt with the files passed as descriptors, where O_TMPFILE works here.
    if tmpfile(&dir).is_ok() {
        let passed: Vec<(PathBuf, PathBuf)> = (0..JOBS + SCENARIO_WARMUP)
            .map(|i| (plain(i).clone(), name(&dir, "fd", i)))
            .collect();
        scenario(
            &mut conn,
            &mut ids,
            "encrypt-fds",
            FileOp::Encrypt,
            &passed,
            Form::Passed(&dir),
        );
    } else {
        println!("encrypt-fds skipped: no O_TMPFILE on {}", dir.display());
    }
    println!("child done in {:.1} s", started.elapsed().as_secs_f64());
}

/// How a job names its files.
#[derive(Clone, Copy)]
enum Form<'a> {
    Path,
    Overwrite,
    /// `fds: true`: the input and an unnamed temp file in this directory passed as descriptors.
    Passed(&'a Path),
}

/// Runs `SCENARIO_WARMUP` jobs of `pairs`, then measures the next `JOBS` and prints the
/// figures as one `ALLOCS` line.
fn scenario(
    conn: &mut Conn,
    ids: &mut u64,
    label: &str,
    op: FileOp,
    pairs: &[(PathBuf, PathBuf)],
    form: Form<'_>,
) {
    let lines: Vec<Vec<u8>> = pairs
        .iter()
        .map(|(input, output)| request_line(ids, op, input, output, form))
        .collect();
    let run = |conn: &mut Conn, range: std::ops::Range<usize>| -> u64 {
        let mut done = 0;
        for i in range {
            match form {
                Form::Passed(dir) => conn.job_passing(&lines[i], &pairs[i].0, dir, ONE_FILE_DONE),
                _ => conn.job(&lines[i], ONE_FILE_DONE),
            }
            done += 1;
        }
        done
    };
    run(conn, 0..SCENARIO_WARMUP);

    thread::sleep(SETTLE);
    let client_before = THREAD_ALLOCS.with(Cell::get);
    let allocs_before = ALLOCS.load(Ordering::SeqCst);
    let reallocs_before = REALLOCS.load(Ordering::SeqCst);
    let window_started = Instant::now();
    let done = run(conn, SCENARIO_WARMUP..SCENARIO_WARMUP + JOBS);
    let window = window_started.elapsed();
    thread::sleep(SETTLE);
    let allocs = ALLOCS.load(Ordering::SeqCst) - allocs_before;
    let reallocs = REALLOCS.load(Ordering::SeqCst) - reallocs_before;
    let client = THREAD_ALLOCS.with(Cell::get) - client_before;

    println!(
        "ALLOCS {label} {JOBS} {allocs} {reallocs} {done} {client} ({:.0} us/job)",
        window.as_secs_f64() * 1e6 / JOBS as f64
    );
}

/// One request line, as the `ringcrypt` client encodes it (a numeric id, `wait` at its
/// default).
fn request_line(ids: &mut u64, op: FileOp, input: &Path, output: &Path, form: Form) -> Vec<u8> {
    let mut spec = FileJobSpec::new(op, input.to_path_buf(), output.to_path_buf());
    spec.overwrite = matches!(form, Form::Overwrite);
    spec.fds = matches!(form, Form::Passed(_));
    *ids += 1;
    protocol::encode_request(Some(&RequestId::from(*ids)), &Request::File(spec)).into_bytes()
}

/// Starts the daemon on its own thread and waits for its first `pong`.
fn start_daemon(root: &Path, keys: &Path, socket: &Path) {
    let text = |p: &Path| p.to_str().expect("a UTF-8 temp path").to_string();
    let shards = SHARDS.to_string();
    let argv = [
        "ringcryptd".to_string(),
        "--socket".into(),
        text(socket),
        "--keys".into(),
        text(keys),
        "--allow-root".into(),
        text(root),
        "--shards".into(),
        shards,
        "--fsync".into(),
        "never".into(),
        "--metrics".into(),
        "off".into(),
    ];
    let args = ringcrypt::daemon::Args::parse_from(&argv);
    let config = ringcrypt::daemon::Config::from_args(args).expect("a valid configuration");
    let failed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&failed);
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
    while Instant::now() < deadline {
        assert!(
            !failed.load(Ordering::SeqCst),
            "the daemon did not start (see its stderr)"
        );
        if let Ok(stream) = UnixStream::connect(socket) {
            let mut conn = Conn::new(stream, REPLY_TIMEOUT).expect("set a read timeout");
            if conn
                .request_text(b"{\"op\":\"ping\"}\n")
                .starts_with("{\"type\":\"pong\"")
            {
                return;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("the daemon did not answer ping within 20 s");
}

// ---- the client ---------------------------------------------------------------------------

/// `jobs_done` of every shard, from `stats` (outside the windows only).
fn jobs_done_per_shard(conn: &mut Conn) -> Vec<u64> {
    let text = conn.request_text(b"{\"op\":\"stats\"}\n");
    let reply: serde_json::Value = serde_json::from_str(&text).expect("stats is JSON");
    assert_eq!(reply["type"], "stats", "unexpected reply: {text}");
    reply["shards"]
        .as_array()
        .expect("stats lists shards")
        .iter()
        .map(|shard| shard["jobs_done"].as_u64().expect("jobs_done is a number"))
        .collect()
}
