//! Range splitting: a file at least `--split-min-mib` large is cut into ranges that every
//! shard works on at once. These daemons split at 1 MiB (`--split-min-mib 1`, two shards),
//! so small inputs exercise every edge: just under the threshold, at it, at chunk and batch
//! boundaries, and with a final chunk of one byte.

use std::fs;

use crate::harness::*;
use crate::support::*;
use serde_json::{Value, json};

fn split_daemon(backend: &'static str) -> Daemon {
    rd(backend).args(&["--split-min-mib", "1"]).start()
}

/// Every shard's `bytes_in` so far.
fn shard_bytes_in(d: &Daemon) -> Vec<u64> {
    let stats = d.client().call(&json!({"op": "stats"}));
    stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("stats: {stats}"))
        .iter()
        .map(|shard| shard["bytes_in"].as_u64().unwrap())
        .collect()
}

/// Runs one file job to its end and returns the final reply, which must be `done`; checks
/// that the job's work landed on every shard (`spread`) or on one only.
fn run_counted(d: &Daemon, request: &Value, spread: bool) -> Value {
    let before = shard_bytes_in(d);
    let end = d.client().job(request).pop().expect("a final reply");
    assert_eq!(end["type"], "done", "{request}: {end}");
    let after = shard_bytes_in(d);
    let busy = before.iter().zip(&after).filter(|(b, a)| a > b).count();
    if spread {
        assert_eq!(
            busy,
            after.len(),
            "{request}: not every shard read a range: {before:?} -> {after:?}"
        );
    } else {
        assert_eq!(
            busy, 1,
            "{request}: a small file was split: {before:?} -> {after:?}"
        );
    }
    end
}

/// Intact: at every size around the threshold and the chunk (64 KiB) and batch (512 KiB)
/// boundaries, encrypt, decrypt and rewrap through the daemon give back the input byte for
/// byte; a split file's `done` counts the whole file; an input under the threshold is not
/// split and one at it is.
fn split_files_round_trip_at_every_edge(backend: &'static str) {
    let d = split_daemon(backend);
    let ring = d.ring();
    let mib = 1usize << 20;
    for (i, size) in [
        mib - 1,
        mib,
        mib + 1,
        2 * mib + 8 * 65536,
        3 * mib - 17,
        4 * mib + 65536,
    ]
    .into_iter()
    .enumerate()
    {
        let plain = bytes(size, i as u64 + 40);
        let input = d.root.join(format!("s{i}.bin"));
        fs::write(&input, &plain).unwrap();
        let sealed = d.root.join(format!("s{i}.rc"));
        // A job splits by its input's size: the sealed file is larger than the plaintext.
        let spread = |path: &std::path::Path| fs::metadata(path).unwrap().len() >= mib as u64;
        let end = run_counted(&d, &file_req("encrypt", &input, &sealed), spread(&input));
        assert_eq!(end["bytes_in"], size as u64, "{size}: {end}");
        assert_eq!(
            end["bytes_out"],
            fs::metadata(&sealed).unwrap().len(),
            "{size}: done counts every range's bytes"
        );
        assert_decrypts_to(&ring, &sealed, &plain, &d.scratch().join("x"));
        let opened = d.root.join(format!("s{i}.out"));
        run_counted(&d, &file_req("decrypt", &sealed, &opened), spread(&sealed));
        assert!(
            fs::read(&opened).unwrap() == plain,
            "{size}: decrypt differs"
        );
        let rewrapped = d.root.join(format!("s{i}.rw.rc"));
        run_counted(
            &d,
            &file_req("rewrap", &sealed, &rewrapped),
            spread(&sealed),
        );
        assert_decrypts_to(&ring, &rewrapped, &plain, &d.scratch().join("y"));
    }
    assert!(temp_files(&d.root).is_empty(), "temp files left");
}

