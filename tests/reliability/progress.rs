//! `progress` lines for a single file (`"progress": true`): sent while the job runs, at most
//! one every 200 ms, with the file's size as the total; a request without the field gets
//! none (clients that do not ask see no change).

use std::fs;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::*;
use serde_json::{Value, json};

/// One job's reply lines, each with the time it arrived since the request was sent.
fn timed_job(d: &Daemon, request: &Value) -> Vec<(Duration, Value)> {
    let mut client = d.client();
    let started = Instant::now();
    client.send(request);
    let mut lines = Vec::new();
    loop {
        let reply = client.recv();
        let last = is_final(&reply);
        lines.push((started.elapsed(), reply));
        if last {
            return lines;
        }
    }
}

/// Intact: with `progress`, a 24 MiB encrypt, decrypt and verify each send `progress` lines
/// between `accepted` and `done`: `files_total` 1, `bytes_total` the input's size,
/// `bytes_done` never going back nor past the total, `totals_final` true, at most one per
/// 200 ms (the bound the protocol sets); the same jobs without it send none. The outputs
/// are complete either way.
fn single_file_progress_when_asked(backend: &'static str) {
    let d = rd(backend).start();
    let input = d.root.join("big");
    write_big(&input, 24);
    let sealed = d.root.join("big.rcrypt");
    let back = d.root.join("big.back");
    let size = |path: &std::path::Path| fs::metadata(path).unwrap().len();
    for (op, from, to) in [
        ("encrypt", &input, &sealed),
        ("decrypt", &sealed, &back),
        ("verify", &sealed, &sealed),
    ] {
        let mut request = file_req(op, from, to);
        if op == "verify" {
            request = json!({"op": "verify", "input": p(from)});
        }
        let asked = with(request.clone(), json!({"progress": true}));
        let lines = timed_job(&d, &asked);
        let (elapsed, end) = lines.last().unwrap();
        assert_eq!(
            end["type"],
            "done",
            "{op}: {}",
            brief(&lines.iter().map(|l| l.1.clone()).collect::<Vec<_>>())
        );
        assert_eq!(lines[0].1["type"], "accepted", "{op}");
        let progress: Vec<&(Duration, Value)> = lines
            .iter()
            .filter(|(_, l)| l["type"] == "progress")
            .collect();
        assert!(
            !progress.is_empty(),
            "{op}: no progress line in {elapsed:?}"
        );
        assert_eq!(progress.len(), lines.len() - 2, "{op}: other lines between");
        let total = size(from);
        let mut last_done = 0;
        for (_, line) in &progress {
            assert_eq!(line["files_total"], 1, "{line}");
            assert_eq!(line["bytes_total"], total, "{op}: {line}");
            assert_eq!(line["totals_final"], true, "{line}");
            assert_eq!(line["job"], end["job"], "{line}");
            let done = line["bytes_done"].as_u64().unwrap();
            assert!(done >= last_done && done <= total, "{op}: {line}");
            last_done = done;
        }
        // At most one per 200 ms: n lines need at least (n - 1) * 200 ms of the job's time.
        // Counted against the whole request's time, not the gaps the client saw: a client
        // that loses its core reads two lines sent 200 ms apart in one go.
        assert!(
            Duration::from_millis(200) * (progress.len() as u32 - 1) <= *elapsed,
            "{op}: {} progress lines within {elapsed:?}",
            progress.len()
        );
        if op == "encrypt" {
            fs::remove_file(&sealed).unwrap();
        } else if op == "decrypt" {
            fs::remove_file(&back).unwrap();
        }

        // Not asked: no progress line, the same final reply.
        let lines = timed_job(&d, &request);
        assert!(
            lines.iter().all(|(_, l)| l["type"] != "progress"),
            "{op}: progress lines without the field"
        );
        assert_eq!(lines.last().unwrap().1["type"], "done", "{op}");
    }
    assert!(
        fs::read(&back).unwrap() == fs::read(&input).unwrap(),
        "the round trip differs"
    );
}

/// Intact: a file job's `progress` lines carry the input's size from the first one on,
/// however early the shard looks. The test hook runs the shard's tick on every pass of its
/// loop, so a report falls due in the moment between a job's admission and its input's
/// `statx`: before the fix, that report said `bytes_total` 0 with `totals_final` true
/// (seen under load in CI). 40 encrypts, then their decrypts and verifies, pipelined on one
/// connection: every `progress` line has the input's size, every job ends `done`, and the
/// round trip gives back each file.
fn first_report_waits_for_the_size(backend: &'static str) {
    let d = rd(backend)
        .env("RINGCRYPT_TEST_TICK_EVERY_LOOP", "1")
        .start();
    const FILES: usize = 40;
    let data: Vec<Vec<u8>> = (0..FILES).map(|i| bytes(256 * 1024, i as u64)).collect();
    for (i, content) in data.iter().enumerate() {
        fs::write(d.root.join(format!("f{i}")), content).unwrap();
    }
    let path = |i: usize, ext: &str| d.root.join(format!("f{i}{ext}"));
    for op in ["encrypt", "decrypt", "verify"] {
        let requests: Vec<Value> = (0..FILES)
            .map(|i| {
                let request = match op {
                    "encrypt" => file_req(op, &path(i, ""), &path(i, ".rcrypt")),
                    "decrypt" => file_req(op, &path(i, ".rcrypt"), &path(i, ".back")),
                    _ => json!({"op": "verify", "input": p(&path(i, ".rcrypt"))}),
                };
                with(request, json!({"progress": true}))
            })
            .collect();
        let total = if op == "encrypt" {
            256 * 1024
        } else {
            fs::metadata(path(0, ".rcrypt")).unwrap().len()
        };
        let mut client = d.client();
        client.send_all(&requests);
        let mut ended = 0;
        while ended < FILES {
            let reply = client.recv();
            if reply["type"] == "progress" {
                assert_eq!(reply["bytes_total"], total, "{op}: {reply}");
                assert_eq!(reply["totals_final"], true, "{op}: {reply}");
            } else if is_final(&reply) {
                assert_eq!(reply["type"], "done", "{op}: {reply}");
                ended += 1;
            }
        }
    }
    for (i, content) in data.iter().enumerate() {
        assert!(&fs::read(path(i, ".back")).unwrap() == content, "f{i}");
    }
}

both_backends!(
    single_file_progress_when_asked,
    first_report_waits_for_the_size
);
