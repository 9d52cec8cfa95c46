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

// ---- 4. duplicate merging merges only identical requests ----------------------------------

/// Input size for the merge tests: large enough that the first job still runs when the
/// second request arrives (checked with `status`, see `run_pair`).
const MERGE_MIB: usize = 8;

/// The same when the second request comes from a `nobody` process started after the first
/// was accepted (setpriv and Python take a moment to start).
const MERGE_NOBODY_MIB: usize = 32;

/// Two requests for one (op, input, output), the first on connection A, the second on B sent
/// as soon as A's first reply arrived, with a `status` of A's job right behind it on B (the
/// same path through the daemon, so its answer says whether A's job was still in flight
/// when B's request was handled).
struct Pair {
    a: Vec<Value>,
    b: Vec<Value>,
    /// The `status` of A's job as B saw it, when A was accepted.
    status: Option<Value>,
}

impl Pair {
    /// The premise of a merge test: A's job was still queued or running when B's request
    /// was handled (otherwise there was nothing to merge into, and a pass proves nothing).
    #[track_caller]
    fn assert_overlapped(&self) {
        let status = self.status.as_ref().unwrap_or_else(|| {
            panic!("request a was not accepted:\n{}", brief(&self.a));
        });
        assert!(
            status["state"] == "running" || status["state"] == "queued",
            "premise: request a's job had ended before request b arrived: {status}"
        );
    }

    fn a_end(&self) -> &Value {
        self.a.last().unwrap()
    }
    fn b_end(&self) -> &Value {
        self.b.last().unwrap()
    }
    fn job(replies: &[Value]) -> Option<&str> {
        replies
            .iter()
            .find(|r| r["type"] == "accepted")
            .and_then(|r| r["job"].as_str())
    }
}

fn run_pair(rd: &Daemon, first: Value, second: Value) -> Pair {
    let mut a = rd.client();
    let mut b = rd.client();
    a.send(&with(first, json!({"id": "a"})));
    let a_first = a.recv_noting(rd, "request a");
    let second = with(second, json!({"id": "b"}));
    let mut status = None;
    match (a_first["type"].as_str(), a_first["job"].as_str()) {
        (Some("accepted"), Some(job)) => {
            b.send_all(&[second, json!({"op": "status", "id": "st", "job": job})]);
        }
        _ => b.send(&second),
    }
    let expect_status = a_first["type"] == "accepted";
    let mut b_replies = Vec::new();
    while !(b_replies.last().is_some_and(is_final) && (status.is_some() || !expect_status)) {
        let reply = b.recv_noting(rd, "request b");
        if reply["id"] == "st" {
            status = Some(reply);
        } else {
            assert_eq!(reply["id"], "b", "{reply}");
            b_replies.push(reply);
        }
    }
    let mut a_replies = vec![a_first];
    if !is_final(&a_replies[0]) {
        a_replies.extend(a.until_end_noting(rd, "request a"));
    }
    Pair {
        a: a_replies,
        b: b_replies,
        status,
    }
}

/// (4a) Same (op, input, output), different key: A seals under k1 without overwrite, then B
/// under k2 with `overwrite`; the output is absent at the start.
///
/// Intact: B gets its own job id, not A's; B ends `done`; A ends `done` or `exists`; the
/// output on disk names k2 (bytes 16..32) and decrypts to the input.
fn merge_only_same_key(backend: &'static str) {
    let rd = rd(backend).start();
    let ring = rd.ring();
    let input = rd.root.join("in.bin");
    write_big(&input, MERGE_MIB);
    let output = rd.root.join("out.rc");
    let req = file_req("encrypt", &input, &output);
    let pair = run_pair(
        &rd,
        with(req.clone(), json!({"key": "k1"})),
        with(req, json!({"key": "k2", "overwrite": true})),
    );
    pair.assert_overlapped();
    let (ja, jb) = (Pair::job(&pair.a), Pair::job(&pair.b));
    assert!(
        ja.is_some() && jb.is_some(),
        "both accepted:\n{}\n{}",
        brief(&pair.a),
        brief(&pair.b)
    );
    assert_ne!(
        ja,
        jb,
        "k2 + overwrite was merged into the k1 job:\n{}",
        brief(&pair.b)
    );
    assert_eq!(pair.b_end()["type"], "done", "{}", brief(&pair.b));
    let a_end = pair.a_end();
    assert!(
        a_end["type"] == "done" || code(a_end) == "exists",
        "request a: {a_end}"
    );
    assert_eq!(
        key_id_of(&output),
        ring_id(&ring, "k2"),
        "the output is not sealed under k2 (k1 is {})",
        ring_id(&ring, "k1")
    );
    assert_decrypts_to(
        &ring,
        &output,
        &fs::read(&input).unwrap(),
        &rd.scratch().join("s"),
    );
}

