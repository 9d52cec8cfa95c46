//! A soak of one real `ringcryptd` under everything at once, on both backends.
//!
//! One daemon (`--shards 2 --fsync never --metrics off`) gets, at the same time:
//!
//! - three tree jobs (`encrypt` with `recursive`) of 240, 300 and 360 files from 0 B to
//!   256 KiB, each tree with an empty file and several of exactly 64 KiB; each tree runs again
//!   and again into a fresh output directory, and a cancelled run is resumed with
//!   `skip_existing`;
//! - one connection pipelining single-file encrypt jobs in bursts of twice the per-shard queue
//!   bound, half to an input owned by each shard, so the queues fill and some jobs get `busy`
//!   while the trees' files wait for room on the same shards;
//! - descriptor jobs (`"fds": true`): the input and an `O_TMPFILE` output in a directory
//!   outside every allowed root, passed with `SCM_RIGHTS`; the test links each filled temp
//!   file into place and decrypts it;
//! - `cancel` of random jobs, by the job ids `accepted` gave (queued and running single
//!   files, descriptor jobs, now and then a whole tree);
//! - idle connections that never say a word, and a flooding connection writing malformed
//!   lines, lines of unknown ops, lines with unknown fields, binary junk and over-long lines;
//! - a SIGHUP every few seconds, each after a new key was added to the ring and made its
//!   default (the file is replaced by rename, as an administrator's editor would).
//!
//! The run has two phases on the first daemon. Phase 1 is the soak proper
//! (`RINGCRYPT_SOAK_SECS`, 20 s by default); then the load stops, every connection closes, and
//! the daemon must come back to its baseline. Phase 2 starts the same load again, plus one
//! client that pipelines `ping`s and encrypts every 2 ms from before the SIGTERM to after it;
//! once every tree is under way and the pipeline's burst has filled the queues, and right
//! after the flooder has written a batch (so lines of several clients are in flight), it
//! sends one SIGTERM. A second daemon is then started on the same directories and every tree
//! interrupted by the SIGTERM is resumed with `skip_existing` until it ends `done` with no
//! failed file. A backend's run takes 45-60 s on the shared 2-core development machine (both:
//! 90-110 s), most of it the daemon's own work in a debug build.
//!
//! What must stay intact (each is checked, and every breach is listed at the end rather than
//! stopping the run at the first, so one run shows all of them):
//!
//! - **The daemon never dies**: it is polled every 100 ms and must still be running when the
//!   SIGTERM is sent; its log must hold no panic.
//! - **SIGTERM under load**: the daemon exits with status 0 within 40 s (its drain is 30 s).
//! - **One final reply per request**: every request carries a unique `id`, and each
//!   connection's replies are matched to them. A final reply is any reply but `accepted` and
//!   `progress`. Every request whose line was written in full gets exactly one final reply on
//!   its connection, never zero and never two, also when the shutdown then closes the
//!   connection, and also when it was written after the SIGTERM (it may then be
//!   `shutting_down`). That is not asking the impossible: once the daemon shuts a connection
//!   for reading, the kernel fails the client's further writes (`EPIPE`), so every line a
//!   write delivered in full is one the daemon could still read and answer; only a line cut
//!   short by a failed write may go unanswered. No reply names an id that was never sent, no
//!   `accepted` or `progress` follows a final reply, and no request is accepted twice. Lines
//!   that carry no id (junk, over-long lines) get one `error` each, of the right code. Idle
//!   connections receive nothing and are closed at shutdown.
//! - **Outputs**: a finished tree is complete (one `.rcrypt` per input file, nothing else)
//!   and every output verifies; a cancelled tree leaves only whole outputs; a single-file job
//!   that ended `done` left an output of the right size that verifies; one that ended in
//!   `error` (`busy`, `cancelled`, `shutting_down`) left nothing under its output name; a
//!   descriptor job's filled temp file, once linked, decrypts to its input. After the restart
//!   and the resume, every output of every resumed tree decrypts to its input (in full, with
//!   the library's offline decrypt).
//! - **No temp file** (`.ringcrypt-tmp-*`) anywhere under the test's directory: checked after
//!   the first daemon exited (before the restarted daemon's start-up sweep could remove one)
//!   and at the end. With `RINGCRYPT_SOAK_NAMED_TEMPS=1` the daemons write named temp files
//!   (the path for file systems without `O_TMPFILE`), which gives this check more to find.
//! - **No leak**: after phase 1, with every connection closed, and again on the restarted
//!   daemon after the resume, the daemon's descriptor count (`/proc/PID/fd`) is back to the
//!   baseline taken after start-up and a warm-up, and its resident memory (`VmRSS`) is within
//!   64 MiB of it. The slack is for memory the daemon keeps by design: with the sync backend
//!   the 2 × 32 MiB buffer pool is allocated zeroed and only becomes resident as jobs touch
//!   it (io_uring registers, and so touches, all of it at start), the allocator keeps freed
//!   pages of its per-thread arenas, and each shard keeps up to 1,024 finished-job records
//!   and its spare path buffers. A leak of a job's buffers or of a connection's state would
//!   exceed it within the soak's tens of thousands of requests.
//!
//! A summary table is printed at the end (run with `--nocapture` to see it). The two backends
//! run one after the other, never together: each soak measures one daemon on a 2-core machine.

mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringcrypt::format::sealed_len;
use ringcrypt::keys::KeyRing;
use serde_json::{Value, json};
use support::{TEMP_PREFIX, bytes, keygen, p, temp_files};

// ---- the shape of the load -------------------------------------------------------------

/// Seconds of phase 1 when `RINGCRYPT_SOAK_SECS` is not set. With the warm-up, phase 2, the
/// restart, the resume and the checks, a backend's run takes 35-45 s on 2 cores, so both
/// stay near 90 s in the suite.
const DEFAULT_LOAD_SECS: u64 = 20;
/// Files in each tree; sizes from 0 B to 256 KiB (see [`tree_file_size`]).
const TREE_FILES: [usize; 3] = [240, 300, 360];
const TREES: usize = TREE_FILES.len();
/// Requests in one pipelined burst, half to an input owned by each shard: each half is past
/// the per-shard queue bound (1,024 queued + 16 running), so some of them must get `busy`.
const PIPE_BURST: usize = 2 * 1300;
/// Bytes of each pipelined job's input: small, so a burst is over in seconds even in a
/// debug build, yet each job takes long enough that the queue fills behind it.
const PIPE_FILE_BYTES: usize = 8 * 1024 + 1;
/// Descriptor jobs in flight on their connection at once.
const FD_WINDOW: usize = 3;
/// Sizes of the descriptor jobs' inputs.
const FD_SIZES: [usize; 5] = [0, 1, 65536, 100_003, 256 * 1024];
/// Connections opened and left silent, per phase.
const IDLE_CONNS: usize = 48;
/// Time between two SIGHUPs.
const RELOAD_EVERY: Duration = Duration::from_secs(3);
/// How long a reload may take to show in `keys`.
const RELOAD_SEEN_WITHIN: Duration = Duration::from_secs(10);
/// The daemon must exit within this of the SIGTERM (its drain timeout is 30 s).
const SIGTERM_EXIT_WITHIN: Duration = Duration::from_secs(40);
/// Resident-memory slack over the baseline; see the module comment for why.
const RSS_SLACK_KIB: u64 = 64 * 1024;
/// How long the descriptor count may take to come back (a finished job's descriptors are
/// dropped on the shard's next turn, a closed connection's when its recv completes).
const SETTLE_WITHIN: Duration = Duration::from_secs(10);
/// Longest wait for one tree's final reply (a tree takes seconds in a debug build).
const TREE_FINAL_WITHIN: Duration = Duration::from_secs(120);
/// Longest wait for the final replies of one pipelined burst.
const BURST_FINALS_WITHIN: Duration = Duration::from_secs(180);
/// Bounds on every worker loop, on top of the phase's deadline.
const MAX_ROUNDS: usize = 100_000;
/// Resume attempts per interrupted tree after the restart.
const RESUME_ATTEMPTS: usize = 3;

/// The two backends' soaks never run at the same time.
static SERIAL: Mutex<()> = Mutex::new(());

