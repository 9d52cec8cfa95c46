//! Descriptor passing on the real daemon (README "Security", descriptors or paths): a
//! request with `"fds": true` brings its input and an unnamed temp output as `SCM_RIGHTS`
//! descriptors, so the kernel, not the daemon, checked the caller's permissions.
//!
//! Checked, on both backends: a file outside every allowed root round-trips through passed
//! descriptors while the same paths sent as paths are refused; every descriptor that is not
//! what such a request promises (a named output, an output open for append or read only, a
//! non-empty output, an input open for writing only, a directory, a missing or a single
//! descriptor, both ends of one pipe) is refused with `bad_request` and the files involved
//! are untouched; stray descriptors are closed; a tampered input is `auth_failed` with
//! nothing linked; pipes are streamed by the protocol alone (a pipe output, a pipe input with
//! `progress` lines that have no total); and the daemon holds no descriptor after any of it.

#[macro_use]
mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, bytes, code, link_into_place, open_fds, p, tmpfile_in};

fn fd_request(op: &str, input: &Path, output: &Path) -> Value {
    json!({"op": op, "input": p(input), "output": p(output), "fds": true})
}

/// Sends a request with `fds` and returns its replies through `done` or `error`.
fn passing(daemon: &Daemon, request: &Value, fds: &[BorrowedFd<'_>]) -> Vec<Value> {
    let mut client = daemon.client();
    client.send_with_fds(request, fds);
    client.until_end()
}

/// Waits (bounded) for the daemon's descriptor count to come back to `baseline`: replies
/// are sent before a finished job's descriptors are dropped on the shard's next turn.
fn assert_fds_return_to(pid: u32, baseline: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = open_fds(pid).unwrap();
        if now <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the daemon holds {now} descriptors, {baseline} before"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_all(mut file: &File) -> Vec<u8> {
    let mut data = Vec::new();
    file.rewind().unwrap();
    file.read_to_end(&mut data).unwrap();
    data
}

both_backends!(
    passed_descriptors_round_trip_outside_every_root,
    descriptors_that_break_the_promise_are_refused,
    stray_descriptors_are_closed,
    a_tampered_input_by_descriptor_is_auth_failed,
    pipes_stream_by_the_protocol,
);

fn passed_descriptors_round_trip_outside_every_root(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let baseline = open_fds(daemon.pid()).unwrap();
    // `outside` is a sibling of the daemon's only allowed root.
    let dir = &daemon.outside;
    let plain = bytes(300_000, 7);
    let input = dir.join("report.pdf");
    fs::write(&input, &plain).unwrap();
    let sealed_path = dir.join("report.pdf.rcrypt");

    // By path, the daemon refuses: the file is outside every root.
    let refused = daemon
        .client()
        .job(&support::file_req("encrypt", &input, &sealed_path));
    assert_eq!(
        code(refused.last().unwrap()),
        "forbidden_path",
        "{refused:?}"
    );

    // By descriptor, the caller's own permissions were checked when it opened the files.
    let source = File::open(&input).unwrap();
    let sealed = tmpfile_in(dir);
    let replies = passing(
        &daemon,
        &fd_request("encrypt", &input, &sealed_path),
        &[source.as_fd(), sealed.as_fd()],
    );
    let done = replies.last().unwrap();
    assert_eq!(done["type"], "done", "{replies:?}");
    assert_eq!(done["bytes_in"], plain.len() as u64);
    assert!(
        !sealed_path.exists(),
        "the daemon never names the output; the caller links it"
    );
    let ciphertext = read_all(&sealed);
    assert_eq!(done["bytes_out"], ciphertext.len() as u64);
    assert!(ciphertext.starts_with(b"\x89RCRYPT\n"));
    link_into_place(&sealed, &sealed_path).expect("link the output into place");
    support::assert_decrypts_to(&daemon.ring(), &sealed_path, &plain, &dir.join("check.out"));

    // And back, by descriptor again.
    let back_path = dir.join("report.back");
    let sealed_in = File::open(&sealed_path).unwrap();
    let back = tmpfile_in(dir);
    let replies = passing(
        &daemon,
        &fd_request("decrypt", &sealed_path, &back_path),
        &[sealed_in.as_fd(), back.as_fd()],
    );
    assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
    assert_eq!(
        read_all(&back),
        plain,
        "decrypt by descriptor gives the input back"
    );
    assert_eq!(fs::read(&input).unwrap(), plain, "the input is unchanged");

    // Rewrap, too; two identical requests both run (descriptor jobs are never merged).
    for _ in 0..2 {
        let sealed_in = File::open(&sealed_path).unwrap();
        let rewrapped = tmpfile_in(dir);
        let replies = passing(
            &daemon,
            &fd_request("rewrap", &sealed_path, &dir.join("r.rcrypt")),
            &[sealed_in.as_fd(), rewrapped.as_fd()],
        );
        assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
        assert!(read_all(&rewrapped).len() > plain.len());
    }
    drop((source, sealed, sealed_in, back));
    assert_fds_return_to(daemon.pid(), baseline, "after descriptor jobs");
    let log = daemon.log_text();
    assert!(
        log.contains("fds") && log.contains("report.pdf"),
        "descriptor requests are audited with their names: {log}"
    );
}

fn descriptors_that_break_the_promise_are_refused(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let baseline = open_fds(daemon.pid()).unwrap();
    let dir = &daemon.outside;
    let input = dir.join("in.txt");
    fs::write(&input, b"the input").unwrap();
    let source = File::open(&input).unwrap();
    let out = dir.join("out.rcrypt");
    let request = fd_request("encrypt", &input, &out);

    let refused = |fds: &[BorrowedFd<'_>], why: &str| {
        let replies = passing(&daemon, &request, fds);
        let last = replies.last().unwrap();
        assert_eq!(code(last), "bad_request", "{why}: {replies:?}");
        last["message"].as_str().unwrap().to_string()
    };

    // A named file as the output: the daemon never writes into a file that has a name.
    let named_path = dir.join("someone-elses.txt");
    fs::write(&named_path, b"keep me").unwrap();
    let named = OpenOptions::new().write(true).open(&named_path).unwrap();
    let message = refused(&[source.as_fd(), named.as_fd()], "named output");
    assert!(message.contains("unnamed temp file"), "{message}");
    assert_eq!(fs::read(&named_path).unwrap(), b"keep me");

    // An unnamed output that is not empty.
    let used = tmpfile_in(dir);
    (&used).write_all(b"x").unwrap();
    refused(&[source.as_fd(), used.as_fd()], "non-empty output");
    assert_eq!(read_all(&used), b"x");

    // An output open for append: pwrite would ignore the offsets.
    let append = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .unwrap();
    let message = refused(&[source.as_fd(), append.as_fd()], "O_APPEND output");
    assert!(message.contains("O_APPEND"), "{message}");

    // An output open for reading only (the input passed twice).
    let message = refused(&[source.as_fd(), source.as_fd()], "read-only output");
    assert!(message.contains("not open for writing"), "{message}");

    // An input open for writing only.
    let write_only = OpenOptions::new().write(true).open(&input).unwrap();
    let fresh = tmpfile_in(dir);
    let message = refused(&[write_only.as_fd(), fresh.as_fd()], "write-only input");
    assert!(message.contains("not open for reading"), "{message}");
    assert_eq!(fs::read(&input).unwrap(), b"the input");

    // A directory as the input.
    let directory = File::open(dir).unwrap();
    let message = refused(&[directory.as_fd(), fresh.as_fd()], "directory input");
    assert!(message.contains("is a directory"), "{message}");
    assert!(read_all(&fresh).is_empty(), "nothing was written");

    // Both ends of one pipe: the job would read its own output.
    let (pipe_in, pipe_out) = std::io::pipe().unwrap();
    let message = refused(&[pipe_in.as_fd(), pipe_out.as_fd()], "one pipe both ways");
    assert!(message.contains("same file (or pipe)"), "{message}");
    drop((pipe_in, pipe_out));

    // One descriptor, and none at all; the connection goes on serving.
    let mut client = daemon.client();
    client.send_with_fds(&request, &[source.as_fd()]);
    let reply = client.recv();
    assert_eq!(code(&reply), "bad_request", "{reply}");
    client.send(&request);
    let reply = client.recv();
    assert_eq!(code(&reply), "bad_request", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("SCM_RIGHTS"),
        "the message says how to pass them: {reply}"
    );
    assert_eq!(client.call(&json!({"op": "ping"}))["type"], "pong");

    // `fds` with a tree is refused by the parser, before any descriptor is used.
    let mut tree = request.clone();
    tree["recursive"] = json!(true);
    assert_eq!(code(&client.call(&tree)), "bad_request");

    assert!(!out.exists(), "no output appeared under the name");
    drop(client);
    assert_fds_return_to(daemon.pid(), baseline, "after refused descriptors");
}

fn stray_descriptors_are_closed(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let baseline = open_fds(daemon.pid()).unwrap();
    let file = tempfile::tempfile().unwrap();
    let mut client = daemon.client();
    // Descriptors sent with requests that take none: each ping answers, and once more
    // than the per-connection bound wait, they are closed with an error line.
    let mut closed = false;
    for _ in 0..12 {
        client.send_with_fds(&json!({"op": "ping"}), &[file.as_fd(), file.as_fd()]);
        let reply = client.recv();
        if reply["type"] == "error" {
            assert_eq!(code(&reply), "bad_request");
            assert!(
                reply["message"].as_str().unwrap().contains("were closed"),
                "{reply}"
            );
            closed = true;
            assert_eq!(client.recv()["type"], "pong", "the ping is still answered");
        } else {
            assert_eq!(reply["type"], "pong", "{reply}");
        }
    }
    assert!(closed, "stray descriptors beyond the bound are closed");
    assert!(
        open_fds(daemon.pid()).unwrap() <= baseline + 1 + 16,
        "at most the bound is held"
    );
    drop(client);
    assert_fds_return_to(daemon.pid(), baseline, "after the connection closed");
}

fn a_tampered_input_by_descriptor_is_auth_failed(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let dir = &daemon.outside;
    let plain = bytes(200_000, 9);
    let input = dir.join("t.bin");
    fs::write(&input, &plain).unwrap();
    let source = File::open(&input).unwrap();
    let sealed = tmpfile_in(dir);
    let sealed_path = dir.join("t.bin.rcrypt");
    let replies = passing(
        &daemon,
        &fd_request("encrypt", &input, &sealed_path),
        &[source.as_fd(), sealed.as_fd()],
    );
    assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
    let mut ciphertext = read_all(&sealed);
    let middle = ciphertext.len() / 2;
    ciphertext[middle] ^= 1;
    let tampered_path = dir.join("tampered.rcrypt");
    fs::write(&tampered_path, &ciphertext).unwrap();

    let tampered = File::open(&tampered_path).unwrap();
    let back = tmpfile_in(dir);
    let back_path = dir.join("t.back");
    let replies = passing(
        &daemon,
        &fd_request("decrypt", &tampered_path, &back_path),
        &[tampered.as_fd(), back.as_fd()],
    );
    assert_eq!(code(replies.last().unwrap()), "auth_failed", "{replies:?}");
    assert!(!back_path.exists(), "nothing under the output name");
    assert_eq!(
        fs::read(&tampered_path).unwrap(),
        ciphertext,
        "the input is unchanged"
    );
}

/// Intact, by the protocol alone (no `ringcrypt` client): a file encrypted into a pipe
/// arrives whole on the pipe's other end, in the format's size, and `done` counts it; that
/// stream fed back as a pipe input with a pipe output gives the plaintext back, its
/// `progress` lines counting bytes with `bytes_total` 0 and `totals_final` false; and the
/// daemon holds no descriptor after.
fn pipes_stream_by_the_protocol(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let baseline = open_fds(daemon.pid()).unwrap();
    let dir = &daemon.outside;
    let input = dir.join("in.bin");
    let plain = bytes(3_000_017, 21);
    fs::write(&input, &plain).unwrap();
    let label = Path::new("/dev/stdout");

    let (mut sealed_out, sealed_in) = std::io::pipe().unwrap();
    let reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        sealed_out.read_to_end(&mut data).unwrap();
        data
    });
    let source = File::open(&input).unwrap();
    let replies = passing(
        &daemon,
        &fd_request("encrypt", &input, label),
        &[source.as_fd(), sealed_in.as_fd()],
    );
    drop(sealed_in);
    let sealed = reader.join().unwrap();
    let done = replies.last().unwrap();
    assert_eq!(done["type"], "done", "{replies:?}");
    assert_eq!(
        sealed.len() as u64,
        ringcrypt::crypto::format::sealed_len(plain.len() as u64, 16)
    );
    assert_eq!(done["bytes_out"], sealed.len() as u64, "{done}");

    let (feed_out, mut feed_in) = std::io::pipe().unwrap();
    let (mut plain_out, plain_in) = std::io::pipe().unwrap();
    let feeder = std::thread::spawn(move || feed_in.write_all(&sealed).unwrap());
    let reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        plain_out.read_to_end(&mut data).unwrap();
        data
    });
    let mut request = fd_request("decrypt", Path::new("/dev/stdin"), label);
    request["progress"] = json!(true);
    let replies = passing(&daemon, &request, &[feed_out.as_fd(), plain_in.as_fd()]);
    drop((feed_out, plain_in));
    feeder.join().unwrap();
    assert_eq!(reader.join().unwrap(), plain, "{replies:?}");
    assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
    let progress: Vec<&Value> = replies.iter().filter(|r| r["type"] == "progress").collect();
    assert!(!progress.is_empty(), "{replies:?}");
    for line in progress {
        assert_eq!(
            (&line["bytes_total"], &line["totals_final"]),
            (&json!(0), &json!(false))
        );
    }
    assert_fds_return_to(daemon.pid(), baseline, "after streams");
}
