//! Crash safety of the write protocol (README "Security"): the daemon is killed with SIGKILL at each
//! step of a job (failpoints, `test-hooks` feature) and at 200 random moments during jobs.
//!
//! After every kill: no file under a final output name that does not verify and decrypt to
//! its input; every input unchanged (compared byte for byte); after a restart, no temp file
//! anywhere under the root, and the same job succeeds.

#![cfg(feature = "test-hooks")]

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringcrypt::keys::KeyRing;
use support::{bytes, keygen, temp_files};

const DAEMON: &str = env!("CARGO_BIN_EXE_ringcryptd");

struct Setup {
    dir: tempfile::TempDir,
    root: PathBuf,
    keys: PathBuf,
    socket: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let keys = dir.path().join("keys.toml");
    fs::write(&keys, keygen("k")).unwrap();
    fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let socket = dir.path().join("s.sock");
    Setup {
        dir,
        root,
        keys,
        socket,
    }
}

fn start(setup: &Setup, backend: &str, failpoint: Option<&str>) -> Child {
    start_with(setup, backend, failpoint, false)
}

/// `named_temps`: the daemon answers as on a file system without `O_TMPFILE`
/// (`RINGCRYPT_TEST_NO_TMPFILE`), so every job writes a named temp file and renames it.
fn start_with(setup: &Setup, backend: &str, failpoint: Option<&str>, named_temps: bool) -> Child {
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--socket")
        .arg(&setup.socket)
        .arg("--keys")
        .arg(&setup.keys)
        .arg("--allow-root")
        .arg(&setup.root);
    cmd.args(["--shards", "2", "--fsync", "always", "--metrics", "off"])
        .env("RINGCRYPT_BACKEND", backend);
    match failpoint {
        Some(point) => cmd.env("RINGCRYPT_FAILPOINT", point),
        None => cmd.env_remove("RINGCRYPT_FAILPOINT"),
    };
    if named_temps {
        cmd.env("RINGCRYPT_TEST_NO_TMPFILE", "1");
    } else {
        cmd.env_remove("RINGCRYPT_TEST_NO_TMPFILE");
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = UnixStream::connect(&setup.socket) {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let _ = stream.write_all(b"{\"op\":\"ping\"}\n");
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line);
            if line.contains("pong") {
                return child;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited while starting"
        );
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn submit(setup: &Setup, input: &Path, output: &Path) {
    let mut stream = UnixStream::connect(&setup.socket).unwrap();
    let line = format!(
        "{{\"op\":\"encrypt\",\"wait\":false,\"input\":\"{}\",\"output\":\"{}\"}}\n",
        input.display(),
        output.display()
    );
    stream.write_all(line.as_bytes()).unwrap();
    // Wait for `accepted` so the job exists before any kill.
    let mut reply = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut reply);
}

/// An output is either absent or verifies and decrypts to `plain`.
fn check_output(ring: &KeyRing, output: &Path, plain: &[u8]) -> bool {
    let Ok(data) = fs::read(output) else {
        return false;
    };
    let mut out = Vec::new();
    ringcrypt::stream::open(&mut &data[..], data.len() as u64, ring, &mut out)
        .unwrap_or_else(|e| panic!("{} exists but does not verify: {e}", output.display()));
    assert!(
        out == plain,
        "{} decrypts to something else",
        output.display()
    );
    true
}

fn ring(setup: &Setup) -> KeyRing {
    KeyRing::parse(&fs::read_to_string(&setup.keys).unwrap(), "keys").unwrap()
}

fn wait_killed(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                !status.success(),
                "the daemon should have been killed: {status:?}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "the failpoint never fired");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn at_each_failpoint(backend: &'static str) {
    failpoints(backend, false);
}

/// The same, where the file system has no `O_TMPFILE`: a kill between creating the named
/// temp file and renaming it leaves the temp file (and only it) behind, and the restart's
/// sweep removes it.
fn at_each_failpoint_with_named_temps(backend: &'static str) {
    failpoints(backend, true);
}

fn failpoints(backend: &'static str, named_temps: bool) {
    let setup = setup();
    let ring = ring(&setup);
    let input = setup.root.join("in.bin");
    let plain = bytes(3 << 20, 9);
    fs::write(&input, &plain).unwrap();
    for (point, output_exists) in [
        ("opened", false),
        ("temp_created", false),
        ("written", false),
        ("fsynced", false),
        ("linked", true),
        ("done", true),
    ] {
        let output = setup.root.join(format!("out-{point}.rcrypt"));
        let mut daemon = start_with(&setup, backend, Some(point), named_temps);
        submit(&setup, &input, &output);
        wait_killed(&mut daemon);
        if named_temps {
            let left = temp_files(setup.dir.path());
            // Killed while the named temp file exists: it is there, under the temp prefix.
            let expect_temp = matches!(point, "temp_created" | "written" | "fsynced");
            assert_eq!(
                !left.is_empty(),
                expect_temp,
                "{point}: temp files {left:?}"
            );
        }
        assert_eq!(
            fs::read(&input).unwrap(),
            plain,
            "{point}: the input changed"
        );
        assert_eq!(
            check_output(&ring, &output, &plain),
            output_exists,
            "{point}: output presence"
        );
        // A restart cleans up and the same job then succeeds.
        let mut daemon = start_with(&setup, backend, None, named_temps);
        assert!(
            temp_files(setup.dir.path()).is_empty(),
            "{point}: temp files after restart"
        );
        if !output_exists {
            submit(&setup, &input, &output);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !output.exists() {
                assert!(
                    Instant::now() < deadline,
                    "{point}: the rerun never finished"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(check_output(&ring, &output, &plain));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &daemon.id().to_string()])
            .status();
        let _ = daemon.wait();
    }
}

fn at_random_moments(backend: &'static str) {
    let setup = setup();
    let ring = ring(&setup);
    let inputs: Vec<(PathBuf, Vec<u8>)> = (0..6)
        .map(|i| {
            let path = setup.root.join(format!("in{i}.bin"));
            let data = bytes(200_000 + i * 70_001, i as u64);
            fs::write(&path, &data).unwrap();
            (path, data)
        })
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut finished = 0;
    for round in 0..200 {
        let mut daemon = start(&setup, backend, None);
        for (i, (input, _)) in inputs.iter().enumerate() {
            submit(
                &setup,
                input,
                &setup.root.join(format!("r{round}-{i}.rcrypt")),
            );
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 20_000));
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        for (i, (input, data)) in inputs.iter().enumerate() {
            assert_eq!(
                &fs::read(input).unwrap(),
                data,
                "round {round}: input {i} changed"
            );
            if check_output(
                &ring,
                &setup.root.join(format!("r{round}-{i}.rcrypt")),
                data,
            ) {
                finished += 1;
            }
        }
        assert!(
            temp_files(setup.dir.path()).is_empty(),
            "round {round}: temp files left"
        );
    }
    println!("{backend}: {finished} of 1200 outputs finished before their kill; none was partial");
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name("uring") })*
        }
        mod sync {
            $(#[test] fn $name() { super::$name("sync") })*
        }
    };
}

