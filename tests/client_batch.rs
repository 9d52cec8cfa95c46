//! The client's second pass against the real `ringcryptd` on a real socket, under both
//! backends: several inputs as one batch on one connection, what streams through the daemon
//! still refuse (nothing created), `jobs --state/--limit`; and snapshots of the messages the
//! client prints where it used to contradict the situation.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use support::*;

both_backends!(
    several_inputs_go_as_one_batch,
    streams_refuse_what_the_daemon_cannot_do,
    jobs_are_filtered_and_limited,
    verify_goes_through_the_daemon,
    a_large_file_shows_a_bar_on_a_terminal,
    openssl_files_through_the_daemon_cli,
);

/// Every name under `dir`, relative, sorted.
fn names_under(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    walk(dir, |entry, _| {
        names.insert(
            entry
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    });
    names
}

/// Intact: `encrypt a b nope -r photos -o out` through the daemon runs every input (files
/// by descriptor, the tree by path), reports the missing one as the one failure with its
/// code, prints one summary and exits 1; every output decrypts to its input and the inputs
/// are unchanged; `decrypt` of several outputs into another directory gives the inputs back;
/// with `--json` every reply line is printed and no summary; no temp file is left.
fn several_inputs_go_as_one_batch(backend: &'static str) {
    let daemon = Daemon::builder(backend).start();
    let root = &daemon.root;
    fs::write(root.join("a.txt"), bytes(70_000, 1)).unwrap();
    fs::write(root.join("b.txt"), bytes(1 << 20, 2)).unwrap();
    make_tree(&root.join("photos"), 6, 2, |i| 1000 * i + 1);
    let inputs_before = snapshot(root);
    fs::create_dir(root.join("out")).unwrap();

    let run = daemon.cli(&[
        "encrypt", "a.txt", "b.txt", "nope.txt", "-r", "photos", "-o", "out",
    ]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(run.stdout.lines().count(), 1, "one summary: {run:#?}");
    assert!(
        run.stdout
            .starts_with("encrypted 4 inputs -> out: 8 ok, 1 failed, 0 skipped"),
        "{run:#?}"
    );
    let failed: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("failed:"))
        .collect();
    assert_eq!(failed.len(), 1, "{run:#?}");
    assert!(
        failed[0].contains("nope.txt") && failed[0].contains("[not_found]"),
        "{run:#?}"
    );

    let ring = daemon.ring();
    let scratch = daemon.scratch().join("check");
    for name in ["a.txt", "b.txt"] {
        let plain = fs::read(root.join(name)).unwrap();
        assert_decrypts_to(
            &ring,
            &root.join("out").join(format!("{name}.rcrypt")),
            &plain,
            &scratch,
        );
    }
    assert_eq!(
        verify_tree_outputs(
            &ring,
            &root.join("photos"),
            &root.join("out/photos.rcrypt"),
            &daemon.scratch()
        ),
        6
    );
    let after: Vec<_> = snapshot(root)
        .into_iter()
        .filter(|(path, _)| !path.starts_with(root.join("out")))
        .collect();
    assert_eq!(after, inputs_before, "the inputs are unchanged");

    fs::create_dir(root.join("back")).unwrap();
    let run = daemon
        .cli(&[
            "decrypt",
            "out/a.txt.rcrypt",
            "out/b.txt.rcrypt",
            "-o",
            "back",
        ])
        .ok();
    assert!(
        run.stdout
            .contains("decrypted 2 inputs -> back: 2 ok, 0 failed"),
        "{run:#?}"
    );
    for name in ["a.txt", "b.txt"] {
        assert_eq!(
            fs::read(root.join("back").join(name)).unwrap(),
            fs::read(root.join(name)).unwrap()
        );
    }

    fs::create_dir(root.join("json")).unwrap();
    let run = daemon
        .cli(&["--json", "encrypt", "a.txt", "b.txt", "-o", "json"])
        .ok();
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "done").count(),
        2,
        "{run:#?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "accepted").count(),
        2,
        "{run:#?}"
    );
    assert_eq!(
        names_under(&root.join("json")),
        BTreeSet::from(["a.txt.rcrypt".into(), "b.txt.rcrypt".into()])
    );
    assert!(temp_files(root).is_empty(), "{:?}", temp_files(root));
}

