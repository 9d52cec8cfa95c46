#![allow(unused_imports)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::*;
use ringcrypt::keys::KeyRing;
use serde_json::{Value, json};

// ---- 1. a tree next to a full queue -------------------------------------------------------

/// (1) Connection B pipelines 3,000 single-file encrypts of one small input (3,000 outputs,
/// all sent in one write before any reply is read), so the owner shard's queue (1024) fills
/// and many get `busy`; as soon as the first `busy` arrives, connection A starts a tree of
/// 300 small files, whose files meet the full queue. A is a connection on that same shard,
/// so the tree also walks there.
///
/// Intact: the daemon stays up (it has not exited; `ping` answers on a new connection); the
/// tree ends `done` with files_ok 300 and files_failed 0, and each of its 300 outputs
/// decrypts to its input; B gets exactly one final line for each id 0..3000, `done` or
/// `error` `busy` (at least one `busy`: that is the premise); every `done` output decrypts to
/// the input and no `busy` one exists; no temp file is left.
fn tree_beside_a_full_queue(backend: &'static str, shards: &str) {
    const SINGLES: u64 = 3000;
    const TREE_FILES: usize = 300;
    let rd = rd(backend).shards(shards).start();
    let ring = rd.ring();
    let tree = rd.root.join("tree");
    make_tree(&tree, TREE_FILES, 10, |i| 100 + (i * 37) % 3000);
    let tree_out = rd.root.join("tree.rcrypt");
    let single = rd.root.join("single.txt");
    let single_plain = bytes(1000, 1);
    fs::write(&single, &single_plain).unwrap();
    let outs = rd.root.join("outs");
    fs::create_dir(&outs).unwrap();
    let out_of = |i: u64| outs.join(format!("{i}.rc"));
    let requests: Vec<Value> = (0..SINGLES)
        .map(|i| with(file_req("encrypt", &single, &out_of(i)), json!({"id": i})))
        .collect();

    // The tree walks on its connection's shard; pick for A a connection on the shard that
    // owns `single.txt` (whose queue will be full), the hardest place for the tree. Job ids
    // are "<shard>-<seq>": a probe job of `single.txt` names the owner, an empty tree names
    // its connection's shard.
    let shard_of = |reply: &Value| -> String {
        let job = reply["job"]
            .as_str()
            .unwrap_or_else(|| panic!("no job id: {reply}"));
        job.split('-').next().unwrap().to_string()
    };
    let probe = rd.encrypt(&single, &rd.root.join("probe.rc"), json!({}));
    assert_eq!(probe["type"], "done", "{probe}");
    let full_shard = shard_of(&probe);
    let empty = rd.root.join("empty");
    fs::create_dir(&empty).unwrap();
    let mut a = None;
    for attempt in 0..8 {
        let mut c = rd.client();
        let out = rd.root.join(format!("empty.out{attempt}"));
        c.send(&tree_req("encrypt", &empty, &out, "probe"));
        let replies = c.until_end_noting(&rd, "an empty tree");
        assert_eq!(
            replies.last().unwrap()["type"],
            "done",
            "{}",
            brief(&replies)
        );
        if shard_of(&replies[0]) == full_shard {
            a = Some(c);
            break;
        }
    }
    let mut a = a.expect("a connection on the owner shard of single.txt within 8 tries");

    let (busy_tx, busy_rx) = std::sync::mpsc::channel::<()>();
    let (tree_replies, finals) = std::thread::scope(|s| {
        let pipeline = s.spawn(|| {
            let busy_tx = busy_tx;
            let mut b = rd.client();
            if let Err(e) = b.try_send_all(&requests) {
                panic!(
                    "connection B: writing 3,000 requests failed: {e}; {}",
                    rd.note()
                );
            }
            let mut finals: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
            let mut ended = 0;
            while ended < SINGLES {
                let reply =
                    b.recv_noting(&rd, &format!("connection B after {ended} final replies"));
                let id = reply["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("reply without a numeric id: {reply}"));
                assert!(id < SINGLES, "reply for an id never sent: {reply}");
                if is_final(&reply) {
                    if reply["type"] == "error" && reply["code"] == "busy" {
                        let _ = busy_tx.send(());
                    }
                    finals.entry(id).or_default().push(reply);
                    ended += 1;
                }
            }
            finals
        });
        let busy_seen = busy_rx.recv_timeout(Duration::from_secs(60)).is_ok();
        if !busy_seen {
            match pipeline.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => panic!(
                    "premise: 3,000 pipelined jobs never filled the queue (no `busy` reply); {}",
                    rd.note()
                ),
            }
        }
        a.send(&tree_req("encrypt", &tree, &tree_out, "tree"));
        let tree_replies = a.until_end_noting(&rd, "the tree on connection A");
        let finals = match pipeline.join() {
            Ok(finals) => finals,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (tree_replies, finals)
    });

    assert!(
        rd.exited().is_none(),
        "the daemon exited during the test; {}",
        rd.note()
    );
    let pong = rd.ping();
    assert_eq!(pong["type"], "pong", "{pong}");

    let end = tree_replies.last().unwrap();
    assert_eq!(end["type"], "done", "the tree: {end}");
    assert_eq!(end["files_ok"], TREE_FILES as u64, "{end}");
    assert_eq!(end["files_failed"], 0, "{end}");
    assert_eq!(
        tree_replies[0]["type"],
        "accepted",
        "{}",
        brief(&tree_replies)
    );
    assert_eq!(
        tree_replies[0]["job"],
        end["job"],
        "{}",
        brief(&tree_replies)
    );
    let outputs = verify_tree_outputs(&ring, &tree, &tree_out, &rd.scratch());
    assert_eq!(outputs, TREE_FILES, "tree outputs on disk");

    let (mut done, mut busy) = (Vec::new(), 0);
    for (id, replies) in &finals {
        assert_eq!(
            replies.len(),
            1,
            "id {id}: more than one final:\n{}",
            brief(replies)
        );
        let reply = &replies[0];
        if reply["type"] == "done" {
            done.push((out_of(*id), single.clone()));
        } else {
            assert_eq!(code(reply), "busy", "id {id}: {reply}");
            assert!(
                !out_of(*id).exists(),
                "id {id} was refused busy but has an output"
            );
            busy += 1;
        }
    }
    assert_eq!(finals.len() as u64, SINGLES, "ids with a final reply");
    eprintln!(
        "{backend}, {shards} shard(s): {} done, {busy} busy",
        done.len()
    );
    assert_eq!(files_under(&outs).len(), done.len(), "outputs in outs/");
    // All of B's outputs seal the same input: each must have the sealed size, and every
    // tenth (the first and last included) is decrypted.
    assert!(!done.is_empty(), "no single job succeeded");
    let sealed_len = fs::metadata(&done[0].0).unwrap().len();
    for (out, _) in &done {
        assert_eq!(
            fs::metadata(out).unwrap().len(),
            sealed_len,
            "{}",
            out.display()
        );
    }
    let sample: Vec<_> = done
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0 || *i == done.len() - 1)
        .map(|(_, pair)| pair.clone())
        .collect();
    verify_pairs(&ring, &sample, &rd.scratch());
    assert_eq!(temp_files(&rd.root), Vec::<PathBuf>::new());
}

