//! Batches (`inputs` and `outputs` in one request): every file answered by exactly one
//! `file` line with its index, each failing alone; the request's own rules; cancel and
//! SIGTERM in the middle of one; a batch beside a full queue; and the caller's rights.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;
use crate::support::*;
use serde_json::{Value, json};

both_backends!(
    every_file_is_answered_once,
    batch_request_rules,
    cancel_mid_batch,
    sigterm_mid_batch,
    batch_beside_a_full_queue,
    a_batch_runs_with_the_callers_rights,
    one_shard_takes_at_most_64_trees_and_batches,
);

fn batch_req(op: &str, inputs: &[PathBuf], outputs: &[PathBuf], id: &str) -> Value {
    let names =
        |paths: &[PathBuf]| -> Vec<String> { paths.iter().map(|x| p(x).to_string()).collect() };
    let mut req = json!({"op": op, "id": id, "inputs": names(inputs)});
    if op != "verify" {
        req["outputs"] = json!(names(outputs));
    }
    req
}

/// A batch's replies, read to its final line: `accepted` first, then the `file` lines by
/// index (each at most once, each naming the batch's job), `progress` lines, and the final
/// line.
struct Answered {
    job: String,
    files: BTreeMap<u64, Value>,
    end: Value,
}

fn answered(replies: &[Value], id: &str, count: usize) -> Answered {
    assert_eq!(replies[0]["type"], "accepted", "{}", brief(replies));
    let job = replies[0]["job"].as_str().unwrap().to_string();
    let mut files = BTreeMap::new();
    for reply in &replies[1..replies.len() - 1] {
        assert_eq!(reply["id"], id, "{reply}");
        match reply["type"].as_str() {
            Some("file") => {
                assert_eq!(reply["job"], job.as_str(), "{reply}");
                let index = reply["index"].as_u64().unwrap();
                assert!((index as usize) < count, "an index never sent: {reply}");
                let earlier = files.insert(index, reply.clone());
                assert!(earlier.is_none(), "file {index} answered twice: {reply}");
            }
            Some("progress") => {}
            _ => panic!("a line between accepted and the end: {reply}"),
        }
    }
    let end = replies.last().unwrap().clone();
    assert!(is_final(&end), "{end}");
    Answered { job, files, end }
}

