//! Directory-tree jobs through the real `ringcryptd` on a real socket, under both backends.
//!
//! Checked: a 5,000-file nested tree (sizes 0 to 3 chunks, a symlink, a FIFO) encrypts and
//! decrypts back to an identical tree (bytes, mode bits, mtimes, directory modes) with the
//! specials reported as skipped; progress lines are monotonic and their totals match the
//! tree; the final counts match; a daemon killed mid-tree and rerun with `skip_existing`
//! finishes the rest, leaving no partial or temp file; an unreadable file fails alone with
//! `permission_denied` (the daemon runs as `nobody` for that when the suite runs as root).

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const FILES: usize = 5_000;

/// A tree of `FILES` regular files in nested directories, plus a symlink and a FIFO.
/// Returns the regular files' relative paths and total size.
fn make_tree(root: &Path) -> (Vec<PathBuf>, u64) {
    make_tree_of(root, FILES)
}

/// Files in the trees of the kill-and-resume tests: enough that a kill lands mid-tree.
const KILL_FILES: usize = 2_000;

/// The same shape with `count` files.
fn make_tree_of(root: &Path, count: usize) -> (Vec<PathBuf>, u64) {
    let mut files = Vec::with_capacity(count);
    let mut total = 0u64;
    for i in 0..count {
        let dir = PathBuf::from(format!("d{}/e{}", i % 7, i % 13));
        fs::create_dir_all(root.join(&dir)).unwrap();
        // Sizes 0 ..= 3 chunks of 64 KiB, mostly small so the test stays quick.
        let size = match i % 50 {
            0 => 3 * 65536,
            1 => 65536,
            2 => 65537,
            3 => 0,
            _ => (i * 37) % 9000,
        };
        let rel = dir.join(format!("f{i}.dat"));
        fs::write(root.join(&rel), bytes(size, i as u64)).unwrap();
        // Distinct mtimes and modes that the output must keep.
        let path = root.join(&rel);
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(if i % 3 == 0 { 0o640 } else { 0o644 }),
        )
        .unwrap();
        let when = filetime(1_600_000_000 + i as i64);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        files.push(rel);
        total += size as u64;
    }
    fs::set_permissions(root.join("d3"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("d1/link")).unwrap();
    mkfifo(&root.join("d2/fifo"));
    (files, total)
}

fn filetime(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
}

/// (mode, mtime, bytes) of every regular file, and the mode of every directory.
fn describe(root: &Path) -> BTreeMap<PathBuf, (u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, (meta.mode() & 0o7777, 0, Vec::new()));
                stack.push(entry.path());
            } else if meta.is_file() {
                out.insert(
                    rel,
                    (
                        meta.mode() & 0o7777,
                        meta.mtime(),
                        fs::read(entry.path()).unwrap(),
                    ),
                );
            }
        }
    }
    out
}

/// Runs a tree job; checks its progress lines; returns the `done` line.
fn run_tree(d: &Daemon, request: &Value, files: u64, bytes_total: u64) -> Value {
    let mut c = d.client();
    let replies = c.job(request);
    assert_eq!(replies[0]["type"], "accepted", "{replies:?}");
    let done = replies.last().unwrap().clone();
    assert_eq!(done["type"], "done", "{done}");
    let mut last = (0u64, 0u64);
    let progress: Vec<&Value> = replies.iter().filter(|r| r["type"] == "progress").collect();
    // The first walk step always reports (a tree starts with a progress line).
    assert!(
        !progress.is_empty(),
        "a tree job sent no progress line: {replies:?}"
    );
    for line in &progress {
        let now = (
            line["files_done"].as_u64().unwrap(),
            line["bytes_done"].as_u64().unwrap(),
        );
        assert!(
            now.0 >= last.0 && now.1 >= last.1,
            "progress went backwards: {line}"
        );
        assert!(now.0 <= line["files_total"].as_u64().unwrap(), "{line}");
        if line["totals_final"] == true {
            assert_eq!(line["files_total"].as_u64().unwrap(), files, "{line}");
            assert_eq!(line["bytes_total"].as_u64().unwrap(), bytes_total, "{line}");
        }
        last = now;
    }
    done
}

