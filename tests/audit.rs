//! The daemon's log as an audit log, through the real `ringcryptd` on both backends: one
//! record per request with its verdict (accepted with its job, refused with its code, pings,
//! unparsable and over-long lines), one per finished job with its result and code; the JSON
//! format parses line by line; `--log-level` filters; journald priority prefixes appear
//! exactly when `JOURNAL_STREAM` names stderr; and a stderr nobody reads costs dropped log
//! records, counted in `/metrics`, never a stalled job.

#[macro_use]
mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Waits (up to 10 s: the log is written by its own thread) until the log satisfies `done`;
/// returns the log either way.
fn log_when(d: &Daemon, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = d.log_text();
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The audit lines of a text log.
fn audit_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("audit: ")).collect()
}

/// Encrypts `plain` through the daemon to `sealed`, then flips a byte of its last chunk.
fn tampered(d: &Daemon, plain: &Path, sealed: &Path) {
    fs::write(plain, bytes(20_000, 7)).unwrap();
    let end = d.encrypt(plain, sealed, json!({}));
    assert_eq!(end["type"], "done", "{end}");
    let mut data = fs::read(sealed).unwrap();
    let at = data.len() - 40;
    data[at] ^= 0x01;
    fs::write(sealed, data).unwrap();
}

/// Intact: every request leaves exactly one record with its verdict, a refused request is
/// never logged as accepted, the text of an unparsable line is never logged, and each job's
/// end is logged with its result and code (the tampered file's name with `auth_failed`).
fn every_verdict_and_every_job_end_is_logged(backend: &'static str) {
    let d = Daemon::start(backend);
    let uid = rustix::process::getuid().as_raw();
    let plain = d.root.join("plain.bin");
    let sealed = d.root.join("sealed.rc");
    tampered(&d, &plain, &sealed);
    let mut c = d.client();
    assert_eq!(c.call(&json!({"op": "ping", "id": 1}))["type"], "pong");
    c.send_raw(b"not json: secret-looking-text\n");
    assert_eq!(code(&c.recv()), "bad_request");
    c.send_raw(&[b'x'; 70_000]);
    c.send_raw(b"\n");
    assert_eq!(code(&c.recv()), "too_large");
    let passwd = c.call(&file_req(
        "encrypt",
        Path::new("/etc/passwd"),
        &d.root.join("p.rc"),
    ));
    assert_eq!(code(&passwd), "forbidden_path");
    let back = d.root.join("back.bin");
    let replies = c.job(&file_req("decrypt", &sealed, &back));
    let job = replies[0]["job"].as_str().unwrap().to_string();
    assert_eq!(code(replies.last().unwrap()), "auth_failed", "{replies:?}");
    assert!(!back.exists(), "nothing written for a tampered input");
    let status = c.call(&json!({"op": "status", "job": job}));
    assert_eq!(status["state"], "failed", "{status}");

    let text = log_when(&d, |t| t.contains("op=status"));
    let audit = audit_lines(&text);
    let who = format!("uid={uid} gid=");
    let one = |what: &str, parts: &[&str]| -> String {
        let found: Vec<&&str> = audit
            .iter()
            .filter(|l| l.starts_with(&format!("audit: {what} ")))
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one `{what}` record with {parts:?}:\n{text}"
        );
        found[0].to_string()
    };
    // The harness's readiness ping and ours, each one record.
    let pings = audit.iter().filter(|l| l.contains(" op=ping")).count();
    assert!(pings >= 2, "{text}");
    let unparsable = one("unparsable", &[&who, "code=bad_request", "bytes=29"]);
    assert!(
        !text.contains("secret-looking-text"),
        "line text logged:\n{text}"
    );
    one("unparsable", &[&who, "code=too_large"]);
    let refused = one(
        "refused",
        &["op=encrypt", "input=\"/etc/passwd\"", "code=forbidden_path"],
    );
    assert!(refused.contains(&who), "{refused}");
    assert!(
        !audit
            .iter()
            .any(|l| l.contains("/etc/passwd") && l.contains("accepted")),
        "a refused request logged as accepted:\n{text}"
    );
    let accepted = one("accepted", &["op=decrypt", &format!("job=\"{job}\"")]);
    assert!(
        accepted.contains(&format!("input=\"{}\"", p(&sealed))),
        "{accepted}"
    );
    let failed = one("finished", &[&format!("job=\"{job}\""), "result=failed"]);
    for part in [
        "code=auth_failed",
        "op=decrypt",
        p(&sealed),
        &who,
        "message=",
    ] {
        assert!(failed.contains(part), "{part} missing: {failed}");
    }
    one(
        "finished",
        &[
            "op=encrypt",
            "result=ok",
            &format!("input=\"{}\"", p(&plain)),
        ],
    );
    one("accepted", &["op=status", &format!("job=\"{job}\"")]);
    assert!(!unparsable.contains("not json"), "{unparsable}");
    // The pings, six other requests and lines, two jobs: nothing else in the audit log.
    assert_eq!(audit.len(), pings + 8, "{text}");
}