/// Intact: through the daemon, streams (`-`, /dev/stdin, /dev/stdout) go as descriptors
/// (tests/pipes_daemon.rs), but what only offline does is still a usage error that names
/// --keys, before anything is opened or created: `--chunk-log2`, `--format openssl`; and
/// `--json` with the data on standard output is refused as one JSON line there. The root
/// holds exactly what it held.
fn streams_refuse_what_the_daemon_cannot_do(backend: &'static str) {
    let daemon = Daemon::builder(backend).start();
    let root = &daemon.root;
    fs::write(root.join("a.txt"), b"some data").unwrap();
    daemon.cli(&["encrypt", "a.txt"]).ok();
    let before = names_under(root);
    for args in [
        &["encrypt", "-", "--chunk-log2", "12"][..],
        &["encrypt", "-", "-o", "x.rcrypt", "--format", "openssl"],
        &[
            "encrypt",
            "/dev/stdin",
            "-o",
            "y.rcrypt",
            "--chunk-log2",
            "14",
        ],
    ] {
        let mut child = ringcrypt_command()
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"piped data");
        let run = Run::of(child.wait_with_output().unwrap()).usage();
        assert!(run.stderr.contains("--keys FILE"), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        assert_eq!(names_under(root), before, "{args:?} created something");
    }
    let run = daemon
        .cli(&["--json", "decrypt", "a.txt.rcrypt", "-o", "-"])
        .usage();
    let line: Value = serde_json::from_str(run.stdout.trim()).expect("one JSON line");
    assert_eq!(
        (line["type"].as_str(), line["code"].as_str()),
        (Some("error"), Some("usage"))
    );
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("standard output"),
        "{line}"
    );
    assert_eq!(names_under(root), before);
}

