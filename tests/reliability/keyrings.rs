#![allow(unused_imports)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::*;
use ringcrypt::keys::KeyRing;
use serde_json::{Value, json};

// ---- 8. key rings and the offline full disk -----------------------------------------------

/// (8a) A key ring with no key refuses the start: an empty file, and a ring that only names a
/// default (`default = "x"`), each mode 0600.
///
/// Intact: the daemon exits non-zero within 10 s; its stderr names the key ring and, for the
/// empty ring, says it has no usable key.
fn empty_ring_refuses_start(backend: &'static str) {
    for (what, text, says_no_key) in [
        ("empty file", "", true),
        ("only a default", "default = \"x\"\n", false),
    ] {
        let d = rd(backend).ring(text).prepare();
        let (keys, log) = (&d.keys, &d.log);
        let mut child = d.command(log).spawn().expect("ringcryptd starts");
        let status = wait_within(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stderr = fs::read_to_string(log).unwrap_or_default();
        let status = status.unwrap_or_else(|| {
            panic!("{what}: the daemon started with a key ring without keys (still running after 10 s); stderr:\n{stderr}")
        });
        assert!(!status.success(), "{what}: {status}; {stderr}");
        assert!(
            stderr.contains(p(keys)),
            "{what}: stderr does not name the ring: {stderr}"
        );
        if says_no_key {
            let lower = stderr.to_lowercase();
            let no_key = lower.match_indices("no ").any(|(at, _)| {
                lower[at..]
                    .chars()
                    .take(24)
                    .collect::<String>()
                    .contains("key")
            });
            assert!(
                no_key,
                "{what}: stderr does not say there is no usable key: {stderr}"
            );
        }
    }
}

/// (8b) With the daemon running, keys.toml becomes an empty ring (0600): SIGHUP, then a
/// `reload` request from root.
///
/// Intact: the daemon keeps its ring: an encrypt with k1 after the SIGHUP ends `done` under
/// k1's id; the `reload` request is answered `error`; an encrypt with the default key after
/// it ends `done` under k2's id; both outputs decrypt.
fn empty_ring_reload_keeps_old_keys(backend: &'static str) {
    let rd = rd(backend).start();
    let ring = rd.ring();
    let input = rd.root.join("in.txt");
    let plain = bytes(4000, 88);
    fs::write(&input, &plain).unwrap();
    write_private(&rd.keys, "");
    // The daemon logs what a SIGHUP did (reloaded or kept its ring); wait for that line, up
    // to 3 s, so the encrypt below runs after the reload attempt.
    let logged = rd.log_text().len();
    rd.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    while rd.log_text().len() == logged && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = rd.root.join("after-hup.rc");
    let end = rd.encrypt(&input, &first, json!({"key": "k1"}));
    assert_eq!(
        end["type"], "done",
        "after SIGHUP with an empty ring: {end}"
    );
    assert_eq!(key_id_of(&first), ring_id(&ring, "k1"));
    let reload = rd
        .client()
        .send_and_recv(&rd, &json!({"op": "reload", "id": "r"}));
    assert_eq!(
        reload["type"], "error",
        "a reload of an empty ring was accepted: {reload}"
    );
    let second = rd.root.join("after-reload.rc");
    let end = rd.encrypt(&input, &second, json!({}));
    assert_eq!(
        end["type"], "done",
        "after reload with an empty ring: {end}"
    );
    assert_eq!(key_id_of(&second), ring_id(&ring, "k2"));
    for out in [&first, &second] {
        assert_decrypts_to(&ring, out, &plain, &rd.scratch().join("s"));
    }
}

/// (8c) (root) `reload` from nobody, an allowed uid that is not an admin.
///
/// Intact: `permission_denied`; the audit log has a line for it (op=reload, uid=65534) and no
/// such line says `accepted`; the daemon still serves root.
fn refused_reload_is_not_audited_as_accepted(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a client as nobody (setpriv)");
        return;
    }
    let rd = rd(backend).allow_uid(NOBODY).start();
    let end = as_nobody(&rd, json!({"op": "reload"}));
    assert_eq!(code(&end), "permission_denied", "{end}");
    assert_eq!(rd.ping()["type"], "pong");
    let log = rd.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("op=reload") && l.contains(&format!("uid={NOBODY}")))
        .collect();
    assert!(!lines.is_empty(), "nobody's reload is not audited:\n{log}");
    for line in lines {
        assert!(
            !line.contains("accepted"),
            "a refused reload audited as accepted: {line}"
        );
    }
}