/// Intact: with `--log-format json` every line of the log (start-up, audit, shutdown) is
/// one JSON object with `ts`, `level`, `target` and `msg`; a path with a quote, a space and
/// a newline comes back exactly; numbers are numbers.
fn json_log_parses_line_by_line(backend: &'static str) {
    let mut d = Daemon::builder(backend)
        .args(&["--log-format", "json"])
        .start();
    let odd = d.root.join("a \"quoted\"\nname.txt");
    fs::write(&odd, b"hello").unwrap();
    let out = d.root.join("out.rc");
    assert_eq!(d.encrypt(&odd, &out, json!({}))["type"], "done");
    let mut c = d.client();
    c.send_raw(b"{\"op\":\n");
    assert_eq!(code(&c.recv()), "bad_request");
    drop(c);
    let (status, _) = d.stop(Duration::from_secs(40));
    assert!(status.success(), "{status}");
    let text = d.log_text();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{text}")))
        .collect();
    for r in &records {
        for field in ["ts", "level", "target", "msg"] {
            assert!(r[field].is_string(), "{field} in {r}");
        }
    }
    let of = |msg: &str, target: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["msg"] == msg && r["target"] == target)
            .collect()
    };
    let accepted: Vec<&Value> = of("accepted", "audit")
        .into_iter()
        .filter(|r| r["op"] == "encrypt")
        .collect();
    assert_eq!(accepted.len(), 1, "{text}");
    assert_eq!(accepted[0]["input"], p(&odd));
    assert_eq!(accepted[0]["level"], "info");
    assert!(accepted[0]["uid"].is_u64(), "{}", accepted[0]);
    assert_eq!(accepted[0]["fds"], false);
    let finished = of("finished", "audit");
    assert_eq!(finished.len(), 1, "{text}");
    assert_eq!(finished[0]["result"], "ok");
    assert_eq!(finished[0]["bytes_in"], 5);
    let unparsable = of("unparsable", "audit");
    assert_eq!(unparsable[0]["code"], "bad_request");
    assert_eq!(unparsable[0]["level"], "warn");
    assert_eq!(of("stopped", "ringcryptd").len(), 1, "{text}");
}

/// Intact: `--log-level warn` keeps refusals and failures and drops accepted requests, jobs
/// that ended ok and start-up lines; `--log-level error` drops the audit records entirely,
/// while the daemon serves the same.
fn log_level_filters(backend: &'static str) {
    for (level, keeps_warnings) in [("warn", true), ("error", false)] {
        let d = Daemon::builder(backend)
            .args(&["--log-level", level])
            .start();
        let plain = d.root.join("plain.bin");
        let sealed = d.root.join("sealed.rc");
        tampered(&d, &plain, &sealed);
        let end = d.encrypt(&sealed, &d.root.join("x"), json!({}));
        assert_eq!(end["type"], "done", "{end}");
        let mut c = d.client();
        assert_eq!(c.call(&json!({"op": "ping"}))["type"], "pong");
        let forbidden = c.call(&file_req(
            "encrypt",
            Path::new("/etc/hosts"),
            &d.root.join("h"),
        ));
        assert_eq!(code(&forbidden), "forbidden_path");
        let bad = c.job(&file_req("decrypt", &sealed, &d.root.join("back")));
        assert_eq!(code(bad.last().unwrap()), "auth_failed");
        // A marker: a refused request after the others, so its record is the last.
        c.send_raw(b"}\n");
        assert_eq!(code(&c.recv()), "bad_request");
        let text = if keeps_warnings {
            log_when(&d, |t| t.contains("audit: unparsable"))
        } else {
            std::thread::sleep(Duration::from_millis(500));
            d.log_text()
        };
        assert!(!text.contains("audit: accepted"), "{level}: {text}");
        assert!(!text.contains("result=ok"), "{level}: {text}");
        assert!(!text.contains("listening on"), "{level}: {text}");
        assert_eq!(
            text.contains("audit: refused") && text.contains("code=forbidden_path"),
            keeps_warnings,
            "{level}: {text}"
        );
        assert_eq!(
            text.contains("result=failed code=auth_failed"),
            keeps_warnings,
            "{level}: {text}"
        );
        if !keeps_warnings {
            assert_eq!(text, "", "error level, nothing failed: {text}");
        }
    }
}