/// Intact: a batch of 57 files across two input and two output directories, where six
/// cannot run: a missing input, an input outside every allowed root, an output directory
/// outside them, an output that exists (its bytes kept), an input that is a directory, an
/// output directory that does not exist. Each of the 57 gets exactly one `file` line: the
/// six their codes, the rest `bytes_in` their input's size; `done` counts 51 and 6. Every
/// output decrypts to its input (one input twice, to two outputs), the output directories
/// hold exactly the 52 outputs and the kept file, no temp file is left, and the inputs are
/// unchanged. Run again with `skip_existing`, the 51 are `skipped`; decrypted as a batch,
/// each comes back byte for byte.
fn every_file_is_answered_once(backend: &'static str) {
    let d = rd(backend).start();
    let ring = d.ring();
    let (in1, in2) = (d.root.join("in1"), d.root.join("in2"));
    let (out1, out2) = (d.root.join("out1"), d.root.join("out2"));
    for dir in [&in1, &in2, &out1, &out2] {
        fs::create_dir(dir).unwrap();
    }
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..50 {
        let (src, dst) = if i % 2 == 0 {
            (&in1, &out1)
        } else {
            (&in2, &out2)
        };
        let input = src.join(format!("f{i}"));
        // Empty, small, and a few of several batches.
        let len = if i % 7 == 0 { 300_000 + i } else { i * 97 };
        fs::write(&input, bytes(len, i as u64)).unwrap();
        inputs.push(input);
        outputs.push(dst.join(format!("f{i}.rcrypt")));
    }
    let kept = out1.join("kept.rcrypt");
    fs::write(&kept, b"keep me").unwrap();
    let bad: Vec<(PathBuf, PathBuf, &str)> = vec![
        (
            in1.join("missing"),
            out1.join("missing.rcrypt"),
            "not_found",
        ),
        (
            PathBuf::from("/etc/hostname"),
            out1.join("hostname.rcrypt"),
            "forbidden_path",
        ),
        (
            inputs[1].clone(),
            PathBuf::from("/var/tmp/f1.rcrypt"),
            "forbidden_path",
        ),
        (inputs[3].clone(), kept.clone(), "exists"),
        (in2.clone(), out2.join("in2.rcrypt"), "bad_request"),
        (
            inputs[5].clone(),
            d.root.join("nodir").join("f5.rcrypt"),
            "not_found",
        ),
    ];
    // The bad ones spread among the good: at 3, 13, 23, ...
    let mut plan: Vec<(PathBuf, PathBuf, Option<&str>)> = inputs
        .iter()
        .cloned()
        .zip(outputs.iter().cloned())
        .map(|(i, o)| (i, o, None))
        .collect();
    for (k, (input, output, code)) in bad.into_iter().enumerate() {
        plan.insert(3 + 10 * k, (input, output, Some(code)));
    }
    // One input a second time, to another output.
    let twice = out2.join("f0.again.rcrypt");
    plan.push((inputs[0].clone(), twice.clone(), None));
    let before = snapshot(&d.root.join("in1"));
    let ins: Vec<PathBuf> = plan.iter().map(|x| x.0.clone()).collect();
    let outs: Vec<PathBuf> = plan.iter().map(|x| x.1.clone()).collect();

    let replies = d.client().job(&batch_req("encrypt", &ins, &outs, "b1"));
    let got = answered(&replies, "b1", plan.len());
    assert_eq!(got.files.len(), plan.len(), "{}", brief(&replies));
    assert_eq!(got.end["type"], "done", "{}", got.end);
    assert_eq!(got.end["job"], got.job.as_str());
    assert_eq!(got.end["files_ok"], 51, "{}", got.end);
    assert_eq!(got.end["files_failed"], 6, "{}", got.end);
    let mut pairs = Vec::new();
    for (index, (input, output, want)) in plan.iter().enumerate() {
        let line = &got.files[&(index as u64)];
        match want {
            Some(want) => {
                assert_eq!(line["code"], *want, "file {index}: {line}");
                assert!(
                    line["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{line}"
                );
            }
            None => {
                assert_eq!(
                    line["bytes_in"],
                    fs::metadata(input).unwrap().len(),
                    "{line}"
                );
                assert!(line["micros"].is_u64(), "{line}");
                pairs.push((output.clone(), input.clone()));
            }
        }
    }
    verify_pairs(&ring, &pairs, &d.scratch());
    assert_eq!(fs::read(&kept).unwrap(), b"keep me");
    let mut wanted: Vec<PathBuf> = pairs.iter().map(|x| x.0.clone()).collect();
    wanted.push(kept.clone());
    wanted.sort();
    let mut present = files_under(&out1);
    present.extend(files_under(&out2));
    present.sort();
    assert_eq!(
        present, wanted,
        "the output directories hold exactly the outputs"
    );
    assert!(!d.root.join("nodir").exists());
    assert_eq!(temp_files(&d.root), Vec::<PathBuf>::new());
    assert_eq!(snapshot(&d.root.join("in1")), before, "the inputs changed");

    // Again with skip_existing: every output there verifies, so each is skipped.
    let good: Vec<usize> = (0..plan.len()).filter(|&i| plan[i].2.is_none()).collect();
    let ins: Vec<PathBuf> = good.iter().map(|&i| plan[i].0.clone()).collect();
    let outs: Vec<PathBuf> = good.iter().map(|&i| plan[i].1.clone()).collect();
    let again = with(
        batch_req("encrypt", &ins, &outs, "b2"),
        json!({"skip_existing": true}),
    );
    let replies = d.client().job(&again);
    let got = answered(&replies, "b2", good.len());
    assert_eq!(got.end["files_skipped"], good.len() as u64, "{}", got.end);
    assert!(
        got.files
            .values()
            .all(|l| l["skipped"] == "exists and verifies"),
        "{}",
        brief(&replies)
    );

    // Back as a batch: each output decrypts to its input.
    let back: Vec<PathBuf> = (0..good.len())
        .map(|i| d.root.join(format!("back{i}")))
        .collect();
    let replies = d.client().job(&batch_req("decrypt", &outs, &back, "b3"));
    let got = answered(&replies, "b3", good.len());
    assert_eq!(got.end["files_ok"], good.len() as u64, "{}", got.end);
    for (input, back) in ins.iter().zip(&back) {
        assert!(
            fs::read(input).unwrap() == fs::read(back).unwrap(),
            "{}",
            back.display()
        );
    }
    // And a verify batch reads them all, writing nothing.
    let replies = d.client().job(&batch_req("verify", &outs, &[], "b4"));
    let got = answered(&replies, "b4", good.len());
    assert_eq!(got.end["files_ok"], good.len() as u64, "{}", got.end);
}

/// Intact: each malformed batch gets one `bad_request` that says what is wrong, nothing is
/// created under the root, and the connection serves the next line.
fn batch_request_rules(backend: &'static str) {
    let d = rd(backend).start();
    let a = p(&d.root.join("a")).to_string();
    let b = p(&d.root.join("b")).to_string();
    fs::write(d.root.join("a"), b"a").unwrap();
    let before = snapshot(&d.root);
    let cases = [
        (
            json!({"op": "encrypt", "inputs": [], "outputs": []}),
            "empty array",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": []}),
            "empty array",
        ),
        (
            json!({"op": "encrypt", "inputs": [a, a], "outputs": [b]}),
            "names 2 files and \"outputs\" 1",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": [b, b]}),
            "names 1 files and \"outputs\" 2",
        ),
        (
            json!({"op": "encrypt", "inputs": [a, 3], "outputs": [b, b]}),
            "not a string",
        ),
        (
            json!({"op": "encrypt", "inputs": a, "outputs": [b]}),
            "not a string",
        ),
        (
            json!({"op": "encrypt", "inputs": [a]}),
            "needs field \"outputs\"",
        ),
        (
            json!({"op": "encrypt", "inputs": ["rel"], "outputs": [b]}),
            "\"inputs[0]\" is a relative path",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": ["/x/../y"]}),
            "\"outputs[0]\"",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": [b], "recursive": true}),
            "unknown field \"recursive\"",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": [b], "fds": true}),
            "unknown field \"fds\"",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": [b], "input": a}),
            "unknown field \"input\"",
        ),
        (
            json!({"op": "decrypt", "inputs": [a], "outputs": [b], "format": "openssl"}),
            "applies to encrypt only",
        ),
        (
            json!({"op": "verify", "inputs": [a], "outputs": [b]}),
            "unknown field \"outputs\"",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": [b], "format": "openssl"}),
            "unauthenticated openssl format",
        ),
        (
            json!({"op": "encrypt", "inputs": [a], "outputs": [b], "overwrite": true, "skip_existing": true}),
            "both true",
        ),
    ];
    let mut c = d.client();
    for (request, says) in cases {
        let reply = c.call(&request);
        assert_eq!(code(&reply), "bad_request", "{request}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains(says), "{request}: {message}");
    }
    assert_eq!(c.call(&json!({"op": "ping"}))["type"], "pong");
    assert_eq!(
        snapshot(&d.root),
        before,
        "a refused batch created something"
    );
}

/// Files of 256 KiB each, and the batch request that encrypts them into `out`.
fn many_files(d: &Daemon, count: usize, id: &str) -> (Vec<PathBuf>, Vec<PathBuf>, Value) {
    let src = d.root.join("src");
    let out = d.root.join("out");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&out).unwrap();
    let inputs: Vec<PathBuf> = (0..count)
        .map(|i| {
            let path = src.join(format!("f{i:04}"));
            fs::write(&path, bytes(256 * 1024, i as u64)).unwrap();
            path
        })
        .collect();
    let outputs: Vec<PathBuf> = (0..count)
        .map(|i| out.join(format!("f{i:04}.rcrypt")))
        .collect();
    let request = batch_req("encrypt", &inputs, &outputs, id);
    (inputs, outputs, request)
}

/// What a batch that ended early must leave: an output for exactly the files whose line
/// said `bytes_in`, each decrypting to its input, and no temp file.
fn only_answered_outputs(d: &Daemon, got: &Answered, inputs: &[PathBuf], outputs: &[PathBuf]) {
    let mut pairs = Vec::new();
    for (index, output) in outputs.iter().enumerate() {
        let ok = got
            .files
            .get(&(index as u64))
            .is_some_and(|l| l["bytes_in"].is_u64());
        assert_eq!(
            output.exists(),
            ok,
            "file {index}: {:?}",
            got.files.get(&(index as u64))
        );
        if ok {
            pairs.push((output.clone(), inputs[index].clone()));
        }
    }
    verify_pairs(&d.ring(), &pairs, &d.scratch());
    assert_eq!(temp_files(&d.root), Vec::<PathBuf>::new());
}

/// Intact: a batch of 400 files cancelled after its first `file` line ends with one
/// `cancelled` error; no file is answered twice and none after the end; exactly the files
/// answered with `bytes_in` have outputs, each decrypting to its input; files of the list
/// never started have none; the daemon serves on.
fn cancel_mid_batch(backend: &'static str) {
    let d = rd(backend).start();
    let (inputs, outputs, request) = many_files(&d, 400, "c");
    let mut c = d.client();
    c.send(&request);
    let mut replies = vec![c.recv_noting(&d, "the batch")];
    let job = replies[0]["job"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", replies[0]))
        .to_string();
    loop {
        let reply = c.recv_noting(&d, "the batch before cancel");
        let first_file = reply["type"] == "file";
        assert!(
            !is_final(&reply),
            "premise: the batch ended before the cancel: {reply}"
        );
        replies.push(reply);
        if first_file {
            break;
        }
    }
    let cancelled = d.client().call(&json!({"op": "cancel", "job": job}));
    assert_eq!(cancelled["type"], "cancelled", "{cancelled}");
    replies.extend(c.until_end_noting(&d, "the batch after cancel"));
    let got = answered(&replies, "c", inputs.len());
    assert_eq!(code(&got.end), "cancelled", "{}", got.end);
    assert!(
        got.files.len() < inputs.len(),
        "premise: every file ended before the cancel"
    );
    only_answered_outputs(&d, &got, &inputs, &outputs);
    let status = d.client().call(&json!({"op": "status", "job": job}));
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(d.ping()["type"], "pong");
}

/// Intact: SIGTERM after a 400-file batch's first `file` line: the daemon exits 0 within
/// the drain bound; the batch's connection gets its file lines, exactly one final line,
/// then EOF; exactly the files answered with `bytes_in` have outputs, each decrypting to
/// its input; no temp file.
fn sigterm_mid_batch(backend: &'static str) {
    let d = rd(backend).start();
    let (inputs, outputs, request) = many_files(&d, 400, "t");
    let mut c = d.client();
    c.send(&request);
    let mut replies = Vec::new();
    loop {
        let reply = c.recv_noting(&d, "the batch before SIGTERM");
        assert!(
            !is_final(&reply),
            "premise: the batch ended before SIGTERM: {reply}"
        );
        let first_file = reply["type"] == "file";
        replies.push(reply);
        if first_file {
            break;
        }
    }
    d.signal("TERM");
    let reader = std::thread::spawn(move || c.drain());
    let Some(status) = d.wait_exit(SIGTERM_BOUND) else {
        let note = d.note();
        d.kill();
        let _ = reader.join();
        panic!("the daemon did not exit within {SIGTERM_BOUND:?} of SIGTERM; {note}");
    };
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log:\n{}",
        d.log_tail()
    );
    let (lines, end) = reader.join().unwrap();
    let last = one_final_then_eof("the batch's connection", &lines, &end);
    replies.extend(lines.iter().map(|l| parse_line(l)));
    let got = answered(&replies, "t", inputs.len());
    assert_eq!(got.end, last);
    only_answered_outputs(&d, &got, &inputs, &outputs);
}

/// Intact: with one shard, a connection pipelines 3,000 single-file encrypts so the queue
/// fills (`busy` replies are the premise); then a 300-file batch arrives. Its files wait for
/// room (a batch never gets `busy`): it ends `done` with all 300 ok and each output
/// decrypts to its input; every single request has exactly one final line; the daemon
/// answers `ping` after.
fn batch_beside_a_full_queue(backend: &'static str) {
    const SINGLES: u64 = 3000;
    let d = rd(backend).shards(1).start();
    let single = d.root.join("single.txt");
    fs::write(&single, bytes(1000, 1)).unwrap();
    let outs = d.root.join("outs");
    fs::create_dir(&outs).unwrap();
    let requests: Vec<Value> = (0..SINGLES)
        .map(|i| {
            with(
                file_req("encrypt", &single, &outs.join(format!("{i}"))),
                json!({"id": i}),
            )
        })
        .collect();
    let src = d.root.join("bsrc");
    let bout = d.root.join("bout");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&bout).unwrap();
    let inputs: Vec<PathBuf> = (0..300)
        .map(|i| {
            let path = src.join(format!("f{i}"));
            fs::write(&path, bytes(100 + i * 31, i as u64)).unwrap();
            path
        })
        .collect();
    let outputs: Vec<PathBuf> = (0..300)
        .map(|i| bout.join(format!("f{i}.rcrypt")))
        .collect();
    let (busy_tx, busy_rx) = std::sync::mpsc::channel::<()>();
    let (batch, finals) = std::thread::scope(|s| {
        let pipeline = s.spawn(|| {
            let mut b = d.client();
            b.try_send_all(&requests)
                .unwrap_or_else(|e| panic!("pipelining: {e}; {}", d.note()));
            let mut finals: BTreeMap<u64, usize> = BTreeMap::new();
            let mut ended = 0;
            while ended < SINGLES {
                let reply = b.recv_noting(&d, "the pipelined singles");
                if is_final(&reply) {
                    if reply["code"] == "busy" {
                        let _ = busy_tx.send(());
                    }
                    *finals.entry(reply["id"].as_u64().unwrap()).or_default() += 1;
                    ended += 1;
                }
            }
            finals
        });
        assert!(
            busy_rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "premise: 3,000 pipelined jobs never filled the queue; {}",
            d.note()
        );
        let replies = d
            .client()
            .job(&batch_req("encrypt", &inputs, &outputs, "q"));
        (replies, pipeline.join().unwrap())
    });
    let got = answered(&batch, "q", inputs.len());
    assert_eq!(got.end["type"], "done", "{}", got.end);
    assert_eq!(got.end["files_ok"], 300, "{}", got.end);
    let pairs: Vec<(PathBuf, PathBuf)> = outputs
        .iter()
        .cloned()
        .zip(inputs.iter().cloned())
        .collect();
    verify_pairs(&d.ring(), &pairs, &d.scratch());
    assert_eq!(finals.len() as u64, SINGLES);
    assert!(
        finals.values().all(|&n| n == 1),
        "a single request with more than one final"
    );
    assert_eq!(d.ping()["type"], "pong");
    assert_eq!(temp_files(&d.root), Vec::<PathBuf>::new());
}

