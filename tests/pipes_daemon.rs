//! Streams through the real daemon, on both backends: `ringcrypt encrypt - -o x` and
//! `decrypt x -o -` without `--keys`, the client passing its standard input and output as
//! descriptors and the shard streaming them through its reactor. A stream larger than the
//! pool buffers and an empty one, a `tar` round trip, a consumer that stops early (`head -c`),
//! a damaged sealed file decrypted to a pipe (only verified chunks reach the consumer), a
//! stalled pipe cancelled while the shard serves other jobs, SIGTERM mid-stream, and a client
//! that goes away mid-stream.
//! The offline pipe tests are in tests/cli/pipes.rs.

#[macro_use]
mod support;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringcrypt::crypto::format::sealed_len;
use support::*;

/// The daemon's chunk (its default) and a record: chunk and tag.
const CHUNK: usize = 1 << 16;
const RECORD: usize = CHUNK + 32;
const HEADER: usize = 96;

/// `ringcrypt --socket S ARGS` in the daemon's root, `stdin` fed to it from a thread (so a
/// full stdout pipe cannot deadlock the test); its raw output.
fn piped(daemon: &Daemon, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = ringcrypt_command();
    cmd.arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .current_dir(&daemon.root);
    output_fed(&mut cmd, stdin)
}

/// `bash -c SCRIPT` in the daemon's root with `RC` naming the client and
/// `RINGCRYPT_SOCKET` the daemon (no key ring: everything goes through the daemon).
fn shell(daemon: &Daemon, script: &str) -> Output {
    Command::new("bash")
        .args(["-c", script])
        .current_dir(&daemon.root)
        .env("RC", CLI)
        .env("RINGCRYPT_SOCKET", &daemon.socket)
        .env_remove("RINGCRYPT_KEYS")
        .output()
        .expect("bash runs")
}

