//! Drives the real binaries over a real socket: starts `ringcryptd` in a temp directory (its
//! own key ring, socket and allowed root), then runs the `ringcrypt` client in daemon mode
//! against it. Every daemon test runs twice, once per IO backend (`RINGCRYPT_BACKEND=uring`
//! and `=sync`).
//!
//! Exit codes are README "Using it": 0 success, 1 the job failed (stderr `error: ... [code]`), 2 usage
//! error, 3 the daemon could not be reached.

#[macro_use]
mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use support::*;

/// The name of the key the test ring holds.
const KEY_NAME: &str = "test-key";

/// A running `ringcryptd` whose allowed root is its own temp directory, with a key ring of
/// one key and no default; SIGTERMed and reaped on drop.
fn start(backend: &'static str) -> Daemon {
    Daemon::builder(backend)
        .root_is_dir()
        .ring(keygen(KEY_NAME))
        .at_drop(AtDrop::Reap)
        .start()
}

/// `len` bytes that are not all alike (a simple LCG), so a misplaced chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

both_backends!(
    ping,
    pong_backend_is_a_documented_name,
    round_trip_with_relative_paths,
    offline_mode_reads_daemon_files,
    json_prints_every_reply_line,
    an_existing_output_is_kept,
    a_tampered_file_leaves_nothing,
    single_files_pass_descriptors_and_trees_stay_in_the_roots,
    status_jobs_stats_keys,
    sigterm_stops_an_idle_daemon_promptly,
);

/// How long an idle daemon may take to exit after SIGTERM: it has no job to drain.
const IDLE_STOP_TIMEOUT: Duration = Duration::from_secs(3);

fn sigterm_stops_an_idle_daemon_promptly(backend: &'static str) {
    let daemon = start(backend);
    let (exit, took) = daemon.terminate(STOP_TIMEOUT);
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "an idle daemon did not stop within {STOP_TIMEOUT:?}: {}",
            daemon.log_text()
        )
    });
    assert!(exit.success(), "{exit}: {}", daemon.log_text());
    assert!(
        took < IDLE_STOP_TIMEOUT,
        "an idle daemon took {took:?} to stop: {}",
        daemon.log_text()
    );
}

fn ping(backend: &'static str) {
    let daemon = start(backend);
    let run = daemon.cli(&["ping"]).ok();
    assert!(run.stdout.contains("backend"), "{run:#?}");
    assert!(run.stdout.contains(backend), "names the backend: {run:#?}");
    assert!(run.stdout.contains("2 shards"), "{run:#?}");
}

/// The protocol (docs/protocol.md, `pong`) documents `backend` as `"uring"` or
/// `"sync"`; a script comparing it must get one of those.
fn pong_backend_is_a_documented_name(backend: &'static str) {
    let daemon = start(backend);
    let run = daemon.cli(&["--json", "ping"]).ok();
    let pong: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["backend"], backend, "{run:#?}");
}