/// Without `O_TMPFILE`, a job that fails after making its named temp file removes it, and
/// `overwrite` replaces an existing output by rename.
fn named_temps_are_removed_on_failure(backend: &'static str) {
    let setup = setup();
    let ring = ring(&setup);
    let mut daemon = start_with(&setup, backend, None, true);
    let plain = bytes(600_000, 3);
    let input = setup.root.join("n.bin");
    fs::write(&input, &plain).unwrap();
    let sealed = setup.root.join("n.rcrypt");
    let job = |line: String| {
        let mut stream = UnixStream::connect(&setup.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(line.as_bytes()).unwrap();
        let mut reader = std::io::BufReader::new(stream);
        loop {
            let mut reply = String::new();
            std::io::BufRead::read_line(&mut reader, &mut reply).unwrap();
            if reply.contains("\"done\"") || reply.contains("\"error\"") {
                return reply;
            }
        }
    };
    let request = |op: &str, input: &Path, output: &Path, extra: &str| {
        format!(
            "{{\"op\":\"{op}\",\"input\":\"{}\",\"output\":\"{}\"{extra}}}\n",
            input.display(),
            output.display()
        )
    };
    let reply = job(request("encrypt", &input, &sealed, ""));
    assert!(reply.contains("\"done\""), "{reply}");
    assert!(check_output(&ring, &sealed, &plain));
    // Replacing an existing output goes through the named temp file and a rename.
    let reply = job(request("encrypt", &input, &sealed, ",\"overwrite\":true"));
    assert!(reply.contains("\"done\""), "{reply}");
    assert!(check_output(&ring, &sealed, &plain));
    // A tampered input fails after the temp file was made and written to.
    let mut data = fs::read(&sealed).unwrap();
    let middle = data.len() - 1000;
    data[middle] ^= 0x40;
    let tampered = setup.root.join("t.rcrypt");
    fs::write(&tampered, &data).unwrap();
    let out = setup.root.join("t.out");
    let reply = job(request("decrypt", &tampered, &out, ""));
    assert!(reply.contains("auth_failed"), "{reply}");
    assert!(!out.exists(), "nothing under the output name");
    assert!(
        temp_files(setup.dir.path()).is_empty(),
        "the failed job removed its named temp file"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
}

/// The client passes descriptors only when it can make an unnamed temp file; where the
/// output's file system cannot, it sends paths, and the daemon's roots apply.
fn a_client_without_tmpfile_sends_paths(backend: &'static str) {
    let setup = setup();
    let mut daemon = start_with(&setup, backend, None, true);
    let outside = setup.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let client = |input: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ringcrypt"))
            .arg("--socket")
            .arg(&setup.socket)
            .arg("encrypt")
            .arg(input)
            .env("RINGCRYPT_TEST_NO_TMPFILE", "1")
            .env_remove("RINGCRYPT_KEYS")
            .output()
            .unwrap()
    };
    let inside = setup.root.join("a.txt");
    fs::write(&inside, b"inside the root").unwrap();
    let run = client(&inside);
    assert!(run.status.success(), "{run:?}");
    assert!(check_output(
        &ring(&setup),
        &setup.root.join("a.txt.rcrypt"),
        b"inside the root"
    ));
    let away = outside.join("b.txt");
    fs::write(&away, b"outside every root").unwrap();
    let run = client(&away);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("forbidden_path"),
        "sent by path, so the roots apply: {run:?}"
    );
    assert!(temp_files(setup.dir.path()).is_empty(), "no temp files");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
}

both_backends!(
    at_each_failpoint,
    a_client_without_tmpfile_sends_paths,
    at_each_failpoint_with_named_temps,
    named_temps_are_removed_on_failure,
    at_random_moments
);