/// The daemon still answers and still seals a file (checked offline).
fn still_serves(daemon: &Daemon, name: &str) {
    let file = daemon.root.join(name);
    fs::write(&file, bytes(70_000, 5)).unwrap();
    daemon
        .cli(&["encrypt", name, "-o", &format!("{name}.rcrypt")])
        .ok();
    let back = daemon.scratch().join(format!("{name}.back"));
    let ring = daemon.keys.to_str().unwrap().to_string();
    ringcrypt(&[
        "--keys",
        &ring,
        "decrypt",
        p(&file.with_file_name(format!("{name}.rcrypt"))),
        "-o",
        p(&back),
    ])
    .ok();
    assert_eq!(
        fs::read(&back).unwrap(),
        fs::read(&file).unwrap(),
        "{}",
        daemon.note()
    );
    fs::remove_file(&back).unwrap();
    fs::remove_file(&file).unwrap();
    fs::remove_file(file.with_file_name(format!("{name}.rcrypt"))).unwrap();
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Intact: every byte of a stream larger than the pool buffers (5 MiB + 7, not a multiple of
/// the chunk), of one exactly a multiple of it, and of an empty one, through `encrypt -` to a
/// named file and back through `decrypt FILE -o -`, and through `-` to `-` both ways; the
/// sealed file is the format's size and opens offline; a named output has mode 0600; nothing
/// else appears in the root.
fn streams_round_trip(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let ring = daemon.keys.to_str().unwrap().to_string();
    for (i, len) in [(5 << 20) + 7, 3 * CHUNK, 0].into_iter().enumerate() {
        let data = bytes(len, 700 + i as u64);
        let enc = piped(&daemon, &["encrypt", "-", "-o", "x.rcrypt"], &data);
        assert!(
            enc.status.success(),
            "encrypt - ({len}): {enc:?}\n{}",
            daemon.note()
        );
        let sealed = fs::read(daemon.root.join("x.rcrypt")).unwrap();
        assert_eq!(sealed.len() as u64, sealed_len(len as u64, 16), "{len}");
        assert_eq!(mode_of(&daemon.root.join("x.rcrypt")), 0o600);
        let offline = daemon.scratch().join("offline");
        ringcrypt(&[
            "--keys",
            &ring,
            "decrypt",
            p(&daemon.root.join("x.rcrypt")),
            "-o",
            p(&offline),
            "-f",
        ])
        .ok();
        assert_eq!(fs::read(&offline).unwrap(), data, "{len}: opens offline");

        let dec = piped(&daemon, &["decrypt", "x.rcrypt", "-o", "-"], b"");
        assert!(dec.status.success(), "decrypt -o - ({len}): {dec:?}");
        assert_eq!(dec.stdout, data, "{len}: decrypt to a pipe");
        assert!(dec.stderr.is_empty(), "{dec:?}");

        let enc = piped(&daemon, &["encrypt", "-"], &data);
        assert!(enc.status.success(), "encrypt - to stdout ({len}): {enc:?}");
        assert_eq!(enc.stdout.len() as u64, sealed_len(len as u64, 16));
        let dec = piped(&daemon, &["decrypt", "-", "-o", "-"], &enc.stdout);
        assert!(dec.status.success(), "decrypt - -o - ({len}): {dec:?}");
        assert_eq!(dec.stdout, data, "{len}: - to - both ways");

        // Rewrap between pipes gives a file that opens to the same bytes.
        let re = piped(&daemon, &["rewrap", "-", "-o", "-"], &enc.stdout);
        assert!(re.status.success(), "rewrap - -o - ({len}): {re:?}");
        assert_ne!(re.stdout, enc.stdout, "a new salt");
        let dec = piped(&daemon, &["decrypt", "-", "-o", "-"], &re.stdout);
        assert_eq!(dec.stdout, data, "{len}: rewrapped");
        fs::remove_file(daemon.root.join("x.rcrypt")).unwrap();
        assert_eq!(snapshot(&daemon.root), vec![], "nothing left in the root");
    }
}

/// Intact: a directory tree through `tar c | ringcrypt encrypt - -o x.rcrypt` and back
/// through `ringcrypt decrypt x.rcrypt -o - | tar x` is the same tree, byte for byte; both
/// runs exit 0 and print nothing on stderr but the encrypt's summary line.
fn a_tar_round_trip(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let tree = daemon.root.join("photos");
    make_tree(&tree, 12, 3, |i| 150_000 * i + 13);
    let out = shell(
        &daemon,
        "set -o pipefail; tar c photos | \"$RC\" encrypt - -o photos.tar.rcrypt && \
         mkdir back && \"$RC\" decrypt photos.tar.rcrypt -o - | tar x -C back",
    );
    assert!(out.status.success(), "{out:?}\n{}", daemon.note());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("encrypted standard input -> photos.tar.rcrypt"),
        "{stdout}"
    );
    let relative = |root: &Path| -> Vec<_> {
        snapshot(root)
            .into_iter()
            .map(|(path, data)| (path.strip_prefix(root).unwrap().to_path_buf(), data))
            .collect()
    };
    assert_eq!(relative(&daemon.root.join("back/photos")), relative(&tree));
    assert!(!relative(&tree).is_empty());
}

/// Intact: a consumer that stops reading early (`head -c 1000`) ends the client with exit 0
/// and an empty stderr, having received exactly the first 1000 bytes (of the plaintext, or
/// of a sealed file); no file is left behind; the daemon goes on serving.
fn a_consumer_that_stops_early(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let data = bytes(8 << 20, 77);
    fs::write(daemon.root.join("big"), &data).unwrap();
    daemon.cli(&["encrypt", "big"]).ok();
    for (what, script) in [
        (
            "decrypt",
            "\"$RC\" decrypt big.rcrypt -o - 2>err | head -c 1000 > head.out; echo ${PIPESTATUS[0]} > status",
        ),
        (
            "encrypt",
            "\"$RC\" encrypt - < big 2>err | head -c 1000 > head.out; echo ${PIPESTATUS[0]} > status",
        ),
    ] {
        let before = snapshot(&daemon.root);
        let out = shell(&daemon, script);
        assert!(out.status.success(), "{what}: {out:?}");
        let read = |name: &str| fs::read(daemon.root.join(name)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&read("status")).trim(),
            "0",
            "{what}: exit"
        );
        assert_eq!(String::from_utf8_lossy(&read("err")), "", "{what}: stderr");
        let head = read("head.out");
        assert_eq!(head.len(), 1000, "{what}");
        if what == "decrypt" {
            assert_eq!(head, &data[..1000]);
        } else {
            assert_eq!(&head[..8], b"\x89RCRYPT\n");
        }
        for name in ["status", "err", "head.out"] {
            fs::remove_file(daemon.root.join(name)).unwrap();
        }
        assert_eq!(
            snapshot(&daemon.root),
            before,
            "{what}: nothing left behind"
        );
        still_serves(&daemon, "after-head");
    }
}

