//! The `verify` op: every record's tag of sealed files checked through the shards, nothing
//! written. Single files at the chunk and batch edges, each way a file can be bad (a flipped
//! bit anywhere, a cut, an extension, foreign bytes, an openssl-format file, a key the ring
//! does not hold), a tree with one damaged file, a file split into ranges, and the request's
//! own rules.

use std::fs;
use std::path::Path;

use crate::harness::*;
use crate::support::*;
use serde_json::{Value, json};

fn verify_req(input: &Path) -> Value {
    json!({"op": "verify", "input": p(input)})
}

/// The final reply of one request on a new connection.
fn final_reply(d: &Daemon, request: &Value) -> Value {
    d.client().job(request).pop().expect("a final reply")
}

/// Intact: a sealed file of every size around the chunk (64 KiB) and batch (8 chunks)
/// edges verifies, with its plaintext size read and nothing written: the directory holds
/// exactly what it held (no output, no temp file), byte for byte.
fn good_files_verify_and_nothing_is_written(backend: &'static str) {
    let d = rd(backend).start();
    let c = 65_536usize;
    let dir = d.root.join("good");
    fs::create_dir(&dir).unwrap();
    let sizes = [
        0,
        1,
        15,
        16,
        c - 1,
        c,
        c + 1,
        8 * c - 1,
        8 * c,
        8 * c + 1,
        17 * c + 5,
    ];
    let mut sealed = Vec::new();
    for (i, len) in sizes.into_iter().enumerate() {
        let plain = d.root.join(format!("p{i}"));
        fs::write(&plain, bytes(len, i as u64)).unwrap();
        let out = dir.join(format!("f{i}.rcrypt"));
        let end = d.encrypt(&plain, &out, json!({}));
        assert_eq!(end["type"], "done", "encrypt {len}: {end}");
        sealed.push((out, len));
    }
    let before = snapshot(&dir);
    let written_before = stats_bytes_out(&d);
    for (file, len) in &sealed {
        let end = final_reply(&d, &verify_req(file));
        assert_eq!(end["type"], "done", "verify of {len} bytes: {end}");
        assert_eq!(end["files_ok"], 1, "{end}");
        assert_eq!(
            end["bytes_out"], *len,
            "bytes_out is the plaintext checked: {end}"
        );
        assert_eq!(
            end["bytes_in"].as_u64().unwrap(),
            fs::metadata(file).unwrap().len(),
            "every byte of the file is read: {end}"
        );
    }
    assert_eq!(snapshot(&dir), before, "a verify changed the directory");
    assert_eq!(
        stats_bytes_out(&d),
        written_before,
        "the shards' written bytes moved"
    );
}

/// Every shard's `bytes_out` (bytes written), summed.
fn stats_bytes_out(d: &Daemon) -> u64 {
    let stats = d.client().call(&json!({"op": "stats"}));
    stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("stats: {stats}"))
        .iter()
        .map(|shard| shard["bytes_out"].as_u64().unwrap())
        .sum()
}

