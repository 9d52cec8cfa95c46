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
//!
//! The parts: `state.rs` (what the threads share), `ledger.rs` (a connection and its
//! ledger), `workers.rs` (the load), `phases.rs` (warm-up, phases, resume), `checks.rs`
//! (outputs, settling, the audit, logs) and `report.rs` (the summary).

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod checks;
mod ledger;
mod phases;
mod report;
mod state;
mod workers;

use std::fs;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use checks::{
    TreeCheck, audit, check_log, check_no_temp_files, check_settled, check_tree, describe_status,
    log_tail,
};
use phases::{resume_trees, run_phase, warm_up};
use report::Summary;
use state::{RingFile, Soak, get};
use support::{AtDrop, Daemon, open_fds, rss_kib};

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

/// The soak's daemon on a directory of its own, not started: `--shards 2 --fsync never
/// --metrics off`, the key ring `ring`, named temp files when `RINGCRYPT_SOAK_NAMED_TEMPS`
/// asks for them. The test judges its end itself; a daemon still running when the test
/// fails part-way is killed.
fn daemon(backend: &'static str, ring: &RingFile) -> Daemon {
    let builder = Daemon::builder(backend)
        .prefix("ringcrypt-soak-")
        .metrics("off")
        .ring(ring.text())
        .at_drop(AtDrop::Kill);
    if state::named_temps() {
        builder.env("RINGCRYPT_TEST_NO_TMPFILE", "1")
    } else {
        builder
    }
    .prepare()
}

/// Starts the daemon (again) and tells the workers its pid.
fn launch(s: &Soak, d: &mut Daemon) {
    d.launch();
    s.daemon_pid.store(d.pid() as usize, Ordering::SeqCst);
}

fn soak(backend: &'static str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let load = Duration::from_secs(load_secs());
    let ring = RingFile::initial();
    let mut d = daemon(backend, &ring);
    let s = Soak::new(backend, &d, ring);
    launch(&s, &mut d);
    let first_log = d.log.clone();

    warm_up(&s);
    std::thread::sleep(Duration::from_millis(500));
    let pid1 = d.pid();
    let base = (
        open_fds(pid1).expect("fd count"),
        rss_kib(pid1).expect("VmRSS"),
    );

    // Phase 1: the soak proper; then every connection closes and the daemon settles.
    run_phase(&s, &d, 1, load);
    let mut after_load = None;
    if d.exited().is_none() {
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
        term = run_phase(&s, &d, 2, Duration::from_secs(20));
        match term {
            Some((Some(status), took)) if !status.success() => {
                s.violation(format!(
                    "after SIGTERM the daemon ended with {} (want exit 0) after {took:?}; \
                     log tail:\n{}",
                    describe_status(status),
                    log_tail(&d, 30)
                ));
            }
            Some((Some(_), _)) => {}
            Some((None, _)) => s.violation(format!(
                "the daemon did not exit within {SIGTERM_EXIT_WITHIN:?} of SIGTERM (killed); \
                 log tail:\n{}",
                log_tail(&d, 30)
            )),
            None => {}
        }
    } else {
        s.stop.store(true, Ordering::SeqCst);
    }
    check_log(&s, &d.log_text(), "first daemon");
    // Before the restart: its start-up sweep would remove what a shutdown left behind.
    check_no_temp_files(&s, "after the first daemon exited");

    // Restart on the same directories; resume every interrupted tree; check everything.
    let mut resumed = 0;
    let mut verified = 0;
    if d.exited().is_some() || term.is_some() {
        d.forget();
        s.phase.store(3, Ordering::SeqCst);
        s.stop.store(false, Ordering::SeqCst);
        launch(&s, &mut d);
        let pid2 = d.pid();
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
        if d.exited().is_some() {
            s.violation("the restarted daemon died".into());
        } else {
            let (status, took) = d.terminate(SIGTERM_EXIT_WITHIN);
            if !status.is_some_and(|st| st.success()) {
                s.violation(format!(
                    "the restarted daemon, idle, did not exit 0 on SIGTERM: {status:?} after \
                     {took:?}"
                ));
            }
        }
        check_log(&s, &d.log_text(), "restarted daemon");
    }

    let tally = audit(&s);
    let busy = tally.finals.get("error busy").copied().unwrap_or(0);
    if busy == 0 {
        s.violation("no pipelined job got `busy`: the load never reached the queue bound".into());
    }
    if get(&s.c.reloads_seen) == 0 {
        s.violation("no SIGHUP reload was seen".into());
    }
    let logged_reloads = fs::read_to_string(&first_log)
        .unwrap_or_default()
        .matches("key ring reloaded")
        .count();

    let violations = s.violations.lock().unwrap().clone();
    Summary {
        backend,
        load,
        took: started.elapsed(),
        tally,
        busy,
        logged_reloads,
        resumed,
        verified,
        term,
        base,
        after_load,
        restarted,
        violations: violations.len(),
    }
    .print(&s);
    if !violations.is_empty() {
        if std::env::var_os("RINGCRYPT_SOAK_KEEP").is_some() {
            d.dir.disable_cleanup(true);
            eprintln!("soak {backend}: kept {}", d.dir.path().display());
        }
        panic!(
            "soak {backend}: {} invariant(s) broken:\n- {}",
            violations.len(),
            violations.join("\n- ")
        );
    }
}

both_backends!(soak);