/// Intact: after seven jobs (six done, one failed), `jobs --state done --limit 2` shows two
/// of the done ones and says how many more there are; `--state failed` shows exactly the
/// failed job; `--limit 0` shows every job; `--json` keeps the same two and counts the rest
/// in `left_out`.
fn jobs_are_filtered_and_limited(backend: &'static str) {
    let daemon = Daemon::builder(backend).start();
    let root = &daemon.root;
    let mut names = Vec::new();
    for i in 0..6 {
        let name = format!("f{i}");
        fs::write(root.join(&name), bytes(100 + i, i as u64)).unwrap();
        names.push(name);
    }
    let mut args = vec!["encrypt"];
    args.extend(names.iter().map(String::as_str));
    daemon.cli(&args).ok();
    fs::write(root.join("junk.rcrypt"), b"not sealed at all").unwrap();
    daemon
        .cli(&["decrypt", "junk.rcrypt"])
        .failed_code("bad_format");

    let rows = |run: &Run| {
        run.stdout
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let run = daemon
        .cli(&["jobs", "--state", "done", "--limit", "2"])
        .ok();
    assert_eq!(rows(&run).len(), 2, "{run:#?}");
    assert!(
        rows(&run).iter().all(|row| row.contains(" done ")),
        "{run:#?}"
    );
    assert!(run.stderr.contains("and 4 more jobs not shown"), "{run:#?}");

    let run = daemon.cli(&["jobs", "--state", "failed"]).ok();
    assert_eq!(rows(&run).len(), 1, "{run:#?}");
    assert!(
        rows(&run)[0].contains("junk.rcrypt") && rows(&run)[0].contains("failed"),
        "{run:#?}"
    );
    assert!(run.stderr.is_empty(), "{run:#?}");

    let run = daemon.cli(&["jobs", "--limit", "0"]).ok();
    assert_eq!(rows(&run).len(), 7, "{run:#?}");

    let run = daemon
        .cli(&["--json", "jobs", "--state", "done", "--limit", "2"])
        .ok();
    let line: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(line["jobs"].as_array().unwrap().len(), 2, "{line}");
    assert_eq!(line["left_out"], 4, "{line}");
}

/// The run as a snapshot shows it: exit code, stdout, stderr, with the test's own paths
/// replaced by placeholders.
fn shown(run: &Run, replace: &[(&Path, &str)]) -> String {
    let mut text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    for (path, placeholder) in replace {
        text = text.replace(p(path), placeholder);
    }
    text
}

/// Intact: each message the client prints where it used to contradict the situation, as a
/// snapshot: as `nobody` no hint to start the daemon; `--keys` given is not suggested again;
/// a directory without -r suggests -r; `1 key`, not `1 keys`; `--json` refusals are one
/// JSON line on stdout; verify through the daemon
/// names the file that is not sealed and its code; keygen -o
/// refuses to replace a ring.
#[test]
fn messages_fit_the_situation() {
    let daemon = Daemon::builder("sync").ring(keygen("only")).start();
    let root = &daemon.root;
    let socket = &daemon.socket;
    let tmp = daemon.dir.path();
    let paths = [(socket.as_path(), "[SOCKET]"), (tmp, "[TMP]")];

    if running_as_root() {
        let run = Run::of(ringcrypt_as_nobody(socket, &["ping"]));
        assert_eq!(run.code, 3, "{run:#?}");
        insta::assert_snapshot!("hint_as_nobody", shown(&run, &paths));
    }

    let absent = tmp.join("absent.sock");
    let run = ringcrypt_in(root, &absent, &["--keys", "k.toml", "ping"]);
    insta::assert_snapshot!(
        "hint_keys_given_to_ping",
        shown(&run, &[(&absent, "[ABSENT]")])
    );
    let run = ringcrypt_in(root, &absent, &["encrypt", "x"]);
    insta::assert_snapshot!("hint_daemon_absent", shown(&run, &[(&absent, "[ABSENT]")]));

    let run = daemon.cli(&["encrypt", "."]);
    insta::assert_snapshot!("hint_directory_without_r", shown(&run, &paths));

    let run = daemon.cli(&["reload"]);
    insta::assert_snapshot!("reloaded_one_key", shown(&run, &paths));

    fs::write(root.join("a.txt"), b"data").unwrap();
    fs::write(root.join("a.txt.rcrypt"), b"already here").unwrap();
    let run = daemon.cli(&["--json", "encrypt", "a.txt"]);
    insta::assert_snapshot!("json_exists", shown(&run, &paths));
    let line: Value = serde_json::from_str(run.stdout.trim()).expect("one JSON line");
    assert_eq!(line["code"], "exists");
    assert_eq!(
        fs::read(root.join("a.txt.rcrypt")).unwrap(),
        b"already here"
    );

    let run = daemon.cli(&["--json", "encrypt", "--bogus", "a.txt"]);
    insta::assert_snapshot!("json_bad_command_line", shown(&run, &paths));

    // Through the daemon, a `.rcrypt` that is no sealed file: FAILED, bad_format.
    let run = daemon.cli(&["verify", "a.txt.rcrypt"]);
    insta::assert_snapshot!("verify_through_daemon", shown(&run, &paths));

    let ring = root.join("new.toml");
    ringcrypt_in(root, socket, &["keygen", "-o", "new.toml"]).ok();
    assert_eq!(mode_of(&ring), 0o600);
    let first = fs::read(&ring).unwrap();
    let run = ringcrypt_in(root, socket, &["keygen", "-o", "new.toml"]);
    insta::assert_snapshot!("keygen_refuses_to_replace", shown(&run, &paths));
    assert_eq!(fs::read(&ring).unwrap(), first, "the ring is kept");
    ringcrypt_in(root, socket, &["keygen", "-o", "new.toml", "--force"]).ok();
    assert_ne!(fs::read(&ring).unwrap(), first, "--force replaces it");
    assert_eq!(mode_of(&ring), 0o600);
}

/// Intact: `verify` through the daemon (no --keys) checks single files and a tree on the
/// shards: a tree with one flipped bit in one file reports exactly that file FAILED
/// (`auth_failed`), counts the others ok, skips what is not `.rcrypt`, exits 1; good files
/// alone exit 0 with an `ok:` line each; `--json` gives one line per file, the tree's count
/// and the summary; and nothing under the root changes or appears.
fn verify_goes_through_the_daemon(backend: &'static str) {
    let daemon = Daemon::builder(backend).start();
    let root = &daemon.root;
    make_tree(&root.join("photos"), 7, 3, |i| 30_000 * i + 1);
    fs::write(root.join("a.txt"), bytes(200_000, 3)).unwrap();
    daemon.cli(&["encrypt", "-q", "-r", "photos"]).ok();
    daemon.cli(&["encrypt", "a.txt"]).ok();
    let victim = root.join("photos.rcrypt/d01/f4.rcrypt");
    let mut sealed = fs::read(&victim).unwrap();
    sealed[96 + 65_568 + 100] ^= 0x04; // the second record of five
    fs::write(&victim, &sealed).unwrap();
    fs::write(root.join("photos.rcrypt/notes"), b"not sealed").unwrap();
    let before = snapshot(root);

    let run = daemon.cli(&["verify", "a.txt.rcrypt"]).ok();
    assert_eq!(
        run.stdout.lines().next(),
        Some("ok: a.txt.rcrypt"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains(
            "verified 1 file: 1 ok, 0 failed, 0 skipped (200000 bytes of plaintext checked)"
        ),
        "{run:#?}"
    );

    let run = daemon.cli(&["verify", "-r", "photos.rcrypt", "a.txt.rcrypt"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let failed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{run:#?}");
    assert!(
        failed[0].contains(p(&victim)) && failed[0].ends_with("[auth_failed]"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("ok: 6 files under photos.rcrypt"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("ok: a.txt.rcrypt"), "{run:#?}");
    assert!(run.stdout.contains("skipped: "), "{run:#?}");
    assert!(
        run.stdout
            .contains("verified 8 files: 7 ok, 1 failed, 1 skipped"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("1 file failed verification"),
        "{run:#?}"
    );

    let run = daemon.cli(&["--json", "verify", "-r", "photos.rcrypt"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bad: Vec<&Value> = lines.iter().filter(|l| l["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{run:#?}");
    assert_eq!(bad[0]["path"], p(&victim));
    assert_eq!(bad[0]["code"], "auth_failed");
    let tree = lines
        .iter()
        .find(|l| l["type"] == "tree")
        .expect("a tree line");
    assert_eq!(tree["files_ok"], 6, "{tree}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["files_failed"], 1, "{summary}");
    assert_eq!(summary["files_ok"], 6, "{summary}");

    assert_eq!(snapshot(root), before, "verify changed or created files");
}

/// Runs `ringcrypt --socket SOCKET ARGS` in `cwd` on a terminal (a pty, through Python's
/// `pty.spawn`); returns its exit code and everything it wrote to the terminal.
fn on_a_terminal(cwd: &Path, socket: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))")
        .arg(CLI)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .current_dir(cwd)
        .env_remove("RINGCRYPT_KEYS")
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Intact: a single file above 64 MiB through the daemon shows a progress bar on a terminal
/// (fed by the daemon's `progress` lines: bytes of the file's size), a small file does not,
/// and neither does the large one when stderr is not a terminal; every output is complete.
fn a_large_file_shows_a_bar_on_a_terminal(backend: &'static str) {
    let daemon = Daemon::builder(backend).start();
    let root = &daemon.root;
    write_big(&root.join("big"), 65);
    fs::write(root.join("small"), bytes(1 << 20, 4)).unwrap();

    let (code, shown) = on_a_terminal(root, &daemon.socket, &["encrypt", "big"]);
    assert_eq!(code, 0, "{shown}");
    // The bar's message: `0/1 files, x/68.2 MB, r MB/s` (MB = 10^6 bytes).
    assert!(shown.contains("/68.2 MB"), "no bar for 65 MiB: {shown:?}");
    assert!(shown.contains("encrypted big -> big.rcrypt"), "{shown:?}");

    let (code, shown) = on_a_terminal(root, &daemon.socket, &["encrypt", "small"]);
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains(" MB"), "a bar for 1 MiB: {shown:?}");

    let run = daemon
        .cli(&["decrypt", "big.rcrypt", "-o", "big.back"])
        .ok();
    assert!(
        !run.stderr.contains(" MB"),
        "progress without a terminal: {run:#?}"
    );
    assert!(
        fs::read(root.join("big.back")).unwrap() == fs::read(root.join("big")).unwrap(),
        "the round trip differs"
    );
}

/// Intact: through the daemon, the CLI decrypts and rewraps a file the real `openssl enc`
/// made, with the passphrase entry `--key` names in the daemon's ring; the rewrapped file
/// verifies through the daemon and the openssl file is unchanged.
fn openssl_files_through_the_daemon_cli(backend: &'static str) {
    let ring = format!(
        "default = \"k\"\n{}[[key]]\nname = \"legacy\"\npassphrase = \"pw\"\niter = 1000\nstate = \"decrypt-only\"\n",
        keygen("k")
    );
    let daemon = Daemon::builder(backend).ring(ring).start();
    let root = &daemon.root;
    let plain = bytes(300_000, 8);
    fs::write(root.join("old.tar"), &plain).unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "enc",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "1000",
            "-pass",
            "pass:pw",
        ])
        .args(["-in", "old.tar", "-out", "old.tar.enc"])
        .current_dir(root)
        .output()
        .expect("the openssl CLI runs");
    assert!(made.status.success(), "{made:?}");
    let legacy = fs::read(root.join("old.tar.enc")).unwrap();

    daemon
        .cli(&[
            "decrypt",
            "old.tar.enc",
            "-o",
            "back.tar",
            "--key",
            "legacy",
        ])
        .ok();
    assert!(
        fs::read(root.join("back.tar")).unwrap() == plain,
        "decrypt differs"
    );
    daemon
        .cli(&[
            "rewrap",
            "old.tar.enc",
            "-o",
            "old.tar.rcrypt",
            "--key",
            "legacy",
        ])
        .ok();
    assert_decrypts_to(
        &daemon.ring(),
        &root.join("old.tar.rcrypt"),
        &plain,
        &daemon.scratch().join("check"),
    );
    let run = daemon.cli(&["verify", "old.tar.rcrypt"]).ok();
    assert!(run.stdout.contains("300000 bytes of plaintext"), "{run:#?}");
    // The openssl file itself has no tags: verify says so.
    let run = daemon.cli(&["verify", "old.tar.enc"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stdout.contains("[bad_format]"), "{run:#?}");
    assert_eq!(fs::read(root.join("old.tar.enc")).unwrap(), legacy);
}