/// (8d) (root) The offline client on a full disk: a 4 MiB input on the normal disk, its
/// output on a 1 MiB tmpfs. (No daemon: the backend does not apply; it runs under both names
/// like the rest.)
///
/// Intact: exit 1; stderr names the OUTPUT path and "No space left" and does not blame the
/// input ("cannot read ..."); nothing is left in the tmpfs; the input is unchanged.
fn offline_full_disk_blames_the_output(backend: &'static str) {
    let _ = backend;
    if !running_as_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let dir = scratch_dir();
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    if !mount_tmpfs(&small, "1m") {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _unmount = Unmount(small.clone());
    let keys = dir.path().join("keys.toml");
    write_private(&keys, &keygen("k"));
    let big = dir.path().join("big.bin");
    write_big(&big, 4);
    let before = fs::read(&big).unwrap();
    let output = small.join("out.rcrypt");
    let out = output_within(
        Command::new(CLI)
            .arg("--keys")
            .arg(&keys)
            .arg("encrypt")
            .arg(&big)
            .arg("-o")
            .arg(&output)
            .env_remove("RINGCRYPT_KEYS")
            .env_remove("RINGCRYPT_SOCKET"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left: Vec<_> = fs::read_dir(&small).unwrap().collect();
    assert!(left.is_empty(), "the full disk kept {left:?}; {stderr}");
    assert_eq!(fs::read(&big).unwrap(), before);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("No space left"), "{stderr}");
    assert!(
        !stderr.contains("cannot read"),
        "a full output disk blamed on the input: {stderr}"
    );
    assert!(
        stderr.contains(p(&output)),
        "stderr does not name the output {}: {stderr}",
        output.display()
    );
}

/// A raw request for the unauthenticated openssl format, with no key, a secret key, and on a
/// second file to make sure nothing is left half-done.
///
/// Intact: `bad_request` whose message points to the offline client, for each; no output
/// appears (the daemon used to seal RCRYPT under the asked-for openssl name); the input is
/// unchanged; the daemon still serves a normal encrypt.
fn openssl_format_is_refused_not_ignored(backend: &'static str) {
    let rd = rd(backend).start();
    let input = rd.root.join("legacy.txt");
    let plain = bytes(5000, 41);
    fs::write(&input, &plain).unwrap();
    for (i, fields) in [
        json!({"format": "openssl"}),
        json!({"format": "openssl", "key": "k1"}),
    ]
    .into_iter()
    .enumerate()
    {
        let output = rd.root.join(format!("legacy.{i}.enc"));
        let end = rd.encrypt(&input, &output, fields.clone());
        assert_eq!(code(&end), "bad_request", "{fields}: {end}");
        let message = end["message"].as_str().unwrap_or_default();
        assert!(message.contains("offline"), "{fields}: {message}");
        assert!(!output.exists(), "{fields}: an output appeared");
    }
    assert_eq!(fs::read(&input).unwrap(), plain, "the input changed");
    let sealed = rd.root.join("legacy.txt.rcrypt");
    let done = rd.encrypt(&input, &sealed, json!({}));
    assert_eq!(done["type"], "done", "{done}");
    assert_decrypts_to(&rd.ring(), &sealed, &plain, &rd.scratch().join("s"));
}

both_backends!(
    empty_ring_refuses_start,
    empty_ring_reload_keeps_old_keys,
    refused_reload_is_not_audited_as_accepted,
    offline_full_disk_blames_the_output,
    openssl_format_is_refused_not_ignored,
);