fn encrypt_decrypt_identical(backend: &'static str) {
    let d = Daemon::start(backend);
    let src = d.root.join("src");
    let (files, total) = make_tree(&src);
    let enc = d.root.join("enc");
    let dec = d.root.join("dec");

    let done = run_tree(
        &d,
        &tree_req("encrypt", &src, &enc, "encrypt"),
        FILES as u64,
        total,
    );
    assert_eq!(done["files_ok"], FILES as u64, "{done}");
    assert_eq!(done["files_failed"], 0, "{done}");
    assert_eq!(done["files_skipped"], 2, "{done}");
    let reasons: Vec<&str> = done["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"symbolic link") && reasons.contains(&"fifo"),
        "{done}"
    );
    assert_eq!(done["bytes_in"], total, "{done}");
    // Every file of the tree is there, sealed.
    for rel in &files {
        let mut name = rel.file_name().unwrap().to_os_string();
        name.push(".rcrypt");
        assert!(
            enc.join(rel.with_file_name(name)).is_file(),
            "missing output for {}",
            rel.display()
        );
    }

    let done = run_tree(
        &d,
        &tree_req("decrypt", &enc, &dec, "decrypt"),
        FILES as u64,
        total_of(&enc),
    );
    assert_eq!(done["files_ok"], FILES as u64, "{done}");
    assert_eq!(done["files_failed"], 0, "{done}");

    let mut want = describe(&src);
    want.remove(Path::new("d1/link"));
    want.remove(Path::new("d2/fifo"));
    let got = describe(&dec);
    assert_eq!(got.len(), want.len(), "entry count");
    for (rel, entry) in &want {
        assert_eq!(
            got.get(rel),
            Some(entry),
            "{} differs (mode, mtime, bytes)",
            rel.display()
        );
    }
    assert!(temp_files(d.dir.path()).is_empty());
}

fn total_of(root: &Path) -> u64 {
    describe(root)
        .values()
        .map(|(_, _, data)| data.len() as u64)
        .sum()
}

/// Kill the daemon in the middle of a tree; a new daemon with skip_existing finishes it.
fn killed_mid_tree_resumes(backend: &'static str) {
    let mut d = Daemon::start(backend);
    let src = d.root.join("src");
    let (_, total) = make_tree_of(&src, KILL_FILES);
    let enc = d.root.join("enc");
    let mut c = d.client();
    c.send(&tree_req("encrypt", &src, &enc, "encrypt"));
    // Wait until some outputs exist, then kill -9.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_files(&enc) < 200 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = kill("KILL", d.pid());
    d.forget();
    let partial = count_files(&enc);
    assert!(
        partial < KILL_FILES,
        "the tree finished before the kill ({partial} files)"
    );

    d.launch();
    let mut request = tree_req("encrypt", &src, &enc, "encrypt");
    request["skip_existing"] = json!(true);
    let done = run_tree(&d, &request, KILL_FILES as u64, total);
    let ok = done["files_ok"].as_u64().unwrap();
    let skipped = done["files_skipped"].as_u64().unwrap();
    assert_eq!(done["files_failed"], 0, "{done}");
    // Everything written before the kill verified and was skipped; the rest was done now.
    assert_eq!(ok + skipped - 2, KILL_FILES as u64, "{done}");
    assert!(skipped >= partial as u64, "{done}: {partial} existed");
    let dec = d.root.join("dec");
    let done = run_tree(
        &d,
        &tree_req("decrypt", &enc, &dec, "decrypt"),
        KILL_FILES as u64,
        total_of(&enc),
    );
    assert_eq!(done["files_ok"], KILL_FILES as u64, "{done}");
    let mut want = describe(&src);
    want.remove(Path::new("d1/link"));
    want.remove(Path::new("d/fifo"));
    assert_eq!(describe(&dec), want);
    assert!(temp_files(d.dir.path()).is_empty(), "temp files left");
}

fn count_files(root: &Path) -> usize {
    if !root.exists() {
        return 0;
    }
    describe(root)
        .values()
        .filter(|(_, mtime, _)| *mtime != 0)
        .count()
}

/// One flat directory of 3,000 files with names of many lengths: far more entries than a
/// walk window (256 file jobs) and than one directory read returns, so the walk stops and
/// resumes inside the directory many times, with entries already read but not yet visited.
/// Every file must come out exactly once: none skipped, none twice.
fn a_flat_directory_is_walked_exactly_once(backend: &'static str) {
    let d = Daemon::start(backend);
    let src = d.root.join("flat");
    fs::create_dir(&src).unwrap();
    let count = 3_000;
    let mut total = 0u64;
    for i in 0..count {
        let name = format!("{}{i}.dat", "n".repeat(i % 97));
        let size = (i * 13) % 700;
        fs::write(src.join(&name), bytes(size, i as u64)).unwrap();
        total += size as u64;
    }
    let out = d.root.join("flat.rcrypt");
    let done = run_tree(
        &d,
        &tree_req("encrypt", &src, &out, "encrypt"),
        count as u64,
        total,
    );
    assert_eq!(done["files_ok"], count as u64, "{done}");
    assert_eq!(done["files_failed"], 0, "{done}");
    assert_eq!(done["bytes_in"], total, "{done}");
    let names: std::collections::BTreeSet<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), count, "one output per input");
    for i in 0..count {
        let name = format!("{}{i}.dat.rcrypt", "n".repeat(i % 97));
        assert!(
            names.contains(std::ffi::OsStr::new(&name)),
            "{name} missing"
        );
    }
}

both_backends!(
    encrypt_decrypt_identical,
    killed_mid_tree_resumes,
    client_killed_mid_tree_resumes,
    json_output_snapshot,
    a_flat_directory_is_walked_exactly_once,
);