/// Intact: each way a file can be bad fails its verify with its code (`auth_failed` for any
/// change to the records, a cut or an extension; `bad_format` for foreign bytes and the
/// unauthenticated openssl format; `unknown_key` for a key id the ring lacks), and the file
/// is left exactly as it was.
fn bad_files_fail_with_their_code(backend: &'static str) {
    let d = rd(backend).start();
    let plain = d.root.join("p");
    fs::write(&plain, bytes(3 * 65_536 + 100, 9)).unwrap();
    let good_path = d.root.join("good.rcrypt");
    assert_eq!(d.encrypt(&plain, &good_path, json!({}))["type"], "done");
    let good = fs::read(&good_path).unwrap();
    let len = good.len();

    let flip = |at: usize| {
        let mut bad = good.clone();
        bad[at] ^= 0x08;
        bad
    };
    let mut foreign_key = good.clone();
    foreign_key[20] ^= 0xff; // inside the key id (bytes 16..32)
    let mut extended = good.clone();
    extended.push(0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a bit in the first record", flip(96 + 10), "auth_failed"),
        (
            "a bit in a middle record's tag",
            flip(96 + 65_568 + 65_540),
            "auth_failed",
        ),
        ("a bit in the final record", flip(len - 40), "auth_failed"),
        ("the header tag", flip(70), "auth_failed"),
        ("cut by one byte", good[..len - 1].to_vec(), "auth_failed"),
        (
            "cut at a record edge",
            good[..96 + 65_568].to_vec(),
            "auth_failed",
        ),
        ("one byte more", extended, "auth_failed"),
        (
            "foreign bytes",
            b"hello, not sealed at all".to_vec(),
            "bad_format",
        ),
        (
            "openssl format",
            b"Salted__12345678abcdefghabcdefgh".to_vec(),
            "bad_format",
        ),
        ("an unknown key id", foreign_key, "unknown_key"),
    ];
    for (what, content, want) in cases {
        let path = d.root.join("bad.rcrypt");
        fs::write(&path, &content).unwrap();
        let end = final_reply(&d, &verify_req(&path));
        assert_eq!(code(&end), want, "{what}: {end}");
        assert_eq!(
            fs::read(&path).unwrap(),
            content,
            "{what}: the file changed"
        );
    }
    let end = final_reply(&d, &verify_req(&good_path));
    assert_eq!(end["type"], "done", "the good file still verifies: {end}");
}

/// Intact: a tree with one flipped bit in one file reports exactly that file failed, every
/// other `.rcrypt` file ok, other names skipped with their reason; the tree is unchanged
/// and nothing is created beside it.
fn tree_reports_exactly_the_damaged_file(backend: &'static str) {
    let d = rd(backend).start();
    let src = d.root.join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for (i, rel) in ["a", "b", "sub/c", "sub/deeper/d", "sub/deeper/e"]
        .iter()
        .enumerate()
    {
        fs::write(src.join(rel), bytes(10_000 * i + 1, i as u64)).unwrap();
    }
    fs::write(src.join("notes.txt"), b"plain").unwrap();
    let sealed = d.root.join("sealed");
    let end = final_reply(&d, &tree_req("encrypt", &src, &sealed, "enc"));
    assert_eq!(end["files_ok"], 6, "{end}");
    let damaged = sealed.join("sub/deeper/d.rcrypt");
    let mut content = fs::read(&damaged).unwrap();
    let at = content.len() / 2;
    content[at] ^= 0x01;
    fs::write(&damaged, &content).unwrap();
    fs::write(sealed.join("readme"), b"not sealed").unwrap();
    let parent_before = snapshot(&d.root);

    let request = json!({"op": "verify", "id": "v", "input": p(&sealed), "recursive": true});
    let replies = d.client().job(&request);
    let end = replies.last().unwrap();
    assert_eq!(end["type"], "done", "{}", brief(&replies));
    assert_eq!(end["files_ok"], 5, "{end}");
    assert_eq!(end["files_failed"], 1, "{end}");
    // The plaintext of the five files that verified: a, b, sub/c, sub/deeper/e, notes.txt.
    assert_eq!(end["bytes_out"], 1 + 10_001 + 20_001 + 40_001 + 5, "{end}");
    let failures = end["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{end}");
    assert_eq!(failures[0]["path"], p(&damaged), "{end}");
    assert_eq!(failures[0]["code"], "auth_failed", "{end}");
    let skipped: Vec<&str> = end["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert!(
        skipped.contains(&p(&sealed.join("readme"))),
        "readme is not a .rcrypt file: {end}"
    );
    assert_eq!(
        snapshot(&d.root),
        parent_before,
        "a tree verify changed files"
    );

    // The tree's record says failed, with the damaged file's code.
    let status = d.client().call(&json!({"op": "status", "job": end["job"]}));
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["code"], "auth_failed", "{status}");
}

