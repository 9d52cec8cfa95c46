//! Crash safety of the write protocol (DESIGN §6): the daemon is killed with SIGKILL at each
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
        let mut daemon = start(&setup, backend, Some(point));
        submit(&setup, &input, &output);
        wait_killed(&mut daemon);
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
        let mut daemon = start(&setup, backend, None);
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

both_backends!(at_each_failpoint, at_random_moments);