/// One unreadable file fails alone, with `permission_denied`; the rest of the tree is done.
/// The daemon must not be able to read it: as root the daemon runs as `nobody`.
#[test]
fn an_unreadable_file_fails_alone() {
    let as_root = running_as_root();
    let mut d = Builder::new()
        .for_nobody()
        .prefix("ringcrypt-tree-perm")
        .root_is_dir()
        .ring(keygen("k"))
        .metrics("off")
        .wrap(move |daemon| through_shell(daemon, "", as_root))
        .prepare();
    let root = d.root.clone();
    chmod(&root, 0o777);
    let src = root.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("sub/ok{i}")), bytes(1000 + i, i as u64)).unwrap();
    }
    let secret = src.join("sub/secret");
    fs::write(&secret, b"not for the daemon").unwrap();
    if as_root {
        // Everything belongs to nobody except the secret, which stays root's and 0600.
        chown_r_nobody(&root);
        assert!(
            Command::new("chown")
                .arg("root")
                .arg(&secret)
                .status()
                .unwrap()
                .success()
        );
    }
    chmod(&secret, if as_root { 0o600 } else { 0o000 });
    d.launch();
    let mut c = d.client();
    let replies = c.job(&tree_req("encrypt", &src, &root.join("enc"), "encrypt"));
    let done = replies.last().unwrap();
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(done["files_ok"], 20, "{done}");
    assert_eq!(done["files_failed"], 1, "{done}");
    let failure = &done["failures"][0];
    assert_eq!(failure["code"], "permission_denied", "{done}");
    assert_eq!(failure["path"], p(&secret), "{done}");
    assert!(
        !root.join("enc/sub/secret.rcrypt").exists(),
        "nothing under the failed file's name"
    );
    assert!(temp_files(&root).is_empty());
    let (status, _) = d.stop(STOP_TIMEOUT);
    assert!(status.success(), "{status:?}");
}

/// The client, killed in the middle of a tree, and run again with `--skip-existing`: the
/// result is complete and identical to the input after decryption, with no partial file.
fn client_killed_mid_tree_resumes(backend: &'static str) {
    let d = Daemon::start(backend);
    let src = d.root.join("src");
    make_tree_of(&src, KILL_FILES);
    let enc = d.root.join("enc");
    let mut child = Command::new(CLI)
        .arg("--socket")
        .arg(&d.socket)
        .args(["encrypt", "-r", "--quiet"])
        .arg(&src)
        .arg("-o")
        .arg(&enc)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_files(&enc) < 100 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let run = d.cli(&[
        "encrypt",
        "-r",
        "--skip-existing",
        "--quiet",
        p(&src),
        "-o",
        p(&enc),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let summary = &run.stdout;
    assert!(summary.contains("0 failed"), "{summary}");
    let dec = d.root.join("dec");
    let run = d.cli(&["decrypt", "-r", "--quiet", p(&enc), "-o", p(&dec)]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut want = describe(&src);
    want.remove(Path::new("d1/link"));
    want.remove(Path::new("d2/fifo"));
    assert_eq!(describe(&dec), want);
    assert!(temp_files(d.dir.path()).is_empty(), "temp files left");
}

/// The raw `--json` lines of a small tree, normalized (job ids, times, rates, paths).
fn json_output_snapshot(backend: &'static str) {
    let d = Daemon::start(backend);
    let src = d.root.join("small");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"alpha").unwrap();
    fs::write(src.join("sub/b.bin"), bytes(70_000, 2)).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    let run = d.cli(&[
        "--json",
        "encrypt",
        "-r",
        p(&src),
        "-o",
        p(&d.root.join("out")),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let text = run.stdout;
    let root = p(&d.root).to_string();
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let mut value: Value =
                serde_json::from_str(line).expect("--json prints JSON lines only");
            for field in ["job", "micros", "rate_bytes_per_sec"] {
                if value.get(field).is_some() {
                    value[field] = json!(field.to_uppercase());
                }
            }
            value.to_string().replace(&root, "[ROOT]")
        })
        .filter(|line| !line.contains("\"progress\""))
        .collect();
    insta::assert_snapshot!("json_tree", lines.join("\n"));
}

/// The same 5,000-file tree through the offline client (`--keys`, one worker per core):
/// identical after the round trip, specials skipped, exit code 0.
#[test]
fn offline_round_trip_of_the_big_tree() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    write_private(&keys, &keygen("k"));
    let src = dir.path().join("src");
    make_tree(&src);
    let run = |args: &[&str]| {
        Command::new(CLI)
            .arg("--keys")
            .arg(&keys)
            .args(args)
            .output()
            .unwrap()
    };
    let enc = dir.path().join("enc");
    let dec = dir.path().join("dec");
    let out = run(&["encrypt", "-r", "--quiet", p(&src), "-o", p(&enc)]);
    assert!(out.status.success(), "{out:?}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("{FILES} ok")) && summary.contains("2 skipped"),
        "{summary}"
    );
    let out = run(&["decrypt", "-r", "--quiet", p(&enc), "-o", p(&dec)]);
    assert!(out.status.success(), "{out:?}");
    let mut want = describe(&src);
    want.remove(Path::new("d1/link"));
    want.remove(Path::new("d2/fifo"));
    assert_eq!(describe(&dec), want);
}
