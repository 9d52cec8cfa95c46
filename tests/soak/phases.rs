//! The phases: the warm-up that finds an input owned by each shard, a phase of load (with
//! the SIGTERM at the end of phase 2), idle connections, and the resume after the restart.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::checks::{describe_status, entries_under, log_tail};
use crate::ledger::Conn;
use crate::state::Soak;
use crate::support::{Daemon, bytes, p, tmpfile_in};
use crate::workers::{
    BAD, CUE_WRITTEN, LARGE, cancel_worker, fd_worker, flood_worker, late_worker, pipe_worker,
    reload_worker, tree_worker,
};
use crate::{
    IDLE_CONNS, PIPE_FILE_BYTES, RESUME_ATTEMPTS, SIGTERM_EXIT_WITHIN, TREE_FINAL_WITHIN, TREES,
};

/// Picks one pipeline input owned by each shard (from the shard part of the job ids), then
/// runs a little of every kind of work, so the baseline is taken on a daemon that has
/// already allocated what it keeps.
pub(crate) fn warm_up(s: &Soak) {
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
pub(crate) fn open_idle(s: &Soak) -> Vec<UnixStream> {
    (0..IDLE_CONNS)
        .filter_map(|_| UnixStream::connect(&s.socket).ok())
        .collect()
}

/// After the daemon exited, an idle connection must have been closed without a byte.
pub(crate) fn check_idle_closed(s: &Soak, idle: Vec<UnixStream>) {
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
pub(crate) fn run_phase(
    s: &Soak,
    d: &Daemon,
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
                        log_tail(d, 30)
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
                    log_tail(d, 30)
                ));
                s.stop.store(true, Ordering::SeqCst);
                return;
            }
            let current = s.tree_current.lock().unwrap().clone();
            let trees_under_way = (0..TREES).all(|k| {
                s.tree_in_flight[k].load(Ordering::SeqCst)
                    && current[k]
                        .as_ref()
                        .is_some_and(|dir| entries_under(dir).len() >= 10)
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

/// Resumes every tree the SIGTERM interrupted, on the restarted daemon, with
/// `skip_existing`, until it ends `done` with no failed file.
pub(crate) fn resume_trees(s: &Soak) -> usize {
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