fn tree_beside_a_full_queue_2_shards(backend: &'static str) {
    tree_beside_a_full_queue(backend, "2");
}

fn tree_beside_a_full_queue_1_shard(backend: &'static str) {
    tree_beside_a_full_queue(backend, "1");
}

// ---- 2. SIGTERM during a tree -------------------------------------------------------------

/// (2) SIGTERM while a tree of 2,000 files of 16 KiB runs (sent once the first `progress`
/// with files done arrives).
///
/// Intact: the daemon exits 0 within 40 s; the tree's connection gets exactly one final line
/// (`done` or `error`, whatever the code) after `accepted` and its progress lines, then EOF;
/// no temp file is left under the root; every output that exists decrypts to its input, and
/// a `done` counts exactly the outputs there are.
fn sigterm_during_tree(backend: &'static str, shards: &str) {
    const FILES: usize = 2000;
    let rd = rd(backend).shards(shards).start();
    let ring = rd.ring();
    let input = rd.root.join("t");
    make_tree(&input, FILES, 20, |_| 16 << 10);
    let output = rd.root.join("t.rcrypt");
    let mut a = rd.client();
    a.send(&tree_req("encrypt", &input, &output, "tree"));
    let accepted = a.recv_noting(&rd, "the tree");
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    loop {
        let reply = a.recv_noting(&rd, "the tree before SIGTERM");
        match reply["type"].as_str() {
            Some("progress") if reply["files_done"].as_u64() > Some(0) => break,
            Some("progress") => {}
            _ => panic!("premise: the tree ended before SIGTERM could land in it: {reply}"),
        }
    }
    rd.signal("TERM");
    let reader = std::thread::spawn(move || a.drain());
    let Some(status) = rd.wait_exit(SIGTERM_BOUND) else {
        let note = rd.note();
        rd.kill();
        let _ = reader.join();
        panic!("the daemon did not exit within {SIGTERM_BOUND:?} of SIGTERM; {note}");
    };
    let (lines, end) = reader.join().unwrap();
    assert!(
        status.success(),
        "exit after SIGTERM: {status} (want 0); log:\n{}",
        rd.log_tail()
    );
    let last = one_final_then_eof("the tree's connection", &lines, &end);
    assert_eq!(temp_files(&rd.root), Vec::<PathBuf>::new());
    let outputs = verify_tree_outputs(&ring, &input, &output, &rd.scratch());
    if last["type"] == "done" {
        assert_eq!(last["files_ok"], outputs as u64, "{last}");
    }
    eprintln!("{backend}, {shards} shard(s): {outputs}/{FILES} outputs; the tree ended {last}");
}