/// Intact: a flipped bit in the range the owner runs, or in the range the other shard runs,
/// fails the whole decrypt with `auth_failed`; no output appears, no temp file is left, and
/// both shards go back to idle (the other range was cancelled or ended, and reported).
fn a_bad_record_in_any_range_fails_the_file(backend: &'static str) {
    let d = split_daemon(backend);
    let plain = bytes(4 << 20, 7);
    let input = d.root.join("f.bin");
    fs::write(&input, &plain).unwrap();
    let sealed = d.root.join("f.rc");
    let end = d
        .client()
        .job(&file_req("encrypt", &input, &sealed))
        .pop()
        .unwrap();
    assert_eq!(end["type"], "done", "{end}");
    let good = fs::read(&sealed).unwrap();
    for (what, at) in [
        ("first range", 100_000),
        ("second range", good.len() - 300_000),
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let damaged = d.root.join("bad.rc");
        fs::write(&damaged, &bad).unwrap();
        let out = d.root.join("bad.out");
        let end = d
            .client()
            .job(&file_req("decrypt", &damaged, &out))
            .pop()
            .unwrap();
        assert_eq!(code(&end), "auth_failed", "{what}: {end}");
        assert!(!out.exists(), "{what}: an output appeared");
        assert!(temp_files(&d.root).is_empty(), "{what}: temp files left");
        let stats = d.client().call(&json!({"op": "stats"}));
        for shard in stats["shards"].as_array().unwrap() {
            assert_eq!(shard["running"], 0, "{what}: {stats}");
        }
    }
}

/// Intact: a cancel of a split file in flight ends it `cancelled` with nothing linked and
/// no temp file, its ranges on the other shard stop, and the same request then succeeds
/// (on the input cut to 4 MiB, still split: the name is free and the shards serve again).
fn cancel_mid_split_file(backend: &'static str) {
    let d = split_daemon(backend);
    let ring = d.ring();
    let plain = bytes(96 << 20, 3);
    let input = d.root.join("big.bin");
    fs::write(&input, &plain).unwrap();
    let sealed = d.root.join("big.rc");
    let mut a = d.client();
    a.send(&file_req("encrypt", &input, &sealed));
    let accepted = a.recv_noting(&d, "encrypt");
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let job = accepted["job"].as_str().unwrap().to_string();
    let status = d.client().call(&json!({"op": "status", "job": job}));
    assert_eq!(
        status["state"], "running",
        "premise: the job still runs: {status}"
    );
    let cancelled = d.client().call(&json!({"op": "cancel", "job": job}));
    assert_eq!(cancelled["type"], "cancelled", "{cancelled}");
    let end = a.until_end_noting(&d, "encrypt").pop().unwrap();
    assert_eq!(code(&end), "cancelled", "{end}");
    assert!(!sealed.exists(), "a cancelled file was linked");
    assert!(temp_files(&d.root).is_empty(), "temp files left");
    let plain = &plain[..4 << 20];
    fs::write(&input, plain).unwrap();
    let end = d
        .client()
        .job(&file_req("encrypt", &input, &sealed))
        .pop()
        .unwrap();
    assert_eq!(end["type"], "done", "{end}");
    assert_decrypts_to(&ring, &sealed, plain, &d.scratch().join("c"));
}

/// Intact: SIGTERM while a split file runs: its client gets exactly one final line (the
/// file finishes within the drain time), the daemon exits 0, and an output, if linked,
/// decrypts to the input.
fn sigterm_during_a_split_file(backend: &'static str) {
    let mut d = split_daemon(backend);
    let ring = d.ring();
    let plain = bytes(48 << 20, 5);
    let input = d.root.join("t.bin");
    fs::write(&input, &plain).unwrap();
    let sealed = d.root.join("t.rc");
    let mut a = d.client();
    a.send(&file_req("encrypt", &input, &sealed));
    assert_eq!(a.recv_noting(&d, "encrypt")["type"], "accepted");
    let (status, took) = d.stop(SIGTERM_BOUND);
    assert!(status.success(), "exit {status:?} after {took:?}");
    // Written before the daemon exited; still in the socket.
    let end = a
        .until_end()
        .pop()
        .expect("a final line before the daemon exited");
    assert!(is_final(&end), "{end}");
    if end["type"] == "done" {
        assert_decrypts_to(&ring, &sealed, &plain, &d.scratch().join("t"));
    } else {
        assert!(!sealed.exists(), "{end}: yet an output was linked");
    }
    assert!(temp_files(&d.root).is_empty(), "temp files left");
}

both_backends!(
    split_files_round_trip_at_every_edge,
    a_bad_record_in_any_range_fails_the_file,
    cancel_mid_split_file,
    sigterm_during_a_split_file,
);