/// Intact: a sealed file whose record 20 was changed, decrypted to a pipe, exits 1 with
/// `[auth_failed]` and a hint that the consumer may have got verified chunks; what the
/// consumer got is a prefix of the plaintext ending at a chunk boundary, before the bad
/// record. The same to a regular file on stdout says how many bytes went out. A truncated
/// file likewise; from a pipe to a named output, nothing appears under its name.
fn a_damaged_file_to_a_pipe(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let data = bytes(30 * CHUNK + 999, 9);
    fs::write(daemon.root.join("plain"), &data).unwrap();
    daemon.cli(&["encrypt", "plain", "-o", "good.rcrypt"]).ok();
    let good = fs::read(daemon.root.join("good.rcrypt")).unwrap();
    let mut tampered = good.clone();
    tampered[HEADER + 20 * RECORD + 100] ^= 0x01;
    let mut truncated = good.clone();
    truncated.truncate(HEADER + 25 * RECORD);
    // The bad record: the changed one, or the one cut away (the final record is missing).
    for (what, sealed, bad) in [("tampered", &tampered, 20), ("truncated", &truncated, 25)] {
        fs::write(daemon.root.join("bad.rcrypt"), sealed).unwrap();
        let out = shell(
            &daemon,
            "\"$RC\" decrypt bad.rcrypt -o - 2>err | cat > got; echo ${PIPESTATUS[0]} > status",
        );
        assert!(out.status.success(), "{out:?}");
        let read = |name: &str| fs::read(daemon.root.join(name)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&read("status")).trim(),
            "1",
            "{what}"
        );
        let err = String::from_utf8_lossy(&read("err")).to_string();
        assert!(err.contains("[auth_failed]"), "{what}: {err}");
        assert!(
            err.contains("only chunks whose tags verified"),
            "{what}: {err}"
        );
        let got = read("got");
        assert_eq!(got.len() % CHUNK, 0, "{what}: ends at a chunk boundary");
        assert!(
            got.len() <= bad * CHUNK,
            "{what}: nothing from the bad record on"
        );
        assert_eq!(got, &data[..got.len()], "{what}: a prefix of the plaintext");

        // To a regular file on stdout (relayed by the client): how much is known.
        let run = shell(&daemon, "\"$RC\" decrypt bad.rcrypt -o - > got");
        let run = Run::of(run).failed("auth_failed");
        let got = read("got");
        assert_eq!(got, &data[..got.len()], "{what}");
        assert_eq!(got.len() % CHUNK, 0, "{what}");
        assert!(
            run.stderr
                .contains(&format!("received {} bytes", got.len())),
            "{run:#?}"
        );

        let before = snapshot(&daemon.root);
        let named = piped(&daemon, &["decrypt", "-", "-o", "named.out"], sealed);
        Run::of(named).failed("auth_failed");
        assert_eq!(snapshot(&daemon.root), before, "{what}: no partial file");
        for name in ["status", "err", "got", "bad.rcrypt"] {
            fs::remove_file(daemon.root.join(name)).unwrap();
        }
    }
}

/// `ringcrypt ARGS` in the daemon's root, with these stdin and stdout, stderr piped.
fn spawn_client(daemon: &Daemon, args: &[&str], stdin: Stdio, stdout: Stdio) -> Child {
    ringcrypt_command()
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .current_dir(&daemon.root)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringcrypt starts")
}

