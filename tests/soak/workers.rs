//! The load: one thread per kind of work (trees, pipelined files, descriptor jobs, the
//! pipeline through the SIGTERM, cancels, junk lines, reloads), each on its own connection.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checks::{TreeCheck, check_tree, decrypts_to, sealed_ok};
use crate::ledger::{Conn, code_of, reply_kind};
use crate::state::{Rng, Soak, bump};
use crate::support::{bytes, link_into_place, p, tmpfile_in};
use crate::{
    BURST_FINALS_WITHIN, FD_WINDOW, MAX_ROUNDS, PIPE_BURST, RELOAD_EVERY, RELOAD_SEEN_WITHIN,
    SIGTERM_EXIT_WITHIN, TREE_FINAL_WITHIN,
};

/// Tree `k`, run after run. A finished run is checked and removed (phase 1) or kept for the
/// resume (phase 2); a cancelled run has its partial outputs checked and is resumed with
/// `skip_existing`.
pub(crate) fn tree_worker(s: &Soak, k: usize, phase: u8, deadline: Instant) {
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
pub(crate) fn pipe_worker(s: &Soak, phase: u8, deadline: Instant) {
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
pub(crate) fn check_pipe_output(
    s: &Soak,
    end: &Option<Value>,
    output: &Path,
    plain: &[u8],
    id: &str,
) {
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

/// Descriptor jobs, `FD_WINDOW` at a time, on files outside every allowed root.
pub(crate) fn fd_worker(s: &Soak, phase: u8, deadline: Instant) {
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
pub(crate) fn late_worker(s: &Soak, deadline: Instant) {
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
pub(crate) fn cancel_worker(s: &Soak, phase: u8, deadline: Instant) {
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
pub(crate) const CUE_WRITTEN: u8 = 2;
pub(crate) const BAD: &str = "bad_request";
pub(crate) const LARGE: &str = "too_large";

/// Malformed, unknown, junk and over-long lines, with a ping now and then.
pub(crate) fn flood_worker(s: &Soak, phase: u8, deadline: Instant) {
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
pub(crate) fn reload_worker(s: &Soak, phase: u8, deadline: Instant) {
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