/// Intact: when `JOURNAL_STREAM` names the device and inode of stderr, every line starts
/// with its syslog priority (`<6>` start-up, `<5>` accepted, `<4>` refused, `<3>` the
/// error a bad start ends with); when it names another file, no line has one.
fn journal_prefixes_when_journal_stream_is_stderr(backend: &'static str) {
    for matching in [true, false] {
        let d = Daemon::builder(backend).prepare();
        let log = d.log.clone();
        let mut cmd = d.command(&log);
        let meta = fs::metadata(&log).unwrap();
        let ino = if matching { meta.ino() } else { meta.ino() + 1 };
        cmd.env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()));
        let mut child = Guard(cmd.spawn().expect("ringcryptd starts"));
        wait_pong(&d.socket, &mut child.0, &log);
        let mut c = d.client();
        assert_eq!(c.call(&json!({"op": "ping"}))["type"], "pong");
        let refused = c.call(&file_req(
            "encrypt",
            Path::new("/etc/hosts"),
            &d.root.join("h"),
        ));
        assert_eq!(code(&refused), "forbidden_path");
        let text = log_when(&d, |t| t.contains("forbidden_path"));
        let first = |needle: &str| -> &str {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} line:\n{text}"))
        };
        let expect = |prefix: &str, line: &str| {
            if matching {
                assert!(line.starts_with(prefix), "want {prefix}: {line}\n{text}");
            } else {
                assert!(!line.starts_with('<'), "no journal here: {line}");
            }
        };
        expect("<6>ringcryptd: listening on", first("listening on"));
        expect("<5>audit: accepted", first("op=ping"));
        expect("<4>audit: refused", first("forbidden_path"));
        if matching {
            assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
        }
        assert!(kill("TERM", child.0.id()));
        let status = wait_within(&mut child.0, STOP_TIMEOUT).expect("exits after SIGTERM");
        assert!(status.success(), "{status}");
        // A daemon that cannot start says why at error priority, as its last line.
        let mut bad = d.command(&log);
        bad.arg("--allow-root")
            .arg(d.scratch().join("missing-root"));
        let meta = fs::metadata(&log).unwrap();
        let ino = if matching { meta.ino() } else { meta.ino() + 1 };
        bad.env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()));
        let status = bad.status().unwrap();
        assert_eq!(status.code(), Some(1));
        let text = d.log_text();
        let last = text.lines().last().unwrap_or_default();
        assert!(
            last.contains("ringcryptd: error: ") && last.contains("missing-root"),
            "{text}"
        );
        expect("<3>ringcryptd: error", last);
    }
}

/// Kills the child on drop, so a failing test leaves no daemon behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the daemon at `socket` answers ping (it must not exit first).
fn wait_pong(socket: &Path, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while try_ping(socket).is_none_or(|r| r["type"] != "pong") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited ({status}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no pong within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics` on `port`: the body.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics listen");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Intact: with stderr a pipe nobody reads (its buffer fills, so the logging thread blocks
/// in `write`), thousands of requests are still answered and every job still completes with
/// a verified output; the records that did not fit are counted in
/// `ringcrypt_log_dropped_total` (0 at the first scrape, then above 0); and the daemon still
/// exits 0 on SIGTERM, not waiting on the log.
fn a_stuck_stderr_drops_records_and_never_stalls_a_job(backend: &'static str) {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let d = Daemon::builder(backend)
        .metrics(&format!("127.0.0.1:{port}"))
        .prepare();
    let mut cmd = d.command(&d.log.clone());
    cmd.stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("ringcryptd starts"));
    let _unread = child
        .0
        .stderr
        .take()
        .expect("the pipe's read end, held and never read");
    wait_pong(&d.socket, &mut child.0, &d.log);
    let first = scrape(port);
    assert_eq!(
        sample(&first, "ringcrypt_log_dropped_total"),
        Some(0.0),
        "{first}"
    );

    // The pipe, one write batch and the queue hold under 8,000 ping records: send 16,000
    // pings, pipelined on 4 connections, each answered.
    let pings: Vec<Value> = (0..4000).map(|i| json!({"op": "ping", "id": i})).collect();
    let mut conns: Vec<Client> = (0..4).map(|_| d.client()).collect();
    for c in &mut conns {
        c.send_all(&pings);
    }
    for c in &mut conns {
        for i in 0..4000 {
            let reply = c.recv();
            assert_eq!(
                (reply["type"].as_str(), reply["id"].as_u64()),
                (Some("pong"), Some(i))
            );
        }
    }
    let ring = d.ring();
    let mut pairs = Vec::new();
    let mut c = d.client();
    for i in 0..20 {
        let input = d.root.join(format!("f{i}.bin"));
        fs::write(&input, bytes(10_000 + i, i as u64)).unwrap();
        let output = d.root.join(format!("f{i}.rc"));
        let replies = c.job(&file_req("encrypt", &input, &output));
        assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
        pairs.push((output, input));
    }
    verify_pairs(&ring, &pairs, &d.scratch());
    let after = scrape(port);
    let dropped = sample(&after, "ringcrypt_log_dropped_total").expect("the counter");
    assert!(dropped >= 1000.0, "dropped {dropped}:\n{after}");
    assert!(kill("TERM", child.0.id()));
    let status = wait_within(&mut child.0, STOP_TIMEOUT).expect("exits with stderr stuck");
    assert!(status.success(), "{status}");
}

both_backends!(
    every_verdict_and_every_job_end_is_logged,
    json_log_parses_line_by_line,
    log_level_filters,
    journal_prefixes_when_journal_stream_is_stderr,
    a_stuck_stderr_drops_records_and_never_stalls_a_job,
);