/// Waits until the daemon lists a running job reading `input`; its id.
fn running_job(daemon: &Daemon, input: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = daemon.cli(&["--json", "jobs", "--state", "running"]).ok();
        let jobs: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        if let Some(job) = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|job| job["input"] == input)
        {
            return job["job"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no running job on {input}: {}",
            daemon.note()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON lines a `--json` client printed, by type.
fn reply_types(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["type"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Intact: on a one-shard daemon, a job reading a pipe the test holds open without writing
/// (and one writing to a pipe the test never reads) stalls without stalling the shard:
/// another job on it completes meanwhile. `cancel` ends each with one final reply
/// (`accepted`, then one `error` of code `cancelled`), the client exits 1, no output file
/// appears, and the daemon goes on serving.
fn a_stalled_pipe_is_cancelled(backend: &'static str) {
    let daemon = Daemon::builder(backend).shards(1).start();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let before = snapshot(&daemon.root);
    let mut child = spawn_client(
        &daemon,
        &["--json", "encrypt", "-", "-o", "never.rcrypt"],
        Stdio::from(reader),
        Stdio::piped(),
    );
    let job = running_job(&daemon, "/dev/stdin");
    still_serves(&daemon, "meanwhile");
    daemon.cli(&["cancel", &job]).ok();
    let status = wait_within(&mut child, Duration::from_secs(20)).expect("the client ends");
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1), "{out:?}");
    assert_eq!(reply_types(&out.stdout), ["accepted", "error"], "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"cancelled\""),
        "{out:?}"
    );
    assert_eq!(snapshot(&daemon.root), before, "nothing appeared");
    writer.write_all(b"too late").ok();
    drop(writer);

    // A consumer that never reads: the daemon's writes wait; the shard does not.
    fs::write(daemon.root.join("big"), bytes(4 << 20, 4)).unwrap();
    daemon.cli(&["encrypt", "big"]).ok();
    let (mut held, unread) = std::io::pipe().unwrap();
    let mut child = spawn_client(
        &daemon,
        &["decrypt", "big.rcrypt", "-o", "-"],
        Stdio::null(),
        Stdio::from(unread),
    );
    let job = running_job(&daemon, p(&daemon.root.join("big.rcrypt")));
    still_serves(&daemon, "meanwhile2");
    daemon.cli(&["cancel", &job]).ok();
    let status = wait_within(&mut child, Duration::from_secs(20)).expect("the client ends");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("[cancelled]"), "{err}");
    let mut first = vec![0u8; 8];
    held.read_exact(&mut first).unwrap();
    still_serves(&daemon, "after");
}

/// Intact: SIGTERM while a job streams from a stalled pipe ends the job at once with one
/// final reply (`error`, `cancelled`), the client exits 1, nothing is linked, and the daemon
/// exits 0 well before its 30 s drain would have run out.
fn sigterm_mid_stream(backend: &'static str) {
    let mut daemon = Daemon::start(backend);
    let (reader, mut writer) = std::io::pipe().unwrap();
    // Less than a pipe holds, so this returns; the daemon reads it and then waits.
    writer.write_all(&bytes(50_000, 8)).unwrap();
    let before = snapshot(&daemon.root);
    let mut child = spawn_client(
        &daemon,
        &["--json", "encrypt", "-", "-o", "never.rcrypt"],
        Stdio::from(reader),
        Stdio::piped(),
    );
    running_job(&daemon, "/dev/stdin");
    let (status, took) = daemon.stop(Duration::from_secs(20));
    assert!(status.success(), "{}", daemon.note());
    assert!(
        took < Duration::from_secs(15),
        "stopped in {took:?}, not at the drain deadline"
    );
    let status = wait_within(&mut child, Duration::from_secs(20)).expect("the client ends");
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1), "{out:?}");
    assert_eq!(reply_types(&out.stdout), ["accepted", "error"], "{out:?}");
    assert_eq!(snapshot(&daemon.root), before, "nothing linked");
    drop(writer);
}

/// Intact: a client killed while its job reads a stalled pipe leaves no job behind: the
/// daemon sees the connection end and cancels the job (`jobs` says `cancelled`); nothing
/// appears; the daemon goes on serving.
fn a_client_that_goes_away_cancels_its_stream(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let (reader, writer) = std::io::pipe().unwrap();
    let before = snapshot(&daemon.root);
    let mut child = spawn_client(
        &daemon,
        &["encrypt", "-", "-o", "never.rcrypt"],
        Stdio::from(reader),
        Stdio::piped(),
    );
    let job = running_job(&daemon, "/dev/stdin");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = daemon.cli(&["--json", "status", &job]);
        let status: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        if status["state"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "{status}: {}", daemon.note());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(snapshot(&daemon.root), before, "nothing appeared");
    drop(writer);
    still_serves(&daemon, "after");
}