fn load_secs() -> u64 {
    std::env::var("RINGCRYPT_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|v| v.max(5))
        .unwrap_or(DEFAULT_LOAD_SECS)
}

// ---- shared state ----------------------------------------------------------------------

/// Counters for the summary.
#[derive(Default)]
struct Counters {
    cancels_sent: AtomicU64,
    cancels_cancelled: AtomicU64,
    cancels_too_late: AtomicU64,
    reloads_sent: AtomicU64,
    reloads_seen: AtomicU64,
    tree_runs_done: AtomicU64,
    tree_runs_cancelled: AtomicU64,
    tree_files_checked: AtomicU64,
    tree_files_decrypted: AtomicU64,
    pipe_outputs_checked: AtomicU64,
    pipe_outputs_decrypted: AtomicU64,
    pipe_errors_clean: AtomicU64,
    fd_outputs_decrypted: AtomicU64,
    flood_lines: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Job ids from `accepted` replies, for the canceller to pick from.
#[derive(Default)]
struct JobPool {
    jobs: Mutex<VecDeque<(String, &'static str)>>,
}

impl JobPool {
    fn push(&self, job: String, kind: &'static str) {
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.len() >= 1024 {
            jobs.pop_front();
        }
        jobs.push_back((job, kind));
    }

    /// A random job of `kind` if there is one, else any.
    fn take(&self, kind: &str, rng: &mut Rng) -> Option<(String, &'static str)> {
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.is_empty() {
            return None;
        }
        let of_kind: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].1 == kind).collect();
        let at = if of_kind.is_empty() {
            rng.below(jobs.len())
        } else {
            of_kind[rng.below(of_kind.len())]
        };
        jobs.remove(at)
    }
}

/// xorshift64*: random enough to pick jobs and pauses, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The key ring file's content: the test adds a key and makes it the default before each
/// SIGHUP. Keys are only ever added, so every output stays decryptable with the final ring.
struct RingFile {
    default: String,
    entries: Vec<String>,
}

/// One source tree.
struct TreeSrc {
    dir: PathBuf,
    /// Relative path and size of every regular file.
    files: Vec<(PathBuf, usize)>,
}

struct Soak {
    backend: &'static str,
    named_temps: bool,
    dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    keys: PathBuf,
    socket: PathBuf,
    ring: Mutex<RingFile>,
    trees: Vec<TreeSrc>,
    /// One input owned by each shard (found in the warm-up from the job ids' shard part).
    pipe_inputs: Mutex<Vec<PathBuf>>,
    fd_inputs: Vec<(PathBuf, usize)>,
    ledgers: Mutex<Vec<Arc<Ledger>>>,
    violations: Mutex<Vec<String>>,
    pool: Arc<JobPool>,
    c: Counters,
    /// Workers send no new request once this is set.
    stop: AtomicBool,
    sigterm_at: Mutex<Option<Instant>>,
    next_id: AtomicU64,
    /// Per tree worker: a tree request is out and its final reply has not come.
    tree_in_flight: [AtomicBool; TREES],
    /// Per tree worker: the output directory of its current run.
    tree_current: Mutex<[Option<PathBuf>; TREES]>,
    /// Output directories of phase 2's tree runs, resumed after the restart.
    phase2_dirs: Mutex<Vec<(usize, PathBuf)>>,
    /// Phase 2 cues the flooder to write a batch just before the SIGTERM.
    flood_cue: AtomicU8,
    /// Set when phase 2's pipeline has written its first burst.
    pipe_burst_sent: AtomicBool,
    daemon_pid: AtomicUsize,
    /// 0 warm-up, 1 and 2 the phases on the first daemon, 3 the restarted daemon.
    phase: AtomicUsize,
}

impl Soak {
    fn new(backend: &'static str) -> Soak {
        let dir = tempfile::Builder::new()
            .prefix("ringcrypt-soak-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        for d in [&root, &outside] {
            fs::create_dir(d).unwrap();
        }
        fs::create_dir_all(outside.join("fdsrc")).unwrap();
        fs::create_dir_all(outside.join("fdout")).unwrap();
        fs::create_dir_all(root.join("out")).unwrap();
        fs::create_dir_all(root.join("pipe")).unwrap();
        let keys = dir.path().join("keys.toml");
        let ring = RingFile {
            default: "k0".into(),
            entries: vec![keygen("k0"), keygen("k1")],
        };
        write_ring(&keys, &ring);
        let trees = (0..TREES)
            .map(|k| make_tree(&root.join(format!("src/t{k}")), k))
            .collect();
        let fd_inputs = FD_SIZES
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let path = outside.join(format!("fdsrc/in{i}.bin"));
                fs::write(&path, bytes(size, 500 + i as u64)).unwrap();
                (path, size)
            })
            .collect();
        let socket = dir.path().join("d.sock");
        Soak {
            backend,
            named_temps: std::env::var_os("RINGCRYPT_SOAK_NAMED_TEMPS").is_some(),
            dir,
            root,
            outside,
            keys,
            socket,
            ring: Mutex::new(ring),
            trees,
            pipe_inputs: Mutex::new(Vec::new()),
            fd_inputs,
            ledgers: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            pool: Arc::new(JobPool::default()),
            c: Counters::default(),
            stop: AtomicBool::new(false),
            sigterm_at: Mutex::new(None),
            next_id: AtomicU64::new(1),
            tree_in_flight: Default::default(),
            tree_current: Mutex::new(Default::default()),
            phase2_dirs: Mutex::new(Vec::new()),
            pipe_burst_sent: AtomicBool::new(false),
            flood_cue: AtomicU8::new(0),
            daemon_pid: AtomicUsize::new(0),
            phase: AtomicUsize::new(0),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records a broken invariant (printed at once, listed again at the end).
    fn violation(&self, what: String) {
        eprintln!("soak {}: VIOLATION: {what}", self.backend);
        self.violations.lock().unwrap().push(what);
    }

    fn new_id(&self, tag: &str) -> String {
        format!("{tag}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The key ring as the test reads it now (keys are only added, so this opens every
    /// output sealed so far).
    fn ring_now(&self) -> KeyRing {
        let _guard = self.ring.lock().unwrap();
        KeyRing::load(&self.keys).expect("the key ring loads")
    }

    /// Adds a key, makes it the default and replaces the ring file; returns its name.
    fn add_key(&self, n: u64) -> String {
        let name = format!("hup{n}");
        let entry = keygen(&name);
        let mut ring = self.ring.lock().unwrap();
        ring.entries.push(entry);
        ring.default = name.clone();
        write_ring(&self.keys, &ring);
        name
    }
}

/// Writes the ring to a new 0600 file and renames it over `path`, so a reload never reads
/// half a file.
fn write_ring(path: &Path, ring: &RingFile) {
    let text = format!("default = \"{}\"\n{}", ring.default, ring.entries.concat());
    let tmp = path.with_extension("toml.new");
    let _ = fs::remove_file(&tmp);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write the key ring");
    fs::rename(&tmp, path).expect("replace the key ring");
}

fn tree_file_size(k: usize, i: usize) -> usize {
    let h = (k as u64 + 1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .rotate_left(29);
    match i {
        0 => 0,
        1..=5 => 65536,
        6 => 256 * 1024,
        7 => 65535,
        8 => 65537,
        9 => 1,
        _ if i.is_multiple_of(23) => (h % (256 * 1024)) as usize + 1,
        _ => (h % 12_000) as usize,
    }
}

/// A tree of `TREE_FILES[k]` files in a few nested directories.
fn make_tree(dir: &Path, k: usize) -> TreeSrc {
    let mut files = Vec::with_capacity(TREE_FILES[k]);
    for i in 0..TREE_FILES[k] {
        let rel = if i % 10 == 0 {
            PathBuf::from(format!("f{i}.bin"))
        } else {
            PathBuf::from(format!("d{}/e{}/f{i}.bin", i % 4, i % 3))
        };
        let size = tree_file_size(k, i);
        let path = dir.join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes(size, (k * 100_000 + i) as u64)).unwrap();
        files.push((rel, size));
    }
    TreeSrc {
        dir: dir.to_path_buf(),
        files,
    }
}

/// `rel` as its encrypted tree output: the name with `.rcrypt` appended.
fn sealed_name(rel: &Path) -> PathBuf {
    let mut name = rel.file_name().unwrap().to_os_string();
    name.push(".rcrypt");
    rel.with_file_name(name)
}

// ---- connections, and the ledger of what each one sent and got -------------------------

fn is_final(kind: &str) -> bool {
    !matches!(kind, "accepted" | "progress")
}

/// `done`, `pong`, `error busy`, ...: a reply's type, with the code for errors.
fn reply_kind(reply: &Value) -> String {
    match reply["type"].as_str().unwrap_or("?") {
        "error" => format!("error {}", reply["code"].as_str().unwrap_or("?")),
        other => other.to_string(),
    }
}

fn code_of(reply: &Value) -> &str {
    if reply["type"] == "error" {
        reply["code"].as_str().unwrap_or("?")
    } else {
        ""
    }
}

enum Sent {
    /// Registered, being written.
    Writing,
    /// The whole line was written at this moment.
    At(Instant),
    /// The write failed: the daemon may or may not have the whole line.
    Failed,
}

struct Track {
    what: &'static str,
    sent: Sent,
    accepted: u32,
    progress: u32,
    finals: Vec<Value>,
    /// `accepted` / `progress` lines that came after the final reply.
    after_final: Vec<String>,
}

#[derive(Default)]
struct LedgerState {
    order: Vec<String>,
    tracks: HashMap<String, Track>,
    /// When each line without an id (junk, over-long) was fully written, and the error
    /// code it must get.
    idless_sent: Vec<(Instant, &'static str)>,
    /// Id-less lines whose write failed part-way (the daemon may have seen enough of an
    /// over-long one to answer it): the code each may get.
    idless_failed: Vec<&'static str>,
    idless_replies: Vec<Value>,
    /// Replies that match nothing sent, or are not JSON objects with a type.
    strays: Vec<String>,
    eof: bool,
    /// Whether the test closed the connection itself (rather than the daemon).
    closed_by_test: bool,
    /// The daemon closed the connection with bytes of ours unread (ECONNRESET).
    reset: bool,
    read_error: Option<String>,
}

/// Everything one connection sent and received.
struct Ledger {
    name: String,
    /// Opened on the first daemon during phase 2: its writes are timed against the SIGTERM
    /// in the report.
    shutdown_rule: bool,
    state: Mutex<LedgerState>,
    cv: Condvar,
}

impl Ledger {
    fn register(&self, id: &str, what: &'static str) {
        let mut st = self.state.lock().unwrap();
        st.order.push(id.to_string());
        st.tracks.insert(
            id.to_string(),
            Track {
                what,
                sent: Sent::Writing,
                accepted: 0,
                progress: 0,
                finals: Vec::new(),
                after_final: Vec::new(),
            },
        );
    }

    fn written(&self, id: &str, ok: bool) {
        let mut st = self.state.lock().unwrap();
        if let Some(track) = st.tracks.get_mut(id) {
            track.sent = if ok {
                Sent::At(Instant::now())
            } else {
                Sent::Failed
            };
        }
    }

    /// One reply line; returns a job id to offer the canceller when it was an `accepted`.
    fn on_line(&self, line: &[u8]) -> Option<String> {
        let mut st = self.state.lock().unwrap();
        let text = String::from_utf8_lossy(line).into_owned();
        let reply: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                st.strays.push(format!("not JSON ({e}): {text:?}"));
                return None;
            }
        };
        let Some(kind) = reply["type"].as_str().map(str::to_string) else {
            st.strays.push(format!("no type: {text}"));
            return None;
        };
        let mut offer = None;
        match reply.get("id") {
            None => st.idless_replies.push(reply),
            Some(Value::String(id)) => {
                let id = id.clone();
                match st.tracks.get_mut(&id) {
                    None => st
                        .strays
                        .push(format!("reply for an id never sent: {text}")),
                    Some(track) if is_final(&kind) => track.finals.push(reply),
                    Some(track) => {
                        if !track.finals.is_empty() {
                            track.after_final.push(text.trim_end().to_string());
                        }
                        if kind == "accepted" {
                            track.accepted += 1;
                            offer = reply["job"].as_str().map(str::to_string);
                        } else {
                            track.progress += 1;
                        }
                    }
                }
            }
            Some(_) => st.strays.push(format!("id of another type: {text}")),
        }
        drop(st);
        self.cv.notify_all();
        offer
    }

    fn mark_eof(&self, error: Option<String>) {
        let mut st = self.state.lock().unwrap();
        st.eof = true;
        st.read_error = error;
        drop(st);
        self.cv.notify_all();
    }

    /// The first final reply to `id`; None at EOF or when `deadline` passes first.
    fn final_of(&self, id: &str, deadline: Instant) -> Option<Value> {
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(first) = st.tracks.get(id).and_then(|t| t.finals.first()) {
                return Some(first.clone());
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                return None;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits until every request written has its final reply and every id-less line its
    /// error (or EOF, or `deadline`); returns whether all came.
    fn wait_all(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        loop {
            let missing = st
                .tracks
                .values()
                .any(|t| matches!(t.sent, Sent::At(_)) && t.finals.is_empty())
                || st.idless_replies.len() < st.idless_sent.len();
            if !missing {
                return true;
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                return false;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    fn wait_eof(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.eof {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

/// Reads reply lines into the ledger until EOF (the daemon's close, or the test's own).
fn read_replies(
    stream: UnixStream,
    ledger: Arc<Ledger>,
    pool: Option<(Arc<JobPool>, &'static str)>,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Bounded: a reader still running 10 minutes after the longest the load can last gives up.
    let give_up = Instant::now() + Duration::from_secs(2 * load_secs() + 600);
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                if !line.is_empty() {
                    let cut = String::from_utf8_lossy(&line).into_owned();
                    ledger
                        .state
                        .lock()
                        .unwrap()
                        .strays
                        .push(format!("reply line cut short by EOF: {cut:?}"));
                }
                ledger.mark_eof(None);
                return;
            }
            Ok(_) if line.ends_with(b"\n") => {
                if let Some(job) = ledger.on_line(&line)
                    && let Some((pool, kind)) = &pool
                {
                    pool.push(job, kind);
                }
                line.clear();
            }
            Ok(_) => {} // EOF in the middle of a line: the next read says 0
            // The daemon closed with bytes of ours unread (a line cut short by a failed write,
            // or whole lines it never read: those the audit finds unanswered). Replies that
            // came before are all read; the next read says EOF.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                let mut st = ledger.state.lock().unwrap();
                if st.reset {
                    drop(st);
                    ledger.mark_eof(Some(format!("{e}, twice")));
                    return;
                }
                st.reset = true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= give_up {
                    ledger.mark_eof(Some("reader gave up after an hour".into()));
                    return;
                }
            }
            Err(e) => {
                ledger.mark_eof(Some(e.to_string()));
                return;
            }
        }
    }
}

/// A client connection whose every request and reply goes into its ledger.
struct Conn {
    stream: UnixStream,
    ledger: Arc<Ledger>,
    reader: Option<JoinHandle<()>>,
    tag: String,
    broken: bool,
}

impl Conn {
    /// `pool`: offer the job ids this connection's `accepted` replies give to the canceller,
    /// as jobs of that kind.
    fn open(s: &Soak, tag: &str, pool: Option<&'static str>) -> Option<Conn> {
        let stream = match UnixStream::connect(&s.socket) {
            Ok(stream) => stream,
            Err(e) => {
                if !s.stopped() {
                    s.violation(format!("{tag}: cannot connect: {e}"));
                }
                return None;
            }
        };
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let ledger = Arc::new(Ledger {
            name: tag.to_string(),
            shutdown_rule: s.phase.load(Ordering::SeqCst) == 2,
            state: Mutex::new(LedgerState::default()),
            cv: Condvar::new(),
        });
        s.ledgers.lock().unwrap().push(Arc::clone(&ledger));
        let reader = {
            let stream = stream.try_clone().unwrap();
            let ledger = Arc::clone(&ledger);
            let pool = pool.map(|kind| (Arc::clone(&s.pool), kind));
            std::thread::spawn(move || read_replies(stream, ledger, pool))
        };
        Some(Conn {
            stream,
            ledger,
            reader: Some(reader),
            tag: tag.to_string(),
            broken: false,
        })
    }

    /// Sends `req` with a fresh id; returns the id once the whole line is written.
    fn send(&mut self, s: &Soak, mut req: Value, what: &'static str) -> Option<String> {
        if self.broken {
            return None;
        }
        let id = s.new_id(&self.tag);
        req["id"] = json!(id);
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.ledger.register(&id, what);
        let ok = (&self.stream).write_all(&line).is_ok();
        self.ledger.written(&id, ok);
        if !ok {
            self.broken = true;
            return None;
        }
        Some(id)
    }

    /// Sends `req` (with `"fds": true`) with `fds` attached to its first byte.
    fn send_fds(
        &mut self,
        s: &Soak,
        mut req: Value,
        fds: &[BorrowedFd<'_>],
        what: &'static str,
    ) -> Option<String> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        if self.broken {
            return None;
        }
        let id = s.new_id(&self.tag);
        req["id"] = json!(id);
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.ledger.register(&id, what);
        let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); 256];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        let ok = match rustix::net::sendmsg(
            &self.stream,
            &[std::io::IoSlice::new(&line)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(sent) => (&self.stream).write_all(&line[sent..]).is_ok(),
            Err(_) => false,
        };
        self.ledger.written(&id, ok);
        if !ok {
            self.broken = true;
            return None;
        }
        Some(id)
    }

    /// Sends a line that carries no id (it must end in a newline); `expect` is the error
    /// code it must get.
    fn send_idless(&mut self, line: &[u8], expect: &'static str) -> bool {
        if self.broken {
            return false;
        }
        if (&self.stream).write_all(line).is_err() {
            self.broken = true;
            self.ledger.state.lock().unwrap().idless_failed.push(expect);
            return false;
        }
        self.ledger
            .state
            .lock()
            .unwrap()
            .idless_sent
            .push((Instant::now(), expect));
        true
    }

    fn final_of(&self, id: &str, deadline: Instant) -> Option<Value> {
        self.ledger.final_of(id, deadline)
    }

    /// Phase 1's end: wait for every reply, then close from this side.
    fn close(mut self, s: &Soak, within: Duration) {
        // Missing replies are reported by the audit; here only a daemon that neither
        // answers nor closes.
        if !self.ledger.wait_all(Instant::now() + within) && !self.ledger.state.lock().unwrap().eof
        {
            s.violation(format!(
                "{}: replies still missing {within:?} after the load stopped",
                self.tag
            ));
        }
        self.ledger.state.lock().unwrap().closed_by_test = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    /// Phase 2's end: the daemon closes the connection as it exits; wait for that.
    fn finish_at_eof(mut self, s: &Soak, within: Duration) {
        if !self.ledger.wait_eof(Instant::now() + within) {
            s.violation(format!(
                "{}: the connection was still open {within:?} after the SIGTERM",
                self.tag
            ));
            self.ledger.state.lock().unwrap().closed_by_test = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    fn end(self, s: &Soak, phase: u8) {
        if phase == 2 {
            self.finish_at_eof(s, SIGTERM_EXIT_WITHIN + Duration::from_secs(20));
        } else {
            self.close(s, Duration::from_secs(120));
        }
    }
}

// ---- the daemon process ----------------------------------------------------------------

struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `ringcryptd` on the soak's socket, ring and root, and waits for its `pong`.
    fn spawn(s: &Soak, log_name: &str) -> Proc {
        let log = s.dir.path().join(log_name);
        let mut cmd = Command::new(support::DAEMON);
        cmd.arg("--socket")
            .arg(&s.socket)
            .arg("--keys")
            .arg(&s.keys)
            .arg("--allow-root")
            .arg(&s.root)
            .args(["--shards", "2", "--fsync", "never", "--metrics", "off"])
            .env("RINGCRYPT_BACKEND", s.backend)
            .env_remove("RINGCRYPT_SOCKET")
            .env_remove("RINGCRYPT_KEYS")
            .env_remove("RINGCRYPT_FAILPOINT")
            .env_remove("RINGCRYPT_TEST_HANG_SHARD");
        if s.named_temps {
            cmd.env("RINGCRYPT_TEST_NO_TMPFILE", "1");
        } else {
            cmd.env_remove("RINGCRYPT_TEST_NO_TMPFILE");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .expect("ringcryptd starts");
        let mut proc = Proc {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + support::START_TIMEOUT;
        loop {
            if let Some(status) = proc.exited() {
                panic!(
                    "ringcryptd exited while starting ({status}); log:\n{}",
                    proc.log_tail(40)
                );
            }
            if let Ok(stream) = UnixStream::connect(&s.socket) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let _ = (&stream).write_all(b"{\"op\":\"ping\"}\n");
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                if let Ok(pong) = serde_json::from_str::<Value>(&line)
                    && pong["type"] == "pong"
                {
                    let got = pong["backend"].as_str().unwrap_or("");
                    assert!(
                        got == s.backend || (s.backend == "uring" && got == "io_uring"),
                        "RINGCRYPT_BACKEND={} not honoured: {pong}",
                        s.backend
                    );
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ringcryptd did not answer ping; log:\n{}",
                proc.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s.daemon_pid.store(proc.pid() as usize, Ordering::SeqCst);
        proc
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// The exit status if the daemon has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped while `child` is held.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// SIGTERM, then wait up to `within`: the exit status and how long it took, or None
    /// (and the daemon is killed with SIGKILL) when it did not exit in time.
    fn terminate(&mut self, within: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let child = self.child.as_mut().unwrap();
        let status = support::wait_within(child, within);
        let took = started.elapsed();
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
        (status, took)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `lines` lines that are not audit lines, after the last three audit
    /// lines (what the daemon was last asked to do).
    fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let audit: Vec<&str> = text.lines().filter(|l| l.starts_with("audit:")).collect();
        let other: Vec<&str> = text.lines().filter(|l| !l.starts_with("audit:")).collect();
        let mut tail: Vec<&str> = audit[audit.len().saturating_sub(3)..].to_vec();
        tail.extend(&other[other.len().saturating_sub(lines)..]);
        tail.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only when the test failed part-way: never leave a daemon behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Waits (bounded) for the descriptor count to come back to `base`, then checks it and the
/// resident memory; returns what it saw.
fn check_settled(s: &Soak, pid: u32, base: (usize, u64), when: &str) -> (usize, u64) {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut fds = open_fds(pid).unwrap_or(usize::MAX);
    while fds > base.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        fds = open_fds(pid).unwrap_or(usize::MAX);
    }
    let rss = rss_kib(pid).unwrap_or(u64::MAX);
    if fds > base.0 {
        let list: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| fs::read_link(e.path()).ok())
                    .map(|t| t.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        s.violation(format!(
            "{when}: the daemon holds {fds} descriptors, {} at the baseline \
             ({SETTLE_WITHIN:?} after the load): {list:?}",
            base.0
        ));
    }
    if rss > base.1 + RSS_SLACK_KIB {
        s.violation(format!(
            "{when}: the daemon's RSS is {rss} KiB, more than {} KiB over the baseline's {} KiB",
            RSS_SLACK_KIB, base.1
        ));
    }
    (fds, rss)
}

// ---- checking outputs ------------------------------------------------------------------

/// Decrypts `sealed` with the library into memory and compares it with `plain`.
fn decrypts_to(ring: &KeyRing, sealed: &Path, plain: &[u8]) -> Result<(), String> {
    let data = fs::read(sealed).map_err(|e| format!("{}: {e}", sealed.display()))?;
    let mut out = Vec::with_capacity(plain.len());
    ringcrypt::stream::open(&mut &data[..], data.len() as u64, ring, &mut out)
        .map_err(|e| format!("{} does not decrypt: {e}", sealed.display()))?;
    if out != plain {
        return Err(format!(
            "{} decrypts to {} bytes that differ from its {}-byte input",
            sealed.display(),
            out.len(),
            plain.len()
        ));
    }
    Ok(())
}

/// The offline API's check of a sealed output: right size, header, key, header tag and the
/// final record's tag.
fn sealed_ok(ring: &KeyRing, sealed: &Path, plain_len: usize) -> Result<(), String> {
    let len = fs::symlink_metadata(sealed)
        .map_err(|e| format!("{}: {e}", sealed.display()))?
        .len();
    let want = sealed_len(plain_len as u64, 16);
    if len != want {
        return Err(format!(
            "{} is {len} bytes; a sealed {plain_len}-byte file is {want}",
            sealed.display()
        ));
    }
    ringcrypt::offline::verify_sealed(ring, sealed)
        .map(|_| ())
        .map_err(|e| format!("{} does not verify: {e}", sealed.display()))
}

/// Every regular file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 100_000 {
            break;
        }
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found
}

/// How a tree's outputs are checked.
#[derive(Clone, Copy, PartialEq)]
enum TreeCheck {
    /// A finished run during the load: complete; every output the right size and verifying;
    /// one file in `n` decrypted in full.
    Sample(usize),
    /// A cancelled run: whatever exists is whole (right size, verifies); nothing else.
    Partial,
    /// The end: complete, and every output decrypted in full and compared.
    Full,
}

/// Checks tree `k`'s outputs under `out`; returns the problems found.
fn check_tree(s: &Soak, k: usize, out: &Path, how: TreeCheck, salt: usize) -> Vec<String> {
    let src = &s.trees[k];
    let ring = s.ring_now();
    let mut problems = Vec::new();
    let expected: HashMap<PathBuf, (PathBuf, usize)> = src
        .files
        .iter()
        .map(|(rel, size)| (sealed_name(rel), (rel.clone(), *size)))
        .collect();
    let present = files_under(out);
    for rel in &present {
        let name = rel.file_name().unwrap().to_string_lossy();
        if name.starts_with(TEMP_PREFIX) {
            problems.push(format!(
                "temp file {} in a tree output",
                out.join(rel).display()
            ));
        } else if !expected.contains_key(rel) {
            problems.push(format!(
                "unexpected file {} in a tree output",
                out.join(rel).display()
            ));
        }
    }
    let present: std::collections::HashSet<PathBuf> = present.into_iter().collect();
    let mut checked = 0;
    let mut decrypted = 0;
    for (i, (rel, size)) in src.files.iter().enumerate() {
        let sealed = out.join(sealed_name(rel));
        if !present.contains(&sealed_name(rel)) {
            if how != TreeCheck::Partial {
                problems.push(format!(
                    "{} is missing from a finished tree",
                    sealed.display()
                ));
            }
            continue;
        }
        let full = match how {
            TreeCheck::Full => true,
            TreeCheck::Sample(n) => (i + salt).is_multiple_of(n),
            TreeCheck::Partial => (i + salt).is_multiple_of(16),
        };
        let result = sealed_ok(&ring, &sealed, *size).and_then(|()| {
            if full {
                decrypted += 1;
                decrypts_to(&ring, &sealed, &fs::read(src.dir.join(rel)).unwrap())
            } else {
                Ok(())
            }
        });
        checked += 1;
        if let Err(e) = result {
            problems.push(e);
        }
    }
    bump(&s.c.tree_files_checked, checked);
    bump(&s.c.tree_files_decrypted, decrypted);
    problems
}

// ---- the workers -----------------------------------------------------------------------

/// Tree `k`, run after run. A finished run is checked and removed (phase 1) or kept for the
/// resume (phase 2); a cancelled run has its partial outputs checked and is resumed with
/// `skip_existing`.
fn tree_worker(s: &Soak, k: usize, phase: u8, deadline: Instant) {
    let Some(mut conn) = Conn::open(s, &format!("p{phase}-tree{k}"), Some("tree")) else {
        return;
    };
    let src = &s.trees[k];
    let mut run = 0;
    'runs: while !s.stopped() && run < MAX_ROUNDS && Instant::now() < deadline {
        run += 1;
        let out = s.root.join(format!("out/p{phase}-t{k}-r{run}"));
        s.tree_current.lock().unwrap()[k] = Some(out.clone());
        if phase == 2 {
            s.phase2_dirs.lock().unwrap().push((k, out.clone()));
        }
        let mut resume = false;
        let mut finished = false;
        for _attempt in 0..50 {
            let mut req = json!({
                "op": "encrypt", "recursive": true, "input": p(&src.dir), "output": p(&out),
            });
            if resume {
                req["skip_existing"] = json!(true);
            }
            s.tree_in_flight[k].store(true, Ordering::SeqCst);
            let Some(id) = conn.send(s, req, "tree") else {
                s.tree_in_flight[k].store(false, Ordering::SeqCst);
                break 'runs;
            };
            let end = conn.final_of(&id, Instant::now() + TREE_FINAL_WITHIN);
            s.tree_in_flight[k].store(false, Ordering::SeqCst);
            // No final reply: the ledger's audit reports it (with the SIGTERM rule).
            let Some(end) = end else { break 'runs };
            match (end["type"].as_str().unwrap_or(""), code_of(&end)) {
                ("done", _) => {
                    bump(&s.c.tree_runs_done, 1);
                    let ok = end["files_ok"].as_u64().unwrap_or(0);
                    let skipped = end["files_skipped"].as_u64().unwrap_or(0);
                    let failed = end["files_failed"].as_u64().unwrap_or(u64::MAX);
                    if failed != 0 || ok + skipped != src.files.len() as u64 {
                        s.violation(format!(
                            "tree {k} run {} ended done with {ok} ok, {skipped} skipped, \
                             {failed} failed of {} files: {end}",
                            out.display(),
                            src.files.len()
                        ));
                    }
                    if phase == 1 {
                        for problem in check_tree(s, k, &out, TreeCheck::Sample(12), run) {
                            s.violation(format!("tree {k} (finished run): {problem}"));
                        }
                    }
                    finished = true;
                    break;
                }
                ("error", "cancelled") => {
                    bump(&s.c.tree_runs_cancelled, 1);
                    for problem in check_tree(s, k, &out, TreeCheck::Partial, run) {
                        s.violation(format!("tree {k} (cancelled run): {problem}"));
                    }
                    if s.stopped() {
                        break 'runs;
                    }
                    resume = true;
                }
                ("error", "shutting_down") if phase == 2 => break 'runs,
                _ => {
                    s.violation(format!("tree {k}: unexpected end of a run: {end}"));
                    break 'runs;
                }
            }
        }
        if phase == 1 {
            if !finished {
                s.violation(format!("tree {k}: run {} never finished", out.display()));
            }
            let _ = fs::remove_dir_all(&out);
        }
    }
    if phase == 1 {
        // A run cut short when the load stopped: its partial outputs were checked.
        if let Some(out) = s.tree_current.lock().unwrap()[k].take() {
            let _ = fs::remove_dir_all(out);
        }
    }
    conn.end(s, phase);
}

/// One connection, bursts of pipelined single-file jobs past the queue bound.
fn pipe_worker(s: &Soak, phase: u8, deadline: Instant) {
    let Some(mut conn) = Conn::open(s, &format!("p{phase}-pipe"), Some("pipe")) else {
        return;
    };
    let inputs = s.pipe_inputs.lock().unwrap().clone();
    let plains: Vec<Vec<u8>> = inputs.iter().map(|i| fs::read(i).unwrap()).collect();
    let mut burst = 0;
    let mut bursts = Vec::new();
    while !s.stopped() && burst < MAX_ROUNDS && Instant::now() < deadline {
        burst += 1;
        let dir = s.root.join(format!("pipe/p{phase}-b{burst}"));
        fs::create_dir_all(&dir).unwrap();
        let mut sent = Vec::with_capacity(PIPE_BURST);
        for i in 0..PIPE_BURST {
            if s.stopped() {
                break;
            }
            let which = i % inputs.len();
            let output = dir.join(format!("{i}.rcrypt"));
            let req = json!({"op": "encrypt", "input": p(&inputs[which]), "output": p(&output)});
            match conn.send(s, req, "pipe") {
                Some(id) => sent.push((id, output, which)),
                None => break,
            }
        }
        if phase == 2 {
            s.pipe_burst_sent.store(true, Ordering::SeqCst);
        }
        let until = Instant::now() + BURST_FINALS_WITHIN;
        for (id, output, which) in &sent {
            let end = conn.final_of(id, until);
            check_pipe_output(s, &end, output, &plains[*which], id);
        }
        bursts.push(dir);
        if phase == 1 {
            let _ = fs::remove_dir_all(bursts.pop().unwrap());
        }
    }
    conn.end(s, phase);
}

/// A single-file job's output against its final reply: `done` left a whole output that
/// verifies; an `error` left nothing; no reply (connection closed by the shutdown): nothing,
/// or a whole output.
fn check_pipe_output(s: &Soak, end: &Option<Value>, output: &Path, plain: &[u8], id: &str) {
    let n: usize = id.rsplit('-').next().unwrap().parse().unwrap_or(0);
    let exists = output.exists();
    let whole = |full: bool| -> Result<(), String> {
        let ring = s.ring_now();
        sealed_ok(&ring, output, plain.len())?;
        if full {
            bump(&s.c.pipe_outputs_decrypted, 1);
            decrypts_to(&ring, output, plain)?;
        }
        Ok(())
    };
    match end {
        Some(end) if end["type"] == "done" => {
            if end["bytes_in"] != plain.len() as u64 {
                s.violation(format!("{id}: done with the wrong bytes_in: {end}"));
            }
            // Every 4th output verified (size, header, last tag), every 32nd decrypted.
            if n.is_multiple_of(4) || !exists {
                bump(&s.c.pipe_outputs_checked, 1);
                if let Err(e) = whole(n.is_multiple_of(32)) {
                    s.violation(format!("{id} ended done but {e}"));
                }
            }
        }
        Some(end) => {
            if exists {
                s.violation(format!(
                    "{id} ended {} but left {}",
                    reply_kind(end),
                    output.display()
                ));
            } else {
                bump(&s.c.pipe_errors_clean, 1);
            }
        }
        None if exists => {
            if let Err(e) = whole(true) {
                s.violation(format!("{id} got no reply and left a broken output: {e}"));
            }
        }
        None => {}
    }
}

/// An unnamed temp file in `dir`, as the client makes one.
fn tmpfile_in(dir: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .expect("O_TMPFILE in the test directory")
}

/// Gives an unnamed temp file the name `path` (what the client does after `done`).
fn link_into_place(file: &File, path: &Path) -> std::io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(Into::into)
}

/// Descriptor jobs, `FD_WINDOW` at a time, on files outside every allowed root.
fn fd_worker(s: &Soak, phase: u8, deadline: Instant) {
    let Some(mut conn) = Conn::open(s, &format!("p{phase}-fd"), Some("fd")) else {
        return;
    };
    let out_dir = s.outside.join("fdout");
    let mut round = 0;
    'rounds: while !s.stopped() && round < MAX_ROUNDS && Instant::now() < deadline {
        round += 1;
        let mut in_flight = Vec::new();
        for j in 0..FD_WINDOW {
            let (input, size) = &s.fd_inputs[(round * FD_WINDOW + j) % s.fd_inputs.len()];
            let source = File::open(input).unwrap();
            let temp = tmpfile_in(&out_dir);
            let name = out_dir.join(format!("p{phase}-r{round}-{j}.rcrypt"));
            let req = json!({"op": "encrypt", "input": p(input), "output": p(&name), "fds": true});
            match conn.send_fds(s, req, &[source.as_fd(), temp.as_fd()], "fd") {
                Some(id) => in_flight.push((id, temp, name, input, *size)),
                None => break 'rounds,
            }
        }
        let until = Instant::now() + BURST_FINALS_WITHIN;
        for (id, temp, name, input, size) in in_flight {
            let Some(end) = conn.final_of(&id, until) else {
                continue;
            };
            if end["type"] != "done" {
                if !matches!(code_of(&end), "busy" | "cancelled" | "shutting_down") {
                    s.violation(format!("{id}: descriptor job ended {end}"));
                }
                continue;
            }
            if end["bytes_in"] != size as u64 {
                s.violation(format!("{id}: done with the wrong bytes_in: {end}"));
            }
            let checked = link_into_place(&temp, &name)
                .map_err(|e| format!("link {}: {e}", name.display()))
                .and_then(|()| decrypts_to(&s.ring_now(), &name, &fs::read(input).unwrap()));
            match checked {
                Ok(()) => bump(&s.c.fd_outputs_decrypted, 1),
                Err(e) => s.violation(format!("{id} (descriptor job, done): {e}")),
            }
            let _ = fs::remove_file(&name);
        }
    }
    conn.end(s, phase);
}

/// Phase 2 only: a client pipelining through the SIGTERM. From the phase's start it writes,
/// every 2 ms, a burst of 16 `ping`s and one encrypt, each line on its own, so the daemon
/// always has lines of it in flight when the signal comes; it goes on after the SIGTERM
/// until a write fails (the daemon stopped reading) or 2 s have passed. Every line written in
/// full must get exactly one final reply (`pong`; for the encrypts `done`, `busy`,
/// `cancelled` or `shutting_down`), and an encrypt refused leaves no output.
fn late_worker(s: &Soak, deadline: Instant) {
    let Some(mut conn) = Conn::open(s, "p2-late", None) else {
        return;
    };
    let dir = s.root.join("pipe/p2-late");
    fs::create_dir_all(&dir).unwrap();
    let input = s.pipe_inputs.lock().unwrap()[0].clone();
    let mut sent = Vec::new();
    let mut after_sigterm = None;
    'bursts: for burst in 0..MAX_ROUNDS {
        let now = Instant::now();
        if now >= deadline || after_sigterm.is_some_and(|t: Instant| now >= t) {
            break;
        }
        if after_sigterm.is_none() && s.stopped() {
            after_sigterm = Some(now + Duration::from_secs(2));
        }
        for _ in 0..16 {
            if conn.send(s, json!({"op": "ping"}), "late").is_none() {
                break 'bursts;
            }
        }
        let output = dir.join(format!("{burst}.rcrypt"));
        let req = json!({"op": "encrypt", "input": p(&input), "output": p(&output)});
        let Some(id) = conn.send(s, req, "late") else {
            break;
        };
        sent.push((id, output));
        std::thread::sleep(Duration::from_millis(2));
    }
    let plain = fs::read(&input).unwrap();
    let until = Instant::now() + SIGTERM_EXIT_WITHIN + Duration::from_secs(20);
    for (id, output) in &sent {
        let end = conn.final_of(id, until);
        check_pipe_output(s, &end, output, &plain, id);
    }
    conn.end(s, 2);
}

/// Cancels random jobs by the ids `accepted` gave: mostly pipelined files, some descriptor
/// jobs, now and then a whole tree.
fn cancel_worker(s: &Soak, phase: u8, deadline: Instant) {
    let Some(mut conn) = Conn::open(s, &format!("p{phase}-cancel"), None) else {
        return;
    };
    let mut rng = Rng(0x5eed_0000 + phase as u64);
    let mut n = 0;
    while !s.stopped() && n < MAX_ROUNDS && Instant::now() < deadline {
        n += 1;
        std::thread::sleep(Duration::from_millis(40 + rng.below(160) as u64));
        let want = match rng.below(16) {
            0 => "tree",
            1..=3 => "fd",
            _ => "pipe",
        };
        let Some((job, _kind)) = s.pool.take(want, &mut rng) else {
            continue;
        };
        let Some(id) = conn.send(s, json!({"op": "cancel", "job": job}), "cancel") else {
            break;
        };
        bump(&s.c.cancels_sent, 1);
        let Some(end) = conn.final_of(&id, Instant::now() + Duration::from_secs(30)) else {
            break;
        };
        match (end["type"].as_str().unwrap_or(""), code_of(&end)) {
            ("cancelled", _) => bump(&s.c.cancels_cancelled, 1),
            ("error", "not_found") => bump(&s.c.cancels_too_late, 1),
            ("error", "shutting_down") if phase == 2 => {}
            _ => s.violation(format!("{id}: cancel of {job} answered {end}")),
        }
    }
    conn.end(s, phase);
}

/// `Soak::flood_cue`: phase 2 asks for a batch (`CUE_WRITTEN - 1`), the flooder says when
/// it is written.
const CUE_WRITTEN: u8 = 2;
const BAD: &str = "bad_request";
const LARGE: &str = "too_large";

/// Malformed, unknown, junk and over-long lines, with a ping now and then.
fn flood_worker(s: &Soak, phase: u8, deadline: Instant) {
    let Some(mut conn) = Conn::open(s, &format!("p{phase}-flood"), None) else {
        return;
    };
    let mut junk = bytes(3000, 77);
    for b in junk.iter_mut() {
        if *b == b'\n' {
            *b = 0xff;
        }
    }
    junk[0] = 0xfe;
    junk.push(b'\n');
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    let mut huge = vec![b'{'; 1 << 20];
    huge.push(b'\n');
    let mut batch = 0;
    let mut batch_cued = false;
    'batches: while !s.stopped() && batch < MAX_ROUNDS && Instant::now() < deadline {
        batch += 1;
        for j in 0..24 {
            bump(&s.c.flood_lines, 1);
            let sent = match j % 8 {
                0 => conn.send_idless(format!("this is not json {batch}\n").as_bytes(), BAD),
                1 => conn.send(s, json!({"op": "frobnicate"}), "flood").is_some(),
                2 => conn
                    .send(
                        s,
                        json!({"op": "encrypt", "input": "relative/x", "output": "/x"}),
                        "flood",
                    )
                    .is_some(),
                3 => conn
                    .send(
                        s,
                        json!({"op": "encrypt", "input": "/a", "output": "/b", "overwirte": true}),
                        "flood",
                    )
                    .is_some(),
                4 => conn.send_idless(b"[1,2,3]\n", BAD),
                5 => conn.send_idless(&junk, BAD),
                6 => conn.send_idless(&long, LARGE),
                _ => conn.send(s, json!({"op": "ping"}), "flood").is_some(),
            };
            if !sent {
                break 'batches;
            }
        }
        if batch % 20 == 0 && !conn.send_idless(&huge, LARGE) {
            break;
        }
        // Phase 2's SIGTERM comes right after a batch (see `run_phase`): the cue cuts the
        // pause short.
        if s.flood_cue.load(Ordering::SeqCst) == CUE_WRITTEN - 1 && batch_cued {
            s.flood_cue.store(CUE_WRITTEN, Ordering::SeqCst);
        }
        batch_cued = false;
        for _ in 0..25 {
            if s.flood_cue.load(Ordering::SeqCst) == CUE_WRITTEN - 1 {
                batch_cued = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    conn.end(s, phase);
}

/// Adds a key, makes it the default, SIGHUP; `keys` must show the new default soon.
fn reload_worker(s: &Soak, phase: u8, deadline: Instant) {
    let Some(mut conn) = Conn::open(s, &format!("p{phase}-reload"), None) else {
        return;
    };
    let pid = s.daemon_pid.load(Ordering::SeqCst) as i32;
    let mut n = 0;
    'reloads: while n < 1000 && Instant::now() < deadline {
        let next = Instant::now() + RELOAD_EVERY;
        while Instant::now() < next {
            if s.stopped() {
                break 'reloads;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        n += 1;
        let name = s.add_key(s.next_id.fetch_add(1, Ordering::Relaxed));
        // SAFETY: kill(2) on the daemon's pid, a child of this process not yet reaped.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            break;
        }
        bump(&s.c.reloads_sent, 1);
        let seen_by = Instant::now() + RELOAD_SEEN_WITHIN;
        let mut seen = false;
        while Instant::now() < seen_by {
            let Some(id) = conn.send(s, json!({"op": "keys"}), "keys") else {
                break 'reloads;
            };
            let Some(keys) = conn.final_of(&id, seen_by) else {
                break 'reloads;
            };
            if keys["default"] == name.as_str() {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if seen {
            bump(&s.c.reloads_seen, 1);
        } else if !s.stopped() {
            s.violation(format!(
                "SIGHUP {n}: the new default key {name} did not show in `keys` within \
                 {RELOAD_SEEN_WITHIN:?}"
            ));
        }
    }
    conn.end(s, phase);
}

// ---- the phases ------------------------------------------------------------------------

/// Picks one pipeline input owned by each shard (from the shard part of the job ids), then
/// runs a little of every kind of work, so the baseline is taken on a daemon that has
/// already allocated what it keeps.
fn warm_up(s: &Soak) {
    let mut conn = Conn::open(s, "warm", None).expect("connect for the warm-up");
    let dir = s.root.join("pipe-in");
    fs::create_dir_all(&dir).unwrap();
    let warm = s.root.join("warm");
    fs::create_dir_all(&warm).unwrap();
    let mut by_shard: BTreeMap<String, PathBuf> = BTreeMap::new();
    for i in 0..16 {
        let input = dir.join(format!("in{i}.bin"));
        fs::write(&input, bytes(PIPE_FILE_BYTES, 900 + i)).unwrap();
        let output = warm.join(format!("probe{i}.rcrypt"));
        let req = json!({"op": "encrypt", "input": p(&input), "output": p(&output)});
        let id = conn.send(s, req, "warm").expect("warm-up request written");
        let end = conn
            .final_of(&id, Instant::now() + Duration::from_secs(60))
            .expect("warm-up job answered");
        assert_eq!(end["type"], "done", "warm-up job: {end}");
        let shard = end["job"]
            .as_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string();
        by_shard.entry(shard).or_insert(input);
        if by_shard.len() == 2 {
            break;
        }
    }
    assert_eq!(by_shard.len(), 2, "found no input owned by each shard");
    *s.pipe_inputs.lock().unwrap() = by_shard.into_values().collect();
    // Every running slot of both shards, a tree, a descriptor job, malformed lines, `keys`.
    let inputs = s.pipe_inputs.lock().unwrap().clone();
    let mut ids = Vec::new();
    for i in 0..64 {
        let output = warm.join(format!("w{i}.rcrypt"));
        let req = json!({"op": "encrypt", "input": p(&inputs[i % 2]), "output": p(&output)});
        ids.extend(conn.send(s, req, "warm"));
    }
    let tree = json!({
        "op": "encrypt", "recursive": true,
        "input": p(&s.trees[0].dir), "output": p(&warm.join("tree")),
    });
    ids.extend(conn.send(s, tree, "warm"));
    let source = File::open(&s.fd_inputs[3].0).unwrap();
    let temp = tmpfile_in(&s.outside.join("fdout"));
    let req = json!({
        "op": "encrypt", "input": p(&s.fd_inputs[3].0), "output": "/warm.rcrypt", "fds": true,
    });
    ids.extend(conn.send_fds(s, req, &[source.as_fd(), temp.as_fd()], "warm"));
    conn.send_idless(b"not json\n", BAD);
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    conn.send_idless(&long, LARGE);
    ids.extend(conn.send(s, json!({"op": "keys"}), "warm"));
    for id in &ids {
        let end = conn
            .final_of(id, Instant::now() + Duration::from_secs(120))
            .unwrap_or_else(|| panic!("warm-up request {id} got no final reply"));
        assert!(
            matches!(end["type"].as_str(), Some("done" | "keys")),
            "warm-up request {id}: {end}"
        );
    }
    conn.close(s, Duration::from_secs(30));
    drop((source, temp));
    fs::remove_dir_all(&warm).unwrap();
}

/// Idle connections: opened, never written to.
fn open_idle(s: &Soak) -> Vec<UnixStream> {
    (0..IDLE_CONNS)
        .filter_map(|_| UnixStream::connect(&s.socket).ok())
        .collect()
}

/// After the daemon exited, an idle connection must have been closed without a byte.
fn check_idle_closed(s: &Soak, idle: Vec<UnixStream>) {
    for (i, stream) in idle.into_iter().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        match (&stream).take(1 << 16).read_to_end(&mut got) {
            Ok(_) if got.is_empty() => {}
            Ok(_) => s.violation(format!(
                "idle connection {i} received {:?} without sending anything",
                String::from_utf8_lossy(&got)
            )),
            Err(e) => s.violation(format!("idle connection {i}: not closed at exit: {e}")),
        }
    }
}

/// Spawns every worker for `phase` and returns when they all ended. Phase 1 runs for `load`
/// and then lets the workers finish; phase 2 sends the SIGTERM once the trees are under way
/// and returns the daemon's exit status and how long it took (None: it did not exit).
fn run_phase(
    s: &Soak,
    d: &mut Proc,
    phase: u8,
    load: Duration,
) -> Option<(Option<ExitStatus>, Duration)> {
    s.stop.store(false, Ordering::SeqCst);
    s.flood_cue.store(0, Ordering::SeqCst);
    s.phase.store(phase as usize, Ordering::SeqCst);
    s.pipe_burst_sent.store(false, Ordering::SeqCst);
    let started = Instant::now();
    // Workers stop sending at the phase's end; this is only their outer bound.
    let worker_deadline = started + load + Duration::from_secs(60);
    let idle = open_idle(s);
    let mut outcome = None;
    std::thread::scope(|scope| {
        for k in 0..TREES {
            scope.spawn(move || tree_worker(s, k, phase, worker_deadline));
        }
        scope.spawn(move || pipe_worker(s, phase, worker_deadline));
        scope.spawn(move || fd_worker(s, phase, worker_deadline));
        scope.spawn(move || cancel_worker(s, phase, worker_deadline));
        scope.spawn(move || flood_worker(s, phase, worker_deadline));
        if phase == 2 {
            scope.spawn(move || late_worker(s, worker_deadline));
        }
        if phase == 1 {
            scope.spawn(move || reload_worker(s, phase, worker_deadline));
        }
        if phase == 1 {
            while started.elapsed() < load {
                if let Some(status) = d.exited() {
                    s.violation(format!(
                        "the daemon died during the load ({}); log tail:\n{}",
                        describe_status(status),
                        d.log_tail(30)
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            s.stop.store(true, Ordering::SeqCst);
            return;
        }
        // Phase 2: SIGTERM once every tree has outputs and is still running, and the
        // pipeline's burst is written (so the queues are full); at most 20 s.
        let at_least = Duration::from_secs(2);
        loop {
            if let Some(status) = d.exited() {
                s.violation(format!(
                    "the daemon died before the SIGTERM ({}); log tail:\n{}",
                    describe_status(status),
                    d.log_tail(30)
                ));
                s.stop.store(true, Ordering::SeqCst);
                return;
            }
            let current = s.tree_current.lock().unwrap().clone();
            let trees_under_way = (0..TREES).all(|k| {
                s.tree_in_flight[k].load(Ordering::SeqCst)
                    && current[k]
                        .as_ref()
                        .is_some_and(|dir| files_under(dir).len() >= 10)
            });
            let ready = trees_under_way && s.pipe_burst_sent.load(Ordering::SeqCst);
            if (ready && started.elapsed() >= at_least)
                || started.elapsed() >= Duration::from_secs(20)
            {
                if !ready {
                    eprintln!(
                        "soak {}: SIGTERM after 20 s without every tree under way",
                        s.backend
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The SIGTERM comes as the flooder has just written a batch, so some of its lines
        // are surely still on their way (at most 2 s of waiting for it).
        s.flood_cue.store(CUE_WRITTEN - 1, Ordering::SeqCst);
        let cue_by = Instant::now() + Duration::from_secs(2);
        while s.flood_cue.load(Ordering::SeqCst) != CUE_WRITTEN && Instant::now() < cue_by {
            std::thread::sleep(Duration::from_micros(200));
        }
        *s.sigterm_at.lock().unwrap() = Some(Instant::now());
        s.stop.store(true, Ordering::SeqCst);
        let (status, took) = d.terminate(SIGTERM_EXIT_WITHIN);
        outcome = Some((status, took));
    });
    if phase == 1 {
        // Silent connections got nothing; the test closes them.
        for (i, stream) in idle.iter().enumerate() {
            stream.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            match (&*stream).read(&mut byte) {
                Ok(0) => s.violation(format!(
                    "idle connection {i} was closed during phase 1 (the idle limit is 300 s)"
                )),
                Ok(_) => s.violation(format!(
                    "idle connection {i} received bytes it never asked for"
                )),
                Err(_) => {}
            }
        }
        drop(idle);
    } else {
        check_idle_closed(s, idle);
    }
    outcome
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!(
            "killed by signal {signal}{}",
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        ),
        _ => format!("{status}"),
    }
}

/// Resumes every tree the SIGTERM interrupted, on the restarted daemon, with
/// `skip_existing`, until it ends `done` with no failed file.
fn resume_trees(s: &Soak) -> usize {
    let dirs = s.phase2_dirs.lock().unwrap().clone();
    let mut resumed = 0;
    std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|(k, out)| {
                scope.spawn(move || {
                    let Some(mut conn) = Conn::open(s, &format!("resume-t{k}"), None) else {
                        return false;
                    };
                    let src = &s.trees[*k];
                    let mut ok = false;
                    for attempt in 1..=RESUME_ATTEMPTS {
                        let req = json!({
                            "op": "encrypt", "recursive": true, "skip_existing": true,
                            "input": p(&src.dir), "output": p(out),
                        });
                        let Some(id) = conn.send(s, req, "resume") else {
                            break;
                        };
                        let Some(end) = conn.final_of(&id, Instant::now() + TREE_FINAL_WITHIN)
                        else {
                            s.violation(format!("resume of {}: no final reply", out.display()));
                            break;
                        };
                        let failed = end["files_failed"].as_u64();
                        if end["type"] == "done" && failed == Some(0) {
                            let total = end["files_ok"].as_u64().unwrap_or(0)
                                + end["files_skipped"].as_u64().unwrap_or(0);
                            if total != src.files.len() as u64 {
                                s.violation(format!(
                                    "resume of {}: {total} files of {}: {end}",
                                    out.display(),
                                    src.files.len()
                                ));
                            }
                            ok = true;
                            break;
                        }
                        eprintln!(
                            "soak {}: resume {attempt} of {} ended {end}",
                            s.backend,
                            out.display()
                        );
                        if end["type"] != "done" {
                            break;
                        }
                    }
                    if !ok {
                        s.violation(format!(
                            "tree {} never ended done with no failed file after the restart",
                            out.display()
                        ));
                    }
                    conn.close(s, Duration::from_secs(30));
                    ok
                })
            })
            .collect();
        resumed = handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|ok| *ok)
            .count();
    });
    resumed
}

// ---- the audit of every connection -----------------------------------------------------

#[derive(Default)]
struct Tally {
    /// Final replies by kind (`done`, `error busy`, `pong`, ...).
    finals: BTreeMap<String, u64>,
    requests: u64,
    requests_after_sigterm: u64,
    /// Requests written in full that got no final reply (each one is a violation).
    unanswered: u64,
    idless_sent: u64,
    idless_errors: u64,
    connections: u64,
    resets: u64,
}

/// Applies the one-final-reply rules to every connection's ledger.
fn audit(s: &Soak) -> Tally {
    let sigterm_at = *s.sigterm_at.lock().unwrap();
    let mut tally = Tally::default();
    let ledgers = s.ledgers.lock().unwrap().clone();
    for ledger in ledgers {
        let sigterm = if ledger.shutdown_rule {
            sigterm_at
        } else {
            None
        };
        let st = ledger.state.lock().unwrap();
        let name = &ledger.name;
        tally.connections += 1;
        tally.resets += st.reset as u64;
        if !st.eof {
            s.violation(format!("{name}: the reader never saw the connection end"));
        }
        if let Some(e) = &st.read_error {
            s.violation(format!("{name}: read error: {e}"));
        }
        for stray in st.strays.iter().take(5) {
            s.violation(format!("{name}: {stray}"));
        }
        if st.strays.len() > 5 {
            s.violation(format!(
                "{name}: {} more stray replies",
                st.strays.len() - 5
            ));
        }
        let since_sigterm = |at: Instant| match sigterm {
            Some(t) if at >= t => format!("{:?} after the SIGTERM", at - t),
            Some(t) => format!("{:?} before the SIGTERM", t - at),
            None => "no SIGTERM".to_string(),
        };
        let mut missing = Vec::new();
        for id in &st.order {
            let track = &st.tracks[id];
            let written = match track.sent {
                Sent::At(at) => Some(at),
                Sent::Failed | Sent::Writing => None,
            };
            tally.requests += written.is_some() as u64;
            let after_sigterm = written.zip(sigterm).is_some_and(|(at, t)| at >= t);
            tally.requests_after_sigterm += after_sigterm as u64;
            for end in &track.finals {
                *tally.finals.entry(reply_kind(end)).or_default() += 1;
            }
            match (track.finals.len(), written) {
                (0, Some(at)) => missing.push(format!(
                    "{id} ({}, written {})",
                    track.what,
                    since_sigterm(at)
                )),
                (0, None) | (1, _) => {}
                (n, _) => s.violation(format!(
                    "{name}: {id} ({}) got {n} final replies: {:?}",
                    track.what, track.finals
                )),
            }
            if track.accepted > 1 {
                s.violation(format!(
                    "{name}: {id} was accepted {} times",
                    track.accepted
                ));
            }
            if !track.after_final.is_empty() {
                s.violation(format!(
                    "{name}: {id} got replies after its final one: {:?}",
                    track.after_final
                ));
            }
        }
        tally.unanswered += missing.len() as u64;
        if !missing.is_empty() {
            s.violation(format!(
                "{name}: {} request(s) written in full got no final reply before the \
                 connection {}: {}{}",
                missing.len(),
                match (st.closed_by_test, st.reset) {
                    (true, _) => "was closed by the test",
                    (false, true) => "was reset by the daemon (ECONNRESET: our bytes unread)",
                    (false, false) => "was closed by the daemon (EOF)",
                },
                missing[..missing.len().min(8)].join(", "),
                if missing.len() > 8 { ", ..." } else { "" }
            ));
        }
        tally.idless_sent += st.idless_sent.len() as u64;
        tally.idless_errors += st.idless_replies.len() as u64;
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for (_, code) in &st.idless_sent {
            *want.entry(format!("error {code}")).or_default() += 1;
        }
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for reply in &st.idless_replies {
            *tally.finals.entry(reply_kind(reply)).or_default() += 1;
            *got.entry(reply_kind(reply)).or_default() += 1;
        }
        let mut may: BTreeMap<String, usize> = BTreeMap::new();
        for code in &st.idless_failed {
            *may.entry(format!("error {code}")).or_default() += 1;
        }
        let within = want.keys().chain(got.keys()).all(|kind| {
            let (w, g) = (
                want.get(kind).copied().unwrap_or(0),
                got.get(kind).copied().unwrap_or(0),
            );
            w <= g && g <= w + may.get(kind).copied().unwrap_or(0)
        });
        if !within {
            // The replies of kinds that came more often than their lines, to show what.
            let surplus: Vec<String> = st
                .idless_replies
                .iter()
                .filter(|r| got[&reply_kind(r)] > want.get(&reply_kind(r)).copied().unwrap_or(0))
                .rev()
                .take(3)
                .map(|r| r.to_string())
                .collect();
            s.violation(format!(
                "{name}: lines without an id must get one error each: sent {want:?} \
                 (the last written {}; cut short by a failed write: {may:?}), got {got:?}; \
                 last replies of a kind in surplus: {surplus:?}",
                st.idless_sent
                    .last()
                    .map_or("-".to_string(), |(at, _)| since_sigterm(*at))
            ));
        }
    }
    tally
}

fn check_log(s: &Soak, d: &Proc, which: &str) {
    let log = d.log_text();
    for needle in [
        "panicked",
        "stack overflow",
        "fatal runtime error",
        "RUST_BACKTRACE",
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            s.violation(format!("{which} log: {line}"));
        }
    }
}

fn check_no_temp_files(s: &Soak, when: &str) {
    let left = temp_files(s.dir.path());
    if !left.is_empty() {
        s.violation(format!("{when}: temp files remain: {left:?}"));
    }
}

// ---- the test --------------------------------------------------------------------------

fn soak(backend: &'static str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let load = Duration::from_secs(load_secs());
    let s = Soak::new(backend);
    let mut d1 = Proc::spawn(&s, "d1.log");

    warm_up(&s);
    std::thread::sleep(Duration::from_millis(500));
    let pid1 = d1.pid();
    let base = (
        open_fds(pid1).expect("fd count"),
        rss_kib(pid1).expect("VmRSS"),
    );

    // Phase 1: the soak proper; then every connection closes and the daemon settles.
    run_phase(&s, &mut d1, 1, load);
    let mut after_load = None;
    if d1.exited().is_none() {
        after_load = Some(check_settled(&s, pid1, base, "after phase 1"));
    }

    // Phase 2: the same load, and one SIGTERM while the trees run and the queues are full.
    let mut term = None;
    let mut restarted = None;
    if s.violations
        .lock()
        .unwrap()
        .iter()
        .all(|v| !v.starts_with("the daemon died"))
    {
        term = run_phase(&s, &mut d1, 2, Duration::from_secs(20));
        match term {
            Some((Some(status), took)) if !status.success() => {
                s.violation(format!(
                    "after SIGTERM the daemon ended with {} (want exit 0) after {took:?}; \
                     log tail:\n{}",
                    describe_status(status),
                    d1.log_tail(30)
                ));
            }
            Some((Some(_), _)) => {}
            Some((None, _)) => s.violation(format!(
                "the daemon did not exit within {SIGTERM_EXIT_WITHIN:?} of SIGTERM (killed); \
                 log tail:\n{}",
                d1.log_tail(30)
            )),
            None => {}
        }
    } else {
        s.stop.store(true, Ordering::SeqCst);
    }
    check_log(&s, &d1, "first daemon");
    // Before the restart: its start-up sweep would remove what a shutdown left behind.
    check_no_temp_files(&s, "after the first daemon exited");

    // Restart on the same directories; resume every interrupted tree; check everything.
    let mut resumed = 0;
    let mut verified = 0;
    if d1.exited().is_some() || term.is_some() {
        d1.child = None;
        s.phase.store(3, Ordering::SeqCst);
        s.stop.store(false, Ordering::SeqCst);
        let mut d2 = Proc::spawn(&s, "d2.log");
        let pid2 = d2.pid();
        let base2 = (open_fds(pid2).unwrap_or(0), rss_kib(pid2).unwrap_or(0));
        resumed = resume_trees(&s);
        let dirs = s.phase2_dirs.lock().unwrap().clone();
        let problems: Vec<String> = std::thread::scope(|scope| {
            let halves: Vec<_> = [0, 1]
                .into_iter()
                .map(|half| {
                    let (s, dirs) = (&s, &dirs);
                    scope.spawn(move || {
                        dirs.iter()
                            .enumerate()
                            .filter(|(i, _)| i % 2 == half)
                            .flat_map(|(_, (k, out))| check_tree(s, *k, out, TreeCheck::Full, 0))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        for problem in problems {
            s.violation(format!("after the resume: {problem}"));
        }
        verified = dirs
            .iter()
            .map(|(k, _)| s.trees[*k].files.len())
            .sum::<usize>();
        let after = check_settled(&s, pid2, base, "restarted daemon after the resume");
        restarted = Some((base2, after));
        check_no_temp_files(&s, "after the resume");
        if d2.exited().is_some() {
            s.violation("the restarted daemon died".into());
        } else {
            let (status, took) = d2.terminate(SIGTERM_EXIT_WITHIN);
            if !status.is_some_and(|st| st.success()) {
                s.violation(format!(
                    "the restarted daemon, idle, did not exit 0 on SIGTERM: {status:?} after \
                     {took:?}"
                ));
            }
        }
        check_log(&s, &d2, "restarted daemon");
    }

    let tally = audit(&s);
    let busy = tally.finals.get("error busy").copied().unwrap_or(0);
    if busy == 0 {
        s.violation("no pipelined job got `busy`: the load never reached the queue bound".into());
    }
    if get(&s.c.reloads_seen) == 0 {
        s.violation("no SIGHUP reload was seen".into());
    }
    let logged_reloads = d1.log_text().matches("key ring reloaded").count();

    // The summary.
    let c = &s.c;
    println!(
        "\nsoak {backend}: {load:?} of load, {:.1?} in all{}",
        started.elapsed(),
        if s.named_temps {
            " (named temp files)"
        } else {
            ""
        }
    );
    println!("| {:<46} | {:>14} |", "final replies, by type", "count");
    println!("|{:-<48}|{:-<16}|", "", "");
    for (kind, n) in &tally.finals {
        println!("| {kind:<46} | {n:>14} |");
    }
    let row = |what: &str, value: String| println!("| {what:<46} | {value:>14} |");
    row(
        "requests written (connections)",
        format!("{} ({})", tally.requests, tally.connections),
    );
    row("connections reset by the daemon", tally.resets.to_string());
    row(
        "id-less lines written / their errors",
        format!("{} / {}", tally.idless_sent, tally.idless_errors),
    );
    row(
        "written after SIGTERM / unanswered (all)",
        format!("{} / {}", tally.requests_after_sigterm, tally.unanswered),
    );
    row("busy", busy.to_string());
    row(
        "cancels sent / cancelled / already ended",
        format!(
            "{} / {} / {}",
            get(&c.cancels_sent),
            get(&c.cancels_cancelled),
            get(&c.cancels_too_late)
        ),
    );
    row(
        "SIGHUPs sent / seen in keys / logged",
        format!(
            "{} / {} / {logged_reloads}",
            get(&c.reloads_sent),
            get(&c.reloads_seen)
        ),
    );
    row(
        "tree runs done / cancelled and resumed",
        format!(
            "{} / {}",
            get(&c.tree_runs_done),
            get(&c.tree_runs_cancelled)
        ),
    );
    row(
        "tree files verified / decrypted in full",
        format!(
            "{} / {}",
            get(&c.tree_files_checked),
            get(&c.tree_files_decrypted)
        ),
    );
    row(
        "trees resumed after restart (files)",
        format!("{resumed} ({verified})"),
    );
    row(
        "pipelined outputs verified / decrypted",
        format!(
            "{} / {}",
            get(&c.pipe_outputs_checked),
            get(&c.pipe_outputs_decrypted)
        ),
    );
    row(
        "pipelined errors that left nothing",
        get(&c.pipe_errors_clean).to_string(),
    );
    row(
        "descriptor outputs linked and decrypted",
        get(&c.fd_outputs_decrypted).to_string(),
    );
    row("flood lines", get(&c.flood_lines).to_string());
    match term {
        Some((Some(status), took)) => row(
            "SIGTERM: exit, time",
            format!("{}, {:.1?}", describe_status(status), took),
        ),
        Some((None, took)) => row("SIGTERM: exit, time", format!("none, {took:.1?}")),
        None => row("SIGTERM: exit, time", "not sent".into()),
    }
    row(
        "fds: baseline / after phase 1",
        format!(
            "{} / {}",
            base.0,
            after_load.map_or("-".into(), |a| a.0.to_string())
        ),
    );
    row(
        "RSS KiB: baseline / after phase 1",
        format!(
            "{} / {}",
            base.1,
            after_load.map_or("-".into(), |a| a.1.to_string())
        ),
    );
    if let Some((base2, after)) = restarted {
        row(
            "fds: restart / after the resume",
            format!("{} / {}", base2.0, after.0),
        );
        row(
            "RSS KiB: restart / after the resume",
            format!("{} / {}", base2.1, after.1),
        );
    }
    let violations = s.violations.lock().unwrap().clone();
    row("invariants broken", violations.len().to_string());
    if !violations.is_empty() {
        if std::env::var_os("RINGCRYPT_SOAK_KEEP").is_some() {
            let Soak { dir, .. } = s;
            eprintln!("soak {backend}: kept {}", dir.keep().display());
        }
        panic!(
            "soak {backend}: {} invariant(s) broken:\n- {}",
            violations.len(),
            violations.join("\n- ")
        );
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name("uring") })*
        }
        mod sync {
            $(#[test] fn $name() { super::$name("sync") })*
        }
    };
}

both_backends!(soak);