/// Intact: a file large enough to be split into ranges verifies on every shard, and a
/// flipped bit in its last range (checked by another shard than the first) still fails it.
/// The daemon runs `--io direct`: a verify reads through the page cache even so (a direct
/// verify of a split file could stall on io_uring, about one run in three here).
fn split_file_verifies_in_ranges(backend: &'static str) {
    let d = rd(backend)
        .args(&["--split-min-mib", "1", "--io", "direct"])
        .start();
    let plain = d.root.join("big");
    fs::write(&plain, bytes(5 * 1024 * 1024 + 3, 5)).unwrap();
    let sealed = d.root.join("big.rcrypt");
    assert_eq!(d.encrypt(&plain, &sealed, json!({}))["type"], "done");
    let end = final_reply(&d, &verify_req(&sealed));
    assert_eq!(end["type"], "done", "{end}");
    assert_eq!(
        end["bytes_in"].as_u64().unwrap(),
        fs::metadata(&sealed).unwrap().len()
    );
    assert_eq!(
        end["bytes_out"],
        5 * 1024 * 1024 + 3,
        "every range's plaintext: {end}"
    );
    let mut content = fs::read(&sealed).unwrap();
    let at = content.len() - 100_000;
    content[at] ^= 0x80;
    fs::write(&sealed, &content).unwrap();
    let end = final_reply(&d, &verify_req(&sealed));
    assert_eq!(code(&end), "auth_failed", "{end}");
}

/// Intact: a verify and a decrypt of files of many batches end (no stall) and are right
/// when their reads complete out of order: on the synchronous backend the test hook hands
/// back each round's finished reads newest first; on io_uring the reads are direct, which
/// complete out of order by themselves. A verify's batches write nothing, so one pass could
/// free every lane with no op left in flight: it stalled there before. Both a whole file
/// (10 batches through 4 lanes) and a file split into ranges, verified and decrypted
/// byte for byte.
fn reads_out_of_order_neither_stall_nor_mix(backend: &'static str) {
    let d = rd(backend)
        .args(&["--split-min-mib", "8", "--io", "direct"])
        .env("RINGCRYPT_TEST_REVERSE_COMPLETIONS", "1")
        .start();
    for (name, len) in [
        ("whole", 5 * 1024 * 1024 + 3),
        ("split", 9 * 1024 * 1024 + 7),
    ] {
        let plain = d.root.join(name);
        let data = bytes(len, 9);
        fs::write(&plain, &data).unwrap();
        let sealed = d.root.join(format!("{name}.rcrypt"));
        assert_eq!(d.encrypt(&plain, &sealed, json!({}))["type"], "done");
        for round in 0..3 {
            let end = final_reply(&d, &verify_req(&sealed));
            assert_eq!(end["type"], "done", "{name} verify {round}: {end}");
            assert_eq!(end["bytes_out"], len as u64, "{name} verify {round}: {end}");
            let back = d.root.join(format!("{name}.back{round}"));
            let end = final_reply(&d, &file_req("decrypt", &sealed, &back));
            assert_eq!(end["type"], "done", "{name} decrypt {round}: {end}");
            assert!(fs::read(&back).unwrap() == data, "{name} decrypt {round}");
        }
    }
}

/// Intact: verify names no output and takes none of the output's options: each is refused
/// with `bad_request` naming the fields it takes, before any job exists.
fn verify_request_rules(backend: &'static str) {
    let d = rd(backend).start();
    let file = d.root.join("x.rcrypt");
    fs::write(&file, b"x").unwrap();
    for extra in [
        json!({"output": p(&d.root.join("y"))}),
        json!({"skip_existing": true}),
        json!({"overwrite": true}),
        json!({"fds": true}),
        json!({"key": "k1"}),
    ] {
        let reply = d.client().call(&with(verify_req(&file), extra.clone()));
        assert_eq!(code(&reply), "bad_request", "{extra}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains("verify takes \"op\", \"id\", \"input\", \"recursive\", \"wait\""),
            "{extra}: {message}"
        );
    }
    let reply = d.client().call(&json!({"op": "verify"}));
    assert_eq!(code(&reply), "bad_request", "{reply}");
    // A directory without recursive, as for the other ops.
    let sub = d.root.join("sub");
    fs::create_dir(&sub).unwrap();
    let reply = final_reply(&d, &verify_req(&sub));
    assert_eq!(code(&reply), "bad_request", "{reply}");
}

both_backends!(
    good_files_verify_and_nothing_is_written,
    bad_files_fail_with_their_code,
    tree_reports_exactly_the_damaged_file,
    split_file_verifies_in_ranges,
    reads_out_of_order_neither_stall_nor_mix,
    verify_request_rules,
);
