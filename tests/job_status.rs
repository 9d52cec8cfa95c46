//! A finished job's record keeps why it failed: `status` and `jobs` carry the code and
//! message of its final `error` after the fact (`"wait": false` loses nothing), and
//! `ringcrypt status` exits 1 for a failed job. Through the real daemon on both backends.

#[macro_use]
mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Seals `plain` through the daemon to `sealed`, then flips a byte of its last chunk.
fn seal_and_tamper(d: &Daemon, plain: &Path, sealed: &Path) {
    let end = d.encrypt(plain, sealed, json!({}));
    assert_eq!(end["type"], "done", "{end}");
    let mut data = fs::read(sealed).unwrap();
    let at = data.len() - 40;
    data[at] ^= 0x01;
    fs::write(sealed, data).unwrap();
}

/// Polls `status` of `job` until it has ended (10 s at most); the last reply.
fn ended_status(d: &Daemon, job: &str) -> Value {
    let mut c = d.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c.call(&json!({"op": "status", "job": job}));
        let state = status["state"].as_str().unwrap_or_default().to_string();
        if !matches!(state.as_str(), "queued" | "running") || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Intact: a decrypt of a tampered file started with `"wait": false` ends `failed`, and
/// `status` and `jobs` say `auth_failed` with a message naming the file; the output was
/// never written; `ringcrypt status` prints the reason and exits 1 (also with `--json`),
/// while for a job that succeeded it exits 0 and no code is shown.
fn a_failed_jobs_status_says_why(backend: &'static str) {
    let d = Daemon::start(backend);
    let plain = d.root.join("report.bin");
    fs::write(&plain, bytes(70_000, 3)).unwrap();
    let sealed = d.root.join("report.rc");
    seal_and_tamper(&d, &plain, &sealed);
    let out = d.root.join("back.bin");
    let mut c = d.client();
    let accepted = c.call(&with(
        file_req("decrypt", &sealed, &out),
        json!({"wait": false}),
    ));
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let job = accepted["job"].as_str().unwrap().to_string();
    let status = ended_status(&d, &job);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["code"], "auth_failed", "{status}");
    let message = status["message"].as_str().expect("a message");
    assert!(message.contains(p(&sealed)), "names the file: {message}");
    assert!(!out.exists(), "nothing under the output name");

    let jobs = c.call(&json!({"op": "jobs"}));
    let entry = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["job"] == job.as_str())
        .unwrap_or_else(|| panic!("{job} in {jobs}"));
    assert_eq!(entry["code"], "auth_failed", "{entry}");
    assert_eq!(entry["message"], message, "{entry}");

    let run = d.cli(&["status", &job]).failed("auth_failed");
    assert!(run.stdout.contains("failed"), "{run:#?}");
    assert!(
        run.stdout.contains(message),
        "the reason is printed: {run:#?}"
    );
    assert!(
        run.stderr.contains(&format!("job {job} failed")),
        "{run:#?}"
    );
    let raw = d.cli(&["--json", "status", &job]);
    assert_eq!(raw.code, 1, "{raw:#?}");
    assert!(raw.stdout.contains("\"code\":\"auth_failed\""), "{raw:#?}");

    // The job that sealed the file succeeded: status 0, no code.
    let ok_job = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["op"] == "encrypt")
        .expect("the encrypt job")["job"]
        .as_str()
        .unwrap()
        .to_string();
    let run = d.cli(&["status", &ok_job]).ok();
    assert!(run.stdout.contains("done"), "{run:#?}");
    let status = ended_status(&d, &ok_job);
    assert!(
        status.get("code").is_none() && status.get("message").is_none(),
        "{status}"
    );
}

/// Intact: a tree with one tampered file, started without waiting, ends `failed`; its
/// status carries the failed file's code and a message that counts the failures and names
/// the first; the good file was decrypted; `ringcrypt status` exits 1.
fn a_failed_trees_status_names_the_first_failure(backend: &'static str) {
    let d = Daemon::start(backend);
    let src = d.root.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("good.txt"), b"fine").unwrap();
    fs::write(src.join("bad.txt"), bytes(9_000, 5)).unwrap();
    let sealed = d.root.join("sealed");
    let mut c = d.client();
    let end = c.job(&tree_req("encrypt", &src, &sealed, "t1"));
    assert_eq!(end.last().unwrap()["type"], "done", "{end:?}");
    let bad = sealed.join("bad.txt.rcrypt");
    let mut data = fs::read(&bad).unwrap();
    let at = data.len() - 40;
    data[at] ^= 0x01;
    fs::write(&bad, data).unwrap();
    let restored = d.root.join("restored");
    let accepted = c.call(&with(
        tree_req("decrypt", &sealed, &restored, "t2"),
        json!({"wait": false}),
    ));
    let job = accepted["job"].as_str().expect("accepted").to_string();
    let status = ended_status(&d, &job);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["code"], "auth_failed", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("1 of the tree's files failed") && message.contains(p(&bad)),
        "{message}"
    );
    assert_eq!(fs::read(restored.join("good.txt")).unwrap(), b"fine");
    assert!(!restored.join("bad.txt").exists());
    d.cli(&["status", &job]).failed("auth_failed");
}

both_backends!(
    a_failed_jobs_status_says_why,
    a_failed_trees_status_names_the_first_failure,
);