fn round_trip_with_relative_paths(backend: &'static str) {
    let daemon = start(backend);
    let sub = daemon.root.join("sub");
    fs::create_dir(&sub).unwrap();
    let plain = pattern(1 << 20);
    fs::write(sub.join("data.bin"), &plain).unwrap();

    // Relative to the client's working directory, `.` components and all.
    let run = ringcrypt_in(&sub, &daemon.socket, &["encrypt", "./data.bin"]).ok();
    assert!(
        run.stdout
            .starts_with("encrypted ./data.bin -> ./data.bin.rcrypt (1048576 bytes -> "),
        "{run:#?}"
    );
    assert!(run.stdout.contains(", job "), "{run:#?}");
    let sealed = fs::read(sub.join("data.bin.rcrypt")).unwrap();
    assert!(sealed.starts_with(b"\x89RCRYPT\n"));
    assert!(sealed.len() > plain.len());

    ringcrypt_in(
        &sub,
        &daemon.socket,
        &["decrypt", "data.bin.rcrypt", "-o", "copy.bin"],
    )
    .ok();
    assert_eq!(fs::read(sub.join("copy.bin")).unwrap(), plain);

    // The default decrypt name strips .rcrypt; with nothing to strip it refuses to guess.
    fs::remove_file(sub.join("data.bin")).unwrap();
    ringcrypt_in(&sub, &daemon.socket, &["decrypt", "data.bin.rcrypt"]).ok();
    assert_eq!(fs::read(sub.join("data.bin")).unwrap(), plain);
    let run = ringcrypt_in(&sub, &daemon.socket, &["decrypt", "copy.bin"]);
    assert_eq!(run.code, 2, "{run:#?}");

    // --force replaces; rewrap --in-place keeps the content.
    ringcrypt_in(&sub, &daemon.socket, &["encrypt", "data.bin", "--force"]).ok();
    ringcrypt_in(
        &sub,
        &daemon.socket,
        &["rewrap", "data.bin.rcrypt", "--in-place"],
    )
    .ok();
    ringcrypt_in(
        &sub,
        &daemon.socket,
        &["decrypt", "data.bin.rcrypt", "-o", "copy.bin", "--force"],
    )
    .ok();
    assert_eq!(fs::read(sub.join("copy.bin")).unwrap(), plain);

    // The daemon seals ringcrypt only: the openssl format is an offline job.
    let run = ringcrypt_in(
        &sub,
        &daemon.socket,
        &["encrypt", "data.bin", "--format", "openssl"],
    );
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("--keys"), "{run:#?}");
}

fn offline_mode_reads_daemon_files(backend: &'static str) {
    let daemon = start(backend);
    let plain = pattern(300_000);
    let input = daemon.root.join("a.txt");
    fs::write(&input, &plain).unwrap();
    daemon.cli(&["encrypt", p(&input)]).ok();
    let out = daemon.root.join("offline.txt");
    let run = Command::new(CLI)
        .arg("--keys")
        .arg(&daemon.keys)
        .args([
            "decrypt",
            p(&daemon.root.join("a.txt.rcrypt")),
            "-o",
            p(&out),
        ])
        .env_remove("RINGCRYPT_SOCKET")
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert_eq!(fs::read(&out).unwrap(), plain);
}

fn json_prints_every_reply_line(backend: &'static str) {
    let daemon = start(backend);
    let input = daemon.root.join("j.bin");
    fs::write(&input, pattern(70_000)).unwrap();
    let run = daemon.cli(&["--json", "encrypt", p(&input)]).ok();
    let types: Vec<String> = run
        .stdout
        .lines()
        .map(|line| {
            let reply: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            reply["type"]
                .as_str()
                .expect("every reply has a type")
                .to_string()
        })
        .collect();
    assert_eq!(
        types.first().map(String::as_str),
        Some("accepted"),
        "{run:#?}"
    );
    assert_eq!(types.last().map(String::as_str), Some("done"), "{run:#?}");
    assert!(run.stdout.contains("\"bytes_in\":70000"), "{run:#?}");
}

fn an_existing_output_is_kept(backend: &'static str) {
    let daemon = start(backend);
    let input = daemon.root.join("in.txt");
    let output = daemon.root.join("in.txt.rcrypt");
    fs::write(&input, b"secret").unwrap();
    fs::write(&output, b"keep me").unwrap();
    let run = daemon.cli(&["encrypt", p(&input)]).failed_code("exists");
    assert!(run.stderr.contains("hint: "), "{run:#?}");
    assert_eq!(fs::read(&output).unwrap(), b"keep me");
}

fn a_tampered_file_leaves_nothing(backend: &'static str) {
    let daemon = start(backend);
    let input = daemon.root.join("t.bin");
    fs::write(&input, pattern(200_000)).unwrap();
    daemon.cli(&["encrypt", p(&input)]).ok();
    let sealed = daemon.root.join("t.bin.rcrypt");
    let file = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&sealed)
        .unwrap();
    let at = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
    drop(file);
    let out = daemon.root.join("t.out");
    daemon
        .cli(&["decrypt", p(&sealed), "-o", p(&out)])
        .failed_code("auth_failed");
    assert!(!out.exists(), "no plaintext may be left behind");
}

