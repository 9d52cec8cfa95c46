//! `verify` (every chunk's tag, no plaintext written) and `inspect` (the header, no key
//! needed), offline; `inspect` on every file of the vector kit.

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;

/// Parses `--json` output: one JSON object per line.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// Intact: in a tree of 24 sealed files where one bit of one middle record of one file was
/// flipped, `verify -r` reports exactly that file failed (`auth_failed`) and every other ok,
/// exits 1, and changes nothing (every file's bytes and mtime, no new entry anywhere).
/// A file sealed under a key the ring lacks is `unknown_key`; a `.rcrypt` that is no such
/// file is `bad_format`; a file not named `.rcrypt` is skipped.
#[test]
fn verify_reports_exactly_the_damaged_file() {
    let (dir, ring, _) = one_key_setup();
    let tree = dir.path().join("tree");
    for i in 0..24 {
        let sub = tree.join(format!("d{}", i % 3));
        fs::create_dir_all(&sub).unwrap();
        fs::write(
            sub.join(format!("f{i}")),
            random_bytes(3 * 4096 + i * 100, i as u64),
        )
        .unwrap();
    }
    let sealed = dir.path().join("sealed");
    with_ring(
        &ring,
        &[
            "encrypt",
            "-r",
            p(&tree),
            "-o",
            p(&sealed),
            "--chunk-log2",
            "12",
            "-q",
        ],
    )
    .ok();
    let victim = sealed.join("d1/f7.rcrypt");
    let mut bytes = fs::read(&victim).unwrap();
    bytes[96 + (4096 + 32) + 7] ^= 0x10; // record 1 of 4: not the final one
    fs::write(&victim, &bytes).unwrap();
    let before: BTreeMap<PathBuf, Snapshot> = support::files_under(&sealed)
        .into_iter()
        .map(|path| (path.clone(), snapshot(&path)))
        .collect();

    let run = with_ring(&ring, &["verify", "-r", p(&sealed)]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr.contains("1 file failed verification"),
        "{run:#?}"
    );
    let failed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{run:#?}");
    assert!(
        failed[0].contains("d1/f7.rcrypt") && failed[0].contains("[auth_failed]"),
        "{run:#?}"
    );
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        23,
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("verified 24 files: 23 ok, 1 failed, 0 skipped"),
        "{run:#?}"
    );

    let run = with_ring(&ring, &["--json", "verify", "-r", p(&sealed)]);
    assert_eq!(run.code, 1, "{run:#?}");
    let lines = json_lines(&run.stdout);
    let bad: Vec<&Value> = lines.iter().filter(|l| l["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{lines:?}");
    assert_eq!(bad[0]["path"], p(&victim));
    assert_eq!(bad[0]["code"], "auth_failed");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(
        (
            summary["files_ok"].as_u64(),
            summary["files_failed"].as_u64()
        ),
        (Some(23), Some(1))
    );

    let after: BTreeMap<PathBuf, Snapshot> = support::files_under(&sealed)
        .into_iter()
        .map(|path| (path.clone(), snapshot(&path)))
        .collect();
    assert_eq!(before, after, "verify changed or added a file");

    // Other failures, each with its code, and a file that is not checked at all.
    let other = dir.path().join("other.toml");
    write_private(&other, &key("stranger", &secret(99), "active"));
    let foreign = dir.path().join("foreign.rcrypt");
    with_ring(
        &other,
        &["encrypt", p(&tree.join("d0/f0")), "-o", p(&foreign)],
    )
    .ok();
    let junk = sealed.join("d0/junk.rcrypt");
    fs::write(&junk, b"this is not a sealed file").unwrap();
    fs::write(sealed.join("d0/notes.txt"), b"plain").unwrap();
    let run = with_ring(
        &ring,
        &["--json", "verify", p(&foreign), "-r", p(&sealed.join("d0"))],
    );
    let lines = json_lines(&run.stdout);
    let code_of = |path: &Path| {
        lines
            .iter()
            .find(|l| l["path"] == p(path))
            .unwrap_or_else(|| panic!("{path:?} not reported: {lines:?}"))
            .clone()
    };
    assert_eq!(code_of(&foreign)["code"], "unknown_key");
    assert_eq!(code_of(&junk)["code"], "bad_format");
    assert_eq!(
        code_of(&sealed.join("d0/notes.txt"))["reason"],
        "not a .rcrypt file"
    );
}

/// Intact: without --keys, verify asks the daemon; with none listening it says so (exit 3)
/// and names both ways on: start the daemon, or pass --keys to verify in this process.
#[test]
fn verify_without_keys_asks_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let run = support::ringcrypt_in(dir.path(), &socket, &["verify", "x.rcrypt"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(
        run.stderr.contains("ringcryptd") && run.stderr.contains("--keys FILE"),
        "{run:#?}"
    );
}

/// A kit file's body in its own file, with the kit's header fields.
struct KitFile {
    path: PathBuf,
    fields: BTreeMap<String, String>,
}

fn kit_files(into: &Path) -> Vec<KitFile> {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/kit");
    let mut files = Vec::new();
    for entry in fs::read_dir(kit).unwrap() {
        let entry = entry.unwrap();
        let raw = fs::read(entry.path()).unwrap();
        let split = raw.windows(2).position(|w| w == b"\n\n").unwrap();
        let fields = std::str::from_utf8(&raw[..split])
            .unwrap()
            .lines()
            .map(|line| {
                let (k, v) = line.split_once(": ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let path = into.join(entry.file_name());
        fs::write(&path, &raw[split + 2..]).unwrap();
        files.push(KitFile { path, fields });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// Intact: `inspect` on every file of the vector kit, without and with the kit's key ring,
/// agrees with the kit: successes show their format, chunk size, key and a plaintext range
/// holding the stated length (exact with the ring); `bad_format` files are refused with
/// that code; files under a key the ring lacks or has retired show the header and that key's
/// state; no file is changed.
#[test]
fn inspect_every_vector() {
    let dir = tempdir();
    let files = kit_files(dir.path());
    let ring = dir.path().join("ring.toml");
    let kit_ring = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/keyring.toml");
    write_private(&ring, &fs::read_to_string(kit_ring).unwrap());
    let before: Vec<Snapshot> = files.iter().map(|f| snapshot(&f.path)).collect();
    let mut args: Vec<&str> = vec!["--json", "inspect"];
    args.extend(files.iter().map(|f| p(&f.path)));
    let bare = ringcrypt(&args);
    let keyed = with_ring(&ring, &args);
    let states = BTreeMap::from([
        ("alpha", "active"),
        ("beta", "active"),
        ("gamma", "decrypt-only"),
        ("old", "retired"),
    ]);
    for (run, with_key) in [(&bare, false), (&keyed, true)] {
        let lines = json_lines(&run.stdout);
        assert_eq!(lines.len(), files.len(), "one line per file: {run:#?}");
        assert_eq!(run.code, 1, "some kit files are not sealed files: {run:#?}");
        for (file, line) in files.iter().zip(&lines) {
            let name = file.path.file_name().unwrap().to_string_lossy();
            assert_eq!(line["path"], p(&file.path), "{name}: in order");
            let expect = file.fields["expect"].as_str();
            let format = file.fields["format"].as_str();
            if expect == "bad_format" {
                let code = line.get("problem").map_or(&line["code"], |p| &p["code"]);
                assert_eq!(code, "bad_format", "{name}: {line}");
                continue;
            }
            assert_eq!(line["type"], "inspect", "{name}: {line}");
            assert_eq!(line["format"], format, "{name}");
            assert_eq!(
                line["file_bytes"],
                fs::metadata(&file.path).unwrap().len(),
                "{name}"
            );
            if format == "ringcrypt" {
                assert_eq!(line["version"], 1, "{name}");
                assert!(
                    line["key_id"].as_str().is_some_and(|id| id.len() == 32),
                    "{name}"
                );
            }
            let key = file.fields["key"].as_str();
            if with_key && format == "ringcrypt" {
                match expect {
                    "unknown_key" => assert!(line.get("key_name").is_none(), "{name}: {line}"),
                    "success" | "key_retired" => {
                        assert_eq!(line["key_name"], key, "{name}: {line}");
                        assert_eq!(line["key_state"], states[key], "{name}: {line}");
                    }
                    _ => {}
                }
            }
            if expect == "success" {
                let len: u64 = file.fields["plaintext"]
                    .strip_prefix("pattern ")
                    .unwrap()
                    .parse()
                    .unwrap();
                let (lo, hi) = (
                    line["plaintext_bytes_min"].as_u64().unwrap(),
                    line["plaintext_bytes_max"].as_u64().unwrap(),
                );
                let width = if with_key && format == "ringcrypt" {
                    0
                } else {
                    15
                };
                assert!(
                    lo <= len && len <= hi && hi - lo == width,
                    "{name}: {lo}..{hi} vs {len}"
                );
                if format == "ringcrypt" {
                    assert_eq!(
                        line["chunk_log2"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or(line["chunk_log2"].to_string()),
                        file.fields["chunk_log2"],
                        "{name}"
                    );
                    assert_eq!(
                        line["plaintext_bytes"].as_u64(),
                        with_key.then_some(len),
                        "{name}: {line}"
                    );
                }
                assert!(line.get("problem").is_none(), "{name}: {line}");
            }
        }
    }
    let after: Vec<Snapshot> = files.iter().map(|f| snapshot(&f.path)).collect();
    assert_eq!(before, after, "inspect changed a kit file");

    // The human form: the fields by name, and the range until a key is given.
    let ok = dir.path().join("ok_c12_len4097");
    let run = ringcrypt(&["inspect", p(&ok)]).ok();
    assert!(
        run.stdout.contains("chunk size  4096 bytes (2^12)"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("key id      5c889258ca282898fefa1ab29c25c258"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("records     2"), "{run:#?}");
    assert!(run.stdout.contains("4096 to 4111 bytes"), "{run:#?}");
    let run = with_ring(&ring, &["inspect", p(&ok)]).ok();
    assert!(
        run.stdout.contains("key         alpha (active)"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("plaintext   4097 bytes"), "{run:#?}");
}