/// (root) Intact: a batch sent as `nobody` runs each file with nobody's rights, as a single
/// file by path does: nobody's own file is sealed; a file only root may read fails
/// `permission_denied`, and so does an output in a directory only root may write; neither
/// leaves anything behind, and the root-only file is unchanged.
fn a_batch_runs_with_the_callers_rights(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a client as nobody (setpriv)");
        return;
    }
    let d = rd(backend).start();
    let (public, input) = nobody_pub(&d, b"nobody's own");
    let secret = d.root.join("secret");
    fs::write(&secret, b"root only").unwrap();
    chmod(&secret, 0o600);
    let closed = d.root.join("closed");
    fs::create_dir(&closed).unwrap();
    chmod(&closed, 0o755);
    let ins = [input.clone(), secret.clone(), input.clone()];
    let outs = [
        public.join("in.txt.rcrypt"),
        public.join("secret.rcrypt"),
        closed.join("in.txt.rcrypt"),
    ];
    let session = nobody_session(
        &d.socket,
        "end",
        60,
        &[batch_req("encrypt", &ins, &outs, "n")],
    );
    assert_eq!(session.end, "#END", "{session:?}");
    let replies: Vec<Value> = session.by_id("n").into_iter().cloned().collect();
    let got = answered(&replies, "n", 3);
    assert_eq!(got.files[&0]["bytes_in"], 12, "{session:?}");
    assert_eq!(got.files[&1]["code"], "permission_denied", "{session:?}");
    assert_eq!(got.files[&2]["code"], "permission_denied", "{session:?}");
    assert_decrypts_to(&d.ring(), &outs[0], b"nobody's own", &d.scratch().join("x"));
    assert!(!outs[1].exists() && !outs[2].exists());
    assert_eq!(fs::read(&secret).unwrap(), b"root only");
    assert_eq!(temp_files(&d.root), Vec::<PathBuf>::new());
}