/// (4b) Same (op, input, output), different `overwrite`, onto an output that exists: A with
/// `overwrite` (sent first, so a merge would hand its result to B), then B without.
///
/// Intact: B (no overwrite) ends `exists` and, if it was accepted, under its own job id; A
/// ends `done`; the output now decrypts to the input.
fn merge_only_same_overwrite(backend: &'static str) {
    let rd = rd(backend).start();
    let ring = rd.ring();
    let input = rd.root.join("in.bin");
    write_big(&input, MERGE_MIB);
    let output = rd.root.join("out.rc");
    fs::write(&output, b"an older file").unwrap();
    let req = file_req("encrypt", &input, &output);
    let pair = run_pair(&rd, with(req.clone(), json!({"overwrite": true})), req);
    pair.assert_overlapped();
    let b_end = pair.b_end();
    assert_eq!(b_end["type"], "error", "request without overwrite: {b_end}");
    assert_eq!(code(b_end), "exists", "{b_end}");
    if let Some(jb) = Pair::job(&pair.b) {
        assert_ne!(Some(jb), Pair::job(&pair.a), "merged: {}", brief(&pair.b));
    }
    assert_eq!(pair.a_end()["type"], "done", "{}", brief(&pair.a));
    assert_decrypts_to(
        &ring,
        &output,
        &fs::read(&input).unwrap(),
        &rd.scratch().join("s"),
    );
}

/// (4c) Same (op, input, output), one naming a key not in the ring (`nope`), the other k1;
/// both orders, each on its own output.
///
/// Intact: the `nope` request ends `unknown_key`; the k1 request ends `done` and its output
/// names k1 and decrypts to the input.
fn merge_only_known_key(backend: &'static str) {
    let rd = rd(backend).start();
    let ring = rd.ring();
    let input = rd.root.join("in.bin");
    write_big(&input, MERGE_MIB);
    let plain = fs::read(&input).unwrap();
    for (valid_first, name) in [(true, "valid-first.rc"), (false, "unknown-first.rc")] {
        let output = rd.root.join(name);
        let req = file_req("encrypt", &input, &output);
        let good = with(req.clone(), json!({"key": "k1"}));
        let bad = with(req, json!({"key": "nope"}));
        // Valid first: the `nope` request could be merged into a running k1 job (checked to
        // overlap). Unknown first: the k1 request could be merged into a `nope` job, if one
        // ever runs.
        let pair = if valid_first {
            let pair = run_pair(&rd, good, bad);
            pair.assert_overlapped();
            pair
        } else {
            run_pair(&rd, bad, good)
        };
        let (good_end, bad_end) = if valid_first {
            (pair.a_end(), pair.b_end())
        } else {
            (pair.b_end(), pair.a_end())
        };
        assert_eq!(bad_end["type"], "error", "{name}: key nope: {bad_end}");
        assert_eq!(code(bad_end), "unknown_key", "{name}: {bad_end}");
        assert_eq!(good_end["type"], "done", "{name}: key k1: {good_end}");
        assert_eq!(key_id_of(&output), ring_id(&ring, "k1"), "{name}");
        assert_decrypts_to(&ring, &output, &plain, &rd.scratch().join("s"));
    }
}

/// (4d) (root) The same request from root and from `nobody` (allowed with `--allow-uid
/// 65534`; the input is nobody-readable, the output directory nobody's): root first, then
/// nobody with a `status` of root's job behind it.
///
/// Intact: nobody's request gets its own job id (or none), never root's; exactly one of the
/// two ends `done` and the other `exists`; the output decrypts to the input and belongs to
/// whoever got `done`.
fn merge_only_same_caller(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a client as nobody (setpriv)");
        return;
    }
    let rd = rd(backend).allow_uid(NOBODY).start();
    let ring = rd.ring();
    let (public, input) = nobody_pub(&rd, &[]);
    write_big(&input, MERGE_NOBODY_MIB);
    let output = public.join("out.rc");
    let req = file_req("encrypt", &input, &output);
    let mut a = rd.client();
    a.send(&with(req.clone(), json!({"id": "root"})));
    let accepted = a.recv_noting(&rd, "root's request");
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let root_job = accepted["job"].as_str().unwrap().to_string();
    let session = nobody_session(
        &rd.socket,
        "end",
        60,
        &[
            with(req, json!({"id": "nobody"})),
            json!({"op": "status", "id": "st", "job": root_job}),
        ],
    );
    assert_eq!(session.end, "#END", "{session:?}");
    let status = session.final_of("st");
    assert!(
        status["state"] == "running" || status["state"] == "queued",
        "premise: root's job had ended before nobody's request: {status}"
    );
    let nobody_job = session
        .by_id("nobody")
        .iter()
        .find(|r| r["type"] == "accepted")
        .map(|r| r["job"].clone());
    assert_ne!(
        nobody_job,
        Some(json!(root_job)),
        "nobody's request was merged into root's job: {session:?}"
    );
    let root_end = a.until_end_noting(&rd, "root's request").pop().unwrap();
    let nobody_end = session.final_of("nobody").clone();
    let (winner, loser) = match (root_end["type"].as_str(), nobody_end["type"].as_str()) {
        (Some("done"), _) => (0, &nobody_end),
        (_, Some("done")) => (NOBODY, &root_end),
        _ => panic!("neither ended done: root {root_end}, nobody {nobody_end}"),
    };
    assert_eq!(
        code(loser),
        "exists",
        "root {root_end}, nobody {nobody_end}"
    );
    assert_eq!(
        fs::metadata(&output).unwrap().uid(),
        winner,
        "the output belongs to the caller that got done (root {root_end}, nobody {nobody_end})"
    );
    assert_decrypts_to(
        &ring,
        &output,
        &fs::read(&input).unwrap(),
        &rd.scratch().join("s"),
    );
}

both_backends!(
    merge_only_same_key,
    merge_only_same_overwrite,
    merge_only_known_key,
    merge_only_same_caller,
);
