//! `ringcryptd --check-config` against the real binary: a good configuration (flags or file)
//! exits 0, prints what would run and starts nothing; each kind of problem (a bad flag
//! value, a bad file key, an unreadable or empty key ring, a missing root, an unknown socket
//! group) exits 1 with a message naming it. And `socket_mode` / `socket_group` on the real
//! daemon's socket, on both backends.

#[macro_use]
mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

/// `ringcryptd ARGS --check-config`, run to completion.
fn check(args: &[&str]) -> Run {
    let mut cmd = Command::new(DAEMON);
    cmd.args(args)
        .arg("--check-config")
        .env_remove("RINGCRYPT_SOCKET")
        .env_remove("JOURNAL_STREAM");
    Run::of(output_within(&mut cmd, Duration::from_secs(30)))
}

/// Exit 1 with the problem on stderr (every part of `parts`), nothing on stdout.
#[track_caller]
fn refused(run: Run, parts: &[&str]) {
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(
        run.stderr.contains("configuration check failed"),
        "{run:#?}"
    );
    for part in parts {
        assert!(run.stderr.contains(part), "{part:?} missing: {run:#?}");
    }
}

/// Intact: the check of a good configuration exits 0 and prints the settled values (the
/// ring's key count and default, the roots, the socket's mode and group); it binds no
/// socket, and the same settings from a configuration file check the same.
#[test]
fn a_good_configuration_checks_and_starts_nothing() {
    let d = Daemon::builder("sync").prepare();
    let socket = d.scratch().join("never.sock");
    let gid = rustix::process::getegid().as_raw().to_string();
    let flags = [
        "--socket",
        p(&socket),
        "--keys",
        p(&d.keys),
        "--allow-root",
        p(&d.root),
        "--socket-mode",
        "0600",
        "--socket-group",
        &gid,
        "--log-format",
        "json",
        "--metrics",
        "off",
    ];
    let run = check(&flags).ok();
    for part in [
        "the configuration is valid",
        "2 keys, default k2",
        p(&d.root),
        "mode 0600",
        &format!("(gid {gid})"),
        "format json",
    ] {
        assert!(run.stdout.contains(part), "{part:?} missing: {run:#?}");
    }
    assert!(!socket.exists(), "the check bound the socket");

    let config = d.scratch().join("ringcryptd.toml");
    fs::write(
        &config,
        format!(
            "socket = \"{}\"\nkeys = \"{}\"\nallow_roots = [\"{}\"]\nsocket_mode = \"0640\"\n\
             socket_group = \"{gid}\"\nlog_level = \"warn\"\nlog_format = \"text\"\nmetrics = \"off\"\n",
            p(&socket),
            p(&d.keys),
            p(&d.root)
        ),
    )
    .unwrap();
    let run = check(&["--config", p(&config)]).ok();
    assert!(
        run.stdout.contains("mode 0640") && run.stdout.contains("level warn"),
        "{run:#?}"
    );
    assert!(!socket.exists());
}

/// Intact: each problem exits 1 and names what is wrong, whether it comes from a flag, the
/// configuration file, the key ring, a root or the socket group; a key ring that is not a
/// file, or has no key, is refused before anything could start.
#[test]
fn each_kind_of_problem_exits_1_with_the_problem() {
    let d = Daemon::builder("sync").prepare();
    let keys = p(&d.keys);
    let root = p(&d.root);
    let base = |more: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["--keys", keys, "--allow-root", root]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    let run_with = |args: Vec<String>| check(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Bad flag values: those clap checks, and those the daemon checks.
    refused(run_with(base(&["--shards", "0"])), &["--shards"]);
    refused(run_with(base(&["--fsync", "sometimes"])), &["--fsync"]);
    refused(run_with(base(&["--socket-mode", "0999"])), &["0999"]);
    refused(
        run_with(base(&["--metrics", "nowhere"])),
        &["metrics address \"nowhere\""],
    );
    refused(run_with(base(&["--log-level", "loud"])), &["--log-level"]);

    // The configuration file.
    let config = d.scratch().join("bad.toml");
    fs::write(
        &config,
        format!("keys = \"{keys}\"\nallow_roots = [\"{root}\"]\nsocket_mode = 660\n"),
    )
    .unwrap();
    refused(
        check(&["--config", p(&config)]),
        &["socket_mode 660 is a number"],
    );
    fs::write(
        &config,
        format!("keys = \"{keys}\"\nallow_roots = [\"{root}\"]\nlog_levle = \"warn\"\n"),
    )
    .unwrap();
    refused(check(&["--config", p(&config)]), &["log_levle"]);
    refused(
        check(&["--config", p(&d.scratch().join("none.toml"))]),
        &["none.toml"],
    );

    // Key rings: missing, not a file, empty, too open.
    let missing = d.scratch().join("missing-keys.toml");
    refused(
        check(&["--keys", p(&missing), "--allow-root", root]),
        &[p(&missing)],
    );
    let dir_ring = d.scratch().join("ring-dir");
    fs::create_dir(&dir_ring).unwrap();
    fs::set_permissions(&dir_ring, fs::Permissions::from_mode(0o700)).unwrap();
    refused(
        check(&["--keys", p(&dir_ring), "--allow-root", root]),
        &[p(&dir_ring)],
    );
    let empty = d.scratch().join("empty.toml");
    write_private(&empty, "");
    refused(
        check(&["--keys", p(&empty), "--allow-root", root]),
        &["no usable key"],
    );
    let open = d.scratch().join("open.toml");
    fs::copy(&d.keys, &open).unwrap();
    chmod(&open, 0o644);
    refused(
        check(&["--keys", p(&open), "--allow-root", root]),
        &[p(&open)],
    );

    // Roots and the socket group.
    let gone = d.scratch().join("gone");
    refused(
        check(&["--keys", keys, "--allow-root", p(&gone)]),
        &[p(&gone), "allowed root"],
    );
    refused(
        run_with(base(&["--socket-group", "no-such-group-rc"])),
        &["socket_group \"no-such-group-rc\": no such group"],
    );
}

/// A group to give the socket: as root any group (nobody's), otherwise our own.
fn socket_gid() -> u32 {
    if running_as_root() {
        gid_of("nobody")
    } else {
        rustix::process::getegid().as_raw()
    }
}

/// Intact: `--socket-mode` and `--socket-group` (and their file keys) give the daemon's
/// socket exactly that mode and group, the daemon serves on it; a group the daemon cannot
/// use stops the start with exit 1, the reason, and no socket file left behind.
fn socket_mode_and_group_apply(backend: &'static str) {
    let gid = socket_gid();
    let d = Daemon::builder(backend)
        .args(&["--socket-mode", "0640", "--socket-group", &gid.to_string()])
        .start();
    let meta = fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid);
    assert_eq!(d.ping()["type"], "pong");
    drop(d);

    let d = Daemon::builder(backend).prepare();
    let config = d.scratch().join("c.toml");
    fs::write(
        &config,
        format!("socket_mode = \"0600\"\nsocket_group = \"{gid}\"\n"),
    )
    .unwrap();
    let mut d = d;
    d.relaunch_with(|b| b.args(&["--config", p(&config)]));
    let meta = fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o600, gid));
    drop(d);

    let d = Daemon::builder(backend).prepare();
    let mut cmd = d.command(&d.log);
    cmd.args(["--socket-group", "no-such-group-rc"]);
    let out = output_within(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("ringcryptd: error: ") && log.contains("\"no-such-group-rc\": no such group"),
        "{log}"
    );
    assert!(!Path::new(&d.socket).exists(), "no socket left behind");
}

both_backends!(socket_mode_and_group_apply);