/// Intact: a shard runs at most 64 trees and batches at once; the 65th is refused `busy`
/// with a message that says so, and nothing of it starts. Deterministic: the test hook stops
/// shard 1 eight seconds after start (the probes before it take a fraction of that), and
/// every batch (started on shard 0, the connection's) names an input shard 1 owns, so none
/// can end. A tree asked for then is refused alike; `ping` on shard 0 still answers.
fn one_shard_takes_at_most_64_trees_and_batches(backend: &'static str) {
    let mut d = rd(backend)
        .env("RINGCRYPT_TEST_HANG_SHARD", "1:8000")
        .start();
    let started = std::time::Instant::now();
    let shard_of = |reply: &Value| -> String {
        let job = reply["job"]
            .as_str()
            .unwrap_or_else(|| panic!("no job id: {reply}"));
        job.split('-').next().unwrap().to_string()
    };
    // An input shard 1 owns, found by its probe job's id.
    let input = (0..64)
        .map(|i| d.root.join(format!("in{i}")))
        .find(|input| {
            fs::write(input, b"x").unwrap();
            let probe = d.encrypt(input, &input.with_extension("probe"), json!({}));
            shard_of(&probe) == "1"
        })
        .expect("an input owned by shard 1 within 64 names");
    // A connection on shard 0: an empty batch would be refused, so an empty tree names it.
    let empty = d.root.join("empty");
    fs::create_dir(&empty).unwrap();
    let mut c = (0..16)
        .find_map(|attempt| {
            let mut c = d.client();
            let out = d.root.join(format!("empty.out{attempt}"));
            let replies = c.job(&tree_req("encrypt", &empty, &out, "probe"));
            (shard_of(&replies[0]) == "0").then_some(c)
        })
        .expect("a connection on shard 0 within 16 tries");
    assert!(
        started.elapsed() < Duration::from_millis(6000),
        "premise: the probes ended before shard 1 stopped"
    );
    std::thread::sleep(Duration::from_millis(9000).saturating_sub(started.elapsed()));
    let out = d.root.join("out");
    fs::create_dir(&out).unwrap();
    let requests: Vec<Value> = (0..65)
        .map(|i| {
            batch_req(
                "encrypt",
                std::slice::from_ref(&input),
                &[out.join(format!("{i}"))],
                &i.to_string(),
            )
        })
        .collect();
    c.send_all(&requests);
    for i in 0..64 {
        let reply = c.recv_noting(&d, "the batches");
        assert_eq!(reply["type"], "accepted", "batch {i}: {reply}");
    }
    let refused = c.recv_noting(&d, "the 65th batch");
    assert_eq!(refused["id"], "64", "{refused}");
    assert_eq!(code(&refused), "busy", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("64 trees and batches"), "{message}");
    let tree = c.call(&tree_req("encrypt", &empty, &d.root.join("late"), "late"));
    assert_eq!(code(&tree), "busy", "{tree}");
    assert!(
        !d.root.join("late").exists(),
        "a refused tree made its output"
    );
    assert_eq!(c.call(&json!({"op": "ping"}))["type"], "pong");
    // A stopped shard never drains: the daemon ends with SIGKILL, not SIGTERM.
    d.kill();
    d.forget();
}