fn sigterm_during_tree_2_shards(backend: &'static str) {
    sigterm_during_tree(backend, "2");
}

fn sigterm_during_tree_1_shard(backend: &'static str) {
    sigterm_during_tree(backend, "1");
}

// ---- 3. SIGTERM answers every waiting client ----------------------------------------------

/// (3) Two connections encrypt the same 32 MiB input to two outputs; both are accepted and
/// still running when SIGTERM comes 0.5 s later.
///
/// Intact: each connection gets exactly one final line after `accepted`, then EOF; the daemon
/// exits 0 within 40 s; an output whose client got `done` decrypts to the input, one whose
/// client got `error` does not exist; no temp file remains.
fn sigterm_answers_every_waiting_client(backend: &'static str) {
    let rd = rd(backend).start();
    let ring = rd.ring();
    let input = rd.root.join("big");
    write_big(&input, 32);
    let outputs = [rd.root.join("one.rc"), rd.root.join("two.rc")];
    let mut conns = Vec::new();
    let mut jobs = Vec::new();
    for (i, out) in outputs.iter().enumerate() {
        let mut c = rd.client();
        c.send(&with(file_req("encrypt", &input, out), json!({"id": i})));
        let accepted = c.recv_noting(&rd, "encrypt");
        assert_eq!(accepted["type"], "accepted", "{accepted}");
        jobs.push(accepted["job"].as_str().unwrap().to_string());
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut probe = rd.client();
    for job in &jobs {
        let status = probe.send_and_recv(&rd, &json!({"op": "status", "job": job}));
        assert!(
            status["state"] == "running" || status["state"] == "queued",
            "premise: job {job} ended before SIGTERM: {status}"
        );
    }
    drop(probe);
    rd.signal("TERM");
    let readers: Vec<_> = conns
        .into_iter()
        .map(|c| std::thread::spawn(move || c.drain()))
        .collect();
    let Some(status) = rd.wait_exit(SIGTERM_BOUND) else {
        let note = rd.note();
        rd.kill();
        panic!("the daemon did not exit within {SIGTERM_BOUND:?} of SIGTERM; {note}");
    };
    let ends: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let mut to_verify = Vec::new();
    for (i, (lines, end)) in ends.iter().enumerate() {
        let last = one_final_then_eof(&format!("client {i}"), lines, end);
        if last["type"] == "done" {
            to_verify.push((outputs[i].clone(), input.clone()));
        } else {
            assert!(
                !outputs[i].exists(),
                "client {i} got {last} but its output exists"
            );
        }
        eprintln!("{backend}: client {i} ended {last}");
    }
    assert!(
        status.success(),
        "exit after SIGTERM: {status} (want 0); log:\n{}",
        rd.log_tail()
    );
    assert_eq!(temp_files(&rd.root), Vec::<PathBuf>::new());
    verify_pairs(&ring, &to_verify, &rd.scratch());
}

both_backends!(
    tree_beside_a_full_queue_2_shards,
    tree_beside_a_full_queue_1_shard,
    sigterm_during_tree_2_shards,
    sigterm_during_tree_1_shard,
    sigterm_answers_every_waiting_client,
);
