//! Crash safety of the write protocol (README "Security"): the daemon is killed with SIGKILL at each
//! step of a job (failpoints, `test-hooks` feature) and at 120 random moments during jobs.
//!
//! After every kill: no file under a final output name that does not verify and decrypt to
//! its input; every input unchanged (compared byte for byte); after a restart, no temp file
//! anywhere under the root, and the same job succeeds.

#![cfg(feature = "test-hooks")]

#[macro_use]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringcrypt::keys::KeyRing;
use serde_json::{Value, json};
use support::*;

/// A daemon on a fresh directory (`--fsync always --metrics off`, one key `k`), not started:
/// each test starts it (again) as it needs. `named_temps`: the daemon answers as on a file
/// system without `O_TMPFILE` (`RINGCRYPT_TEST_NO_TMPFILE`), so every job writes a named
/// temp file and renames it.
fn setup(backend: &'static str, named_temps: bool) -> Daemon {
    setup_with(backend, named_temps, &[])
}

/// [`setup`] with more daemon arguments.
fn setup_with(backend: &'static str, named_temps: bool, args: &[&str]) -> Daemon {
    let mut builder = Daemon::builder(backend)
        .args(args)
        .fsync("always")
        .metrics("off")
        .ring(keygen("k"))
        .at_drop(AtDrop::Reap);
    if named_temps {
        builder = builder.env("RINGCRYPT_TEST_NO_TMPFILE", "1");
    }
    builder.prepare()
}