/// Intact: an openssl-format file (made by the real `openssl enc`) streamed through the
/// daemon, from a pipe or to a pipe, is refused with `bad_format` and a pointer to the offline
/// client; no named output appears, nothing reaches the consumer, and the file is unchanged.
fn openssl_files_are_not_streamed(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let data = bytes(3 * CHUNK + 17, 11);
    fs::write(daemon.root.join("plain"), &data).unwrap();
    let made = Command::new("openssl")
        .args([
            "enc",
            "-aes-256-cbc",
            "-pbkdf2",
            "-salt",
            "-pass",
            "pass:hunter2",
        ])
        .args(["-in", "plain", "-out", "legacy.enc"])
        .current_dir(&daemon.root)
        .output()
        .expect("the openssl CLI runs (installed by .ci/run)");
    assert!(made.status.success(), "{made:?}");
    let legacy = fs::read(daemon.root.join("legacy.enc")).unwrap();

    let before = snapshot(&daemon.root);
    let run = Run::of(piped(
        &daemon,
        &["decrypt", "-", "-o", "named.out"],
        &legacy,
    ));
    let run = run.failed("bad_format");
    assert!(run.stderr.contains("openssl-format"), "{run:#?}");
    assert!(run.stderr.contains("--keys"), "{run:#?}");
    assert_eq!(
        snapshot(&daemon.root),
        before,
        "no named output from a pipe"
    );

    let out = shell(
        &daemon,
        "\"$RC\" decrypt legacy.enc -o - 2>err | cat > got; echo ${PIPESTATUS[0]} > status",
    );
    assert!(out.status.success(), "{out:?}");
    let read = |name: &str| fs::read(daemon.root.join(name)).unwrap();
    assert_eq!(String::from_utf8_lossy(&read("status")).trim(), "1");
    let err = String::from_utf8_lossy(&read("err")).to_string();
    assert!(
        err.contains("[bad_format]") && err.contains("openssl-format"),
        "{err}"
    );
    assert!(read("got").is_empty(), "nothing reached the consumer");
    assert_eq!(fs::read(daemon.root.join("legacy.enc")).unwrap(), legacy);
    still_serves(&daemon, "after");
}

/// Intact: a regular file on standard input is read from where it stands, through the daemon
/// as offline: after `dd` took the first 1000 bytes, both seal the rest, and from the start
/// (`< FILE` untouched) the daemon seals all of it.
fn a_regular_stdin_is_read_from_its_position(backend: &'static str) {
    let daemon = Daemon::start(backend);
    let ring = daemon.keys.to_str().unwrap().to_string();
    let data = bytes(3 * CHUNK + 4321, 13);
    fs::write(daemon.root.join("plain"), &data).unwrap();
    let skip = "dd bs=1000 count=1 of=/dev/null status=none";
    let script = format!(
        "{{ {skip}; \"$RC\" encrypt - -o daemon.rcrypt; }} < plain && \
         {{ {skip}; \"$RC\" --keys '{ring}' encrypt - -o offline.rcrypt; }} < plain && \
         \"$RC\" encrypt - -o whole.rcrypt < plain"
    );
    let out = shell(&daemon, &script);
    assert!(out.status.success(), "{out:?}\n{}", daemon.note());
    for (name, want) in [
        ("daemon.rcrypt", &data[1000..]),
        ("offline.rcrypt", &data[1000..]),
        ("whole.rcrypt", &data[..]),
    ] {
        let dec = piped(&daemon, &["decrypt", name, "-o", "-"], b"");
        assert!(dec.status.success(), "{name}: {dec:?}");
        assert_eq!(dec.stdout.len(), want.len(), "{name}");
        assert!(
            dec.stdout == want,
            "{name}: the bytes from stdin's position"
        );
    }
    assert_eq!(fs::read(daemon.root.join("plain")).unwrap(), data);
}

both_backends!(
    streams_round_trip,
    a_tar_round_trip,
    a_consumer_that_stops_early,
    a_damaged_file_to_a_pipe,
    a_stalled_pipe_is_cancelled,
    sigterm_mid_stream,
    a_client_that_goes_away_cancels_its_stream,
    openssl_files_are_not_streamed,
    a_regular_stdin_is_read_from_its_position,
);