/// A single file goes by descriptor: this process opens it, so the kernel checks its own
/// permissions, and no allowed root applies. Trees go by path and stay inside the roots.
fn single_files_pass_descriptors_and_trees_stay_in_the_roots(backend: &'static str) {
    use std::os::unix::fs::PermissionsExt;
    let daemon = start(backend);
    let elsewhere = tempfile::tempdir().unwrap();
    let input = elsewhere.path().join("x.txt");
    fs::write(&input, pattern(70_000)).unwrap();
    fs::set_permissions(&input, fs::Permissions::from_mode(0o640)).unwrap();
    let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    fs::File::options()
        .write(true)
        .open(&input)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    daemon.cli(&["encrypt", p(&input)]).ok();
    let sealed = elsewhere.path().join("x.txt.rcrypt");
    let meta = fs::metadata(&sealed).expect("the client linked the output into place");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640, "the input's mode");
    assert_eq!(
        meta.modified().unwrap(),
        mtime,
        "the input's modification time"
    );
    let back = elsewhere.path().join("x.back");
    daemon.cli(&["decrypt", p(&sealed), "-o", p(&back)]).ok();
    assert_eq!(fs::read(&back).unwrap(), pattern(70_000));
    // An existing output is kept without --force, by descriptor as by path.
    daemon.cli(&["encrypt", p(&input)]).failed_code("exists");
    assert!(
        fs::read_dir(elsewhere.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".ringcrypt")),
        "no temp files"
    );
    let log = daemon.log_text();
    assert!(
        log.contains(" fds input="),
        "audited as descriptor jobs: {log}"
    );

    // A tree is walked by the daemon, by path, so it must lie under a root.
    let run = daemon.cli(&["encrypt", "-r", p(elsewhere.path()), "-o", "t"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("forbidden_path"), "{run:#?}");
    // A file the caller cannot name is refused before anything is sent.
    daemon
        .cli(&["encrypt", p(&elsewhere.path().join("missing"))])
        .failed_code("not_found");
    // `..` is sent as is, and the daemon refuses it rather than guessing.
    let run = daemon.cli(&["encrypt", "../x.txt"]);
    assert_eq!(run.code, 1, "{run:#?}");
}

fn status_jobs_stats_keys(backend: &'static str) {
    let daemon = start(backend);
    let input = daemon.root.join("st.bin");
    fs::write(&input, pattern(50_000)).unwrap();
    let run = daemon.cli(&["--json", "encrypt", p(&input)]).ok();
    let accepted: serde_json::Value =
        serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
    let job = accepted["job"].as_str().unwrap().to_string();

    let status = daemon.cli(&["status", &job]).ok();
    assert!(status.stdout.contains("done"), "{status:#?}");
    assert!(status.stdout.contains(&job), "{status:#?}");
    let jobs = daemon.cli(&["jobs"]).ok();
    assert!(jobs.stdout.contains(&job), "{jobs:#?}");
    let stats = daemon.cli(&["stats"]).ok();
    assert_eq!(
        stats.stdout.lines().count(),
        3,
        "a header and two shards: {stats:#?}"
    );

    let keys = daemon.cli(&["keys"]).ok();
    assert!(keys.stdout.contains(KEY_NAME), "{keys:#?}");
    let ring = fs::read_to_string(&daemon.keys).unwrap();
    let secret = ring
        .lines()
        .find_map(|l| l.strip_prefix("secret = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the ring has a secret");
    for run in [&keys, &daemon.cli(&["--json", "keys"]).ok()] {
        assert!(!run.stdout.contains(secret), "never key bytes: {run:#?}");
    }

    daemon.cli(&["cancel", "9-9"]).failed_code("not_found");
    let run = daemon.cli(&["status", "nope"]);
    assert_eq!(run.code, 2, "{run:#?}");
}

#[test]
fn an_absent_daemon_is_exit_3_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    for args in [&["ping"][..], &["encrypt", "whatever.txt"], &["jobs"]] {
        let run = ringcrypt_in(dir.path(), &socket, args);
        assert_eq!(run.code, 3, "{run:#?}");
        assert!(run.stderr.contains(p(&socket)), "{run:#?}");
        assert!(run.stderr.contains("hint: "), "{run:#?}");
        assert!(run.stdout.is_empty(), "{run:#?}");
    }
}