/// Submits an encrypt with `"wait": false` and waits for `accepted` (so the job exists
/// before any kill), as far as the daemon lives to send it.
fn submit(d: &Daemon, input: &Path, output: &Path) {
    let mut c = Client::open(&d.socket, Duration::from_secs(10));
    c.send(&json!({"op": "encrypt", "wait": false, "input": p(input), "output": p(output)}));
    let _ = c.next();
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

fn wait_killed(d: &mut Daemon) {
    let status = d
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the failpoint never fired"));
    assert!(
        !status.success(),
        "the daemon should have been killed: {status:?}"
    );
    d.forget();
}

fn at_each_failpoint(backend: &'static str) {
    failpoints(backend, false, false);
}

/// The same for a file split into ranges on both shards (`--split-min-mib 1`, a 3 MiB
/// input), and killed too when a range on the other shard has written its part
/// (`range_written`): nothing is linked before every range is done.
fn at_each_failpoint_in_a_split_file(backend: &'static str) {
    failpoints(backend, false, true);
}

/// The same, where the file system has no `O_TMPFILE`: a kill between creating the named
/// temp file and renaming it leaves the temp file (and only it) behind, and the restart's
/// sweep removes it.
fn at_each_failpoint_with_named_temps(backend: &'static str) {
    failpoints(backend, true, false);
}

fn failpoints(backend: &'static str, named_temps: bool, split: bool) {
    let args: &[&str] = if split {
        &["--split-min-mib", "1"]
    } else {
        &[]
    };
    let mut d = setup_with(backend, named_temps, args);
    let ring = d.ring();
    let input = d.root.join("in.bin");
    let plain = bytes(3 << 20, 9);
    fs::write(&input, &plain).unwrap();
    for (point, output_exists) in [
        ("opened", false),
        ("temp_created", false),
        ("written", false),
        ("fsynced", false),
        ("linked", true),
        ("range_written", false),
        ("done", true),
    ] {
        if point == "range_written" && !split {
            continue;
        }
        let output = d.root.join(format!("out-{point}.rcrypt"));
        d.relaunch_with(|b| b.env("RINGCRYPT_FAILPOINT", point));
        submit(&d, &input, &output);
        wait_killed(&mut d);
        if named_temps {
            let left = temp_files(d.dir.path());
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
        d.relaunch_with(|b| b.unset_env("RINGCRYPT_FAILPOINT"));
        assert!(
            temp_files(d.dir.path()).is_empty(),
            "{point}: temp files after restart"
        );
        if !output_exists {
            submit(&d, &input, &output);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !output.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{point}: the rerun never finished"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(check_output(&ring, &output, &plain));
        }
        d.end();
    }
}

/// Kills per backend in `at_random_moments`: 720 jobs caught at every stage, in about a
/// minute per backend on two cores.
const ROUNDS: usize = 120;

fn at_random_moments(backend: &'static str) {
    let mut d = setup(backend, false);
    let ring = d.ring();
    let inputs: Vec<(PathBuf, Vec<u8>)> = (0..6)
        .map(|i| {
            let path = d.root.join(format!("in{i}.bin"));
            let data = bytes(200_000 + i * 70_001, i as u64);
            fs::write(&path, &data).unwrap();
            (path, data)
        })
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut finished = 0;
    for round in 0..ROUNDS {
        d.launch();
        for (i, (input, _)) in inputs.iter().enumerate() {
            submit(&d, input, &d.root.join(format!("r{round}-{i}.rcrypt")));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 20_000));
        d.kill();
        d.forget();
        for (i, (input, data)) in inputs.iter().enumerate() {
            assert_eq!(
                &fs::read(input).unwrap(),
                data,
                "round {round}: input {i} changed"
            );
            if check_output(&ring, &d.root.join(format!("r{round}-{i}.rcrypt")), data) {
                finished += 1;
            }
        }
        assert!(
            temp_files(d.dir.path()).is_empty(),
            "round {round}: temp files left"
        );
    }
    println!(
        "{backend}: {finished} of {} outputs finished before their kill; none was partial",
        ROUNDS * inputs.len()
    );
}

/// Without `O_TMPFILE`, a job that fails after making its named temp file removes it, and
/// `overwrite` replaces an existing output by rename.
fn named_temps_are_removed_on_failure(backend: &'static str) {
    let mut d = setup(backend, true);
    d.launch();
    let ring = d.ring();
    let plain = bytes(600_000, 3);
    let input = d.root.join("n.bin");
    fs::write(&input, &plain).unwrap();
    let sealed = d.root.join("n.rcrypt");
    // The final reply's line.
    let job = |request: Value| {
        let mut c = Client::open(&d.socket, Duration::from_secs(30));
        c.job(&request).pop().unwrap().to_string()
    };
    let reply = job(file_req("encrypt", &input, &sealed));
    assert!(reply.contains("\"done\""), "{reply}");
    assert!(check_output(&ring, &sealed, &plain));
    // Replacing an existing output goes through the named temp file and a rename.
    let reply = job(with(
        file_req("encrypt", &input, &sealed),
        json!({"overwrite": true}),
    ));
    assert!(reply.contains("\"done\""), "{reply}");
    assert!(check_output(&ring, &sealed, &plain));
    // A tampered input fails after the temp file was made and written to.
    let mut data = fs::read(&sealed).unwrap();
    let middle = data.len() - 1000;
    data[middle] ^= 0x40;
    let tampered = d.root.join("t.rcrypt");
    fs::write(&tampered, &data).unwrap();
    let out = d.root.join("t.out");
    let reply = job(file_req("decrypt", &tampered, &out));
    assert!(reply.contains("auth_failed"), "{reply}");
    assert!(!out.exists(), "nothing under the output name");
    assert!(
        temp_files(d.dir.path()).is_empty(),
        "the failed job removed its named temp file"
    );
}

/// The client passes descriptors only when it can make an unnamed temp file; where the
/// output's file system cannot, it sends paths, and the daemon's roots apply.
fn a_client_without_tmpfile_sends_paths(backend: &'static str) {
    let mut d = setup(backend, true);
    d.launch();
    let client = |input: &Path| {
        ringcrypt_command()
            .arg("--socket")
            .arg(&d.socket)
            .arg("encrypt")
            .arg(input)
            .env("RINGCRYPT_TEST_NO_TMPFILE", "1")
            .output()
            .unwrap()
    };
    let inside = d.root.join("a.txt");
    fs::write(&inside, b"inside the root").unwrap();
    let run = client(&inside);
    assert!(run.status.success(), "{run:?}");
    assert!(check_output(
        &d.ring(),
        &d.root.join("a.txt.rcrypt"),
        b"inside the root"
    ));
    let away = d.outside.join("b.txt");
    fs::write(&away, b"outside every root").unwrap();
    let run = client(&away);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("forbidden_path"),
        "sent by path, so the roots apply: {run:?}"
    );
    assert!(temp_files(d.dir.path()).is_empty(), "no temp files");
}

both_backends!(
    at_each_failpoint,
    at_each_failpoint_in_a_split_file,
    a_client_without_tmpfile_sends_paths,
    at_each_failpoint_with_named_temps,
    named_temps_are_removed_on_failure,
    at_random_moments
);
